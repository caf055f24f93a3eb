//! Writing the output: the model as it stands after the passes, in the planned format.
//!
//! Writers read the layerwise sweep's stored blocks, never the run's memory (the BlockStore is
//! the canonical result): GGUF copies the codes into ggml blocks exactly, GPTQ and
//! compressed-tensors pack them, safetensors gets their dequantized values; a structured
//! prune is a slicing view of the source. Every writer is atomic.

use microllm_core::{ModelConfig, Progress, Result, TensorSource, names};
use microllm_io::Checkpoint;
use microllm_io::gguf::{
    BudgetPlan, EncodedTensors, GgufExport, ImportanceMatrix, TypeDecision, fit_budget, write_gguf,
};
use microllm_io::quantized::QuantMethod;
use microllm_io::write::{
    HfOutput, HfWriteOptions, PackedOutput, SparseOutput, write_hf_dir, write_packed_dir,
    write_sparse_dir,
};

use crate::plan::{Plan, TensorPlan, Writer};
use microllm_engine::BlockStore;
use microllm_engine::output::{GgufCodes, QuantizedSource};
use microllm_engine::packed::{
    StoredLinears, compressed_quantization_config, dense_sparsity_config, gptq_quantization_config,
};

const MAX_SHARD_BYTES: u64 = 2_000_000_000;

/// The model after the passes: its configuration and tensors.
pub struct Current<'a> {
    pub config: &'a ModelConfig,
    pub source: &'a dyn TensorSource,
    /// The layerwise sweep's blocks, when there was one.
    pub store: Option<&'a BlockStore>,
    /// Per-column importance for the GGUF writer's k-quant blocks, when measured.
    pub importance: Option<&'a ImportanceMatrix>,
}

/// What writing the output returned.
#[derive(Debug, Default)]
pub struct Written {
    /// The writer's notes, for the report.
    pub notes: Vec<String>,
    /// The tensors as written, when the writer chose their types itself (a size budget);
    /// otherwise the plan's list holds.
    pub tensors: Option<Vec<TensorPlan>>,
}

/// One line on what a size budget chose.
pub fn budget_note(budget: &BudgetPlan) -> String {
    let counts: Vec<String> = budget
        .counts()
        .iter()
        .map(|(t, n)| format!("{n} {}", t.name()))
        .collect();
    format!(
        "size budget: {:.3} bits/weight, {:.1} MB of tensor data; block linears {} (errors \
         weighted by {})",
        budget.bits_per_weight(),
        budget.bytes as f64 / 1e6,
        counts.join(", "),
        if budget.importance_weighted {
            "the importance matrix"
        } else {
            "nothing: the plain weight error"
        }
    )
}

