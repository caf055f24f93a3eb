//! The recipe's types: what a person writes, exactly as serde reads it.
//!
//! Configuration is a closed set of serde types (DESIGN.md, "Expressing stages"): unknown keys
//! are errors (`deny_unknown_fields`), passes are one externally tagged enum (`- quantize:
//! {...}`), and a pass that does not exist yet is simply not a variant. Pass options are
//! plain structs with optional fields rather than enums tagged by `method`: serde buffers an
//! internally tagged enum before reading it, which loses the path of a bad key inside it, and
//! every error here must name its path and line. Which options apply to which method is
//! checked by validation ([`crate::plan`]), which also fills in the defaults.
//!
//! The JSON Schema for editors (`configs/recipe.schema.json`) is generated from these types
//! with schemars; the doc comments below are its descriptions.

use std::collections::BTreeMap;
use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use super::distill::{DistillLoss, DistillStage, MomentStorage};

/// The recipe format version this build reads.
pub const RECIPE_VERSION: u32 = 1;

/// A compression run: a model, data, an ordered list of passes, an output, gates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    /// Recipe format version (1).
    #[serde(default = "version_one")]
    pub version: u32,
    /// A name for reports (default: the recipe file's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The model: a Hugging Face directory, a .gguf file, or a hub repo id
    /// (`owner/name`, `owner/name:FILE.gguf`). Relative paths are relative to the recipe file.
    pub model: String,
    /// Calibration data, for the passes that need it (GPTQ, Wanda, SparseGPT, structured
    /// pruning by activations or block influence).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration: Option<CalibrationData>,
    /// Evaluation data, for `eval` passes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evaluation: Option<EvaluationData>,
    /// What to do, in order.
    pub passes: Vec<Pass>,
    /// Where and how the result is written.
    pub output: Output,
    /// Which report renderings to write, and where.
    #[serde(default, skip_serializing_if = "ReportOptions::is_default")]
    pub report: ReportOptions,
    /// Conditions on the result, e.g. `ppl_increase_pct <= 5`; a run that fails one exits
    /// with status 3.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gates: Vec<String>,
    /// A sweep: every combination of these values is run as its own variant, and one
    /// comparison report is written. Keys are recipe paths (`passes.1.bits`) or option names
    /// that exactly one pass takes (`bits`, `group_size`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub matrix: BTreeMap<String, Vec<serde_json::Value>>,
}

fn version_one() -> u32 {
    RECIPE_VERSION
}

/// Calibration windows drawn from a file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CalibrationData {
    /// A UTF-8 text file, or a .safetensors file with int64 `input_ids`.
    pub data: PathBuf,
    /// Windows to draw.
    #[serde(default = "default_samples")]
    pub samples: usize,
    /// Tokens per window.
    #[serde(default = "default_ctx")]
    pub seqlen: usize,
    /// Seed of the window draw.
    #[serde(default)]
    pub seed: u64,
    /// Accept fewer windows than `samples` when the file is too short (recorded in the
    /// report) instead of failing.
    #[serde(default, skip_serializing_if = "is_false")]
    pub allow_short: bool,
    /// How the calibration forward pass computes the model's products.
    #[serde(default)]
    pub compute: CalibrationCompute,
}

/// How the forward pass over the calibration windows computes (GPTQ's Hessians, AWQ's and
/// SmoothQuant's statistics, Wanda's norms are taken from its activations).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum CalibrationCompute {
    /// Weights a GGUF source stores packed stay in their types, and every linear a pass
    /// quantizes runs on the ggml blocks that hold its codes exactly, with activations
    /// quantized to 8 bits where the type has an integer kernel (what llama.cpp computes
    /// when it runs the file); GPTQ's Hessians take bf16 products where the CPU runs AVX-512
    /// BF16 faster than f32 (AMD's). With it, and the attention and Hessian kernels of the
    /// same change, GPTQ on SmolLM2 at 128 x 512 tokens took half the time it took before on
    /// an AMD EPYC, two thirds on an Intel Xeon (docs/benchmarks.md).
    #[default]
    Int8,
    /// Every product of the forward and the Hessians in f32, on dequantized weights (the
    /// reference implementations' arithmetic).
    F32,
}

fn default_samples() -> usize {
    128
}

fn default_ctx() -> usize {
    512
}

