//! Causal self-attention with grouped-query heads, optional sliding window, and a key/value
//! cache for incremental decoding.
//!
//! Four choices keep attention cheap on a CPU:
//! - Query heads that share a key/value head are stacked into the rows of one matrix
//!   (`[batch, kv_heads, seq * group, head_dim]`, see [`Rope::split_heads`]), so keys and values
//!   are never repeated per query head.
//! - Queries are processed in chunks of [`QUERY_CHUNK`] tokens, each against only the keys it
//!   can see (up to its last query; from the window start when windowed). The masked upper
//!   triangle is mostly never computed. With a sliding window the work per token stays
//!   bounded by the window.
//! - Each (sequence, key/value head, chunk) is one task with single-threaded products
//!   ([`crate::grouped`]), the tasks run in parallel: no product is split across threads.
//! - Scaling, mask and softmax are one in-place pass over each chunk's scores
//!   ([`CausalSoftmax`]); no mask tensor exists.

use candle_core::Tensor;
use microllm_core::{ModelConfig, Result};

use crate::grouped::chunked_attention;
use crate::rope::Rope;
#[cfg(doc)]
use crate::softmax::CausalSoftmax;

/// Tokens per query chunk. Smaller chunks skip more of the masked triangle and give the
/// kernel more tasks to spread over the threads, but thinner products. On SmolLM2 shapes (512
/// tokens, groups of 3 heads, `forward_phases`, 2 cores) 64 and 32 measured alike and 128 was
/// 6% of the blocks' time slower.
pub(crate) const QUERY_CHUNK: usize = 64;

/// Keys and values of one layer for the positions seen so far.
///
/// Stored in buffers `[batch, kv_heads, capacity, head_dim]` that grow by doubling, so a
/// decoding step copies only its own keys and values, not the whole history. Every position
/// is kept, also with a sliding window (attention reads only the window's part of it).
#[derive(Debug, Default)]
pub struct LayerKvCache {
    buffers: Option<(Tensor, Tensor)>,
    len: usize,
}

impl Clone for LayerKvCache {
    /// A deep copy: appends write into the buffers in place, so two caches must never share
    /// them.
    fn clone(&self) -> Self {
        let buffers = self.buffers.as_ref().map(|(k, v)| {
            (
                k.copy().expect("copying a cpu tensor"),
                v.copy().expect("copying a cpu tensor"),
            )
        });
        Self {
            buffers,
            len: self.len,
        }
    }
}

impl LayerKvCache {
    /// Positions cached.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Forgets every position from `len` on; the buffers stay for the next append.
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// The cached positions of a one-sequence cache repeated for `n` sequences, so that `n`
    /// continuations of one prefix run as one batch.
    pub fn repeat_batch(&mut self, n: usize) -> Result<()> {
        if let Some((k, v)) = &self.buffers {
            let repeat = |t: &Tensor| -> Result<Tensor> {
                if t.dim(0)? != 1 {
                    return Err(microllm_core::Error::Invalid(format!(
                        "a cache of {} sequences cannot be repeated, only one of 1",
                        t.dim(0)?
                    )));
                }
                Ok(t.narrow(2, 0, self.len)?.repeat((n, 1, 1, 1))?)
            };
            self.buffers = Some((repeat(k)?, repeat(v)?));
        }
        Ok(())
    }

