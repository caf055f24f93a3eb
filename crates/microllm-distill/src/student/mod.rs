//! The student: a decoder whose weights are autograd variables.
//!
//! The inference [`microllm_models::Decoder`] is built for speed without gradients (in-place
//! kernels, fused RoPE, chunked attention). The student computes the same function from
//! differentiable pieces ([`crate::ops`] plus candle's matmul, reshapes and element-wise ops),
//! so `loss.backward()` reaches every trainable weight; a fixture test holds its logits to
//! the decoder's on every family.
//!
//! Weights live in one flat list of named [`Param`]s (canonical Hugging Face names), each a
//! trainable [`Var`] or a frozen tensor; blocks refer to them by index. The list is what the
//! optimizer updates, what checkpoints store and what [`Student::to_source`] hands to the
//! writers and to the evaluator.

mod forward;

use candle_core::{DType, Tensor, Var};
use microllm_core::{
    Error, MemorySource, MlpKind, ModelConfig, NormKind, Result, TensorSource, names,
};
use microllm_models::Block;

use crate::ops::Attention;

pub use forward::StudentOutput;

/// One named weight.
#[derive(Debug, Clone)]
pub struct Param {
    /// Canonical (Hugging Face) name.
    pub name: String,
    /// The value the forward pass reads (the variable's tensor when trainable).
    pub tensor: Tensor,
    /// The variable, when the weight is trained.
    pub var: Option<Var>,
}

/// Which weights stay fixed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Freeze {
    /// The token embedding and the output head (one matrix when tied).
    pub embeddings: bool,
    /// The first `blocks` decoder blocks: with the embeddings frozen too, no gradient flows
    /// below block `blocks`, so the backward pass skips those blocks entirely.
    pub blocks: usize,
}

#[derive(Debug, Clone, Copy)]
struct LinearAt {
    weight: usize,
    bias: Option<usize>,
}

#[derive(Debug, Clone, Copy)]
struct NormAt {
    kind: NormKind,
    weight: usize,
    bias: Option<usize>,
    eps: f64,
    /// The weight is applied as `1 + weight` (Gemma).
    unit_offset: bool,
}

#[derive(Debug, Clone)]
struct BlockAt {
    attn_norm: NormAt,
    /// `None` in parallel blocks (Phi).
    mlp_norm: Option<NormAt>,
    /// Gemma's sandwich norms on the attention and MLP outputs.
    post_attn_norm: Option<NormAt>,
    post_mlp_norm: Option<NormAt>,
    /// Per-head norms of queries and keys before the rotation (Qwen3, Gemma 3).
    q_norm: Option<NormAt>,
    k_norm: Option<NormAt>,
    q: LinearAt,
    k: LinearAt,
    v: LinearAt,
    o: LinearAt,
    gate: Option<LinearAt>,
    up: LinearAt,
    down: LinearAt,
}

/// A trainable decoder.
#[derive(Debug, Clone)]
pub struct Student {
    cfg: ModelConfig,
    params: Vec<Param>,
    embed: usize,
    blocks: Vec<BlockAt>,
    final_norm: NormAt,
    head: LinearAt,
    /// One per block (windows and rotary bases may differ between blocks).
    attention: Vec<Attention>,
    freeze: Freeze,
}

