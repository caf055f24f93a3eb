//! The architecture-neutral model configuration.
//!
//! Every supported family is a decoder-only transformer; what differs between them is data:
//! which norm, whether attention and MLP run in sequence or in parallel, gated or plain MLP,
//! which projections carry biases, how much of each head is rotated, whether attention is
//! windowed. [`ModelConfig`] holds those facts resolved to plain values, so the decoder has no
//! per-family branches beyond reading them, and a new family is mostly a new [`Family`] row.
//!
//! Facts that hold for every model of a family (Gemma's `(1 + w)` norms and scaled embeddings,
//! Qwen3's per-head q/k norms, Phi-3's fused projections) live on [`Family`] and
//! [`BlockLayout`]; facts that vary between checkpoints of one family (rope scaling, which
//! layers attend through a sliding window) are fields of [`ModelConfig`].

use serde::{Deserialize, Serialize};

use crate::LinearKind;

/// The model families microllm implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    /// LLaMA-2, TinyLlama, Vicuna, Alpaca, SmolLM2: RMSNorm, SwiGLU, RoPE, GQA.
    Llama,
    /// Mistral: the llama block with sliding-window attention.
    Mistral,
    /// Qwen2 / Qwen2.5: the llama block with q/k/v biases.
    Qwen2,
    /// Phi-2: LayerNorm, parallel attention + MLP, partial rotary, gelu_new, biases.
    Phi,
    /// Phi-3 / Phi-3.5 / Phi-4-mini: the llama block with q/k/v fused into one projection and
    /// gate/up into another in the checkpoint (split on read, fused again on write).
    Phi3,
    /// Qwen3: the llama block with per-head RMSNorm on queries and keys, no biases.
    Qwen3,
    /// Gemma 3 (text): GeGLU, `(1 + w)` RMSNorms before and after attention and MLP, q/k
    /// norms, embeddings scaled by `sqrt(hidden)`, sliding-window layers with their own rope
    /// base interleaved with global ones.
    Gemma3,
}

impl Family {
    /// Every family, in the order they are listed to users.
    pub const ALL: [Family; 7] = [
        Family::Llama,
        Family::Mistral,
        Family::Qwen2,
        Family::Qwen3,
        Family::Phi,
        Family::Phi3,
        Family::Gemma3,
    ];

    /// The Hugging Face `model_type` of the family.
    pub fn model_type(self) -> &'static str {
        match self {
            Family::Llama => "llama",
            Family::Mistral => "mistral",
            Family::Qwen2 => "qwen2",
            Family::Phi => "phi",
            Family::Phi3 => "phi3",
            Family::Qwen3 => "qwen3",
            Family::Gemma3 => "gemma3_text",
        }
    }

    /// The family for a Hugging Face `model_type`, if supported.
    pub fn from_model_type(model_type: &str) -> Option<Family> {
        Family::ALL
            .into_iter()
            .find(|f| f.model_type() == model_type)
    }

    /// The linears a family's checkpoints store fused: each entry is the fused module (inside
    /// a block) and the parts whose rows it stacks, in order. microllm works on the parts;
    /// readers split and writers fuse (see `microllm_io`).
    pub fn fused_linears(self) -> &'static [FusedLinear] {
        match self {
            Family::Phi3 => &[
                FusedLinear {
                    module: "self_attn.qkv_proj",
                    parts: &[LinearKind::Q, LinearKind::K, LinearKind::V],
                },
                FusedLinear {
                    module: "mlp.gate_up_proj",
                    parts: &[LinearKind::Gate, LinearKind::Up],
                },
            ],
            _ => &[],
        }
    }

    /// Whether token embeddings are multiplied by `sqrt(hidden_size)` before the first block.
    pub fn scales_embeddings(self) -> bool {
        self == Family::Gemma3
    }

    /// Comma-separated list of supported `model_type`s, for error messages.
    pub fn supported_list() -> String {
        Family::ALL.map(Family::model_type).join(", ")
    }

    /// The Hugging Face `architectures` entry written into config.json.
    pub fn hf_architecture(self) -> &'static str {
        match self {
            Family::Llama => "LlamaForCausalLM",
            Family::Mistral => "MistralForCausalLM",
            Family::Qwen2 => "Qwen2ForCausalLM",
            Family::Phi => "PhiForCausalLM",
            Family::Phi3 => "Phi3ForCausalLM",
            Family::Qwen3 => "Qwen3ForCausalLM",
            Family::Gemma3 => "Gemma3ForCausalLM",
        }
    }

    /// How the family's blocks are wired.
    pub fn layout(self) -> BlockLayout {
        let llama = BlockLayout {
            norm: NormKind::Rms,
            parallel: false,
            mlp: MlpKind::Gated,
            qk_norm: false,
            post_norms: false,
            norm_unit_offset: false,
        };
        match self {
            Family::Llama | Family::Mistral | Family::Qwen2 | Family::Phi3 => llama,
            Family::Qwen3 => BlockLayout {
                qk_norm: true,
                ..llama
            },
            Family::Gemma3 => BlockLayout {
                qk_norm: true,
                post_norms: true,
                norm_unit_offset: true,
                ..llama
            },
            Family::Phi => BlockLayout {
                norm: NormKind::Layer,
                parallel: true,
                mlp: MlpKind::Plain,
                ..llama
            },
        }
    }
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.model_type())
    }
}