fn default_windows() -> usize {
    24
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// The text on which `eval` passes compare the model with the original.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EvaluationData {
    /// A UTF-8 text file, or a .safetensors file with int64 `input_ids` (pre-tokenized).
    pub data: PathBuf,
    /// Tokens per window.
    #[serde(default = "default_ctx")]
    pub ctx: usize,
    /// Windows scored (the first N of the data).
    #[serde(default = "default_windows")]
    pub windows: usize,
    /// Multiple-choice tasks scored by every eval pass on the original and the model, as
    /// lm-evaluation-harness scores them (gates: `acc_drop`, `acc_norm_drop`, `TASK.acc`...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tasks: Vec<TaskData>,
}

/// A multiple-choice task and its items.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskData {
    /// hellaswag, arc_easy, arc_challenge, piqa, winogrande or mmlu.
    pub task: String,
    /// The items: the Hugging Face dataset's fields as JSON Lines or parquet (or llama.cpp's
    /// HellaSwag text or multiple-choice files). Relative paths are relative to the recipe file.
    pub data: PathBuf,
    /// Score only the first N items.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
    /// Solved examples before each item (the first K of `fewshot_data`, else of the other
    /// items; of the item's subject for MMLU).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub fewshot: usize,
    /// The file few-shot examples come from (a train or dev split).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fewshot_data: Option<PathBuf>,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// One step of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Pass {
    /// Unstructured or N:M pruning of every linear layer, block by block. Followed by a
    /// `quantize` pass, both run in one sweep (pruned weights become the grids' zeros).
    Prune(PruneStage),
    /// Quantization of every linear layer: GPTQ or round-to-nearest codes, block by block, or
    /// llama.cpp's own block types (`method: ggml`).
    Quantize(QuantizeStage),
    /// Removal of whole MLP channels, attention heads and decoder blocks (a smaller dense
    /// model with a rewritten config).
    StructuredPrune(StructuredStage),
    /// Trains the model as it stands to match the original (its teacher), live or from a
    /// stored teacher-logit store: heals a structurally pruned model before it is quantized.
    Distill(DistillStage),
    /// Compares the model as it stands with the original on the evaluation data:
    /// perplexity of both, KL divergence, top-1 agreement, speed.
    Eval(EvalStage),
}

impl Pass {
    /// The pass's key in YAML.
    pub fn key(&self) -> &'static str {
        match self {
            Pass::Prune(_) => "prune",
            Pass::Quantize(_) => "quantize",
            Pass::StructuredPrune(_) => "structured_prune",
            Pass::Distill(_) => "distill",
            Pass::Eval(_) => "eval",
        }
    }
}

/// Pruning method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum PruneMethodName {
    /// |W|: no calibration.
    Magnitude,
    /// |W| times the input norm (Sun et al., 2023).
    #[default]
    Wanda,
    /// OBS saliency with weight updates (Frantar & Alistarh, 2023).
    Sparsegpt,
}

/// Which weights an unstructured score competes with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RankingName {
    Row,
    Layer,
    /// One magnitude threshold over the whole model (magnitude only).
    Global,
}

/// Unstructured or N:M pruning.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PruneStage {
    /// magnitude, wanda (default) or sparsegpt.
    #[serde(default)]
    pub method: PruneMethodName,
    /// Fraction of every linear's weights removed, in [0, 1) (default 0.5 without `pattern`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sparsity: Option<f64>,
    /// Semi-structured N:M instead of `sparsity`: at most N nonzero weights in every M
    /// consecutive ones of a row, e.g. "2:4".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pattern: Option<String>,
    /// row, layer or global (magnitude only) [default: row for wanda and sparsegpt, layer for
    /// magnitude].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ranking: Option<RankingName>,
    /// Dampening of every OBS solve, as a fraction of the mean Hessian diagonal (default
    /// 0.01).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub damp: Option<f64>,
    /// Weight of each calibration window's first token in the q/k/v statistics [default:
    /// seqlen for sparsegpt and joint quantization, 1 for wanda].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sink_weight: Option<f64>,
    /// How unstructured sparsity is spread over the blocks: uniform (default) or owl
    /// (outlier-weighted, measured on the dense model; needs calibration data).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<ScheduleName>,
    /// owl: a weight is an outlier when its Wanda score exceeds this many times its block's
    /// mean score (default 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owl_threshold: Option<f64>,
    /// owl: block sparsities spread over the target +- this (default 0.08).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owl_lambda: Option<f64>,
}

