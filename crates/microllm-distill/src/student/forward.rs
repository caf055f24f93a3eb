//! The student's differentiable forward pass.
//!
//! Activations flow as rows `[batch * seq, hidden]` from node to node ([`crate::ops`]: linear,
//! attention, norms, SwiGLU), with no reshapes in the graph except the per-head view of
//! queries and keys that Qwen3's and Gemma 3's q/k norms need. The family differences
//! follow the inference decoder: `1 + w` norms, sandwich norms and scaled embeddings
//! (Gemma), per-block windows and rotary bases, the configured attention scale. Attention computes full causal
//! score matrices (training windows are short, so the masked triangle the inference decoder
//! skips costs little, and one product per KV head keeps the backward simple). The output
//! stops at the final norm:
//! the head and the loss run fused in [`crate::loss`], which never hands the
//! `[tokens, vocab]` logits to autograd.

use candle_core::{D, Tensor};
use microllm_core::{Activation, NormKind, Result};

use super::{BlockAt, LinearAt, NormAt, Student};
use crate::ops::{RmsNorm, SwiGlu, linear};

/// What a forward pass returns.
#[derive(Debug)]
pub struct StudentOutput {
    /// The last block's output after the final norm, `[batch * seq, hidden]`: the head's input.
    pub hidden: Tensor,
    /// Outputs of the blocks asked for (in the order asked), `[batch * seq, hidden]`.
    pub blocks: Vec<Tensor>,
}

impl Student {
    fn p(&self, i: usize) -> &Tensor {
        &self.params[i].tensor
    }

    fn linear(&self, x: &Tensor, l: LinearAt) -> Result<Tensor> {
        Ok(linear(x, self.p(l.weight), l.bias.map(|b| self.p(b)))?)
    }

    fn norm(&self, x: &Tensor, n: NormAt) -> Result<Tensor> {
        let offset;
        let weight = if n.unit_offset {
            offset = (self.p(n.weight) + 1.0)?;
            &offset
        } else {
            self.p(n.weight)
        };
        Ok(match (n.kind, n.bias) {
            (NormKind::Rms, _) => RmsNorm { eps: n.eps }.apply(x, weight)?,
            (NormKind::Layer, bias) => {
                let mean = x.mean_keepdim(D::Minus1)?;
                let centered = x.broadcast_sub(&mean)?;
                let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
                let y = centered
                    .broadcast_div(&(var + n.eps)?.sqrt()?)?
                    .broadcast_mul(weight)?;
                match bias {
                    Some(b) => y.broadcast_add(self.p(b))?,
                    None => y,
                }
            }
        })
    }

    /// `x` through `n` when the block has that norm (Gemma's sandwich norms).
    fn maybe_norm(&self, x: Tensor, n: Option<NormAt>) -> Result<Tensor> {
        match n {
            Some(n) => self.norm(&x, n),
            None => Ok(x),
        }
    }

    /// `n` over each `head_dim` slice of the rows `x` `[rows, heads * head_dim]`.
    fn per_head_norm(&self, x: Tensor, n: Option<NormAt>) -> Result<Tensor> {
        let Some(n) = n else { return Ok(x) };
        let (rows, width) = x.dims2()?;
        let d = self.cfg.head_dim;
        let heads = x.reshape((rows * width / d, d))?;
        Ok(self.norm(&heads, n)?.reshape((rows, width))?)
    }

    fn attention(
        &self,
        x: &Tensor,
        layer: usize,
        b: &BlockAt,
        batch: usize,
        seq: usize,
    ) -> Result<Tensor> {
        let q = self.per_head_norm(self.linear(x, b.q)?, b.q_norm)?;
        let k = self.per_head_norm(self.linear(x, b.k)?, b.k_norm)?;
        let v = self.linear(x, b.v)?;
        let ctx = self.attention[layer].apply(&q, &k, &v, batch, seq)?;
        self.maybe_norm(self.linear(&ctx, b.o)?, b.post_attn_norm)
    }

