//! The data a run reads: calibration windows, evaluation tokens, and where its work goes.
//!
//! Both kinds of data are a UTF-8 text (tokenized with the model's tokenizer) or a
//! `.safetensors` file of int64 `input_ids` (pre-tokenized, for models without a tokenizer,
//! such as the test fixtures). Every file is hashed for the report, so a result can be matched
//! to its data.

use std::path::{Path, PathBuf};

use microllm_core::{Error, Result};
use microllm_io::Checkpoint;
use microllm_io::calibration::CalibrationSet;
use microllm_io::tokens::read_tokens;
use sha2::{Digest, Sha256};

use crate::recipe::{CalibrationData, EvaluationData};

/// A file's bytes and its tokens (`bos`: whether the tokenizer adds its BOS to text).
fn tokens_of(path: &Path, ckpt: &Checkpoint, bos: bool) -> Result<(Vec<u8>, Vec<u32>)> {
    read_tokens(path, || ckpt.require_tokenizer(), bos)
}

/// Draws the calibration windows, with a too-short file an error unless allowed.
pub fn draw_calibration(req: &CalibrationData, ckpt: &Checkpoint) -> Result<CalibrationSet> {
    let path = &req.data;
    if req.samples == 0 || req.seqlen == 0 {
        return Err(Error::Invalid(
            "calibration samples and seqlen must be positive".into(),
        ));
    }
    let (bytes, ids) = tokens_of(path, ckpt, false)?;
    let set = CalibrationSet::draw_from(&bytes, &ids, req.samples, req.seqlen, req.seed);
    if set.windows.is_empty() || (set.shortfall() > 0 && !req.allow_short) {
        return Err(Error::Invalid(format!(
            "{} holds {} tokens: {} windows of {}, fewer than the {} asked for; use a longer \
             file, fewer samples (--samples) or a shorter seqlen (--seqlen){}",
            path.display(),
            set.text_tokens,
            set.available,
            set.seqlen,
            set.requested,
            if set.windows.is_empty() {
                ""
            } else {
                ", or allow_short: true (--allow-short-calib)"
            }
        )));
    }
    Ok(set)
}

/// Evaluation tokens, with the file's hash.
#[derive(Debug, Clone)]
pub struct EvalTokens {
    pub file: PathBuf,
    pub sha256: String,
    pub tokens: Vec<u32>,
    pub ctx: usize,
    pub windows: usize,
}

/// Reads the evaluation data (text with the tokenizer's BOS, as `microllm eval` does).
pub fn load_eval_tokens(req: &EvaluationData, ckpt: &Checkpoint) -> Result<EvalTokens> {
    let context = ckpt.config.max_position_embeddings;
    if req.ctx > context {
        return Err(Error::Invalid(format!(
            "evaluation windows of {} tokens are beyond the model's context of {context} \
             positions (max_position_embeddings)",
            req.ctx
        )));
    }
    let (bytes, tokens) = tokens_of(&req.data, ckpt, true)?;
    if tokens.len() < req.ctx {
        return Err(Error::Invalid(format!(
            "{} holds {} tokens, fewer than one evaluation window of {}",
            req.data.display(),
            tokens.len(),
            req.ctx
        )));
    }
    // The same checks the evaluation makes (window length, window count), before any work.
    microllm_eval::PerplexityOptions {
        ctx: req.ctx,
        max_windows: Some(req.windows),
        protocol: Default::default(),
    }
    .windows(tokens.len())?;
    Ok(EvalTokens {
        file: req.data.clone(),
        sha256: hex(&Sha256::digest(&bytes)),
        tokens,
        ctx: req.ctx,
        windows: req.windows,
    })
}

/// Hex SHA-256 of a file, or of every file of a directory (names and contents, in name
/// order): the model's identity in the report.
pub fn sha256_of(path: &Path) -> Result<String> {
    let mut hasher = Sha256::new();
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if meta.is_file() {
        hash_file(path, &mut hasher)?;
    } else {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|e| Error::io(path, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file())
            .collect();
        entries.sort();
        for p in entries {
            hasher.update(p.file_name().unwrap_or_default().as_encoded_bytes());
            hash_file(&p, &mut hasher)?;
        }
    }
    Ok(hex(&hasher.finalize()))
}

fn hash_file(path: &Path, hasher: &mut Sha256) -> Result<()> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    std::io::copy(&mut f, hasher).map_err(|e| Error::io(path, e))?;
    Ok(())
}

/// Lower-case hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Bytes on disk of a file, or of the files of a (flat) directory.
pub fn bytes_on_disk(path: &Path) -> Result<u64> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if meta.is_file() {
        return Ok(meta.len());
    }
    let mut total = 0;
    for entry in std::fs::read_dir(path).map_err(|e| Error::io(path, e))? {
        let entry = entry.map_err(|e| Error::io(path, e))?;
        let m = entry.metadata().map_err(|e| Error::io(entry.path(), e))?;
        if m.is_file() {
            total += m.len();
        }
    }
    Ok(total)
}

/// Peak resident memory of this process so far (Linux `VmHWM`), in bytes; `None` elsewhere.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
