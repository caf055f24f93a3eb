//! The steps of a plan and the checks that build them (see the module above for the order).

use std::path::PathBuf;

use microllm_core::{ModelConfig, TensorSource};
use microllm_io::Checkpoint;
use microllm_io::gguf::GgufType;
use microllm_io::gguf::{GgufTypes, ImportanceMatrix, KQuantMix, SizeTarget, TensorTypeRule};
use microllm_io::quantized::QuantMethod;
use microllm_io::quantized::sparse::SparseFormat;
use microllm_io::write::OutDtype;
use microllm_prune::Schedule;
use microllm_prune::structured::{
    HeadMode, PrunedSource, StructuredPlan, StructuredSpec, Targets, targets,
};
use microllm_quant::GptqOptions;
use serde_json::Value;

use super::distill::{check_teacher, distill_step};
use super::layerwise::layerwise_step;
use super::order::{Order, check_order};
use super::output::output_plan;
use super::tensors::{self, TensorPlan};
use super::{Estimate, Plan, PlanOptions, pass_path};
use crate::recipe::{
    DtypeName, Gate, GgufTypeName, HeadModeName, ImportanceName, OutputFormat, Pass,
    PruneMethodName, PruneStage, QuantMethodName, QuantizeStage, Recipe, RecipeDoc, RecipeError,
    RecipeResult, StructuredStage,
};
use microllm_engine::BlockSpec;
use microllm_engine::structured::ImportanceMetric;

/// Structured pruning, first of all passes.
#[derive(Debug, Clone)]
pub struct StructuredStep {
    pub pass: usize,
    pub spec: StructuredSpec,
    pub targets: Targets,
    pub metric: ImportanceMetric,
    pub needs_calibration: bool,
    /// Block influence is measured (blocks are dropped).
    pub block_influence: bool,
}

/// One layerwise sweep: a prune stage, a quantize stage, or both.
#[derive(Debug, Clone)]
pub struct LayerwiseStep {
    /// The recipe passes it runs.
    pub passes: Vec<usize>,
    /// Quantization of every linear's input when the output runs (W8A8 schemes).
    pub activations: Option<microllm_core::ActivationQuant>,
    pub spec: BlockSpec,
    /// Unstructured global magnitude ranking: the threshold is found at run time over the
    /// model's linears for this sparsity.
    pub global_sparsity: Option<f64>,
    /// The settings as recorded in the report's `scheme`.
    pub scheme_record: Value,
    pub gptq: Option<GptqOptions>,
    /// Act-order groups in processing order (GPTQ / compressed-tensors `g_idx`).
    pub scattered_groups: bool,
    /// How unstructured sparsity is spread over the blocks.
    pub schedule: Schedule,
}

impl LayerwiseStep {
    /// Whether the sweep needs calibration windows: for its statistics, or (OWL) to measure
    /// the blocks' outlier ratios first.
    pub fn needs_calibration(&self) -> bool {
        self.spec.calibrated() || matches!(self.schedule, Schedule::Owl { .. })
    }
}

/// An eval pass.
#[derive(Debug, Clone)]
pub struct EvalStep {
    pub pass: usize,
    pub windows: usize,
    /// Measures the written output (after every compression pass) rather than an
    /// intermediate model in memory.
    pub of_output: bool,
}

/// How the output is written.
#[derive(Debug, Clone, PartialEq)]
pub enum Writer {
    /// GGUF; `codes`: quantized linears copied from the sweep's codes exactly; `importance`:
    /// the other matrices' k-quant blocks fitted with an importance matrix, measured on the
    /// calibration windows or read from a file.
    Gguf { codes: bool, importance: bool },
    /// A Hugging Face directory of dense weights.
    Safetensors(OutDtype),
    /// GPTQ or compressed-tensors (`pack-quantized`, `int-quantized`, ...); with the sparsity
    /// structure (`2:4`, `unstructured`, ...) of a pruned and quantized compressed-tensors
    /// model, declared in `sparsity_config` with the weights stored `dense`.
    Packed(QuantMethod, Option<String>),
    /// compressed-tensors sparse bitmask.
    Sparse(SparseFormat, String),
}

