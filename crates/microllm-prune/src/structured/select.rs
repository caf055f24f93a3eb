//! Choosing what to keep from importance scores.
//!
//! Selections are deterministic: ties go to the lower index, NaN scores rank lowest, and the
//! kept indices are returned in ascending order so that the pruned tensors keep the original
//! order of what remains (a removed nothing is then exactly the identity).

use crate::structured::HeadMode;

/// The `k` indices with the largest scores, ascending.
pub fn top_k(scores: &[f64], k: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| rank(scores[b]).total_cmp(&rank(scores[a])).then(a.cmp(&b)));
    let mut kept: Vec<usize> = order.into_iter().take(k).collect();
    kept.sort_unstable();
    kept
}

fn rank(s: f64) -> f64 {
    if s.is_nan() { f64::NEG_INFINITY } else { s }
}

/// Query heads and key/value heads to keep, from one score per query head.
///
/// Query head `h` reads key/value head `h / (num_heads / num_kv)` (the layout of every
/// supported family). `keep_heads` must already be valid for `mode` (see
/// [`targets`](crate::structured::targets)): a multiple of the group size for
/// [`HeadMode::KvGroups`], of `num_kv` for [`HeadMode::PerGroup`].
pub fn select_heads(
    scores: &[f64],
    num_kv: usize,
    keep_heads: usize,
    mode: HeadMode,
) -> (Vec<usize>, Vec<usize>) {
    let group = scores.len() / num_kv;
    match mode {
        HeadMode::KvGroups => {
            let group_scores: Vec<f64> = (0..num_kv)
                .map(|g| scores[g * group..(g + 1) * group].iter().sum())
                .collect();
            let kv = top_k(&group_scores, keep_heads / group);
            let heads = kv
                .iter()
                .flat_map(|&g| g * group..(g + 1) * group)
                .collect();
            (heads, kv)
        }
        HeadMode::PerGroup => {
            let per = keep_heads / num_kv;
            let heads = (0..num_kv)
                .flat_map(|g| {
                    top_k(&scores[g * group..(g + 1) * group], per)
                        .into_iter()
                        .map(move |j| g * group + j)
                })
                .collect();
            (heads, (0..num_kv).collect())
        }
    }
}

/// The `n` blocks of least influence, ascending (ShortGPT: influence = mean over tokens of
/// `1 - cos(block input, block output)`; a block that barely turns the residual stream is the
/// cheapest to lose).
pub fn blocks_to_drop(influence: &[f64], n: usize) -> Vec<usize> {
    let negated: Vec<f64> = influence.iter().map(|s| -rank(*s)).collect();
    top_k(&negated, n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_keeps_the_largest_in_order_with_ties_to_the_lower_index() {
        assert_eq!(top_k(&[0.1, 3.0, 2.0, 3.0, f64::NAN], 2), vec![1, 3]);
        assert_eq!(top_k(&[1.0, 1.0, 1.0], 2), vec![0, 1]);
        assert_eq!(top_k(&[f64::NAN, 0.0], 1), vec![1]);
        assert_eq!(top_k(&[5.0, 4.0], 2), vec![0, 1]);
    }

    #[test]
    fn heads_by_whole_kv_group() {
        // 6 query heads over 2 kv heads: group 0 = heads 0..3, group 1 = heads 3..6.
        let scores = [1.0, 1.0, 1.0, 0.0, 5.0, 0.0];
        let (heads, kv) = select_heads(&scores, 2, 3, HeadMode::KvGroups);
        assert_eq!((heads, kv), (vec![3, 4, 5], vec![1]));
    }

    #[test]
    fn heads_evenly_per_group() {
        let scores = [1.0, 3.0, 2.0, 0.0, 5.0, 4.0];
        let (heads, kv) = select_heads(&scores, 2, 4, HeadMode::PerGroup);
        assert_eq!((heads, kv), (vec![1, 2, 4, 5], vec![0, 1]));
    }

    #[test]
    fn least_influential_blocks_go() {
        assert_eq!(blocks_to_drop(&[0.5, 0.01, 0.3, 0.02], 2), vec![1, 3]);
        assert_eq!(blocks_to_drop(&[0.5, 0.01], 0), Vec::<usize>::new());
    }
}
