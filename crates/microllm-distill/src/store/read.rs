//! Reading a store: checked once at open, one window at a time afterwards.
//!
//! Shards are memory-mapped, their sizes and SHA-256 digests compared with the manifest's, and
//! their headers checked against it (tensor names, dtypes, shapes) when the store is opened,
//! so a damaged or foreign store fails before training starts. [`TeacherStore::check_student`] compares the store's tokenizer,
//! vocabulary, window length and temperature with the run's, naming the manifest key that
//! differs. Each window's values are checked as they are read (ids inside the vocabulary and
//! no id twice in a row, log-probabilities finite, at most 0 and descending).

use microllm_core::le::decode_le;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use microllm_core::{Error, Result};
use safetensors::{Dtype, SafeTensors};

use super::manifest::{MANIFEST_FILE, Manifest};
use super::write::tensors;

/// Largest log-probability accepted (rounding can leave a certain token slightly above 0).
const LOG_PROB_SLACK: f32 = 1e-4;

/// Byte offset and element width of one tensor inside a mapped shard.
#[derive(Debug, Clone, Copy)]
struct At {
    offset: usize,
    width: usize,
}

#[derive(Debug)]
struct Shard {
    path: PathBuf,
    first_window: usize,
    end_window: usize,
    map: Mmap,
    input_ids: At,
    ids: At,
    logp: At,
    rest: At,
}

/// The teacher's side of one window.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredWindow {
    /// The window's tokens `[seqlen]`.
    pub input_ids: Vec<u32>,
    /// `[seqlen, k]` ids and log-probabilities, descending.
    pub ids: Vec<u32>,
    pub logp: Vec<f32>,
    /// `[seqlen]` log of the mass outside the top-k (`-inf`: none).
    pub log_rest: Vec<f32>,
}

/// An opened, complete store.
#[derive(Debug)]
pub struct TeacherStore {
    dir: PathBuf,
    manifest: Manifest,
    shards: Vec<Shard>,
}

fn locate(
    st: &SafeTensors<'_>,
    map: &Mmap,
    path: &Path,
    name: &str,
    dtypes: &[Dtype],
    shape: &[usize],
) -> Result<At> {
    let view = st.tensor(name).map_err(|_| Error::MissingTensor {
        name: name.into(),
        origin: path.display().to_string(),
    })?;
    if !dtypes.contains(&view.dtype()) {
        return Err(Error::TensorData {
            name: name.into(),
            origin: path.display().to_string(),
            msg: format!("dtype {:?}, expected one of {dtypes:?}", view.dtype()),
        });
    }
    if view.shape() != shape {
        return Err(Error::Shape {
            name: name.into(),
            origin: path.display().to_string(),
            expected: shape.to_vec(),
            actual: view.shape().to_vec(),
        });
    }
    Ok(At {
        offset: view.data().as_ptr() as usize - map.as_ptr() as usize,
        width: view.dtype().bitsize() / 8,
    })
}

