//! Sparse Hugging Face directories (compressed-tensors `sparse-bitmask` /
//! `sparse-24-bitmask`): pruned linears as their nonzero values plus a bitmask, so an
//! unstructured or 2:4 pruned model is smaller on disk, in the layout llm-compressor writes
//! and vLLM reads (see `crate::quantized::sparse` for the tensors).
//!
//! The safetensors header needs every tensor's size first, and an unstructured weight's value
//! count depends on its data, so the plan encodes each sparse linear once to count (one
//! linear in memory at a time), and writing encodes it again.

use std::path::Path;

use candle_core::Tensor;
use microllm_core::{Error, ModelConfig, Progress, Result, TensorSource};
use safetensors::Dtype;
use serde_json::{Value, json};

use super::WriteSummary;
use super::hf_dir::hf_config_json;
use super::packed::dense_dtype;
use super::planned::{Content, Planned, PlannedDir, write_planned_dir};
use super::safetensors::{OutDtype, tensor_bytes};
use crate::Tokenizer;
use crate::fused::{JoinFused, parts_of};
use crate::quantized::RawTensor;
use crate::quantized::sparse::{SparseFormat, SparseWeight};

/// What goes into a sparse directory.
pub struct SparseOutput<'a> {
    pub config: &'a ModelConfig,
    /// Every tensor of the model, the pruned linears with their zeros.
    pub tensors: &'a dyn TensorSource,
    /// Whether a tensor is stored sparse (the pruned linear weights).
    pub is_sparse: &'a (dyn Fn(&str) -> bool + Sync),
    pub format: SparseFormat,
    /// `sparsity_config.sparsity_structure`: `unstructured`, `2:4`, ...
    pub structure: String,
    pub tokenizer: Option<&'a Tokenizer>,
    pub chat_template: Option<&'a str>,
}

/// The sparse tensors of one weight, `P.shape` / `P.compressed` / `P.bitmask` (/
/// `P.row_offsets`), values in `dtype`.
fn encode(
    name: &str,
    t: &Tensor,
    format: SparseFormat,
    dtype: OutDtype,
) -> Result<Vec<RawTensor<'static>>> {
    let (rows, cols) = t.dims2()?;
    let dense = t
        .flatten_all()?
        .to_dtype(candle_core::DType::F32)?
        .to_vec1::<f32>()?;
    let s = SparseWeight::encode(name, &dense, [rows, cols], format)?;
    let prefix = name.strip_suffix(".weight").unwrap_or(name);
    let i64_bytes = |v: &[i64]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let n = s.values.len();
    let values = Tensor::from_vec(s.values.clone(), n, &candle_core::Device::Cpu)?;
    let values = tensor_bytes(&values, dtype, name, "sparse writer")?;
    let (shape_shape, values_shape) = match format {
        SparseFormat::Bitmask => (vec![2], vec![n]),
        SparseFormat::TwoFour => (vec![2, 1], vec![rows, cols / 2]),
    };
    let mut out = vec![
        RawTensor::owned(
            format!("{prefix}.shape"),
            Dtype::I64,
            shape_shape,
            i64_bytes(&[rows as i64, cols as i64]),
        ),
        RawTensor::owned(
            format!("{prefix}.compressed"),
            dtype.safetensors_dtype(),
            values_shape,
            values,
        ),
        RawTensor::owned(
            format!("{prefix}.bitmask"),
            Dtype::U8,
            vec![rows, cols.div_ceil(8)],
            s.bitmask(),
        ),
    ];
    if format == SparseFormat::Bitmask {
        out.push(RawTensor::owned(
            format!("{prefix}.row_offsets"),
            Dtype::I64,
            vec![rows],
            i64_bytes(&s.row_offsets()),
        ));
    }
    Ok(out)
}

/// Writes `out` as a sparse compressed-tensors directory at `dest`, atomically.
pub fn write_sparse_dir(
    out: &SparseOutput<'_>,
    dest: &Path,
    max_shard_bytes: u64,
    overwrite: bool,
    progress: &dyn Progress,
) -> Result<WriteSummary> {
    super::hf_dir::check_expressible(out.config)?;
    let tensors = JoinFused::new(out.tensors, out.config);
    let is_sparse = |name: &str| match parts_of(out.config, name) {
        Some(parts) => parts.iter().all(|p| (out.is_sparse)(p)),
        None => (out.is_sparse)(name),
    };
    let out = &SparseOutput {
        tensors: &tensors,
        is_sparse: &is_sparse,
        structure: out.structure.clone(),
        ..*out
    };
    let mut planned = Vec::new();
    let (mut total, mut zeros) = (0usize, 0usize);
    let mut torch_dtype = None;
    progress.begin(
        "planning sparse tensors",
        out.tensors.infos().len() as u64,
        "tensors",
    );
    for info in out.tensors.infos() {
        let dtype = dense_dtype(&info);
        if !(out.is_sparse)(&info.name) {
            torch_dtype.get_or_insert(dtype);
            planned.push(Planned::dense(info, dtype));
            progress.advance(1);
            continue;
        }
        let t = out.tensors.load(&info.name)?;
        total += info.numel();
        zeros += t
            .flatten_all()?
            .to_vec1::<f32>()?
            .iter()
            .filter(|&&x| x == 0.0)
            .count();
        for piece in encode(&info.name, &t, out.format, dtype)? {
            planned.push(Planned {
                bytes: piece.data.len() as u64,
                name: piece.name,
                dtype: piece.dtype,
                shape: piece.shape,
                content: Content::Packed(info.name.clone()),
            });
        }
        progress.advance(1);
    }
    progress.finish();
    let mut config = hf_config_json(out.config, torch_dtype.unwrap_or(OutDtype::F16));
    config["quantization_config"] = sparsity_config(out, zeros as f64 / total.max(1) as f64);
    let pack = |name: &str| -> Result<Vec<RawTensor<'static>>> {
        let info = out.tensors.info(name).ok_or_else(|| Error::MissingTensor {
            name: name.to_string(),
            origin: out.tensors.origin(),
        })?;
        encode(
            name,
            &out.tensors.load(name)?,
            out.format,
            dense_dtype(&info),
        )
    };
    let dir = PlannedDir {
        config: out.config,
        tensors: out.tensors,
        planned,
        pack: &pack,
        config_json: config,
        quantize_config: None,
        tokenizer: out.tokenizer,
        chat_template: out.chat_template,
    };
    write_planned_dir(&dir, dest, max_shard_bytes, overwrite, progress)
}

/// config.json's `quantization_config` for a sparse, unquantized model, as llm-compressor
/// writes it (compressed-tensors' `SparsityCompressionConfig` under `sparsity_config`).
fn sparsity_config(out: &SparseOutput<'_>, global_sparsity: f64) -> Value {
    json!({
        "quant_method": "compressed-tensors",
        "sparsity_config": sparsity_section(out.format.name(), &out.structure, global_sparsity),
    })
}

/// compressed-tensors' `sparsity_config`: the storage `format` (`sparse-bitmask`,
/// `sparse-24-bitmask`, or `dense` for pruned weights stored as they are, e.g. quantized),
/// the `sparsity_structure` (`2:4`, `unstructured`, ...) and the measured fraction of zeros of
/// the linears (`lm_head` excluded, as llm-compressor writes it).
pub fn sparsity_section(format: &str, structure: &str, global_sparsity: f64) -> Value {
    json!({
        "format": format,
        "global_sparsity": global_sparsity,
        "sparsity_structure": structure,
        "targets": ["Linear"],
        "ignore": ["lm_head"],
        "registry_requires_subclass": false,
    })
}