/// How sparsity is spread over the blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ScheduleName {
    /// Every block at the target sparsity.
    Uniform,
    /// OWL (Yin et al., 2023): blocks with more outlier weights pruned less.
    Owl,
}

/// Quantization algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum QuantMethodName {
    /// GPTQ on calibration Hessians, true-sequential.
    #[default]
    Gptq,
    /// Round to nearest, no calibration.
    Rtn,
    /// AWQ's activation-aware scales (searched on the calibration data, folded into the
    /// norms and linears before the inputs), then round to nearest.
    Awq,
    /// AWQ's scales, then GPTQ on the scaled weights.
    #[serde(rename = "awq+gptq")]
    AwqGptq,
    /// llama.cpp's block types by llama.cpp's round-to-nearest, written by the GGUF writer
    /// (`gguf_type`); GGUF output only.
    Ggml,
}

impl QuantMethodName {
    /// Whether GPTQ solves the weights (gptq, awq+gptq).
    pub fn uses_gptq(self) -> bool {
        matches!(self, Self::Gptq | Self::AwqGptq)
    }

    /// Whether AWQ's scales come first (awq, awq+gptq).
    pub fn uses_awq(self) -> bool {
        matches!(self, Self::Awq | Self::AwqGptq)
    }
}

/// A weight-and-activation quantization preset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum SchemeName {
    /// 8-bit symmetric per-channel weights; every linear's input quantized to int8 per token,
    /// dynamically, when the model runs.
    W8a8Int8,
    /// FP8 E4M3 weights, one scale per channel (or per `group_size` columns); every linear's
    /// input quantized to FP8 per token, dynamically, when the model runs.
    W8a8Fp8,
    /// FP8 E4M3 weights, one scale per channel (or per `group_size` columns); activations
    /// stay in full precision.
    W8a16Fp8,
}

impl SchemeName {
    /// The quantization of every linear's input the scheme declares, if any.
    pub fn activations(self) -> Option<microllm_core::ActivationQuant> {
        match self {
            SchemeName::W8a8Int8 => Some(microllm_core::ActivationQuant::Int8PerToken),
            SchemeName::W8a8Fp8 => Some(microllm_core::ActivationQuant::Fp8PerToken),
            SchemeName::W8a16Fp8 => None,
        }
    }

    /// The name recipes spell.
    pub fn name(self) -> &'static str {
        match self {
            SchemeName::W8a8Int8 => "w8a8-int8",
            SchemeName::W8a8Fp8 => "w8a8-fp8",
            SchemeName::W8a16Fp8 => "w8a16-fp8",
        }
    }
}

/// Input columns sharing one scale: a number, or `channel` (one group per output row).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupSize {
    Columns(usize),
    Channel,
}

impl GroupSize {
    /// Reads `32`, `channel` (or `row`, `-1`).
    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "channel" | "row" | "-1" => Ok(GroupSize::Channel),
            n => n
                .parse()
                .map(GroupSize::Columns)
                .map_err(|_| format!("`{text}` is not a group size (a number, or `channel`)")),
        }
    }
}

impl Serialize for GroupSize {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            GroupSize::Columns(n) => s.serialize_u64(*n as u64),
            GroupSize::Channel => s.serialize_str("channel"),
        }
    }
}

impl<'de> Deserialize<'de> for GroupSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = GroupSize;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a group size (a positive number) or `channel`")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<GroupSize, E> {
                Ok(GroupSize::Columns(v as usize))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<GroupSize, E> {
                match v {
                    -1 => Ok(GroupSize::Channel),
                    v if v >= 0 => Ok(GroupSize::Columns(v as usize)),
                    _ => Err(E::custom(format!("{v} is not a group size"))),
                }
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<GroupSize, E> {
                GroupSize::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

impl JsonSchema for GroupSize {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "GroupSize".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "Input columns sharing one scale: a number dividing every linear's \
                            input size, or `channel` (one group per output row).",
            "oneOf": [
                { "type": "integer", "minimum": 1 },
                { "type": "string", "enum": ["channel"] }
            ]
        })
    }
}

