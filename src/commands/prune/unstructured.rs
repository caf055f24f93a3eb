//! `microllm prune --method magnitude|wanda|sparsegpt`: unstructured and N:M pruning through
//! the layerwise engine, optionally quantized with GPTQ in the same sweep (`--bits`).
//!
//! Pruned-only linears keep their shape with zeros in them: the output is a dense checkpoint
//! (safetensors or GGUF F16/F32) whose savings come later, from a sparse runtime or from
//! quantization. With `--bits`, pruned weights are stored as their group's zero point, so a
//! GGUF Q4_0/Q4_1/Q8_0 file holds the pruned, quantized model exactly.

use std::time::Instant;

use anyhow::{Context, Result, bail};
use candle_core::quantized::GgmlDType;
use microllm_core::{Progress, names};
use microllm_io::gguf::{GgufExport, GgufTypes, plan_types, write_gguf};
use microllm_io::quantized::sparse::SparseFormat;
use microllm_io::write::{HfOutput, HfWriteOptions, SparseOutput, write_hf_dir, write_sparse_dir};
use microllm_pipeline::output::{GgufCodes, QuantizedSource};
use microllm_pipeline::{
    BlockMethod, BlockSpec, BlockStore, CompressJob, PruneSpec, measure_imatrix, owl_schedule,
    run_compress,
};
use microllm_prune::{GlobalThreshold, PruneMethod, Ranking, Schedule, SparsityPattern};
use microllm_quant::{GptqOptions, QuantScheme};
use serde_json::json;

use super::Args;
use crate::commands::calibrate::{self, CalibrationRequest};
use crate::commands::quantize::plan::{self, TensorPlan};
use crate::commands::quantize::report::{CalibrationRecord, EvalRecord, Report};
use crate::progress::Bar;

