//! Hugging Face directories that transformers loads: config.json, safetensors (sharded with an
//! index when larger than the shard limit), tokenizer.json and tokenizer_config.json.

use std::path::{Path, PathBuf};

use microllm_core::{Error, Family, ModelConfig, Progress, Result, RopeScaling, TensorSource};
use serde_json::{Value, json};

use super::OutDtype;
use super::planned::{Planned, PlannedDir, write_planned_dir};
use crate::Tokenizer;
use crate::fused::JoinFused;
use crate::quantized::RawTensor;

/// What goes into a Hugging Face directory.
pub struct HfOutput<'a> {
    pub config: &'a ModelConfig,
    pub tensors: &'a dyn TensorSource,
    pub tokenizer: Option<&'a Tokenizer>,
    pub chat_template: Option<&'a str>,
}

/// How to write it.
#[derive(Debug, Clone)]
pub struct HfWriteOptions {
    pub dtype: OutDtype,
    /// Largest shard, in bytes of tensor data; more data is split into numbered shards.
    pub max_shard_bytes: u64,
    /// Replace an existing destination.
    pub overwrite: bool,
}

impl Default for HfWriteOptions {
    fn default() -> Self {
        Self {
            dtype: OutDtype::F32,
            max_shard_bytes: 2_000_000_000,
            overwrite: false,
        }
    }
}

/// What was written.
#[derive(Debug, Clone)]
pub struct WriteSummary {
    pub dir: PathBuf,
    pub shards: usize,
    pub tensors: usize,
    pub tensor_bytes: u64,
}

/// Writes `output` as a Hugging Face directory at `dest`, atomically.
pub fn write_hf_dir(
    output: &HfOutput<'_>,
    dest: &Path,
    opts: &HfWriteOptions,
    progress: &dyn Progress,
) -> Result<WriteSummary> {
    check_expressible(output.config)?;
    let tensors = JoinFused::new(output.tensors, output.config);
    let planned = tensors
        .infos()
        .into_iter()
        .map(|info| Planned::dense(info, opts.dtype))
        .collect();
    let no_packing = |name: &str| -> Result<Vec<RawTensor<'static>>> {
        Err(Error::Invalid(format!(
            "a plain directory packs no tensor, yet `{name}` was asked for"
        )))
    };
    let dir = PlannedDir {
        config: output.config,
        tensors: &tensors,
        planned,
        pack: &no_packing,
        config_json: hf_config_json(output.config, opts.dtype),
        quantize_config: None,
        tokenizer: output.tokenizer,
        chat_template: output.chat_template,
    };
    write_planned_dir(&dir, dest, opts.max_shard_bytes, opts.overwrite, progress)
}

/// The config.json transformers expects for `cfg`.
pub fn hf_config_json(cfg: &ModelConfig, dtype: OutDtype) -> Value {
    let mut v = json!({
        "architectures": [cfg.family.hf_architecture()],
        "model_type": cfg.family.model_type(),
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": cfg.activation.hf_name(),
        "max_position_embeddings": cfg.max_position_embeddings,
        "rope_theta": cfg.rope_theta,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "torch_dtype": dtype.torch_name(),
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": match cfg.eos_token_ids.as_slice() {
            [] => Value::Null,
            [one] => json!(one),
            many => json!(many),
        },
        "use_cache": true,
    });
    let obj = v.as_object_mut().expect("object literal");
    match cfg.family {
        Family::Phi => {
            obj.insert("layer_norm_eps".into(), json!(cfg.norm_eps));
            obj.insert(
                "partial_rotary_factor".into(),
                json!(cfg.partial_rotary_factor),
            );
        }
        _ => {
            obj.insert("rms_norm_eps".into(), json!(cfg.norm_eps));
        }
    }
    match cfg.family {
        Family::Llama => {
            obj.insert("attention_bias".into(), json!(cfg.qkv_bias));
            obj.insert("mlp_bias".into(), json!(cfg.mlp_bias));
        }
        Family::Mistral | Family::Phi3 => {
            obj.insert("sliding_window".into(), json!(cfg.sliding_window));
        }
        Family::Qwen2 => {
            obj.insert("use_sliding_window".into(), json!(false));
        }
        Family::Qwen3 => {
            obj.insert("attention_bias".into(), json!(cfg.qkv_bias));
            obj.insert("use_sliding_window".into(), json!(false));
        }
        Family::Gemma3 => gemma3_keys(cfg, obj),
        Family::Phi => {}
    }
    if cfg.partial_rotary_factor != 1.0 && cfg.family == Family::Phi3 {
        obj.insert(
            "partial_rotary_factor".into(),
            json!(cfg.partial_rotary_factor),
        );
    }
    if let Some(scaling) = rope_scaling_json(&cfg.rope_scaling) {
        obj.insert("rope_scaling".into(), scaling);
    }
    v
}

