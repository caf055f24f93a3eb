//! The store's manifest: what made the logits, and which shard holds which windows.
//!
//! The data is cut into `windows` consecutive windows of `seqlen` tokens; shard `i` of `N`
//! holds windows `[i·W/N, (i+1)·W/N)`. Shards can be computed on different machines (each run
//! writes a directory with its shard and a manifest naming only it); [`Manifest::merge`]
//! checks that the parts agree on everything but their shards and that together they cover
//! every shard exactly once.

use std::path::{Path, PathBuf};

use microllm_core::{Error, Result};
use serde::{Deserialize, Serialize};

/// `format` of every manifest.
pub const FORMAT: &str = "microllm-teacher-logits";
/// Manifest file name inside a store directory.
pub const MANIFEST_FILE: &str = "manifest.json";
/// Current layout version.
pub const VERSION: u32 = 1;

/// The teacher that produced the logits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TeacherRecord {
    /// What the user passed (`--teacher`).
    pub spec: String,
    /// SHA-256 of the model files ([`crate::fingerprint::model_sha256`]).
    pub sha256: String,
    pub family: String,
    pub vocab_size: usize,
}

/// The text the windows were cut from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataRecord {
    pub path: String,
    pub sha256: String,
    /// Tokens in the whole text.
    pub tokens: usize,
}

/// One shard file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardRecord {
    pub index: usize,
    pub file: String,
    /// Windows `[first, end)`.
    pub first_window: usize,
    pub end_window: usize,
    pub bytes: u64,
    pub sha256: String,
}

/// Everything a reader must check before trusting the logits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: String,
    pub version: u32,
    pub microllm_version: String,
    pub teacher: TeacherRecord,
    /// SHA-256 of the tokenizer's id -> token mapping.
    pub tokenizer_sha256: String,
    pub data: DataRecord,
    pub seqlen: usize,
    pub top_k: usize,
    /// The temperature the log-probabilities (and the rest mass) were computed at.
    pub temperature: f64,
    /// Windows in the whole store (all shards).
    pub windows: usize,
    /// Shards the store is split into.
    pub shard_count: usize,
    /// The shards present in this directory, by index.
    pub shards: Vec<ShardRecord>,
}

impl Manifest {
    /// Windows `[first, end)` of shard `index`.
    pub fn shard_windows(windows: usize, count: usize, index: usize) -> (usize, usize) {
        (index * windows / count, (index + 1) * windows / count)
    }

    /// File name of shard `index`.
    pub fn shard_file(count: usize, index: usize) -> String {
        format!("shard-{:05}-of-{count:05}.safetensors", index + 1)
    }

    /// Bytes of logits data per token (all shards).
    pub fn bytes_per_token(&self) -> f64 {
        let bytes: u64 = self.shards.iter().map(|s| s.bytes).sum();
        let windows: usize = self
            .shards
            .iter()
            .map(|s| s.end_window - s.first_window)
            .sum();
        bytes as f64 / (windows * self.seqlen).max(1) as f64
    }

    /// Whether every shard is present.
    pub fn is_complete(&self) -> bool {
        self.shards.len() == self.shard_count
    }

    /// Reads and checks `dir/manifest.json`.
    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let m: Manifest = serde_json::from_str(&text)
            .map_err(|e| Error::format(&path, format!("not a teacher-logit manifest: {e}")))?;
        m.check(&path)?;
        Ok(m)
    }

    fn check(&self, path: &Path) -> Result<()> {
        let bad = |key: &str, msg: String| Err(Error::config(path, key, msg));
        if self.format != FORMAT {
            return bad("format", format!("`{}`, expected `{FORMAT}`", self.format));
        }
        if self.version != VERSION {
            return bad(
                "version",
                format!("{} is not the supported {VERSION}", self.version),
            );
        }
        if self.seqlen < 2 || self.top_k == 0 || self.top_k > self.teacher.vocab_size {
            return bad(
                "top_k",
                format!("seqlen {} / top_k {} out of range", self.seqlen, self.top_k),
            );
        }
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            return bad(
                "temperature",
                format!("{} is not positive", self.temperature),
            );
        }
        if self.shard_count == 0 || self.shard_count > self.windows.max(1) {
            return bad(
                "shard_count",
                format!("{} shards for {} windows", self.shard_count, self.windows),
            );
        }
        let mut seen = vec![false; self.shard_count];
        for s in &self.shards {
            let want = Self::shard_windows(self.windows, self.shard_count, s.index);
            if s.index >= self.shard_count
                || seen[s.index]
                || (s.first_window, s.end_window) != want
            {
                return bad(
                    "shards",
                    format!(
                        "shard {} (windows {}..{}) does not fit {} shards of {} windows",
                        s.index, s.first_window, s.end_window, self.shard_count, self.windows
                    ),
                );
            }
            seen[s.index] = true;
            if !microllm_io::is_plain_file_name(&s.file) {
                return bad(
                    "shards",
                    format!(
                        "shard {} names `{}`, which is not a file name inside the store",
                        s.index, s.file
                    ),
                );
            }
        }
        Ok(())
    }

    /// The manifest of the union of `parts` (directories and their manifests), or an error
    /// naming the first part that disagrees or the shards missing or given twice.
    pub fn merge(parts: &[(PathBuf, Manifest)]) -> Result<Manifest> {
        let Some((first_dir, first)) = parts.first() else {
            return Err(Error::Invalid("no store parts to merge".into()));
        };
        let template = Manifest {
            shards: Vec::new(),
            ..first.clone()
        };
        let mut merged = template.clone();
        for (dir, m) in parts {
            let same = Manifest {
                shards: Vec::new(),
                microllm_version: first.microllm_version.clone(),
                ..m.clone()
            };
            if same != template {
                let field = differing_field(first, m);
                return Err(Error::config(
                    dir.join(MANIFEST_FILE),
                    field,
                    format!(
                        "differs from {} (parts of one store must come from the same teacher, \
                         tokenizer, data, seqlen, top-k, temperature and shard count)",
                        first_dir.join(MANIFEST_FILE).display()
                    ),
                ));
            }
            for s in &m.shards {
                if merged.shards.iter().any(|t| t.index == s.index) {
                    return Err(Error::Invalid(format!(
                        "shard {} of {} is in more than one part ({})",
                        s.index + 1,
                        m.shard_count,
                        dir.display()
                    )));
                }
                merged.shards.push(s.clone());
            }
        }
        merged.shards.sort_by_key(|s| s.index);
        Ok(merged)
    }

    /// Indices (1-based, as users count them) of the shards not present.
    pub fn missing_shards(&self) -> Vec<usize> {
        (0..self.shard_count)
            .filter(|i| !self.shards.iter().any(|s| s.index == *i))
            .map(|i| i + 1)
            .collect()
    }
}

/// The first top-level field in which two manifests differ (for error messages).
fn differing_field(a: &Manifest, b: &Manifest) -> &'static str {
    if a.teacher != b.teacher {
        "teacher"
    } else if a.tokenizer_sha256 != b.tokenizer_sha256 {
        "tokenizer_sha256"
    } else if a.data != b.data {
        "data"
    } else if a.seqlen != b.seqlen {
        "seqlen"
    } else if a.top_k != b.top_k {
        "top_k"
    } else if a.temperature != b.temperature {
        "temperature"
    } else if a.windows != b.windows {
        "windows"
    } else if a.shard_count != b.shard_count {
        "shard_count"
    } else {
        "format"
    }
}
