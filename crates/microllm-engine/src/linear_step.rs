//! What happens to one linear layer inside a block pass: pruning, then quantization, either
//! optional, solved jointly when both are calibrated.
//!
//! | pruning \ quantization | none                        | RTN                 | GPTQ                     |
//! |------------------------|-----------------------------|---------------------|--------------------------|
//! | none                   | (nothing to do)             | RTN                 | GPTQ                     |
//! | magnitude              | zero the mask               | zero, then RTN      | GPTQ with the mask fixed |
//! | Wanda                  | zero the mask (no update)   | (needs calibration) | GPTQ with the mask fixed |
//! | SparseGPT              | OBS sweep, kept weights f32 | (needs calibration) | one OBS sweep, joint     |
//!
//! "GPTQ with the mask fixed" is SparseGPT's joint mode with a mask chosen beforehand: the
//! pruned weights go to zero and the kept ones to their grid points in one sweep, every error
//! compensated by the columns not yet fixed (Frantar & Alistarh, 2023, section 3.5). Pruned
//! weights are stored as their group's zero point, so they dequantize to exactly 0.

use std::borrow::Cow;

use candle_core::Tensor;
use microllm_core::{Error, Result};
use microllm_prune::{
    PruneMethod, Ranking, SparsityPattern, magnitude_scores, mask_from_scores, wanda_scores,
};
use microllm_quant::{
    GptqOptions, ObsFactor, ObsTarget, QuantScheme, QuantizedWeight, obs_compress,
    obs_compress_factored, rtn_quantize,
};
use serde::{Deserialize, Serialize};

/// Pruning of every linear of a block.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PruneSpec {
    pub method: PruneMethod,
    pub pattern: SparsityPattern,
    /// Comparison group of unstructured magnitude and Wanda masks.
    pub ranking: Ranking,
}

