//! The report of a finished run, from the plan and what the steps returned.

use std::time::Instant;

use microllm_core::{Family, ModelConfig, Result, TensorSource, names};
use microllm_io::gguf::{TypeDecision, plan_types};
use microllm_prune::structured::{Scores, StructuredPlan};
use serde_json::{Value, json};

use super::{Outcome, RunOptions, bytes_on_disk, peak_rss_bytes, sha256_of};
use crate::plan::{Plan, TensorPlan, Writer};
use crate::recipe::Pass;
use crate::report::{
    CompressionReport, Curve, DistillRecord, EvalDataRecord, FallbackRecord, LayerRecord,
    ModelRecord, OutputRecord, PassRecord, REPORT_SCHEMA_VERSION, SizeRecord, StructureRecord,
};

pub(super) fn build(
    plan: &Plan,
    opts: &RunOptions,
    o: &Outcome,
    started: Instant,
) -> Result<CompressionReport> {
    let ckpt = &plan.model;
    let cfg = &ckpt.config;
    let out = &plan.output;
    // A size budget chooses types when the file is written: report those.
    let tensors = o.written_tensors.as_ref().unwrap_or(&out.tensors);
    let mut output = output_record(plan, tensors, o.write_seconds)?;
    let (file_bytes, params) = (output.bytes, output.parameters);
    let mut notes = run_notes(plan, o);
    let (layers, block_seconds, resumed_blocks) = match &o.layerwise {
        Some((summary, _)) => (
            layer_records(plan, summary, tensors),
            summary.block_seconds.clone(),
            summary.resumed_blocks,
        ),
        None => (Vec::new(), Vec::new(), 0),
    };
    if let Some(note) = awq_note(&layers) {
        notes.push(note);
    }
    if plan
        .layerwise
        .as_ref()
        .is_some_and(|l| l.spec.prune.is_some())
    {
        sparsity_fields(
            &mut output,
            &layers,
            &out.config,
            tensors.as_slice(),
            &mut notes,
            plan,
        );
    }
    let structure = o.structured.as_ref().map(|(p, scores, _, _)| {
        let s = plan.structured.as_ref().expect("a structured step ran");
        if cfg.family == Family::Phi && s.spec.heads_keep < 1.0 {
            notes.push(
                "Phi with fewer heads: config.json states head_dim explicitly; loaders that \
                 derive it as hidden_size / num_attention_heads will not load this model"
                    .into(),
            );
        }
        structure_record(plan, p, scores)
    });
    let size = SizeRecord {
        parameters_before: ckpt.tensors.infos().iter().map(|i| i.numel() as u64).sum(),
        parameters_after: params,
        tensor_bytes_before: bytes_before(plan)?,
        tensor_bytes_after: tensors.iter().map(|t| t.bytes).sum(),
        file_bytes,
    };
    // The last evaluation of the written model is the report's headline.
    let eval = o
        .evals
        .iter()
        .filter(|(_, r, _)| r.of_output)
        .map(|(_, r, _)| r.clone())
        .next_back();
    let mut report = CompressionReport {
        schema_version: REPORT_SCHEMA_VERSION,
        microllm_version: env!("CARGO_PKG_VERSION").into(),
        name: opts.name.clone(),
        command: opts.command.clone(),
        variant: opts.variant.clone(),
        recipe: plan.recipe_value.clone(),
        recipe_sha256: opts.recipe_sha256.clone(),
        model: model_record(plan)?,
        calibration: o.calibration.clone(),
        evaluation: o.eval_tokens.as_ref().map(|e| EvalDataRecord {
            file: e.file.clone(),
            sha256: e.sha256.clone(),
            tokens_in_file: e.tokens.len(),
            ctx: e.ctx,
        }),
        method: plan.method.clone(),
        scheme: scheme_record(plan, o),
        passes: pass_records(plan, o),
        layers,
        block_seconds,
        block_phase_seconds: o
            .layerwise
            .as_ref()
            .filter(|(s, _)| s.resumed_blocks < out.config.num_layers)
            .map(|(s, _)| s.phases),
        resumed_blocks,
        structure,
        distill: o.distilled.as_ref().map(|(d, ..)| d.clone()),
        size,
        output,
        fallbacks: fallback_records(tensors),
        notes,
        eval,
        metrics: Default::default(),
        gates: Vec::new(),
        gates_passed: true,
        peak_rss_bytes: peak_rss_bytes(),
        total_seconds: started.elapsed().as_secs_f64(),
    };
    report.compute_metrics();
    report.evaluate_gates(&plan.gates);
    Ok(report)
}

