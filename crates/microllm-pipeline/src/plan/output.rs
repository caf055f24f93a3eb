//! The output of a plan: the format checked against the passes, the writer, and the type of
//! every tensor with its fallbacks.

use microllm_core::{ModelConfig, TensorSource};
use microllm_io::gguf::GgufType;
use microllm_io::gguf::{GgufTypes, ImportanceMatrix, SizeTarget, TensorTypeRule};
use microllm_io::quantized::QuantMethod;
use microllm_io::quantized::sparse::SparseFormat;
use microllm_io::write::OutDtype;
use microllm_prune::SparsityPattern;

use super::layerwise::check_applicable;
use super::steps::{
    LayerwiseStep, OutputPlan, Writer, err, gguf_types, out_dtype, parse_size, tensor_type_rules,
};
use super::{PlanOptions, TensorPlan, pass_path, tensors};
use crate::recipe::{OutputFormat, PruneStage, QuantizeStage, Recipe, RecipeResult};

/// The output of a plan: format, writer and every tensor's type, checked against the passes
/// and the model.
#[allow(clippy::too_many_arguments)]
pub(super) fn output_plan(
    recipe: &Recipe,
    format: OutputFormat,
    cfg: &ModelConfig,
    src: &dyn TensorSource,
    structured: bool,
    prune: Option<&PruneStage>,
    layerwise: Option<&LayerwiseStep>,
    ggml: Option<(usize, &QuantizeStage)>,
    opts: PlanOptions,
    notes: &mut Vec<String>,
) -> RecipeResult<OutputPlan> {
    let out = &recipe.output;
    let scheme = layerwise.and_then(|l| l.spec.scheme);
    check_combination(recipe, format, layerwise, ggml)?;
    let (tensor_types, target) = gguf_type_choices(out, format, scheme.is_some(), notes)?;
    // Read (and checked against the model) once, here; the run uses what was read.
    let importance_read = if opts.data_optional {
        None
    } else {
        read_importance(recipe, cfg, src, ggml)?
    };
    let (writer, tensors, dominant) = match format {
        OutputFormat::Gguf => {
            let choices = GgufChoices {
                layerwise,
                ggml,
                tensor_types: &tensor_types,
            };
            gguf_writer(out, cfg, src, choices, notes)?
        }
        OutputFormat::Safetensors => safetensors_writer(out, cfg, src),
        OutputFormat::Gptq | OutputFormat::CompressedTensors => {
            packed_writer(format, cfg, src, (structured, prune), layerwise)?
        }
    };
    check_destination(out, opts)?;
    Ok(OutputPlan {
        path: out.path.clone(),
        format,
        writer,
        tensors,
        dominant,
        tensor_types,
        target,
        overwrite: out.overwrite,
        config: cfg.clone(),
        importance_read,
        save_importance: ggml.and_then(|(_, q)| q.save_importance_matrix.clone()),
    })
}

/// The output format and options against the passes: what a format cannot hold is refused
/// before any work.
fn check_combination(
    recipe: &Recipe,
    format: OutputFormat,
    layerwise: Option<&LayerwiseStep>,
    ggml: Option<(usize, &QuantizeStage)>,
) -> RecipeResult<()> {
    let out = &recipe.output;
    let scheme = layerwise.and_then(|l| l.spec.scheme);
    let fmt_err = |msg: &str| err("output.format", msg.to_string());
    if layerwise.is_some_and(|l| l.activations.is_some())
        && format != OutputFormat::CompressedTensors
    {
        return Err(fmt_err(
            "schemes w8a8-int8 and w8a8-fp8 quantize every linear's input when the model runs, \
             which only compressed-tensors (`int-quantized`, `float-quantized`) declares: use \
             format compressed-tensors",
        ));
    }
    if scheme.is_some_and(|s| s.is_fp8())
        && matches!(format, OutputFormat::Gguf | OutputFormat::Gptq)
    {
        return Err(fmt_err(
            "FP8 E4M3 weights have no GGUF block type and no GPTQ packing: use format \
             compressed-tensors (or safetensors for the dequantized weights)",
        ));
    }
    if out.dtype.is_some() && format != OutputFormat::Safetensors {
        return Err(err(
            "output.dtype",
            "`dtype` applies to safetensors output (packed formats keep other tensors in the \
             source's dtype; GGUF takes gguf_type)",
        ));
    }
    if out.gguf_type.is_some()
        && (format != OutputFormat::Gguf || scheme.is_some() || ggml.is_some())
    {
        return Err(err(
            "output.gguf_type",
            if format != OutputFormat::Gguf {
                "`gguf_type` applies to GGUF output"
            } else {
                "`gguf_type` types the matrices no quantize pass writes; with a quantize pass the \
                 other tensors follow llama.cpp's choices (method ggml takes its own gguf_type)"
            },
        ));
    }
    if let Some((i, q)) = ggml {
        if format != OutputFormat::Gguf {
            return Err(err(
                "output.format",
                "quantize method ggml writes llama.cpp's block types: GGUF output only (--gguf-type applies to GGUF output)",
            ));
        }
        if q.gguf_type.is_none() {
            return Err(err(
                pass_path(i, &recipe.passes[i]),
                "method ggml needs `gguf_type` (q4_k, q8_0, ...)",
            ));
        }
        check_applicable(&pass_path(i, &recipe.passes[i]), q)?;
    }
    Ok(())
}

