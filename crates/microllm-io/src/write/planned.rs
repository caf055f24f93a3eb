//! The one directory writer under every Hugging Face output: plain (`write_hf_dir`),
//! quantized (`write_packed_dir`) and sparse (`write_sparse_dir`) directories differ only in
//! which tensors they plan and how a packed tensor's bytes are made.
//!
//! A safetensors header must list every tensor's dtype, shape and offset before the data, so
//! each writer first plans its tensors (names, dtypes, shapes, byte counts), the plan is cut
//! into shards (a packed linear's pieces kept together, so each is packed once), and each
//! shard is streamed: a dense tensor is read from the source and converted when its turn
//! comes, a packed linear is packed when its first piece's turn comes. Peak memory is one
//! tensor or one linear's pieces. Every byte count is checked against the plan.

use std::collections::HashMap;
use std::io::{BufWriter, Write};
use std::path::Path;

use microllm_core::{Error, ModelConfig, Progress, Result, TensorInfo, TensorSource};
use safetensors::Dtype;
use serde_json::{Value, json};

use super::hf_dir::{tokenizer_config, write_json};
use super::safetensors::{OutDtype, header_bytes, tensor_bytes};
use super::{AtomicDir, WriteSummary};
use crate::Tokenizer;
use crate::hf::INDEX_FILE;
use crate::quantized::RawTensor;

/// Where a planned tensor's bytes come from.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Content {
    /// The source's tensor of the same name, converted to this dtype.
    Dense(OutDtype),
    /// One of the tensors the directory's `pack` makes for this weight.
    Packed(String),
}

/// One tensor of the output, before any data is read.
#[derive(Debug, Clone)]
pub(crate) struct Planned {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub bytes: u64,
    pub content: Content,
}

impl Planned {
    /// The source's tensor `info`, written as `dtype`.
    pub fn dense(info: TensorInfo, dtype: OutDtype) -> Self {
        Self {
            bytes: (info.numel() * dtype.size()) as u64,
            dtype: dtype.safetensors_dtype(),
            shape: info.shape,
            name: info.name,
            content: Content::Dense(dtype),
        }
    }

    /// The packed weight this tensor is a piece of, if any.
    fn linear(&self) -> Option<&str> {
        match &self.content {
            Content::Dense(_) => None,
            Content::Packed(weight) => Some(weight),
        }
    }
}

/// The pieces of a packed weight, by weight name.
pub(crate) type Pack<'a> = dyn Fn(&str) -> Result<Vec<RawTensor<'static>>> + Sync + 'a;

/// A Hugging Face directory whose tensors are planned up front.
pub(crate) struct PlannedDir<'a> {
    pub config: &'a ModelConfig,
    pub tensors: &'a dyn TensorSource,
    pub planned: Vec<Planned>,
    /// Makes the pieces of the `Content::Packed` tensors (never called without them).
    pub pack: &'a Pack<'a>,
    pub config_json: Value,
    /// Also written as `quantize_config.json` (GPTQ).
    pub quantize_config: Option<Value>,
    pub tokenizer: Option<&'a Tokenizer>,
    pub chat_template: Option<&'a str>,
}

/// Cuts the plan, in order, into shards of at most `max_bytes` (a single larger tensor, or
/// a packed linear's pieces, get a shard of their own rather than being split).
pub(crate) fn plan_shards(planned: &[Planned], max_bytes: u64) -> Vec<Vec<Planned>> {
    let mut shards: Vec<Vec<Planned>> = vec![Vec::new()];
    let mut used = 0u64;
    for t in planned {
        let current = shards.last().expect("never empty");
        let continues_linear = t
            .linear()
            .is_some_and(|w| current.last().and_then(Planned::linear) == Some(w));
        if !continues_linear && !current.is_empty() && used + t.bytes > max_bytes {
            shards.push(Vec::new());
            used = 0;
        }
        shards.last_mut().expect("never empty").push(t.clone());
        used += t.bytes;
    }
    shards
}

