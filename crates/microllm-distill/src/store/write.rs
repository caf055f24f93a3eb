//! Computing a store (or one shard of it) with the teacher.
//!
//! Every window is run on its own (batch 1, positions from 0), exactly as the trainer's
//! windows are cut, so a window's logits do not depend on which shard or batch it was
//! computed in: a store written as two shards holds the same bytes as one written whole.
//! A teacher too large to hold in f32 is streamed ([`TeacherModel::Streamed`]): windows go
//! through it in batches (each row still sees only its own window), so every weight is read
//! once per batch rather than once per window.

use std::path::Path;
use std::time::Instant;

use candle_core::{Device, Tensor};
use microllm_core::{Error, Progress, Result};
use microllm_core::{ModelConfig, NoProgress};
use microllm_io::write::AtomicDir;
use microllm_models::{Decoder, StreamedDecoder};
use rayon::prelude::*;
use safetensors::Dtype;
use safetensors::tensor::TensorView;

use super::manifest::{
    DataRecord, FORMAT, MANIFEST_FILE, Manifest, ShardRecord, TeacherRecord, VERSION,
};
use super::topk::top_k_row;
use crate::fingerprint::sha256_file;

/// The teacher, loaded whole or read block by block.
#[derive(Debug, Clone, Copy)]
pub enum TeacherModel<'a> {
    Loaded(&'a Decoder),
    Streamed(&'a StreamedDecoder<'a>),
}

/// Bytes of activations and logits a streamed batch may take.
const STREAMED_BATCH_BYTES: usize = 1 << 30;

impl TeacherModel<'_> {
    pub fn config(&self) -> &ModelConfig {
        match self {
            TeacherModel::Loaded(d) => d.config(),
            TeacherModel::Streamed(d) => d.config(),
        }
    }

    /// Windows run together: one for a loaded teacher, as many as the activation budget
    /// holds for a streamed one.
    fn batch(&self, seqlen: usize) -> usize {
        match self {
            TeacherModel::Loaded(_) => 1,
            TeacherModel::Streamed(d) => {
                let c = d.config();
                let per_window =
                    seqlen * (c.vocab_size + 4 * c.hidden_size.max(c.intermediate_size)) * 4;
                (STREAMED_BATCH_BYTES / per_window.max(1)).max(1)
            }
        }
    }

    /// Logits, flat, of `windows` windows of `seqlen` tokens laid end to end in `ids`.
    fn logits(&self, ids: &[u32], windows: usize, seqlen: usize) -> Result<Vec<f32>> {
        let input = Tensor::from_slice(ids, (windows, seqlen), &Device::Cpu)?;
        let logits = match self {
            TeacherModel::Loaded(d) => d.forward(&input)?,
            TeacherModel::Streamed(d) => d.forward(&input, &NoProgress)?,
        };
        Ok(logits.flatten_all()?.to_vec1::<f32>()?)
    }
}

impl<'a> From<&'a Decoder> for TeacherModel<'a> {
    fn from(d: &'a Decoder) -> Self {
        TeacherModel::Loaded(d)
    }
}

/// What to compute.
pub struct LogitsJob<'a> {
    pub teacher: TeacherModel<'a>,
    pub teacher_record: TeacherRecord,
    pub tokenizer_sha256: String,
    pub data: DataRecord,
    /// The whole text's tokens.
    pub tokens: &'a [u32],
    pub seqlen: usize,
    pub top_k: usize,
    pub temperature: f64,
    /// Use only the first windows of the text.
    pub max_windows: Option<usize>,
    /// This run's shard: `(index, count)`, index from 0.
    pub shard: (usize, usize),
}

/// What was written.
#[derive(Debug, Clone)]
pub struct LogitsSummary {
    pub manifest: Manifest,
    /// Windows and tokens in this run's shard.
    pub windows: usize,
    pub tokens: usize,
    pub bytes: u64,
    pub bytes_per_token: f64,
    pub seconds: f64,
}

/// Names of the shard tensors.
pub(crate) mod tensors {
    pub const INPUT_IDS: &str = "input_ids";
    pub const TOPK_IDS: &str = "topk_ids";
    pub const TOPK_LOGP: &str = "topk_logp";
    pub const LOG_REST: &str = "log_rest";
}

