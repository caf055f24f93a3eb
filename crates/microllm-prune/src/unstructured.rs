//! Unstructured and N:M pruning masks from weight scores: magnitude and Wanda.
//!
//! Both methods rank weights by a score and zero the lowest; they differ in the score:
//!
//! * magnitude: `|W_ij|`, the classic baseline; compared across the whole layer by default.
//! * Wanda (Sun et al., 2023, "A Simple and Effective Pruning Approach for Large Language
//!   Models", section 3): `|W_ij| * ||X_j||_2`, the weight times the norm of its input feature
//!   over the calibration tokens, compared within each output row (the paper's "per output"
//!   comparison group, which it found to matter for LLMs). No weight update.
//!
//! SparseGPT's masks are chosen during its OBS sweep instead
//! ([`microllm_quant::obs_compress`] with a [`microllm_quant::PruneRule`]), because its
//! saliency `w^2 / [H^-1]_jj` changes as earlier columns are fixed.
//!
//! N:M follows NVIDIA's sparse tensor cores: at most `N` nonzero weights in every `M`
//! consecutive weights of a row (2:4, 4:8), the pattern runtimes can accelerate.

use microllm_core::{Error, Result};
use microllm_quant::PruneRule;
use serde::{Deserialize, Serialize};

/// Which weights a pruning method removes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PruneMethod {
    Magnitude,
    Wanda,
    SparseGpt,
}

impl PruneMethod {
    /// Whether the method needs calibration activations.
    pub fn needs_calibration(self) -> bool {
        !matches!(self, PruneMethod::Magnitude)
    }
}

/// How many weights go, and where.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SparsityPattern {
    /// This fraction of the weights, anywhere (within the comparison group).
    Unstructured { sparsity: f64 },
    /// At most `n` nonzero weights in every `m` consecutive weights of a row.
    NOfM { n: usize, m: usize },
}

impl SparsityPattern {
    /// Parses `0.5` (unstructured) or `2:4` (N:M).
    pub fn parse(s: &str) -> Result<Self> {
        let pattern = match s.split_once(':') {
            Some((n, m)) => {
                let num = |x: &str| {
                    x.trim().parse::<usize>().map_err(|_| {
                        Error::Invalid(format!("N:M pattern `{s}`: `{x}` is not a whole number"))
                    })
                };
                SparsityPattern::NOfM {
                    n: num(n)?,
                    m: num(m)?,
                }
            }
            None => SparsityPattern::Unstructured {
                sparsity: s.trim().parse().map_err(|_| {
                    Error::Invalid(format!("sparsity `{s}` is neither a number nor N:M"))
                })?,
            },
        };
        pattern.validate()?;
        Ok(pattern)
    }

    /// Checks the parts that do not depend on a weight.
    pub fn validate(&self) -> Result<()> {
        match *self {
            SparsityPattern::Unstructured { sparsity } if !(0.0..1.0).contains(&sparsity) => Err(
                Error::Invalid(format!("sparsity must be in [0, 1), got {sparsity}")),
            ),
            SparsityPattern::NOfM { n, m } if n == 0 || n >= m => Err(Error::Invalid(format!(
                "an N:M pattern keeps N of every M weights with 0 < N < M, got {n}:{m}"
            ))),
            _ => Ok(()),
        }
    }

    /// Checks the pattern against a weight of shape `[out, in]` named `name`.
    pub fn check_shape(&self, name: &str, shape: [usize; 2]) -> Result<()> {
        self.validate()?;
        if let SparsityPattern::NOfM { n, m } = *self
            && !shape[1].is_multiple_of(m)
        {
            return Err(Error::Invalid(format!(
                "cannot prune `{name}` of shape [{}, {}] to {n}:{m}: its rows are not a \
                 multiple of {m} long",
                shape[0], shape[1]
            )));
        }
        Ok(())
    }

    /// The fraction of weights removed.
    pub fn sparsity(&self) -> f64 {
        match *self {
            SparsityPattern::Unstructured { sparsity } => sparsity,
            SparsityPattern::NOfM { n, m } => 1.0 - n as f64 / m as f64,
        }
    }

    /// The equivalent rule of SparseGPT's sweep.
    pub fn obs_rule(&self) -> PruneRule {
        match *self {
            SparsityPattern::Unstructured { sparsity } => PruneRule::Fraction(sparsity),
            SparsityPattern::NOfM { n, m } => PruneRule::NOfM { n, m },
        }
    }
}

/// Which weights an unstructured score is compared against.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Ranking {
    /// Within each output row (Wanda's default).
    PerRow,
    /// Across the whole layer (magnitude's default).
    PerLayer,
    /// Across every linear of the model: scores at or below this threshold go (found by
    /// [`GlobalThreshold`] over the whole model first), so layers end with different
    /// sparsities that average to the target.
    Global { threshold: f32 },
}

