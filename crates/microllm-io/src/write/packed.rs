//! Quantized Hugging Face directories (GPTQ, compressed-tensors): packed linears beside dense
//! tensors, config.json with `quantization_config`, tokenizer files.
//!
//! The safetensors header must list every tensor's dtype, shape and offset before the data,
//! and a packed linear's tensors depend on its scheme only, not its values. So the plan is
//! made by packing an all-zero weight of each linear's layout (the packers are the single
//! source of the layout), and the data is then produced one linear at a time from the real
//! codes: peak memory is one linear's codes and its packed tensors.

use std::collections::HashMap;
use std::io::{BufWriter, Write};
use std::path::Path;

use microllm_core::{Error, ModelConfig, Progress, Result, TensorInfo, TensorSource};
use safetensors::Dtype;
use serde_json::{Value, json};

use super::hf_dir::{hf_config_json, tokenizer_config, write_json};
use super::safetensors::{OutDtype, tensor_bytes};
use super::{AtomicDir, WriteSummary};
use crate::Tokenizer;
use crate::fused::{JoinFused, JoinFusedPacked};
use crate::hf::INDEX_FILE;
use crate::quantized::{QuantMethod, QuantScheme, QuantizedWeight, RawTensor, compressed, gptq};

/// The scheme-level shape of one packed linear (enough to plan its tensors).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinearLayout {
    /// `[out, in]`.
    pub shape: [usize; 2],
    pub scheme: QuantScheme,
    /// Whether a per-column group index is stored (act-order).
    pub g_idx: bool,
}

impl LinearLayout {
    /// The layout of `q`.
    pub fn of(q: &QuantizedWeight) -> Self {
        Self {
            shape: q.shape,
            scheme: q.scheme,
            g_idx: q.g_idx.is_some(),
        }
    }

    /// Groups per row.
    pub fn n_groups(&self) -> usize {
        let inp = self.shape[1];
        inp.div_ceil(self.scheme.group_len(inp).max(1))
    }
}

/// Where the codes of the packed linears come from (a quantization run's stored blocks, or
/// another quantized checkpoint).
pub trait PackedLinears: Sync {
    /// The layout of `weight_name` (`P.weight`) if it is packed, else `None` (kept dense).
    fn layout(&self, weight_name: &str) -> Option<LinearLayout>;
    /// Its codes.
    fn codes(&self, weight_name: &str) -> Result<QuantizedWeight>;
}

/// What goes into a quantized directory.
pub struct PackedOutput<'a> {
    pub config: &'a ModelConfig,
    /// Every tensor of the model (the packed linears' dense values are not read).
    pub tensors: &'a dyn TensorSource,
    pub packed: &'a dyn PackedLinears,
    pub method: QuantMethod,
    /// `quantization_config` of config.json (also written as `quantize_config.json` for GPTQ).
    pub quantization_config: Value,
    pub tokenizer: Option<&'a Tokenizer>,
    pub chat_template: Option<&'a str>,
}

/// One planned tensor: a dense one from the source, or one piece of a packed linear.
#[derive(Debug, Clone)]
pub(crate) struct Planned {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub bytes: u64,
    /// `(weight name)` of the packed linear this piece belongs to.
    pub linear: Option<String>,
}

/// The dense storage of an unquantized tensor: its source dtype when that is a float type
/// safetensors holds, else (GGUF-quantized sources) f16.
pub(crate) fn dense_dtype(info: &TensorInfo) -> OutDtype {
    match info.dtype.to_ascii_uppercase().as_str() {
        "F32" => OutDtype::F32,
        "BF16" => OutDtype::BF16,
        _ => OutDtype::F16,
    }
}

pub(crate) fn st_dtype(d: OutDtype) -> Dtype {
    match d {
        OutDtype::F32 => Dtype::F32,
        OutDtype::F16 => Dtype::F16,
        OutDtype::BF16 => Dtype::BF16,
    }
}