/// Normalisation used before attention/MLP and at the end of the stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NormKind {
    /// RMSNorm with a weight: `x / sqrt(mean(x^2) + eps) * w`.
    Rms,
    /// LayerNorm with weight and bias.
    Layer,
}

/// MLP shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MlpKind {
    /// `down(act(gate(x)) * up(x))` (SwiGLU when the activation is SiLU).
    Gated,
    /// `down(act(up(x)))` (`fc1` / `fc2` in Phi).
    Plain,
}

/// The wiring of one decoder block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockLayout {
    pub norm: NormKind,
    /// Phi: `x + attn(norm(x)) + mlp(norm(x))` with one norm; otherwise pre-norm in sequence.
    pub parallel: bool,
    pub mlp: MlpKind,
    /// RMSNorm over each head's queries and keys before the rotation (Qwen3, Gemma 3).
    pub qk_norm: bool,
    /// Norms on the attention and MLP outputs before they join the residual (Gemma's
    /// "sandwich": `x + post(attn(pre(x)))`).
    pub post_norms: bool,
    /// Norm weights are stored as `w` and applied as `1 + w` (Gemma).
    pub norm_unit_offset: bool,
}

/// A projection stored fused in a family's checkpoints (see [`Family::fused_linears`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FusedLinear {
    /// Module path inside a block, e.g. `self_attn.qkv_proj`.
    pub module: &'static str,
    /// The linears whose rows it stacks, in order.
    pub parts: &'static [LinearKind],
}

/// Rescaling of the rotary frequencies, as in the checkpoint's `rope_scaling` /
/// `rope_parameters`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(tag = "rope_type", rename_all = "snake_case")]
pub enum RopeScaling {
    /// Plain RoPE.
    #[default]
    None,
    /// Every frequency divided by `factor` (position interpolation; Gemma 3's global layers).
    Linear { factor: f64 },
    /// Llama-3.1's rescaling: low frequencies divided by `factor`, high ones kept, a smooth
    /// ramp between, the band edges set by `original_max_position_embeddings`.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: usize,
    },
    /// An explicit divisor per rotated pair (llama.cpp's `rope_freqs` tensor, which is how a
    /// GGUF file carries Llama-3.1's rescaling).
    Divisors(Vec<f64>),
}

