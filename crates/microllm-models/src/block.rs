//! One decoder block, loadable and runnable on its own.
//!
//! Every family's block is one shape with optional parts: a norm before attention (and, in
//! sequential blocks, one before the MLP), per-head q/k norms (Qwen3, Gemma 3), and norms on
//! the attention and MLP outputs before they join the residual (Gemma's sandwich). The staged
//! entry points (`attn_input` ... `mlp_output`) compose to `forward` for every layout, so the
//! calibration passes see each family's linears exactly as inference does.

use candle_core::Tensor;
use microllm_core::{Activation, LinearKind, MlpKind, ModelConfig, Result, TensorSource, names};

use crate::attention::{LayerKvCache, Positions, attend};
use crate::elementwise::SiluMul;
use crate::layers::{Linear, Mlp, Norm, SharedInput, activate};
use crate::packed::Activations;

/// Sees the input of every linear layer during a block's forward pass.
///
/// q/k/v share one input, as do gate/up: `observe` is called once per layer with the same
/// tensor, so an observer keyed by layer needs no knowledge of the sharing.
pub trait LinearTap {
    /// `input` is `[batch, seq, in_features]` of linear `kind` in block `layer`.
    fn observe(&mut self, layer: usize, kind: LinearKind, input: &Tensor) -> Result<()>;
}

/// A [`LinearTap`] that observes nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoTap;

impl LinearTap for NoTap {
    fn observe(&mut self, _: usize, _: LinearKind, _: &Tensor) -> Result<()> {
        Ok(())
    }
}

/// The weights of one decoder block and its forward pass.
#[derive(Debug, Clone)]
pub struct Block {
    pub layer: usize,
    cfg: ModelConfig,
    pub attn_norm: Norm,
    /// Norm before the MLP in sequential blocks; `None` in parallel blocks (Phi).
    pub mlp_norm: Option<Norm>,
    /// Norms on the attention and MLP outputs (Gemma's sandwich norms).
    pub post_attn_norm: Option<Norm>,
    pub post_mlp_norm: Option<Norm>,
    /// Per-head norms of queries and keys, over `head_dim` (Qwen3, Gemma 3).
    pub q_norm: Option<Norm>,
    pub k_norm: Option<Norm>,
    pub q: Linear,
    pub k: Linear,
    pub v: Linear,
    pub o: Linear,
    pub mlp: Mlp,
    /// How the block was loaded: `Some` keeps weights the source holds packed in their type,
    /// with these activations (see [`Block::load_with`]).
    packed: Option<Activations>,
}

impl Block {
    /// The configuration the block was loaded with.
    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// Loads block `layer` from `src`, checking every shape against `cfg`.
    pub fn load(cfg: &ModelConfig, layer: usize, src: &dyn TensorSource) -> Result<Self> {
        Self::load_with(cfg, layer, src, None)
    }

    /// As [`load`](Self::load); with `packed`, linear weights the source holds packed stay
    /// packed (see [`crate::packed`]).
    pub fn load_with(
        cfg: &ModelConfig,
        layer: usize,
        src: &dyn TensorSource,
        packed: Option<Activations>,
    ) -> Result<Self> {
        let f = cfg.family;
        let h = cfg.hidden_size;
        let prefix =
            |kind: LinearKind| format!("{}.{}", names::block_prefix(layer), kind.module(f));
        let lin =
            |kind, out, inp, bias| Linear::load_with(src, &prefix(kind), [out, inp], bias, packed);
        let layout = cfg.layout();
        let i = cfg.intermediate_size;
        let mlp = Mlp {
            kind: layout.mlp,
            gate: match layout.mlp {
                MlpKind::Gated => Some(lin(LinearKind::Gate, i, h, cfg.mlp_bias)?),
                MlpKind::Plain => None,
            },
            up: lin(LinearKind::Up, i, h, cfg.mlp_bias)?,
            down: lin(LinearKind::Down, h, i, cfg.mlp_bias)?,
            act: cfg.activation,
        };
        let optional = |present: bool, prefix: String, width: usize| {
            present
                .then(|| Norm::load_width(src, &prefix, cfg, width))
                .transpose()
        };
        let d = cfg.head_dim;
        let mut block = Self {
            layer,
            cfg: cfg.clone(),
            attn_norm: Norm::load(src, &names::attn_norm(layer), cfg)?,
            mlp_norm: optional(!layout.parallel, names::mlp_norm(f, layer), h)?,
            post_attn_norm: optional(layout.post_norms, names::post_attn_norm(layer), h)?,
            post_mlp_norm: optional(layout.post_norms, names::post_mlp_norm(layer), h)?,
            q_norm: optional(layout.qk_norm, names::q_norm(layer), d)?,
            k_norm: optional(layout.qk_norm, names::k_norm(layer), d)?,
            q: lin(LinearKind::Q, cfg.q_dim(), h, cfg.qkv_bias)?,
            k: lin(LinearKind::K, cfg.kv_dim(), h, cfg.qkv_bias)?,
            v: lin(LinearKind::V, cfg.kv_dim(), h, cfg.qkv_bias)?,
            o: lin(LinearKind::O, h, cfg.q_dim(), cfg.o_bias)?,
            mlp,
            packed,
        };
        // A W8A8 checkpoint's linears quantize their inputs as it is served.
        for kind in LinearKind::ALL {
            if let Some(linear) = block.linear_mut(kind) {
                linear.input_quant = cfg.activation_quant;
            }
        }
        Ok(block)
    }

