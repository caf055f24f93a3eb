//! Data files as tokens: UTF-8 text through the model's tokenizer, or token ids stored
//! ahead (a `.safetensors` file of int64 `input_ids`, for models without a tokenizer such as
//! the test fixtures). Calibration, evaluation and training data are all read this way, so a
//! file means the same tokens to every command.

use std::path::Path;

use microllm_core::{Error, Result};

use crate::Tokenizer;

/// Whether a data file holds token ids rather than text.
fn is_token_file(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("safetensors"))
}

/// A data file's bytes and its tokens: a `.safetensors` file's int64 `input_ids` (rows
/// concatenated), or UTF-8 text encoded by the tokenizer `tokenizer` gives (asked for only
/// when the file is text; `bos`: whether it adds its BOS).
pub fn read_tokens<'t>(
    path: &Path,
    tokenizer: impl FnOnce() -> Result<&'t Tokenizer>,
    bos: bool,
) -> Result<(Vec<u8>, Vec<u32>)> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let ids = if is_token_file(path) {
        crate::arrays::read_token_ids(path, "input_ids")?.concat()
    } else {
        let text = std::str::from_utf8(&bytes).map_err(|e| {
            Error::format(
                path,
                format!(
                    "not valid UTF-8 text (first invalid byte at offset {})",
                    e.valid_up_to()
                ),
            )
        })?;
        tokenizer()?
            .encode(text, bos)
            .map_err(|e| Error::Tokenizer {
                origin: path.display().to_string(),
                msg: e.to_string(),
            })?
    };
    Ok((bytes, ids))
}