/// The plan's notes, the writer's, the global pruning threshold, and first of all a note
/// when the model was already quantized.
fn run_notes(plan: &Plan, o: &Outcome) -> Vec<String> {
    let mut notes = plan.notes.clone();
    notes.extend(o.writer_notes.iter().cloned());
    if let Some(t) = o.global_threshold {
        notes.push(format!("global magnitude threshold {t:.6e}"));
    }
    let quantizes = plan
        .recipe
        .passes
        .iter()
        .any(|p| matches!(p, crate::recipe::Pass::Quantize(_)));
    if let Some(note) = already_quantized_note(&plan.model).filter(|_| quantizes) {
        notes.insert(0, note);
    }
    notes
}

/// The tensors written in another type than asked, and why.
fn fallback_records(tensors: &[TensorPlan]) -> Vec<FallbackRecord> {
    tensors
        .iter()
        .filter_map(|t| {
            t.fallback.as_ref().map(|why| FallbackRecord {
                tensor: t.name.clone(),
                dtype: t.dtype.clone(),
                why: why.clone(),
            })
        })
        .collect()
}

/// The written file: size, parameters, bits per weight (all and quantized only), tensors.
fn output_record(plan: &Plan, tensors: &[TensorPlan], write_seconds: f64) -> Result<OutputRecord> {
    let out = &plan.output;
    let file_bytes = bytes_on_disk(&out.path)?;
    let params: u64 = tensors.iter().map(numel).sum();
    let (q_params, q_bytes) = tensors
        .iter()
        .filter(|t| t.quantized)
        .fold((0u64, 0u64), |(p, b), t| (p + numel(t), b + t.bytes));
    Ok(OutputRecord {
        path: out.path.clone(),
        format: out.format_name(),
        bytes: file_bytes,
        parameters: params,
        bits_per_weight: file_bytes as f64 * 8.0 / params.max(1) as f64,
        quantized_parameters: q_params,
        quantized_bits_per_weight: q_bytes as f64 * 8.0 / q_params.max(1) as f64,
        tensors: tensors.to_vec(),
        write_seconds,
        linear_parameters: None,
        pruned_parameters: None,
        linear_sparsity: None,
    })
}

/// Every linear the layerwise sweep compressed, with the type it was written as.
fn layer_records(
    plan: &Plan,
    summary: &microllm_engine::LayerwiseSummary,
    tensors: &[TensorPlan],
) -> Vec<LayerRecord> {
    let out = &plan.output;
    let family = out.config.family;
    summary
        .records
        .iter()
        .map(|r| {
            let hf = names::linear_weight(family, r.layer, r.kind);
            LayerRecord {
                record: r.clone(),
                output_type: tensors
                    .iter()
                    .find(|t| t.holds(&out.config, &hf))
                    .map(|t| t.dtype.clone()),
            }
        })
        .collect()
}

/// What structured pruning kept, block by block, and the configs before and after.
fn structure_record(plan: &Plan, p: &StructuredPlan, scores: &Scores) -> StructureRecord {
    let s = plan.structured.as_ref().expect("a structured step ran");
    let cfg = &plan.model.config;
    StructureRecord {
        request: json!(s.spec),
        importance: json!({ "metric": s.metric, "description": s.metric.describe() }),
        config_before: config_summary(cfg),
        config_after: config_summary(&p.config),
        dropped_layers: p.dropped.clone(),
        block_influence: scores.block_influence.clone(),
        layers: p
            .layers
            .iter()
            .enumerate()
            .map(|(i, l)| {
                json!({
                    "layer": i,
                    "source_layer": l.source,
                    "mlp_channels": l.channels.len(),
                    "heads": l.heads.len(),
                    "kv_heads": l.kv_heads.len(),
                    "kept_channels": l.channels,
                    "kept_heads": l.heads,
                    "kept_kv_heads": l.kv_heads,
                })
            })
            .collect(),
    }
}

/// The original model.
fn model_record(plan: &Plan) -> Result<ModelRecord> {
    let ckpt = &plan.model;
    let cfg = &ckpt.config;
    Ok(ModelRecord {
        spec: plan.recipe.model.clone(),
        path: ckpt.path.clone(),
        sha256: sha256_of(&ckpt.path)?,
        family: cfg.family.to_string(),
        layers: cfg.num_layers,
        hidden_size: cfg.hidden_size,
        parameters: ckpt.tensors.infos().iter().map(|i| i.numel()).sum(),
        stored_bytes: ckpt.stored_bytes(),
    })
}