/// Writes a planned directory at `dest`, atomically, in shards of at most `max_shard_bytes`.
pub(crate) fn write_planned_dir(
    out: &PlannedDir<'_>,
    dest: &Path,
    max_shard_bytes: u64,
    overwrite: bool,
    progress: &dyn Progress,
) -> Result<WriteSummary> {
    let dir = AtomicDir::create(dest, overwrite)?;
    let shards = plan_shards(&out.planned, max_shard_bytes);
    progress.begin("writing tensors", out.planned.len() as u64, "tensors");
    let mut weight_map = serde_json::Map::new();
    let mut tensor_bytes = 0;
    for (i, shard) in shards.iter().enumerate() {
        let file = if shards.len() == 1 {
            "model.safetensors".to_string()
        } else {
            format!("model-{:05}-of-{:05}.safetensors", i + 1, shards.len())
        };
        tensor_bytes += write_shard(&dir.path().join(&file), out, shard, progress)?;
        for t in shard {
            weight_map.insert(t.name.clone(), Value::String(file.clone()));
        }
    }
    progress.finish();
    if shards.len() > 1 {
        let index = json!({
            "metadata": { "total_size": tensor_bytes },
            "weight_map": weight_map,
        });
        write_json(&dir.path().join(INDEX_FILE), &index)?;
    }
    write_json(&dir.path().join("config.json"), &out.config_json)?;
    if let Some(qc) = &out.quantize_config {
        write_json(&dir.path().join("quantize_config.json"), qc)?;
    }
    if let Some(tok) = out.tokenizer {
        tok.save(&dir.path().join("tokenizer.json"))?;
        write_json(
            &dir.path().join("tokenizer_config.json"),
            &tokenizer_config(out.config, tok, out.chat_template),
        )?;
    }
    let dir = dir.commit()?;
    Ok(WriteSummary {
        dir,
        shards: shards.len(),
        tensors: out.planned.len(),
        tensor_bytes,
    })
}

/// One safetensors file: header from the plan, then each tensor's bytes in order.
fn write_shard(
    path: &Path,
    out: &PlannedDir<'_>,
    tensors: &[Planned],
    progress: &dyn Progress,
) -> Result<u64> {
    let (header, data_bytes) = header_bytes(
        tensors
            .iter()
            .map(|t| (t.name.as_str(), t.dtype, t.shape.as_slice(), t.bytes)),
    );
    let file = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
    let mut w = BufWriter::with_capacity(1 << 20, file);
    let io = |e| Error::io(path, e);
    w.write_all(&header).map_err(io)?;
    // The pieces of the linear being written, by name.
    let mut pending: HashMap<String, Vec<u8>> = HashMap::new();
    for t in tensors {
        let bytes = match &t.content {
            Content::Dense(dtype) => {
                let tensor = out.tensors.load(&t.name)?;
                tensor_bytes(&tensor, *dtype, &t.name, &out.tensors.origin())?
            }
            Content::Packed(weight) => {
                if !pending.contains_key(&t.name) {
                    pending = (out.pack)(weight)?
                        .into_iter()
                        .map(|r| (r.name, r.data.into_owned()))
                        .collect();
                }
                pending.remove(&t.name).ok_or_else(|| {
                    Error::Invalid(format!("packing did not produce tensor `{}`", t.name))
                })?
            }
        };
        if bytes.len() as u64 != t.bytes {
            return Err(Error::TensorData {
                name: t.name.clone(),
                origin: out.tensors.origin(),
                msg: format!("{} bytes, planned {}", bytes.len(), t.bytes),
            });
        }
        w.write_all(&bytes).map_err(io)?;
        progress.advance(1);
    }
    let file = w
        .into_inner()
        .map_err(|e| Error::io(path, e.into_error()))?;
    file.sync_all().map_err(io)?;
    Ok(data_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dense(name: &str, n: usize) -> Planned {
        Planned::dense(
            TensorInfo {
                name: name.into(),
                dtype: "F32".into(),
                shape: vec![n],
                stored_bytes: 4 * n as u64,
            },
            OutDtype::F32,
        )
    }

    fn piece(name: &str, weight: &str, bytes: u64) -> Planned {
        Planned {
            name: name.into(),
            dtype: Dtype::I32,
            shape: vec![bytes as usize / 4],
            bytes,
            content: Content::Packed(weight.into()),
        }
    }

    fn names(shards: &[Vec<Planned>]) -> Vec<Vec<&str>> {
        shards
            .iter()
            .map(|s| s.iter().map(|t| t.name.as_str()).collect())
            .collect()
    }

    #[test]
    fn shards_respect_the_limit() {
        let plan = [
            dense("a", 10),
            dense("b", 10),
            dense("c", 30),
            dense("d", 1),
        ];
        let shards = plan_shards(&plan, 80);
        assert_eq!(names(&shards), vec![vec!["a", "b"], vec!["c"], vec!["d"]]);
    }

    #[test]
    fn a_packed_linear_is_never_split_across_shards() {
        let plan = [
            dense("a", 10),
            piece("l.qweight", "l.weight", 40),
            piece("l.scales", "l.weight", 40),
            piece("m.qweight", "m.weight", 40),
        ];
        let shards = plan_shards(&plan, 60);
        assert_eq!(
            names(&shards),
            vec![vec!["a"], vec!["l.qweight", "l.scales"], vec!["m.qweight"]]
        );
    }
}
