//! The records a report is made of. Field names are the report's JSON schema (documented in
//! docs/recipes.md); the quantize and prune reports of earlier versions used the same names
//! for the same things (`method`, `scheme`, `calibration`, `layers`, `output`, `fallbacks`),
//! and they keep them.

use std::path::PathBuf;

use microllm_distill::report::{EvalPoint, StepRecord};
use microllm_distill::train::TrainSettings;
use microllm_eval::tasks::{Task, TaskResult};
use microllm_eval::{Comparison, PerplexityResult};
use microllm_io::calibration::CalibrationSet;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::plan::TensorPlan;
use crate::recipe::CalibrationCompute;
use microllm_engine::LinearRecord;

/// The source model.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelRecord {
    /// As given in the recipe (path or hub id).
    pub spec: String,
    /// Where it was read from.
    pub path: PathBuf,
    /// SHA-256 of the file, or of the directory's files.
    pub sha256: String,
    pub family: String,
    pub layers: usize,
    pub hidden_size: usize,
    pub parameters: usize,
    /// Tensor data as stored.
    pub stored_bytes: u64,
}

/// The calibration windows used.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CalibrationRecord {
    pub file: Option<PathBuf>,
    pub sha256: String,
    pub samples_requested: usize,
    pub samples_used: usize,
    pub seqlen: usize,
    pub tokens_used: usize,
    pub tokens_in_file: usize,
    pub seed: u64,
    pub shortfall: usize,
    /// How the layerwise sweep's calibration forward computed (reports written before this
    /// field existed: f32).
    #[serde(default = "f32_compute")]
    pub compute: CalibrationCompute,
    /// The product full Hessians (GPTQ's, SparseGPT's) take in this run's arithmetic on this
    /// CPU ([`microllm_quant::HessianKernel::name`]): `tiled-bf16` with `compute: int8` on a
    /// CPU that runs AVX-512 BF16 faster than f32 (AMD's), else `tiled-f32` with AVX-512 and
    /// `gemm` without. Two machines may differ here, and the resume fingerprint holds it, so
    /// a resumed run never mixes two. Absent in reports older than the field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hessian_kernel: Option<String>,
}

fn f32_compute() -> CalibrationCompute {
    CalibrationCompute::F32
}

impl CalibrationRecord {
    pub fn new(file: Option<PathBuf>, compute: CalibrationCompute, set: &CalibrationSet) -> Self {
        Self {
            file,
            sha256: set.text_sha256.clone(),
            samples_requested: set.requested,
            samples_used: set.windows.len(),
            seqlen: set.seqlen,
            tokens_used: set.tokens_used(),
            tokens_in_file: set.text_tokens,
            seed: set.seed,
            shortfall: set.shortfall(),
            compute,
            hessian_kernel: Some(
                microllm_quant::HessianKernel::chosen(compute == CalibrationCompute::Int8)
                    .name()
                    .to_string(),
            ),
        }
    }
}

/// The evaluation data.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvalDataRecord {
    pub file: PathBuf,
    pub sha256: String,
    pub tokens_in_file: usize,
    pub ctx: usize,
}

/// One comparison of a model with the original (an eval pass).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvalRecord {
    pub data: PathBuf,
    /// Whether the written output was measured (else an intermediate model in memory).
    pub of_output: bool,
    pub original: PerplexityResult,
    pub compressed: PerplexityResult,
    /// `compressed - original` perplexity.
    pub increase: f64,
    /// The increase in percent of the original.
    pub increase_pct: f64,
    /// Mean KL(original || compressed) per scored token, nats.
    pub kl_divergence: f64,
    pub top1_agreement: f64,
    /// The evaluation's multiple-choice tasks, original against compressed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tasks: Vec<TaskRecord>,
}

impl EvalRecord {
    pub fn new(data: PathBuf, of_output: bool, c: Comparison) -> Self {
        let increase = c.compressed.perplexity - c.original.perplexity;
        Self {
            data,
            of_output,
            increase,
            increase_pct: 100.0 * increase / c.original.perplexity,
            kl_divergence: c.kl_divergence,
            top1_agreement: c.top1_agreement,
            original: c.original,
            compressed: c.compressed,
            tasks: Vec::new(),
        }
    }
}

/// One task scored on the original and on the compressed model (lm-eval's rules).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskRecord {
    pub task: Task,
    pub data: PathBuf,
    pub items: usize,
    pub fewshot: usize,
    pub acc_base: f64,
    pub acc: f64,
    pub acc_stderr: f64,
    /// `100 x (acc_base - acc)`: accuracy lost, in points.
    pub acc_drop: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acc_norm_base: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acc_norm: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acc_norm_drop: Option<f64>,
    /// Fraction of items on which both models chose the same answer.
    pub same_answer: f64,
    /// Seconds the compressed model took.
    pub seconds: f64,
}

impl TaskRecord {
    /// The record of `base` and `compressed`, two runs over the same items.
    pub fn new(data: PathBuf, base: &TaskResult, compressed: &TaskResult) -> Self {
        let same = base
            .per_item
            .iter()
            .zip(&compressed.per_item)
            .filter(|(a, b)| a.pred == b.pred)
            .count();
        let drop = |b: f64, c: f64| 100.0 * (b - c);
        Self {
            task: compressed.task,
            data,
            items: compressed.items,
            fewshot: compressed.fewshot,
            acc_base: base.acc,
            acc: compressed.acc,
            acc_stderr: compressed.acc_stderr,
            acc_drop: drop(base.acc, compressed.acc),
            acc_norm_base: base.acc_norm,
            acc_norm: compressed.acc_norm,
            acc_norm_drop: base
                .acc_norm
                .zip(compressed.acc_norm)
                .map(|(b, c)| drop(b, c)),
            same_answer: same as f64 / compressed.items.max(1) as f64,
            seconds: compressed.seconds,
        }
    }
}

