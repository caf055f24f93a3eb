//! The layerwise sweep of a plan: the prune and quantize passes' options checked against
//! their methods and the model's shapes, and fused into one engine `BlockSpec`.

use microllm_core::TensorInfo;
use microllm_prune::{PruneMethod, Ranking, Schedule, SparsityPattern};
use microllm_quant::{AwqOptions, ClipSearch, GptqOptions, QuantScheme};
use serde_json::{Value, json};

use super::pass_path;
use super::steps::{LayerwiseStep, err};
use super::tensors;
use crate::recipe::{
    GroupSize, PruneMethodName, PruneStage, QuantMethodName, QuantizeStage, RankingName, Recipe,
    RecipeResult, ScheduleName, SchemeName,
};
use microllm_engine::PruneSpec;
use microllm_engine::{BlockMethod, BlockSpec};

#[allow(clippy::too_many_arguments)]
pub(super) fn layerwise_step(
    recipe: &Recipe,
    prune: Option<(usize, &PruneStage)>,
    quant: Option<(usize, &QuantizeStage)>,
    linears: &[TensorInfo],
    gguf: bool,
    contiguous_groups: bool,
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
    // Scales folded before quantizing (AWQ, SmoothQuant): the same for every combination.
    let awq = quant.and_then(|(_, q)| awq_options(q));
    let smooth = quant.and_then(|(_, q)| q.smoothquant).map(|a| a as f32);
    let (spec, gptq, mut scheme_record) = match (prune, quant) {
        (None, Some((i, q))) => {
            let scheme = scheme.expect("quantize pass");
            if !q.method.uses_gptq() {
                (
                    BlockSpec {
                        scheme: Some(scheme),
                        method: BlockMethod::Rtn,
                        prune: None,
                        awq,
                        smooth,
                    },
                    None,
                    scheme_json(&scheme, None),
                )
            } else {
                damp_percent(&pass_path(i, &recipe.passes[i]), q.damp)?;
                if gguf && q.act_order == Some(true) && q.static_groups == Some(false) {
                    return Err(err(
                        format!("{}.static_groups", pass_path(i, &recipe.passes[i])),
                        "GGUF blocks hold contiguous groups: act-order with GGUF output needs \
                         static groups",
                    ));
                }
                let opts = gptq_options(q, contiguous_groups);
                if opts.static_groups {
                    notes.push(
                        "act-order: groups fixed up front (static groups; compressed-tensors' \
                         actorder \"static\")"
                            .into(),
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
                        awq,
                        smooth,
                    },
                    Some(opts),
                    record,
                )
            }
        }
        (Some((i, p)), q) => {
            let prune_spec = prune_spec.expect("prune pass").0;
            let method = prune_spec.method;
            let base = pass_path(i, &recipe.passes[i]);
            let damp = match q.and_then(|(j, q)| q.damp.map(|d| (j, d))) {
                Some((j, d)) => damp_percent(&pass_path(j, &recipe.passes[j]), Some(d))?,
                None => damp_percent(&base, p.damp)?,
            };
            let calibrated =
                method.needs_calibration() || q.is_some_and(|(_, q)| q.method.uses_gptq());
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
                "quantize": scheme.map(|s| {
                    let mut v = serde_json::to_value(s).expect("a scheme serializes");
                    v["method"] = json!(if calibrated { "gptq" } else { "rtn" });
                    v
                }),
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
                    awq,
                    smooth,
                },
                calibrated.then_some(opts),
                record,
            )
        }
        (None, None) => unreachable!("returned above"),
    };
    let scattered_groups = gptq.is_some_and(|g| g.act_order && !g.static_groups);
    let global_sparsity = prune_spec.and_then(|(_, g, _)| g);
    let schedule = prune_spec.map_or(Schedule::Uniform, |(_, _, s)| s);
    if quant.is_some() {
        let quantize = match prune {
            Some(_) => &mut scheme_record["quantize"],
            None => &mut scheme_record,
        };
        quantize["awq"] = json!(awq);
        quantize["smoothquant"] = json!(smooth);
    }
    if let Schedule::Owl { threshold, lambda } = schedule {
        scheme_record["schedule"] =
            json!({"kind": "owl", "threshold": threshold, "lambda": lambda});
    }
    let activations = quant
        .and_then(|(_, q)| q.scheme)
        .and_then(SchemeName::activations);
    if let Some(a) = activations {
        scheme_record["activations"] = json!(a);
    }
    Ok(Some(LayerwiseStep {
        activations,
        passes,
        spec,
        global_sparsity,
        scheme_record,
        gptq,
        scattered_groups,
        schedule,
    }))
}