/// The tensors of one linear, in the layout of the checkpoint's method (and, for
/// compressed-tensors, of the format its `quantization_config` declares).
fn encode(out: &PackedOutput<'_>, prefix: &str, q: &QuantizedWeight) -> Vec<RawTensor<'static>> {
    match out.method {
        QuantMethod::Gptq => gptq::encode(prefix, q),
        QuantMethod::Awq => unreachable!("AWQ checkpoints are read, never written"),
        QuantMethod::CompressedTensors => {
            let format = compressed::CtFormat::of_config(&out.quantization_config);
            compressed::encode_as(format, prefix, q)
        }
    }
}

fn plan(out: &PackedOutput<'_>) -> Vec<Planned> {
    let mut plan = Vec::new();
    for info in out.tensors.infos() {
        let Some(l) = out.packed.layout(&info.name) else {
            let d = dense_dtype(&info);
            plan.push(Planned {
                bytes: (info.numel() * d.size()) as u64,
                dtype: st_dtype(d),
                shape: info.shape.clone(),
                name: info.name,
                linear: None,
            });
            continue;
        };
        let prefix = info.name.strip_suffix(".weight").unwrap_or(&info.name);
        let [o, i] = l.shape;
        let zero = QuantizedWeight {
            shape: l.shape,
            scheme: l.scheme,
            codes: vec![0; o * i],
            scales: vec![0.0; o * l.n_groups()],
            zeros: vec![0; o * l.n_groups()],
            g_idx: l.g_idx.then(|| vec![0; i]),
            perm: None,
        };
        for t in encode(out, prefix, &zero) {
            plan.push(Planned {
                bytes: t.data.len() as u64,
                name: t.name,
                dtype: t.dtype,
                shape: t.shape,
                linear: Some(info.name.clone()),
            });
        }
    }
    plan
}

/// Writes `out` as a quantized Hugging Face directory at `dest`, atomically.
pub fn write_packed_dir(
    out: &PackedOutput<'_>,
    dest: &Path,
    max_shard_bytes: u64,
    overwrite: bool,
    progress: &dyn Progress,
) -> Result<WriteSummary> {
    super::hf_dir::check_expressible(out.config)?;
    let tensors = JoinFused::new(out.tensors, out.config);
    let packed = JoinFusedPacked::new(out.packed, out.config);
    let out = &PackedOutput {
        tensors: &tensors,
        packed: &packed,
        quantization_config: out.quantization_config.clone(),
        ..*out
    };
    let torch_dtype = out
        .tensors
        .infos()
        .iter()
        .find(|i| out.packed.layout(&i.name).is_none())
        .map_or(OutDtype::F16, dense_dtype);
    let mut config = hf_config_json(out.config, torch_dtype);
    config["quantization_config"] = out.quantization_config.clone();
    let pack = |weight: &str| -> Result<Vec<RawTensor<'static>>> {
        let q = out.packed.codes(weight)?;
        let prefix = weight.strip_suffix(".weight").unwrap_or(weight);
        Ok(encode(out, prefix, &q))
    };
    let dir = PlannedDir {
        config: out.config,
        tensors: out.tensors,
        planned: plan(out),
        pack: &pack,
        config_json: config,
        quantize_config: (out.method == QuantMethod::Gptq).then(|| out.quantization_config.clone()),
        tokenizer: out.tokenizer,
        chat_template: out.chat_template,
    };
    write_planned_dir(&dir, dest, max_shard_bytes, overwrite, progress)
}

/// A Hugging Face directory whose tensors are planned up front: dense ones read from
/// `tensors`, the pieces of each packed linear produced by `pack(weight name)`.
pub(crate) struct PlannedDir<'a> {
    pub config: &'a ModelConfig,
    pub tensors: &'a dyn TensorSource,
    pub planned: Vec<Planned>,
    pub pack: &'a (dyn Fn(&str) -> Result<Vec<RawTensor<'static>>> + Sync),
    pub config_json: Value,
    /// Also written as `quantize_config.json` (GPTQ).
    pub quantize_config: Option<Value>,
    pub tokenizer: Option<&'a Tokenizer>,
    pub chat_template: Option<&'a str>,
}

/// Writes a planned directory at `dest`, atomically, in shards of at most `max_shard_bytes`
/// (a linear's pieces stay together so each is packed once).
pub(crate) fn write_planned_dir(
    out: &PlannedDir<'_>,
    dest: &Path,
    max_shard_bytes: u64,
    overwrite: bool,
    progress: &dyn Progress,
) -> Result<WriteSummary> {
    let dir = AtomicDir::create(dest, overwrite)?;
    let planned = &out.planned;
    let mut shards: Vec<Vec<Planned>> = vec![Vec::new()];
    let mut used = 0u64;
    for t in planned.iter() {
        let starts_unit = t.linear.is_none()
            || shards
                .last()
                .and_then(|s| s.last())
                .is_none_or(|p| p.linear != t.linear);
        let current = shards.last().expect("never empty");
        if starts_unit && !current.is_empty() && used + t.bytes > max_shard_bytes {
            shards.push(Vec::new());
            used = 0;
        }
        shards.last_mut().expect("never empty").push(t.clone());
        used += t.bytes;
    }
    progress.begin("writing tensors", planned.len() as u64, "tensors");
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
        tensors: planned.len(),
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
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), json!({ "format": "pt" }));
    let mut offset = 0u64;
    for t in tensors {
        header.insert(
            t.name.clone(),
            json!({
                "dtype": format!("{:?}", t.dtype),
                "shape": t.shape,
                "data_offsets": [offset, offset + t.bytes],
            }),
        );
        offset += t.bytes;
    }
    let mut header_bytes = serde_json::to_vec(&header).expect("JSON of plain values");
    header_bytes.resize(header_bytes.len().next_multiple_of(8), b' ');
    let file = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
    let mut w = BufWriter::with_capacity(1 << 20, file);
    let io = |e| Error::io(path, e);
    w.write_all(&(header_bytes.len() as u64).to_le_bytes())
        .map_err(io)?;
    w.write_all(&header_bytes).map_err(io)?;
    // The pieces of the linear being written, by name.
    let mut pending: HashMap<String, Vec<u8>> = HashMap::new();
    for t in tensors {
        let bytes = match &t.linear {
            None => {
                let tensor = out.tensors.load(&t.name)?;
                let d = dense_dtype(&out.tensors.info(&t.name).expect("planned from infos"));
                tensor_bytes(&tensor, d, &t.name, &out.tensors.origin())?
            }
            Some(weight) => {
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
    Ok(offset)
}
