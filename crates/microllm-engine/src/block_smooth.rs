//! SmoothQuant's block pass (Xiao et al., 2023): activation outliers migrated into the weights
//! before a W8A8 quantization, by per-channel scales folded into the norms.
//!
//! Per-token int8 activations lose the small channels of a token whose few outlier channels
//! set its scale. Dividing input channel `j` by `s_j = max|X_j|^a / max|W_j|^(1-a)` (maxima
//! over the calibration tokens and over the rows of every linear reading the input, the
//! migration strength `a` in (0, 1]) and multiplying weight column `j` by it evens the
//! activation ranges at the price of the weights', which per-channel int8 weights absorb
//! well. The scales fold wherever AWQ's do ([`crate::fold_scales`]), so the model is unchanged
//! in full precision: into the norms in front of q/k/v and gate/up (llm-compressor's default
//! mappings), and also into up's rows for down's input in gated MLPs and into v's rows for o
//! without grouped-query attention. On SmolLM2-135M (W8A8, RTN, alpha 0.5, 16 x 512
//! calibration, 8 x 512 of wiki.eval.txt; docs/benchmarks.md) the norms alone gave perplexity
//! 21.5703 -> 21.8600
//! and KL 0.0185, with up -> down as well 21.7882 and KL 0.0144 (down's input, the gated MLP
//! state, holds the widest outliers). A channel with no weight or no activation keeps `s = 1`.

use std::collections::BTreeMap;
use std::time::Instant;

use candle_core::Tensor;
use microllm_core::Result;
use microllm_models::{Block, Positions};

use crate::block_awq::{
    Producer, ScaleGroup, fold_scales, folded_tensors, group_inputs, scale_groups,
};
use crate::block_quant::BlockPhases;

/// Smallest weight maximum a scale divides by (llm-compressor's clamp).
const MIN_WEIGHT_MAX: f32 = 1e-5;

/// Folds SmoothQuant's scales with strength `alpha` into `block`'s norms; returns the norms it
/// changed, by checkpoint name. With `propagate`, `hidden` becomes the block's outputs (the
/// function is unchanged, so these are the full-precision outputs).
pub(crate) fn smooth_block(
    block: &mut Block,
    hidden: &mut [Tensor],
    at: Positions<'_>,
    alpha: f32,
    propagate: bool,
    phases: &mut BlockPhases,
) -> Result<BTreeMap<String, Tensor>> {
    let groups: Vec<ScaleGroup> = scale_groups(block)
        .into_iter()
        .filter(|g| g.foldable)
        .collect();
    let mut maxima: Vec<Vec<f32>> = groups
        .iter()
        .map(|g| vec![0f32; block.linear(g.kinds[0]).expect("present").in_features()])
        .collect();
    let slot = |p: Producer| groups.iter().position(|g| g.producer == p);
    for x in hidden.iter_mut() {
        let inputs = group_inputs(block, x, at, propagate, phases)?;
        let started = Instant::now();
        for (producer, input) in &inputs {
            if let Some(i) = slot(*producer) {
                let values = input
                    .to_dtype(candle_core::DType::F32)?
                    .flatten_all()?
                    .to_vec1::<f32>()?;
                raise_column_maxima(&mut maxima[i], &values);
            }
        }
        phases.statistics += started.elapsed().as_secs_f64();
    }
    let started = Instant::now();
    for (group, x_max) in groups.iter().zip(&maxima) {
        let mut w_max = vec![0f32; x_max.len()];
        for &kind in &group.kinds {
            let w = block.linear(kind).expect("present").weight()?;
            let w = w
                .to_dtype(candle_core::DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            raise_column_maxima(&mut w_max, &w);
        }
        let scales = smoothing_scales(x_max, &w_max, alpha);
        fold_scales(block, group, &scales)?;
    }
    phases.solve += started.elapsed().as_secs_f64();
    Ok(folded_tensors(block, &groups))
}

/// `max|x_j|^a / max(max|W_j|, 1e-5)^(1-a)`, 1 where the column is all zero or the channel
/// never fires.
pub fn smoothing_scales(x_max: &[f32], w_max: &[f32], alpha: f32) -> Vec<f32> {
    x_max
        .iter()
        .zip(w_max)
        .map(|(&x, &w)| {
            if w == 0.0 || x == 0.0 {
                return 1.0;
            }
            let s = x.powf(alpha) / w.max(MIN_WEIGHT_MAX).powf(1.0 - alpha);
            if s.is_finite() && s > 0.0 { s } else { 1.0 }
        })
        .collect()
}

/// Raises `maxima[j]` to the largest `|v|` of column `j` of row-major `values`.
fn raise_column_maxima(maxima: &mut [f32], values: &[f32]) {
    for row in values.chunks_exact(maxima.len()) {
        for (m, v) in maxima.iter_mut().zip(row) {
            *m = m.max(v.abs());
        }
    }
}