    /// The activations its packed weights compute with, or `None` for a block loaded dense:
    /// a pass that replaces a weight with one a packed type holds can keep the block's mode.
    pub fn packed_activations(&self) -> Option<Activations> {
        self.packed
    }

    /// The linear layer of `kind`, if the block has one (plain MLPs have no gate).
    pub fn linear(&self, kind: LinearKind) -> Option<&Linear> {
        match kind {
            LinearKind::Q => Some(&self.q),
            LinearKind::K => Some(&self.k),
            LinearKind::V => Some(&self.v),
            LinearKind::O => Some(&self.o),
            LinearKind::Gate => self.mlp.gate.as_ref(),
            LinearKind::Up => Some(&self.mlp.up),
            LinearKind::Down => Some(&self.mlp.down),
        }
    }

    /// Mutable access to a linear layer, for stages that rewrite weights in place.
    pub fn linear_mut(&mut self, kind: LinearKind) -> Option<&mut Linear> {
        match kind {
            LinearKind::Q => Some(&mut self.q),
            LinearKind::K => Some(&mut self.k),
            LinearKind::V => Some(&mut self.v),
            LinearKind::O => Some(&mut self.o),
            LinearKind::Gate => self.mlp.gate.as_mut(),
            LinearKind::Up => Some(&mut self.mlp.up),
            LinearKind::Down => Some(&mut self.mlp.down),
        }
    }

    /// Runs the block on `x` `[batch, seq, hidden]` at positions `at`, appending to `cache`
    /// when given, and shows the input of every linear to `tap`.
    pub fn forward(
        &self,
        x: &Tensor,
        at: Positions<'_>,
        cache: Option<&mut LayerKvCache>,
        tap: &mut dyn LinearTap,
    ) -> Result<Tensor> {
        let normed = self.attn_input(x)?;
        let attn = post(
            &self.post_attn_norm,
            self.attention(&normed, at, cache, tap)?,
        )?;
        match &self.mlp_norm {
            // Phi: both branches read the same normed input.
            None => {
                let mlp = self.feed_forward(&normed, tap)?;
                Ok(((x + attn)? + mlp)?)
            }
            Some(norm) => {
                let x = (x + attn)?;
                let mlp = post(
                    &self.post_mlp_norm,
                    self.feed_forward(&norm.forward(&x)?, tap)?,
                )?;
                Ok((x + mlp)?)
            }
        }
    }

    // The stages of `forward`, one linear-input site at a time. A pass that quantizes the
    // block group by group (GPTQ's true-sequential order) keeps each stage's result instead of
    // rerunning the whole block before every group; composed, they compute `forward` exactly.

    /// Stage 1: the input of q/k/v (the attention norm of `x`).
    pub fn attn_input(&self, x: &Tensor) -> Result<Tensor> {
        self.attn_norm.forward(x)
    }

    /// Stage 2: the input of o (the attention context before the output projection), from
    /// the stage-1 result, without a KV cache.
    pub fn attn_context(&self, normed: &Tensor, at: Positions<'_>) -> Result<Tensor> {
        self.attend(normed, at, None)
    }

