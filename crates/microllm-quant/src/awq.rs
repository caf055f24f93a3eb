//! AWQ (Lin et al., 2024, "Activation-aware Weight Quantization"): per-input-channel scales
//! chosen on calibration activations and folded into whatever produces the input, so the
//! model computes the same function in full precision and rounds the important columns finer.
//!
//! Multiplying column `j` of a weight by `s_j` and dividing input channel `j` by `s_j` leaves
//! the product unchanged; rounding `W diag(s)` to a grid then leaves column `j` with about
//! `1/s_j` of its former absolute error (the group's step grows much less than `s_j` when only
//! a few columns are scaled up). Columns whose inputs are large matter most to the output, so
//! AWQ scales by activation magnitude: `s = mean|x|^a / (mean|w~|^(1-a) + 1e-4)` (`w~` each
//! weight over its group's largest magnitude; the `mean|w~|` factor is AutoAWQ's and
//! llm-compressor's default `duo_scaling`), normalised by `sqrt(max s * min s)`, with `a` tried
//! on a grid of `0, 1/n, ..., (n-1)/n`.
//!
//! The objective is the output error of the linears that read the input,
//! `sum_l ||X W_l^T - X (Q(W_l diag s) diag(1/s))^T||^2`. With GPTQ's Hessian `H = 2/n X^T X`
//! that is `n/2 tr(D H D^T)` for `D = W - Q(W diag s) diag(1/s)`, so the search reads the
//! Hessian instead of keeping the activations: `out * in^2` multiply-adds per candidate
//! instead of `tokens * in * out`, fewer whenever there are more calibration tokens than input
//! features (128 x 512 tokens against 576 to 11008 features). The reference measures q/k/v
//! through the whole attention module, softmax included; here, as for the other groups, each
//! linear's own output counts. The identity (no scaling) is always a candidate, so on this
//! objective AWQ never does worse than round-to-nearest.
//!
//! Clipping (the reference's `auto_clip`, applied to every linear but q and k, whose outputs
//! pass through a softmax) shrinks each row-group's range to `p * max|w|` for
//! `p = 1, 0.95, ..., 0.55`, clamps the weights there and keeps the `p` with the least output
//! error of that group alone, `d^T H_gg d` on the group's diagonal block of the Hessian (the
//! reference likewise measures each group's partial product).

use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef};
use microllm_core::{Error, Result};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::QuantScheme;
use crate::hessian::with_f32_data;

/// How AWQ searches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AwqOptions {
    /// Exponents tried: `a = i / grid` for `i` in `0..grid` (the reference's `n_grid`, 20).
    pub grid: u32,
    /// Divide by the weights' mean normalised magnitude too (`duo_scaling`).
    pub duo_scaling: bool,
    /// Search each row-group's clipping range after scaling (`auto_clip`).
    pub clip: bool,
}

impl Default for AwqOptions {
    fn default() -> Self {
        Self {
            grid: 20,
            duo_scaling: true,
            clip: true,
        }
    }
}

/// Clipping candidates: `p = 1 - i / CLIP_STEPS` for `i < CLIP_CANDIDATES` (the reference's
/// `n_grid = 20`, `max_shrink = 0.5`).
const CLIP_STEPS: f32 = 20.0;
const CLIP_CANDIDATES: usize = 10;

/// Running `mean_t |x_tj|` per input feature: the activation magnitude AWQ scales by.
#[derive(Debug, Clone)]
pub struct ChannelMagnitude {
    sum: Vec<f64>,
    n_tokens: usize,
}

impl ChannelMagnitude {
    pub fn new(in_features: usize) -> Self {
        Self {
            sum: vec![0.0; in_features],
            n_tokens: 0,
        }
    }

    /// Adds a batch of inputs: any tensor whose last dimension is the feature count.
    pub fn add_batch(&mut self, x: &candle_core::Tensor) -> Result<()> {
        let inp = self.sum.len();
        let last = x.dims().last().copied().unwrap_or(0);
        if last != inp {
            return Err(Error::Invalid(format!(
                "channel magnitudes of {inp} features: activation batch has shape {:?}",
                x.dims()
            )));
        }
        with_f32_data(x, |data| {
            for row in data.chunks_exact(inp) {
                for (s, &v) in self.sum.iter_mut().zip(row) {
                    *s += f64::from(v.abs());
                }
            }
            self.n_tokens += data.len() / inp;
            Ok(())
        })
    }

    /// `mean |x_j|` per feature (zeros before any batch).
    pub fn mean(&self) -> Vec<f32> {
        let n = self.n_tokens.max(1) as f64;
        self.sum.iter().map(|&s| (s / n) as f32).collect()
    }
}