impl RopeScaling {
    /// The divisor of each of `half` frequencies `inv_freq` (`1.0` where nothing changes).
    pub fn divisors(&self, inv_freq: &[f64]) -> Vec<f64> {
        match self {
            RopeScaling::None => vec![1.0; inv_freq.len()],
            RopeScaling::Linear { factor } => vec![*factor; inv_freq.len()],
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => {
                let old = *original_max_position_embeddings as f64;
                let low_wavelen = old / low_freq_factor;
                let high_wavelen = old / high_freq_factor;
                inv_freq
                    .iter()
                    .map(|f| {
                        let wavelen = 2.0 * std::f64::consts::PI / f;
                        if wavelen < high_wavelen {
                            1.0
                        } else if wavelen > low_wavelen {
                            *factor
                        } else {
                            let smooth = (old / wavelen - low_freq_factor)
                                / (high_freq_factor - low_freq_factor);
                            1.0 / ((1.0 - smooth) / factor + smooth)
                        }
                    })
                    .collect()
            }
            RopeScaling::Divisors(d) => d.clone(),
        }
    }
}

/// MLP activation function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    Silu,
    /// The tanh approximation of GELU (`gelu_new`, `gelu_pytorch_tanh`).
    GeluNew,
    /// Exact (erf) GELU.
    Gelu,
    Relu,
}

impl Activation {
    /// Parses a Hugging Face `hidden_act` value.
    pub fn from_hf(name: &str) -> Option<Activation> {
        Some(match name {
            "silu" | "swish" => Activation::Silu,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Activation::GeluNew,
            "gelu" => Activation::Gelu,
            "relu" => Activation::Relu,
            _ => return None,
        })
    }

    /// The Hugging Face `hidden_act` name.
    pub fn hf_name(self) -> &'static str {
        match self {
            Activation::Silu => "silu",
            Activation::GeluNew => "gelu_new",
            Activation::Gelu => "gelu",
            Activation::Relu => "relu",
        }
    }
}

/// Everything the decoder needs to know about a model, resolved from config.json or GGUF
/// metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub family: Family,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rope_theta: f64,
    /// Rescaling of the rotary frequencies (of the global layers, where layers differ).
    #[serde(default)]
    pub rope_scaling: RopeScaling,
    /// Fraction of each head's dimensions that are rotated (Phi: 0.5; others 1.0).
    pub partial_rotary_factor: f64,
    pub norm_eps: f64,
    /// Each position attends to at most this many positions (itself included), if set.
    pub sliding_window: Option<usize>,
    /// Which layers use the sliding window (`true`) and which attend globally; `None`: every
    /// layer uses it (Mistral). Gemma 3 interleaves five windowed layers with one global.
    #[serde(default)]
    pub sliding_layers: Option<Vec<bool>>,
    /// Rope base of the windowed layers when it differs from `rope_theta` (Gemma 3: 1e4).
    #[serde(default)]
    pub local_rope_theta: Option<f64>,
    /// Queries are scaled by `query_pre_attn_scalar^-0.5` instead of `head_dim^-0.5` (Gemma).
    #[serde(default)]
    pub query_pre_attn_scalar: Option<f64>,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    pub activation: Activation,
    /// Bias on q/k/v projections.
    pub qkv_bias: bool,
    /// Bias on the attention output projection.
    pub o_bias: bool,
    /// Bias on the MLP projections.
    pub mlp_bias: bool,
    /// Bias on the LM head.
    pub lm_head_bias: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    /// The dtype the weights were published in (`float32`, `bfloat16`, ...), if known.
    pub torch_dtype: Option<String>,
    /// How the linear layers quantize their inputs when the model runs (W8A8 checkpoints);
    /// `None` for weight-only and unquantized models.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activation_quant: Option<ActivationQuant>,
}

