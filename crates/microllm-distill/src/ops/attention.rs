//! Causal self-attention from the q/k/v projections to the context, as one autograd node.
//!
//! Forward: split q, k (rotated) and v into the grouped head layout ([`super::heads`]), one
//! batched product for the scores per key/value head, the masked softmax
//! ([`super::softmax`]), one product with the values, merge back to `[rows, q_dim]`. The
//! node keeps the split heads and the probabilities for its backward:
//! `dV = Pᵀ dC`, `dP = dC Vᵀ`, `dS = softmax'(P, dP)`, `dQ = dS K`, `dK = dSᵀ Q`, then the
//! inverse reorderings (with the inverse rotation for q and k). One node instead of ten
//! (splits, transposes, products, softmax, merge) means ten fewer gradient buffers for
//! autograd to allocate, zero and accumulate per block.

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};
use microllm_core::ModelConfig;

use super::heads::{HeadShape, RopeTables, from_heads, to_heads};
use super::node::Precomputed;
use super::softmax::CausalMask;
use crate::real::{dispatch, tensor, with_data};

/// The attention of one model configuration.
#[derive(Debug, Clone)]
pub struct Attention {
    kv_heads: usize,
    group: usize,
    head_dim: usize,
    rope: RopeTables,
    window: Option<usize>,
    scale: f64,
}

struct Saved {
    q: Tensor,
    k: Tensor,
    v: Tensor,
    probs: Tensor,
}

struct AttentionNode {
    value: Precomputed,
    saved: Saved,
    shape: HeadShape,
    mask: CausalMask,
    rope: RopeTables,
}

impl Attention {
    /// Attention for `cfg` on windows of up to `max_seq` tokens, as every layer of a model
    /// without per-layer differences has it.
    pub fn new(cfg: &ModelConfig, max_seq: usize) -> Self {
        Self::per_layer(cfg, max_seq).swap_remove(0)
    }

    /// The attention of each block: its window (Gemma 3 alternates sliding-window and
    /// global blocks) and rotary base (Gemma 3's local blocks have their own). The tables
    /// are built once and shared.
    pub fn per_layer(cfg: &ModelConfig, max_seq: usize) -> Vec<Self> {
        let global = RopeTables::new(cfg, max_seq);
        let local = RopeTables::local(cfg, max_seq);
        (0..cfg.num_layers.max(1))
            .map(|layer| Self {
                kv_heads: cfg.num_kv_heads,
                group: cfg.num_heads / cfg.num_kv_heads,
                head_dim: cfg.head_dim,
                rope: match &local {
                    Some(l) if cfg.uses_local_rope(layer) => l.clone(),
                    _ => global.clone(),
                },
                window: cfg.window_of(layer),
                scale: cfg.attention_scale(),
            })
            .collect()
    }

    /// Longest window supported.
    pub fn max_seq(&self) -> usize {
        self.rope.positions()
    }

    /// The context `[batch * seq, q_dim]` of projections `q` `[batch * seq, q_dim]` and `k`,
    /// `v` `[batch * seq, kv_dim]`.
    pub fn apply(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        batch: usize,
        seq: usize,
    ) -> candle_core::Result<Tensor> {
        if seq > self.rope.positions() {
            candle_core::bail!(
                "{seq} positions exceed the rotary tables' {}",
                self.rope.positions()
            )
        }
        let shape = (batch, seq, self.kv_heads, self.head_dim);
        let mask = CausalMask {
            scale: self.scale,
            group: self.group,
            window: self.window,
        };
        let heads = |t: &Tensor, rows: usize, rope: Option<&RopeTables>| {
            dispatch!(t.dtype(), "attention", |T| {
                let h = with_data::<T, _>(t, "attention", |d| Ok(to_heads(d, shape, rope)))?;
                tensor(h, (batch, self.kv_heads, rows, self.head_dim))
            })
        };
        let qh = heads(q, seq * self.group, Some(&self.rope))?;
        let kh = heads(k, seq, Some(&self.rope))?;
        let vh = heads(v, seq, None)?;
        let scores = qh.matmul(&kh.t()?)?;
        let probs = dispatch!(scores.dtype(), "attention", |T| {
            let p = with_data::<T, _>(&scores, "attention", |s| Ok(mask.forward(s, seq)))?;
            tensor(p, scores.shape())?
        });
        drop(scores);
        let ctx = probs.matmul(&vh)?;
        let out = merge(&ctx, shape, None, q.dims())?;
        if !(q.track_op() || k.track_op() || v.track_op()) {
            return Ok(out);
        }
        let node = AttentionNode {
            value: Precomputed::new(out),
            saved: Saved {
                q: qh,
                k: kh,
                v: vh,
                probs,
            },
            shape,
            mask,
            rope: self.rope.clone(),
        };
        q.contiguous()?
            .apply_op3(&k.contiguous()?, &v.contiguous()?, node)
    }
}

/// Heads `[b, kv, rows, d]` back to `[b * seq, width]` (`dims`), inverse-rotated with `rope`.
fn merge(
    heads: &Tensor,
    shape: HeadShape,
    rope: Option<&RopeTables>,
    dims: &[usize],
) -> candle_core::Result<Tensor> {
    dispatch!(heads.dtype(), "attention", |T| {
        let m = with_data::<T, _>(heads, "attention", |d| Ok(from_heads(d, shape, rope)))?;
        tensor(m, dims)
    })
}

