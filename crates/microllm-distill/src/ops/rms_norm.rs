//! RMSNorm with its backward pass.
//!
//! candle-nn's `rms_norm` has no backward, and composing it from `sqr`/`mean`/`sqrt`/`div`
//! ops costs five passes and five temporaries per norm in each direction. This op is one pass
//! forward and one backward (plus a reduction for the weight's gradient).
//!
//! Forward, per row `x` of width `h`: `r = (mean(x²) + eps)^-1/2`, `y = x · r · w`.
//! Backward, with `g = dy · w`: `dx = r·g − x · r³ · (g·x) / h`, `dw = Σ_rows dy · x · r`.
//! The weight gradient sums over rows in fixed chunks, in order, so it is the same bit for bit
//! whatever the thread count or scheduling (a resumed run must reproduce an uninterrupted one).

use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::real::{Real, dispatch, dtype_of, slice, storage, tensor, with_data};

/// Rows per unit of the weight-gradient reduction (fixed, for determinism).
const REDUCE_ROWS: usize = 64;

/// `y = x / sqrt(mean(x²) + eps) · w` over the last axis, differentiable in `x` and `w`.
#[derive(Debug, Clone, Copy)]
pub struct RmsNorm {
    pub eps: f64,
}

impl RmsNorm {
    /// Applies the norm to `x` `[..., h]` with weight `w` `[h]`.
    pub fn apply(self, x: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
        x.contiguous()?.apply_op2(w, self)
    }
}

fn inv_rms<T: Real>(x: &[T], eps: f64) -> T {
    let ss: f64 = x.iter().map(|v| v.to_f64() * v.to_f64()).sum();
    T::from_f64(1.0 / (ss / x.len() as f64 + eps).sqrt())
}

fn forward<T: Real>(x: &[T], w: &[T], eps: f64) -> Vec<T> {
    let h = w.len();
    let mut y = vec![T::ZERO; x.len()];
    y.par_chunks_mut(h)
        .zip(x.par_chunks(h))
        .with_min_len(8)
        .for_each(|(y, x)| {
            let r = inv_rms(x, eps);
            for ((y, &x), &w) in y.iter_mut().zip(x).zip(w) {
                *y = x * r * w;
            }
        });
    y
}

fn backward<T: Real>(x: &[T], w: &[T], dy: &[T], eps: f64) -> (Vec<T>, Vec<T>) {
    let h = w.len();
    let mut dx = vec![T::ZERO; x.len()];
    let partials: Vec<Vec<f64>> = dx
        .par_chunks_mut(h * REDUCE_ROWS)
        .zip(x.par_chunks(h * REDUCE_ROWS))
        .zip(dy.par_chunks(h * REDUCE_ROWS))
        .map(|((dx, x), dy)| {
            let mut dw = vec![0f64; h];
            for ((dx, x), dy) in dx.chunks_mut(h).zip(x.chunks(h)).zip(dy.chunks(h)) {
                let r = inv_rms(x, eps);
                let gx: f64 = dy
                    .iter()
                    .zip(w)
                    .zip(x)
                    .map(|((&d, &w), &x)| (d * w).to_f64() * x.to_f64())
                    .sum();
                let c = T::from_f64(gx / h as f64) * r * r * r;
                for j in 0..h {
                    dx[j] = r * dy[j] * w[j] - x[j] * c;
                    dw[j] += (dy[j] * x[j] * r).to_f64();
                }
            }
            dw
        })
        .collect();
    let mut dw = vec![0f64; h];
    for p in &partials {
        for (a, b) in dw.iter_mut().zip(p) {
            *a += b;
        }
    }
    (dx, dw.into_iter().map(T::from_f64).collect())
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "rms-norm"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let h = *xl.dims().last().unwrap_or(&0);
        if wl.dims() != [h] {
            candle_core::bail!("rms-norm: weight {:?} for rows of {h}", wl.dims())
        }
        let y = dispatch!(dtype_of(xs), "rms-norm", |T| {
            storage::<T>(forward::<T>(
                slice(xs, xl, "rms-norm")?,
                slice(ws, wl, "rms-norm")?,
                self.eps,
            ))
        });
        Ok((y, xl.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        dispatch!(x.dtype(), "rms-norm", |T| {
            let (dx, dw) = with_data::<T, _>(x, "rms-norm", |x| {
                with_data::<T, _>(w, "rms-norm", |w| {
                    with_data::<T, _>(dy, "rms-norm", |dy| Ok(backward(x, w, dy, self.eps)))
                })
            })?;
            Ok((Some(tensor(dx, x.shape())?), Some(tensor(dw, w.shape())?)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::gradcheck::{assert_gradients, randn};

    #[test]
    fn matches_the_inference_norm() {
        let x = randn(&[5, 24], 1)
            .to_dtype(candle_core::DType::F32)
            .unwrap();
        let w = randn(&[24], 2).to_dtype(candle_core::DType::F32).unwrap();
        let ours = RmsNorm { eps: 1e-5 }.apply(&x, &w).unwrap();
        let theirs = candle_nn_rms(&x, &w, 1e-5);
        let diff = crate::ops::gradcheck::max_abs_diff(&ours, &theirs);
        assert!(diff < 1e-6, "{diff}");
    }

    fn candle_nn_rms(x: &Tensor, w: &Tensor, eps: f64) -> Tensor {
        let ms = x.sqr().unwrap().mean_keepdim(1).unwrap();
        x.broadcast_div(&(ms + eps).unwrap().sqrt().unwrap())
            .unwrap()
            .broadcast_mul(w)
            .unwrap()
    }

    #[test]
    fn gradients_match_finite_differences() {
        // 130 rows: more than two reduction chunks, one of them partial.
        let x = randn(&[130, 6], 3);
        let w = randn(&[6], 4);
        assert_gradients(&[x, w], |t| RmsNorm { eps: 1e-5 }.apply(&t[0], &t[1]));
    }
}
