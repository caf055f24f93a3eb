//! Per-tensor GGUF types chosen to meet a size budget (`--target-bpw`, `--target-size`).
//!
//! llama.cpp's mixes give every model the same recipe (more bits for v and some down
//! projections); a budget lets the measurements decide instead. Each block linear is encoded
//! in every block type its rows fit, decoded again, and its error measured as the expected
//! squared output error on the calibration inputs, `sum_ij imp_j (w_ij - q_ij)^2`, with `imp`
//! the importance matrix's mean squared input per column (llama.cpp's imatrix; 1 without one,
//! which makes it the plain weight error). The choice then minimises the summed error under the
//! byte budget: each matrix's (bytes, error) options are reduced to their lower convex hull and
//! the upgrade that removes the most error per added byte is taken while it fits, the
//! classic greedy for this knapsack. Tensors outside the block linears (embeddings, output
//! head, norms), those a `--tensor-type` rule names and those written from codes keep the
//! types they would have had and count as fixed bytes.

use crate::gguf::GgufType;
use microllm_core::{Error, Progress, Result, TensorSource};

use super::export::{
    EncodedTensors, FusedEncoded, GgufExport, TypeDecision, encode_checked, plan_export,
    takes_importance,
};
use super::mix::{GgufTypes, TensorTypeRule, rule_for};
use crate::fused::{JoinFused, is_linear_weight};

/// The block types a budget chooses from, whichever the rows fit.
const CANDIDATES: [GgufType; 12] = [
    GgufType::Q2K,
    GgufType::Q3K,
    GgufType::Iq4Xs,
    GgufType::Q4_0,
    GgufType::Iq4Nl,
    GgufType::Q4_1,
    GgufType::Q4K,
    GgufType::Q5_0,
    GgufType::Q5_1,
    GgufType::Q5K,
    GgufType::Q6K,
    GgufType::Q8_0,
];

/// One matrix's type under the budget.
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetChoice {
    pub gguf_name: String,
    pub dtype: GgufType,
    pub bytes: u64,
    /// The measured error in that type (see the module docs).
    pub error: f64,
}

/// What the budget chose.
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetPlan {
    /// The export's own rules, then one exact-name rule per chosen matrix: what the writer
    /// takes as its `tensor_types`.
    pub rules: Vec<TensorTypeRule>,
    pub choices: Vec<BudgetChoice>,
    /// Tensor data of the whole file under the choice.
    pub bytes: u64,
    /// Parameters of the whole file.
    pub weights: u64,
    /// Whether an importance matrix weighted the errors.
    pub importance_weighted: bool,
}

impl BudgetPlan {
    pub fn bits_per_weight(&self) -> f64 {
        self.bytes as f64 * 8.0 / self.weights.max(1) as f64
    }

    /// How many matrices got each type, largest count first (for notes and reports).
    pub fn counts(&self) -> Vec<(GgufType, usize)> {
        let mut counts: Vec<(GgufType, usize)> = Vec::new();
        for c in &self.choices {
            match counts.iter_mut().find(|(t, _)| *t == c.dtype) {
                Some((_, n)) => *n += 1,
                None => counts.push((c.dtype, 1)),
            }
        }
        counts.sort_by_key(|c| std::cmp::Reverse(c.1));
        counts
    }
}

/// The size a budget asks for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SizeTarget {
    /// Bits per weight over the whole file's tensor data.
    BitsPerWeight(f64),
    /// Bytes of tensor data.
    Bytes(u64),
}

