//! Validation: a typed [`Recipe`] and its model become a [`Plan`], or an error naming the
//! recipe path that cannot work.
//!
//! Everything that can be decided without computing is decided here, before any work and
//! before anything is written: the passes' order and what they need (calibration, evaluation
//! data), every option checked against the method it belongs to and against the model's
//! shapes (group sizes, N:M patterns, structured counts), the output format against the
//! passes, the type of every output tensor with its fallbacks, the gates' metrics, the
//! estimated size and time. `--dry-run` prints the plan; `recipe validate` stops here.
//!
//! How passes chain: a `structured_prune` comes first and is a view of the source (nothing
//! is written in between); a `distill` pass trains that view against the original and hands
//! the trained weights (kept in the work directory) to the passes after it; consecutive `prune` and `quantize` passes run as one layerwise
//! sweep, so pruned weights become the grids' zero points and stay zero (quantizing a pruned
//! checkpoint afterwards would move them off zero); `eval` passes measure the model as it
//! stands: between the structured view and the sweep in memory, after the sweep the written
//! output, reloaded from disk.

mod distill;
mod estimate;
mod layerwise;
mod order;
mod output;
mod steps;
mod tasks;
pub mod tensors;

use std::path::PathBuf;

use microllm_io::Checkpoint;
use microllm_io::gguf::GgufTypes;

pub use distill::DistillStep;
pub use estimate::Estimate;
pub use steps::{
    EvalStep, LayerwiseStep, OutputPlan, StructuredStep, Writer, gguf_types, parse_size,
    report_stem, tensor_type_rules,
};
pub use tasks::TaskStep;
pub use tensors::TensorPlan;

use crate::recipe::{Gate, Pass, Recipe, RecipeDoc, RecipeError, RecipeResult, ReportFormat};

/// A validated recipe, ready to run.
#[derive(Debug)]
pub struct Plan {
    pub recipe: Recipe,
    /// The recipe as run (defaults filled in), for the report and `--print-recipe`.
    pub recipe_value: serde_json::Value,
    pub model: Checkpoint,
    pub structured: Option<StructuredStep>,
    pub distill: Option<DistillStep>,
    pub layerwise: Option<LayerwiseStep>,
    pub evals: Vec<EvalStep>,
    /// Multiple-choice tasks every eval pass scores.
    pub tasks: Vec<TaskStep>,
    pub output: OutputPlan,
    pub gates: Vec<Gate>,
    /// Decisions a person should know about (fallbacks, static groups, ...).
    pub notes: Vec<String>,
    pub estimate: Estimate,
    /// Report files' stem and renderings.
    pub report_stem: PathBuf,
    pub report_formats: Vec<ReportFormat>,
    /// The run's summary method name (`gptq`, `wanda`, `structured+gptq`, `ggml-rtn`).
    pub method: String,
}

/// How a run starts.
#[derive(Debug, Clone, Copy, Default)]
pub struct PlanOptions {
    /// Continue a killed run (an existing output is then accepted if the run wrote it).
    pub resume: bool,
    /// Planning only (`--dry-run`, `recipe validate`): an existing output is not an error.
    pub dry_run: bool,
    /// Missing calibration or evaluation data is a note, not an error (a single-purpose
    /// command's `--dry-run`, which shows the plan before the data is chosen).
    pub data_optional: bool,
}

impl Plan {
    /// Validates `recipe` (read from `doc`, whose lines locate errors) against its model.
    pub fn new(doc: &RecipeDoc, recipe: Recipe, opts: PlanOptions) -> RecipeResult<Self> {
        let located = |e: RecipeError| doc.locate(e);
        let model = microllm_io::open(&recipe.model).map_err(|e| {
            located(RecipeError::at(
                "model",
                format!("cannot open `{}`: {e}", recipe.model),
            ))
        })?;
        steps::build(doc, recipe, model, opts).map_err(located)
    }

    /// Whether any step needs calibration windows.
    pub fn needs_calibration(&self) -> bool {
        self.structured
            .as_ref()
            .is_some_and(|s| s.needs_calibration)
            || self
                .layerwise
                .as_ref()
                .is_some_and(steps::LayerwiseStep::needs_calibration)
            || matches!(
                self.output.writer,
                Writer::Gguf {
                    importance: true,
                    ..
                }
            )
    }

    /// The GGUF types of the output's matrices not written from codes (for GGUF writers).
    pub fn dominant(&self) -> GgufTypes {
        self.output.dominant
    }
}

