//! The architecture-neutral model configuration.
//!
//! Every supported family is a decoder-only transformer; what differs between them is data:
//! which norm, whether attention and MLP run in sequence or in parallel, gated or plain MLP,
//! which projections carry biases, how much of each head is rotated, whether attention is
//! windowed. [`ModelConfig`] holds those facts resolved to plain values, so the decoder has no
//! per-family branches beyond reading them, and a new family is mostly a new [`Family`] row.

use serde::{Deserialize, Serialize};

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
}

impl Family {
    /// Every family, in the order they are listed to users.
    pub const ALL: [Family; 4] = [Family::Llama, Family::Mistral, Family::Qwen2, Family::Phi];

    /// The Hugging Face `model_type` of the family.
    pub fn model_type(self) -> &'static str {
        match self {
            Family::Llama => "llama",
            Family::Mistral => "mistral",
            Family::Qwen2 => "qwen2",
            Family::Phi => "phi",
        }
    }

    /// The family for a Hugging Face `model_type`, if supported.
    pub fn from_model_type(model_type: &str) -> Option<Family> {
        Family::ALL
            .into_iter()
            .find(|f| f.model_type() == model_type)
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
        }
    }

    /// How the family's blocks are wired.
    pub fn layout(self) -> BlockLayout {
        match self {
            Family::Llama | Family::Mistral | Family::Qwen2 => BlockLayout {
                norm: NormKind::Rms,
                parallel: false,
                mlp: MlpKind::Gated,
            },
            Family::Phi => BlockLayout {
                norm: NormKind::Layer,
                parallel: true,
                mlp: MlpKind::Plain,
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
    /// Fraction of each head's dimensions that are rotated (Phi: 0.5; others 1.0).
    pub partial_rotary_factor: f64,
    pub norm_eps: f64,
    /// Each position attends to at most this many positions (itself included), if set.
    pub sliding_window: Option<usize>,
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
        let norms_per_block = if self.layout().parallel { 1 } else { 2 };
        let block = attn + mlp + norms_per_block * norm;
        let head = if self.tie_word_embeddings { 0 } else { v * h }
            + if self.lm_head_bias { v } else { 0 };
        v * h + self.num_layers * block + norm + head
    }
}