/// Checks the request before any work and returns the windows of the whole store.
fn plan(job: &LogitsJob<'_>) -> Result<usize> {
    let vocab = job.teacher.config().vocab_size;
    let (index, count) = job.shard;
    if job.seqlen < 2 {
        return Err(Error::Invalid(format!(
            "--seqlen {} is too short (at least 2)",
            job.seqlen
        )));
    }
    if job.top_k == 0 || job.top_k > vocab {
        return Err(Error::Invalid(format!(
            "--top-k {} must be between 1 and the vocabulary size {vocab}",
            job.top_k
        )));
    }
    if !(job.temperature.is_finite() && job.temperature > 0.0) {
        return Err(Error::Invalid(format!(
            "--temperature {} must be positive",
            job.temperature
        )));
    }
    if job.seqlen > job.teacher.config().max_position_embeddings {
        return Err(Error::Invalid(format!(
            "--seqlen {} exceeds the teacher's max_position_embeddings {}",
            job.seqlen,
            job.teacher.config().max_position_embeddings
        )));
    }
    let available = job.tokens.len() / job.seqlen;
    let windows = job.max_windows.map_or(available, |m| m.min(available));
    if windows == 0 {
        return Err(Error::Invalid(format!(
            "{} holds {} tokens, not one window of {}",
            job.data.path,
            job.tokens.len(),
            job.seqlen
        )));
    }
    if count == 0 || index >= count || count > windows {
        return Err(Error::Invalid(format!(
            "--shard {}/{count}: need 1 <= i <= N <= windows ({windows})",
            index + 1
        )));
    }
    Ok(windows)
}

/// The teacher's top-k of every position of `windows` consecutive windows.
fn windows_top_k(
    job: &LogitsJob<'_>,
    ids: &[u32],
    windows: usize,
) -> Result<(Vec<u32>, Vec<f32>, Vec<f32>)> {
    let logits = job.teacher.logits(ids, windows, job.seqlen)?;
    let vocab = job.teacher.config().vocab_size;
    if let Some(bad) = logits.iter().position(|v| !v.is_finite()) {
        return Err(Error::Invalid(format!(
            "the teacher produced a non-finite logit at position {} (token {})",
            bad / vocab,
            bad % vocab
        )));
    }
    let rows: Vec<_> = logits
        .par_chunks(vocab)
        .map(|row| top_k_row(row, job.top_k, job.temperature))
        .collect();
    let mut out = (Vec::new(), Vec::new(), Vec::new());
    for (i, p, r) in rows {
        out.0.extend(i);
        out.1.extend(p);
        out.2.push(r);
    }
    Ok(out)
}

fn le_bytes<T: Copy, const N: usize>(values: &[T], to: impl Fn(T) -> [u8; N]) -> Vec<u8> {
    values.iter().flat_map(|&v| to(v)).collect()
}

