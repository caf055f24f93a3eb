//! Training and store data as tokens, with the file's hash (stores and runs are matched by it).

use std::path::Path;

use microllm_core::{Error, Result};
use microllm_io::Tokenizer;

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
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let sha256 = sha256_bytes(&bytes);
        let is_ids = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("safetensors"));
        let tokens = if is_ids {
            microllm_io::arrays::read_token_ids(path, "input_ids")?.concat()
        } else {
            let Some(tok) = tokenizer else {
                return Err(Error::Invalid(format!(
                    "{} is text, but the model carries no tokenizer: pass token ids as a \
                     .safetensors file with int64 `input_ids`",
                    path.display()
                )));
            };
            let text = std::str::from_utf8(&bytes).map_err(|e| {
                Error::format(
                    path,
                    format!(
                        "not valid UTF-8 text (first invalid byte at offset {})",
                        e.valid_up_to()
                    ),
                )
            })?;
            tok.encode(text, false).map_err(|e| Error::Tokenizer {
                origin: path.display().to_string(),
                msg: e.to_string(),
            })?
        };
        Ok(Self { tokens, sha256 })
    }
}