/// Quantization of every linear layer's input at run time, as a W8A8 checkpoint declares it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ActivationQuant {
    /// Symmetric int8 per token, computed on the fly: `scale = max|x| / 127.5`,
    /// `x -> clamp(round(x / scale), -128, 127) * scale`, rounding half to even
    /// (compressed-tensors' dynamic `token` strategy, what vLLM's W8A8 kernels compute).
    Int8PerToken,
    /// FP8 E4M3 per token, computed on the fly: `scale = max|x| / 448`,
    /// `x -> e4m3(clamp(x / scale, -448, 448)) * scale`, rounding to the nearest E4M3 value
    /// (compressed-tensors' dynamic `token` strategy for `type: float`, vLLM's FP8 W8A8).
    Fp8PerToken,
    /// FP8 E4M3 per token and group of `group_size` consecutive columns, each group with its
    /// own `max|x| / 448` (the last group is shorter when the width is not a multiple):
    /// compressed-tensors' dynamic `group` strategy for `type: float`, the activations of
    /// llm-compressor's FP8_BLOCK scheme.
    Fp8PerGroup { group_size: usize },
}

impl ActivationQuant {
    /// Quantizes and dequantizes one token's values in place.
    pub fn fake_quantize(self, x: &mut [f32]) {
        match self {
            ActivationQuant::Int8PerToken => {
                let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
                let scale = amax / 127.5;
                let scale = if scale == 0.0 { f32::EPSILON } else { scale };
                for v in x.iter_mut() {
                    *v = (*v / scale).round_ties_even().clamp(-128.0, 127.0) * scale;
                }
            }
            ActivationQuant::Fp8PerToken => fp8_fake_quantize(x),
            ActivationQuant::Fp8PerGroup { group_size } => {
                x.chunks_mut(group_size.max(1)).for_each(fp8_fake_quantize);
            }
        }
    }
}

impl std::fmt::Display for ActivationQuant {
    /// As reports name the scheme: `int8 per token`, `FP8 per token and group of 128`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ActivationQuant::Int8PerToken => f.write_str("int8 per token"),
            ActivationQuant::Fp8PerToken => f.write_str("FP8 per token"),
            ActivationQuant::Fp8PerGroup { group_size } => {
                write!(f, "FP8 per token and group of {group_size}")
            }
        }
    }
}

/// FP8 E4M3 at `max|x| / 448`, in place (one token, or one group of a token's columns).
fn fp8_fake_quantize(x: &mut [f32]) {
    use crate::fp8::{E4M3_MAX, round_to_e4m3};
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let scale = amax / E4M3_MAX;
    let scale = if scale == 0.0 { f32::EPSILON } else { scale };
    for v in x.iter_mut() {
        *v = round_to_e4m3((*v / scale).clamp(-E4M3_MAX, E4M3_MAX)) * scale;
    }
}

impl ModelConfig {
    /// How the blocks are wired.
    pub fn layout(&self) -> BlockLayout {
        self.family.layout()
    }

    /// Number of leading dimensions of each head that RoPE rotates (even).
    pub fn rotary_dim(&self) -> usize {
        let d = (self.head_dim as f64 * self.partial_rotary_factor) as usize;
        d - d % 2
    }

    /// Whether block `layer` attends through the sliding window, and if so, its size.
    pub fn window_of(&self, layer: usize) -> Option<usize> {
        let windowed = match &self.sliding_layers {
            None => true,
            Some(layers) => layers.get(layer).copied().unwrap_or(false),
        };
        self.sliding_window.filter(|_| windowed)
    }

    /// Whether block `layer` rotates with the local rope base ([`Self::local_rope_theta`]).
    pub fn uses_local_rope(&self, layer: usize) -> bool {
        self.local_rope_theta.is_some() && self.window_of(layer).is_some()
    }

    /// The factor token embeddings are multiplied by before the first block, if any
    /// (Gemma: `sqrt(hidden_size)`, rounded to f32 as the reference and llama.cpp compute it).
    pub fn embedding_scale(&self) -> Option<f64> {
        self.family
            .scales_embeddings()
            .then(|| (self.hidden_size as f32).sqrt() as f64)
    }

    /// The factor queries are multiplied by before the score product.
    pub fn attention_scale(&self) -> f64 {
        1.0 / self
            .query_pre_attn_scalar
            .unwrap_or(self.head_dim as f64)
            .sqrt()
    }

