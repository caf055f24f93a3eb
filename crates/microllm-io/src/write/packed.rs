//! Quantized Hugging Face directories (GPTQ, compressed-tensors): packed linears beside dense
//! tensors, config.json with `quantization_config`, tokenizer files.
//!
//! The safetensors header must list every tensor's dtype, shape and offset before the data,
//! and a packed linear's tensors depend on its scheme only, not its values. So the plan is
//! made by packing an all-zero weight of each linear's layout (the packers are the single
//! source of the layout), and the planned-directory writer (`planned`) then produces the data
//! one linear at a time from the real codes: peak memory is one linear's codes and its packed
//! tensors.

use std::path::Path;

use microllm_core::{ModelConfig, Progress, Result, TensorInfo, TensorSource};
use serde_json::Value;

use super::WriteSummary;
use super::hf_dir::hf_config_json;
use super::planned::{Content, Planned, PlannedDir, write_planned_dir};
use super::safetensors::OutDtype;
use crate::Tokenizer;
use crate::fused::{JoinFused, JoinFusedPacked};
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
        self.scheme.groups(self.shape[1])
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

/// The dense storage of an unquantized tensor: its source dtype when that is a float type
/// safetensors holds, else (GGUF-quantized sources) f16.
pub(crate) fn dense_dtype(info: &TensorInfo) -> OutDtype {
    match info.dtype.to_ascii_uppercase().as_str() {
        "F32" => OutDtype::F32,
        "BF16" => OutDtype::BF16,
        _ => OutDtype::F16,
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
            plan.push(Planned::dense(info, d));
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
                content: Content::Packed(info.name.clone()),
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