impl Student {
    /// Loads every weight of `cfg` from `src` in `dtype` (f32 to train, f64 for gradient
    /// checks), with rotary tables for sequences up to `max_seq` tokens.
    pub fn load(
        cfg: &ModelConfig,
        src: &dyn TensorSource,
        dtype: DType,
        freeze: Freeze,
        max_seq: usize,
    ) -> Result<Self> {
        if freeze.blocks >= cfg.num_layers {
            return Err(Error::Invalid(format!(
                "freezing {} blocks leaves none of the student's {} to train",
                freeze.blocks, cfg.num_layers
            )));
        }
        if max_seq > cfg.max_position_embeddings {
            return Err(Error::Invalid(format!(
                "training windows of {max_seq} tokens exceed the model's \
                 max_position_embeddings of {}",
                cfg.max_position_embeddings
            )));
        }
        let mut params = Vec::new();
        let mut add = |name: String, t: &Tensor, trainable: bool| -> Result<usize> {
            let t = t.to_dtype(dtype)?;
            let (tensor, var) = if trainable {
                let var = Var::from_tensor(&t)?;
                (var.as_tensor().clone(), Some(var))
            } else {
                (t, None)
            };
            params.push(Param { name, tensor, var });
            Ok(params.len() - 1)
        };
        let (v, h) = (cfg.vocab_size, cfg.hidden_size);
        let embed_t = src.load_shaped(names::EMBED_TOKENS, &[v, h])?;
        let embed = add(names::EMBED_TOKENS.into(), &embed_t, !freeze.embeddings)?;
        let f = cfg.family;
        let mut blocks = Vec::with_capacity(cfg.num_layers);
        for layer in 0..cfg.num_layers {
            let trained = layer >= freeze.blocks;
            let b = Block::load(cfg, layer, src)?;
            let prefix = names::block_prefix(layer);
            let mut lin = |kind: microllm_core::LinearKind, l: &microllm_models::Linear| {
                let name = format!("{prefix}.{}", kind.module(f));
                Ok::<_, Error>(LinearAt {
                    weight: add(format!("{name}.weight"), &l.weight()?, trained)?,
                    bias: match &l.bias {
                        Some(bias) => Some(add(format!("{name}.bias"), bias, trained)?),
                        None => None,
                    },
                })
            };
            use microllm_core::LinearKind as K;
            let (q, k, vv, o) = (
                lin(K::Q, &b.q)?,
                lin(K::K, &b.k)?,
                lin(K::V, &b.v)?,
                lin(K::O, &b.o)?,
            );
            let gate = match &b.mlp.gate {
                Some(g) => Some(lin(K::Gate, g)?),
                None => None,
            };
            let (up, down) = (lin(K::Up, &b.mlp.up)?, lin(K::Down, &b.mlp.down)?);
            let mut norm = |name: String, n: &microllm_models::Norm| {
                Ok::<_, Error>(NormAt {
                    kind: n.kind,
                    weight: add(format!("{name}.weight"), &n.weight, trained)?,
                    bias: match &n.bias {
                        Some(bias) => Some(add(format!("{name}.bias"), bias, trained)?),
                        None => None,
                    },
                    eps: n.eps as f64,
                    unit_offset: n.unit_offset,
                })
            };
            let attn_norm = norm(names::attn_norm(layer), &b.attn_norm)?;
            let mut optional = |name: String, n: &Option<microllm_models::Norm>| match n {
                Some(n) => norm(name, n).map(Some),
                None => Ok(None),
            };
            let mlp_norm = optional(names::mlp_norm(f, layer), &b.mlp_norm)?;
            let post_attn_norm = optional(names::post_attn_norm(layer), &b.post_attn_norm)?;
            let post_mlp_norm = optional(names::post_mlp_norm(layer), &b.post_mlp_norm)?;
            let q_norm = optional(names::q_norm(layer), &b.q_norm)?;
            let k_norm = optional(names::k_norm(layer), &b.k_norm)?;
            debug_assert_eq!(gate.is_some(), b.mlp.kind == MlpKind::Gated);
            blocks.push(BlockAt {
                attn_norm,
                mlp_norm,
                post_attn_norm,
                post_mlp_norm,
                q_norm,
                k_norm,
                q,
                k,
                v: vv,
                o,
                gate,
                up,
                down,
            });
        }
        let final_prefix = names::final_norm(f);
        let norm_kind = cfg.layout().norm;
        let final_norm = NormAt {
            kind: norm_kind,
            weight: add(
                format!("{final_prefix}.weight"),
                &src.load_shaped(&format!("{final_prefix}.weight"), &[h])?,
                true,
            )?,
            bias: match norm_kind {
                NormKind::Layer => Some(add(
                    format!("{final_prefix}.bias"),
                    &src.load_shaped(&format!("{final_prefix}.bias"), &[h])?,
                    true,
                )?),
                NormKind::Rms => None,
            },
            eps: cfg.norm_eps,
            unit_offset: cfg.layout().norm_unit_offset,
        };
        let head_bias_name = format!("{}.bias", names::LM_HEAD);
        let head = LinearAt {
            weight: if cfg.tie_word_embeddings {
                embed
            } else {
                let name = format!("{}.weight", names::LM_HEAD);
                add(
                    name.clone(),
                    &src.load_shaped(&name, &[v, h])?,
                    !freeze.embeddings,
                )?
            },
            bias: if cfg.lm_head_bias {
                Some(add(
                    head_bias_name.clone(),
                    &src.load_shaped(&head_bias_name, &[v])?,
                    !freeze.embeddings,
                )?)
            } else {
                None
            },
        };
        Ok(Self {
            cfg: cfg.clone(),
            params,
            embed,
            blocks,
            final_norm,
            head,
            attention: Attention::per_layer(cfg, max_seq),
            freeze,
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// Decoder blocks.
    pub fn num_blocks(&self) -> usize {
        self.blocks.len()
    }

    /// Whether the backward pass must go through block `layer`: it, or something below it
    /// (an earlier block, the embedding), is trained.
    pub fn backward_reaches(&self, layer: usize) -> bool {
        layer >= self.freeze.blocks || !self.freeze.embeddings
    }

    /// Whether the token embedding is trained.
    pub fn trains_embedding(&self) -> bool {
        !self.freeze.embeddings
    }

    /// Every weight, in a stable order.
    pub fn params(&self) -> &[Param] {
        &self.params
    }

    /// The trained weights.
    pub fn trainable(&self) -> impl Iterator<Item = (&str, &Var)> {
        self.params
            .iter()
            .filter_map(|p| p.var.as_ref().map(|v| (p.name.as_str(), v)))
    }

    /// Number of trained values.
    pub fn trainable_count(&self) -> usize {
        self.trainable().map(|(_, v)| v.elem_count()).sum()
    }

    /// The output head's weight `[vocab, hidden]` and bias.
    pub fn head(&self) -> (&Param, Option<&Param>) {
        (
            &self.params[self.head.weight],
            self.head.bias.map(|b| &self.params[b]),
        )
    }

    /// Every weight as an f32 tensor source (a copy), for the writers and the evaluator.
    pub fn to_source(&self, origin: &str) -> Result<MemorySource> {
        let mut src = MemorySource::new(origin);
        for p in &self.params {
            src.insert(p.name.clone(), p.tensor.to_dtype(DType::F32)?.copy()?);
        }
        Ok(src)
    }
}
