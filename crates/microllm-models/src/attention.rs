//! Causal self-attention with grouped-query heads, optional sliding window, and a key/value
//! cache for incremental decoding.

use candle_core::{Device, Tensor};
use microllm_core::{ModelConfig, Result};

use crate::rope::Rope;

/// Keys and values of one layer for the positions seen so far, `[batch, kv_heads, t, d]`.
#[derive(Debug, Clone, Default)]
pub struct LayerKvCache {
    kv: Option<(Tensor, Tensor)>,
}

impl LayerKvCache {
    /// Positions cached.
    pub fn len(&self) -> usize {
        self.kv.as_ref().map_or(0, |(k, _)| k.dim(2).unwrap_or(0))
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends new keys/values and returns all of them.
    fn append(&mut self, k: Tensor, v: Tensor) -> Result<(Tensor, Tensor)> {
        let (k, v) = match self.kv.take() {
            Some((pk, pv)) => (Tensor::cat(&[&pk, &k], 2)?, Tensor::cat(&[&pv, &v], 2)?),
            None => (k, v),
        };
        self.kv = Some((k.clone(), v.clone()));
        Ok((k, v))
    }
}

/// One [`LayerKvCache`] per block.
#[derive(Debug, Clone)]
pub struct KvCache {
    pub layers: Vec<LayerKvCache>,
}

impl KvCache {
    /// An empty cache for `cfg`'s blocks.
    pub fn new(cfg: &ModelConfig) -> Self {
        Self {
            layers: vec![LayerKvCache::default(); cfg.num_layers],
        }
    }

    /// Positions cached.
    pub fn len(&self) -> usize {
        self.layers.first().map_or(0, LayerKvCache::len)
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Additive mask `[seq, offset + seq]`: 0 where query `offset + i` may attend key `j`
/// (`j <= offset + i`, and within the window `offset + i - j < window`), -inf elsewhere.
/// `None` when nothing is masked (a single new token without a window limit).
pub fn attention_mask(seq: usize, offset: usize, window: Option<usize>) -> Result<Option<Tensor>> {
    let total = offset + seq;
    let window = window.unwrap_or(usize::MAX);
    let mut any = false;
    let mut mask = vec![0f32; seq * total];
    for i in 0..seq {
        let q = offset + i;
        for j in 0..total {
            if j > q || q - j >= window {
                mask[i * total + j] = f32::NEG_INFINITY;
                any = true;
            }
        }
    }
    if !any {
        return Ok(None);
    }
    Ok(Some(Tensor::from_vec(mask, (seq, total), &Device::Cpu)?))
}

/// Scaled dot-product attention of `q` `[b, heads, s, d]` over `k`, `v` `[b, kv_heads, t, d]`,
/// where consecutive groups of `heads / kv_heads` query heads share one key/value head. The
/// group is folded into the sequence axis so no key/value copies are made.
pub fn grouped_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
) -> Result<Tensor> {
    let (b, heads, s, d) = q.dims4()?;
    let (_, kv_heads, t, _) = k.dims4()?;
    let group = heads / kv_heads;
    let scale = 1.0 / (d as f64).sqrt();
    let q = (q.contiguous()? * scale)?.reshape((b, kv_heads, group * s, d))?;
    let scores = q.matmul(&k.t()?.contiguous()?)?;
    let scores = match mask {
        Some(m) => scores
            .reshape((b, heads, s, t))?
            .broadcast_add(m)?
            .reshape((b, kv_heads, group * s, t))?,
        None => scores,
    };
    let probs = candle_nn::ops::softmax_last_dim(&scores)?;
    let out = probs.matmul(&v.contiguous()?)?;
    Ok(out.reshape((b, heads, s, d))?)
}

/// Splits `x` `[b, s, heads * d]` into `[b, heads, s, d]`.
pub fn split_heads(x: &Tensor, heads: usize, d: usize) -> Result<Tensor> {
    let (b, s, _) = x.dims3()?;
    Ok(x.reshape((b, s, heads, d))?.transpose(1, 2)?)
}

/// Where a forward pass is in the sequence: shared by every block of one pass.
#[derive(Debug, Clone, Copy)]
pub struct Positions<'a> {
    /// Rotary tables.
    pub rope: &'a Rope,
    /// Position of the first token of this pass (the cache length when decoding).
    pub offset: usize,
    /// Additive attention mask from [`attention_mask`]; `None` when nothing is masked.
    pub mask: Option<&'a Tensor>,
}

/// Rotates q and k (`[b, s, heads * d]`), appends k/v to the cache, and attends.
pub(crate) fn attend(
    cfg: &ModelConfig,
    (q, k, v): (&Tensor, &Tensor, &Tensor),
    at: Positions<'_>,
    cache: Option<&mut LayerKvCache>,
) -> Result<Tensor> {
    let q = at
        .rope
        .apply(&split_heads(q, cfg.num_heads, cfg.head_dim)?, at.offset)?;
    let k = at
        .rope
        .apply(&split_heads(k, cfg.num_kv_heads, cfg.head_dim)?, at.offset)?;
    let v = split_heads(v, cfg.num_kv_heads, cfg.head_dim)?.contiguous()?;
    let (k, v) = match cache {
        Some(c) => c.append(k, v)?,
        None => (k, v),
    };
    let out = grouped_attention(&q, &k, &v, at.mask)?;
    let (b, _, s, _) = out.dims4()?;
    Ok(out.transpose(1, 2)?.reshape((b, s, cfg.q_dim()))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(m: &Option<Tensor>) -> Vec<Vec<bool>> {
        m.as_ref()
            .unwrap()
            .to_vec2::<f32>()
            .unwrap()
            .into_iter()
            .map(|r| r.into_iter().map(|x| x == 0.0).collect())
            .collect()
    }

    #[test]
    fn causal_mask() {
        let m = attention_mask(3, 0, None).unwrap();
        assert_eq!(
            allowed(&m),
            vec![
                vec![true, false, false],
                vec![true, true, false],
                vec![true, true, true]
            ]
        );
        assert!(attention_mask(1, 5, None).unwrap().is_none());
    }

    #[test]
    fn sliding_window_keeps_the_last_w_positions() {
        let m = attention_mask(1, 4, Some(2)).unwrap();
        assert_eq!(allowed(&m), vec![vec![false, false, false, true, true]]);
    }
}