/// The output: where, how, and every tensor's type.
#[derive(Debug, Clone)]
pub struct OutputPlan {
    pub path: PathBuf,
    pub format: OutputFormat,
    pub writer: Writer,
    pub tensors: Vec<TensorPlan>,
    /// GGUF: the types of matrices not written from codes.
    pub dominant: GgufTypes,
    /// GGUF: per-tensor types over `dominant` (`output.tensor_types`).
    pub tensor_types: Vec<TensorTypeRule>,
    /// GGUF: the size the block linears' types are chosen for when the file is written.
    pub target: Option<SizeTarget>,
    pub overwrite: bool,
    /// The model's configuration after the passes (structured pruning changes it).
    pub config: ModelConfig,
    /// GGUF: the importance matrix read from the recipe's file (checked against the model)
    /// rather than measured.
    pub importance_read: Option<ImportanceMatrix>,
    /// GGUF: where to save the measured importance matrix, if asked.
    pub save_importance: Option<PathBuf>,
}

pub(super) fn err(path: impl Into<String>, msg: impl Into<String>) -> RecipeError {
    RecipeError::at(path, msg)
}

/// What can be known about the data and the output without running: files that exist,
/// window lengths a model can take, an output path. `recipe validate` then passes only
/// recipes that can run.
fn check_data(recipe: &Recipe, cfg: &ModelConfig, opts: PlanOptions) -> RecipeResult<()> {
    let file = |key: &str, path: &std::path::Path| {
        if opts.data_optional || path.is_file() {
            Ok(())
        } else if path.exists() {
            Err(err(key, format!("`{}` is not a file", path.display())))
        } else {
            Err(err(key, format!("`{}` does not exist", path.display())))
        }
    };
    let context = cfg.max_position_embeddings;
    let window = |key: &str, n: usize| {
        if n < 2 {
            Err(err(
                key,
                format!("{n} tokens: a window needs at least 2 (one to score)"),
            ))
        } else if n > context {
            Err(err(
                key,
                format!("{n} tokens is beyond the model's context of {context} positions"),
            ))
        } else {
            Ok(())
        }
    };
    if let Some(c) = &recipe.calibration {
        file("calibration.data", &c.data)?;
        window("calibration.seqlen", c.seqlen)?;
        if c.samples == 0 {
            return Err(err("calibration.samples", "at least 1 window is needed"));
        }
    }
    if let Some(e) = &recipe.evaluation {
        file("evaluation.data", &e.data)?;
        window("evaluation.ctx", e.ctx)?;
        if e.windows == 0 {
            return Err(err("evaluation.windows", "at least 1 window is needed"));
        }
    }
    if recipe.output.path.as_os_str().is_empty() {
        return Err(err("output.path", "the output path is empty"));
    }
    Ok(())
}

/// An error at `path` (absent from the file) located at `near`.
pub(super) fn err_near(path: &str, near: &str, msg: impl Into<String>) -> RecipeError {
    let mut e = err(path, msg);
    e.near = Some(near.to_string());
    e
}

