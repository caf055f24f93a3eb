//! The steps of a plan and the checks that build them (see the module above for the order).

use std::path::PathBuf;

use candle_core::quantized::GgmlDType;
use microllm_core::{ModelConfig, TensorInfo, TensorSource};
use microllm_io::Checkpoint;
use microllm_io::quantized::QuantMethod;
use microllm_io::quantized::sparse::SparseFormat;
use microllm_io::write::OutDtype;
use microllm_prune::structured::{
    HeadMode, PrunedSource, StructuredPlan, StructuredSpec, Targets, targets,
};
use microllm_prune::{PruneMethod, Ranking, SparsityPattern};
use microllm_quant::{ClipSearch, GptqOptions, QuantScheme};
use serde_json::{Value, json};

use super::tensors::{self, TensorPlan};
use super::{Estimate, Plan, PlanOptions, pass_path};
use crate::block_quant::{BlockMethod, BlockSpec};
use crate::linear_step::PruneSpec;
use crate::recipe::{
    DtypeName, Gate, GgufTypeName, HeadModeName, ImportanceName, OutputFormat, Pass,
    PruneMethodName, PruneStage, QuantMethodName, QuantizeStage, RankingName, Recipe, RecipeDoc,
    RecipeError, RecipeResult, StructuredStage,
};
use crate::structured::ImportanceMetric;

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
    pub spec: BlockSpec,
    pub calibrated: bool,
    /// Unstructured global magnitude ranking: the threshold is found at run time over the
    /// model's linears for this sparsity.
    pub global_sparsity: Option<f64>,
    /// The settings as recorded in the report's `scheme`.
    pub scheme_record: Value,
    pub gptq: Option<GptqOptions>,
    /// Act-order groups in processing order (GPTQ / compressed-tensors `g_idx`).
    pub scattered_groups: bool,
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
    /// GGUF; `codes`: quantized linears copied from the sweep's codes exactly.
    Gguf { codes: bool },
    /// A Hugging Face directory of dense weights.
    Safetensors(OutDtype),
    /// GPTQ or compressed-tensors `pack-quantized`.
    Packed(QuantMethod),
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
    /// GGUF: the type of matrices not written from codes.
    pub dominant: GgmlDType,
    pub overwrite: bool,
    /// The model's configuration after the passes (structured pruning changes it).
    pub config: ModelConfig,
}

fn err(path: impl Into<String>, msg: impl Into<String>) -> RecipeError {
    RecipeError::at(path, msg)
}

