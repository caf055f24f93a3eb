//! A thin wrapper over the `tokenizers` crate that names its origin in errors.
//!
//! Tokenizers come from a `tokenizer.json`, a SentencePiece `tokenizer.model`, or are rebuilt
//! from GGUF metadata ([`crate::gguf`]); either way callers get the same type. Beside the
//! pipeline it keeps what a GGUF writer needs and the pipeline does not hold: the
//! SentencePiece tables with their trained scores, when the source had them, and the special
//! tokens `tokenizer_config.json` names.

use std::path::Path;
use std::sync::Arc;

use microllm_core::{Error, Result};
use serde_json::Value as Json;

use crate::spm::SpmVocab;

/// A tokenizer plus where it came from.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    origin: String,
    spm: Option<Arc<SpmVocab>>,
    special: SpecialTokens,
}

/// The special tokens and flags a `tokenizer_config.json` sets (all optional).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SpecialTokens {
    pub bos: Option<String>,
    pub eos: Option<String>,
    pub pad: Option<String>,
    /// `add_bos_token` / `add_eos_token`, which transformers applies over `tokenizer.json`.
    pub add_bos: Option<bool>,
    pub add_eos: Option<bool>,
}

impl SpecialTokens {
    /// Reads the keys of a parsed `tokenizer_config.json`; a token may be written as a string
    /// or as an added-token object with a `content`.
    pub fn from_config(cfg: &Json) -> Self {
        let token = |key: &str| match &cfg[key] {
            Json::String(s) => Some(s.clone()),
            obj @ Json::Object(_) => obj["content"].as_str().map(str::to_string),
            _ => None,
        };
        Self {
            bos: token("bos_token"),
            eos: token("eos_token"),
            pad: token("pad_token"),
            add_bos: cfg["add_bos_token"].as_bool(),
            add_eos: cfg["add_eos_token"].as_bool(),
        }
    }
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("origin", &self.origin)
            .field("vocab_size", &self.vocab_size())
            .finish()
    }
}

impl Tokenizer {
    /// Wraps an already built tokenizer.
    pub fn new(inner: tokenizers::Tokenizer, origin: impl Into<String>) -> Self {
        Self {
            inner,
            origin: origin.into(),
            spm: None,
            special: SpecialTokens::default(),
        }
    }

    /// Attaches the SentencePiece tables the tokenizer was built from (GGUF export writes
    /// them as they are).
    pub fn with_spm(mut self, vocab: SpmVocab) -> Self {
        self.spm = Some(Arc::new(vocab));
        self
    }

    /// Attaches what `tokenizer_config.json` says about special tokens.
    pub fn with_special(mut self, special: SpecialTokens) -> Self {
        self.special = special;
        self
    }

    /// The SentencePiece tables, when the tokenizer came from some.
    pub fn spm(&self) -> Option<&SpmVocab> {
        self.spm.as_deref()
    }

    /// The special tokens named beside the tokenizer.
    pub fn special(&self) -> &SpecialTokens {
        &self.special
    }

    /// Loads a `tokenizer.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let inner = tokenizers::Tokenizer::from_file(path).map_err(|e| Error::Tokenizer {
            origin: path.display().to_string(),
            msg: e.to_string(),
        })?;
        Ok(Self::new(inner, path.display().to_string()))
    }

    /// Where the tokenizer came from.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The underlying `tokenizers` object.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Token ids of `text`. With `add_special`, whatever the tokenizer's post-processor adds
    /// (a BOS for LLaMA-2; nothing for SmolLM2) is added.
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode_fast(text, add_special)
            .map_err(|e| self.err(e))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Text of `ids`, special tokens included.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, false).map_err(|e| self.err(e))
    }

    /// The id of a token string, if in the vocabulary.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Writes `tokenizer.json` to `path`.
    pub fn save(&self, path: &Path) -> Result<()> {
        self.inner.save(path, false).map_err(|e| self.err(e))
    }

    fn err(&self, e: impl std::fmt::Display) -> Error {
        Error::Tokenizer {
            origin: self.origin.clone(),
            msg: e.to_string(),
        }
    }
}
