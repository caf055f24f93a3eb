//! `config.json` -> [`ModelConfig`].
//!
//! Two config styles exist on the hub: the older one with top-level `rope_theta`,
//! `partial_rotary_factor` and `torch_dtype`, and the newer one (transformers 5) with a
//! `rope_parameters` object and `dtype`. Both are read; a key present in both places must agree
//! with the newer one winning. Family defaults (Qwen2's q/k/v biases, Phi's biases and
//! LayerNorm) are applied here so the decoder sees plain facts. Unrelated keys (training,
//! generation) are ignored: config.json carries many that do not affect the forward pass.
//! Keys that *would* change the forward pass but that microllm does not implement (YaRN or
//! dynamic rope scaling, logit soft-capping) are refused rather than silently ignored.
//!
//! Gemma 3 spreads its rope over two layer types: the newer style nests one set of rope
//! parameters per type (`rope_parameters.full_attention` / `.sliding_attention`), the older
//! one has `rope_theta` for the global layers and `rope_local_base_freq` for the windowed
//! ones; which layers are windowed comes from `layer_types` (or the older
//! `sliding_window_pattern`: every n-th layer global).

use std::path::Path;

use microllm_core::{Activation, Error, Family, ModelConfig, Result, RopeScaling};
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
            name: if model_type == "gemma3" {
                "gemma3 (the multimodal Gemma 3; its text-only checkpoints are gemma3_text)".into()
            } else {
                model_type.clone()
            },
            origin: path.display().to_string(),
            supported: Family::supported_list(),
        })?;
    for key in ["final_logit_softcapping", "attn_logit_softcapping"] {
        if keys.get(key).is_some() {
            return Err(Error::config(
                path,
                key,
                "logit soft-capping is not supported (Gemma 2 uses it; Gemma 3 does not)",
            ));
        }
    }

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

    let rope = keys.rope(family)?;
    let layout = family.layout();
    let eps_key = match layout.norm {
        microllm_core::NormKind::Rms => "rms_norm_eps",
        microllm_core::NormKind::Layer => "layer_norm_eps",
    };
    let (act_key, default_act) = match family {
        Family::Phi => ("hidden_act", "gelu_new"),
        // Gemma names its MLP activation `hidden_activation`.
        Family::Gemma3 => ("hidden_activation", "gelu_pytorch_tanh"),
        _ => ("hidden_act", "silu"),
    };
    let act_name = keys
        .opt_string(act_key)?
        .unwrap_or_else(|| default_act.into());
    let activation = Activation::from_hf(&act_name).ok_or_else(|| {
        Error::config(
            path,
            act_key,
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
        Family::Mistral | Family::Phi3 => (false, false, false, false),
        Family::Qwen2 => (true, false, false, false),
        Family::Qwen3 | Family::Gemma3 => (attention_bias, attention_bias, false, false),
        Family::Phi => (true, true, true, true),
    };

    let sliding_window = match family {
        Family::Mistral | Family::Phi3 | Family::Gemma3 => keys.opt_usize("sliding_window")?,
        Family::Qwen2 | Family::Qwen3 if keys.opt_bool("use_sliding_window")?.unwrap_or(false) => {
            return Err(Error::config(
                path,
                "use_sliding_window",
                "Qwen per-layer sliding-window attention is not supported",
            ));
        }
        _ => None,
    };
    let num_layers = keys.usize("num_hidden_layers")?;
    let sliding_layers = match family {
        Family::Gemma3 => Some(keys.sliding_layers(num_layers)?),
        _ => None,
    };
    let query_pre_attn_scalar = match family {
        Family::Gemma3 => keys.opt_f64("query_pre_attn_scalar")?,
        _ => None,
    };
    let tie_default = family == Family::Gemma3;

    let config = ModelConfig {
        family,
        vocab_size: keys.usize("vocab_size")?,
        hidden_size,
        intermediate_size: keys.usize("intermediate_size")?,
        num_layers,
        num_heads,
        num_kv_heads,
        head_dim,
        rope_theta: rope.theta,
        rope_scaling: rope.scaling,
        partial_rotary_factor: rope.partial_rotary_factor,
        norm_eps: keys.opt_f64(eps_key)?.unwrap_or(1e-5),
        sliding_window,
        sliding_layers,
        local_rope_theta: rope.local_theta,
        query_pre_attn_scalar,
        max_position_embeddings: keys.opt_usize("max_position_embeddings")?.unwrap_or(2048),
        tie_word_embeddings: keys.opt_bool("tie_word_embeddings")?.unwrap_or(tie_default),
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
        // Set from the quantization config by the checkpoint reader.
        activation_quant: None,
    };
    config.validate(path)?;
    Ok(config)
}

/// Rotary settings from either config style.
struct Rope {
    theta: f64,
    partial_rotary_factor: f64,
    scaling: RopeScaling,
    /// Base of the windowed layers (Gemma 3), when it has one of its own.
    local_theta: Option<f64>,
}

/// Typed access to config keys, with errors naming the file and key.
struct Keys<'a> {
    obj: &'a Map<String, Value>,
    path: &'a Path,
}

