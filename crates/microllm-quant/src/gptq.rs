//! GPTQ: quantize a layer column by column, pushing each rounding error onto the columns not yet
//! quantized so that the layer's *output* on calibration data stays close (Frantar et al., 2022,
//! "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained Transformers").
//!
//! The steps, with the paper's sections:
//!
//! 1. Dead inputs (`H_jj = 0`, never active in calibration) get `H_jj = 1` and a zero weight:
//!    nothing can be learned about them and a zero diagonal would make `H` singular (as in the
//!    reference implementation).
//! 2. Act-order (the reference repository's later `--act-order` / `desc_act`, not in the paper's
//!    experiments; section 4, step 1 shows any fixed order works): columns are processed by
//!    descending `diag(H)`, so the most salient inputs are quantized first while many columns
//!    are left to absorb their error. The order is recorded.
//! 3. Dampening `lambda = damp_percent * mean(diag H)` on the diagonal (section 4, "Cholesky
//!    reformulation", numerical stability). If a Cholesky factorisation still fails the damping
//!    is multiplied by 10 and retried a few times; the damping used is reported.
//! 4. `U = chol(H^-1)` (upper, `H^-1 = U^T U`): row `p` of `U` holds, scaled, exactly the
//!    inverse-Hessian entries the OBS update needs once columns `< p` are fixed (section 4,
//!    step 3, "Cholesky reformulation"). Computed with `faer` in f32, as the reference does,
//!    from one factorisation of the order-reversed Hessian (accumulated in f64, rounded once)
//!    and one triangular inverse, in place (see `factor.rs`). f64 made a LLaMA-2-7B-sized
//!    block 1.6x slower (65.9 s against 41.4 s) for a 0.05% perplexity difference on
//!    SmolLM2 (docs/benchmarks.md).
//! 5. Lazy batch updates (section 4, step 2): within a block of `block_size` columns the error
//!    `e_p = (w_p - q_p) / U_pp` updates only the block's remaining columns; the rest of the
//!    rows get `-E U[block, rest]` once per block, as one matrix product over all rows.
//! 6. Groups (the grouping of the paper's section 5 experiments): a group's grid is fitted
//!    when its first column is reached, on the current (already error-corrected) weights, as
//!    in the reference; with static groups every grid is fitted up front on the original
//!    weights, in original column order.
//! 7. Grids: min/max, or (the default) the clipping search of the reference's `mse` option
//!    ([`ClipSearch`]), with each column's squared error weighted by what the objective pays
//!    for it, `1 / U_pp^2`. On SmolLM2 Q4_0 this is worth more than act-order: see
//!    docs/benchmarks.md.
//!
//! Each output row's problem is independent given `U` (the paper's observation that the
//! column order can be shared across rows), so within a block rows are processed in parallel
//! chunks with rayon, and the update past the block is a multi-threaded GEMM.
//! One difference from the reference: a group starting inside a block is fitted on the
//! block's up-to-date values (the reference reads the stale global copy there); columns past
//! the block still lack the block's pending lazy update in both. So ours fits every group on
//! exact current values whenever the group size divides `block_size` (defaults: 128 and 128).
//!
//! Memory: besides the caller's Hessian (kept until its factorisation succeeds), one
//! `[in, in]` f32 matrix (the factor, then `L^-1`, which `U` is a view of) and two f32 copies
//! of the weight.

use std::borrow::Cow;
use std::time::{Duration, Instant};

use candle_core::Tensor;
use microllm_core::{Error, Result};
use rayon::prelude::*;

use crate::obs::{Fitter, GroupMode, PruneRule, Quantize, Rows, Sweep};
use crate::rtn::{check_weight, weight_data};
use crate::scheme::{ClipSearch, Grid};
use crate::{HessianAccumulator, ObsFactor, QuantScheme, QuantizedWeight};

/// GPTQ knobs; the defaults are the reference implementation's, except that the clipping
/// search (the reference's optional `mse` grids) is on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GptqOptions {
    /// Dampening as a fraction of `mean(diag H)`.
    pub damp_percent: f64,
    /// Columns per lazy-update block.
    pub block_size: usize,
    /// Process columns by descending `diag(H)`.
    pub act_order: bool,
    /// Fit all group grids up front on the original weights.
    pub static_groups: bool,
    /// Choose each group's clipping range by search instead of min/max; the error of each
    /// column is weighted by how much GPTQ's objective pays for it (`1 / U_pp^2`).
    pub clip_search: Option<ClipSearch>,
}