/// Writes the output.
pub fn write_output(
    plan: &Plan,
    ckpt: &Checkpoint,
    now: &Current<'_>,
    progress: &dyn Progress,
) -> Result<Written> {
    let out = &plan.output;
    let mut notes = Vec::new();
    let mut written = Written::default();
    let quantized = now
        .store
        .map(|s| QuantizedSource::new(now.config, now.source, s));
    let tensors: &dyn TensorSource = match &quantized {
        Some(q) => q,
        None => now.source,
    };
    match &out.writer {
        Writer::Gguf { codes, .. } => {
            let gguf_codes = now
                .store
                .filter(|_| *codes)
                .map(|s| GgufCodes::new(now.config, s));
            let mut export = GgufExport {
                config: now.config,
                tensors,
                tokenizer: ckpt.tokenizer.as_ref(),
                chat_template: ckpt.chat_template.as_deref(),
                name: &ckpt.name(),
                license: ckpt.license.as_deref(),
                encoded: gguf_codes.as_ref().map(|c| c as &dyn EncodedTensors),
                importance: now.importance,
                tensor_types: &out.tensor_types,
            };
            let budget;
            if let Some(target) = out.target {
                budget = fit_budget(&export, out.dominant, target, progress)?;
                notes.push(budget_note(&budget));
                export.tensor_types = &budget.rules;
            }
            let summary = write_gguf(&export, &out.path, out.dominant, out.overwrite, progress)?;
            if out.target.is_some() {
                written.tensors = Some(crate::plan::tensors::from_decisions(
                    now.config,
                    summary.tensors.clone(),
                    |_| None,
                )?);
            }
            notes.extend(summary.notes);
            if now.importance.is_some() {
                notes.push(importance_note(&summary.tensors));
            }
        }
        Writer::Safetensors(dtype) => {
            let output = HfOutput {
                config: now.config,
                tensors,
                tokenizer: ckpt.tokenizer.as_ref(),
                chat_template: ckpt.chat_template.as_deref(),
            };
            let opts = HfWriteOptions {
                dtype: *dtype,
                max_shard_bytes: MAX_SHARD_BYTES,
                overwrite: out.overwrite,
            };
            write_hf_dir(&output, &out.path, &opts, progress)?;
        }
        Writer::Packed(method, sparsity) => {
            let store = now.store.expect("packed output follows a quantize pass");
            let l = plan
                .layerwise
                .as_ref()
                .expect("packed output follows a quantize pass");
            let scheme = l
                .spec
                .scheme
                .expect("packed output follows a quantize pass");
            let linears = StoredLinears::new(now.config, store);
            let quantization_config = if *method == QuantMethod::Gptq {
                let wrapped = linears.gptq_wrapped_zeros(now.config.num_layers)?;
                if wrapped > 0 {
                    notes.push(format!(
                        "{wrapped} groups have zero point 0, stored as GPTQ v1's wrapped field \
                         2^bits-1: microllm and GPTQModel read them exactly, kernels that add 1 \
                         without masking (legacy exllama) read zero 2^bits"
                    ));
                }
                let g = l.gptq.unwrap_or_default();
                gptq_quantization_config(
                    &scheme,
                    l.scattered_groups,
                    g.static_groups,
                    g.damp_percent,
                )
            } else {
                let g = l.gptq.unwrap_or_default();
                let mut config = compressed_quantization_config(
                    &scheme,
                    l.scattered_groups,
                    g.act_order && g.static_groups,
                    l.activations,
                );
                if let Some(structure) = sparsity {
                    let zeros = linears.zero_fraction(now.config.num_layers)?;
                    config["sparsity_config"] = dense_sparsity_config(structure, zeros);
                }
                config
            };
            let output = PackedOutput {
                config: now.config,
                tensors,
                packed: &linears,
                method: *method,
                quantization_config,
                tokenizer: ckpt.tokenizer.as_ref(),
                chat_template: ckpt.chat_template.as_deref(),
            };
            write_packed_dir(&output, &out.path, MAX_SHARD_BYTES, out.overwrite, progress)?;
        }
        Writer::Sparse(format, structure) => {
            let family = now.config.family;
            let is_sparse = |name: &str| names::parse_linear_weight(family, name).is_some();
            let output = SparseOutput {
                config: now.config,
                tensors,
                is_sparse: &is_sparse,
                format: *format,
                structure: structure.clone(),
                tokenizer: ckpt.tokenizer.as_ref(),
                chat_template: ckpt.chat_template.as_deref(),
            };
            write_sparse_dir(&output, &out.path, MAX_SHARD_BYTES, out.overwrite, progress)?;
        }
    }
    written.notes = notes;
    Ok(written)
}

/// Which matrices the importance matrix weighted (k-quants, Q4_0, Q5_0, Q4_1, Q5_1; as in
/// llama.cpp, not Q8_0).
fn importance_note(tensors: &[TypeDecision]) -> String {
    let matrices = tensors.iter().filter(|t| t.shape.len() == 2);
    let (weighted, plain): (Vec<_>, Vec<_>) = matrices.partition(|t| t.importance_weighted);
    let types_of = |ts: &[&TypeDecision]| {
        let set: std::collections::BTreeSet<_> =
            ts.iter().map(|t| format!("{:?}", t.dtype)).collect();
        set.into_iter().collect::<Vec<_>>().join(", ")
    };
    let noun = |n: usize| if n == 1 { "matrix" } else { "matrices" };
    format!(
        "importance matrix applied to {} {} ({}); not to {} other {} ({}: types without an \
         importance-weighted fit)",
        weighted.len(),
        noun(weighted.len()),
        types_of(&weighted),
        plain.len(),
        noun(plain.len()),
        types_of(&plain),
    )
}
