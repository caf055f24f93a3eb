//! Per-block sparsities from OWL's outlier ratios, measured on the dense model.
//!
//! OWL (see `microllm_prune::Schedule`) needs every block's outlier ratio before the first
//! block is pruned, so it is measured in a pass of its own over the original weights: the
//! importance matrix pass ([`measure_imatrix`]) gives each linear's mean squared input per
//! column, `E[x_j^2]`, and a block's Wanda scores are `|W_ij| * sqrt(E[x_j^2])` (the paper's
//! `|W_ij| * ||X_j||_2` up to the common factor `sqrt(tokens)`, which no ratio sees). The
//! weights are then read again one linear at a time.

use microllm_core::{Error, LinearKind, ModelConfig, Progress, Result, TensorSource, names};
use microllm_io::gguf::ImportanceMatrix;
use microllm_prune::{outlier_ratio, owl_sparsities};
use serde::Serialize;

/// What OWL measured and decided.
#[derive(Debug, Clone, Serialize)]
pub struct OwlSchedule {
    /// Fraction of each block's Wanda scores above `threshold` times the block's mean.
    pub outlier_ratios: Vec<f64>,
    /// The sparsity each block is pruned to.
    pub sparsities: Vec<f64>,
}

/// OWL's per-block sparsities around `target`, from `importance` (measured on the dense model
/// over the calibration windows) and the weights in `source`.
pub fn owl_schedule(
    cfg: &ModelConfig,
    source: &dyn TensorSource,
    importance: &ImportanceMatrix,
    target: f64,
    (threshold, lambda): (f64, f64),
    progress: &dyn Progress,
) -> Result<OwlSchedule> {
    let mut outlier_ratios = Vec::with_capacity(cfg.num_layers);
    progress.begin("OWL outlier ratios", cfg.num_layers as u64, "blocks");
    for layer in 0..cfg.num_layers {
        let mut scores = Vec::new();
        for kind in LinearKind::ALL {
            let name = names::linear_weight(cfg.family, layer, kind);
            if !source.contains(&name) {
                continue;
            }
            let input_rms: Vec<f32> = importance
                .columns(&name)
                .ok_or_else(|| {
                    Error::Invalid(format!("no input statistics for `{name}` (OWL needs them)"))
                })?
                .iter()
                .map(|m| m.sqrt())
                .collect();
            let w = source.load(&name)?;
            let (_, cols) = w.dims2()?;
            if cols != input_rms.len() {
                return Err(Error::Invalid(format!(
                    "`{name}` has {cols} input columns, its statistics {}",
                    input_rms.len()
                )));
            }
            let w = w.flatten_all()?.to_vec1::<f32>()?;
            let block_scores: Vec<f32> = w
                .chunks(cols)
                .flat_map(|row| row.iter().zip(&input_rms).map(|(w, r)| w.abs() * r))
                .collect();
            scores.push(block_scores);
        }
        outlier_ratios.push(outlier_ratio(scores.iter().map(Vec::as_slice), threshold));
        progress.advance(1);
    }
    progress.finish();
    let sparsities = owl_sparsities(&outlier_ratios, target, lambda)?;
    Ok(OwlSchedule {
        outlier_ratios,
        sparsities,
    })
}