    /// Width of the query projection output.
    pub fn q_dim(&self) -> usize {
        self.num_heads * self.head_dim
    }

    /// Width of each of the key and value projection outputs.
    pub fn kv_dim(&self) -> usize {
        self.num_kv_heads * self.head_dim
    }

    /// Checks internal consistency; `origin` names the file for the error.
    pub fn validate(&self, origin: &std::path::Path) -> crate::Result<()> {
        let bad = |key: &str, msg: String| Err(crate::Error::config(origin, key, msg));
        for (key, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_layers),
            ("num_attention_heads", self.num_heads),
            ("num_key_value_heads", self.num_kv_heads),
            ("head_dim", self.head_dim),
        ] {
            if v == 0 {
                return bad(key, "must be positive".into());
            }
        }
        if !self.num_heads.is_multiple_of(self.num_kv_heads) {
            return bad(
                "num_key_value_heads",
                format!(
                    "{} query heads cannot be grouped over {} key/value heads",
                    self.num_heads, self.num_kv_heads
                ),
            );
        }
        if !(self.partial_rotary_factor > 0.0 && self.partial_rotary_factor <= 1.0) {
            return bad(
                "partial_rotary_factor",
                format!("{} is not in (0, 1]", self.partial_rotary_factor),
            );
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 0.0) {
            return bad("rope_theta", format!("{} is not positive", self.rope_theta));
        }
        if !(self.norm_eps.is_finite() && self.norm_eps >= 0.0) {
            return bad(
                "rms_norm_eps",
                format!("{} is not a valid epsilon", self.norm_eps),
            );
        }
        if self.sliding_window == Some(0) {
            return bad("sliding_window", "must be positive".into());
        }
        if let Some(layers) = &self.sliding_layers
            && layers.len() != self.num_layers
        {
            return bad(
                "layer_types",
                format!(
                    "lists {} layers for a model of {}",
                    layers.len(),
                    self.num_layers
                ),
            );
        }
        for theta in [self.local_rope_theta, self.query_pre_attn_scalar]
            .into_iter()
            .flatten()
        {
            if !(theta.is_finite() && theta > 0.0) {
                return bad(
                    "rope_parameters",
                    format!("{theta} is not a positive number"),
                );
            }
        }
        let half = self.rotary_dim() / 2;
        match &self.rope_scaling {
            RopeScaling::None => {}
            RopeScaling::Linear { factor } | RopeScaling::Llama3 { factor, .. }
                if !(factor.is_finite() && *factor >= 1.0) =>
            {
                return bad(
                    "rope_scaling.factor",
                    format!("{factor} is not a factor of at least 1"),
                );
            }
            RopeScaling::Llama3 {
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
                ..
            } if !(low_freq_factor < high_freq_factor && *original_max_position_embeddings > 0) => {
                return bad(
                    "rope_scaling",
                    format!(
                        "llama3 rescaling needs low_freq_factor < high_freq_factor and a \
                         positive original_max_position_embeddings (got {low_freq_factor}, \
                         {high_freq_factor}, {original_max_position_embeddings})"
                    ),
                );
            }
            RopeScaling::Divisors(d)
                if d.len() != half || d.iter().any(|v| v.is_nan() || *v <= 0.0) =>
            {
                return bad(
                    "rope_freqs",
                    format!(
                        "{} rotary divisors for {half} rotated pairs, or a divisor that is not \
                         positive",
                        d.len()
                    ),
                );
            }
            _ => {}
        }
        Ok(())
    }

    /// Parameter count implied by the configuration (what a checkpoint of it should hold).
    pub fn parameter_count(&self) -> usize {
        let (h, i, v) = (self.hidden_size, self.intermediate_size, self.vocab_size);
        let norm = match self.layout().norm {
            NormKind::Rms => h,
            NormKind::Layer => 2 * h,
        };
        let attn = h * self.q_dim()
            + 2 * h * self.kv_dim()
            + self.q_dim() * h
            + if self.qkv_bias {
                self.q_dim() + 2 * self.kv_dim()
            } else {
                0
            }
            + if self.o_bias { h } else { 0 };
        let mlp_mats = match self.layout().mlp {
            MlpKind::Gated => 3,
            MlpKind::Plain => 2,
        };
        let mlp = mlp_mats * h * i
            + if self.mlp_bias {
                (mlp_mats - 1) * i + h
            } else {
                0
            };
        let layout = self.layout();
        let norms_per_block = match (layout.parallel, layout.post_norms) {
            (true, _) => 1,
            (false, false) => 2,
            (false, true) => 4,
        };
        let qk_norms = if layout.qk_norm { 2 * self.head_dim } else { 0 };
        let block = attn + mlp + norms_per_block * norm + qk_norms;
        let head = if self.tie_word_embeddings { 0 } else { v * h }
            + if self.lm_head_bias { v } else { 0 };
        v * h + self.num_layers * block + norm + head
    }
}