/// The importance matrix file a `ggml` pass names, read and checked against the model.
fn read_importance(
    recipe: &Recipe,
    cfg: &ModelConfig,
    src: &dyn TensorSource,
    ggml: Option<(usize, &QuantizeStage)>,
) -> RecipeResult<Option<ImportanceMatrix>> {
    let Some((i, q)) = ggml else {
        return Ok(None);
    };
    let Some(file) = q.importance_matrix_file.as_deref() else {
        return Ok(None);
    };
    read_importance_file(file, cfg, src).map(Some).map_err(|e| {
        err(
            format!("{}.importance_matrix_file", pass_path(i, &recipe.passes[i])),
            e,
        )
    })
}

/// What decides a GGUF output's types: the layerwise pass's codes, a `ggml` pass, the
/// per-tensor rules.
struct GgufChoices<'a> {
    layerwise: Option<&'a LayerwiseStep>,
    ggml: Option<(usize, &'a QuantizeStage)>,
    tensor_types: &'a [TensorTypeRule],
}

/// A GGUF file: the layerwise pass's codes as exact blocks, or llama.cpp's own types.
fn gguf_writer(
    out: &crate::recipe::Output,
    cfg: &ModelConfig,
    src: &dyn TensorSource,
    choices: GgufChoices<'_>,
    notes: &mut Vec<String>,
) -> RecipeResult<(Writer, Vec<TensorPlan>, GgufTypes)> {
    let GgufChoices {
        layerwise,
        ggml,
        tensor_types,
    } = choices;
    let scheme = layerwise.and_then(|l| l.spec.scheme);
    let linears_quantized = scheme.is_some();
    let takes_importance = ggml.is_some_and(|(_, q)| {
        q.importance_matrix == Some(true) || q.importance_matrix_file.is_some()
    });
    let ty = ggml
        .and_then(|(_, q)| q.gguf_type)
        .or(out.gguf_type)
        .map_or(GgufTypes::Pure(GgufType::F16), gguf_types);
    let (plan, dominant) = match scheme {
        Some(s) => {
            let (plan, dominant) =
                tensors::gguf_plan(cfg, src, &s, layerwise.is_some_and(|l| l.scattered_groups))
                    .map_err(|e| err("output", e.to_string()))?;
            (plan, GgufTypes::Pure(dominant))
        }
        None => {
            let decisions =
                microllm_io::gguf::plan_types(cfg, src, ty, tensor_types, takes_importance)
                    .map_err(|e| err("output", e.to_string()))?;
            (
                tensors::from_decisions(cfg, decisions, |_| None)
                    .map_err(|e| err("output", e.to_string()))?,
                ty,
            )
        }
    };
    if ggml.is_some() {
        notes.push(format!(
            "{}: llama.cpp's block types, by llama.cpp's round-to-nearest{} (GPTQ does \
             not apply)",
            dominant.describe(),
            if takes_importance {
                " with an importance matrix (llama.cpp's imatrix) for k- and i-quant blocks"
            } else {
                ", no calibration"
            }
        ));
    }
    if let (Some(s), GgufTypes::Pure(dominant)) = (scheme, dominant) {
        let block_bits = match dominant {
            GgufType::Q8_0 => 8,
            GgufType::Q4_0 | GgufType::Q4_1 => 4,
            _ => 0,
        };
        if s.bits < block_bits {
            notes.push(format!(
                "{}-bit codes are stored in {dominant:?} blocks ({block_bits}-bit slots): \
                 the weights are exactly the {}-bit model's, the file is the size of a \
                 {block_bits}-bit one (GGUF has no legacy {}-bit block)",
                s.bits, s.bits, s.bits
            ));
        }
    }
    Ok((
        Writer::Gguf {
            codes: linears_quantized,
            importance: takes_importance,
        },
        plan,
        dominant,
    ))
}

