//! Scaled, causally masked softmax, in place, one pass per row.
//!
//! Attention scores are the largest temporaries of a forward pass (`heads x seq x seq`). Doing
//! the scaling, the causal / sliding-window mask and the softmax as separate tensor ops costs
//! three passes over them and two allocations per block; this kernel does it in one pass over
//! each row, in parallel over rows, and never touches masked entries except to zero them.

use candle_core::{CpuStorage, InplaceOp1, Layout};
use rayon::prelude::*;

/// Softmax of `scale * scores` over the last axis for scores laid out
/// `[batch, kv_heads, group * seq, keys]`, where row `r` belongs to query `offset + r % seq`.
/// A query at position `p` sees keys `j` with `p - window < j <= p`.
#[derive(Debug, Clone, Copy)]
pub struct CausalSoftmax {
    pub scale: f32,
    /// Queries per head in this pass.
    pub seq: usize,
    /// Position of the first query (keys before it come from the cache).
    pub offset: usize,
    /// Sliding window, if any.
    pub window: Option<usize>,
}

impl CausalSoftmax {
    /// The visible key range `lo..=hi` of row `row`.
    fn visible(&self, row: usize, keys: usize) -> (usize, usize) {
        let pos = self.offset + row % self.seq;
        let hi = pos.min(keys - 1);
        let lo = self.window.map_or(0, |w| (pos + 1).saturating_sub(w));
        (lo, hi)
    }

    fn softmax_row(&self, row: usize, x: &mut [f32]) {
        let (lo, hi) = self.visible(row, x.len());
        let max = x[lo..=hi].iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0f32;
        for v in &mut x[lo..=hi] {
            *v = ((*v - max) * self.scale).exp();
            sum += *v;
        }
        let inv = 1.0 / sum;
        x[lo..=hi].iter_mut().for_each(|v| *v *= inv);
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
        let keys = *layout.dims().last().expect("scores have a key axis");
        data[start..end]
            .par_chunks_mut(keys)
            .enumerate()
            .for_each(|(row, x)| self.softmax_row(row, x));
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
    fn matches_masked_softmax() {
        // 2 queries per head, 2 heads in the group, 5 keys (3 cached), window 3.
        let op = CausalSoftmax {
            scale: 0.5,
            seq: 2,
            offset: 3,
            window: Some(3),
        };
        let data: Vec<f32> = (0..20).map(|i| ((i * 7) % 11) as f32 - 5.0).collect();
        let t = Tensor::from_vec(data.clone(), (1, 1, 4, 5), &Device::Cpu).unwrap();
        t.inplace_op1(&op).unwrap();
        let got = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for row in 0..4 {
            // Query positions 3, 4, 3, 4: visible keys 1..=3, 2..=4.
            let (lo, hi) = if row % 2 == 0 { (1, 3) } else { (2, 4) };
            assert_eq!(op.visible(row, 5), (lo, hi));
            let want = reference(&data[row * 5..row * 5 + 5], 0.5, lo, hi);
            for (a, b) in got[row * 5..row * 5 + 5].iter().zip(&want) {
                assert!((a - b).abs() < 1e-6, "row {row}: {got:?} vs {want:?}");
            }
        }
    }

    #[test]
    fn causal_without_window() {
        let op = CausalSoftmax {
            scale: 1.0,
            seq: 3,
            offset: 0,
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
