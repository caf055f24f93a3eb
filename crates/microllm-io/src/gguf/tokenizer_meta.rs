//! A `tokenizers` tokenizer -> GGUF `tokenizer.ggml.*` tables.
//!
//! The inverse of [`super::tokenizer`]: byte-level BPE vocabularies (GPT-2 style, which
//! SmolLM2, Qwen2 and many others use) are written as llama.cpp's `gpt2` tokenizer model:
//! tokens in id order, merges as `"a b"` strings, token types (1 normal, 3 control for
//! special added tokens, 4 user-defined for other added tokens, 5 unused for ids the model has
//! but the tokenizer lacks), and the pre-tokenizer name llama.cpp keys its splitting rules on.
//! Other tokenizer models (SentencePiece-style) are refused with a clear error for now.

use candle_core::quantized::gguf_file::Value;
use microllm_core::{Error, ModelConfig, Result};
use serde_json::Value as Json;

use crate::Tokenizer;

/// The `tokenizer.*` metadata of `tok` for a model of `cfg.vocab_size` ids. Anything the user
/// should know (an unrecognised pre-tokenizer) is pushed onto `notes`.
pub(crate) fn tokenizer_metadata(
    tok: &Tokenizer,
    cfg: &ModelConfig,
    chat_template: Option<&str>,
    notes: &mut Vec<String>,
) -> Result<Vec<(String, Value)>> {
    let err = |msg: String| Error::Tokenizer {
        origin: tok.origin().to_string(),
        msg,
    };
    let json: Json = serde_json::from_str(
        &tok.inner()
            .to_string(false)
            .map_err(|e| err(format!("cannot serialise: {e}")))?,
    )
    .map_err(|e| err(format!("cannot parse its JSON: {e}")))?;
    let model = &json["model"];
    if model["type"] != "BPE" || !mentions_byte_level(&json["pre_tokenizer"]) {
        return Err(err(format!(
            "GGUF export supports byte-level BPE tokenizers; this one is {} with pre-tokenizer {}",
            model["type"], json["pre_tokenizer"]["type"]
        )));
    }

    let mut tokens: Vec<Option<String>> = vec![None; cfg.vocab_size];
    let mut types = vec![1i32; cfg.vocab_size];
    let mut place = |id: u64, text: &str, ty: i32| -> Result<()> {
        let slot = tokens.get_mut(id as usize).ok_or_else(|| {
            err(format!(
                "token id {id} ({text:?}) is outside the model's vocabulary of {}",
                cfg.vocab_size
            ))
        })?;
        *slot = Some(text.to_string());
        types[id as usize] = ty;
        Ok(())
    };
    let vocab = model["vocab"]
        .as_object()
        .ok_or_else(|| err("BPE model without a vocabulary".into()))?;
    for (text, id) in vocab {
        place(id.as_u64().unwrap_or(u64::MAX), text, 1)?;
    }
    for added in json["added_tokens"].as_array().into_iter().flatten() {
        let ty = if added["special"] == true { 3 } else { 4 };
        let text = added["content"].as_str().unwrap_or_default();
        place(added["id"].as_u64().unwrap_or(u64::MAX), text, ty)?;
    }
    let mut unused = 0;
    let tokens: Vec<Value> = tokens
        .into_iter()
        .enumerate()
        .map(|(id, t)| {
            Value::String(t.unwrap_or_else(|| {
                unused += 1;
                types[id] = 5;
                format!("<unused_{id}>")
            }))
        })
        .collect();
    if unused > 0 {
        notes.push(format!(
            "{unused} ids of the model's vocabulary have no token; written as unused"
        ));
    }
    let merges: Vec<Value> = model["merges"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| match m {
            Json::String(s) => Ok(Value::String(s.clone())),
            Json::Array(pair) if pair.len() == 2 => Ok(Value::String(format!(
                "{} {}",
                pair[0].as_str().unwrap_or_default(),
                pair[1].as_str().unwrap_or_default()
            ))),
            other => Err(err(format!("unexpected merge {other}"))),
        })
        .collect::<Result<_>>()?;

    let pre = pre_tokenizer_name(&json["pre_tokenizer"]);
    if pre == "default" {
        notes.push(format!(
            "pre-tokenizer {} is not one llama.cpp names; written as `default`",
            json["pre_tokenizer"]
        ));
    }
    let adds_bos = json["post_processor"]["type"] == "TemplateProcessing"
        && cfg.bos_token_id.is_some_and(|b| {
            json["post_processor"]
                .to_string()
                .contains(&format!("\"id\":{b}"))
        });
    let mut meta = vec![
        (
            "tokenizer.ggml.model".to_string(),
            Value::String("gpt2".into()),
        ),
        ("tokenizer.ggml.pre".to_string(), Value::String(pre.into())),
        ("tokenizer.ggml.tokens".to_string(), Value::Array(tokens)),
        (
            "tokenizer.ggml.token_type".to_string(),
            Value::Array(types.into_iter().map(Value::I32).collect()),
        ),
        ("tokenizer.ggml.merges".to_string(), Value::Array(merges)),
        (
            "tokenizer.ggml.add_bos_token".to_string(),
            Value::Bool(adds_bos),
        ),
    ];
    if let Some(t) = chat_template {
        meta.push(("tokenizer.chat_template".into(), Value::String(t.into())));
    }
    Ok(meta)
}

fn mentions_byte_level(pre: &Json) -> bool {
    pre["type"] == "ByteLevel"
        || pre["pretokenizers"]
            .as_array()
            .is_some_and(|a| a.iter().any(|p| p["type"] == "ByteLevel"))
}

/// llama.cpp's name for the pre-tokenizer: `smollm` for digits split one by one before the
/// GPT-2 split, `gpt2` for the plain GPT-2 split, `default` otherwise.
fn pre_tokenizer_name(pre: &Json) -> &'static str {
    if pre["type"] == "ByteLevel" {
        return "gpt2";
    }
    let parts: Vec<&Json> = pre["pretokenizers"]
        .as_array()
        .into_iter()
        .flatten()
        .collect();
    match parts.as_slice() {
        [d, b]
            if d["type"] == "Digits"
                && d["individual_digits"] == true
                && b["type"] == "ByteLevel" =>
        {
            "smollm"
        }
        _ => "default",
    }
}