/// `rope_scaling` as transformers reads it, or `None` for plain RoPE.
fn rope_scaling_json(scaling: &RopeScaling) -> Option<Value> {
    match scaling {
        RopeScaling::None => None,
        RopeScaling::Linear { factor } => Some(json!({"rope_type": "linear", "factor": factor})),
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        } => Some(json!({
            "rope_type": "llama3",
            "factor": factor,
            "low_freq_factor": low_freq_factor,
            "high_freq_factor": high_freq_factor,
            "original_max_position_embeddings": original_max_position_embeddings,
        })),
        // Only a GGUF file carries bare divisors; the writer refuses them (see
        // `check_expressible`).
        RopeScaling::Divisors(_) => None,
    }
}

/// Gemma 3's keys: its own activation key, the attention scalar, which layers are windowed
/// and the rope of each layer type, in both the transformers 5 (`rope_parameters`) and the
/// older (`rope_theta`, `rope_local_base_freq`) spelling.
fn gemma3_keys(cfg: &ModelConfig, obj: &mut serde_json::Map<String, Value>) {
    obj.remove("hidden_act");
    obj.insert("hidden_activation".into(), json!("gelu_pytorch_tanh"));
    obj.insert(
        "query_pre_attn_scalar".into(),
        json!(cfg.query_pre_attn_scalar.unwrap_or(cfg.head_dim as f64)),
    );
    obj.insert("sliding_window".into(), json!(cfg.sliding_window));
    let layer_types: Vec<&str> = (0..cfg.num_layers)
        .map(|l| {
            if cfg.window_of(l).is_some() {
                "sliding_attention"
            } else {
                "full_attention"
            }
        })
        .collect();
    obj.insert("layer_types".into(), json!(layer_types));
    let local = cfg.local_rope_theta.unwrap_or(cfg.rope_theta);
    let mut full = json!({"rope_type": "default", "rope_theta": cfg.rope_theta});
    if let Some(Value::Object(s)) = rope_scaling_json(&cfg.rope_scaling) {
        full = Value::Object(s);
        full["rope_theta"] = json!(cfg.rope_theta);
    }
    obj.insert(
        "rope_parameters".into(),
        json!({
            "full_attention": full,
            "sliding_attention": {"rope_type": "default", "rope_theta": local},
        }),
    );
    obj.insert("rope_local_base_freq".into(), json!(local));
}

/// Refuses a configuration config.json cannot express (rotary divisors read from a GGUF
/// file have no `rope_scaling` spelling).
pub(crate) fn check_expressible(cfg: &ModelConfig) -> Result<()> {
    if matches!(cfg.rope_scaling, RopeScaling::Divisors(_)) {
        return Err(Error::Invalid(
            "this model's rotary frequencies are rescaled by a GGUF `rope_freqs` tensor, which \
             config.json cannot express; write it as GGUF instead"
                .into(),
        ));
    }
    Ok(())
}

pub(crate) fn tokenizer_config(
    cfg: &ModelConfig,
    tok: &Tokenizer,
    chat_template: Option<&str>,
) -> Value {
    let name = |id: Option<u32>| id.and_then(|id| tok.inner().id_to_token(id));
    let mut v = json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": cfg.max_position_embeddings,
        "clean_up_tokenization_spaces": false,
    });
    let obj = v.as_object_mut().expect("object literal");
    if let Some(bos) = name(cfg.bos_token_id) {
        obj.insert("bos_token".into(), json!(bos));
    }
    if let Some(eos) = name(cfg.eos_token_ids.first().copied()) {
        obj.insert("eos_token".into(), json!(eos));
    }
    if let Some(t) = chat_template {
        obj.insert("chat_template".into(), json!(t));
    }
    v
}

pub(crate) fn write_json(path: &Path, value: &Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value).expect("JSON of plain values");
    std::fs::write(path, text + "\n").map_err(|e| Error::io(path, e))
}