impl<'a> Keys<'a> {
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

    /// Rope settings: top-level `rope_theta` / `rope_scaling` / `partial_rotary_factor`,
    /// overridden by a `rope_parameters` object (per layer type for Gemma 3).
    fn rope(&self, family: Family) -> Result<Rope> {
        let mut theta = self.opt_f64("rope_theta")?;
        let mut partial = self.opt_f64("partial_rotary_factor")?;
        let mut scaling = match self.get("rope_scaling") {
            Some(v) => scaling_of(v, self.path, "rope_scaling")?,
            None => RopeScaling::None,
        };
        let mut local_theta = match family {
            Family::Gemma3 => Some(self.opt_f64("rope_local_base_freq")?.unwrap_or(10_000.0)),
            _ => None,
        };
        if let Some(params) = self.get("rope_parameters") {
            let obj = params
                .as_object()
                .ok_or_else(|| self.wrong("rope_parameters", "an object", params))?;
            let per_type = family == Family::Gemma3 && obj.contains_key("full_attention");
            let global_key = if per_type {
                "rope_parameters.full_attention"
            } else {
                "rope_parameters"
            };
            let global = if per_type {
                &obj["full_attention"]
            } else {
                params
            };
            let nested = self.nested(global, global_key)?;
            if let Some(t) = nested.opt_f64("rope_theta")? {
                theta = Some(t);
            }
            if let Some(p) = nested.opt_f64("partial_rotary_factor")? {
                partial = Some(p);
            }
            scaling = scaling_of(global, self.path, global_key)?;
            if per_type && let Some(local) = obj.get("sliding_attention") {
                let key = "rope_parameters.sliding_attention";
                if scaling_of(local, self.path, key)? != RopeScaling::None {
                    return Err(Error::config(
                        self.path,
                        key,
                        "rope scaling on the sliding-window layers is not supported",
                    ));
                }
                local_theta = self
                    .nested(local, key)?
                    .opt_f64("rope_theta")?
                    .or(local_theta);
            }
        }
        Ok(Rope {
            theta: theta.unwrap_or(10_000.0),
            partial_rotary_factor: partial.unwrap_or(1.0),
            scaling,
            local_theta,
        })
    }

    /// Keys of a nested object, errors naming it as `at.key`.
    fn nested<'v>(&self, v: &'v Value, at: &str) -> Result<NestedKeys<'v>>
    where
        'a: 'v,
    {
        let obj = v
            .as_object()
            .ok_or_else(|| self.wrong(at, "an object", v))?;
        Ok(NestedKeys {
            keys: Keys {
                obj,
                path: self.path,
            },
            at: at.to_string(),
        })
    }

    /// Which of `n` layers attend through the sliding window: `layer_types`, or the older
    /// `sliding_window_pattern` (every n-th layer global), else Gemma 3's pattern of 6.
    fn sliding_layers(&self, n: usize) -> Result<Vec<bool>> {
        if let Some(types) = self.get("layer_types") {
            let items = types
                .as_array()
                .ok_or_else(|| self.wrong("layer_types", "a list", types))?;
            return items
                .iter()
                .map(|t| match t.as_str() {
                    Some("sliding_attention") => Ok(true),
                    Some("full_attention") => Ok(false),
                    _ => Err(self.wrong(
                        "layer_types",
                        "\"sliding_attention\" or \"full_attention\"",
                        t,
                    )),
                })
                .collect();
        }
        let pattern = match self.opt_usize("sliding_window_pattern")? {
            Some(p) => Some(p),
            None => self.opt_usize("_sliding_window_pattern")?,
        }
        .unwrap_or(6)
        .max(1);
        Ok((0..n).map(|l| (l + 1) % pattern != 0).collect())
    }
}

/// [`Keys`] of a nested object whose errors name `at.key`.
struct NestedKeys<'a> {
    keys: Keys<'a>,
    at: String,
}

impl NestedKeys<'_> {
    fn opt_f64(&self, key: &str) -> Result<Option<f64>> {
        self.keys.opt_f64(key).map_err(|_| {
            Error::config(
                self.keys.path,
                format!("{}.{key}", self.at),
                "expected a number",
            )
        })
    }

    fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        self.keys.opt_usize(key).map_err(|_| {
            Error::config(
                self.keys.path,
                format!("{}.{key}", self.at),
                "expected a non-negative integer",
            )
        })
    }

    fn opt_str(&self, key: &str) -> Option<&str> {
        self.keys.get(key).and_then(Value::as_str)
    }
}