impl Default for GptqOptions {
    fn default() -> Self {
        Self {
            damp_percent: 0.01,
            block_size: 128,
            act_order: false,
            static_groups: false,
            clip_search: Some(ClipSearch::default()),
        }
    }
}

/// What a GPTQ run measured and decided.
#[derive(Debug, Clone, PartialEq)]
pub struct GptqStats {
    /// The reference's loss, `sum (w - q)^2 / (2 U_pp^2)` over all weights: the increase of the
    /// layer's calibration objective (up to the Hessian's scale).
    pub loss: f64,
    /// Dampening fraction finally used (larger than asked if Cholesky needed retries).
    pub damp_percent: f64,
    /// The absolute value added to the Hessian diagonal.
    pub damp: f64,
    /// Number of retries with a larger dampening.
    pub damp_retries: u32,
    /// Input columns with `H_jj = 0`, whose weights were set to zero.
    pub dead_columns: usize,
    /// Where the time went.
    pub timings: ObsTimings,
}

/// Wall-clock time of the parts of an OBS solve, for profiles (docs/benchmarks.md).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ObsTimings {
    /// Dampening, Cholesky factorisation and triangular inverse.
    pub factor: Duration,
    /// Grids fitted before the sweep (per-channel or static groups).
    pub fit: Duration,
    /// The column sweep: fixing columns and the in-block updates (including dynamic groups'
    /// grid fits).
    pub columns: Duration,
    /// The lazy updates past each block.
    pub update: Duration,
}

/// What an OBS sweep ([`obs_compress`]) does to a layer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ObsTarget<'a> {
    /// Round the kept weights to this scheme's grids (GPTQ); `None` keeps them in full
    /// precision, so they only absorb the errors (SparseGPT alone).
    pub scheme: Option<QuantScheme>,
    /// Weights to prune, row-major `[out, in]` (`true` = pruned), decided before the sweep
    /// (Wanda or magnitude masks, whose error the sweep then compensates).
    pub mask: Option<&'a [bool]>,
    /// Weights to prune, decided during the sweep by OBS saliency (SparseGPT).
    pub rule: Option<PruneRule>,
}

/// The outcome of [`obs_compress`].
#[derive(Debug, Clone, PartialEq)]
pub struct ObsResult {
    /// The layer's new weights, row-major `[out, in]`: pruned ones are 0, quantized ones are
    /// their grid points.
    pub weight: Vec<f32>,
    /// The codes, when a scheme was given (pruned weights hold their group's zero point).
    pub quantized: Option<QuantizedWeight>,
    /// Row-major `[out, in]`, `true` where the weight was pruned.
    pub pruned: Vec<bool>,
    pub stats: GptqStats,
}

/// GPTQ on a 2-D weight tensor with an accumulated Hessian.
pub fn gptq_quantize_tensor(
    weight: &Tensor,
    hessian: &mut HessianAccumulator,
    scheme: QuantScheme,
    opts: GptqOptions,
) -> Result<(QuantizedWeight, GptqStats)> {
    let (shape, data) = weight_data(weight)?;
    gptq_quantize(&data, shape, hessian.hessian(), scheme, opts)
}

/// GPTQ on a row-major `[out, in]` weight, with `hessian` row-major `[in, in]`.
pub fn gptq_quantize(
    weight: &[f32],
    shape: [usize; 2],
    hessian: &[f64],
    scheme: QuantScheme,
    opts: GptqOptions,
) -> Result<(QuantizedWeight, GptqStats)> {
    let target = ObsTarget {
        scheme: Some(scheme),
        mask: None,
        rule: None,
    };
    let result = obs_compress(weight, shape, hessian, target, opts)?;
    Ok((result.quantized.expect("a scheme was given"), result.stats))
}