/// llama.cpp block types (GGUF).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum GgufTypeName {
    F32,
    F16,
    Q8_0,
    Q5_1,
    Q5_0,
    Q4_1,
    Q4_0,
    #[serde(rename = "q6_k")]
    Q6K,
    #[serde(rename = "q5_k")]
    Q5K,
    #[serde(rename = "q4_k")]
    Q4K,
    #[serde(rename = "q3_k")]
    Q3K,
    #[serde(rename = "q2_k")]
    Q2K,
    /// llama.cpp's Q5_K_M mix: Q5_K, Q6_K for v and down in the blocks llama.cpp picks.
    #[serde(rename = "q5_k_m")]
    Q5KM,
    /// llama.cpp's Q5_K_S mix: Q5_K throughout.
    #[serde(rename = "q5_k_s")]
    Q5KS,
    /// llama.cpp's Q4_K_M mix: Q4_K, Q6_K for v and down in the blocks llama.cpp picks.
    #[serde(rename = "q4_k_m")]
    Q4KM,
    /// llama.cpp's Q4_K_S mix: Q4_K, Q5_K for the first blocks' v and down.
    #[serde(rename = "q4_k_s")]
    Q4KS,
    /// llama.cpp's Q3_K_L mix: Q3_K, Q5_K for v, o and down.
    #[serde(rename = "q3_k_l")]
    Q3KL,
    /// llama.cpp's Q3_K_M mix: Q3_K, Q4_K / Q5_K for v, o and down.
    #[serde(rename = "q3_k_m")]
    Q3KM,
    /// llama.cpp's Q3_K_S mix: Q3_K throughout.
    #[serde(rename = "q3_k_s")]
    Q3KS,
    /// llama.cpp's IQ4_XS: 4.25 bits per weight on a non-linear grid; Q5_K for the first
    /// eighth of the down projections without an importance matrix, IQ4_NL for rows that are
    /// not a multiple of 256. As a per-tensor type, IQ4_XS alone.
    #[serde(rename = "iq4_xs")]
    Iq4Xs,
    /// llama.cpp's IQ4_NL: IQ4_XS's grid in blocks of 32 (4.5 bits per weight), with the same
    /// rules. As a per-tensor type, IQ4_NL alone.
    #[serde(rename = "iq4_nl")]
    Iq4Nl,
}

impl GgufTypeName {
    /// Every type's name, as recipes and `--gguf-type` spell it.
    pub const NAMES: [&'static str; 21] = [
        "f32", "f16", "q8_0", "q5_1", "q5_0", "q4_1", "q4_0", "q6_k", "q5_k", "q4_k", "q3_k",
        "q2_k", "q5_k_m", "q5_k_s", "q4_k_m", "q4_k_s", "q3_k_l", "q3_k_m", "q3_k_s", "iq4_xs",
        "iq4_nl",
    ];
}

impl std::str::FromStr for GgufTypeName {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, String> {
        serde_json::from_value(serde_json::Value::String(name.to_string()))
            .map_err(|_| format!("`{name}` is not a GGUF type ({})", Self::NAMES.join(", ")))
    }
}

