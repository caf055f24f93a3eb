//! The output tensors of a run, decided before any work: the group size chosen or checked
//! against every linear, the type of every output tensor, the fallbacks, and the estimated
//! size. `--dry-run` shows exactly this.

use microllm_core::{
    Error, LinearKind, MlpKind, ModelConfig, Result, TensorInfo, TensorSource, names,
};
use microllm_io::fused::{JoinFused, fused_of, is_linear_weight};
use microllm_io::gguf::GgufType;
use microllm_io::gguf::write::PlannedTensor;
use microllm_io::gguf::{TypeDecision, plan_types};
use microllm_io::write::OutDtype;
use microllm_quant::QuantScheme;

use crate::recipe::GroupSize;
use microllm_engine::output::exact_gguf_type;

/// One output tensor.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct TensorPlan {
    /// Name in the output file.
    pub name: String,
    /// Hugging Face name (the key into the run's records).
    pub hf_name: String,
    pub shape: Vec<usize>,
    /// Output type (`Q4_0`, `F16`, ...).
    pub dtype: String,
    /// Whether the tensor is a quantized linear (the rest are copied or RTN-encoded).
    pub quantized: bool,
    /// Why the type is not the one the scheme asks for, if it is not.
    pub fallback: Option<String>,
    pub bytes: u64,
}

impl TensorPlan {
    /// Whether this output tensor holds `hf_name` (itself, or as a part of a fused matrix).
    pub fn holds(&self, cfg: &ModelConfig, hf_name: &str) -> bool {
        self.hf_name == hf_name
            || fused_of(cfg, hf_name).is_some_and(|(fused, _, _)| fused == self.hf_name)
    }
}

/// Every linear weight of the model with its shape, checked to exist.
pub fn linear_infos(cfg: &ModelConfig, src: &dyn TensorSource) -> Result<Vec<TensorInfo>> {
    let mut out = Vec::new();
    for layer in 0..cfg.num_layers {
        for kind in LinearKind::ALL {
            let name = names::linear_weight(cfg.family, layer, kind);
            match src.info(&name) {
                Some(info) if info.shape.len() == 2 => out.push(info),
                Some(info) => {
                    return Err(Error::Invalid(format!(
                        "tensor `{name}` has shape {:?}, not 2-D",
                        info.shape
                    )));
                }
                None if kind == LinearKind::Gate && cfg.layout().mlp == MlpKind::Plain => {}
                None => {
                    return Err(Error::MissingTensor {
                        name,
                        origin: src.origin(),
                    });
                }
            }
        }
    }
    Ok(out)
}

/// The group size to use: the one asked for (checked against every linear), or, by default,
/// 32 for GGUF (ggml's block: exact blocks at no extra storage) and 128 otherwise (the GPTQ
/// convention), falling back to the largest power of two >= 16 that divides every row, and to
/// one group per row if none does. The error is the message alone (the caller knows which
/// key or flag it belongs to).
pub fn resolve_group_size(
    asked: Option<GroupSize>,
    gguf: bool,
    linears: &[TensorInfo],
) -> std::result::Result<Option<usize>, String> {
    let divides_all = |g: usize| linears.iter().all(|i| i.shape[1].is_multiple_of(g));
    match asked {
        Some(GroupSize::Channel) => Ok(None),
        Some(GroupSize::Columns(g)) => {
            if g == 0 {
                return Err("the group size must be positive".into());
            }
            if let Some(bad) = linears.iter().find(|i| !i.shape[1].is_multiple_of(g)) {
                return Err(format!(
                    "group size {g} does not divide the rows of `{}` ({} columns); choose a \
                     divisor of every linear's input size, or `channel`",
                    bad.name, bad.shape[1]
                ));
            }
            Ok(Some(g))
        }
        None => {
            let first = if gguf { 32 } else { 128 };
            let choice = [first, 64, 32, 16]
                .into_iter()
                .filter(|&g| g <= first)
                .find(|&g| divides_all(g));
            Ok(choice)
        }
    }
}

/// The plan of GGUF tensors typed by `decisions`; `linear_type` overrides the type of the
/// quantized linears (with the reason when it is a fallback).
pub fn from_decisions(
    cfg: &ModelConfig,
    decisions: Vec<TypeDecision>,
    linear_type: impl Fn(&TypeDecision) -> Option<(GgufType, Option<String>)>,
) -> Result<Vec<TensorPlan>> {
    decisions
        .into_iter()
        .map(|d| {
            let quantized = is_linear_weight(cfg, &d.hf_name);
            let chosen = if quantized { linear_type(&d) } else { None };
            let (dtype, fallback) = match chosen {
                Some(t) => t,
                None => (d.dtype, d.fallback),
            };
            let bytes = PlannedTensor {
                name: d.gguf_name.clone(),
                shape: d.shape.clone(),
                dtype,
            }
            .byte_len()?;
            Ok(TensorPlan {
                name: d.gguf_name,
                hf_name: d.hf_name,
                shape: d.shape,
                dtype: format!("{dtype:?}"),
                quantized,
                fallback,
                bytes,
            })
        })
        .collect()
}

