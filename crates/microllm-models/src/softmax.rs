//! Scaled, causally masked softmax, in place, one pass per row.
//!
//! Attention scores are the largest temporaries of a forward pass (`heads x seq x seq`). Doing
//! the scaling, the causal / sliding-window mask and the softmax as separate tensor ops costs
//! three passes over them and two allocations per block; this kernel does it in one pass over
//! each row, in parallel over rows, and never touches masked entries except to zero them.

use candle_core::{CpuStorage, InplaceOp1, Layout};
use rayon::prelude::*;

use crate::elementwise::{exp, max, sum};

/// Softmax of `scale * scores` over the last axis for scores laid out
/// `[batch, kv_heads, queries * group, keys]`: row `r` belongs to the query at position
/// `first_query + r / group` (the `group` query heads of a token are adjacent rows), and key
/// `j` is at position `first_key + j`. A query at position `p` sees keys at `p - window < j <= p`.
#[derive(Debug, Clone, Copy)]
pub struct CausalSoftmax {
    pub scale: f32,
    /// Query heads per key/value head (adjacent rows of one token).
    pub group: usize,
    /// Position of the query of the first row.
    pub first_query: usize,
    /// Position of the first key column.
    pub first_key: usize,
    /// Sliding window, if any.
    pub window: Option<usize>,
}

impl CausalSoftmax {
    /// The visible key columns `lo..=hi` of row `row` (counted within one matrix) of a
    /// matrix with `keys` columns.
    fn visible(&self, row: usize, keys: usize) -> (usize, usize) {
        let pos = self.first_query + row / self.group;
        debug_assert!(
            pos >= self.first_key,
            "a query before the first key sees nothing"
        );
        let hi = pos.saturating_sub(self.first_key).min(keys - 1);
        let lo = self.window.map_or(0, |w| {
            (pos + 1).saturating_sub(w).saturating_sub(self.first_key)
        });
        (lo, hi)
    }

    /// Softmax of row `row` (counted within one matrix) in place.
    pub(crate) fn softmax_row(&self, row: usize, x: &mut [f32]) {
        let (lo, hi) = self.visible(row, x.len());
        let visible = &mut x[lo..=hi];
        let max = max(visible);
        for v in visible.iter_mut() {
            *v = exp((*v - max) * self.scale);
        }
        let inv = 1.0 / sum(visible);
        visible.iter_mut().for_each(|v| *v *= inv);
        x[..lo].fill(0.0);
        x[hi + 1..].fill(0.0);
    }
}

impl InplaceOp1 for CausalSoftmax {
    fn name(&self) -> &'static str {
        "causal-softmax"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> candle_core::Result<()> {
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("causal-softmax expects f32 scores")
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("causal-softmax expects contiguous scores")
        };
        let dims = layout.dims();
        let [.., rows, keys] = *dims else {
            candle_core::bail!("causal-softmax expects scores with query and key axes")
        };
        if rows == 0 || keys == 0 {
            return Ok(());
        }
        data[start..end]
            .par_chunks_mut(keys)
            .enumerate()
            .for_each(|(row, x)| self.softmax_row(row % rows, x));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    /// Plain softmax over the visible keys, computed in f64.
    fn reference(x: &[f32], scale: f32, lo: usize, hi: usize) -> Vec<f32> {
        let max = x[lo..=hi].iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let e: Vec<f64> = (0..x.len())
            .map(|j| {
                if (lo..=hi).contains(&j) {
                    ((x[j] as f64 - max) * scale as f64).exp()
                } else {
                    0.0
                }
            })
            .collect();
        let s: f64 = e.iter().sum();
        e.iter().map(|v| (v / s) as f32).collect()
    }

    #[test]
    fn sliding_window_mask_by_hand() {
        // Two matrices (kv heads) of 2 queries x a group of 2 heads over 5 keys at positions
        // 1..=5; queries at positions 4 and 5; window 3: position 4 sees keys 2, 3, 4
        // (columns 1..=3), position 5 sees 3, 4, 5 (columns 2..=4).
        let op = CausalSoftmax {
            scale: 0.5,
            group: 2,
            first_query: 4,
            first_key: 1,
            window: Some(3),
        };
        let data: Vec<f32> = (0..40).map(|i| ((i * 7) % 11) as f32 - 5.0).collect();
        let t = Tensor::from_vec(data.clone(), (1, 2, 4, 5), &Device::Cpu).unwrap();
        t.inplace_op1(&op).unwrap();
        let got = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for row in 0..8 {
            // Rows 0, 1 (both heads of the first token), then rows 2, 3; per matrix.
            let (lo, hi) = if row % 4 < 2 { (1, 3) } else { (2, 4) };
            assert_eq!(op.visible(row % 4, 5), (lo, hi));
            let want = reference(&data[row * 5..row * 5 + 5], 0.5, lo, hi);
            for (a, b) in got[row * 5..row * 5 + 5].iter().zip(&want) {
                assert!((a - b).abs() < 1e-6, "row {row}: {got:?} vs {want:?}");
            }
        }
    }

    #[test]
    fn window_covers_exactly_w_positions() {
        // Mistral semantics: a query at p sees p - W < j <= p, itself included: W keys.
        let op = CausalSoftmax {
            scale: 1.0,
            group: 1,
            first_query: 0,
            first_key: 0,
            window: Some(8),
        };
        for row in 0..24 {
            let (lo, hi) = op.visible(row, 24);
            assert_eq!(hi, row);
            assert_eq!(hi - lo + 1, (row + 1).min(8), "row {row}");
        }
    }

    #[test]
    fn causal_without_window() {
        let op = CausalSoftmax {
            scale: 1.0,
            group: 1,
            first_query: 0,
            first_key: 0,
            window: None,
        };
        assert_eq!(op.visible(0, 3), (0, 0));
        assert_eq!(op.visible(2, 3), (0, 2));
        let t = Tensor::zeros((1, 1, 3, 3), candle_core::DType::F32, &Device::Cpu).unwrap();
        t.inplace_op1(&op).unwrap();
        let got = t
            .squeeze(0)
            .unwrap()
            .squeeze(0)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        assert_eq!(got[0], vec![1.0, 0.0, 0.0]);
        assert_eq!(got[1], vec![0.5, 0.5, 0.0]);
        assert!((got[2][0] - 1.0 / 3.0).abs() < 1e-7 && got[2][2] > 0.0);
    }
}