/// The general OBS sweep behind GPTQ and SparseGPT: prune by a mask or a rule, quantize or
/// not, with the errors compensated through the inverse Hessian (see [`crate::obs`]).
///
/// `hessian` may be borrowed (it is shared with other linears of the same input) or owned, in
/// which case it is freed once the factorisation has its own copy.
pub fn obs_compress<'h>(
    weight: &[f32],
    shape: [usize; 2],
    hessian: impl Into<Cow<'h, [f64]>>,
    target: ObsTarget<'_>,
    opts: GptqOptions,
) -> Result<ObsResult> {
    // Everything cheap is checked before the factorisation.
    let ng = check_solve(weight, shape, &target, opts)?;
    let factor = ObsFactor::new(hessian, shape[1], opts)?;
    let mut result = sweep(weight, shape, ng, &factor, target, opts)?;
    result.stats.timings.factor = factor.seconds();
    Ok(result)
}

/// Checks everything about a solve but the Hessian: the weight, the scheme's fit to its
/// shape, the options and the target.
fn check_solve(
    weight: &[f32],
    shape: [usize; 2],
    target: &ObsTarget<'_>,
    opts: GptqOptions,
) -> Result<usize> {
    let ng = match target.scheme {
        Some(scheme) => scheme.check_shape("weight", shape)?,
        None => 1,
    };
    check_weight(weight, shape)?;
    check_options(opts)?;
    check_target(target, shape, opts)?;
    Ok(ng)
}

/// [`obs_compress`] with the factorisation of the input's Hessian already done, so linears
/// that read the same input (q, k and v; gate and up) share one. `opts` must be the options
/// the factor was built with. The stats' factorisation time is zero: it is the factor's.
pub fn obs_compress_factored(
    weight: &[f32],
    shape: [usize; 2],
    factor: &ObsFactor,
    target: ObsTarget<'_>,
    opts: GptqOptions,
) -> Result<ObsResult> {
    let ng = check_solve(weight, shape, &target, opts)?;
    factor.check_fits(shape, opts)?;
    sweep(weight, shape, ng, factor, target, opts)
}

/// The solve of a checked weight (`ng` groups per row) against a fitting factor.
fn sweep(
    weight: &[f32],
    shape: [usize; 2],
    ng: usize,
    factor: &ObsFactor,
    target: ObsTarget<'_>,
    opts: GptqOptions,
) -> Result<ObsResult> {
    let [out, n] = shape;
    let dead = factor.dead_columns();
    let u = factor.u();
    let ObsFactor {
        perm,
        cost: cost_p,
        damp_percent,
        damp,
        damp_retries,
        ..
    } = factor;
    let (damp_percent, damp, damp_retries) = (*damp_percent, *damp, *damp_retries);
    let mut w: Vec<f32> = weight.to_vec();
    let dead_columns = dead.clone().count();
    for j in dead {
        for r in 0..out {
            w[r * n + j] = 0.0;
        }
    }
    let t_fit = Instant::now();

    // Grids: fitted up front (per-channel, or static groups) on the original column order, or
    // when each group is reached.
    let precomputed = target
        .scheme
        .is_some_and(|s| s.group_size.is_none() || opts.static_groups);
    let mut grids = Vec::new();
    let quantize = target.scheme.map(|scheme| {
        let g = scheme.group_len(n);
        let fitter = Fitter {
            scheme,
            search: opts.clip_search,
        };
        grids = vec![scheme.fit([0.0]); out * ng];
        let mode = if precomputed {
            let mut cost = vec![0.0f32; n];
            for (p, &c) in perm.iter().enumerate() {
                cost[c] = cost_p[p];
            }
            grids
                .par_chunks_mut(ng)
                .zip(w.par_chunks(n))
                .for_each(|(grids, row)| {
                    for (k, grid) in grids.iter_mut().enumerate() {
                        let cols = k * g..(k + 1) * g;
                        *grid = fitter.fit(&row[cols.clone()], &cost[cols]);
                    }
                });
            GroupMode::Fixed(perm.iter().map(|&c| (c / g) as u32).collect())
        } else {
            GroupMode::Dynamic(g)
        };
        Quantize { fitter, mode, ng }
    });

    let fit = t_fit.elapsed();

    // 5-6. Row-parallel sweep in processing order.
    let permute = |k: usize| (k / n) * n + perm[k % n];
    let mut wp: Vec<f32> = (0..out * n).map(|k| w[permute(k)]).collect();
    drop(w);
    let mut pruned_p: Vec<bool> = match target.mask {
        Some(mask) => (0..out * n).map(|k| mask[permute(k)]).collect(),
        None => vec![false; out * n],
    };
    let mut codes_p = vec![0u8; out * n];
    let sweep = Sweep {
        u,
        cost: cost_p,
        block_size: opts.block_size,
        quantize,
        rule: target.rule,
    };
    // Without a scheme the codes and grids are unused placeholders (one byte per weight).
    if grids.is_empty() {
        grids = vec![Grid::default(); out * ng];
    }
    let (loss, sweep_timings) = sweep.run(Rows {
        w: &mut wp,
        codes: &mut codes_p,
        grids: &mut grids,
        pruned: &mut pruned_p,
    });

    // Back to the original column order.
    let mut weight_out = vec![0.0f32; out * n];
    let mut pruned = vec![false; out * n];
    let quantizing = sweep.quantize.is_some();
    drop(sweep);
    let mut codes = vec![0u8; if quantizing { out * n } else { 0 }];
    for r in 0..out {
        for (p, &c) in perm.iter().enumerate() {
            weight_out[r * n + c] = wp[r * n + p];
            pruned[r * n + c] = pruned_p[r * n + p];
            if quantizing {
                codes[r * n + c] = codes_p[r * n + p];
            }
        }
    }
    let quantized = target.scheme.map(|scheme| {
        let g = scheme.group_len(n);
        let g_idx = (opts.act_order && !precomputed).then(|| {
            let mut gi = vec![0u32; n];
            for (p, &c) in perm.iter().enumerate() {
                gi[c] = (p / g) as u32;
            }
            gi
        });
        QuantizedWeight {
            shape,
            scheme,
            codes,
            scales: grids.iter().map(|gr| gr.scale).collect(),
            zeros: grids.iter().map(|gr| gr.zero).collect(),
            g_idx,
            perm: opts
                .act_order
                .then(|| perm.iter().map(|&c| c as u32).collect()),
        }
    });
    Ok(ObsResult {
        weight: weight_out,
        quantized,
        pruned,
        stats: GptqStats {
            loss,
            damp_percent,
            damp,
            damp_retries,
            dead_columns,
            timings: ObsTimings {
                factor: Duration::ZERO,
                fit,
                columns: sweep_timings.columns,
                update: sweep_timings.update,
            },
        },
    })
}