pub fn run(args: &Args) -> Result<()> {
    let started = Instant::now();
    let u = &args.unstructured;
    if args.out.exists() && !args.force && !args.dry_run {
        bail!(
            "{} already exists; pass --force to replace it",
            args.out.display()
        );
    }
    let pattern = match &u.pattern {
        Some(p) => SparsityPattern::parse(p).context("--pattern")?,
        None => SparsityPattern::Unstructured {
            sparsity: u.sparsity,
        },
    };
    pattern.validate().context("--sparsity")?;
    let method = u.method.unwrap_or(MethodArg::Wanda).method();
    let ckpt = crate::commands::open_model(&args.model)?;
    let linears = plan::linear_infos(&ckpt.config, ckpt.tensors.as_ref())?;
    for info in &linears {
        pattern.check_shape(&info.name, [info.shape[0], info.shape[1]])?;
    }
    let ranking = match (u.ranking, method) {
        (Some(RankingArg::Row), _) => Ranking::PerRow,
        (Some(RankingArg::Layer), _) => Ranking::PerLayer,
        (Some(RankingArg::Global), PruneMethod::Magnitude) if !args.dry_run => {
            let SparsityPattern::Unstructured { sparsity } = pattern else {
                bail!(
                    "--ranking global ranks unstructured sparsity; an N:M pattern ranks within each group of M"
                );
            };
            global_threshold(&ckpt, &linears, sparsity)?
        }
        (Some(RankingArg::Global), PruneMethod::Magnitude) => Ranking::PerLayer,
        (Some(RankingArg::Global), _) => {
            bail!(
                "--ranking global is for magnitude pruning (Wanda and SparseGPT scores need each layer's calibration inputs)"
            )
        }
        (None, PruneMethod::Magnitude) => Ranking::PerLayer,
        (None, _) => Ranking::PerRow,
    };
    let output = super::output_kind(args, &ckpt.config);
    let gguf = matches!(output, super::Output::Gguf(_));
    let sparse_out = args.format == Some(super::FormatArg::CompressedTensors);
    if sparse_out && u.bits.is_some() {
        bail!(
            "--format compressed-tensors with --bits is not written yet (sparse and quantized \
             together); use --format gguf for pruned + quantized output"
        );
    }
    let scheme = match u.bits {
        Some(bits) => {
            let group = plan::resolve_group_size(u.group_size, gguf, &linears)?;
            Some(QuantScheme::new(bits, group, !u.asym)?.with_f16_scales())
        }
        None => None,
    };
    let schedule = match u.schedule {
        ScheduleArg::Uniform => Schedule::Uniform,
        ScheduleArg::Owl => Schedule::Owl {
            threshold: u.owl_threshold,
            lambda: u.owl_lambda,
        },
    };
    schedule.validate()?;
    let owl = matches!(schedule, Schedule::Owl { .. });
    if owl && !matches!(pattern, SparsityPattern::Unstructured { .. }) {
        bail!("--schedule owl spreads unstructured sparsity; an N:M pattern fixes every block's");
    }
    if owl && matches!(ranking, Ranking::Global { .. }) {
        bail!("--schedule owl and --ranking global each choose the blocks' sparsities: pick one");
    }
    let calibrated = method.needs_calibration() || scheme.is_some();
    let sink_weight = u.sink_weight.unwrap_or(match (method, scheme) {
        // Wanda's scores are the plain input norms.
        (PruneMethod::Wanda, None) => 1.0,
        _ => args.seqlen as f64,
    });
    let opts = GptqOptions {
        damp_percent: u.damp,
        ..GptqOptions::default()
    };
    let spec = BlockSpec {
        scheme,
        method: if calibrated {
            BlockMethod::Gptq { opts, sink_weight }
        } else {
            BlockMethod::Rtn
        },
        prune: Some(PruneSpec {
            method,
            pattern,
            ranking,
        }),
    };

    let mut report = Report::new(&args.model, &ckpt, &args.out);
    report.method = format!("{method:?}").to_lowercase();
    report.scheme = json!({
        "prune": spec.prune,
        "quantize": scheme.map(|s| json!({
            "bits": s.bits, "group_size": s.group_size, "symmetric": s.symmetric, "method": "gptq",
        })),
        "sink_weight": calibrated.then_some(sink_weight),
        "damp_percent": calibrated.then_some(u.damp),
    });
    let (tensor_plan, dominant) = match (gguf, &scheme) {
        (true, Some(s)) => {
            let (plan, dominant) = plan::gguf_plan(&ckpt.config, ckpt.tensors.as_ref(), s, false)?;
            (plan, dominant.into())
        }
        (_, None) | (false, Some(_)) => match output {
            super::Output::Gguf(t) => {
                let decisions = plan_types(&ckpt.config, ckpt.tensors.as_ref(), t)?;
                (plan::from_decisions(&ckpt.config, decisions, |_| None)?, t)
            }
            super::Output::Safetensors(d) => (
                plan::dense_plan(&ckpt.config, ckpt.tensors.as_ref(), d),
                GgufTypes::Pure(GgmlDType::F16),
            ),
        },
    };
    let linear_params: usize = linears.iter().map(|i| i.numel()).sum();
    println!(
        "prune {} -> {}: {method:?}, {}, {ranking:?} ranking{}",
        args.model,
        args.out.display(),
        describe(pattern),
        scheme.map_or(String::new(), |s| format!(", joint GPTQ {} bits", s.bits)),
    );
    println!(
        "  {} linear weights, about {} pruned ({:.1}% of the model's {} parameters)",
        linear_params,
        (linear_params as f64 * pattern.sparsity()).round(),
        100.0 * linear_params as f64 * pattern.sparsity() / total_params(&tensor_plan) as f64,
        total_params(&tensor_plan),
    );
    plan::print_plan(&tensor_plan);
    if args.dry_run {
        return Ok(());
    }

    let calibration = if calibrated || owl {
        let set = calibrate::draw(
            CalibrationRequest {
                path: args.calib.as_deref(),
                samples: args.samples,
                seqlen: args.seqlen,
                seed: args.seed,
                allow_short: args.allow_short_calib,
                missing_hint: "Wanda, SparseGPT, --bits and --schedule owl need calibration \
                               data (magnitude pruning alone does not)",
            },
            &ckpt,
        )?;
        report.calibration = Some(CalibrationRecord::new(args.calib.as_deref(), &set));
        Some(set)
    } else {
        None
    };
    let windows = calibration.as_ref().map_or(&[][..], |c| &c.windows[..]);
    let block_sparsity = match schedule {
        Schedule::Owl { threshold, lambda } => {
            let bar = Bar::new();
            let importance = measure_imatrix(&ckpt.config, ckpt.tensors.as_ref(), windows, &bar)
                .context("measuring input statistics for OWL")?;
            let owl = owl_schedule(
                &ckpt.config,
                ckpt.tensors.as_ref(),
                &importance,
                pattern.sparsity(),
                (threshold, lambda),
                &bar,
            )?;
            let (lo, hi) = owl
                .sparsities
                .iter()
                .fold((1f64, 0f64), |(lo, hi), &s| (lo.min(s), hi.max(s)));
            println!("  OWL block sparsities {lo:.3} - {hi:.3}");
            report.scheme["schedule"] = json!({
                "kind": "owl", "threshold": threshold, "lambda": lambda,
                "outlier_ratios": owl.outlier_ratios, "block_sparsities": owl.sparsities,
            });
            Some(owl.sparsities)
        }
        Schedule::Uniform => None,
    };
    let fingerprint = json!({
        "microllm": env!("CARGO_PKG_VERSION"),
        "model": args.model,
        "model_bytes": ckpt.stored_bytes(),
        "scheme": report.scheme,
        "calibration": report.calibration,
    });
    let work = calibrate::work_dir(&args.out);
    let store = BlockStore::open(&work, &fingerprint, u.resume)?;
    let job = CompressJob {
        config: &ckpt.config,
        source: ckpt.tensors.as_ref(),
        calibration: windows,
        spec,
        block_sparsity,
    };
    let summary = run_compress(&job, &store, &Bar::new())
        .with_context(|| format!("pruning {} (work directory {})", args.model, work.display()))?;

    let written = Instant::now();
    let pruned = QuantizedSource::new(&ckpt.config, ckpt.tensors.as_ref(), &store);
    if sparse_out {
        let family = ckpt.config.family;
        let is_sparse = |name: &str| names::parse_linear_weight(family, name).is_some();
        let output = SparseOutput {
            config: &ckpt.config,
            tensors: &pruned,
            is_sparse: &is_sparse,
            format: match pattern {
                SparsityPattern::NOfM { n: 2, m: 4 } => SparseFormat::TwoFour,
                _ => SparseFormat::Bitmask,
            },
            structure: match pattern {
                SparsityPattern::NOfM { n, m } => format!("{n}:{m}"),
                SparsityPattern::Unstructured { .. } => "unstructured".into(),
            },
            tokenizer: ckpt.tokenizer.as_ref(),
            chat_template: ckpt.chat_template.as_deref(),
        };
        write_sparse_dir(&output, &args.out, 2_000_000_000, args.force, &Bar::new())?;
    } else if gguf {
        let codes = GgufCodes::new(&ckpt.config, &store);
        let export = GgufExport {
            config: &ckpt.config,
            tensors: &pruned,
            tokenizer: ckpt.tokenizer.as_ref(),
            chat_template: ckpt.chat_template.as_deref(),
            name: ckpt
                .path
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or("model"),
            encoded: scheme.map(|_| &codes as &dyn microllm_io::gguf::EncodedTensors),
            importance: None,
        };
        let summary = write_gguf(&export, &args.out, dominant, args.force, &Bar::new())?;
        report.notes.extend(summary.notes);
    } else {
        let hf = HfOutput {
            config: &ckpt.config,
            tensors: &pruned,
            tokenizer: ckpt.tokenizer.as_ref(),
            chat_template: ckpt.chat_template.as_deref(),
        };
        let dtype = match output {
            super::Output::Safetensors(d) => d,
            super::Output::Gguf(_) => unreachable!("GGUF output is written above"),
        };
        let opts = HfWriteOptions {
            dtype,
            max_shard_bytes: 2_000_000_000,
            overwrite: args.force,
        };
        write_hf_dir(&hf, &args.out, &opts, &Bar::new())?;
    }
    report.set_layers(ckpt.config.family, &summary, &tensor_plan);
    report.set_output(&args.out, &tensor_plan, written.elapsed().as_secs_f64())?;
    let zeroed: f64 = summary
        .records
        .iter()
        .zip(&linears)
        .map(|(r, i)| r.sparsity.unwrap_or(0.0) * i.numel() as f64)
        .sum();
    report.output["linear_parameters"] = json!(linear_params);
    report.output["pruned_parameters"] = json!(zeroed.round() as u64);
    report.output["linear_sparsity"] = json!(zeroed / linear_params.max(1) as f64);
    report.notes.push(format!(
        "{:.1}% of the linear weights are zero ({} of {}); they are stored {}",
        100.0 * zeroed / linear_params.max(1) as f64,
        zeroed.round() as u64,
        linear_params,
        if scheme.is_some() {
            "densely as the grids' zero points"
        } else if sparse_out {
            "sparse: nonzero values plus a bitmask (compressed-tensors)"
        } else {
            "densely: the file is no smaller until it is quantized or written with --format \
             compressed-tensors"
        }
    ));
    drop(pruned);
    if let Some(data) = &args.eval {
        let opts = microllm_eval::PerplexityOptions {
            ctx: args.eval_ctx,
            max_windows: Some(args.eval_windows),
        };
        let (base, after) = calibrate::evaluate_before_after(data, opts, &ckpt, &args.out)?;
        report.eval = Some(EvalRecord::new(data, base, after));
    }
    report.total_seconds = started.elapsed().as_secs_f64();
    let (json_path, md_path) = report.write(&args.out)?;
    report.print_summary();
    println!(
        "report       {} and {}",
        json_path.display(),
        md_path.display()
    );
    store.remove()?;
    Ok(())
}