/// Magnitude scores, `|W_ij|`.
pub fn magnitude_scores(weight: &[f32]) -> Vec<f32> {
    weight.iter().map(|w| w.abs()).collect()
}

/// Wanda scores, `|W_ij| * ||X_j||_2`, from the sum of squares of each input feature over the
/// calibration tokens (any positive multiple of it ranks the same: a Hessian diagonal does).
pub fn wanda_scores(weight: &[f32], shape: [usize; 2], input_sq_norms: &[f64]) -> Result<Vec<f32>> {
    let [out, inp] = shape;
    if input_sq_norms.len() != inp || weight.len() != out * inp {
        return Err(Error::Invalid(format!(
            "Wanda on a weight of shape [{out}, {inp}] needs {inp} input norms, got {}",
            input_sq_norms.len()
        )));
    }
    let norms: Vec<f32> = input_sq_norms
        .iter()
        .map(|&s| s.max(0.0).sqrt() as f32)
        .collect();
    Ok(weight
        .chunks(inp)
        .flat_map(|row| row.iter().zip(&norms).map(|(w, n)| w.abs() * n))
        .collect())
}

/// The pruning mask (`true` = pruned) that removes the lowest `scores` of a `[out, in]` weight
/// under `pattern`, ranked per `ranking` for unstructured patterns (N:M always ranks within
/// each group of `M`). Ties go to the earlier weight, so masks are deterministic.
pub fn mask_from_scores(
    scores: &[f32],
    shape: [usize; 2],
    pattern: SparsityPattern,
    ranking: Ranking,
) -> Result<Vec<bool>> {
    pattern.check_shape("weight", shape)?;
    let [out, inp] = shape;
    if scores.len() != out * inp || scores.iter().any(|s| !s.is_finite()) {
        return Err(Error::Invalid(format!(
            "pruning scores for a weight of shape [{out}, {inp}] must be {} finite values",
            out * inp
        )));
    }
    let mut mask = vec![false; out * inp];
    let mut prune_lowest = |range: std::ops::Range<usize>, k: usize| {
        let mut order: Vec<usize> = range.collect();
        order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]).then(a.cmp(&b)));
        for &j in order.iter().take(k) {
            mask[j] = true;
        }
    };
    match (pattern, ranking) {
        (SparsityPattern::NOfM { n, m }, _) => {
            for start in (0..out * inp).step_by(m) {
                prune_lowest(start..start + m, m - n);
            }
        }
        (SparsityPattern::Unstructured { sparsity }, Ranking::PerRow) => {
            let k = (sparsity * inp as f64).round() as usize;
            for r in 0..out {
                prune_lowest(r * inp..(r + 1) * inp, k);
            }
        }
        (SparsityPattern::Unstructured { sparsity }, Ranking::PerLayer) => {
            prune_lowest(
                0..out * inp,
                (sparsity * (out * inp) as f64).round() as usize,
            );
        }
        (SparsityPattern::Unstructured { .. }, Ranking::Global { threshold }) => {
            for (m, &s) in mask.iter_mut().zip(scores) {
                *m = s <= threshold;
            }
        }
    }
    Ok(mask)
}

/// The exact `k`-th smallest of many non-negative scores seen in two passes, in bounded
/// memory: a first pass counts scores per bucket of their f32 bit pattern's top 16 bits (the
/// patterns of non-negative floats sort like the floats), a second keeps only the scores of
/// the bucket holding the `k`-th, which is then selected exactly. So a global magnitude
/// threshold over a model larger than memory costs two reads of its linears and 512 KB.
#[derive(Debug, Clone)]
pub struct GlobalThreshold {
    counts: Vec<u64>,
    total: u64,
    /// Set after the first pass: the bucket of the `k`-th score, its rank within that
    /// bucket, and the scores of that bucket seen so far in the second pass.
    target: Option<(usize, u64, Vec<f32>)>,
}

impl Default for GlobalThreshold {
    fn default() -> Self {
        Self {
            counts: vec![0; 1 << 16],
            total: 0,
            target: None,
        }
    }
}

impl GlobalThreshold {
    fn bucket(score: f32) -> usize {
        (score.abs().to_bits() >> 16) as usize
    }

    /// First pass: counts `scores`.
    pub fn count(&mut self, scores: &[f32]) {
        for &s in scores {
            self.counts[Self::bucket(s)] += 1;
        }
        self.total += scores.len() as u64;
    }

    /// Ends the first pass: the threshold will be the score with `fraction * total` scores
    /// at or below it. Returns false when there is nothing to prune.
    pub fn aim(&mut self, fraction: f64) -> bool {
        let k = (fraction * self.total as f64).round() as u64;
        if k == 0 {
            return false;
        }
        let mut below = 0;
        for (b, &c) in self.counts.iter().enumerate() {
            if below + c >= k {
                self.target = Some((b, k - below, Vec::new()));
                return true;
            }
            below += c;
        }
        false
    }