/// A plain safetensors directory in the recipe's dtype (else the model's).
fn safetensors_writer(
    out: &crate::recipe::Output,
    cfg: &ModelConfig,
    src: &dyn TensorSource,
) -> (Writer, Vec<TensorPlan>, GgufTypes) {
    let dtype = match out.dtype {
        Some(d) => out_dtype(d),
        None => match cfg.torch_dtype.as_deref() {
            Some("float32") => OutDtype::F32,
            Some("bfloat16") => OutDtype::BF16,
            _ => OutDtype::F16,
        },
    };
    (
        Writer::Safetensors(dtype),
        tensors::dense_plan(cfg, src, dtype),
        GgufTypes::Pure(GgufType::F16),
    )
}

/// A GPTQ or compressed-tensors directory: packed codes, or sparse storage of pruned weights.
fn packed_writer(
    format: OutputFormat,
    cfg: &ModelConfig,
    src: &dyn TensorSource,
    (structured, prune): (bool, Option<&PruneStage>),
    layerwise: Option<&LayerwiseStep>,
) -> RecipeResult<(Writer, Vec<TensorPlan>, GgufTypes)> {
    let scheme = layerwise.and_then(|l| l.spec.scheme);
    let fmt_err = |msg: &str| err("output.format", msg.to_string());
    let ct = format == OutputFormat::CompressedTensors;
    let method = if ct {
        QuantMethod::CompressedTensors
    } else {
        QuantMethod::Gptq
    };
    Ok(match (scheme, prune) {
        // Pruned and quantized: the quantized weights hold the pruned zeros exactly (a
        // pruned weight's code is its group's zero), so they are written as the scheme
        // writes them; compressed-tensors declares the structure in `sparsity_config`
        // over `dense` storage.
        (Some(s), prune) => (
            Writer::Packed(
                method,
                prune.filter(|_| ct).map(|p| sparsity_structure(p).1),
            ),
            tensors::packed_plan(
                cfg,
                src,
                &s,
                ct,
                layerwise.is_some_and(|l| l.scattered_groups),
            ),
            GgufTypes::Pure(GgufType::F16),
        ),
        (None, Some(p)) if ct => {
            let (fmt, structure) = sparsity_structure(p);
            (
                Writer::Sparse(fmt, structure),
                tensors::dense_plan(cfg, src, OutDtype::F16),
                GgufTypes::Pure(GgufType::F16),
            )
        }
        _ if ct && structured => {
            return Err(fmt_err(
                "compressed-tensors stores pruned weights sparse; structured pruning \
                 writes a smaller dense model: use safetensors or gguf",
            ));
        }
        _ => {
            return Err(fmt_err(if ct {
                "compressed-tensors output needs a quantize pass (gptq or rtn) or a prune pass"
            } else {
                "gptq output needs a quantize pass (gptq or rtn) to pack"
            }));
        }
    })
}

/// An existing output is replaced only when asked (or when a killed run wrote it).
fn check_destination(out: &crate::recipe::Output, opts: PlanOptions) -> RecipeResult<()> {
    let work = microllm_engine::work_dir(&out.path);
    let resumable = opts.resume && work.join("output.json").exists();
    if out.path.exists() && !out.overwrite && !opts.dry_run && !resumable {
        return Err(err(
            "output.path",
            format!(
                "{} already exists; pass --force to replace it (or set output.overwrite: true)",
                out.path.display()
            ),
        ));
    }
    Ok(())
}