    fn mlp(&self, x: &Tensor, b: &BlockAt) -> Result<Tensor> {
        let act = self.cfg.activation;
        let hidden = match b.gate {
            Some(g) if act == Activation::Silu => {
                SwiGlu::apply(&self.linear(x, g)?, &self.linear(x, b.up)?)?
            }
            Some(g) => (activate(act, &self.linear(x, g)?)? * self.linear(x, b.up)?)?,
            None => activate(act, &self.linear(x, b.up)?)?,
        };
        self.maybe_norm(self.linear(&hidden, b.down)?, b.post_mlp_norm)
    }

    fn block(
        &self,
        x: &Tensor,
        layer: usize,
        b: &BlockAt,
        batch: usize,
        seq: usize,
    ) -> Result<Tensor> {
        let normed = self.norm(x, b.attn_norm)?;
        let attn = self.attention(&normed, layer, b, batch, seq)?;
        Ok(match b.mlp_norm {
            None => ((x + attn)? + self.mlp(&normed, b)?)?,
            Some(n) => {
                let x = (x + attn)?;
                let mlp = self.mlp(&self.norm(&x, n)?, b)?;
                (x + mlp)?
            }
        })
    }

    /// The embedded rows of `ids` (u32 `[batch, seq]`), `[batch * seq, hidden]`, after
    /// checking the ids and the length against what the student was prepared for.
    pub fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        let (_, seq) = ids.dims2()?;
        let max_seq = self.attention[0].max_seq();
        if seq > max_seq {
            return Err(microllm_core::Error::Invalid(format!(
                "{seq} tokens exceed the {max_seq} positions the student was prepared for"
            )));
        }
        let flat = ids.flatten_all()?;
        if let Some(&bad) = flat
            .to_vec1::<u32>()?
            .iter()
            .find(|&&id| id as usize >= self.cfg.vocab_size)
        {
            return Err(microllm_core::Error::Invalid(format!(
                "token id {bad} is outside the student's vocabulary of {} tokens",
                self.cfg.vocab_size
            )));
        }
        let x = self.p(self.embed).index_select(&flat, 0)?;
        Ok(match self.cfg.embedding_scale() {
            Some(scale) => x.affine(scale, 0.0)?,
            None => x,
        })
    }

    /// Block `layer` applied to rows `x` of `batch` windows of `seq` tokens.
    pub fn block_forward(
        &self,
        x: &Tensor,
        layer: usize,
        batch: usize,
        seq: usize,
    ) -> Result<Tensor> {
        self.block(x, layer, &self.blocks[layer], batch, seq)
    }

    /// The final norm: the last block's output as the head's input.
    pub fn final_hidden(&self, x: &Tensor) -> Result<Tensor> {
        self.norm(x, self.final_norm)
    }

    /// Runs `ids` (u32 `[batch, seq]`), keeping the outputs of `keep_blocks`.
    pub fn forward(&self, ids: &Tensor, keep_blocks: &[usize]) -> Result<StudentOutput> {
        let (batch, seq) = ids.dims2()?;
        let mut x = self.embed(ids)?;
        let mut kept = vec![None; keep_blocks.len()];
        for i in 0..self.blocks.len() {
            x = self.block_forward(&x, i, batch, seq)?;
            for (slot, _) in keep_blocks.iter().enumerate().filter(|(_, k)| **k == i) {
                kept[slot] = Some(x.clone());
            }
        }
        let blocks = kept
            .into_iter()
            .zip(keep_blocks)
            .map(|(t, i)| {
                t.ok_or_else(|| {
                    microllm_core::Error::Invalid(format!(
                        "block {i} does not exist: the student has {} blocks",
                        self.blocks.len()
                    ))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(StudentOutput {
            hidden: self.final_hidden(&x)?,
            blocks,
        })
    }

    /// Logits `[rows, vocab]` of head inputs `hidden` (outside the training loss: tests,
    /// inspection).
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        self.linear(hidden, self.head)
    }
}

fn activate(act: Activation, x: &Tensor) -> Result<Tensor> {
    Ok(match act {
        Activation::Silu => x.silu()?,
        Activation::GeluNew => x.gelu()?,
        Activation::Gelu => x.gelu_erf()?,
        Activation::Relu => x.relu()?,
    })
}