/// The passes of a recipe with their indices, for error paths: `passes[i].key`.
pub(crate) fn pass_path(i: usize, pass: &Pass) -> String {
    format!("passes[{i}].{}", pass.key())
}

impl Plan {
    /// What pass `i` does, in words (for the plan and the report).
    pub fn describe_pass(&self, i: usize) -> String {
        let l = self.layerwise.as_ref();
        match &self.recipe.passes[i] {
            Pass::StructuredPrune(_) => self.structured.as_ref().map_or(String::new(), |s| {
                format!(
                    "keep {} blocks, {} MLP channels, {} query / {} KV heads per block ({:?} importance)",
                    s.targets.layers, s.targets.channels, s.targets.heads, s.targets.kv_heads, s.metric
                )
                .to_lowercase()
            }),
            Pass::Prune(_) => l.and_then(|l| l.spec.prune).map_or(String::new(), |s| {
                let what = match s.pattern {
                    microllm_prune::SparsityPattern::Unstructured { sparsity } => {
                        format!("{:.0}% unstructured", sparsity * 100.0)
                    }
                    microllm_prune::SparsityPattern::NOfM { n, m } => format!("{n}:{m}"),
                };
                let joint = if l.is_some_and(|l| l.spec.scheme.is_some()) {
                    ", one sweep with the quantize pass"
                } else {
                    ""
                };
                let ranking = match s.ranking {
                    microllm_prune::Ranking::PerRow => "per-row",
                    microllm_prune::Ranking::PerLayer => "per-layer",
                    microllm_prune::Ranking::Global { .. } => "global",
                };
                let method = format!("{:?}", s.method).to_lowercase();
                format!("{method}, {what}, {ranking} ranking{joint}")
            }),
            Pass::Quantize(q) => match l.and_then(|l| l.spec.scheme) {
                Some(s) => format!(
                    "{}, {}, {}, {}{}",
                    serde_json::to_value(q.method)
                        .ok()
                        .and_then(|v| v.as_str().map(String::from))
                        .unwrap_or_default(),
                    if s.is_fp8() {
                        "FP8 E4M3".to_string()
                    } else {
                        format!("{} bits", s.bits)
                    },
                    s.group_size
                        .map_or("per-channel".into(), |g| format!("group {g}")),
                    if s.symmetric { "symmetric" } else { "asymmetric" },
                    l.and_then(|l| l.activations)
                        .map(|a| format!(", activations {a}"))
                        .unwrap_or_default()
                ),
                None => format!(
                    "llama.cpp {} blocks (round-to-nearest, in the GGUF writer{})",
                    self.output.dominant.describe(),
                    if q.importance_matrix == Some(true) {
                        ", k-quants weighted by an importance matrix"
                    } else {
                        ""
                    }
                ),
            },
            Pass::Distill(_) => self.distill.as_ref().map_or(String::new(), |d| {
                let s = &d.stage;
                let teacher = match (&s.logits, &s.teacher) {
                    _ if !s.loss.uses_teacher() && !s.loss.uses_hidden() => "the labels".into(),
                    (Some(dir), _) => format!("stored teacher logits {}", dir.display()),
                    (None, Some(t)) => format!("{t} as a live teacher"),
                    (None, None) => "the original as a live teacher".into(),
                };
                format!(
                    "{} against {teacher}, {} steps x {} tokens of {}, lr {}",
                    s.loss.describe(),
                    d.steps,
                    d.tokens_per_step(),
                    d.data.file_name().unwrap_or_default().to_string_lossy(),
                    s.lr
                )
            }),
            Pass::Eval(_) => {
                let e = self.evals.iter().find(|e| e.pass == i);
                e.map_or(String::new(), |e| {
                    format!(
                        "{} windows, {} against the original",
                        e.windows,
                        if e.of_output {
                            "the written output (reloaded)"
                        } else {
                            "the model so far (in memory)"
                        }
                    )
                })
            }
        }
    }
}

impl OutputPlan {
    /// The output format in words.
    pub fn format_name(&self) -> String {
        match &self.writer {
            Writer::Gguf { codes: true, .. } => "gguf (codes in ggml blocks)".into(),
            Writer::Gguf { codes: false, .. } => {
                format!("gguf ({} matrices)", self.dominant.describe())
            }
            Writer::Safetensors(d) => format!("safetensors ({})", d.torch_name()),
            Writer::Packed(m, None) => format!("{m:?}").to_lowercase(),
            Writer::Packed(m, Some(structure)) => {
                format!("{} ({structure} sparse)", format!("{m:?}").to_lowercase())
            }
            Writer::Sparse(..) => "compressed-tensors (sparse)".into(),
        }
    }
}