/// Chooses types for `export`'s block linears so the file's tensor data fits `target` with
/// the least summed error; the other tensors take what `types` and the export's rules give.
pub fn fit_budget(
    export: &GgufExport<'_>,
    types: GgufTypes,
    target: SizeTarget,
    progress: &dyn Progress,
) -> Result<BudgetPlan> {
    let cfg = export.config;
    let decisions = plan_export(export, types)?;
    let weights: u64 = decisions
        .iter()
        .map(|d| d.shape.iter().product::<usize>() as u64)
        .sum();
    let target_bytes = match target {
        SizeTarget::BitsPerWeight(bpw) => (bpw * weights as f64 / 8.0) as u64,
        SizeTarget::Bytes(b) => b,
    };
    let encoded = export.encoded.map(|e| FusedEncoded::new(e, cfg));
    let encoded = |d: &TypeDecision| {
        encoded
            .as_ref()
            .is_some_and(|e| e.dtype(&d.hf_name).is_some())
    };
    let (free, fixed): (Vec<&TypeDecision>, Vec<&TypeDecision>) = decisions.iter().partition(|d| {
        d.shape.len() >= 2
            && is_linear_weight(cfg, &d.hf_name)
            && !encoded(d)
            && rule_for(export.tensor_types, &d.gguf_name).is_none()
    });
    if free.is_empty() {
        return Err(Error::Invalid(
            "no matrix is left for the size budget to choose a type for".into(),
        ));
    }
    let fixed_bytes: u64 = fixed.iter().map(|d| d.bytes()).sum();

    let tensors = JoinFused::new(export.tensors, cfg);
    let origin = export.tensors.origin();
    progress.begin(
        "measuring types for the budget",
        free.len() as u64,
        "matrices",
    );
    let mut options = Vec::with_capacity(free.len());
    for d in &free {
        let t = tensors.load(&d.hf_name)?;
        options.push(measure(&t, d, export.importance_of(&d.hf_name), &origin)?);
        progress.advance(1);
    }
    progress.finish();

    let mut at = vec![0usize; options.len()];
    let mut total = fixed_bytes + options.iter().map(|o| o[0].0).sum::<u64>();
    if total > target_bytes {
        return Err(Error::Invalid(format!(
            "the size budget of {target_bytes} bytes ({:.2} bits/weight) is below the smallest \
             choice: {total} bytes ({:.2} bits/weight; {fixed_bytes} of them in tensors the \
             budget does not type)",
            target_bytes as f64 * 8.0 / weights as f64,
            total as f64 * 8.0 / weights as f64
        )));
    }
    loop {
        let best = options
            .iter()
            .zip(&at)
            .enumerate()
            .filter_map(|(i, (o, &k))| {
                let (next, cur) = (o.get(k + 1)?, &o[k]);
                let added = next.0 - cur.0;
                (total + added <= target_bytes).then(|| (i, (cur.1 - next.1) / added as f64))
            })
            .max_by(|a, b| a.1.total_cmp(&b.1));
        let Some((i, _)) = best else { break };
        total += options[i][at[i] + 1].0 - options[i][at[i]].0;
        at[i] += 1;
    }
    let choices: Vec<BudgetChoice> = free
        .iter()
        .zip(&options)
        .zip(&at)
        .map(|((d, o), &k)| BudgetChoice {
            gguf_name: d.gguf_name.clone(),
            dtype: o[k].2,
            bytes: o[k].0,
            error: o[k].1,
        })
        .collect();
    let mut rules = export.tensor_types.to_vec();
    for c in &choices {
        rules.push(TensorTypeRule::new(
            &format!("^{}$", regex::escape(&c.gguf_name)),
            c.dtype,
        )?);
    }
    Ok(BudgetPlan {
        rules,
        choices,
        bytes: total,
        weights,
        importance_weighted: export.importance.is_some(),
    })
}

/// A matrix's options as `(bytes, error, type)` on the lower convex hull: bytes rising, error
/// falling, each step buying less error per byte than the one before.
fn measure(
    t: &candle_core::Tensor,
    d: &TypeDecision,
    importance: Option<&[f32]>,
    origin: &str,
) -> Result<Vec<(u64, f64, GgufType)>> {
    let (rows, cols) = t.dims2()?;
    let values = t
        .to_dtype(candle_core::DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let mut points = Vec::new();
    for dtype in CANDIDATES {
        if !cols.is_multiple_of(dtype.block_size()) {
            continue;
        }
        let fit_weights = importance.filter(|_| takes_importance(dtype));
        let bytes = encode_checked(t, dtype, fit_weights, &d.hf_name, origin)?;
        let decoded = super::source::dequantize(dtype, &bytes, &[rows, cols])?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let error: f64 = values
            .chunks_exact(cols)
            .zip(decoded.chunks_exact(cols))
            .map(|(w, q)| {
                w.iter()
                    .zip(q)
                    .enumerate()
                    .map(|(j, (a, b))| {
                        let e = f64::from(a - b);
                        importance.map_or(1.0, |imp| f64::from(imp[j])) * e * e
                    })
                    .sum::<f64>()
            })
            .sum();
        points.push((bytes.len() as u64, error, dtype));
    }
    if points.is_empty() {
        return Err(Error::Invalid(format!(
            "`{}`: rows of {cols} fit no block type (32 or 256 values)",
            d.gguf_name
        )));
    }
    points.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)));
    Ok(lower_hull(points))
}

/// The points a budget can usefully stop at: no point costs more bytes for more error, and
/// the error saved per added byte falls from one to the next.
fn lower_hull(points: Vec<(u64, f64, GgufType)>) -> Vec<(u64, f64, GgufType)> {
    let gain =
        |a: &(u64, f64, GgufType), b: &(u64, f64, GgufType)| (a.1 - b.1) / (b.0 - a.0) as f64;
    let mut hull: Vec<(u64, f64, GgufType)> = Vec::with_capacity(points.len());
    for p in points {
        if hull
            .last()
            .is_some_and(|last| p.1 >= last.1 || p.0 == last.0)
        {
            continue;
        }
        while hull.len() >= 2
            && gain(&hull[hull.len() - 2], &hull[hull.len() - 1]) <= gain(&hull[hull.len() - 1], &p)
        {
            hull.pop();
        }
        hull.push(p);
    }
    hull
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hull_drops_dominated_and_concave_points() {
        use GgufType::{Q4_0, Q4_1, Q5_0, Q8_0};
        let hull = lower_hull(vec![
            (18, 10.0, Q4_0),
            (20, 11.0, Q4_1), // more bytes, more error: dominated
            (22, 9.5, Q5_0),  // 0.125 per byte, then 9.5 -> 1 over 12 bytes (0.71): not convex
            (34, 1.0, Q8_0),
        ]);
        let kept: Vec<GgufType> = hull.iter().map(|p| p.2).collect();
        assert_eq!(kept, [Q4_0, Q8_0]);
        let hull = lower_hull(vec![(18, 10.0, Q4_0), (22, 4.0, Q5_0), (34, 1.0, Q8_0)]);
        assert_eq!(hull.len(), 3, "1.5 per byte, then 0.25: convex");
    }
}
