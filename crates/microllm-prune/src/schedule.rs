//! Per-block sparsity schedules: the same sparsity in every block, or OWL's outlier-weighted
//! one.
//!
//! OWL (Yin et al., 2023, "Outlier Weighed Layerwise Sparsity", section 3) observes that the
//! blocks of an LLM differ in how many *outlier* weights they hold, weights whose Wanda score
//! `|W_ij| * ||X_j||_2` exceeds `M` times the block's mean score, and that pruning blocks rich
//! in outliers hurts most. It measures each block's outlier ratio `D_l` on the dense model,
//! maps the ratios linearly onto `[0, 2 lambda]`, and gives block `l` the keep fraction
//! `(1 - S) + d_l - mean(d)`: the average sparsity stays the target `S`, blocks with more
//! outliers keep more weights, and no block's sparsity moves more than `2 lambda` from
//! another's. The paper's LLaMA settings are `M = 5`, `lambda = 0.08`.

use microllm_core::{Error, Result};
use serde::{Deserialize, Serialize};

/// How sparsity is spread over the blocks.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Schedule {
    /// Every block at the target sparsity.
    Uniform,
    /// OWL: outlier-rich blocks pruned less, the mean kept at the target.
    Owl {
        /// Outlier threshold, in multiples of the block's mean score (OWL's `M`).
        threshold: f64,
        /// Half the spread of the blocks' sparsities (OWL's `lambda`).
        lambda: f64,
    },
}

impl Schedule {
    /// OWL with the paper's LLaMA settings.
    pub const OWL_DEFAULT: Schedule = Schedule::Owl {
        threshold: 5.0,
        lambda: 0.08,
    };

    /// Checks the parameters.
    pub fn validate(&self) -> Result<()> {
        match *self {
            Schedule::Uniform => Ok(()),
            Schedule::Owl { threshold, lambda } => {
                if !(threshold.is_finite() && threshold > 0.0) {
                    return Err(Error::Invalid(format!(
                        "the OWL outlier threshold must be a positive multiple of the mean score, \
                         got {threshold}"
                    )));
                }
                if !(lambda.is_finite() && (0.0..0.5).contains(&lambda)) {
                    return Err(Error::Invalid(format!(
                        "the OWL spread lambda must be in [0, 0.5), got {lambda}"
                    )));
                }
                Ok(())
            }
        }
    }
}

/// The fraction of `scores` above `threshold` times their mean (one block's outlier ratio,
/// OWL's `D_l`), over all of the block's linears taken together.
pub fn outlier_ratio<'a>(scores: impl IntoIterator<Item = &'a [f32]>, threshold: f64) -> f64 {
    let parts: Vec<&[f32]> = scores.into_iter().collect();
    let count: usize = parts.iter().map(|p| p.len()).sum();
    if count == 0 {
        return 0.0;
    }
    let sum: f64 = parts.iter().flat_map(|p| p.iter()).map(|&s| s as f64).sum();
    let cut = threshold * sum / count as f64;
    let outliers = parts
        .iter()
        .flat_map(|p| p.iter())
        .filter(|&&s| s as f64 > cut)
        .count();
    outliers as f64 / count as f64
}

/// OWL's per-block sparsities for a mean of `target`, from the blocks' outlier ratios.
///
/// The result averages to `target` exactly; an error when a block would have to keep more
/// than all or less than none of its weights (a target too close to 0 or 1 for this
/// `lambda`).
pub fn owl_sparsities(outlier_ratios: &[f64], target: f64, lambda: f64) -> Result<Vec<f64>> {
    if outlier_ratios.is_empty() {
        return Ok(Vec::new());
    }
    let lo = outlier_ratios.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = outlier_ratios
        .iter()
        .copied()
        .fold(f64::NEG_INFINITY, f64::max);
    // All blocks alike: nothing to weigh, the schedule is uniform.
    let spread = if hi > lo {
        2.0 * lambda / (hi - lo)
    } else {
        0.0
    };
    let shifted: Vec<f64> = outlier_ratios.iter().map(|d| (d - lo) * spread).collect();
    let mean = shifted.iter().sum::<f64>() / shifted.len() as f64;
    let sparsities: Vec<f64> = shifted.iter().map(|d| target - (d - mean)).collect();
    if let Some((block, s)) = sparsities
        .iter()
        .enumerate()
        .find(|(_, s)| !(0.0..1.0).contains(*s))
    {
        return Err(Error::Invalid(format!(
            "OWL with lambda {lambda} around sparsity {target} gives block {block} sparsity \
             {s:.3}, outside [0, 1): lower lambda"
        )));
    }
    Ok(sparsities)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outlier_ratio_counts_scores_above_m_times_the_mean() {
        // Mean of the 10 scores is 1.9: with M = 2 the cut is 3.8, so 5.0 and 10.0 are outliers.
        let a = [0.5f32, 0.5, 0.5, 0.5, 5.0];
        let b = [0.5f32, 0.5, 0.5, 0.5, 10.0];
        let r = outlier_ratio([&a[..], &b[..]], 2.0);
        assert!((r - 0.2).abs() < 1e-12, "{r}");
        assert_eq!(outlier_ratio(std::iter::empty::<&[f32]>(), 5.0), 0.0);
    }

    #[test]
    fn owl_keeps_the_mean_and_spreads_by_two_lambda() {
        let ratios = [0.01, 0.03, 0.02, 0.05];
        let s = owl_sparsities(&ratios, 0.5, 0.08).unwrap();
        let mean = s.iter().sum::<f64>() / s.len() as f64;
        assert!((mean - 0.5).abs() < 1e-12);
        // The block with the most outliers is pruned least, by 2 lambda less than the one with
        // the fewest.
        assert!((s[0] - s[3] - 0.16).abs() < 1e-12, "{s:?}");
        assert!(s[3] < s[1] && s[1] < s[2] && s[2] < s[0]);
    }

    #[test]
    fn equal_ratios_give_a_uniform_schedule_and_extremes_are_refused() {
        assert_eq!(
            owl_sparsities(&[0.1, 0.1], 0.6, 0.08).unwrap(),
            vec![0.6, 0.6]
        );
        assert!(owl_sparsities(&[0.0, 1.0], 0.02, 0.2).is_err());
        assert!(
            Schedule::Owl {
                threshold: 0.0,
                lambda: 0.1
            }
            .validate()
            .is_err()
        );
        assert!(
            Schedule::Owl {
                threshold: 5.0,
                lambda: 0.6
            }
            .validate()
            .is_err()
        );
        assert!(Schedule::OWL_DEFAULT.validate().is_ok());
    }
}