/// `--ranking global`: the magnitude below which `sparsity` of all linear weights lie, found
/// exactly in two streaming passes over the model's linears.
fn global_threshold(
    ckpt: &microllm_io::Checkpoint,
    linears: &[microllm_core::TensorInfo],
    sparsity: f64,
) -> Result<Ranking> {
    let mut g = GlobalThreshold::default();
    let bar = Bar::new();
    for pass in 0..2 {
        bar.begin(
            "global magnitude threshold",
            linears.len() as u64,
            "tensors",
        );
        for info in linears {
            let w = ckpt
                .tensors
                .load(&info.name)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            if pass == 0 {
                g.count(&w);
            } else {
                g.collect(&w);
            }
            bar.advance(1);
        }
        bar.finish();
        if pass == 0 && !g.aim(sparsity) {
            return Ok(Ranking::PerLayer);
        }
    }
    let threshold = g.threshold().unwrap_or(0.0);
    println!("  global magnitude threshold {threshold:.6e}");
    Ok(Ranking::Global { threshold })
}

fn describe(pattern: SparsityPattern) -> String {
    match pattern {
        SparsityPattern::Unstructured { sparsity } => {
            format!("{:.0}% unstructured", sparsity * 100.0)
        }
        SparsityPattern::NOfM { n, m } => format!("{n}:{m}"),
    }
}

