//! Scaled, causally masked softmax over attention scores, and its backward: kernels of
//! [`super::Attention`].
//!
//! Scores are laid out as the heads are (see [`super::heads`]): `[batch, kv_heads,
//! seq * group, seq]`, row `r` belonging to the query at position `r / group`. A query at `p`
//! sees keys `p − window < j <= p` (no window: all `j <= p`); masked entries are exactly 0, so
//! no mask tensor exists and the backward skips them. With `P` the result and `dP` its
//! gradient, the scores' gradient is `scale · P ⊙ (dP − rowsum(dP ⊙ P))`.

use rayon::prelude::*;

use crate::real::Real;

/// `softmax(scale · scores)` over visible keys, for scores `[.., seq * group, seq]`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CausalMask {
    pub scale: f64,
    /// Query heads per key/value head (adjacent rows of one token).
    pub group: usize,
    pub window: Option<usize>,
}

impl CausalMask {
    /// Visible key columns `lo..=hi` of row `row` of one matrix.
    fn visible(&self, row: usize) -> (usize, usize) {
        let pos = row / self.group;
        let lo = self.window.map_or(0, |w| (pos + 1).saturating_sub(w));
        (lo, pos)
    }

    /// The probabilities of `scores` (`keys` columns, matrices of `keys * group` rows).
    pub fn forward<T: Real>(&self, x: &[T], keys: usize) -> Vec<T> {
        let scale = T::from_f64(self.scale);
        let rows = keys * self.group;
        let mut y = vec![T::ZERO; x.len()];
        y.par_chunks_mut(keys)
            .zip(x.par_chunks(keys))
            .enumerate()
            .for_each(|(r, (y, x))| {
                let (lo, hi) = self.visible(r % rows);
                let max = x[lo..=hi].iter().copied().fold(T::NEG_INFINITY, T::maximum);
                let mut total = T::ZERO;
                for j in lo..=hi {
                    y[j] = ((x[j] - max) * scale).exp_fast();
                    total += y[j];
                }
                let inv = T::ONE / total;
                y[lo..=hi].iter_mut().for_each(|v| *v *= inv);
            });
        y
    }

    /// The scores' gradient from the probabilities `p` and their gradient `dp`.
    pub fn backward<T: Real>(&self, p: &[T], dp: &[T], keys: usize) -> Vec<T> {
        let scale = T::from_f64(self.scale);
        let rows = keys * self.group;
        let mut dx = vec![T::ZERO; p.len()];
        dx.par_chunks_mut(keys)
            .zip(p.par_chunks(keys).zip(dp.par_chunks(keys)))
            .enumerate()
            .for_each(|(r, (dx, (p, dp)))| {
                let (lo, hi) = self.visible(r % rows);
                let dot = (lo..=hi).fold(T::ZERO, |acc, j| acc + p[j] * dp[j]);
                for j in lo..=hi {
                    dx[j] = scale * p[j] * (dp[j] - dot);
                }
            });
        dx
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::gradcheck::randn;

    /// The inference kernel (in place, chunk-aware) on the same scores gives the same result.
    #[test]
    fn matches_the_inference_softmax() {
        for window in [None, Some(3)] {
            let x = randn(&[2, 2, 14, 7], 1)
                .to_dtype(candle_core::DType::F32)
                .unwrap();
            let flat: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
            let mask = CausalMask {
                scale: 0.3,
                group: 2,
                window,
            };
            let ours = mask.forward(&flat, 7);
            x.inplace_op1(&microllm_models::CausalSoftmax {
                scale: 0.3,
                group: 2,
                first_query: 0,
                first_key: 0,
                window,
            })
            .unwrap();
            let theirs: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
            let err = ours
                .iter()
                .zip(&theirs)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(err < 1e-6, "window {window:?}: {err}");
        }
    }

    /// `backward` is the derivative of `Σ r · forward(x)` (central differences, f64).
    #[test]
    fn backward_matches_finite_differences() {
        let keys = 5;
        let x: Vec<f64> = randn(&[2 * 15 * keys], 2).to_vec1().unwrap();
        let r: Vec<f64> = randn(&[2 * 15 * keys], 3).to_vec1().unwrap();
        for window in [None, Some(2)] {
            let mask = CausalMask {
                scale: 0.7,
                group: 3,
                window,
            };
            let f = |x: &[f64]| -> f64 {
                mask.forward(x, keys)
                    .iter()
                    .zip(&r)
                    .map(|(a, b)| a * b)
                    .sum()
            };
            let grad = mask.backward(&mask.forward(&x, keys), &r, keys);
            for j in 0..x.len() {
                let (mut up, mut down) = (x.clone(), x.clone());
                up[j] += 1e-6;
                down[j] -= 1e-6;
                let numeric = (f(&up) - f(&down)) / 2e-6;
                assert!(
                    (grad[j] - numeric).abs() < 1e-7,
                    "{window:?} {j}: {} vs {numeric}",
                    grad[j]
                );
            }
        }
    }
}