/// The rescaling a `rope_scaling` / `rope_parameters` object describes (`at` names it).
fn scaling_of(v: &Value, path: &Path, at: &str) -> Result<RopeScaling> {
    let obj = v
        .as_object()
        .ok_or_else(|| Error::config(path, at, format!("expected an object, found {v}")))?;
    let nested = NestedKeys {
        keys: Keys { obj, path },
        at: at.to_string(),
    };
    let kind = nested
        .opt_str("rope_type")
        .or_else(|| nested.opt_str("type"))
        .unwrap_or("default");
    let factor = |default: Option<f64>| -> Result<f64> {
        nested
            .opt_f64("factor")?
            .or(default)
            .ok_or_else(|| Error::config(path, format!("{at}.factor"), "required key is missing"))
    };
    Ok(match kind {
        "default" => RopeScaling::None,
        "linear" => RopeScaling::Linear {
            factor: factor(None)?,
        },
        "llama3" => RopeScaling::Llama3 {
            factor: factor(Some(8.0))?,
            low_freq_factor: nested.opt_f64("low_freq_factor")?.unwrap_or(1.0),
            high_freq_factor: nested.opt_f64("high_freq_factor")?.unwrap_or(4.0),
            original_max_position_embeddings: nested
                .opt_usize("original_max_position_embeddings")?
                .unwrap_or(8192),
        },
        other => {
            return Err(Error::config(
                path,
                at,
                format!("rope scaling `{other}` is not supported (default, linear and llama3 are)"),
            ));
        }
    })
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
            err.contains("gpt_neox")
                && err.contains("llama, mistral, qwen2, qwen3, phi, phi3, gemma3_text"),
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
    fn unsupported_rope_scaling_is_refused() {
        let mut v = llama();
        v["rope_scaling"] = json!({"rope_type": "yarn", "factor": 8.0});
        let err = parse(v).unwrap_err().to_string();
        assert!(
            err.contains("rope_scaling") && err.contains("yarn"),
            "{err}"
        );
    }

    #[test]
    fn llama3_scaling_in_both_styles() {
        let want = RopeScaling::Llama3 {
            factor: 32.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 16,
        };
        let mut old = llama();
        old["rope_scaling"] = json!({"rope_type": "llama3", "factor": 32.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 16});
        assert_eq!(parse(old).unwrap().rope_scaling, want);
        let mut new = llama();
        new["rope_parameters"] = json!({"rope_type": "llama3", "factor": 32.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 16, "rope_theta": 500000.0});
        let c = parse(new).unwrap();
        assert_eq!((c.rope_scaling, c.rope_theta), (want, 500000.0));
    }

    #[test]
    fn gemma3_layer_types_and_rope_bases() {
        let v = json!({
            "model_type": "gemma3_text", "vocab_size": 384, "hidden_size": 64,
            "intermediate_size": 160, "num_hidden_layers": 3, "num_attention_heads": 4,
            "num_key_value_heads": 2, "head_dim": 24, "sliding_window": 8,
            "query_pre_attn_scalar": 24, "hidden_activation": "gelu_pytorch_tanh",
            "layer_types": ["sliding_attention", "sliding_attention", "full_attention"],
            "rope_parameters": {
                "full_attention": {"rope_theta": 1000000.0, "rope_type": "default"},
                "sliding_attention": {"rope_theta": 10000.0, "rope_type": "default"}
            }
        });
        let c = parse(v.clone()).unwrap();
        assert_eq!(c.sliding_layers, Some(vec![true, true, false]));
        assert_eq!((c.rope_theta, c.local_rope_theta), (1e6, Some(1e4)));
        assert_eq!((c.window_of(1), c.window_of(2)), (Some(8), None));
        assert!(c.uses_local_rope(0) && !c.uses_local_rope(2));
        assert!(c.tie_word_embeddings, "Gemma ties its head by default");
        assert_eq!(c.activation, Activation::GeluNew);
        // The older style: one base per key, a pattern instead of a list.
        let mut old = v;
        let o = old.as_object_mut().unwrap();
        o.remove("rope_parameters");
        o.remove("layer_types");
        o.insert("rope_theta".into(), json!(1e6));
        o.insert("rope_local_base_freq".into(), json!(1e4));
        o.insert("sliding_window_pattern".into(), json!(3));
        let c2 = parse(old).unwrap();
        assert_eq!(c2.sliding_layers, c.sliding_layers);
        assert_eq!(c2.local_rope_theta, Some(1e4));
    }

    #[test]
    fn soft_capping_and_multimodal_gemma_are_refused() {
        let mut v = llama();
        v["model_type"] = json!("gemma3_text");
        v["final_logit_softcapping"] = json!(30.0);
        let err = parse(v).unwrap_err().to_string();
        assert!(err.contains("final_logit_softcapping"), "{err}");
        let mut v = llama();
        v["model_type"] = json!("gemma3");
        let err = parse(v).unwrap_err().to_string();
        assert!(err.contains("gemma3_text"), "{err}");
    }
}