pub(super) fn build(
    _doc: &RecipeDoc,
    recipe: Recipe,
    model: Checkpoint,
    opts: PlanOptions,
) -> RecipeResult<Plan> {
    if recipe.passes.is_empty() {
        return Err(err("passes", "a recipe needs at least one pass"));
    }
    let order = check_order(&recipe.passes)?;
    let cfg = model.config.clone();
    let format = output_format(&recipe);
    let gguf = format == OutputFormat::Gguf;
    let mut notes = Vec::new();

    // Structured pruning first: its shapes are what the later passes see.
    let structured = match order.structured {
        Some(i) => Some(structured_step(&recipe, i, &cfg)?),
        None => None,
    };
    let mut distill = match order.distill {
        Some(i) => Some(distill_step(&recipe, i)?),
        None => None,
    };
    let self_taught = |s: &crate::recipe::DistillStage| {
        s.teacher.is_none() && s.logits.is_none() && (s.loss.uses_teacher() || s.loss.uses_hidden())
    };
    if distill.as_ref().is_some_and(|d| self_taught(&d.stage)) && structured.is_none() {
        notes.push(
            "the distill pass's student starts as the teacher itself (no structured_prune \
             before it): distillation then only fine-tunes it"
                .into(),
        );
    }
    let shapes = structured
        .as_ref()
        .map(|s| StructuredPlan::shapes_only(&cfg, &s.targets));
    let shaped = match &shapes {
        Some(p) => Some(PrunedSource::new(model.tensors.as_ref(), p).map_err(|e| {
            err(
                pass_path(order.structured.unwrap_or(0), &recipe.passes[0]),
                e.to_string(),
            )
        })?),
        None => None,
    };
    let (src, cfg_now): (&dyn TensorSource, ModelConfig) = match (&shaped, &shapes) {
        (Some(s), Some(p)) => (s, p.config.clone()),
        _ => (model.tensors.as_ref(), cfg.clone()),
    };
    let linears = tensors::linear_infos(&cfg_now, src).map_err(|e| err("model", e.to_string()))?;
    if let Some(d) = distill.as_mut() {
        check_teacher(d, &model, &cfg_now)?;
    }

    let prune = order
        .prune
        .map(|i| (i, stage::<PruneStage>(&recipe.passes[i])));
    let quant = order
        .quantize
        .map(|i| (i, stage::<QuantizeStage>(&recipe.passes[i])));
    let ggml = quant
        .as_ref()
        .filter(|(_, q)| q.method == QuantMethodName::Ggml);
    let seqlen = recipe.calibration.as_ref().map_or(512, |c| c.seqlen);
    let layerwise = layerwise_step(
        &recipe,
        prune.as_ref().map(|(i, p)| (*i, *p)),
        quant
            .as_ref()
            .filter(|(_, q)| q.method != QuantMethodName::Ggml)
            .map(|(i, q)| (*i, *q)),
        &linears,
        gguf,
        matches!(format, OutputFormat::Gguf | OutputFormat::CompressedTensors),
        seqlen,
        &mut notes,
    )?;

    // Calibration and evaluation data where needed.
    let importance = ggml.is_some_and(|(_, q)| {
        q.importance_matrix == Some(true) && q.importance_matrix_file.is_none()
    });
    let needs_calib = structured.as_ref().is_some_and(|s| s.needs_calibration)
        || layerwise
            .as_ref()
            .is_some_and(LayerwiseStep::needs_calibration)
        || importance;
    if needs_calib && recipe.calibration.is_none() {
        let (i, why) = calibration_reason(
            &recipe,
            structured.as_ref(),
            layerwise.as_ref(),
            ggml.map(|(i, _)| *i),
        );
        if opts.data_optional {
            notes.push(format!(
                "running needs calibration data ({why}): --calib FILE"
            ));
        } else {
            return Err(err_near(
                "calibration.data",
                &pass_path(i, &recipe.passes[i]),
                format!(
                    "the {} pass needs calibration data ({why}): add `calibration: {{data: FILE}}` \
                 (text, or .safetensors with int64 input_ids; --calib FILE)",
                    recipe.passes[i].key()
                ),
            ));
        }
    }
    check_data(&recipe, &cfg, opts)?;
    let tasks = super::tasks::task_steps(&recipe, opts.data_optional)?;
    let evals = eval_steps(&recipe, &order)?;
    if let (Some(e), None, false) = (evals.first(), &recipe.evaluation, opts.data_optional) {
        return Err(err_near(
            "evaluation.data",
            &pass_path(e.pass, &recipe.passes[e.pass]),
            "an eval pass needs evaluation data: add `evaluation: {data: FILE}` (--eval FILE)",
        ));
    }

    let output = output_plan(
        &recipe,
        format,
        &cfg_now,
        src,
        structured.is_some(),
        prune.as_ref().map(|(_, p)| *p),
        layerwise.as_ref(),
        ggml.map(|(i, q)| (*i, *q)),
        opts,
        &mut notes,
    )?;

    if let (Some(d), None, Writer::Safetensors(dtype)) =
        (distill.as_mut(), &layerwise, &output.writer)
    {
        d.output_dtype = Some(*dtype);
    }
    let gates = gates(&recipe, &evals, distill.is_some(), &tasks)?;
    let estimate = Estimate::of(
        &recipe,
        &cfg,
        &linears,
        &output,
        layerwise.as_ref(),
        distill.as_ref(),
        &evals,
    );
    let method = method_name(
        structured.is_some(),
        distill.is_some(),
        prune.as_ref().map(|(_, p)| *p),
        quant.as_ref().map(|(_, q)| *q),
    );
    let report_stem = recipe
        .report
        .path
        .clone()
        .unwrap_or_else(|| report_stem(&output.path));
    let report_formats = recipe.report.formats.clone();
    let recipe_value = serde_json::to_value(&recipe).expect("recipes serialize");
    drop(shaped);
    Ok(Plan {
        recipe,
        recipe_value,
        model,
        structured,
        distill,
        layerwise,
        evals,
        tasks,
        output,
        gates,
        notes,
        estimate,
        report_stem,
        report_formats,
        method,
    })
}