    /// Stage 3: the residual stream after attention, `x + o(context)` (the output normed
    /// first where the family norms it).
    pub fn attn_residual(&self, x: &Tensor, context: &Tensor) -> Result<Tensor> {
        Ok((x + post(&self.post_attn_norm, self.o.forward(context)?)?)?)
    }

    /// The input of gate/up: the MLP norm of the residual, or in parallel blocks (Phi) the
    /// attention norm of the block input `x`.
    pub fn mlp_input(&self, x: &Tensor, residual: &Tensor) -> Result<Tensor> {
        match &self.mlp_norm {
            None => self.attn_input(x),
            Some(norm) => norm.forward(residual),
        }
    }

    /// Stage 4: the input of down, `act(gate(h)) * up(h)` (or `act(up(h))`).
    pub fn mlp_hidden(&self, mlp_input: &Tensor) -> Result<Tensor> {
        self.mlp_activation(mlp_input)
    }

    /// Stage 5: the block output, `residual + down(hidden)` (normed first where the family
    /// norms it).
    pub fn mlp_output(&self, residual: &Tensor, hidden: &Tensor) -> Result<Tensor> {
        Ok((residual + post(&self.post_mlp_norm, self.mlp.down.forward(hidden)?)?)?)
    }

    /// q/k/v of `normed`, q and k normed per head where the family does, rotated, attended.
    fn attend(
        &self,
        normed: &Tensor,
        at: Positions<'_>,
        cache: Option<&mut LayerKvCache>,
    ) -> Result<Tensor> {
        let input = SharedInput::new(normed);
        let q = per_head(
            &self.q_norm,
            self.q.forward_shared(&input)?,
            self.cfg.head_dim,
        )?;
        let k = per_head(
            &self.k_norm,
            self.k.forward_shared(&input)?,
            self.cfg.head_dim,
        )?;
        let v = self.v.forward_shared(&input)?;
        attend(&self.cfg, self.layer, (&q, &k, &v), at, cache)
    }

    fn attention(
        &self,
        x: &Tensor,
        at: Positions<'_>,
        cache: Option<&mut LayerKvCache>,
        tap: &mut dyn LinearTap,
    ) -> Result<Tensor> {
        for kind in [LinearKind::Q, LinearKind::K, LinearKind::V] {
            tap.observe(self.layer, kind, x)?;
        }
        let ctx = self.attend(x, at, cache)?;
        tap.observe(self.layer, LinearKind::O, &ctx)?;
        self.o.forward(&ctx)
    }

    fn feed_forward(&self, x: &Tensor, tap: &mut dyn LinearTap) -> Result<Tensor> {
        tap.observe(self.layer, LinearKind::Up, x)?;
        if self.mlp.gate.is_some() {
            tap.observe(self.layer, LinearKind::Gate, x)?;
        }
        let hidden = self.mlp_activation(x)?;
        tap.observe(self.layer, LinearKind::Down, &hidden)?;
        self.mlp.down.forward(&hidden)
    }

    fn mlp_activation(&self, x: &Tensor) -> Result<Tensor> {
        let mlp = &self.mlp;
        match &mlp.gate {
            Some(gate) => {
                let input = SharedInput::new(x);
                let gated = gate.forward_shared(&input)?;
                let up = mlp.up.forward_shared(&input)?;
                if mlp.act == Activation::Silu {
                    // SwiGLU in one pass, in place on the fresh gate output.
                    gated.inplace_op2(&up, &SiluMul)?;
                    Ok(gated)
                } else {
                    Ok((activate(mlp.act, &gated)? * up)?)
                }
            }
            None => activate(mlp.act, &mlp.up.forward(x)?),
        }
    }
}

/// `norm(x)` where a norm is present, else `x`.
fn post(norm: &Option<Norm>, x: Tensor) -> Result<Tensor> {
    match norm {
        Some(n) => n.forward(&x),
        None => Ok(x),
    }
}

/// `x` `[b, s, heads * head_dim]` with `norm` applied to each head's `head_dim` values.
fn per_head(norm: &Option<Norm>, x: Tensor, head_dim: usize) -> Result<Tensor> {
    let Some(norm) = norm else { return Ok(x) };
    let (b, s, width) = x.dims3()?;
    Ok(norm
        .forward(&x.reshape((b, s, width / head_dim, head_dim))?)?
        .reshape((b, s, width))?)
}
