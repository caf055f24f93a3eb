//! The layer Hessian `H = 2 X^T X / n` that GPTQ solves against.
//!
//! GPTQ minimises the layer's output error `||W X^T - Q X^T||^2` row by row; the Hessian of that
//! objective with respect to a row is `H = 2 X^T X` (Frantar et al., 2022, section 3, eq. 1-2,
//! following OBQ). Calibration activations arrive in batches while a block streams through the
//! pipeline, so we keep a running average exactly as the reference implementation's
//! `add_batch` does: with `n` tokens seen and a batch of `m`,
//! `H <- H * n / (n + m) + 2 / (n + m) * X^T X`. Scaling by the token count keeps `H` (and so
//! the absolute damping `damp * mean(diag H)`) independent of how much data was used.
//!
//! `X^T X` is computed with candle's multi-threaded f32 matmul (the O(tokens * in^2) part);
//! the running sum is kept in f64, since it adds many batches of similar magnitude.

use candle_core::{DType, Tensor};
use microllm_core::{Error, Result};

/// Running `H = 2/n * sum_t x_t x_t^T` over all calibration tokens `x_t` of one linear layer.
#[derive(Debug, Clone)]
pub struct HessianAccumulator {
    in_features: usize,
    /// Row-major `[in, in]`, symmetric.
    h: Vec<f64>,
    n_tokens: usize,
}

impl HessianAccumulator {
    /// An empty accumulator for a layer with `in_features` inputs.
    pub fn new(in_features: usize) -> Self {
        Self {
            in_features,
            h: vec![0.0; in_features * in_features],
            n_tokens: 0,
        }
    }

    /// Input features of the layer.
    pub fn in_features(&self) -> usize {
        self.in_features
    }

    /// Tokens accumulated so far.
    pub fn n_tokens(&self) -> usize {
        self.n_tokens
    }

    /// The current Hessian, row-major `[in, in]`.
    pub fn hessian(&self) -> &[f64] {
        &self.h
    }

    /// Adds a batch of layer inputs: any tensor whose last dimension is `in_features`
    /// (`[tokens, in]`, `[batch, seq, in]`, any float dtype).
    pub fn add_batch(&mut self, x: &Tensor) -> Result<()> {
        let dims = x.dims();
        let last = dims.last().copied().unwrap_or(0);
        if last != self.in_features {
            return Err(Error::Invalid(format!(
                "Hessian for {} input features: activation batch has shape {dims:?}",
                self.in_features
            )));
        }
        let m = x.elem_count() / last.max(1);
        if m == 0 {
            return Ok(());
        }
        let x = x.to_dtype(DType::F32)?.reshape((m, last))?;
        let xtx = x.t()?.contiguous()?.matmul(&x)?;
        let xtx = xtx.flatten_all()?.to_vec1::<f32>()?;
        if xtx.iter().any(|v| !v.is_finite()) {
            return Err(Error::Invalid(format!(
                "activation batch of shape {dims:?} has non-finite values (or overflows f32)"
            )));
        }
        let (n, m) = (self.n_tokens as f64, m as f64);
        let keep = n / (n + m);
        let add = 2.0 / (n + m);
        for (h, &v) in self.h.iter_mut().zip(&xtx) {
            *h = *h * keep + add * v as f64;
        }
        self.n_tokens += m as usize;
        Ok(())
    }

    /// [`add_batch`](Self::add_batch) on row-major `[tokens, in]` f32 data.
    pub fn add_batch_slice(&mut self, x: &[f32]) -> Result<()> {
        let inp = self.in_features;
        if inp == 0 || !x.len().is_multiple_of(inp) {
            return Err(Error::Invalid(format!(
                "activation data of {} values is not a whole number of rows of {inp}",
                x.len()
            )));
        }
        let t = Tensor::from_slice(x, (x.len() / inp, inp), &candle_core::Device::Cpu)?;
        self.add_batch(&t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_average_matches_hand_computation() {
        // Batch 1: x = [1, 2]; batch 2: x = [3, 0], [0, 1].
        let mut acc = HessianAccumulator::new(2);
        acc.add_batch_slice(&[1.0, 2.0]).unwrap();
        assert_eq!(acc.hessian(), &[2.0, 4.0, 4.0, 8.0]);
        acc.add_batch_slice(&[3.0, 0.0, 0.0, 1.0]).unwrap();
        // H = 2/3 * (x1 x1^T + x2 x2^T + x3 x3^T) = 2/3 * [[10, 2], [2, 5]].
        let want = [20.0 / 3.0, 4.0 / 3.0, 4.0 / 3.0, 10.0 / 3.0];
        for (a, b) in acc.hessian().iter().zip(want) {
            assert!((a - b).abs() < 1e-12, "{a} vs {b}");
        }
        assert_eq!(acc.n_tokens(), 3);
    }

    #[test]
    fn batch_split_does_not_matter() {
        let x: Vec<f32> = (0..24).map(|i| ((i * 7 % 11) as f32) - 5.0).collect();
        let mut one = HessianAccumulator::new(3);
        one.add_batch_slice(&x).unwrap();
        let mut two = HessianAccumulator::new(3);
        let t = Tensor::from_slice(&x[..9], (1, 3, 3), &candle_core::Device::Cpu).unwrap();
        two.add_batch(&t).unwrap();
        two.add_batch_slice(&x[9..]).unwrap();
        for (a, b) in one.hessian().iter().zip(two.hessian()) {
            assert!((a - b).abs() < 1e-9 * a.abs().max(1.0), "{a} vs {b}");
        }
    }

    #[test]
    fn wrong_width_is_an_error() {
        let mut acc = HessianAccumulator::new(4);
        assert!(acc.add_batch_slice(&[1.0; 6]).is_err());
        let t = Tensor::zeros((2, 3), DType::F32, &candle_core::Device::Cpu).unwrap();
        assert!(acc.add_batch(&t).is_err());
    }
}