    /// Second pass: keeps the scores of the target bucket.
    pub fn collect(&mut self, scores: &[f32]) {
        if let Some((b, _, kept)) = &mut self.target {
            kept.extend(
                scores
                    .iter()
                    .map(|s| s.abs())
                    .filter(|&s| Self::bucket(s) == *b),
            );
        }
    }

    /// The threshold: the `k`-th smallest score (`None` when nothing is to be pruned).
    pub fn threshold(mut self) -> Option<f32> {
        let (_, rank, mut kept) = self.target.take()?;
        let i = (rank as usize).checked_sub(1)?;
        if i >= kept.len() {
            return None;
        }
        let (_, t, _) = kept.select_nth_unstable_by(i, f32::total_cmp);
        Some(*t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_parse_and_validate() {
        assert_eq!(
            SparsityPattern::parse("0.5").unwrap(),
            SparsityPattern::Unstructured { sparsity: 0.5 }
        );
        assert_eq!(
            SparsityPattern::parse("2:4").unwrap(),
            SparsityPattern::NOfM { n: 2, m: 4 }
        );
        for bad in ["1.0", "-0.1", "4:4", "5:4", "0:4", "a:4", "half"] {
            assert!(SparsityPattern::parse(bad).is_err(), "{bad}");
        }
        let msg = SparsityPattern::NOfM { n: 2, m: 4 }
            .check_shape("model.layers.0.mlp.down_proj.weight", [8, 6])
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("down_proj") && msg.contains("multiple of 4"),
            "{msg}"
        );
    }

    #[test]
    fn masks_prune_the_lowest_scores_exactly() {
        let scores = [4.0, 1.0, 3.0, 2.0, 0.5, 8.0, 7.0, 6.0];
        let nm = mask_from_scores(
            &scores,
            [2, 4],
            SparsityPattern::NOfM { n: 2, m: 4 },
            Ranking::PerRow,
        )
        .unwrap();
        assert_eq!(nm, [false, true, false, true, true, false, false, true]);
        let half = SparsityPattern::Unstructured { sparsity: 0.5 };
        let per_layer = mask_from_scores(&scores, [2, 4], half, Ranking::PerLayer).unwrap();
        assert_eq!(
            per_layer,
            [false, true, true, true, true, false, false, false]
        );
        assert_eq!(per_layer.iter().filter(|&&m| m).count(), 4);
        // Ties: the earlier weight goes first.
        let tied = mask_from_scores(&[1.0; 4], [1, 4], half, Ranking::PerRow).unwrap();
        assert_eq!(tied, [true, true, false, false]);
    }

    #[test]
    fn global_threshold_is_the_exact_kth_score_over_all_layers() {
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            (rng % 1_000_000) as f32 / 1e5 - 5.0
        };
        let layers: Vec<Vec<f32>> = (0..5)
            .map(|l| (0..1000 + 37 * l).map(|_| next()).collect())
            .collect();
        let mut g = GlobalThreshold::default();
        layers.iter().for_each(|l| g.count(l));
        assert!(g.aim(0.3));
        layers.iter().for_each(|l| g.collect(l));
        let t = g.threshold().unwrap();
        let mut all: Vec<f32> = layers.concat().iter().map(|x| x.abs()).collect();
        all.sort_by(f32::total_cmp);
        let k = (0.3 * all.len() as f64).round() as usize;
        assert_eq!(t, all[k - 1]);
        let pattern = SparsityPattern::Unstructured { sparsity: 0.3 };
        let pruned: usize = layers
            .iter()
            .map(|l| {
                let m = mask_from_scores(
                    &magnitude_scores(l),
                    [1, l.len()],
                    pattern,
                    Ranking::Global { threshold: t },
                );
                m.unwrap().iter().filter(|&&x| x).count()
            })
            .sum();
        assert_eq!(pruned, k);
        let mut none = GlobalThreshold::default();
        none.count(&[1.0, 2.0]);
        assert!(!none.aim(0.0));
    }

    #[test]
    fn wanda_weights_columns_by_input_norm() {
        // Column 1 has a tiny weight but a huge input: Wanda keeps it, magnitude would not.
        let w = [1.0, 0.1, -2.0, 0.5];
        let s = wanda_scores(&w, [1, 4], &[1.0, 10_000.0, 1.0, 1.0]).unwrap();
        assert_eq!(s, [1.0, 10.0, 2.0, 0.5]);
        let m = mask_from_scores(
            &s,
            [1, 4],
            SparsityPattern::Unstructured { sparsity: 0.5 },
            Ranking::PerRow,
        )
        .unwrap();
        assert_eq!(m, [true, false, false, true]);
        assert!(wanda_scores(&w, [1, 4], &[1.0; 3]).is_err());
    }
}
