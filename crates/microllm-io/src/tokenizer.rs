//! A thin wrapper over the `tokenizers` crate that names its origin in errors.
//!
//! Tokenizers come from a `tokenizer.json` or are rebuilt from GGUF metadata
//! ([`crate::gguf`]); either way callers get the same type.

use std::path::Path;

use microllm_core::{Error, Result};

/// A tokenizer plus where it came from.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    origin: String,
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
        }
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
