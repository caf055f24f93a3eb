//! The tokenizer files of a Hugging Face directory: `tokenizer.json`, `tokenizer.model`
//! (SentencePiece), `tokenizer_config.json`, `chat_template.jinja`, and the model card's
//! licence.
//!
//! Older LLaMA-derived repos (Vicuna, Alpaca) ship only `tokenizer.model`; newer ones ship
//! both it and a `tokenizer.json` converted from it. The `tokenizer.json` drives encoding
//! when present. A `tokenizer.model` whose pieces are exactly the tokenizer's vocabulary is
//! kept beside it, so a GGUF gets the trained scores instead of ones derived from merges; one
//! that disagrees (a tokenizer.json with tokens added after conversion) is not used.

use std::path::Path;

use microllm_core::{Error, ModelConfig, Result};
use serde_json::Value;

use crate::spm::{self, SpmVocab};
use crate::{SpecialTokens, Tokenizer};

/// The directory's tokenizer, if it has one.
pub(super) fn load_tokenizer(dir: &Path, config: &ModelConfig) -> Result<Option<Tokenizer>> {
    let special = tokenizer_config(dir)?
        .map(|c| SpecialTokens::from_config(&c))
        .unwrap_or_default();
    let json_path = dir.join("tokenizer.json");
    let model_path = dir.join("tokenizer.model");
    let from_json = if json_path.is_file() {
        Some(Tokenizer::from_file(&json_path)?)
    } else {
        None
    };
    // A tokenizer.model that is not SentencePiece (Llama-3's tiktoken file) matters only when
    // there is nothing else to tokenize with.
    let spm = match model_path.is_file() {
        false => None,
        true => match sentencepiece(&model_path, &special, config) {
            Ok(vocab) => Some(vocab),
            Err(_) if from_json.is_some() => None,
            Err(e) => return Err(e),
        },
    };
    let tokenizer = match (from_json, spm) {
        (Some(tok), Some(vocab)) if vocab.pieces.len() == tok.vocab_size() => tok.with_spm(vocab),
        (Some(tok), _) => tok,
        (None, Some(vocab)) => {
            let origin = model_path.display().to_string();
            Tokenizer::new(spm::build(&vocab, &origin)?, origin).with_spm(vocab)
        }
        (None, None) => return Ok(None),
    };
    Ok(Some(tokenizer.with_special(special)))
}

/// `tokenizer.model` with what `tokenizer_config.json` overrides: whether BOS / EOS are
/// added, and the padding piece.
fn sentencepiece(path: &Path, special: &SpecialTokens, config: &ModelConfig) -> Result<SpmVocab> {
    let mut vocab = spm::proto::read(path)?;
    vocab.add_bos = special.add_bos.unwrap_or(vocab.add_bos);
    vocab.add_eos = special.add_eos.unwrap_or(vocab.add_eos);
    let (bos, eos, pad) = (
        vocab.id_of(special.bos.as_deref()),
        vocab.id_of(special.eos.as_deref()),
        vocab.id_of(special.pad.as_deref()),
    );
    vocab.bos_id = bos.or(vocab.bos_id).or(config.bos_token_id);
    vocab.eos_id = eos
        .or(vocab.eos_id)
        .or(config.eos_token_ids.first().copied());
    vocab.pad_id = pad.or(vocab.pad_id);
    Ok(vocab)
}

/// The parsed `tokenizer_config.json`, if there is one.
fn tokenizer_config(dir: &Path) -> Result<Option<Value>> {
    let path = dir.join("tokenizer_config.json");
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| Error::format(&path, format!("not valid JSON: {e}")))
}

/// The chat template from `chat_template.jinja` or `tokenizer_config.json`, if any.
pub(super) fn chat_template(dir: &Path) -> Result<Option<String>> {
    let jinja = dir.join("chat_template.jinja");
    if jinja.is_file() {
        return std::fs::read_to_string(&jinja)
            .map(Some)
            .map_err(|e| Error::io(&jinja, e));
    }
    Ok(tokenizer_config(dir)?.and_then(|v| {
        v.get("chat_template")
            .and_then(Value::as_str)
            .map(str::to_string)
    }))
}

/// The `license:` of the model card's YAML front matter (`README.md`), if it has one.
pub(super) fn license(dir: &Path) -> Option<String> {
    let card = std::fs::read_to_string(dir.join("README.md")).ok()?;
    let front = card.strip_prefix("---")?;
    let front = &front[..front.find("\n---")?];
    front.lines().find_map(|line| {
        let value = line
            .strip_prefix("license:")?
            .trim()
            .trim_matches(['"', '\'']);
        (!value.is_empty()).then(|| value.to_string())
    })
}