/// Quantization of the linear layers.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct QuantizeStage {
    /// gptq (default), rtn, or ggml (llama.cpp's block types).
    #[serde(default)]
    pub method: QuantMethodName,
    /// Bits per weight code, 2-8 (gptq, rtn; default 4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bits: Option<u8>,
    /// gptq, rtn: input columns per scale [default: 32 for GGUF output, 128 otherwise, or the
    /// largest of 64/32/16 dividing every row].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_size: Option<GroupSize>,
    /// gptq, rtn: symmetric grids (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub symmetric: Option<bool>,
    /// gptq: process columns by decreasing Hessian diagonal (default false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act_order: Option<bool>,
    /// gptq: dampening as a fraction of the Hessian's mean diagonal (default 0.01).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub damp: Option<f64>,
    /// gptq: weight of each calibration window's first token in the q/k/v Hessians
    /// [default: the calibration seqlen; 1 = plain GPTQ].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sink_weight: Option<f64>,
    /// gptq with act_order: fix the groups up front, so each holds contiguous columns (no
    /// g_idx; compressed-tensors' actorder "static"). Default: true for GGUF (required) and
    /// compressed-tensors output, false otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub static_groups: Option<bool>,
    /// gptq: search each group's clipping range (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clip_search: Option<bool>,
    /// gptq, rtn: a weight-and-activation preset instead of `bits`/`group_size`/`symmetric`:
    /// `w8a8-int8` (8-bit symmetric per-channel weights, activations quantized to int8 per
    /// token at run time; written as compressed-tensors `int-quantized`, vLLM's W8A8),
    /// `w8a8-fp8` (FP8 E4M3 weights per channel, or per `group_size` columns, and FP8
    /// activations per token; `float-quantized`), `w8a16-fp8` (FP8 weights only;
    /// `naive-quantized`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<SchemeName>,
    /// gptq, rtn with an activation-quantizing scheme (w8a8-int8, w8a8-fp8): SmoothQuant's
    /// migration strength alpha
    /// in (0, 1] (activation outliers moved into the weights by per-channel scales folded into
    /// the norms and producing linears; 0.5 in the paper, 0.8 in llm-compressor's examples).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smoothquant: Option<f64>,
    /// awq, awq+gptq: scale exponents tried, 0, 1/n, ..., (n-1)/n (default 20).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub awq_grid: Option<u32>,
    /// awq, awq+gptq: search each row-group's clipping range after scaling (default true for
    /// awq, false for awq+gptq, whose GPTQ searches its own ranges).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub awq_clip: Option<bool>,
    /// ggml: the block type or llama.cpp mix (q4_k, q8_0, q4_k_m, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gguf_type: Option<GgufTypeName>,
    /// ggml: fit k-quant blocks with an importance matrix (llama.cpp's imatrix) measured on
    /// the calibration data (default false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub importance_matrix: Option<bool>,
    /// ggml: the importance matrix read from this file instead of measured: llama-imatrix's
    /// output (GGUF, or the legacy .dat) or one microllm saved. Needs no calibration data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub importance_matrix_file: Option<PathBuf>,
    /// ggml: also write the measured importance matrix here, in llama-imatrix's GGUF layout
    /// (llama-quantize --imatrix takes it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub save_importance_matrix: Option<PathBuf>,
}

/// How structured pruning scores channels and heads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ImportanceName {
    /// Calibration activations times the output weights.
    #[default]
    Activation,
    /// Weights only, no calibration.
    Magnitude,
}

/// How heads are removed under grouped-query attention.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum HeadModeName {
    /// Keep every KV head and the same number of query heads in each group.
    #[default]
    PerGroup,
    /// Remove whole groups: a KV head with all its query heads.
    KvGroups,
}

/// Structured pruning: channels, heads, blocks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StructuredStage {
    /// Fraction of MLP channels kept in every block, in (0, 1].
    #[serde(default = "one")]
    pub mlp_keep: f64,
    /// Round the kept channel count to a multiple of this.
    #[serde(default = "thirty_two")]
    pub mlp_multiple: usize,
    /// Fraction of query heads kept in every block, in (0, 1].
    #[serde(default = "one")]
    pub heads_keep: f64,
    /// per-group (default) or kv-groups.
    #[serde(default)]
    pub head_mode: HeadModeName,
    /// Decoder blocks removed (least ShortGPT block influence).
    #[serde(default)]
    pub drop_layers: usize,
    /// activation (default) or magnitude.
    #[serde(default)]
    pub importance: ImportanceName,
}

impl Default for StructuredStage {
    fn default() -> Self {
        Self {
            mlp_keep: 1.0,
            mlp_multiple: 32,
            heads_keep: 1.0,
            head_mode: HeadModeName::PerGroup,
            drop_layers: 0,
            importance: ImportanceName::Activation,
        }
    }
}

fn one() -> f64 {
    1.0
}

fn thirty_two() -> usize {
    32
}

/// An evaluation against the original model.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EvalStage {
    /// Score only this many windows (default: `evaluation.windows`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub windows: Option<usize>,
}

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum OutputFormat {
    /// One GGUF file (llama.cpp).
    Gguf,
    /// A Hugging Face directory of dense weights in `dtype`.
    Safetensors,
    /// A GPTQ (v1) checkpoint directory (quantized runs).
    Gptq,
    /// A compressed-tensors directory: `pack-quantized` for quantized runs, sparse bitmask for
    /// pruned ones.
    CompressedTensors,
}