impl CustomOp3 for AttentionNode {
    fn name(&self) -> &'static str {
        "attention"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        self.value.take("attention")
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _: &Tensor,
        d_out: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let s = &self.saved;
        let seq = self.shape.1;
        let d_ctx = dispatch!(d_out.dtype(), "attention", |T| {
            let h = with_data::<T, _>(d_out, "attention", |x| Ok(to_heads(x, self.shape, None)))?;
            tensor(h, s.q.shape())?
        });
        let d_probs = d_ctx.matmul(&s.v.t()?)?;
        let dv = s.probs.t()?.matmul(&d_ctx)?;
        let d_scores = dispatch!(d_probs.dtype(), "attention", |T| {
            let g = with_data::<T, _>(&s.probs, "attention", |p| {
                with_data::<T, _>(&d_probs, "attention", |dp| {
                    Ok(self.mask.backward(p, dp, seq))
                })
            })?;
            tensor(g, d_probs.shape())?
        });
        let dq = d_scores.matmul(&s.k)?;
        let dk = d_scores.t()?.matmul(&s.q)?;
        Ok((
            Some(merge(&dq, self.shape, Some(&self.rope), q.dims())?),
            Some(merge(&dk, self.shape, Some(&self.rope), k.dims())?),
            Some(merge(&dv, self.shape, None, v.dims())?),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::gradcheck::{assert_gradients, max_abs_diff, randn};
    use candle_core::{D, DType, Device};
    use microllm_core::{Activation, Family};

    fn cfg(partial: f64, window: Option<usize>) -> ModelConfig {
        ModelConfig {
            family: Family::Llama,
            vocab_size: 8,
            hidden_size: 32,
            intermediate_size: 8,
            num_layers: 1,
            num_heads: 4,
            num_kv_heads: 2,
            head_dim: 8,
            rope_theta: 10_000.0,
            rope_scaling: microllm_core::RopeScaling::None,
            sliding_layers: None,
            local_rope_theta: None,
            query_pre_attn_scalar: None,
            partial_rotary_factor: partial,
            norm_eps: 1e-5,
            sliding_window: window,
            max_position_embeddings: 32,
            tie_word_embeddings: true,
            activation: Activation::Silu,
            qkv_bias: false,
            o_bias: false,
            mlp_bias: false,
            lm_head_bias: false,
            bos_token_id: None,
            eos_token_ids: vec![],
            torch_dtype: None,
            activation_quant: None,
        }
    }

    /// Textbook attention: heads split by reshapes, keys/values repeated per query head, an
    /// explicit additive mask, softmax, rotation by the inference decoder's `Rope::apply`.
    fn textbook(c: &ModelConfig, q: &Tensor, k: &Tensor, v: &Tensor, b: usize, s: usize) -> Tensor {
        let (h, kv, d) = (c.num_heads, c.num_kv_heads, c.head_dim);
        let rope = microllm_models::Rope::new(c, 32).unwrap();
        let split = |t: &Tensor, n: usize| {
            t.reshape((b, s, n, d))
                .unwrap()
                .transpose(1, 2)
                .unwrap()
                .contiguous()
                .unwrap()
        };
        let qh = rope
            .apply(&split(&q.to_dtype(DType::F32).unwrap(), h), 0)
            .unwrap();
        let kh = rope
            .apply(&split(&k.to_dtype(DType::F32).unwrap(), kv), 0)
            .unwrap();
        let vh = split(&v.to_dtype(DType::F32).unwrap(), kv);
        let repeat = |t: Tensor| {
            t.unsqueeze(2)
                .unwrap()
                .repeat((1, 1, h / kv, 1, 1))
                .unwrap()
                .reshape((b, h, s, d))
                .unwrap()
        };
        let scores = (qh.matmul(&repeat(kh).t().unwrap()).unwrap() / (d as f64).sqrt()).unwrap();
        let mask: Vec<f32> = (0..s)
            .flat_map(|i| {
                (0..s).map(move |j| {
                    let visible = j <= i && c.sliding_window.is_none_or(|w| j + w > i);
                    if visible { 0.0 } else { f32::NEG_INFINITY }
                })
            })
            .collect();
        let mask = Tensor::from_vec(mask, (s, s), &Device::Cpu).unwrap();
        let scores = scores.broadcast_add(&mask).unwrap();
        let max = scores.max_keepdim(D::Minus1).unwrap();
        let e = scores.broadcast_sub(&max).unwrap().exp().unwrap();
        let p = e.broadcast_div(&e.sum_keepdim(D::Minus1).unwrap()).unwrap();
        p.matmul(&repeat(vh))
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .reshape((b * s, h * d))
            .unwrap()
    }

    #[test]
    fn matches_textbook_attention() {
        let (b, s) = (2, 9);
        for (partial, window) in [(1.0, None), (0.5, Some(4))] {
            let c = cfg(partial, window);
            let q = randn(&[b * s, 32], 1);
            let k = randn(&[b * s, 16], 2);
            let v = randn(&[b * s, 16], 3);
            let got = Attention::new(&c, 32).apply(&q, &k, &v, b, s).unwrap();
            let want = textbook(&c, &q, &k, &v, b, s);
            let diff = max_abs_diff(&got, &want);
            assert!(diff < 1e-5, "partial {partial}, window {window:?}: {diff}");
        }
    }

    #[test]
    fn gradients_match_finite_differences() {
        let (b, s) = (2, 5);
        for (partial, window) in [(1.0, None), (0.5, Some(2))] {
            let attn = Attention::new(&cfg(partial, window), 32);
            let inputs = [
                randn(&[b * s, 32], 4),
                randn(&[b * s, 16], 5),
                randn(&[b * s, 16], 6),
            ];
            assert_gradients(&inputs, |t| attn.apply(&t[0], &t[1], &t[2], b, s));
        }
    }
}