fn total_params(plan: &[TensorPlan]) -> usize {
    plan.iter().map(|t| t.shape.iter().product::<usize>()).sum()
}

/// Unstructured / N:M pruning flags.
#[derive(clap::Args, Debug)]
pub struct UnstructuredArgs {
    /// Pruning method [default: wanda].
    #[arg(long, value_enum)]
    pub method: Option<MethodArg>,
    /// Fraction of every linear's weights to remove, in [0, 1).
    #[arg(long, default_value_t = 0.5)]
    pub sparsity: f64,
    /// Semi-structured N:M pattern instead of --sparsity: at most N nonzero weights in every M
    /// consecutive ones (2:4, 4:8).
    #[arg(long)]
    pub pattern: Option<String>,
    /// Which weights an unstructured score competes with: each output row, each layer, or
    /// (magnitude only) the whole model [default: row for wanda and sparsegpt, layer for
    /// magnitude].
    #[arg(long, value_enum)]
    pub ranking: Option<RankingArg>,
    /// Also quantize with GPTQ to this many bits, in the same sweep (pruned weights become
    /// the grids' zero points).
    #[arg(long, value_parser = clap::value_parser!(u8).range(2..=8))]
    pub bits: Option<u8>,
    /// With --bits: input columns per scale (`channel` = one per row) [default: 32 for GGUF,
    /// 128 for safetensors].
    #[arg(long, value_parser = plan::parse_group_size)]
    pub group_size: Option<plan::GroupSize>,
    /// With --bits: asymmetric grids.
    #[arg(long)]
    pub asym: bool,
    /// Dampening of every OBS solve (SparseGPT, GPTQ), as a fraction of the mean Hessian
    /// diagonal.
    #[arg(long, default_value_t = 0.01)]
    pub damp: f64,
    /// Weight of each calibration window's first token in the q/k/v statistics [default:
    /// --seqlen for SparseGPT and --bits, 1 for Wanda].
    #[arg(long)]
    pub sink_weight: Option<f64>,
    /// Continue an interrupted run from its last finished block (same settings required).
    #[arg(long)]
    pub resume: bool,
    /// How unstructured sparsity is spread over the blocks: the same everywhere, or OWL's
    /// outlier-weighted schedule (blocks with more outlier weights pruned less, measured on
    /// the dense model; needs --calib).
    #[arg(long, value_enum, default_value_t = ScheduleArg::Uniform)]
    pub schedule: ScheduleArg,
    /// OWL: a weight is an outlier when its Wanda score exceeds this many times its block's
    /// mean score (the paper's M).
    #[arg(long, default_value_t = 5.0)]
    pub owl_threshold: f64,
    /// OWL: block sparsities spread over target +- this (the paper's lambda).
    #[arg(long, default_value_t = 0.08)]
    pub owl_lambda: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ScheduleArg {
    Uniform,
    Owl,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MethodArg {
    Magnitude,
    Wanda,
    Sparsegpt,
}

impl MethodArg {
    fn method(self) -> PruneMethod {
        match self {
            MethodArg::Magnitude => PruneMethod::Magnitude,
            MethodArg::Wanda => PruneMethod::Wanda,
            MethodArg::Sparsegpt => PruneMethod::SparseGpt,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RankingArg {
    Row,
    Layer,
    /// One magnitude threshold over every linear of the model (magnitude only).
    Global,
}