/// Computes this job's shard and writes it, with its manifest, to the directory `out`.
pub fn write_store(
    job: &LogitsJob<'_>,
    out: &Path,
    overwrite: bool,
    progress: &dyn Progress,
) -> Result<LogitsSummary> {
    let windows = plan(job)?;
    let dir = AtomicDir::create(out, overwrite)?;
    let started = Instant::now();
    let (index, count) = job.shard;
    let (first, end) = Manifest::shard_windows(windows, count, index);
    let (l, k) = (job.seqlen, job.top_k);
    let mut input_ids = Vec::with_capacity((end - first) * l);
    let (mut ids, mut logp, mut rest) = (Vec::new(), Vec::new(), Vec::new());
    progress.begin("teacher logits", ((end - first) * l) as u64, "tokens");
    let batch = job.teacher.batch(l);
    let mut w = first;
    while w < end {
        let n = batch.min(end - w);
        let span = &job.tokens[w * l..(w + n) * l];
        let (i, p, r) = windows_top_k(job, span, n)?;
        input_ids.extend_from_slice(span);
        ids.extend(i);
        logp.extend(p);
        rest.extend(r);
        progress.advance((n * l) as u64);
        w += n;
    }
    progress.finish();

    let n = end - first;
    let narrow_ids = job.teacher.config().vocab_size <= 1 << 16;
    let id_bytes = if narrow_ids {
        le_bytes(&ids, |v| (v as u16).to_le_bytes())
    } else {
        le_bytes(&ids, u32::to_le_bytes)
    };
    let input_bytes = le_bytes(&input_ids, u32::to_le_bytes);
    let logp_bytes = le_bytes(&logp, f32::to_le_bytes);
    let rest_bytes = le_bytes(&rest, f32::to_le_bytes);
    fn view(dtype: Dtype, shape: Vec<usize>, bytes: &[u8]) -> Result<TensorView<'_>> {
        TensorView::new(dtype, shape, bytes)
            .map_err(|e| Error::Invalid(format!("building the shard: {e}")))
    }
    let file = Manifest::shard_file(count, index);
    let path = dir.path().join(&file);
    let views = vec![
        (
            tensors::INPUT_IDS,
            view(Dtype::U32, vec![n, l], &input_bytes)?,
        ),
        (
            tensors::TOPK_IDS,
            view(
                if narrow_ids { Dtype::U16 } else { Dtype::U32 },
                vec![n, l, k],
                &id_bytes,
            )?,
        ),
        (
            tensors::TOPK_LOGP,
            view(Dtype::F32, vec![n, l, k], &logp_bytes)?,
        ),
        (
            tensors::LOG_REST,
            view(Dtype::F32, vec![n, l], &rest_bytes)?,
        ),
    ];
    microllm_io::write::serialize_safetensors_file(views, None, &path)?;
    let bytes = std::fs::metadata(&path)
        .map_err(|e| Error::io(&path, e))?
        .len();
    let manifest = Manifest {
        format: FORMAT.into(),
        version: VERSION,
        microllm_version: env!("CARGO_PKG_VERSION").into(),
        teacher: job.teacher_record.clone(),
        tokenizer_sha256: job.tokenizer_sha256.clone(),
        data: job.data.clone(),
        seqlen: l,
        top_k: k,
        temperature: job.temperature,
        windows,
        shard_count: count,
        shards: vec![ShardRecord {
            index,
            file,
            first_window: first,
            end_window: end,
            bytes,
            sha256: sha256_file(&path)?,
        }],
    };
    write_manifest(dir.path(), &manifest)?;
    dir.commit()?;
    Ok(LogitsSummary {
        bytes_per_token: bytes as f64 / (n * l) as f64,
        manifest,
        windows: n,
        tokens: n * l,
        bytes,
        seconds: started.elapsed().as_secs_f64(),
    })
}

pub(crate) fn write_manifest(dir: &Path, manifest: &Manifest) -> Result<()> {
    let path = dir.join(MANIFEST_FILE);
    let text = serde_json::to_string_pretty(manifest)
        .map_err(|e| Error::Invalid(format!("serialising the manifest: {e}")))?;
    std::fs::write(&path, text + "\n").map_err(|e| Error::io(&path, e))
}

/// Combines store parts (directories from separate `--shard` runs) into one store at `out`:
/// the manifests must agree, the shards must not repeat, the files must hash as recorded.
pub fn merge_stores(parts: &[&Path], out: &Path, overwrite: bool) -> Result<Manifest> {
    let manifests = parts
        .iter()
        .map(|p| Ok((p.to_path_buf(), Manifest::read(p)?)))
        .collect::<Result<Vec<_>>>()?;
    let merged = Manifest::merge(&manifests)?;
    let dir = AtomicDir::create(out, overwrite)?;
    for (part, m) in &manifests {
        for s in &m.shards {
            let from = part.join(&s.file);
            let hash = sha256_file(&from)?;
            if hash != s.sha256 {
                return Err(Error::format(
                    &from,
                    format!("SHA-256 {hash} differs from the manifest's {}", s.sha256),
                ));
            }
            std::fs::copy(&from, dir.path().join(&s.file)).map_err(|e| Error::io(&from, e))?;
        }
    }
    write_manifest(dir.path(), &merged)?;
    dir.commit()?;
    Ok(merged)
}
