//! SwiGLU, `silu(gate) · up`, with its backward pass.
//!
//! The inference decoder computes it in place on the gate projection (which autograd cannot
//! see); composed from candle ops it would keep four temporaries of the MLP width per block
//! for the backward pass. This op keeps none beyond its inputs: the backward recomputes the
//! sigmoid. With `σ = 1 / (1 + e^-g)`: `d gate = dy · up · σ · (1 + g · (1 − σ))`,
//! `d up = dy · g · σ`.

use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::real::{Real, dispatch, dtype_of, slice, storage, tensor, with_data};

/// Elements per parallel work unit.
const CHUNK: usize = 8 * 1024;

/// `silu(gate) · up`, differentiable in both.
#[derive(Debug, Clone, Copy)]
pub struct SwiGlu;

impl SwiGlu {
    pub fn apply(gate: &Tensor, up: &Tensor) -> candle_core::Result<Tensor> {
        gate.contiguous()?.apply_op2(&up.contiguous()?, SwiGlu)
    }
}

#[inline(always)]
fn sigmoid<T: Real>(g: T) -> T {
    T::ONE / (T::ONE + (-g).exp_fast())
}

impl CustomOp2 for SwiGlu {
    fn name(&self) -> &'static str {
        "swiglu"
    }

    fn cpu_fwd(
        &self,
        gs: &CpuStorage,
        gl: &Layout,
        us: &CpuStorage,
        ul: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        if gl.dims() != ul.dims() {
            candle_core::bail!("swiglu: shapes {:?} and {:?}", gl.dims(), ul.dims())
        }
        let out = dispatch!(dtype_of(gs), "swiglu", |T| {
            let (g, u) = (slice::<T>(gs, gl, "swiglu")?, slice::<T>(us, ul, "swiglu")?);
            let mut y = vec![T::ZERO; g.len()];
            y.par_chunks_mut(CHUNK)
                .zip(g.par_chunks(CHUNK).zip(u.par_chunks(CHUNK)))
                .for_each(|(y, (g, u))| {
                    for ((y, &g), &u) in y.iter_mut().zip(g).zip(u) {
                        *y = g * sigmoid(g) * u;
                    }
                });
            storage::<T>(y)
        });
        Ok((out, gl.shape().clone()))
    }

    fn bwd(
        &self,
        gate: &Tensor,
        up: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        dispatch!(gate.dtype(), "swiglu", |T| {
            let (dg, du) = with_data::<T, _>(gate, "swiglu", |g| {
                with_data::<T, _>(up, "swiglu", |u| {
                    with_data::<T, _>(dy, "swiglu", |dy| {
                        let mut dg = vec![T::ZERO; g.len()];
                        let mut du = vec![T::ZERO; g.len()];
                        dg.par_chunks_mut(CHUNK)
                            .zip(du.par_chunks_mut(CHUNK))
                            .zip(g.par_chunks(CHUNK).zip(u.par_chunks(CHUNK)))
                            .zip(dy.par_chunks(CHUNK))
                            .for_each(|(((dg, du), (g, u)), dy)| {
                                for i in 0..g.len() {
                                    let s = sigmoid(g[i]);
                                    du[i] = dy[i] * g[i] * s;
                                    dg[i] = dy[i] * u[i] * s * (T::ONE + g[i] * (T::ONE - s));
                                }
                            });
                        Ok((dg, du))
                    })
                })
            })?;
            Ok((
                Some(tensor(dg, gate.shape())?),
                Some(tensor(du, up.shape())?),
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::gradcheck::{assert_gradients, max_abs_diff, randn};

    #[test]
    fn matches_the_definition() {
        let g = randn(&[3, 40], 1);
        let u = randn(&[3, 40], 2);
        let want = (candle_core::Tensor::silu(&g).unwrap() * &u).unwrap();
        let got = SwiGlu::apply(&g, &u).unwrap();
        assert!(max_abs_diff(&got, &want) < 1e-12);
        let got32 = SwiGlu::apply(
            &g.to_dtype(candle_core::DType::F32).unwrap(),
            &u.to_dtype(candle_core::DType::F32).unwrap(),
        )
        .unwrap();
        assert!(max_abs_diff(&got32, &want) < 1e-5);
    }

    #[test]
    fn gradients_match_finite_differences() {
        let g = (randn(&[4, 9], 3) * 3.0).unwrap();
        let u = randn(&[4, 9], 4);
        assert_gradients(&[g, u], |t| SwiGlu::apply(&t[0], &t[1]));
    }
}
