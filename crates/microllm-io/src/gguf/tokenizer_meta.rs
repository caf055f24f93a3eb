//! A `tokenizers` tokenizer -> GGUF `tokenizer.ggml.*` tables.
//!
//! The inverse of [`super::tokenizer`], in two kinds:
//!
//! * SentencePiece vocabularies (LLaMA-2, TinyLlama, Vicuna, Mistral, Gemma) as llama.cpp's
//!   `llama` tokenizer model: pieces, scores, token types, special ids and the BOS / EOS /
//!   space-prefix flags ([`crate::spm::SpmVocab::gguf_metadata`]). The tables come from the
//!   `tokenizer.model` or GGUF the tokenizer was read from when it has them, else they are
//!   derived from the `tokenizer.json` ([`crate::spm::from_json`]).
//! * Byte-level BPE (GPT-2 style: SmolLM2, Qwen2/3, Llama-3, Phi-2) as the `gpt2` model:
//!   tokens in id order, merges as `"a b"` strings, token types (1 normal, 3 control for
//!   special added tokens, 4 user-defined for other added tokens, 5 unused for ids the model
//!   has but the tokenizer lacks), and the pre-tokenizer name llama.cpp keys its splitting
//!   rules on. A pre-tokenizer microllm cannot name is refused: llama.cpp would split text
//!   differently from the model's own tokenizer, silently.
//!
//! Anything else (WordPiece, Unigram without SentencePiece tables) is refused.

use candle_core::quantized::gguf_file::Value;
use microllm_core::{Error, Family, ModelConfig, Result};
use serde_json::Value as Json;

use super::tokenizer::{LLAMA3_SPLIT, QWEN2_SPLIT};
use crate::Tokenizer;
use crate::spm::from_json;

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
    let spm = match tok.spm() {
        Some(v) => Some(v.clone()),
        None => from_json::derive(
            &json,
            tok.special(),
            cfg.bos_token_id,
            cfg.eos_token_ids.first().copied(),
        )
        .map_err(&err)?,
    };
    if let Some(vocab) = spm {
        let mut meta = vocab.gguf_metadata(cfg.vocab_size, tok.origin(), notes)?;
        if let Some(t) = chat_template {
            meta.push(("tokenizer.chat_template".into(), Value::String(t.into())));
        }
        return Ok(meta);
    }
    let model = &json["model"];
    if model["type"] != "BPE" || !mentions_byte_level(&json["pre_tokenizer"]) {
        return Err(err(format!(
            "GGUF export supports byte-level BPE and SentencePiece tokenizers; this one is {} \
             with pre-tokenizer {} and normalizer {}",
            model["type"], json["pre_tokenizer"]["type"], json["normalizer"]["type"]
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

    let pre = pre_tokenizer_name(&json["pre_tokenizer"], cfg.family).ok_or_else(|| {
        err(format!(
            "its pre-tokenizer {} is not one microllm can name for llama.cpp (it knows the \
             GPT-2 split, `gpt2` / `phi-2`; digits then GPT-2, `smollm`; and the Qwen2 and \
             Llama-3 regexes, `qwen2` / `llama-bpe`); llama.cpp would split text differently",
            json["pre_tokenizer"]
        ))
    })?;
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
    let pad = tok.special().pad.as_deref().and_then(|p| tok.token_id(p));
    if let Some(pad) = pad {
        meta.push(("tokenizer.ggml.padding_token_id".into(), Value::U32(pad)));
    }
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

/// llama.cpp's name for the pre-tokenizer, if it has one: `gpt2` for the plain GPT-2 split
/// (`phi-2` for Phi-2, whose converter names it so), `smollm` for digits split one by one
/// before it, `qwen2` / `llama-bpe` for those models' split regexes before a regex-free
/// byte-level step.
fn pre_tokenizer_name(pre: &Json, family: Family) -> Option<&'static str> {
    let gpt2_split = |p: &Json| p["type"] == "ByteLevel" && p["use_regex"] != false;
    if gpt2_split(pre) {
        return Some(if family == Family::Phi {
            "phi-2"
        } else {
            "gpt2"
        });
    }
    let parts: Vec<&Json> = pre["pretokenizers"]
        .as_array()
        .into_iter()
        .flatten()
        .collect();
    match parts.as_slice() {
        [d, b] if d["type"] == "Digits" && d["individual_digits"] == true && gpt2_split(b) => {
            Some("smollm")
        }
        [split, b]
            if split["type"] == "Split"
                && split["behavior"] == "Isolated"
                && split["invert"] != true
                && b["type"] == "ByteLevel"
                && b["use_regex"] == false =>
        {
            match split["pattern"]["Regex"].as_str()? {
                r if r == QWEN2_SPLIT => Some("qwen2"),
                r if r == LLAMA3_SPLIT => Some("llama-bpe"),
                _ => None,
            }
        }
        _ => None,
    }
}