impl TeacherStore {
    /// Opens the store in `dir`; every shard must be present.
    pub fn open(dir: &Path) -> Result<Self> {
        let manifest = Manifest::read(dir)?;
        let manifest_path = dir.join(MANIFEST_FILE);
        if !manifest.is_complete() {
            return Err(Error::config(
                &manifest_path,
                "shards",
                format!(
                    "the store holds {} of its {} shards (missing: {:?}); merge the parts with \
                     `microllm distill logits --merge`",
                    manifest.shards.len(),
                    manifest.shard_count,
                    manifest.missing_shards()
                ),
            ));
        }
        let (l, k) = (manifest.seqlen, manifest.top_k);
        let mut shards = Vec::new();
        for s in &manifest.shards {
            let path = dir.join(&s.file);
            let file = File::open(&path).map_err(|e| Error::io(&path, e))?;
            // SAFETY: read-only mapping; a store modified underneath a running process is
            // outside what any reader can defend against.
            let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(&path, e))?;
            // The manifest records each shard's size and digest: a shard damaged on disk or
            // in a copy is refused here, not trained on. Hashing reads each shard once, as
            // training does anyway.
            if map.len() as u64 != s.bytes {
                return Err(Error::format(
                    &path,
                    format!(
                        "the shard has {} bytes, the manifest records {}: truncated or replaced",
                        map.len(),
                        s.bytes
                    ),
                ));
            }
            let digest = crate::fingerprint::sha256_bytes(&map);
            if digest != s.sha256 {
                return Err(Error::format(
                    &path,
                    format!(
                        "the shard's SHA-256 is {digest}, the manifest records {}: the file is \
                         damaged; store the logits again (`microllm distill logits`)",
                        s.sha256
                    ),
                ));
            }
            let st = SafeTensors::deserialize(&map)
                .map_err(|e| Error::format(&path, format!("invalid safetensors file: {e}")))?;
            let n = s.end_window - s.first_window;
            let input_ids = locate(&st, &map, &path, tensors::INPUT_IDS, &[Dtype::U32], &[n, l])?;
            let ids = locate(
                &st,
                &map,
                &path,
                tensors::TOPK_IDS,
                &[Dtype::U16, Dtype::U32],
                &[n, l, k],
            )?;
            let logp = locate(
                &st,
                &map,
                &path,
                tensors::TOPK_LOGP,
                &[Dtype::F32],
                &[n, l, k],
            )?;
            let rest = locate(&st, &map, &path, tensors::LOG_REST, &[Dtype::F32], &[n, l])?;
            drop(st);
            shards.push(Shard {
                path,
                first_window: s.first_window,
                end_window: s.end_window,
                map,
                input_ids,
                ids,
                logp,
                rest,
            });
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            manifest,
            shards,
        })
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Windows in the store.
    pub fn windows(&self) -> usize {
        self.manifest.windows
    }

    /// Refuses a store made for another vocabulary, tokenizer, window length or temperature
    /// than the run's, naming the manifest key.
    pub fn check_student(
        &self,
        vocab_size: usize,
        tokenizer_sha256: &str,
        seqlen: usize,
        temperature: f64,
    ) -> Result<()> {
        let path = self.dir.join(MANIFEST_FILE);
        let m = &self.manifest;
        let bad = |key: &str, msg: String| Err(Error::config(&path, key, msg));
        if m.teacher.vocab_size != vocab_size {
            return bad(
                "teacher.vocab_size",
                format!(
                    "the store's teacher has {} tokens, the student {vocab_size}: their logits \
                     cannot be compared",
                    m.teacher.vocab_size
                ),
            );
        }
        if m.tokenizer_sha256 != tokenizer_sha256 {
            return bad(
                "tokenizer_sha256",
                format!(
                    "the store was made with tokenizer {}, the student's is {tokenizer_sha256}: \
                     the same ids would mean different tokens",
                    m.tokenizer_sha256
                ),
            );
        }
        if m.seqlen != seqlen {
            return bad(
                "seqlen",
                format!(
                    "the store holds windows of {} tokens, training asks for {seqlen} (pass \
                     --seqlen {} or make a new store)",
                    m.seqlen, m.seqlen
                ),
            );
        }
        if (m.temperature - temperature).abs() > 1e-12 {
            return bad(
                "temperature",
                format!(
                    "the store's probabilities are at temperature {}, training asks for \
                     {temperature}: a top-k cannot be re-tempered (the rest mass at another \
                     temperature is unknown); pass --temperature {} or make a new store",
                    m.temperature, m.temperature
                ),
            );
        }
        Ok(())
    }

    /// Refuses a store made from other data (`data_sha256`: of the training file's bytes) or
    /// by another teacher (`teacher_sha256`, when the run knows its teacher).
    pub fn check_origin(
        &self,
        data: &Path,
        data_sha256: &str,
        teacher: Option<(&Path, &str)>,
    ) -> Result<()> {
        let path = self.dir.join(MANIFEST_FILE);
        let m = &self.manifest;
        if m.data.sha256 != data_sha256 {
            return Err(Error::config(
                &path,
                "data.sha256",
                format!(
                    "the store was made from {} ({}), not from {} ({data_sha256})",
                    m.data.path,
                    m.data.sha256,
                    data.display()
                ),
            ));
        }
        if let Some((teacher, sha)) = teacher
            && sha != m.teacher.sha256
        {
            return Err(Error::config(
                &path,
                "teacher.sha256",
                format!(
                    "the store was made by {} ({}), not by {} ({sha})",
                    m.teacher.spec,
                    m.teacher.sha256,
                    teacher.display()
                ),
            ));
        }
        Ok(())
    }

    /// The teacher's side of window `w`, checked.
    pub fn window(&self, w: usize) -> Result<StoredWindow> {
        let shard = self
            .shards
            .iter()
            .find(|s| (s.first_window..s.end_window).contains(&w))
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "window {w} is not in the store ({} windows)",
                    self.windows()
                ))
            })?;
        let (l, k) = (self.manifest.seqlen, self.manifest.top_k);
        let local = w - shard.first_window;
        let bytes = |at: At, per: usize| {
            let start = at.offset + local * per * at.width;
            &shard.map[start..start + per * at.width]
        };
        let u32s = decode_le::<u32>;
        let f32s = decode_le::<f32>;
        let ids: Vec<u32> = match shard.ids.width {
            2 => bytes(shard.ids, l * k)
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes(c.try_into().expect("2")) as u32)
                .collect(),
            _ => u32s(bytes(shard.ids, l * k)),
        };
        let out = StoredWindow {
            input_ids: u32s(bytes(shard.input_ids, l)),
            ids,
            logp: f32s(bytes(shard.logp, l * k)),
            log_rest: f32s(bytes(shard.rest, l)),
        };
        let vocab = self.manifest.teacher.vocab_size;
        let bad = |name: &str, msg: String| {
            Err(Error::TensorData {
                name: name.into(),
                origin: shard.path.display().to_string(),
                msg: format!("window {w}: {msg}"),
            })
        };
        if let Some(id) = out
            .ids
            .iter()
            .chain(&out.input_ids)
            .find(|&&i| i as usize >= vocab)
        {
            return bad(
                tensors::TOPK_IDS,
                format!("token id {id} outside the vocabulary of {vocab}"),
            );
        }
        if let Some(row) = out.ids.chunks_exact(k).position(has_duplicates) {
            return bad(
                tensors::TOPK_IDS,
                format!("position {row} lists a token id twice among its top {k}"),
            );
        }
        if let Some(row) = out
            .logp
            .chunks_exact(k)
            .position(|r| r.windows(2).any(|p| p[1] > p[0]))
        {
            return bad(
                tensors::TOPK_LOGP,
                format!(
                    "position {row}: the top-{k} log-probabilities are not in descending order"
                ),
            );
        }
        if let Some(v) = out
            .logp
            .iter()
            .find(|v| !(v.is_finite() && **v <= LOG_PROB_SLACK))
        {
            return bad(
                tensors::TOPK_LOGP,
                format!("log-probability {v} is not finite and <= 0"),
            );
        }
        if let Some(v) = out
            .log_rest
            .iter()
            .find(|v| v.is_nan() || **v > LOG_PROB_SLACK)
        {
            return bad(tensors::LOG_REST, format!("log rest mass {v} is not <= 0"));
        }
        Ok(out)
    }
}

/// Whether a row of top-k ids names a token twice.
fn has_duplicates(row: &[u32]) -> bool {
    let mut sorted = row.to_vec();
    sorted.sort_unstable();
    sorted.windows(2).any(|p| p[0] == p[1])
}
