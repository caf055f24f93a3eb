//! Training and store data as tokens, with the file's hash (stores and runs are matched by it).

use std::path::Path;

use microllm_core::{Error, Result};
use microllm_io::Tokenizer;
use microllm_io::tokens::read_tokens;

use crate::fingerprint::sha256_bytes;

/// A data file's tokens and the SHA-256 of its bytes.
#[derive(Debug, Clone)]
pub struct TrainingData {
    pub tokens: Vec<u32>,
    pub sha256: String,
}

impl TrainingData {
    /// Reads `path`: UTF-8 text, tokenized without special tokens by `tokenizer`, or a
    /// `.safetensors` file with int64 `input_ids` (already tokenized; rows are concatenated).
    pub fn read(path: &Path, tokenizer: Option<&Tokenizer>) -> Result<Self> {
        let (bytes, tokens) = read_tokens(
            path,
            || {
                tokenizer.ok_or_else(|| {
                    Error::Invalid(format!(
                        "{} is text, but the model carries no tokenizer: pass token ids as a \
                         .safetensors file with int64 `input_ids`",
                        path.display()
                    ))
                })
            },
            false,
        )?;
        Ok(Self {
            tokens,
            sha256: sha256_bytes(&bytes),
        })
    }
}