/// The GGUF tensors of a GPTQ/RTN run: linears in their exact block type (or F16 with the
/// reason), the rest as `plan_types` decides for the dominant linear type.
pub fn gguf_plan(
    cfg: &ModelConfig,
    src: &dyn TensorSource,
    scheme: &QuantScheme,
    act_order_scattered: bool,
) -> Result<(Vec<TensorPlan>, GgufType)> {
    let exact = |inp: usize| exact_gguf_type(scheme, inp, !act_order_scattered);
    let dominant = exact(cfg.hidden_size).unwrap_or(GgufType::F16);
    let plan = from_decisions(cfg, plan_types(cfg, src, dominant, &[], false)?, |d| {
        Some(match exact(d.shape[1]) {
            Ok(t) => (t, None),
            Err(why) => (GgufType::F16, Some(format!("F16 (dequantized): {why}"))),
        })
    })?;
    Ok((plan, dominant))
}

/// Safetensors output: every tensor in `dtype` (quantized linears hold the dequantized grid
/// values).
pub fn dense_plan(cfg: &ModelConfig, src: &dyn TensorSource, dtype: OutDtype) -> Vec<TensorPlan> {
    JoinFused::new(src, cfg)
        .infos()
        .into_iter()
        .map(|i| TensorPlan {
            quantized: is_linear_weight(cfg, &i.name),
            bytes: (i.numel() * dtype.size()) as u64,
            hf_name: i.name.clone(),
            name: i.name,
            shape: i.shape,
            dtype: dtype.safetensors_name().to_string(),
            fallback: None,
        })
        .collect()
}

/// A plan in a few lines: one per distinct (type, role), the fallbacks, and the total size.
pub fn summarize(plan: &[TensorPlan]) -> Vec<String> {
    let mut lines = Vec::new();
    let mut groups: std::collections::BTreeMap<(bool, String), (usize, u64, u64)> =
        Default::default();
    for t in plan {
        let e = groups
            .entry((t.quantized, t.dtype.clone()))
            .or_insert((0, 0, 0));
        e.0 += 1;
        e.1 += t.shape.iter().product::<usize>() as u64;
        e.2 += t.bytes;
    }
    for ((quantized, dtype), (count, params, bytes)) in groups.iter().rev() {
        let role = if *quantized {
            "block linears"
        } else {
            "other tensors"
        };
        lines.push(format!(
            "{count:>4} {role:<18} {dtype:<6} {:>8.1} M params {:>8.1} MB ({:.2} bits/weight)",
            *params as f64 / 1e6,
            *bytes as f64 / 1e6,
            *bytes as f64 * 8.0 / (*params).max(1) as f64
        ));
    }
    let fallbacks: Vec<_> = plan.iter().filter(|t| t.fallback.is_some()).collect();
    for t in fallbacks.iter().take(6) {
        lines.push(format!(
            "fallback: {} -> {}: {}",
            t.name,
            t.dtype,
            t.fallback.as_deref().unwrap_or_default()
        ));
    }
    if fallbacks.len() > 6 {
        lines.push(format!("... and {} more fallbacks", fallbacks.len() - 6));
    }
    let bytes: u64 = plan.iter().map(|t| t.bytes).sum();
    let params: u64 = plan
        .iter()
        .map(|t| t.shape.iter().product::<usize>() as u64)
        .sum();
    lines.push(format!(
        "estimated size {:.1} MB of tensor data, {:.2} bits/weight overall",
        bytes as f64 / 1e6,
        bytes as f64 * 8.0 / params.max(1) as f64
    ));
    lines
}

/// GPTQ / compressed-tensors output: quantized linears packed (their exact on-disk size),
/// every other tensor in its source dtype (f16 when the source stores it quantized).
pub fn packed_plan(
    cfg: &ModelConfig,
    src: &dyn TensorSource,
    scheme: &QuantScheme,
    compressed_tensors: bool,
    scattered_groups: bool,
) -> Vec<TensorPlan> {
    use microllm_io::quantized::bits::{fixed_words, stream_words};
    let bits = scheme.bits;
    src.infos()
        .into_iter()
        .map(|i| {
            let quantized = names::parse_linear_weight(cfg.family, &i.name).is_some();
            let (dtype, bytes) = if quantized {
                let (out, inp) = (i.shape[0], i.shape[1]);
                let ng = inp / scheme.group_len(inp);
                let g_idx = if scattered_groups { 4 * inp } else { 0 };
                if compressed_tensors {
                    let zp = if scheme.symmetric {
                        0
                    } else {
                        4 * fixed_words(out, bits) * ng
                    };
                    let bytes = 4 * out * fixed_words(inp, bits) + 2 * out * ng + zp + 16 + g_idx;
                    let label = if scheme.is_fp8() {
                        "FP8-ct".to_string()
                    } else {
                        format!("Q{bits}-ct")
                    };
                    (label, bytes)
                } else {
                    let bytes = 4 * stream_words(inp, bits) * out
                        + 4 * ng * stream_words(out, bits)
                        + 2 * ng * out
                        + 4 * inp;
                    (format!("Q{bits}-gptq"), bytes)
                }
            } else {
                let d = match i.dtype.as_str() {
                    "F32" => OutDtype::F32,
                    "BF16" => OutDtype::BF16,
                    _ => OutDtype::F16,
                };
                (d.safetensors_name().to_string(), i.numel() * d.size())
            };
            TensorPlan {
                quantized,
                bytes: bytes as u64,
                hf_name: i.name.clone(),
                name: i.name,
                shape: i.shape,
                dtype,
                fallback: None,
            }
        })
        .collect()
}