/// `OUT` for a directory, `NAME` for `NAME.gguf`: reports are `STEM.report.json` and so on.
pub fn report_stem(out: &std::path::Path) -> PathBuf {
    match out.extension() {
        Some(e) if e.eq_ignore_ascii_case("gguf") => out.with_extension(""),
        _ => out.to_path_buf(),
    }
}

fn stage<T: Clone>(pass: &Pass) -> &T
where
    Pass: AsStage<T>,
{
    pass.as_stage()
}

trait AsStage<T> {
    fn as_stage(&self) -> &T;
}

impl AsStage<PruneStage> for Pass {
    fn as_stage(&self) -> &PruneStage {
        match self {
            Pass::Prune(p) => p,
            _ => unreachable!("checked by check_order"),
        }
    }
}

impl AsStage<QuantizeStage> for Pass {
    fn as_stage(&self) -> &QuantizeStage {
        match self {
            Pass::Quantize(q) => q,
            _ => unreachable!("checked by check_order"),
        }
    }
}

fn output_format(recipe: &Recipe) -> OutputFormat {
    recipe.output.format.unwrap_or_else(|| {
        let gguf_ext = recipe
            .output
            .path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("gguf"));
        if gguf_ext {
            OutputFormat::Gguf
        } else {
            OutputFormat::Safetensors
        }
    })
}

fn structured_step(recipe: &Recipe, i: usize, cfg: &ModelConfig) -> RecipeResult<StructuredStep> {
    let Pass::StructuredPrune(s) = &recipe.passes[i] else {
        unreachable!("checked by check_order")
    };
    let base = pass_path(i, &recipe.passes[i]);
    let spec = structured_spec(s);
    let t = targets(&spec, cfg).map_err(|e| {
        // The library names the flag; point at the matching key.
        let msg = e.to_string();
        let key = [
            "mlp_keep",
            "heads_keep",
            "drop_layers",
            "mlp_multiple",
            "head_mode",
        ]
        .into_iter()
        .find(|k| msg.starts_with(&format!("--{}", k.replace('_', "-"))))
        .unwrap_or("heads_keep");
        err(format!("{base}.{key}"), msg)
    })?;
    let metric = match s.importance {
        ImportanceName::Activation => ImportanceMetric::Activation,
        ImportanceName::Magnitude => ImportanceMetric::Magnitude,
    };
    let drops = t.layers < cfg.num_layers;
    let channels_or_heads = t.channels < cfg.intermediate_size || t.heads < cfg.num_heads;
    Ok(StructuredStep {
        pass: i,
        spec,
        targets: t,
        metric,
        needs_calibration: drops || (channels_or_heads && metric == ImportanceMetric::Activation),
        block_influence: drops,
    })
}

pub(crate) fn structured_spec(s: &StructuredStage) -> StructuredSpec {
    StructuredSpec {
        mlp_keep: s.mlp_keep,
        mlp_multiple: s.mlp_multiple,
        heads_keep: s.heads_keep,
        head_mode: match s.head_mode {
            HeadModeName::PerGroup => HeadMode::PerGroup,
            HeadModeName::KvGroups => HeadMode::KvGroups,
        },
        drop_layers: s.drop_layers,
    }
}