/// One linear of a group sharing an input: row-major `[out, in]` weights.
#[derive(Debug, Clone, Copy)]
pub struct GroupWeight<'a> {
    pub weight: &'a [f32],
    pub out: usize,
}

/// The scales a search chose for one input.
#[derive(Debug, Clone, PartialEq)]
pub struct ScaleSearch {
    /// Per input feature; all ones when no candidate beat the identity.
    pub scales: Vec<f32>,
    /// The exponent `a` chosen, `None` for the identity.
    pub ratio: Option<f32>,
    /// The group's output error with the chosen scales, and without scaling (`tr(D H D^T)`).
    pub error: f64,
    pub unscaled_error: f64,
}

/// Searches the input scales of the linears in `group` (all `[out_l, in]`), with the
/// Hessian of their shared input (`[in, in]`, row-major) and its mean magnitudes.
pub fn search_scales(
    group: &[GroupWeight<'_>],
    hessian: &[f64],
    magnitude: &[f32],
    scheme: QuantScheme,
    opts: &AwqOptions,
) -> Result<ScaleSearch> {
    let inp = magnitude.len();
    if hessian.len() != inp * inp {
        return Err(Error::Invalid(format!(
            "AWQ: a Hessian of {} values for {inp} input features",
            hessian.len()
        )));
    }
    for g in group {
        if g.weight.len() != g.out * inp {
            return Err(Error::Invalid(format!(
                "AWQ: a weight of {} values is not [{}, {inp}]",
                g.weight.len(),
                g.out
            )));
        }
        scheme.check_shape("weight", [g.out, inp])?;
    }
    if opts.grid == 0 {
        return Err(Error::Invalid(
            "AWQ: the scale grid needs at least 1 point".into(),
        ));
    }
    let h: Vec<f32> = hessian.iter().map(|&v| v as f32).collect();
    let error_with = |scales: &[f32]| -> f64 {
        group
            .iter()
            .map(|g| {
                let d = scaled_rounding_error(g.weight, g.out, inp, scales, scheme);
                output_error(&d, g.out, inp, &h)
            })
            .sum()
    };
    let ones = vec![1.0f32; inp];
    let unscaled_error = error_with(&ones);
    let weight_magnitude = opts
        .duo_scaling
        .then(|| normalised_weight_magnitude(group, inp, scheme));
    let mut best = ScaleSearch {
        scales: ones,
        ratio: None,
        error: unscaled_error,
        unscaled_error,
    };
    for i in 0..opts.grid {
        let ratio = i as f32 / opts.grid as f32;
        let Some(scales) = candidate_scales(magnitude, weight_magnitude.as_deref(), ratio) else {
            continue;
        };
        let error = error_with(&scales);
        if error < best.error {
            best = ScaleSearch {
                scales,
                ratio: Some(ratio),
                error,
                unscaled_error,
            };
        }
    }
    Ok(best)
}

/// `x^a / (w^(1-a) + 1e-4)` (or `x^a` without `w`), floored at 1e-4 and normalised by
/// `sqrt(max * min)`; `None` if anything is not finite.
fn candidate_scales(x: &[f32], w: Option<&[f32]>, ratio: f32) -> Option<Vec<f32>> {
    let mut s: Vec<f32> = match w {
        Some(w) => x
            .iter()
            .zip(w)
            .map(|(&x, &w)| x.powf(ratio) / (w.powf(1.0 - ratio) + 1e-4))
            .collect(),
        None => x.iter().map(|&x| x.powf(ratio)).collect(),
    };
    let (mut lo, mut hi) = (f32::INFINITY, 0.0f32);
    for v in &mut s {
        *v = v.max(1e-4);
        lo = lo.min(*v);
        hi = hi.max(*v);
    }
    let norm = (hi * lo).sqrt();
    if !(norm.is_finite() && norm > 0.0) {
        return None;
    }
    s.iter_mut().for_each(|v| *v /= norm);
    s.iter().all(|v| v.is_finite() && *v > 0.0).then_some(s)
}

/// `mean_rows |w_rj| / max_{group} |w|` per input feature, over every linear of the group.
fn normalised_weight_magnitude(
    group: &[GroupWeight<'_>],
    inp: usize,
    scheme: QuantScheme,
) -> Vec<f32> {
    let glen = scheme.group_len(inp);
    let mut sum = vec![0f64; inp];
    let mut rows = 0usize;
    for g in group {
        for row in g.weight.chunks_exact(inp) {
            for (k, wg) in row.chunks(glen).enumerate() {
                let max = wg.iter().fold(0f32, |m, w| m.max(w.abs()));
                if max > 0.0 {
                    for (j, w) in wg.iter().enumerate() {
                        sum[k * glen + j] += f64::from(w.abs() / max);
                    }
                }
            }
            rows += 1;
        }
    }
    let rows = rows.max(1) as f64;
    sum.iter().map(|&s| (s / rows) as f32).collect()
}

/// `W - Q(W diag s) diag(1/s)` for row-major `w` (`[out, in]`), rounding with `scheme`'s
/// min/max grid per row-group.
fn scaled_rounding_error(
    w: &[f32],
    out: usize,
    inp: usize,
    scales: &[f32],
    scheme: QuantScheme,
) -> Vec<f32> {
    let glen = scheme.group_len(inp);
    let mut d = vec![0f32; out * inp];
    d.par_chunks_mut(inp)
        .zip(w.par_chunks(inp))
        .for_each(|(d, row)| {
            let mut scaled = vec![0f32; glen];
            for (k, (dg, wg)) in d.chunks_mut(glen).zip(row.chunks(glen)).enumerate() {
                let sg = &scales[k * glen..k * glen + wg.len()];
                for ((x, &w), &s) in scaled.iter_mut().zip(wg).zip(sg) {
                    *x = w * s;
                }
                let grid = scheme.fit(scaled[..wg.len()].iter().copied());
                for (((e, &w), &x), &s) in dg.iter_mut().zip(wg).zip(&scaled).zip(sg) {
                    *e = w - grid.round_trip(x) / s;
                }
            }
        });
    d
}

/// `tr(D H D^T)` for row-major `d` (`[out, in]`) and `h` (`[in, in]`), summed in f64.
fn output_error(d: &[f32], out: usize, inp: usize, h: &[f32]) -> f64 {
    let mut dh = vec![0f32; out * inp];
    {
        // A row-major destination as the transpose of a column-major view (see obs.rs).
        let dst = MatMut::from_column_major_slice_mut(&mut dh, inp, out).transpose_mut();
        let lhs = MatRef::from_row_major_slice(d, out, inp);
        let rhs = MatRef::from_row_major_slice(h, inp, inp);
        matmul(
            dst,
            Accum::Replace,
            lhs,
            rhs,
            1.0,
            faer::get_global_parallelism(),
        );
    }
    // Per-row sums added in order: a parallel reduction's order (and so its rounding) would
    // depend on scheduling, and a resumed run must choose exactly the same scales.
    let rows: Vec<f64> = dh
        .par_chunks(inp)
        .zip(d.par_chunks(inp))
        .map(|(a, b)| {
            a.iter()
                .zip(b)
                .map(|(&x, &y)| f64::from(x * y))
                .sum::<f64>()
        })
        .collect();
    rows.iter().sum()
}

/// The Hessian of inputs divided by `scales`: `H_ij / (s_i s_j)`.
pub fn scale_hessian(hessian: &mut [f64], scales: &[f32]) {
    let n = scales.len();
    hessian
        .par_chunks_mut(n)
        .zip(scales.par_iter())
        .for_each(|(row, &si)| {
            for (v, &sj) in row.iter_mut().zip(scales) {
                *v /= f64::from(si) * f64::from(sj);
            }
        });
}

/// What a clipping search did to one linear.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClipOutcome {
    /// Mean of the chosen range fractions over row-groups (1 = nothing clipped).
    pub mean_fraction: f32,
    /// Sum over row-groups of `d^T H_gg d`, unclipped and with the chosen ranges.
    pub unclipped_error: f64,
    pub error: f64,
}

/// Clamps each row-group of `weight` (`[out, in]`, row-major, already scaled) to the range
/// whose rounding gives the least output error of that group (see the module docs), with the
/// Hessian of its (scaled) input.
pub fn search_clip(
    weight: &mut [f32],
    shape: [usize; 2],
    hessian: &[f64],
    scheme: QuantScheme,
) -> Result<ClipOutcome> {
    let [out, inp] = shape;
    scheme.check_shape("weight", shape)?;
    if weight.len() != out * inp || hessian.len() != inp * inp {
        return Err(Error::Invalid(format!(
            "AWQ clipping: {} weights and {} Hessian values for [{out}, {inp}]",
            weight.len(),
            hessian.len()
        )));
    }
    let glen = scheme.group_len(inp);
    // Each group's diagonal block of H, row-major, in f32.
    let blocks: Vec<Vec<f32>> = (0..inp.div_ceil(glen))
        .map(|k| {
            let (c0, c1) = (k * glen, ((k + 1) * glen).min(inp));
            (c0..c1)
                .flat_map(|i| {
                    hessian[i * inp + c0..i * inp + c1]
                        .iter()
                        .map(|&v| v as f32)
                })
                .collect()
        })
        .collect();
    let per_row: Vec<(f32, f64, f64)> = weight
        .par_chunks_mut(inp)
        .map(|row| {
            let (mut fractions, mut before, mut after) = (0f32, 0f64, 0f64);
            let mut d = vec![0f32; glen];
            for (wg, hg) in row.chunks_mut(glen).zip(&blocks) {
                let n = wg.len();
                let max = wg.iter().fold(0f32, |m, w| m.max(w.abs()));
                let mut best = (1.0f32, f64::INFINITY);
                let mut first = 0.0;
                for i in 0..CLIP_CANDIDATES {
                    let p = 1.0 - i as f32 / CLIP_STEPS;
                    let c = max * p;
                    let grid = scheme.fit(wg.iter().map(|w| w.clamp(-c, c)));
                    for (e, &w) in d.iter_mut().zip(wg.iter()) {
                        *e = w - grid.round_trip(w.clamp(-c, c));
                    }
                    let err = quadratic_form(&d[..n], hg);
                    if i == 0 {
                        first = err;
                    }
                    if err < best.1 {
                        best = (p, err);
                    }
                    if max == 0.0 {
                        break;
                    }
                }
                let c = max * best.0;
                wg.iter_mut().for_each(|w| *w = w.clamp(-c, c));
                fractions += best.0;
                before += first;
                after += best.1;
            }
            (fractions, before, after)
        })
        .collect();
    let groups = (out * inp.div_ceil(glen)).max(1) as f32;
    Ok(ClipOutcome {
        mean_fraction: per_row.iter().map(|r| r.0).sum::<f32>() / groups,
        unclipped_error: per_row.iter().map(|r| r.1).sum(),
        error: per_row.iter().map(|r| r.2).sum(),
    })
}

/// `d^T H d` for row-major `h` (`[n, n]`).
fn quadratic_form(d: &[f32], h: &[f32]) -> f64 {
    let n = d.len();
    h.chunks_exact(n)
        .zip(d)
        .map(|(row, &di)| f64::from(di * dot(row, d)))
        .sum()
}

/// Lanes of partial sums in [`dot`]: independent accumulators the compiler can keep in one
/// SIMD register (a single running sum would serialise every add).
const LANES: usize = 16;

fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let split = a.len() - a.len() % LANES;
    for (x, y) in a[..split]
        .chunks_exact(LANES)
        .zip(b[..split].chunks_exact(LANES))
    {
        for k in 0..LANES {
            acc[k] += x[k] * y[k];
        }
    }
    let tail: f32 = a[split..].iter().zip(&b[split..]).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::HessianAccumulator;
    use crate::testutil::Rng;

    /// Deterministic pseudo-random values in (-1, 1).
    fn noise(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = Rng::new(seed);
        (0..n).map(|_| rng.uniform() as f32 * 2.0 - 1.0).collect()
    }

    /// Activations whose channels differ in magnitude by up to 50x, as LLM activations do.
    fn activations(tokens: usize, inp: usize) -> Vec<f32> {
        let mut x = noise(tokens * inp, 7);
        for row in x.chunks_exact_mut(inp) {
            for (j, v) in row.iter_mut().enumerate() {
                *v *= if j % 7 == 0 { 50.0 } else { 1.0 };
            }
        }
        x
    }

    fn direct_error(x: &[f32], w: &[f32], q: &[f32], out: usize, inp: usize) -> f64 {
        let mut total = 0.0;
        for xt in x.chunks_exact(inp) {
            for r in 0..out {
                let row = |m: &[f32]| -> f32 {
                    m[r * inp..(r + 1) * inp]
                        .iter()
                        .zip(xt)
                        .map(|(a, b)| a * b)
                        .sum()
                };
                total += f64::from(row(w) - row(q)).powi(2);
            }
        }
        total
    }

    #[test]
    fn hessian_error_is_the_output_error() {
        let (tokens, out, inp) = (40, 6, 32);
        let x = activations(tokens, inp);
        let w = noise(out * inp, 3);
        let mut acc = HessianAccumulator::new(inp);
        acc.add_batch_slice(&x).unwrap();
        let h: Vec<f32> = acc.hessian().iter().map(|&v| v as f32).collect();
        let scheme = QuantScheme::new(3, Some(16), true).unwrap();
        let scales: Vec<f32> = (0..inp).map(|j| 1.0 + (j % 5) as f32 * 0.3).collect();
        let d = scaled_rounding_error(&w, out, inp, &scales, scheme);
        let q: Vec<f32> = w.iter().zip(&d).map(|(w, d)| w - d).collect();
        // H = 2/n X^T X, so tr(D H D^T) = 2/n ||X D^T||^2.
        let via_hessian = output_error(&d, out, inp, &h);
        let direct = direct_error(&x, &w, &q, out, inp) * 2.0 / tokens as f64;
        assert!(
            (via_hessian - direct).abs() <= 1e-3 * direct,
            "{via_hessian} vs {direct}"
        );
    }

    #[test]
    fn scales_beat_rounding_on_outlier_channels_and_never_lose() {
        let (tokens, out, inp) = (256, 16, 64);
        let x = activations(tokens, inp);
        let w = noise(out * inp, 11);
        let mut acc = HessianAccumulator::new(inp);
        acc.add_batch_slice(&x).unwrap();
        let mut mag = ChannelMagnitude::new(inp);
        let xt =
            candle_core::Tensor::from_slice(&x, (tokens, inp), &candle_core::Device::Cpu).unwrap();
        mag.add_batch(&xt).unwrap();
        let scheme = QuantScheme::new(3, Some(32), false).unwrap();
        let group = [GroupWeight { weight: &w, out }];
        let found = search_scales(
            &group,
            acc.hessian(),
            &mag.mean(),
            scheme,
            &AwqOptions::default(),
        )
        .unwrap();
        assert!(found.ratio.is_some(), "no scaling helped: {found:?}");
        assert!(
            found.error < 0.8 * found.unscaled_error,
            "{} vs {}",
            found.error,
            found.unscaled_error
        );
        // The outlier channels get the larger scales.
        let mean = |pick: bool| {
            let v: Vec<f32> = (0..inp)
                .filter(|j| (j % 7 == 0) == pick)
                .map(|j| found.scales[j])
                .collect();
            v.iter().sum::<f32>() / v.len() as f32
        };
        assert!(mean(true) > 2.0 * mean(false));

        // Uniform channels: nothing to gain; the identity stays a candidate.
        let flat = noise(tokens * inp, 5);
        let mut acc = HessianAccumulator::new(inp);
        acc.add_batch_slice(&flat).unwrap();
        let found = search_scales(
            &group,
            acc.hessian(),
            &vec![0.5; inp],
            scheme,
            &AwqOptions::default(),
        )
        .unwrap();
        assert!(found.error <= found.unscaled_error);
    }

    #[test]
    fn scaled_hessian_is_the_hessian_of_scaled_inputs() {
        let (tokens, inp) = (20, 8);
        let x = activations(tokens, inp);
        let s: Vec<f32> = (0..inp).map(|j| 0.5 + j as f32 * 0.25).collect();
        let scaled: Vec<f32> = x
            .chunks_exact(inp)
            .flat_map(|row| row.iter().zip(&s).map(|(v, s)| v / s).collect::<Vec<_>>())
            .collect();
        let (mut a, mut b) = (HessianAccumulator::new(inp), HessianAccumulator::new(inp));
        a.add_batch_slice(&x).unwrap();
        b.add_batch_slice(&scaled).unwrap();
        let mut h = a.into_hessian();
        scale_hessian(&mut h, &s);
        for (u, v) in h.iter().zip(b.hessian()) {
            assert!((u - v).abs() <= 1e-4 * v.abs().max(1.0), "{u} vs {v}");
        }
    }

    #[test]
    fn clipping_lowers_the_group_errors_it_measures() {
        let (tokens, out, inp) = (128, 8, 64);
        let x = activations(tokens, inp);
        let mut w = noise(out * inp, 13);
        // One large weight per row stretches its group's grid.
        for r in 0..out {
            w[r * inp + 3] = 4.0;
        }
        let mut acc = HessianAccumulator::new(inp);
        acc.add_batch_slice(&x).unwrap();
        let scheme = QuantScheme::new(3, Some(32), true).unwrap();
        let original = w.clone();
        let outcome = search_clip(&mut w, [out, inp], acc.hessian(), scheme).unwrap();
        assert!(outcome.error <= outcome.unclipped_error);
        assert!(outcome.mean_fraction <= 1.0 && outcome.mean_fraction >= 0.55);
        // Clamping only: every weight kept or moved toward zero.
        for (a, b) in original.iter().zip(&w) {
            assert!(b.abs() <= a.abs() && a.signum() * b.signum() >= 0.0);
        }
        assert!(search_clip(&mut w, [out, inp + 1], acc.hessian(), scheme).is_err());
    }
}