/// The layerwise scheme as the plan recorded it, with OWL's measured schedule added.
fn scheme_record(plan: &Plan, o: &Outcome) -> Value {
    plan.layerwise.as_ref().map_or(Value::Null, |l| {
        let mut scheme = l.scheme_record.clone();
        if let Some(owl) = &o.owl {
            scheme["schedule"]["outlier_ratios"] = json!(owl.outlier_ratios);
            scheme["schedule"]["block_sparsities"] = json!(owl.sparsities);
        }
        scheme
    })
}

fn numel(t: &TensorPlan) -> u64 {
    t.shape.iter().product::<usize>() as u64
}

/// Zeroed linear weights, from the per-linear sparsities.
fn sparsity_fields(
    output: &mut OutputRecord,
    layers: &[LayerRecord],
    cfg: &ModelConfig,
    tensors: &[TensorPlan],
    notes: &mut Vec<String>,
    plan: &Plan,
) {
    let numel_of = |layer: usize, kind| {
        let hf = names::linear_weight(cfg.family, layer, kind);
        tensors.iter().find(|t| t.hf_name == hf).map_or(0, numel)
    };
    let linear_params: u64 = layers
        .iter()
        .map(|l| numel_of(l.record.layer, l.record.kind))
        .sum();
    let zeroed: f64 = layers
        .iter()
        .map(|l| l.record.sparsity.unwrap_or(0.0) * numel_of(l.record.layer, l.record.kind) as f64)
        .sum();
    output.linear_parameters = Some(linear_params);
    output.pruned_parameters = Some(zeroed.round() as u64);
    output.linear_sparsity = Some(zeroed / linear_params.max(1) as f64);
    let quantized = plan
        .layerwise
        .as_ref()
        .is_some_and(|l| l.spec.scheme.is_some());
    notes.push(format!(
        "{:.1}% of the linear weights are zero ({} of {}); they are stored {}",
        100.0 * zeroed / linear_params.max(1) as f64,
        zeroed.round() as u64,
        linear_params,
        if quantized {
            "densely as the grids' zero points"
        } else if matches!(plan.output.writer, Writer::Sparse(..)) {
            "sparse: nonzero values plus a bitmask (compressed-tensors)"
        } else {
            "densely: the file is no smaller until it is quantized or written with --format \
             compressed-tensors"
        }
    ));
}

/// Tensor data of the uncompressed model written the same way (format, dtype, GGUF types).
fn bytes_before(plan: &Plan) -> Result<u64> {
    let ckpt = &plan.model;
    let src: &dyn TensorSource = ckpt.tensors.as_ref();
    Ok(match &plan.output.writer {
        Writer::Safetensors(d) => src
            .infos()
            .iter()
            .map(|i| (i.numel() * d.size()) as u64)
            .sum(),
        Writer::Gguf {
            codes: false,
            importance,
        } => plan_types(
            &ckpt.config,
            src,
            plan.output.dominant,
            &plan.output.tensor_types,
            *importance,
        )?
        .iter()
        .map(TypeDecision::bytes)
        .sum(),
        _ => ckpt.stored_bytes(),
    })
}

fn config_summary(cfg: &ModelConfig) -> Value {
    json!({
        "model_type": cfg.family.model_type(),
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim,
    })
}

