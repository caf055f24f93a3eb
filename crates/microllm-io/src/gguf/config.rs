//! GGUF metadata -> [`ModelConfig`].
//!
//! A GGUF file has no config.json: llama.cpp's converter copies the hyper-parameters into
//! `{arch}.*` metadata keys and leaves the rest implicit in which tensors exist. This module
//! rebuilds the same [`ModelConfig`] a Hugging Face `config.json` would give, so everything
//! downstream is format-blind:
//!
//! * shapes and rope from `{arch}.block_count`, `.embedding_length`, `.feed_forward_length`,
//!   `.attention.head_count(_kv)`, `.attention.key_length`, `.rope.freq_base`,
//!   `.rope.dimension_count`, `.context_length`, the norm epsilon;
//! * the vocabulary size from the rows of `token_embd` (the tokenizer list may be shorter);
//! * tied embeddings from the *absence* of `output.weight`, biases from the presence of
//!   `*.bias` tensors, the activation from the family;
//! * Gemma 3's layer pattern from `.attention.sliding_window_pattern` (a list of flags, or a
//!   period with llama.cpp's default of 6) and its local rope base from `.rope.freq_base_swa`
//!   (default 10000, as llama.cpp); Llama-3.1's rope rescaling from the `rope_freqs` tensor.
//!
//! A required key that is missing is an error naming the file and the key: guessing would
//! produce a model that loads and then computes garbage (a known failure of GGUF files written
//! without the architecture keys).

use std::collections::HashMap;

use microllm_core::{Activation, Error, Family, ModelConfig, Result, RopeScaling};

use super::header::TensorEntry;
use super::meta::Meta;

/// GGUF `general.architecture` values this reader understands.
pub const SUPPORTED_ARCHITECTURES: [&str; 7] = [
    "llama", "mistral", "qwen2", "qwen3", "phi2", "phi3", "gemma3",
];

/// The GGUF `general.architecture` llama.cpp uses for a family.
pub fn architecture_of(family: Family) -> &'static str {
    match family {
        Family::Llama | Family::Mistral => "llama",
        Family::Qwen2 => "qwen2",
        Family::Qwen3 => "qwen3",
        Family::Phi => "phi2",
        Family::Phi3 => "phi3",
        Family::Gemma3 => "gemma3",
    }
}

/// The family of a GGUF architecture name.
///
/// llama.cpp converts Mistral models under the `llama` architecture; such a file is told apart
/// by a sliding-window key and becomes [`Family::Mistral`] (the Hugging Face LLaMA config has
/// no sliding window).
pub(crate) fn family_of(meta: &Meta<'_>, arch: &str) -> Result<Family> {
    Ok(match arch {
        "llama" if sliding_window(meta, arch)?.is_some() => Family::Mistral,
        "llama" => Family::Llama,
        "mistral" => Family::Mistral,
        "qwen2" => Family::Qwen2,
        "qwen3" => Family::Qwen3,
        "phi2" => Family::Phi,
        "phi3" => Family::Phi3,
        "gemma3" => Family::Gemma3,
        other => {
            return Err(Error::UnsupportedArchitecture {
                name: other.to_string(),
                origin: meta.path.display().to_string(),
                supported: SUPPORTED_ARCHITECTURES.join(", "),
            });
        }
    })
}

/// `{arch}.attention.sliding_window`, if the file has one.
fn sliding_window(meta: &Meta<'_>, arch: &str) -> Result<Option<usize>> {
    meta.usize(&format!("{arch}.attention.sliding_window"))
}