/// AWQ's options for methods awq and awq+gptq (clipping by default only without GPTQ, which
/// searches its own ranges).
fn awq_options(q: &QuantizeStage) -> Option<AwqOptions> {
    q.method.uses_awq().then(|| AwqOptions {
        grid: q.awq_grid.unwrap_or(20),
        clip: q.awq_clip.unwrap_or(q.method == QuantMethodName::Awq),
        ..AwqOptions::default()
    })
}

/// The GPTQ / SparseGPT dampening (a fraction of the Hessian's mean diagonal added to it),
/// 0.01 unless given; it must be positive, or the solve has nothing to keep it stable.
fn damp_percent(base: &str, asked: Option<f64>) -> RecipeResult<f64> {
    match asked {
        Some(d) if !(d.is_finite() && d > 0.0) => Err(err(
            format!("{base}.damp"),
            format!(
                "{d} is not a positive number (--damp): it is the fraction of the Hessian's mean \
                 diagonal added for stability, 0.01 by default"
            ),
        )),
        Some(d) => Ok(d),
        None => Ok(0.01),
    }
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

/// GPTQ's options. Act-order groups are fixed up front (static) when the recipe says so, and
/// by default when the output needs each group's columns side by side (`contiguous_groups`:
/// ggml blocks; compressed-tensors, whose current library has no g_idx form).
fn gptq_options(q: &QuantizeStage, contiguous_groups: bool) -> GptqOptions {
    let act_order = q.act_order.unwrap_or(false);
    GptqOptions {
        damp_percent: q.damp.unwrap_or(0.01),
        act_order,
        static_groups: act_order && q.static_groups.unwrap_or(contiguous_groups),
        clip_search: q.clip_search.unwrap_or(true).then(ClipSearch::default),
        ..GptqOptions::default()
    }
}

/// The report's record of a quantization scheme (as `microllm quantize` always wrote it).
fn scheme_json(s: &QuantScheme, gptq: Option<GptqOptions>) -> Value {
    let mut v = serde_json::to_value(s).expect("a scheme serializes");
    v["gptq"] = json!(gptq.map(|g| json!({
        "damp_percent": g.damp_percent,
        "block_size": g.block_size,
        "act_order": g.act_order,
        "static_groups": g.static_groups,
        "clip_search": g.clip_search.map(|c| json!({
            "steps": c.steps, "max_shrink": c.max_shrink, "norm": c.norm,
        })),
        "true_sequential": true,
    })));
    v
}

/// Options that belong to other methods are errors, not silently ignored.
pub(super) fn check_applicable(base: &str, q: &QuantizeStage) -> RecipeResult<()> {
    use QuantMethodName::{Awq, AwqGptq, Ggml, Gptq, Rtn};
    let gptq: &[QuantMethodName] = &[Gptq, AwqGptq];
    let awq: &[QuantMethodName] = &[Awq, AwqGptq];
    let grid: &[QuantMethodName] = &[Gptq, Rtn, Awq, AwqGptq];
    let ggml: &[QuantMethodName] = &[Ggml];
    // Each key given, and the methods it applies to.
    let keys: [(&str, bool, &[QuantMethodName]); 16] = [
        ("act_order", q.act_order.is_some(), gptq),
        ("damp", q.damp.is_some(), gptq),
        ("static_groups", q.static_groups.is_some(), gptq),
        ("sink_weight", q.sink_weight.is_some(), gptq),
        ("clip_search", q.clip_search.is_some(), gptq),
        ("awq_grid", q.awq_grid.is_some(), awq),
        ("awq_clip", q.awq_clip.is_some(), awq),
        ("scheme", q.scheme.is_some(), grid),
        ("smoothquant", q.smoothquant.is_some(), grid),
        ("bits", q.bits.is_some(), grid),
        ("group_size", q.group_size.is_some(), grid),
        ("symmetric", q.symmetric.is_some(), grid),
        ("gguf_type", q.gguf_type.is_some(), ggml),
        ("importance_matrix", q.importance_matrix.is_some(), ggml),
        (
            "importance_matrix_file",
            q.importance_matrix_file.is_some(),
            ggml,
        ),
        (
            "save_importance_matrix",
            q.save_importance_matrix.is_some(),
            ggml,
        ),
    ];
    let name = |m: QuantMethodName| {
        let v = serde_json::to_value(m).expect("names serialize");
        v.as_str().unwrap_or_default().to_string()
    };
    let misplaced = keys
        .iter()
        .find(|(_, given, methods)| *given && !methods.contains(&q.method));
    if let Some((key, _, methods)) = misplaced {
        let names: Vec<String> = methods.iter().map(|&m| name(m)).collect();
        let applies = match &names[..] {
            [one] => format!("method {one}"),
            [rest @ .., last] => format!("methods {} and {last}", rest.join(", ")),
            [] => unreachable!("every key applies to some method"),
        };
        return Err(err(
            format!("{base}.{key}"),
            format!(
                "`{key}` applies to {applies}, not to method {}",
                name(q.method)
            ),
        ));
    }
    if let Some(alpha) = q.smoothquant {
        let path = format!("{base}.smoothquant");
        if q.method.uses_awq() {
            return Err(err(
                path,
                "AWQ and SmoothQuant both fold per-channel scales into the norms: use one",
            ));
        }
        if !(alpha.is_finite() && alpha > 0.0 && alpha <= 1.0) {
            return Err(err(
                path,
                format!("{alpha} is not a migration strength in (0, 1]"),
            ));
        }
        if q.scheme.and_then(SchemeName::activations).is_none() {
            return Err(err(
                path,
                "SmoothQuant moves activation outliers into the weights, for schemes that \
                 quantize activations: add `scheme: w8a8-int8` or `scheme: w8a8-fp8`",
            ));
        }
    }
    if q.awq_grid == Some(0) {
        return Err(err(
            format!("{base}.awq_grid"),
            "the scale grid needs at least 1 point",
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
    if let Some(name) = q.scheme {
        let fp8 = name != SchemeName::W8a8Int8;
        let conflicts = [
            ("bits", q.bits.is_some_and(|b| b != 8)),
            (
                "group_size",
                !fp8 && q.group_size.is_some_and(|g| g != GroupSize::Channel),
            ),
            ("symmetric", q.symmetric == Some(false)),
        ];
        if let Some((key, _)) = conflicts.iter().find(|(_, c)| *c) {
            return Err(err(
                format!("{base}.{key}"),
                if fp8 {
                    format!(
                        "scheme {} is FP8 E4M3 weights: 8 bits, symmetric",
                        name.name()
                    )
                } else {
                    "scheme w8a8-int8 is 8-bit symmetric per-channel weights".to_string()
                },
            ));
        }
        if !fp8 {
            return QuantScheme::new(8, None, true)
                .map(QuantScheme::with_f16_scales)
                .map_err(|e| err(&base, e.to_string()));
        }
        // One scale per channel unless a group size is given (no default grouping for FP8).
        let group = match q.group_size {
            None => None,
            asked => tensors::resolve_group_size(asked, false, linears)
                .map_err(|m| err(format!("{base}.group_size"), m))?,
        };
        return QuantScheme::fp8(group).map_err(|e| err(&base, e.to_string()));
    }
    let bits = q.bits.unwrap_or(4);
    if !microllm_core::CODE_BITS.contains(&bits) {
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

/// The prune spec, for global magnitude ranking the sparsity to find a threshold for, and the
/// blocks' sparsity schedule.
fn prune_spec(
    recipe: &Recipe,
    i: usize,
    p: &PruneStage,
    linears: &[TensorInfo],
    quant_method: Option<QuantMethodName>,
) -> RecipeResult<(PruneSpec, Option<f64>, Schedule)> {
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
    if quant_method.is_some_and(|m| !m.uses_gptq()) && method != PruneMethod::Magnitude {
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
    let schedule = schedule(&base, p, pattern, global.is_some())?;
    Ok((
        PruneSpec {
            method,
            pattern,
            ranking,
        },
        global,
        schedule,
    ))
}

/// The blocks' sparsity schedule, with OWL's options only where OWL is asked for.
fn schedule(
    base: &str,
    p: &PruneStage,
    pattern: SparsityPattern,
    global: bool,
) -> RecipeResult<Schedule> {
    let owl = p.schedule == Some(ScheduleName::Owl);
    for (key, set) in [
        ("owl_threshold", p.owl_threshold.is_some()),
        ("owl_lambda", p.owl_lambda.is_some()),
    ] {
        if set && !owl {
            return Err(err(
                format!("{base}.{key}"),
                format!("`{key}` applies to schedule owl"),
            ));
        }
    }
    if !owl {
        return Ok(Schedule::Uniform);
    }
    let path = format!("{base}.schedule");
    if !matches!(pattern, SparsityPattern::Unstructured { .. }) {
        return Err(err(
            path,
            "schedule owl spreads unstructured sparsity; an N:M pattern fixes every block's",
        ));
    }
    if global {
        return Err(err(
            path,
            "schedule owl and ranking global each choose the blocks' sparsities: pick one",
        ));
    }
    let Schedule::Owl { threshold, lambda } = Schedule::OWL_DEFAULT else {
        unreachable!("OWL_DEFAULT is OWL")
    };
    let schedule = Schedule::Owl {
        threshold: p.owl_threshold.unwrap_or(threshold),
        lambda: p.owl_lambda.unwrap_or(lambda),
    };
    schedule.validate().map_err(|e| err(path, e.to_string()))?;
    Ok(schedule)
}