/// `output.tensor_types` and the size target, checked: both choose GGUF types of matrices that
/// no quantize pass wrote as codes.
fn gguf_type_choices(
    out: &crate::recipe::Output,
    format: OutputFormat,
    codes: bool,
    notes: &mut Vec<String>,
) -> RecipeResult<(Vec<TensorTypeRule>, Option<SizeTarget>)> {
    let tensor_types =
        tensor_type_rules(&out.tensor_types).map_err(|e| err("output.tensor_types", e))?;
    if !tensor_types.is_empty() && (format != OutputFormat::Gguf || codes) {
        return Err(err(
            "output.tensor_types",
            if format != OutputFormat::Gguf {
                "`tensor_types` applies to GGUF output"
            } else {
                "`tensor_types` retypes matrices typed by `gguf_type` (method ggml, or no \
                 quantize pass); GPTQ and RTN codes keep the blocks they were fitted to"
            },
        ));
    }
    let target = match (out.target_bpw, out.target_size.as_deref()) {
        (Some(_), Some(_)) => {
            return Err(err(
                "output.target_size",
                "give `target_bpw` or `target_size`, not both",
            ));
        }
        (Some(bpw), None) if !(bpw > 0.0 && bpw.is_finite()) => {
            return Err(err(
                "output.target_bpw",
                format!("{bpw} is not a positive number of bits per weight"),
            ));
        }
        (Some(bpw), None) => Some(SizeTarget::BitsPerWeight(bpw)),
        (None, Some(size)) => Some(SizeTarget::Bytes(
            parse_size(size).map_err(|e| err("output.target_size", e))?,
        )),
        (None, None) => None,
    };
    if target.is_some() && (format != OutputFormat::Gguf || codes) {
        let key = match out.target_bpw {
            Some(_) => "output.target_bpw",
            None => "output.target_size",
        };
        return Err(err(
            key,
            if format != OutputFormat::Gguf {
                "a size target chooses GGUF block types: GGUF output only"
            } else {
                "a size target chooses the types of matrices typed by `gguf_type` (method \
                 ggml, or no quantize pass); GPTQ and RTN codes keep the blocks they were \
                 fitted to"
            },
        ));
    }
    if let Some(t) = target {
        notes.push(format!(
            "the block linears' types are chosen when the file is written, to fit {} with the \
             least measured error (the plan lists the types before that choice)",
            match t {
                SizeTarget::BitsPerWeight(b) => format!("{b} bits/weight"),
                SizeTarget::Bytes(b) => format!("{:.1} MB of tensor data", b as f64 / 1e6),
            }
        ));
    }
    Ok((tensor_types, target))
}

/// Reads an importance-matrix file and checks it against the model: every entry a matrix of
/// the model, with one value per input column.
fn read_importance_file(
    file: &std::path::Path,
    cfg: &ModelConfig,
    src: &dyn TensorSource,
) -> Result<ImportanceMatrix, String> {
    let matrix = ImportanceMatrix::read(file, cfg.family).map_err(|e| e.to_string())?;
    for (name, columns) in matrix.entries() {
        let info = src.info(name).ok_or_else(|| {
            format!(
                "{}: entry for `{name}`, which this model does not have",
                file.display()
            )
        })?;
        let inputs = info.shape.last().copied().unwrap_or(0);
        if columns.len() != inputs {
            return Err(format!(
                "{}: `{name}` has {} values, the model's matrix {inputs} input columns: the \
                 importance matrix was made for another model",
                file.display(),
                columns.len()
            ));
        }
    }
    Ok(matrix)
}

/// The compressed-tensors sparse format and `sparsity_structure` of a prune pass.
fn sparsity_structure(p: &PruneStage) -> (SparseFormat, String) {
    match p
        .pattern
        .as_deref()
        .and_then(|t| SparsityPattern::parse(t).ok())
    {
        Some(SparsityPattern::NOfM { n: 2, m: 4 }) => (SparseFormat::TwoFour, "2:4".to_string()),
        Some(SparsityPattern::NOfM { n, m }) => (SparseFormat::Bitmask, format!("{n}:{m}")),
        _ => (SparseFormat::Bitmask, "unstructured".to_string()),
    }
}