/// Builds and validates the configuration of a GGUF file.
///
/// `tensors` are the file's tensor infos under their GGUF names (shapes already in
/// outermost-first order, as candle reports them); `rope_freqs` the values of its
/// `rope_freqs` tensor, if it has one.
pub(crate) fn read_config(
    meta: &Meta<'_>,
    arch: &str,
    family: Family,
    tensors: &HashMap<String, TensorEntry>,
    rope_freqs: Option<Vec<f64>>,
) -> Result<ModelConfig> {
    let key = |k: &str| format!("{arch}.{k}");
    for (k, what) in [
        ("final_logit_softcapping", "logit soft-capping"),
        ("attn_logit_softcapping", "logit soft-capping"),
    ] {
        if meta.f64(&key(k))?.is_some_and(|v| v != 0.0) {
            return Err(Error::config(
                meta.path,
                key(k),
                format!("{what} is not supported"),
            ));
        }
    }
    if let Some(t) = ["rope_factors_long.weight", "rope_factors_short.weight"]
        .into_iter()
        .find(|t| tensors.contains_key(*t))
    {
        return Err(Error::config(
            meta.path,
            t,
            "LongRoPE rescaling (Phi-3 128k / Phi-3.5 / Phi-4-mini) is not supported yet",
        ));
    }
    let num_layers = meta.req_usize(&key("block_count"))?;
    let hidden_size = meta.req_usize(&key("embedding_length"))?;
    let intermediate_size = meta.req_usize(&key("feed_forward_length"))?;
    let num_heads = meta.req_usize(&key("attention.head_count"))?;
    let num_kv_heads = meta
        .usize(&key("attention.head_count_kv"))?
        .unwrap_or(num_heads);
    if num_heads == 0 {
        return Err(Error::config(
            meta.path,
            key("attention.head_count"),
            "must be positive",
        ));
    }
    let head_dim = meta
        .usize(&key("attention.key_length"))?
        .unwrap_or(hidden_size / num_heads);
    let rope_theta = meta.f64(&key("rope.freq_base"))?.unwrap_or(10_000.0);
    let partial_rotary_factor = match meta.usize(&key("rope.dimension_count"))? {
        Some(dims) if head_dim > 0 => dims as f64 / head_dim as f64,
        _ => 1.0,
    };
    let rms_key = key("attention.layer_norm_rms_epsilon");
    let ln_key = key("attention.layer_norm_epsilon");
    let norm_eps = match (meta.f64(&rms_key)?, meta.f64(&ln_key)?) {
        (Some(e), _) | (None, Some(e)) => e,
        (None, None) => {
            return Err(Error::config(
                meta.path,
                rms_key,
                format!("required GGUF metadata key is missing (nor is there `{ln_key}`)"),
            ));
        }
    };
    let max_position_embeddings = meta.req_usize(&key("context_length"))?;
    let rope_scaling = match (rope_freqs, meta.str(&key("rope.scaling.type"))?) {
        (Some(divisors), _) => RopeScaling::Divisors(divisors),
        (None, None | Some("none")) => RopeScaling::None,
        (None, Some("linear")) => RopeScaling::Linear {
            factor: meta
                .f64(&key("rope.scaling.factor"))?
                .ok_or_else(|| Error::config(meta.path, key("rope.scaling.factor"), "missing"))?,
        },
        (None, Some(other)) => {
            return Err(Error::config(
                meta.path,
                key("rope.scaling.type"),
                format!("rope scaling `{other}` is not supported (linear and llama3 are)"),
            ));
        }
    };
    let sliding_window = sliding_window(meta, arch)?;
    let (sliding_layers, local_rope_theta) = match family {
        Family::Gemma3 => (
            Some(gemma3_layer_pattern(
                meta,
                &key("attention.sliding_window_pattern"),
                num_layers,
            )?),
            Some(meta.f64(&key("rope.freq_base_swa"))?.unwrap_or(10_000.0)),
        ),
        _ => (None, None),
    };
    // llama.cpp scales Gemma 3's queries by head_dim^-0.5, except the 27B model (62 blocks),
    // whose query_pre_attn_scalar is hidden / heads.
    let query_pre_attn_scalar =
        (family == Family::Gemma3 && num_layers == 62).then(|| (hidden_size / num_heads) as f64);

    let vocab_size = match tensors.get("token_embd.weight") {
        Some(info) => info.dims.first().copied().unwrap_or(0),
        None => match meta.usize(&key("vocab_size"))? {
            Some(v) => v,
            None => meta
                .str_array("tokenizer.ggml.tokens")?
                .map(|t| t.len())
                .ok_or_else(|| {
                    Error::config(
                        meta.path,
                        key("vocab_size"),
                        "no token_embd.weight tensor, vocab size key or token list",
                    )
                })?,
        },
    };

    // Biases are a property of the whole stack; block 0 speaks for all of them.
    let has = |name: &str| tensors.contains_key(name);
    let qkv_bias = has("blk.0.attn_q.bias") || has("blk.0.attn_qkv.bias");
    let o_bias = has("blk.0.attn_output.bias");
    let mlp_bias = has("blk.0.ffn_up.bias") || has("blk.0.ffn_down.bias");

    let config = ModelConfig {
        family,
        vocab_size,
        hidden_size,
        intermediate_size,
        num_layers,
        num_heads,
        num_kv_heads,
        head_dim,
        rope_theta,
        rope_scaling,
        partial_rotary_factor,
        norm_eps,
        sliding_window,
        sliding_layers,
        local_rope_theta,
        query_pre_attn_scalar,
        max_position_embeddings,
        tie_word_embeddings: !has("output.weight"),
        activation: match family {
            Family::Phi | Family::Gemma3 => Activation::GeluNew,
            Family::Llama | Family::Mistral | Family::Qwen2 | Family::Qwen3 | Family::Phi3 => {
                Activation::Silu
            }
        },
        qkv_bias,
        o_bias,
        mlp_bias,
        lm_head_bias: has("output.bias"),
        bos_token_id: meta.u32("tokenizer.ggml.bos_token_id")?,
        eos_token_ids: meta
            .u32("tokenizer.ggml.eos_token_id")?
            .into_iter()
            .collect(),
        torch_dtype: None,
        activation_quant: None,
    };
    config.validate(meta.path)?;
    Ok(config)
}

