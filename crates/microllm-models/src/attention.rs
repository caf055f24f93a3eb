//! Causal self-attention with grouped-query heads, optional sliding window, and a key/value
//! cache for incremental decoding.

use candle_core::Tensor;
use microllm_core::{ModelConfig, Result};

use crate::rope::Rope;
use crate::softmax::CausalSoftmax;

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

/// Scaled dot-product attention of `q` `[b, heads, s, d]` over `k`, `v` `[b, kv_heads, t, d]`,
/// where consecutive groups of `heads / kv_heads` query heads share one key/value head. The
/// group is folded into the sequence axis so no key/value copies are made; the causal
/// (and sliding-window) softmax runs in place ([`CausalSoftmax`]).
pub fn grouped_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    offset: usize,
    window: Option<usize>,
) -> Result<Tensor> {
    let (b, heads, s, d) = q.dims4()?;
    let (_, kv_heads, _, _) = k.dims4()?;
    let group = heads / kv_heads;
    let q = q.contiguous()?.reshape((b, kv_heads, group * s, d))?;
    let scores = q.matmul(&k.contiguous()?.t()?)?;
    scores.inplace_op1(&CausalSoftmax {
        scale: 1.0 / (d as f32).sqrt(),
        seq: s,
        offset,
        window,
    })?;
    let out = scores.matmul(&v.contiguous()?)?;
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
    let out = grouped_attention(&q, &k, &v, at.offset, cfg.sliding_window)?;
    let (b, _, s, _) = out.dims4()?;
    Ok(out.transpose(1, 2)?.reshape((b, s, cfg.q_dim()))?)
}
