//! Hashes that tie a teacher-logit store to what made it.
//!
//! A store is only valid for the teacher, the text and the tokenizer it was computed with, and
//! a mismatch must be caught before training rather than silently learning wrong targets (the
//! failure users of other tools report for vocabularies that differ only slightly). Three
//! SHA-256 fingerprints go into the manifest:
//!
//! - the model: its files' bytes (a `.gguf` file, or a directory's `config.json` and weight
//!   files, by name, in order);
//! - the tokenizer: its id -> token mapping, every id in order (two tokenizers with the same
//!   mapping segment text into the same ids up to normalisation, and any different mapping
//!   makes logits incomparable);
//! - the data: the text file's bytes.

use std::io::Read;
use std::path::Path;

use microllm_core::{Error, Result};
use microllm_io::Tokenizer;
use sha2::{Digest, Sha256};

fn hex(digest: impl AsRef<[u8]>) -> String {
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 of a byte string.
pub fn sha256_bytes(bytes: &[u8]) -> String {
    hex(Sha256::digest(bytes))
}

fn hash_file(hasher: &mut Sha256, path: &Path) -> Result<()> {
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            return Ok(());
        }
        hasher.update(&buf[..n]);
    }
}

/// SHA-256 of a file's bytes.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut hasher = Sha256::new();
    hash_file(&mut hasher, path)?;
    Ok(hex(hasher.finalize()))
}

/// Fingerprint of a model at `path`: a file's bytes, or a directory's `config.json` and
/// `*.safetensors` / `*.json` index files, each preceded by its name.
pub fn model_sha256(path: &Path) -> Result<String> {
    if path.is_file() {
        return sha256_file(path);
    }
    let mut names: Vec<String> = std::fs::read_dir(path)
        .map_err(|e| Error::io(path, e))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n == "config.json" || n.ends_with(".safetensors") || n.ends_with(".index.json"))
        .collect();
    names.sort();
    let mut hasher = Sha256::new();
    for name in names {
        hasher.update(name.as_bytes());
        hasher.update([0]);
        hash_file(&mut hasher, &path.join(&name))?;
    }
    Ok(hex(hasher.finalize()))
}

/// [`tokenizer_sha256`] of a model's tokenizer, or `none` for a model without one (its data
/// is pre-tokenized): what stores record and what teacher and student must share.
pub fn tokenizer_id(tokenizer: Option<&Tokenizer>) -> String {
    tokenizer.map_or_else(|| "none".into(), tokenizer_sha256)
}

/// Fingerprint of a tokenizer's id -> token mapping.
pub fn tokenizer_sha256(tok: &Tokenizer) -> String {
    let mut hasher = Sha256::new();
    let inner = tok.inner();
    for id in 0..tok.vocab_size() as u32 {
        match inner.id_to_token(id) {
            Some(t) => hasher.update(t.as_bytes()),
            None => hasher.update([0xff]),
        }
        hasher.update([0]);
    }
    hex(hasher.finalize())
}