/// Gemma 3's windowed layers: `key` as a list of per-layer flags, or as a period `n` (every
/// n-th layer global), by default 6, as llama.cpp reads it.
fn gemma3_layer_pattern(meta: &Meta<'_>, key: &str, n: usize) -> Result<Vec<bool>> {
    if meta.is_array(key)
        && let Some(flags) = meta.bool_array(key)?
    {
        if flags.len() != n {
            return Err(Error::config(
                meta.path,
                key,
                format!("lists {} layers for a model of {n}", flags.len()),
            ));
        }
        return Ok(flags);
    }
    let period = meta.usize(key)?.unwrap_or(6).max(1);
    Ok((0..n).map(|l| (l + 1) % period != 0).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::GgufType;
    use candle_core::quantized::gguf_file::Value;
    use std::path::Path;

    fn info(shape: &[usize]) -> TensorEntry {
        TensorEntry {
            dtype: GgufType::F32,
            dims: shape.to_vec(),
            offset: 0,
        }
    }

    fn phi_meta() -> HashMap<String, Value> {
        let mut m = HashMap::new();
        for (k, v) in [
            ("phi2.block_count", 2u32),
            ("phi2.embedding_length", 64),
            ("phi2.feed_forward_length", 256),
            ("phi2.attention.head_count", 4),
            ("phi2.rope.dimension_count", 8),
            ("phi2.context_length", 2048),
        ] {
            m.insert(k.to_string(), Value::U32(v));
        }
        m.insert(
            "phi2.attention.layer_norm_epsilon".to_string(),
            Value::F32(1e-5),
        );
        m
    }

    #[test]
    fn phi2_config_from_metadata() {
        let map = phi_meta();
        let meta = Meta::new(Path::new("phi.gguf"), &map);
        let family = family_of(&meta, "phi2").unwrap();
        assert_eq!(family, Family::Phi);
        let mut tensors = HashMap::new();
        tensors.insert("token_embd.weight".to_string(), info(&[100, 64]));
        tensors.insert("output.weight".to_string(), info(&[100, 64]));
        tensors.insert("output.bias".to_string(), info(&[100]));
        tensors.insert("blk.0.attn_qkv.bias".to_string(), info(&[192]));
        tensors.insert("blk.0.attn_output.bias".to_string(), info(&[64]));
        tensors.insert("blk.0.ffn_up.bias".to_string(), info(&[256]));
        let c = read_config(&meta, "phi2", family, &tensors, None).unwrap();
        assert_eq!(c.head_dim, 16);
        assert_eq!(c.num_kv_heads, 4);
        assert_eq!(c.partial_rotary_factor, 0.5);
        assert_eq!(c.norm_eps, 1e-5);
        assert_eq!(c.rope_theta, 10_000.0);
        assert_eq!(c.vocab_size, 100);
        assert!(!c.tie_word_embeddings && c.lm_head_bias);
        assert!(c.qkv_bias && c.o_bias && c.mlp_bias);
        assert_eq!(c.activation, Activation::GeluNew);
    }

    #[test]
    fn missing_key_names_file_and_key() {
        let mut map = phi_meta();
        map.remove("phi2.feed_forward_length");
        let meta = Meta::new(Path::new("phi.gguf"), &map);
        let err = read_config(&meta, "phi2", Family::Phi, &HashMap::new(), None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("phi.gguf"), "{err}");
        assert!(err.contains("phi2.feed_forward_length"), "{err}");
    }

    #[test]
    fn unknown_architecture_lists_supported() {
        let map = HashMap::new();
        let meta = Meta::new(Path::new("x.gguf"), &map);
        let err = family_of(&meta, "mamba").unwrap_err();
        assert!(matches!(err, Error::UnsupportedArchitecture { .. }));
        let msg = err.to_string();
        assert!(msg.contains("mamba") && msg.contains("x.gguf"), "{msg}");
        assert!(
            msg.contains("llama, mistral, qwen2, qwen3, phi2, phi3, gemma3"),
            "{msg}"
        );
    }

    #[test]
    fn llama_with_sliding_window_is_mistral() {
        let mut map = HashMap::new();
        map.insert(
            "llama.attention.sliding_window".to_string(),
            Value::U32(4096),
        );
        let meta = Meta::new(Path::new("m.gguf"), &map);
        assert_eq!(family_of(&meta, "llama").unwrap(), Family::Mistral);
        assert_eq!(family_of(&meta, "qwen2").unwrap(), Family::Qwen2);
    }
}