    /// Appends new keys/values `[batch, kv_heads, s, head_dim]` and returns all cached ones.
    fn append(&mut self, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let (b, kv, s, d) = k.dims4()?;
        let needed = self.len + s;
        let capacity = self
            .buffers
            .as_ref()
            .map_or(0, |(bk, _)| bk.dim(2).unwrap_or(0));
        if needed > capacity {
            let capacity = needed.max(2 * capacity).max(64);
            let grow = |old: Option<&Tensor>| -> Result<Tensor> {
                let buf = Tensor::zeros((b, kv, capacity, d), k.dtype(), k.device())?;
                if let Some(old) = old {
                    buf.slice_set(&old.narrow(2, 0, self.len)?.contiguous()?, 2, 0)?;
                }
                Ok(buf)
            };
            let old = self.buffers.take();
            self.buffers = Some((
                grow(old.as_ref().map(|(k, _)| k))?,
                grow(old.as_ref().map(|(_, v)| v))?,
            ));
        }
        let (bk, bv) = self.buffers.as_ref().expect("buffers allocated above");
        bk.slice_set(&k.contiguous()?, 2, self.len)?;
        bv.slice_set(&v.contiguous()?, 2, self.len)?;
        self.len = needed;
        Ok((bk.narrow(2, 0, needed)?, bv.narrow(2, 0, needed)?))
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

    /// Forgets every position from `len` on in every layer, so that another continuation of
    /// the first `len` tokens can be run without recomputing them.
    pub fn truncate(&mut self, len: usize) {
        self.layers.iter_mut().for_each(|l| l.truncate(len));
    }

    /// A one-sequence cache made an `n`-sequence one, every sequence holding its positions
    /// (see [`LayerKvCache::repeat_batch`]).
    pub fn repeat_batch(&mut self, n: usize) -> Result<()> {
        self.layers.iter_mut().try_for_each(|l| l.repeat_batch(n))
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

/// Scaled dot-product attention of grouped queries `q` `[b, kv_heads, seq * group, d]` (row
/// `i * group + g`: query head `g` of the group, token `i`, at position `offset + i`) over keys
/// and values `k`, `v` `[b, kv_heads, t, d]` ending at the last query (key `j` is at position
/// `offset + seq - t + j`). A query at `p` sees keys at `p - window < j <= p`. Returns the
/// context in `q`'s layout.
/// Queries are scaled by `scale` (`head_dim^-0.5`, or Gemma's `query_pre_attn_scalar^-0.5`).
pub fn grouped_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    group: usize,
    offset: usize,
    window: Option<usize>,
    scale: f32,
) -> Result<Tensor> {
    chunked_attention(q, k, v, (group, offset), window, scale, QUERY_CHUNK)
}

/// The rotary tables of one model: those of its global layers, and those of its windowed
/// layers where they rotate with a base of their own (Gemma 3).
#[derive(Debug, Clone)]
pub struct RopeTables {
    pub global: Rope,
    pub local: Option<Rope>,
}

impl RopeTables {
    /// Tables for positions `0..positions`.
    pub fn new(cfg: &ModelConfig, positions: usize) -> Result<Self> {
        Ok(Self {
            global: Rope::new(cfg, positions)?,
            local: Rope::local(cfg, positions)?,
        })
    }

    /// The table block `layer` rotates with.
    pub fn for_layer(&self, cfg: &ModelConfig, layer: usize) -> &Rope {
        match &self.local {
            Some(local) if cfg.uses_local_rope(layer) => local,
            _ => &self.global,
        }
    }

    /// Number of positions the tables cover.
    pub fn positions(&self) -> usize {
        self.global.positions()
    }
}

/// Where a forward pass is in the sequence: shared by every block of one pass.
#[derive(Debug, Clone, Copy)]
pub struct Positions<'a> {
    /// Rotary tables.
    pub rope: &'a RopeTables,
    /// Position of the first token of this pass (the cache length when decoding).
    pub offset: usize,
}

/// Rotates q and k (`[b, s, heads * d]`) of block `layer`, appends k/v to the cache, attends
/// (through the layer's window, if any), and returns the context `[b, s, heads * d]` for the
/// output projection. q and k arrive already normed where the family norms them.
pub(crate) fn attend(
    cfg: &ModelConfig,
    layer: usize,
    (q, k, v): (&Tensor, &Tensor, &Tensor),
    at: Positions<'_>,
    cache: Option<&mut LayerKvCache>,
) -> Result<Tensor> {
    let (b, s, _) = q.dims3()?;
    let kv_heads = cfg.num_kv_heads;
    let group = cfg.num_heads / kv_heads;
    let rope = at.rope.for_layer(cfg, layer);
    let q = rope.split_heads(q, kv_heads, at.offset, true)?;
    let k = rope.split_heads(k, kv_heads, at.offset, true)?;
    let v = rope.split_heads(v, kv_heads, at.offset, false)?;
    let (k, v) = match cache {
        Some(c) => c.append(&k, &v)?,
        None => (k, v),
    };
    let scale = cfg.attention_scale() as f32;
    let out = grouped_attention(&q, &k, &v, group, at.offset, cfg.window_of(layer), scale)?;
    // [b, kv, s, group * d] -> [b, s, kv, group * d]: head `kv * group + g` in order.
    Ok(out
        .reshape((b, kv_heads, s, group * cfg.head_dim))?
        .transpose(1, 2)?
        .reshape((b, s, cfg.q_dim()))?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    const TOLERANCE: f32 = 1e-5;

    /// Textbook attention: repeated key/value heads, an explicit additive mask, softmax.
    /// `q` `[b, heads, s, d]`, `k`, `v` `[b, kv, t, d]`, keys ending at the last query.
    fn naive(q: &Tensor, k: &Tensor, v: &Tensor, offset: usize, window: Option<usize>) -> Tensor {
        let (b, heads, s, d) = q.dims4().unwrap();
        let (_, kv, t, _) = k.dims4().unwrap();
        let group = heads / kv;
        let repeat = |x: &Tensor| {
            x.unsqueeze(2)
                .unwrap()
                .repeat((1, 1, group, 1, 1))
                .unwrap()
                .reshape((b, heads, t, d))
                .unwrap()
        };
        let scores = (q.matmul(&repeat(k).t().unwrap()).unwrap() / (d as f64).sqrt()).unwrap();
        let key_base = offset + s - t;
        let mask: Vec<f32> = (0..s)
            .flat_map(|i| {
                (0..t).map(move |j| {
                    let (p, kp) = (offset + i, key_base + j);
                    let visible = kp <= p && window.is_none_or(|w| kp + w > p);
                    if visible { 0.0 } else { f32::NEG_INFINITY }
                })
            })
            .collect();
        let mask = Tensor::from_vec(mask, (s, t), &Device::Cpu).unwrap();
        let p = candle_nn::ops::softmax_last_dim(&scores.broadcast_add(&mask).unwrap()).unwrap();
        p.matmul(&repeat(v)).unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar()
            .unwrap()
    }

    /// Chunked grouped attention equals the textbook version for every chunking, with and
    /// without a window, with keys from a cache (offset > 0) and without.
    #[test]
    fn chunks_and_windows_match_masked_attention() {
        let (b, heads, kv, s, d) = (2, 6, 2, 23, 8);
        let group = heads / kv;
        let dev = Device::Cpu;
        for (offset, cached) in [(0, 0), (9, 9), (9, 4)] {
            let t = cached + s;
            let q = Tensor::randn(0f32, 1.0, (b, heads, s, d), &dev).unwrap();
            let k = Tensor::randn(0f32, 1.0, (b, kv, t, d), &dev).unwrap();
            let v = Tensor::randn(0f32, 1.0, (b, kv, t, d), &dev).unwrap();
            // Rows `i * group + g` of kv head `h` hold head `h * group + g`.
            let grouped = q
                .reshape((b, kv, group, s, d))
                .unwrap()
                .transpose(2, 3)
                .unwrap()
                .contiguous()
                .unwrap()
                .reshape((b, kv, s * group, d))
                .unwrap();
            for window in [None, Some(1), Some(7), Some(100)] {
                let want = naive(&q, &k, &v, offset, window);
                for chunk in [1, 5, 8, 23, 128] {
                    let scale = 1.0 / (d as f32).sqrt();
                    let got =
                        chunked_attention(&grouped, &k, &v, (group, offset), window, scale, chunk)
                            .unwrap()
                            .reshape((b, kv, s, group, d))
                            .unwrap()
                            .transpose(2, 3)
                            .unwrap()
                            .reshape((b, heads, s, d))
                            .unwrap();
                    let diff = max_diff(&got, &want);
                    assert!(
                        diff < TOLERANCE,
                        "offset {offset}, cached {cached}, window {window:?}, chunk {chunk}: {diff}"
                    );
                }
            }
        }
    }

    #[test]
    fn cache_grows_and_keeps_what_it_holds() {
        let dev = Device::Cpu;
        let mut cache = LayerKvCache::default();
        let mut all_k = Vec::new();
        for step in 0..70 {
            let n = if step == 0 { 5 } else { 1 };
            let k = Tensor::randn(0f32, 1.0, (1, 2, n, 4), &dev).unwrap();
            let v = (&k * 2.0).unwrap();
            let (ck, cv) = cache.append(&k, &v).unwrap();
            all_k.push(k);
            let want = Tensor::cat(&all_k, 2).unwrap();
            assert_eq!(max_diff(&ck, &want), 0.0, "step {step}");
            assert_eq!(max_diff(&cv, &(want * 2.0).unwrap()), 0.0, "step {step}");
        }
        assert_eq!(cache.len(), 74);
        // Clones are independent: appending to one leaves the other as it was.
        let mut other = cache.clone();
        let k = Tensor::ones((1, 2, 1, 4), DType::F32, &dev).unwrap();
        let (a, _) = cache.append(&k, &k).unwrap();
        let (b, _) = other.append(&(&k * 3.0).unwrap(), &k).unwrap();
        let last = |t: &Tensor| {
            t.narrow(2, 74, 1)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
        };
        assert_eq!((last(&a).unwrap(), last(&b).unwrap()), (8.0, 24.0));
    }
}