/// Floating-point dtype of dense output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DtypeName {
    F32,
    F16,
    Bf16,
}

/// Where and how the model is written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Output {
    /// Output file (GGUF) or directory. Relative paths are relative to the recipe file.
    pub path: PathBuf,
    /// [default: gguf when `path` ends in .gguf, else safetensors].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<OutputFormat>,
    /// safetensors: weight dtype [default: the source's f32/f16/bf16, else f16].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dtype: Option<DtypeName>,
    /// gguf: type of the matrices no quantize pass writes (default f16).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gguf_type: Option<GgufTypeName>,
    /// gguf: per-tensor types over `gguf_type` (or a ggml pass's), as llama-quantize's
    /// `--tensor-type`: `PATTERN=TYPE`, PATTERN a regular expression searched for in the GGUF
    /// tensor names (`blk.3.attn_v.weight`), the first that matches wins, e.g.
    /// `attn_v=q8_0`, `blk\.(0|1)\.ffn_down=q6_k`. Not for matrices written from GPTQ/RTN codes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tensor_types: Vec<String>,
    /// gguf: choose each block linear's type so the file's tensor data averages this many
    /// bits per weight, with the least measured error (every type the rows fit is tried; the
    /// errors are weighted by the importance matrix when the ggml pass has one). Embeddings and
    /// the output head keep `gguf_type`'s choice. Not with GPTQ/RTN codes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_bpw: Option<f64>,
    /// gguf: as `target_bpw`, for a size of tensor data (`95MB`, `1GB`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_size: Option<String>,
    /// Replace an existing output.
    #[serde(default, skip_serializing_if = "is_false")]
    pub overwrite: bool,
}

/// A report rendering.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum ReportFormat {
    Json,
    Md,
    Html,
}

impl ReportFormat {
    /// The file extension of the rendering (`STEM.report.EXT`).
    pub fn extension(self) -> &'static str {
        match self {
            ReportFormat::Json => "json",
            ReportFormat::Md => "md",
            ReportFormat::Html => "html",
        }
    }
}

/// Report renderings and their place.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReportOptions {
    /// Path stem of the report files (`STEM.report.json`, ...) [default: the output path, less
    /// a `.gguf` extension].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// Renderings written (default: json, md, html).
    #[serde(default = "all_formats")]
    pub formats: Vec<ReportFormat>,
}

fn all_formats() -> Vec<ReportFormat> {
    vec![ReportFormat::Json, ReportFormat::Md, ReportFormat::Html]
}

impl Default for ReportOptions {
    fn default() -> Self {
        Self {
            path: None,
            formats: all_formats(),
        }
    }
}

impl ReportOptions {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// The JSON Schema of [`Recipe`], as committed in `configs/recipe.schema.json`.
pub fn json_schema() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(Recipe)).expect("schemas serialize")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `GgufTypeName::NAMES` lists every type exactly as serde spells it, so `--gguf-type`
    /// offers what recipes take, no more and no fewer.
    #[test]
    fn gguf_type_names_are_every_variant_as_spelled_in_recipes() {
        let schema = serde_json::to_value(schemars::schema_for!(GgufTypeName)).unwrap();
        // Documented variants are `const` entries of `oneOf`, the rest one `enum` entry.
        let mut spelled: Vec<String> = Vec::new();
        for entry in schema["oneOf"].as_array().unwrap() {
            match (&entry["const"], entry["enum"].as_array()) {
                (serde_json::Value::String(name), _) => spelled.push(name.clone()),
                (_, Some(names)) => {
                    spelled.extend(names.iter().map(|n| n.to_string().replace('"', "")))
                }
                _ => panic!("unexpected schema entry {entry}"),
            }
        }
        spelled.sort();
        let mut listed: Vec<String> = GgufTypeName::NAMES.iter().map(|n| n.to_string()).collect();
        listed.sort();
        assert_eq!(spelled, listed);
        for name in GgufTypeName::NAMES {
            let t: GgufTypeName = name.parse().unwrap();
            assert_eq!(serde_json::to_value(t).unwrap(), name);
        }
        assert!(
            "q4_km"
                .parse::<GgufTypeName>()
                .unwrap_err()
                .contains("q4_k_m")
        );
    }
}