/// What the calibration inputs of a linear were reduced to.
pub(crate) enum InputStatistic<'a> {
    /// The Hessian, row-major `[in, in]`: borrowed while other linears still need it, owned
    /// by the last one so the solver can free it early.
    Hessian(Cow<'a, [f64]>),
    /// Only its diagonal (Wanda without an OBS solve).
    Diagonal(Cow<'a, [f64]>),
    /// The Hessian already factorised, shared by the linears that read the same input.
    Factored(&'a ObsFactor),
}

/// The outcome for one linear.
pub(crate) struct LinearOutcome {
    /// The weight the compressed model will compute with, row-major `[out, in]`.
    pub weight: Vec<f32>,
    /// The codes, when quantized.
    pub quantized: Option<QuantizedWeight>,
    /// Fraction of weights that are zero because they were pruned (`None` without pruning).
    pub sparsity: Option<f64>,
    /// The OBS loss of a calibrated sweep.
    pub obs_loss: Option<f64>,
    pub damp_percent: Option<f64>,
}

/// Prunes and/or quantizes `weight` (`[out, in]`, named `name` in errors). `calibrated` holds
/// the solver options and the statistics of the layer's inputs when the pass has calibration
/// data.
pub(crate) fn compress_linear(
    name: &str,
    weight: &Tensor,
    scheme: Option<QuantScheme>,
    prune: Option<PruneSpec>,
    calibrated: Option<(GptqOptions, InputStatistic<'_>)>,
) -> Result<LinearOutcome> {
    let (out, inp) = weight.dims2()?;
    let shape = [out, inp];
    let w = weight
        .to_dtype(candle_core::DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    if let Some(i) = w.iter().position(|v| !v.is_finite()) {
        return Err(Error::NonFinite {
            name: name.to_string(),
            origin: "the model being compressed".into(),
            msg: format!("value {} at [{}, {}] is not finite", w[i], i / inp, i % inp),
        });
    }
    if let Some(s) = scheme {
        s.check_scale_range(name, &w, shape)?;
    }
    if let Some(p) = prune {
        p.pattern.check_shape(name, shape)?;
    }
    // Masks chosen before any solve (magnitude, Wanda).
    let mask = match prune.map(|p| (p, p.method)) {
        Some((p, PruneMethod::Magnitude)) => Some(mask_from_scores(
            &magnitude_scores(&w),
            shape,
            p.pattern,
            p.ranking,
        )?),
        Some((p, PruneMethod::Wanda)) => {
            let (_, stat) = calibrated
                .as_ref()
                .ok_or_else(|| needs_calibration(name, "Wanda"))?;
            let diag: Cow<'_, [f64]> = match stat {
                InputStatistic::Hessian(h) => (0..inp).map(|j| h[j * inp + j]).collect(),
                InputStatistic::Diagonal(d) => Cow::Borrowed(d),
                InputStatistic::Factored(f) => Cow::Borrowed(f.hessian_diagonal()),
            };
            let scores = wanda_scores(&w, shape, &diag)?;
            Some(mask_from_scores(&scores, shape, p.pattern, p.ranking)?)
        }
        Some((_, PruneMethod::SparseGpt)) | None => None,
    };
    let sparse_gpt = prune.filter(|p| p.method == PruneMethod::SparseGpt);
    let solve = match (scheme, sparse_gpt, calibrated) {
        // A calibrated quantization, or SparseGPT: one OBS sweep.
        (Some(_), _, Some(c)) | (None, Some(_), Some(c)) => Some(c),
        (_, Some(_), None) => return Err(needs_calibration(name, "SparseGPT")),
        _ => None,
    };
    if let Some((opts, stat)) = solve {
        let target = ObsTarget {
            scheme,
            mask: mask.as_deref(),
            rule: sparse_gpt.map(|p| p.pattern.obs_rule()),
        };
        let r = match stat {
            InputStatistic::Hessian(h) => obs_compress(&w, shape, h, target, opts),
            InputStatistic::Factored(f) => obs_compress_factored(&w, shape, f, target, opts),
            InputStatistic::Diagonal(_) => {
                return Err(Error::Invalid(format!(
                    "{name}: an OBS solve needs the inputs' full Hessian, not only its diagonal"
                )));
            }
        }
        .map_err(|e| Error::Invalid(format!("{name}: {e}")))?;
        let sparsity = prune.map(|_| fraction(&r.pruned));
        return Ok(LinearOutcome {
            weight: r.weight,
            quantized: r.quantized,
            sparsity,
            obs_loss: Some(r.stats.loss),
            damp_percent: Some(r.stats.damp_percent),
        });
    }
    // No solve: zero the mask, then round to nearest if asked.
    let mut pruned = w;
    if let Some(mask) = &mask {
        for (x, &m) in pruned.iter_mut().zip(mask) {
            if m {
                *x = 0.0;
            }
        }
    }
    let sparsity = mask.as_deref().map(fraction);
    let quantized = scheme
        .map(|s| rtn_quantize(&pruned, shape, s))
        .transpose()?;
    let weight = match &quantized {
        Some(q) => q.dequantize_vec(),
        None => pruned,
    };
    Ok(LinearOutcome {
        weight,
        quantized,
        sparsity,
        obs_loss: None,
        damp_percent: None,
    })
}

fn needs_calibration(name: &str, method: &str) -> Error {
    Error::Invalid(format!(
        "{method} needs calibration activations to prune `{name}`: give calibration data"
    ))
}

fn fraction(mask: &[bool]) -> f64 {
    mask.iter().filter(|&&m| m).count() as f64 / mask.len().max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use microllm_quant::{DiagonalAccumulator, HessianAccumulator};

    /// Wanda from the diagonal alone keeps exactly the weights Wanda from the full Hessian
    /// keeps.
    #[test]
    fn wanda_from_the_diagonal_equals_wanda_from_the_hessian() {
        let (out, inp, dev) = (8, 24, Device::Cpu);
        let mut state = 0x1234_5678_9abc_def1u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        };
        let w: Vec<f32> = (0..out * inp).map(|_| next()).collect();
        // Inputs whose columns differ in scale, as real activations do.
        let x: Vec<f32> = (0..64 * inp)
            .map(|i| next() * (1.0 + (i % inp) as f32 / 4.0))
            .collect();
        let x = Tensor::from_vec(x, (64, inp), &dev).unwrap();
        let (mut full, mut diag) = (HessianAccumulator::new(inp), DiagonalAccumulator::new(inp));
        full.add_batch(&x).unwrap();
        diag.add_batch(&x).unwrap();
        let weight = Tensor::from_vec(w, (out, inp), &dev).unwrap();
        let prune = PruneSpec {
            method: PruneMethod::Wanda,
            pattern: SparsityPattern::Unstructured { sparsity: 0.5 },
            ranking: Ranking::PerRow,
        };
        let opts = GptqOptions::default();
        let run = |stat| compress_linear("w", &weight, None, Some(prune), Some((opts, stat)));
        let a = run(InputStatistic::Hessian(Cow::Borrowed(full.hessian()))).unwrap();
        let b = run(InputStatistic::Diagonal(Cow::Borrowed(diag.diagonal()))).unwrap();
        assert_eq!(a.weight, b.weight);
        assert_eq!(a.sparsity, Some(0.5));
    }
}
