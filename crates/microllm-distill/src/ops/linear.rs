//! `y = x Wᵀ (+ b)` as one autograd node.
//!
//! Written as `x.matmul(&w.t())`, a linear layer becomes two nodes (the product and the
//! transpose), and the weight's gradient arrives transposed, to be added into the weight's
//! `[out, in]` layout by a strided copy. This node computes `dx = dy · W` and
//! `dW = dyᵀ · x` directly in their final layouts, and skips whichever input is not trained
//! (no weight gradient for a frozen layer, no input gradient below the first trained one).

use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};

use super::node::Precomputed;

struct LinearNode(Precomputed);

impl CustomOp2 for LinearNode {
    fn name(&self) -> &'static str {
        "linear"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        self.0.take("linear")
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let dx = if x.track_op() {
            Some(dy.matmul(w)?)
        } else {
            None
        };
        let dw = if w.track_op() {
            Some(dy.t()?.matmul(x)?)
        } else {
            None
        };
        Ok((dx, dw))
    }
}

/// `x Wᵀ + b` for `x` `[rows, in]`, `w` `[out, in]`, `b` `[out]`.
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> candle_core::Result<Tensor> {
    let x = x.contiguous()?;
    let value = x.detach().matmul(&w.detach().t()?)?;
    let y = if x.track_op() || w.track_op() {
        x.apply_op2(w, LinearNode(Precomputed::new(value)))?
    } else {
        value
    };
    match b {
        Some(b) => y.broadcast_add(b),
        None => Ok(y),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::gradcheck::{assert_gradients, max_abs_diff, randn};

    #[test]
    fn computes_x_w_transposed_plus_b() {
        let (x, w, b) = (randn(&[5, 3], 1), randn(&[4, 3], 2), randn(&[4], 3));
        let want = x
            .matmul(&w.t().unwrap())
            .unwrap()
            .broadcast_add(&b)
            .unwrap();
        assert_eq!(max_abs_diff(&linear(&x, &w, Some(&b)).unwrap(), &want), 0.0);
    }

    #[test]
    fn gradients_match_finite_differences() {
        let (x, w, b) = (randn(&[6, 5], 4), randn(&[3, 5], 5), randn(&[3], 6));
        assert_gradients(&[x, w, b], |t| linear(&t[0], &t[1], Some(&t[2])));
    }
}