/// An error at `path` (absent from the file) located at `near`.
fn err_near(path: &str, near: &str, msg: impl Into<String>) -> RecipeError {
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
        seqlen,
        &mut notes,
    )?;

    // Calibration and evaluation data where needed.
    let needs_calib = structured.as_ref().is_some_and(|s| s.needs_calibration)
        || layerwise.as_ref().is_some_and(|l| l.calibrated);
    if needs_calib && recipe.calibration.is_none() {
        let (i, why) = calibration_reason(&recipe, structured.as_ref(), layerwise.as_ref());
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

    let gates = gates(&recipe, &evals)?;
    let estimate = Estimate::of(&recipe, &cfg, &linears, &output, layerwise.as_ref(), &evals);
    let method = method_name(
        structured.is_some(),
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
        layerwise,
        evals,
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

/// Where each kind of pass is.
struct Order {
    structured: Option<usize>,
    prune: Option<usize>,
    quantize: Option<usize>,
    /// The last compression pass.
    last_compression: Option<usize>,
}

fn check_order(passes: &[Pass]) -> RecipeResult<Order> {
    let mut o = Order {
        structured: None,
        prune: None,
        quantize: None,
        last_compression: None,
    };
    for (i, p) in passes.iter().enumerate() {
        let path = pass_path(i, p);
        let again = |first: usize| {
            err(
                &path,
                format!(
                    "a second {} pass (the first is passes[{first}]); one of each kind per recipe",
                    p.key()
                ),
            )
        };
        match p {
            Pass::StructuredPrune(_) => {
                if let Some(first) = o.structured {
                    return Err(again(first));
                }
                if let Some(j) = o.prune.or(o.quantize) {
                    return Err(err(
                        &path,
                        format!(
                            "structured pruning must come before passes[{j}]: it slices the \
                             original weights, which a prune or quantize pass has already changed"
                        ),
                    ));
                }
                o.structured = Some(i);
            }
            Pass::Prune(_) => {
                if let Some(first) = o.prune {
                    return Err(again(first));
                }
                if let Some(j) = o.quantize {
                    return Err(err(
                        &path,
                        format!(
                            "pruning after quantization (passes[{j}]) would move weights off \
                             their grids; put prune before quantize (both then run in one sweep)"
                        ),
                    ));
                }
                o.prune = Some(i);
            }
            Pass::Quantize(_) => {
                if let Some(first) = o.quantize {
                    return Err(again(first));
                }
                if let Some(j) = o.prune
                    && let Some(e) = (j + 1..i).find(|&k| matches!(passes[k], Pass::Eval(_)))
                {
                    return Err(err(
                        pass_path(e, &passes[e]),
                        format!(
                            "an eval between passes[{j}] (prune) and passes[{i}] (quantize) \
                             would split their joint sweep; move it after the quantize pass"
                        ),
                    ));
                }
                o.quantize = Some(i);
            }
            Pass::Eval(_) => {}
        }
        if !matches!(p, Pass::Eval(_)) {
            o.last_compression = Some(i);
        }
    }
    Ok(o)
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
    let l = layerwise.expect("some step needs calibration");
    let i = l.passes[0];
    let why = match &recipe.passes[i] {
        Pass::Prune(p) if p.method != PruneMethodName::Magnitude => {
            "Wanda and SparseGPT score weights by their inputs; magnitude pruning alone does not"
        }
        Pass::Prune(_) => "pruning with quantization runs GPTQ with the mask fixed",
        _ => "GPTQ needs calibration data; or use method rtn",
    };
    (i, why)
}

#[allow(clippy::too_many_arguments)]
fn layerwise_step(
    recipe: &Recipe,
    prune: Option<(usize, &PruneStage)>,
    quant: Option<(usize, &QuantizeStage)>,
    linears: &[TensorInfo],
    gguf: bool,
    seqlen: usize,
    notes: &mut Vec<String>,
) -> RecipeResult<Option<LayerwiseStep>> {
    if prune.is_none() && quant.is_none() {
        return Ok(None);
    }
    let scheme = match quant {
        Some((i, q)) => Some(quant_scheme(recipe, i, q, linears, gguf)?),
        None => None,
    };
    let prune_spec = match prune {
        Some((i, p)) => Some(prune_spec(
            recipe,
            i,
            p,
            linears,
            quant.map(|(_, q)| q.method),
        )?),
        None => None,
    };
    let mut passes: Vec<usize> = prune.iter().map(|(i, _)| *i).collect();
    passes.extend(quant.iter().map(|(i, _)| *i));
    let (spec, gptq, scheme_record, calibrated) = match (prune, quant) {
        (None, Some((i, q))) => {
            let scheme = scheme.expect("quantize pass");
            if q.method == QuantMethodName::Rtn {
                let record = scheme_json(&scheme, None);
                (
                    BlockSpec {
                        scheme: Some(scheme),
                        method: BlockMethod::Rtn,
                        prune: None,
                    },
                    None,
                    record,
                    false,
                )
            } else {
                let opts = gptq_options(q, gguf);
                if opts.static_groups {
                    notes.push(
                        "act-order with GGUF output: groups fixed up front (static groups)".into(),
                    );
                }
                let sink = sink_weight(&pass_path(i, &recipe.passes[i]), q.sink_weight, seqlen)?;
                let mut record = scheme_json(&scheme, Some(opts));
                record["gptq"]["sink_weight"] = json!(sink);
                (
                    BlockSpec {
                        scheme: Some(scheme),
                        method: BlockMethod::Gptq {
                            opts,
                            sink_weight: sink,
                        },
                        prune: None,
                    },
                    Some(opts),
                    record,
                    true,
                )
            }
        }
        (Some((i, p)), q) => {
            let prune_spec = prune_spec.expect("prune pass").0;
            let method = prune_spec.method;
            let base = pass_path(i, &recipe.passes[i]);
            let damp = q.and_then(|(_, q)| q.damp).or(p.damp).unwrap_or(0.01);
            let calibrated = method.needs_calibration()
                || q.is_some_and(|(_, q)| q.method == QuantMethodName::Gptq);
            let default_sink = match (method, scheme) {
                (PruneMethod::Wanda, None) => 1.0,
                _ => seqlen as f64,
            };
            let sink = match q.and_then(|(_, q)| q.sink_weight).or(p.sink_weight) {
                Some(w) => sink_weight(&base, Some(w), seqlen)?,
                None => default_sink,
            };
            let opts = GptqOptions {
                damp_percent: damp,
                clip_search: q
                    .and_then(|(_, q)| q.clip_search)
                    .unwrap_or(true)
                    .then(ClipSearch::default),
                ..GptqOptions::default()
            };
            let record = json!({
                "prune": prune_spec,
                "quantize": scheme.map(|s| json!({
                    "bits": s.bits, "group_size": s.group_size, "symmetric": s.symmetric,
                    "method": if calibrated { "gptq" } else { "rtn" },
                })),
                "sink_weight": calibrated.then_some(sink),
                "damp_percent": calibrated.then_some(damp),
            });
            (
                BlockSpec {
                    scheme,
                    method: if calibrated {
                        BlockMethod::Gptq {
                            opts,
                            sink_weight: sink,
                        }
                    } else {
                        BlockMethod::Rtn
                    },
                    prune: Some(prune_spec),
                },
                calibrated.then_some(opts),
                record,
                calibrated,
            )
        }
        (None, None) => unreachable!("returned above"),
    };
    let scattered_groups = gptq.is_some_and(|g| g.act_order && !g.static_groups);
    let global_sparsity = prune_spec.and_then(|(_, g)| g);
    Ok(Some(LayerwiseStep {
        passes,
        spec,
        calibrated,
        global_sparsity,
        scheme_record,
        gptq,
        scattered_groups,
    }))
}

fn sink_weight(base: &str, asked: Option<f64>, seqlen: usize) -> RecipeResult<f64> {
    match asked {
        Some(w) if !(w.is_finite() && w > 0.0) => Err(err(
            format!("{base}.sink_weight"),
            format!("{w} is not a positive number (--sink-weight)"),
        )),
        Some(w) => Ok(w),
        None => Ok(seqlen as f64),
    }
}

fn gptq_options(q: &QuantizeStage, gguf: bool) -> GptqOptions {
    let act_order = q.act_order.unwrap_or(false);
    GptqOptions {
        damp_percent: q.damp.unwrap_or(0.01),
        act_order,
        // Contiguous groups are what ggml blocks (and most kernels) need.
        static_groups: act_order && gguf,
        clip_search: q.clip_search.unwrap_or(true).then(ClipSearch::default),
        ..GptqOptions::default()
    }
}

/// The report's record of a quantization scheme (as `microllm quantize` always wrote it).
fn scheme_json(s: &QuantScheme, gptq: Option<GptqOptions>) -> Value {
    json!({
        "bits": s.bits,
        "group_size": s.group_size,
        "symmetric": s.symmetric,
        "f16_scales": s.f16_scales,
        "gptq": gptq.map(|g| json!({
            "damp_percent": g.damp_percent,
            "block_size": g.block_size,
            "act_order": g.act_order,
            "static_groups": g.static_groups,
            "clip_search": g.clip_search.map(|c| json!({
                "steps": c.steps, "max_shrink": c.max_shrink, "norm": c.norm,
            })),
            "true_sequential": true,
        })),
    })
}

/// Options that belong to other methods are errors, not silently ignored.
fn check_applicable(base: &str, q: &QuantizeStage) -> RecipeResult<()> {
    let given = |name: &str, set: bool| set.then(|| name.to_string());
    let gptq_only = [
        given("act_order", q.act_order.is_some()),
        given("damp", q.damp.is_some()),
        given("sink_weight", q.sink_weight.is_some()),
        given("clip_search", q.clip_search.is_some()),
    ];
    let grid = [
        given("bits", q.bits.is_some()),
        given("group_size", q.group_size.is_some()),
        given("symmetric", q.symmetric.is_some()),
    ];
    let (bad, applies) = match q.method {
        QuantMethodName::Gptq => (
            vec![given("gguf_type", q.gguf_type.is_some())],
            "method ggml",
        ),
        QuantMethodName::Rtn => {
            let mut v = gptq_only.to_vec();
            v.push(given("gguf_type", q.gguf_type.is_some()));
            (v, "other methods")
        }
        QuantMethodName::Ggml => {
            let mut v = gptq_only.to_vec();
            v.extend(grid);
            (v, "gptq and rtn")
        }
    };
    if let Some(key) = bad.into_iter().flatten().next() {
        let method = serde_json::to_value(q.method).expect("names serialize");
        return Err(err(
            format!("{base}.{key}"),
            format!(
                "`{key}` applies to {applies}, not to method {}",
                method.as_str().unwrap_or_default()
            ),
        ));
    }
    Ok(())
}

fn quant_scheme(
    recipe: &Recipe,
    i: usize,
    q: &QuantizeStage,
    linears: &[TensorInfo],
    gguf: bool,
) -> RecipeResult<QuantScheme> {
    let base = pass_path(i, &recipe.passes[i]);
    check_applicable(&base, q)?;
    let bits = q.bits.unwrap_or(4);
    if !(2..=8).contains(&bits) {
        return Err(err(
            format!("{base}.bits"),
            format!("{bits} bits: codes of 2..=8 bits are supported"),
        ));
    }
    let group = tensors::resolve_group_size(q.group_size, gguf, linears)
        .map_err(|m| err(format!("{base}.group_size"), m))?;
    QuantScheme::new(bits, group, q.symmetric.unwrap_or(true))
        .map(QuantScheme::with_f16_scales)
        .map_err(|e| err(&base, e.to_string()))
}

/// The prune spec and, for global magnitude ranking, the sparsity to find a threshold for.
fn prune_spec(
    recipe: &Recipe,
    i: usize,
    p: &PruneStage,
    linears: &[TensorInfo],
    quant_method: Option<QuantMethodName>,
) -> RecipeResult<(PruneSpec, Option<f64>)> {
    let base = pass_path(i, &recipe.passes[i]);
    let pattern = match (&p.pattern, p.sparsity) {
        (Some(_), Some(_)) => {
            return Err(err(
                format!("{base}.pattern"),
                "give either `sparsity` or `pattern`, not both",
            ));
        }
        (Some(text), None) => SparsityPattern::parse(text)
            .map_err(|e| err(format!("{base}.pattern"), e.to_string()))?,
        (None, s) => SparsityPattern::Unstructured {
            sparsity: s.unwrap_or(0.5),
        },
    };
    let key = if p.pattern.is_some() {
        "pattern"
    } else {
        "sparsity"
    };
    pattern
        .validate()
        .map_err(|e| err(format!("{base}.{key}"), e.to_string()))?;
    for info in linears {
        pattern
            .check_shape(&info.name, [info.shape[0], info.shape[1]])
            .map_err(|e| err(format!("{base}.{key}"), e.to_string()))?;
    }
    let method = match p.method {
        PruneMethodName::Magnitude => PruneMethod::Magnitude,
        PruneMethodName::Wanda => PruneMethod::Wanda,
        PruneMethodName::Sparsegpt => PruneMethod::SparseGpt,
    };
    if quant_method == Some(QuantMethodName::Rtn) && method != PruneMethod::Magnitude {
        return Err(err(
            format!("{base}.method"),
            "Wanda and SparseGPT prune with calibration data, and the joint sweep then \
             quantizes with GPTQ: use quantize method gptq (or prune method magnitude for RTN)",
        ));
    }
    let ranking_path = format!("{base}.ranking");
    let mut global = None;
    let ranking = match (p.ranking, method) {
        (Some(RankingName::Row), _) => Ranking::PerRow,
        (Some(RankingName::Layer), _) => Ranking::PerLayer,
        (Some(RankingName::Global), PruneMethod::Magnitude) => {
            let SparsityPattern::Unstructured { sparsity } = pattern else {
                return Err(err(
                    ranking_path,
                    "--ranking global ranks unstructured sparsity; an N:M pattern ranks within each group of M",
                ));
            };
            global = Some(sparsity);
            // Replaced by the threshold at run time.
            Ranking::PerLayer
        }
        (Some(RankingName::Global), _) => {
            return Err(err(
                ranking_path,
                "--ranking global is for magnitude pruning (Wanda and SparseGPT scores need each layer's calibration inputs)",
            ));
        }
        (None, PruneMethod::Magnitude) => Ranking::PerLayer,
        (None, _) => Ranking::PerRow,
    };
    Ok((
        PruneSpec {
            method,
            pattern,
            ranking,
        },
        global,
    ))
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

#[allow(clippy::too_many_arguments)]
fn output_plan(
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
    let fmt_err = |msg: &str| err("output.format", msg.to_string());
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
    let linears_quantized = scheme.is_some();
    let (writer, tensors, dominant) = match format {
        OutputFormat::Gguf => {
            let ty = ggml
                .and_then(|(_, q)| q.gguf_type)
                .or(out.gguf_type)
                .map_or(GgmlDType::F16, ggml_type);
            let (plan, dominant) = match scheme {
                Some(s) => {
                    tensors::gguf_plan(cfg, src, &s, layerwise.is_some_and(|l| l.scattered_groups))
                        .map_err(|e| err("output", e.to_string()))?
                }
                None => {
                    let decisions = microllm_io::gguf::plan_types(cfg, src, ty)
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
                    "{dominant:?}: llama.cpp's block type, by llama.cpp's round-to-nearest (no \
                     calibration; GPTQ does not apply)"
                ));
            }
            if let Some(s) = scheme {
                let block_bits = match dominant {
                    GgmlDType::Q8_0 => 8,
                    GgmlDType::Q4_0 | GgmlDType::Q4_1 => 4,
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
            (
                Writer::Gguf {
                    codes: linears_quantized,
                },
                plan,
                dominant,
            )
        }
        OutputFormat::Safetensors => {
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
                GgmlDType::F16,
            )
        }
        OutputFormat::Gptq | OutputFormat::CompressedTensors => {
            let ct = format == OutputFormat::CompressedTensors;
            match (scheme, prune) {
                (Some(s), None) => (
                    Writer::Packed(if ct {
                        QuantMethod::CompressedTensors
                    } else {
                        QuantMethod::Gptq
                    }),
                    tensors::packed_plan(
                        cfg,
                        src,
                        &s,
                        ct,
                        layerwise.is_some_and(|l| l.scattered_groups),
                    ),
                    GgmlDType::F16,
                ),
                (Some(_), Some(_)) if ct => {
                    return Err(fmt_err(
                        "compressed-tensors with pruning and quantization together is not \
                         written yet (sparse and quantized); use gguf for pruned + quantized output",
                    ));
                }
                (None, Some(p)) if ct => {
                    let pattern = p
                        .pattern
                        .as_deref()
                        .and_then(|t| SparsityPattern::parse(t).ok());
                    let (fmt, structure) = match pattern {
                        Some(SparsityPattern::NOfM { n: 2, m: 4 }) => {
                            (SparseFormat::TwoFour, "2:4".to_string())
                        }
                        Some(SparsityPattern::NOfM { n, m }) => {
                            (SparseFormat::Bitmask, format!("{n}:{m}"))
                        }
                        _ => (SparseFormat::Bitmask, "unstructured".to_string()),
                    };
                    (
                        Writer::Sparse(fmt, structure),
                        tensors::dense_plan(cfg, src, OutDtype::F16),
                        GgmlDType::F16,
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
            }
        }
    };
    let work = crate::run::work_dir(&out.path);
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
    Ok(OutputPlan {
        path: out.path.clone(),
        format,
        writer,
        tensors,
        dominant,
        overwrite: out.overwrite,
        config: cfg.clone(),
    })
}

fn gates(recipe: &Recipe, evals: &[EvalStep]) -> RecipeResult<Vec<Gate>> {
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
            Ok(g)
        })
        .collect()
}

fn method_name(
    structured: bool,
    prune: Option<&PruneStage>,
    quant: Option<&QuantizeStage>,
) -> String {
    let mut parts: Vec<String> = Vec::new();
    if structured {
        parts.push("structured".into());
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

pub(crate) fn ggml_type(t: GgufTypeName) -> GgmlDType {
    match t {
        GgufTypeName::F32 => GgmlDType::F32,
        GgufTypeName::F16 => GgmlDType::F16,
        GgufTypeName::Q8_0 => GgmlDType::Q8_0,
        GgufTypeName::Q5_1 => GgmlDType::Q5_1,
        GgufTypeName::Q5_0 => GgmlDType::Q5_0,
        GgufTypeName::Q4_1 => GgmlDType::Q4_1,
        GgufTypeName::Q4_0 => GgmlDType::Q4_0,
        GgufTypeName::Q6K => GgmlDType::Q6K,
        GgufTypeName::Q5K => GgmlDType::Q5K,
        GgufTypeName::Q4K => GgmlDType::Q4K,
        GgufTypeName::Q3K => GgmlDType::Q3K,
        GgufTypeName::Q2K => GgmlDType::Q2K,
    }
}

pub(crate) fn out_dtype(d: DtypeName) -> OutDtype {
    match d {
        DtypeName::F32 => OutDtype::F32,
        DtypeName::F16 => OutDtype::F16,
        DtypeName::Bf16 => OutDtype::BF16,
    }
}