fn pass_records(plan: &Plan, o: &Outcome) -> Vec<PassRecord> {
    plan.recipe
        .passes
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let mut rec = PassRecord {
                index: i,
                pass: p.key().into(),
                summary: String::new(),
                seconds: 0.0,
                resumed: false,
                eval: None,
                curves: Vec::new(),
            };
            match p {
                Pass::StructuredPrune(_) => {
                    if let Some((sp, _, resumed, secs)) = &o.structured {
                        rec.summary = format!(
                            "{} blocks, {} MLP channels, {} query / {} KV heads per block; dropped {:?}",
                            sp.config.num_layers,
                            sp.config.intermediate_size,
                            sp.config.num_heads,
                            sp.config.num_kv_heads,
                            sp.dropped
                        );
                        rec.seconds = *secs;
                        rec.resumed = *resumed;
                    }
                }
                Pass::Distill(_) => {
                    rec.summary = plan.describe_pass(i);
                    if let Some((d, resumed, secs)) = &o.distilled {
                        rec.summary.push_str(&format!("; {}", d.outcome()));
                        rec.seconds = *secs;
                        rec.resumed = *resumed;
                        rec.curves = distill_curves(d);
                    }
                }
                Pass::Prune(_) | Pass::Quantize(_) => {
                    rec.summary = plan.describe_pass(i);
                    if let Some((summary, secs)) = &o.layerwise {
                        rec.seconds = *secs;
                        rec.resumed = summary.resumed_blocks > 0;
                    }
                }
                Pass::Eval(_) => {
                    if let Some((_, e, resumed)) = o.evals.iter().find(|(j, ..)| *j == i) {
                        rec.summary = format!(
                            "{}: perplexity {:.4} -> {:.4} ({:+.2}%), KL {:.5}, top-1 {:.1}%",
                            if e.of_output { "the written output" } else { "in memory" },
                            e.original.perplexity,
                            e.compressed.perplexity,
                            e.increase_pct,
                            e.kl_divergence,
                            100.0 * e.top1_agreement
                        );
                        rec.seconds = e.original.seconds + e.compressed.seconds;
                        rec.resumed = *resumed;
                        rec.eval = Some(e.clone());
                    }
                }
            }
            rec
        })
        .collect()
}

/// The HTML report's charts of a distill pass: held-out perplexity against training tokens,
/// and the training loss against steps.
fn distill_curves(d: &DistillRecord) -> Vec<Curve> {
    let mut curves = Vec::new();
    if !d.evals.is_empty() {
        curves.push(Curve {
            name: "Distillation: held-out perplexity of the student".into(),
            x_label: "training tokens".into(),
            y_label: "perplexity".into(),
            points: d
                .evals
                .iter()
                .map(|e| [e.tokens as f64, e.perplexity])
                .collect(),
        });
    }
    if !d.curve.is_empty() {
        curves.push(Curve {
            name: format!("Distillation: training loss ({})", d.loss),
            x_label: "step".into(),
            y_label: "loss".into(),
            points: d.curve.iter().map(|l| [l.step as f64, l.loss]).collect(),
        });
    }
    curves
}

/// A note when the source's linears are already block-quantized (re-quantizing with the same
/// scheme is then trivially lossless, which makes such a figure meaningless).
fn already_quantized_note(ckpt: &microllm_io::Checkpoint) -> Option<String> {
    let cfg = &ckpt.config;
    let types: std::collections::BTreeSet<String> = ckpt
        .tensors
        .infos()
        .into_iter()
        .filter(|i| names::parse_linear_weight(cfg.family, &i.name).is_some())
        .map(|i| i.dtype)
        .filter(|d| d.starts_with('Q'))
        .collect();
    (!types.is_empty()).then(|| {
        format!(
            "the source's linear weights are already quantized ({}): errors are measured \
             against their dequantized values, and re-quantizing with the source's own scheme \
             is trivially lossless (measure other settings)",
            types.into_iter().collect::<Vec<_>>().join(", ")
        )
    })
}

/// What AWQ chose over the whole model: how many linears' inputs it scaled (and with which
/// exponents), their output error against unscaled rounding, and how much range clipping kept.
fn awq_note(layers: &[LayerRecord]) -> Option<String> {
    let awq: Vec<&microllm_engine::AwqRecord> = layers
        .iter()
        .filter_map(|l| l.record.awq.as_ref())
        .collect();
    if awq.is_empty() {
        return None;
    }
    let mut ratios: Vec<f32> = awq.iter().filter_map(|a| a.ratio).collect();
    ratios.sort_by(f32::total_cmp);
    let scaled = ratios.len();
    let mut text = format!(
        "AWQ scaled the inputs of {scaled} of {} linears on the calibration activations",
        awq.len()
    );
    if scaled > 0 {
        let error = awq
            .iter()
            .filter(|a| a.ratio.is_some())
            .map(|a| a.relative_error)
            .sum::<f64>()
            / scaled as f64;
        text.push_str(&format!(
            " (exponent median {:.2}, range {:.2}-{:.2}; their output error {:.3}x unscaled \
             rounding's, mean)",
            ratios[scaled / 2],
            ratios[0],
            ratios[scaled - 1],
            error
        ));
    }
    let clips: Vec<f32> = awq.iter().filter_map(|a| a.clip).collect();
    if !clips.is_empty() {
        text.push_str(&format!(
            "; clipping kept {:.1}% of the weight range on average over {} linears",
            100.0 * clips.iter().sum::<f32>() / clips.len() as f32,
            clips.len()
        ));
    }
    Some(text)
}