#[cfg(test)]
mod tests {
    use super::ActivationQuant;

    /// compressed-tensors' rule: `scale = max|x| / 127.5`, round half to even, clamp to
    /// [-128, 127]; the largest value of a token therefore lands on 127 (127.5 rounds to 128,
    /// clamped), and an all-zero token stays zero.
    #[test]
    fn int8_per_token_follows_compressed_tensors() {
        // Values chosen exact in binary: scale 1/64, ties at 127.5, -127.5, 0.5 and 1.5 steps.
        let step = 1.0f32 / 64.0;
        let mut x = [
            127.5 * step,
            -127.5 * step,
            0.5 * step,
            1.5 * step,
            50.0 * step,
        ];
        ActivationQuant::Int8PerToken.fake_quantize(&mut x);
        let expect = [127.0 * step, -128.0 * step, 0.0, 2.0 * step, 50.0 * step];
        assert_eq!(x, expect);
        let mut zeros = [0.0f32; 4];
        ActivationQuant::Int8PerToken.fake_quantize(&mut zeros);
        assert_eq!(zeros, [0.0; 4]);
    }

    /// The FP8 rule: `scale = max|x| / 448`, so the largest value of a token is exact, and the
    /// rest round to E4M3's 3-bit mantissa (ties to even) at the token's scale.
    #[test]
    fn fp8_per_token_follows_compressed_tensors() {
        // max 448 / 64: scale 1/64, so values are E4M3 values / 64 after rounding.
        let s = 1.0f32 / 64.0;
        let mut x = [448.0 * s, -448.0 * s, 1.0625 * s, 1.1875 * s, 0.0];
        ActivationQuant::Fp8PerToken.fake_quantize(&mut x);
        // 1.0625 ties between 1 and 1.125 (to even: 1); 1.1875 ties between 1.125 and 1.25
        // (to even: 1.25).
        assert_eq!(x, [448.0 * s, -448.0 * s, 1.0 * s, 1.25 * s, 0.0]);
        let mut zeros = [0.0f32; 3];
        ActivationQuant::Fp8PerToken.fake_quantize(&mut zeros);
        assert_eq!(zeros, [0.0; 3]);
    }

    /// Per group: each group of columns has its own scale, a short last group included.
    #[test]
    fn fp8_per_group_scales_each_group_alone() {
        let s = 1.0f32 / 64.0;
        let mut x = [448.0 * s, 1.0625 * s / 16.0, 448.0, 1.0625, 7.0];
        let mut tokenwise = x;
        ActivationQuant::Fp8PerGroup { group_size: 2 }.fake_quantize(&mut x);
        // Groups [448s, 1.0625s/16], [448, 1.0625] at their own scales (the ties go to even);
        // the last group, one value, is exact.
        assert_eq!(x, [448.0 * s, s / 16.0, 448.0, 1.0, 7.0]);
        // Per token (scale 1), the first group's small value falls to E4M3's subnormal step.
        ActivationQuant::Fp8PerToken.fake_quantize(&mut tokenwise);
        assert_ne!(tokenwise[1], x[1]);
    }
}