fn calibration_reason(
    recipe: &Recipe,
    structured: Option<&StructuredStep>,
    layerwise: Option<&LayerwiseStep>,
    ggml: Option<usize>,
) -> (usize, &'static str) {
    if let Some(s) = structured.filter(|s| s.needs_calibration) {
        return (
            s.pass,
            if s.block_influence {
                "drop_layers measures block influence"
            } else {
                "importance: activation; or use importance: magnitude"
            },
        );
    }
    let Some(l) = layerwise.filter(|l| l.needs_calibration()) else {
        let i = ggml.expect("some step needs calibration");
        return (i, "importance_matrix is measured on calibration windows");
    };
    let i = l.passes[0];
    let why = match &recipe.passes[i] {
        Pass::Prune(_) if !l.spec.calibrated() => {
            "schedule owl measures the blocks' outlier ratios on calibration windows"
        }
        Pass::Prune(p) if p.method != PruneMethodName::Magnitude => {
            "Wanda and SparseGPT score weights by their inputs; magnitude pruning alone does not"
        }
        Pass::Prune(_) => "pruning with quantization runs GPTQ with the mask fixed",
        _ if l.spec.awq.is_some() => {
            "AWQ scales each input by its calibration activations; or use method rtn"
        }
        _ => "GPTQ needs calibration data; or use method rtn",
    };
    (i, why)
}

fn eval_steps(recipe: &Recipe, order: &Order) -> RecipeResult<Vec<EvalStep>> {
    let default_windows = recipe.evaluation.as_ref().map_or(24, |e| e.windows);
    let mut out = Vec::new();
    for (i, p) in recipe.passes.iter().enumerate() {
        if let Pass::Eval(e) = p {
            let windows = e.windows.unwrap_or(default_windows);
            if windows == 0 {
                return Err(err(
                    format!("{}.windows", pass_path(i, p)),
                    "at least 1 window",
                ));
            }
            // After the last compression pass: the written output.
            let of_output = order.last_compression.is_none_or(|last| i > last);
            out.push(EvalStep {
                pass: i,
                windows,
                of_output,
            });
        }
    }
    Ok(out)
}

fn gates(
    recipe: &Recipe,
    evals: &[EvalStep],
    distill: bool,
    tasks: &[super::tasks::TaskStep],
) -> RecipeResult<Vec<Gate>> {
    let final_eval = evals.iter().any(|e| e.of_output);
    recipe
        .gates
        .iter()
        .enumerate()
        .map(|(i, text)| {
            let path = format!("gates[{i}]");
            let g = Gate::parse(text).map_err(|m| err(&path, m))?;
            if g.needs_eval() && !final_eval {
                return Err(err(
                    &path,
                    format!(
                        "`{}` is measured by an eval pass of the output: add `- eval: {{}}` \
                         after the last compression pass (and `evaluation: {{data: FILE}}`)",
                        g.metric
                    ),
                ));
            }
            let distill_metric = crate::recipe::gate::DISTILL_METRICS.contains(&g.metric.as_str());
            if distill_metric && !distill {
                return Err(err(
                    &path,
                    format!(
                        "`{}` is measured by a distill pass; the recipe has none",
                        g.metric
                    ),
                ));
            }
            if let Some(task) = g.task_metric()
                && !tasks
                    .iter()
                    .any(|t| task.is_none_or(|name| t.task.name() == name))
            {
                return Err(err(
                    &path,
                    format!(
                        "`{}` is a task accuracy: add the task to `evaluation.tasks` \
                         (`- {{task: {}, data: FILE}}`)",
                        g.metric,
                        task.unwrap_or("hellaswag")
                    ),
                ));
            }
            if g.metric == "distill_ppl" && recipe.evaluation.is_none() {
                return Err(err(
                    &path,
                    "`distill_ppl` is the student's held-out perplexity: add `evaluation: \
                     {data: FILE}`",
                ));
            }
            Ok(g)
        })
        .collect()
}

fn method_name(
    structured: bool,
    distill: bool,
    prune: Option<&PruneStage>,
    quant: Option<&QuantizeStage>,
) -> String {
    let mut parts: Vec<String> = Vec::new();
    if structured {
        parts.push("structured".into());
    }
    if distill {
        parts.push("distill".into());
    }
    if let Some(p) = prune {
        parts.push(name_of(p.method));
    }
    match quant {
        Some(q) if q.method == QuantMethodName::Ggml => parts.push("ggml-rtn".into()),
        // With pruning the report's `scheme.quantize` says how it was quantized.
        Some(q) if prune.is_none() => parts.push(name_of(q.method)),
        _ => {}
    }
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join("+")
    }
}

