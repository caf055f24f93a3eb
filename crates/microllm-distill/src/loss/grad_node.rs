//! A scalar whose gradient is known in advance.
//!
//! The fused head computes the loss *and* its gradient with respect to the head's input in
//! one sweep over row chunks (the `[tokens, vocab]` logits exist one chunk at a time and never
//! enter the autograd graph). [`attach`] hands that result to candle's autograd: the returned
//! scalar's forward is the loss value, and its backward passes the stored gradient, scaled by
//! the incoming one, to the tensor it is attached to. Several attached scalars can be summed,
//! one per tensor with a precomputed gradient (hidden states, head weight, head bias).

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};

use crate::real::{dispatch, storage};

struct GradNode {
    value: f64,
    grad: Tensor,
}

impl CustomOp1 for GradNode {
    fn name(&self) -> &'static str {
        "precomputed-gradient"
    }

    fn cpu_fwd(&self, s: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let out = dispatch!(crate::real::dtype_of(s), "precomputed-gradient", |T| {
            storage::<T>(vec![<T as candle_core::WithDType>::from_f64(self.value)])
        });
        Ok((out, Shape::from(())))
    }

    fn bwd(
        &self,
        _: &Tensor,
        _: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(self.grad.broadcast_mul(grad_res)?))
    }
}

/// A scalar equal to `value` whose gradient with respect to `target` is `grad` (same shape).
pub fn attach(target: &Tensor, value: f64, grad: Tensor) -> candle_core::Result<Tensor> {
    if grad.dims() != target.dims() {
        candle_core::bail!(
            "gradient {:?} for a tensor {:?}",
            grad.dims(),
            target.dims()
        )
    }
    target.apply_op1(GradNode {
        value,
        grad: grad.to_dtype(target.dtype())?,
    })
}
