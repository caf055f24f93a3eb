//! `config.json` -> [`ModelConfig`].
//!
//! Two config styles exist on the hub: the older one with top-level `rope_theta`,
//! `partial_rotary_factor` and `torch_dtype`, and the newer one (transformers 5) with a
//! `rope_parameters` object and `dtype`. Both are read; a key present in both places must agree
//! with the newer one winning. Family defaults (Qwen2's q/k/v biases, Phi's biases and
//! LayerNorm) are applied here so the decoder sees plain facts. Unrelated keys (training,
//! generation) are ignored: config.json carries many that do not affect the forward pass.
//! Keys that *would* change the forward pass but that microllm does not implement (rope
//! scaling, for example) are refused rather than silently ignored.

use std::path::Path;

use microllm_core::{Activation, Error, Family, ModelConfig, Result};
use serde_json::{Map, Value};

/// Reads and resolves a `config.json`.
pub fn read_config(path: &Path) -> Result<ModelConfig> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let value: Value = serde_json::from_str(&text)
        .map_err(|e| Error::format(path, format!("not valid JSON: {e}")))?;
    parse_config(&value, path)
}

/// Resolves a parsed `config.json`; `path` is used in error messages only.
pub fn parse_config(value: &Value, path: &Path) -> Result<ModelConfig> {
    let obj = value
        .as_object()
        .ok_or_else(|| Error::format(path, "config.json is not a JSON object"))?;
    let keys = Keys { obj, path };

    let model_type = keys.string("model_type")?;
    let family =
        Family::from_model_type(&model_type).ok_or_else(|| Error::UnsupportedArchitecture {
            name: model_type.clone(),
            origin: path.display().to_string(),
            supported: Family::supported_list(),
        })?;

    let hidden_size = keys.usize("hidden_size")?;
    let num_heads = keys.usize("num_attention_heads")?;
    let num_kv_heads = keys.opt_usize("num_key_value_heads")?.unwrap_or(num_heads);
    let head_dim = match keys.opt_usize("head_dim")? {
        Some(d) => d,
        None if num_heads > 0 && hidden_size % num_heads == 0 => hidden_size / num_heads,
        None => {
            return Err(Error::config(
                path,
                "head_dim",
                "missing, and hidden_size is not a multiple of num_attention_heads",
            ));
        }
    };

    let rope = keys.rope()?;
    let layout = family.layout();
    let eps_key = match layout.norm {
        microllm_core::NormKind::Rms => "rms_norm_eps",
        microllm_core::NormKind::Layer => "layer_norm_eps",
    };
    let default_act = match family {
        Family::Phi => "gelu_new",
        _ => "silu",
    };
    let act_name = keys
        .opt_string("hidden_act")?
        .unwrap_or_else(|| default_act.into());
    let activation = Activation::from_hf(&act_name).ok_or_else(|| {
        Error::config(
            path,
            "hidden_act",
            format!("unsupported activation `{act_name}`"),
        )
    })?;

    let attention_bias = keys.opt_bool("attention_bias")?.unwrap_or(false);
    let (qkv_bias, o_bias, mlp_bias, lm_head_bias) = match family {
        Family::Llama => (
            attention_bias,
            attention_bias,
            keys.opt_bool("mlp_bias")?.unwrap_or(false),
            false,
        ),
        Family::Mistral => (false, false, false, false),
        Family::Qwen2 => (true, false, false, false),
        Family::Phi => (true, true, true, true),
    };

    let sliding_window = match family {
        Family::Mistral => keys.opt_usize("sliding_window")?,
        Family::Qwen2 if keys.opt_bool("use_sliding_window")?.unwrap_or(false) => {
            return Err(Error::config(
                path,
                "use_sliding_window",
                "Qwen2 per-layer sliding-window attention is not supported",
            ));
        }
        _ => None,
    };

    let config = ModelConfig {
        family,
        vocab_size: keys.usize("vocab_size")?,
        hidden_size,
        intermediate_size: keys.usize("intermediate_size")?,
        num_layers: keys.usize("num_hidden_layers")?,
        num_heads,
        num_kv_heads,
        head_dim,
        rope_theta: rope.theta,
        partial_rotary_factor: rope.partial_rotary_factor,
        norm_eps: keys.opt_f64(eps_key)?.unwrap_or(1e-5),
        sliding_window,
        max_position_embeddings: keys.opt_usize("max_position_embeddings")?.unwrap_or(2048),
        tie_word_embeddings: keys.opt_bool("tie_word_embeddings")?.unwrap_or(false),
        activation,
        qkv_bias,
        o_bias,
        mlp_bias,
        lm_head_bias,
        bos_token_id: keys.opt_usize("bos_token_id")?.map(|v| v as u32),
        eos_token_ids: keys.token_ids("eos_token_id")?,
        torch_dtype: match keys.opt_string("dtype")? {
            Some(d) => Some(d),
            None => keys.opt_string("torch_dtype")?,
        },
    };
    config.validate(path)?;
    Ok(config)
}

/// Rotary settings from either config style.
struct Rope {
    theta: f64,
    partial_rotary_factor: f64,
}

/// Typed access to config keys, with errors naming the file and key.
struct Keys<'a> {
    obj: &'a Map<String, Value>,
    path: &'a Path,
}