/// Checks a target against the weight's shape and the options.
fn check_target(target: &ObsTarget<'_>, shape: [usize; 2], opts: GptqOptions) -> Result<()> {
    let [out, n] = shape;
    if let Some(mask) = target.mask
        && mask.len() != out * n
    {
        return Err(Error::Invalid(format!(
            "a pruning mask for a weight of shape [{out}, {n}] needs {} entries, got {}",
            out * n,
            mask.len()
        )));
    }
    match target.rule {
        Some(PruneRule::Fraction(f)) if !(0.0..1.0).contains(&f) => Err(Error::Invalid(format!(
            "sparsity must be in [0, 1), got {f}"
        ))),
        Some(PruneRule::NOfM { n: keep, m }) => {
            if keep == 0 || keep >= m {
                return Err(Error::Invalid(format!(
                    "an N:M pattern keeps N of every M weights with 0 < N < M, got {keep}:{m}"
                )));
            }
            if !n.is_multiple_of(m) {
                return Err(Error::Invalid(format!(
                    "an {keep}:{m} pattern needs rows whose length is a multiple of {m}; this \
                     weight has shape [{out}, {n}]"
                )));
            }
            if opts.act_order {
                return Err(Error::Invalid(
                    "an N:M pattern needs columns in their original order: act-order cannot \
                     be combined with it"
                        .into(),
                ));
            }
            if !opts.block_size.min(n).is_multiple_of(m) {
                return Err(Error::Invalid(format!(
                    "an {keep}:{m} pattern needs a block size that is a multiple of {m}, got {}",
                    opts.block_size
                )));
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Checks the options that do not depend on a weight.
pub(crate) fn check_options(opts: GptqOptions) -> Result<()> {
    if !(opts.damp_percent.is_finite() && opts.damp_percent > 0.0) {
        return Err(Error::Invalid(format!(
            "GPTQ dampening (damp_percent) must be a positive number, got {}",
            opts.damp_percent
        )));
    }
    if opts.block_size == 0 {
        return Err(Error::Invalid(
            "GPTQ block size (block_size) must be positive, got 0".into(),
        ));
    }
    Ok(())
}