/// One pass as it ran.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PassRecord {
    pub index: usize,
    /// The pass's key: prune, quantize, structured_prune, distill, eval.
    pub pass: String,
    /// What it did, in words.
    pub summary: String,
    /// Wall time (for passes sharing one sweep, the sweep's).
    pub seconds: f64,
    /// Taken from the work directory of a killed run (`--resume`).
    pub resumed: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval: Option<EvalRecord>,
    /// Named series for charts: a distill pass's perplexity and loss curves.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub curves: Vec<Curve>,
}

/// What a distill pass trained and measured (its curves are drawn from this). `microllm
/// distill` writes the same record: it runs a one-pass recipe.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DistillRecord {
    /// The teacher: the pass's `teacher`, else the recipe's model.
    pub teacher: String,
    /// What the student matched: a live teacher, a store, or the labels only.
    pub targets: String,
    /// The loss as the `distill` command spells it (`kl:1,ce:0.1`).
    pub loss: String,
    /// The training data, its SHA-256, and how many windows of `settings.seqlen` it holds.
    pub data: String,
    pub data_sha256: String,
    pub windows: usize,
    /// The trainer's settings as run (the learning-rate schedule, batch, moments, ...).
    pub settings: TrainSettings,
    /// Student block -> teacher block pairs compared by a hidden-state loss.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub layer_map: Vec<(usize, usize)>,
    pub steps: u64,
    /// Training tokens seen.
    pub tokens: u64,
    pub student_parameters: u64,
    pub trainable_parameters: u64,
    /// Seconds of optimizer steps (evaluations and checkpoints excluded).
    pub train_seconds: f64,
    pub tokens_per_second: f64,
    /// The step a killed run resumed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resumed_at_step: Option<u64>,
    /// Held-out perplexity of the student before training (step 0) and during it.
    pub evals: Vec<EvalPoint>,
    /// Every optimizer step: the weighted loss and its terms, learning rate, gradient norm.
    pub curve: Vec<StepRecord>,
}

impl DistillRecord {
    /// What training did, in one line: tokens, time, speed, the student's held-out
    /// perplexity before and after, where a killed run resumed.
    pub fn outcome(&self) -> String {
        let mut s = format!(
            "{} tokens in {:.0} s ({:.1} tokens/s)",
            self.tokens, self.train_seconds, self.tokens_per_second
        );
        if let (Some(first), Some(last)) = (self.evals.first(), self.evals.last())
            && self.evals.len() > 1
        {
            s.push_str(&format!(
                "; student perplexity {:.4} -> {:.4}",
                first.perplexity, last.perplexity
            ));
        }
        if let Some(step) = self.resumed_at_step {
            s.push_str(&format!("; resumed at step {step}"));
        }
        s
    }
}

/// A named series of points, drawn as a line chart in the HTML report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Curve {
    pub name: String,
    pub x_label: String,
    pub y_label: String,
    pub points: Vec<[f64; 2]>,
}

/// One linear layer of the layerwise sweep.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LayerRecord {
    #[serde(flatten)]
    pub record: LinearRecord,
    /// Output tensor type (`Q4_0`, `F16`, ...).
    pub output_type: Option<String>,
}

/// Structured pruning: what was asked and what each remaining block kept.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StructureRecord {
    pub request: Value,
    pub importance: Value,
    pub config_before: Value,
    pub config_after: Value,
    pub dropped_layers: Vec<usize>,
    /// Per original block: ShortGPT block influence (when measured).
    pub block_influence: Option<Vec<f64>>,
    /// Per remaining block: source block, counts and kept indices.
    pub layers: Vec<Value>,
}

/// Parameters and bytes before and after.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SizeRecord {
    pub parameters_before: u64,
    pub parameters_after: u64,
    /// Tensor data of the uncompressed model written the same way (format, dtype, types).
    pub tensor_bytes_before: u64,
    /// Tensor data of the output.
    pub tensor_bytes_after: u64,
    /// The output as written (all files).
    pub file_bytes: u64,
}

/// The written output.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OutputRecord {
    pub path: PathBuf,
    pub format: String,
    /// Bytes on disk.
    pub bytes: u64,
    pub parameters: u64,
    pub bits_per_weight: f64,
    pub quantized_parameters: u64,
    pub quantized_bits_per_weight: f64,
    pub tensors: Vec<TensorPlan>,
    pub write_seconds: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub linear_parameters: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pruned_parameters: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub linear_sparsity: Option<f64>,
}

/// A tensor not written in the type the scheme asks for.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FallbackRecord {
    pub tensor: String,
    #[serde(rename = "type")]
    pub dtype: String,
    pub why: String,
}

/// A gate as evaluated.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GateResult {
    /// `ppl_increase_pct <= 5`.
    pub gate: String,
    pub metric: String,
    pub op: String,
    pub threshold: f64,
    /// The measured value (`None`: not measured, which fails).
    pub value: Option<f64>,
    pub passed: bool,
}