impl Keys<'_> {
    fn get(&self, key: &str) -> Option<&Value> {
        self.obj.get(key).filter(|v| !v.is_null())
    }

    fn missing(&self, key: &str) -> Error {
        Error::config(self.path, key, "required key is missing")
    }

    fn wrong(&self, key: &str, what: &str, v: &Value) -> Error {
        Error::config(self.path, key, format!("expected {what}, found {v}"))
    }

    fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        self.get(key)
            .map(|v| {
                v.as_u64()
                    .map(|n| n as usize)
                    .ok_or_else(|| self.wrong(key, "a non-negative integer", v))
            })
            .transpose()
    }

    fn usize(&self, key: &str) -> Result<usize> {
        self.opt_usize(key)?.ok_or_else(|| self.missing(key))
    }

    fn opt_f64(&self, key: &str) -> Result<Option<f64>> {
        self.get(key)
            .map(|v| v.as_f64().ok_or_else(|| self.wrong(key, "a number", v)))
            .transpose()
    }

    fn opt_bool(&self, key: &str) -> Result<Option<bool>> {
        self.get(key)
            .map(|v| {
                v.as_bool()
                    .ok_or_else(|| self.wrong(key, "true or false", v))
            })
            .transpose()
    }

    fn opt_string(&self, key: &str) -> Result<Option<String>> {
        self.get(key)
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| self.wrong(key, "a string", v))
            })
            .transpose()
    }

    fn string(&self, key: &str) -> Result<String> {
        self.opt_string(key)?.ok_or_else(|| self.missing(key))
    }

    /// An id or a list of ids (`eos_token_id` may be either).
    fn token_ids(&self, key: &str) -> Result<Vec<u32>> {
        match self.get(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| {
                    v.as_u64()
                        .map(|n| n as u32)
                        .ok_or_else(|| self.wrong(key, "a list of token ids", v))
                })
                .collect(),
            Some(v) => v
                .as_u64()
                .map(|n| vec![n as u32])
                .ok_or_else(|| self.wrong(key, "a token id", v)),
        }
    }

    fn rope(&self) -> Result<Rope> {
        if let Some(scaling) = self.get("rope_scaling") {
            let kind = scaling
                .get("rope_type")
                .or_else(|| scaling.get("type"))
                .and_then(Value::as_str)
                .unwrap_or("?");
            if kind != "default" {
                return Err(Error::config(
                    self.path,
                    "rope_scaling",
                    format!("rope scaling `{kind}` is not supported (only default RoPE)"),
                ));
            }
        }
        let mut theta = self.opt_f64("rope_theta")?;
        let mut partial = self.opt_f64("partial_rotary_factor")?;
        if let Some(params) = self.get("rope_parameters") {
            let params = params
                .as_object()
                .ok_or_else(|| self.wrong("rope_parameters", "an object", params))?;
            let nested = Keys {
                obj: params,
                path: self.path,
            };
            let at = |k: &str| format!("rope_parameters.{k}");
            if let Some(kind) = nested.opt_string("rope_type")?
                && kind != "default"
            {
                return Err(Error::config(
                    self.path,
                    at("rope_type"),
                    format!("rope type `{kind}` is not supported (only default RoPE)"),
                ));
            }
            if let Some(t) = nested
                .opt_f64("rope_theta")
                .map_err(|_| Error::config(self.path, at("rope_theta"), "expected a number"))?
            {
                theta = Some(t);
            }
            if let Some(p) = nested.opt_f64("partial_rotary_factor").map_err(|_| {
                Error::config(self.path, at("partial_rotary_factor"), "expected a number")
            })? {
                partial = Some(p);
            }
        }
        Ok(Rope {
            theta: theta.unwrap_or(10_000.0),
            partial_rotary_factor: partial.unwrap_or(1.0),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<ModelConfig> {
        parse_config(&v, Path::new("config.json"))
    }

    fn llama() -> Value {
        json!({
            "model_type": "llama", "vocab_size": 384, "hidden_size": 64,
            "intermediate_size": 160, "num_hidden_layers": 3, "num_attention_heads": 4,
            "num_key_value_heads": 2, "rope_theta": 10000.0, "tie_word_embeddings": true
        })
    }

    #[test]
    fn both_rope_styles_agree() {
        let old = parse(llama()).unwrap();
        let mut v = llama();
        v.as_object_mut().unwrap().remove("rope_theta");
        v["rope_parameters"] = json!({"rope_theta": 10000.0, "rope_type": "default"});
        assert_eq!(parse(v).unwrap(), old);
        assert_eq!(old.head_dim, 16);
        assert_eq!(old.parameter_count(), 154_048);
    }

    #[test]
    fn missing_key_is_named() {
        let mut v = llama();
        v.as_object_mut().unwrap().remove("hidden_size");
        let err = parse(v).unwrap_err().to_string();
        assert!(
            err.contains("config.json") && err.contains("`hidden_size`"),
            "{err}"
        );
    }

    #[test]
    fn unknown_model_type_lists_supported() {
        let mut v = llama();
        v["model_type"] = json!("gpt_neox");
        let err = parse(v).unwrap_err().to_string();
        assert!(
            err.contains("gpt_neox") && err.contains("llama, mistral, qwen2, phi"),
            "{err}"
        );
    }

    #[test]
    fn wrong_type_is_named() {
        let mut v = llama();
        v["num_attention_heads"] = json!("four");
        let err = parse(v).unwrap_err().to_string();
        assert!(
            err.contains("`num_attention_heads`") && err.contains("integer"),
            "{err}"
        );
    }

    #[test]
    fn rope_scaling_is_refused() {
        let mut v = llama();
        v["rope_scaling"] = json!({"rope_type": "llama3", "factor": 8.0});
        assert!(parse(v).unwrap_err().to_string().contains("rope_scaling"));
    }
}