fn name_of<T: serde::Serialize>(v: T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_default()
}

/// The block types a recipe's GGUF type name means: one type for every matrix, or one of
/// llama.cpp's mixes.
pub fn gguf_types(t: GgufTypeName) -> GgufTypes {
    use KQuantMix as M;
    let mix = match t {
        GgufTypeName::Q5KM => M::Q5KM,
        GgufTypeName::Q5KS => M::Q5KS,
        GgufTypeName::Q4KM => M::Q4KM,
        GgufTypeName::Q4KS => M::Q4KS,
        GgufTypeName::Q3KL => M::Q3KL,
        GgufTypeName::Q3KM => M::Q3KM,
        GgufTypeName::Q3KS => M::Q3KS,
        GgufTypeName::Iq4Xs => M::Iq4Xs,
        GgufTypeName::Iq4Nl => M::Iq4Nl,
        pure => return GgufTypes::Pure(pure_type(pure)),
    };
    GgufTypes::Mix(mix)
}

/// Parses a byte size such as `2GB`, `500MB`, `64KB` or `1000` (decimal units).
pub fn parse_size(text: &str) -> std::result::Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("`{text}` is not a size like 2GB, 500MB or 64KB"))?;
    let scale = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => return Err(format!("unknown unit in `{text}` (use B, KB, MB or GB)")),
    };
    match n.checked_mul(scale) {
        Some(0) => Err("a size must be positive".into()),
        Some(bytes) => Ok(bytes),
        None => Err(format!("`{text}` is too large")),
    }
}

/// `PATTERN=TYPE` rules (llama-quantize's `--tensor-type`) as typed rules; TYPE is one block
/// type, not a mix.
pub fn tensor_type_rules(specs: &[String]) -> std::result::Result<Vec<TensorTypeRule>, String> {
    specs
        .iter()
        .map(|spec| {
            let (pattern, name) = spec
                .split_once('=')
                .filter(|(p, t)| !p.is_empty() && !t.is_empty())
                .ok_or_else(|| format!("`{spec}` is not PATTERN=TYPE (e.g. attn_v=q8_0)"))?;
            let ty: GgufTypeName = name.to_lowercase().parse()?;
            if matches!(gguf_types(ty), GgufTypes::Mix(m) if !m.names_a_type()) {
                return Err(format!(
                    "`{spec}`: {name} is one of llama.cpp's mixes; a tensor takes one block type"
                ));
            }
            TensorTypeRule::new(pattern, pure_type(ty)).map_err(|e| e.to_string())
        })
        .collect()
}

fn pure_type(t: GgufTypeName) -> GgufType {
    match t {
        GgufTypeName::F32 => GgufType::F32,
        GgufTypeName::F16 => GgufType::F16,
        GgufTypeName::Q8_0 => GgufType::Q8_0,
        GgufTypeName::Q5_1 => GgufType::Q5_1,
        GgufTypeName::Q5_0 => GgufType::Q5_0,
        GgufTypeName::Q4_1 => GgufType::Q4_1,
        GgufTypeName::Q4_0 => GgufType::Q4_0,
        GgufTypeName::Q6K => GgufType::Q6K,
        GgufTypeName::Q5K => GgufType::Q5K,
        GgufTypeName::Q4K => GgufType::Q4K,
        GgufTypeName::Q3K => GgufType::Q3K,
        GgufTypeName::Q2K => GgufType::Q2K,
        mix => gguf_types(mix).base(),
    }
}

pub(crate) fn out_dtype(d: DtypeName) -> OutDtype {
    match d {
        DtypeName::F32 => OutDtype::F32,
        DtypeName::F16 => OutDtype::F16,
        DtypeName::Bf16 => OutDtype::BF16,
    }
}

#[cfg(test)]
mod size_tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("2GB"), Ok(2_000_000_000));
        assert_eq!(parse_size("64kb"), Ok(64_000));
        assert_eq!(parse_size("123"), Ok(123));
        assert!(parse_size("0").is_err());
        assert!(parse_size("12XB").is_err());
    }
}
