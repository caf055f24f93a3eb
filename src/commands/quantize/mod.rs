//! `microllm quantize`: GPTQ or RTN, streamed block by block, to GGUF or safetensors, with a
//! report of what was lost.

pub(crate) mod plan;
pub(crate) mod report;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use candle_core::quantized::GgmlDType;
use microllm_io::Checkpoint;
use microllm_io::gguf::{GgufExport, GgufTypes, write_gguf};
use microllm_io::quantized::QuantMethod;
use microllm_io::write::{HfOutput, HfWriteOptions, PackedOutput, write_hf_dir, write_packed_dir};
use microllm_pipeline::output::{GgufCodes, QuantizedSource};
use microllm_pipeline::packed::{
    StoredLinears, compressed_quantization_config, gptq_quantization_config,
};
use microllm_pipeline::{BlockMethod, BlockStore, LayerwiseJob, measure_imatrix, run_layerwise};
use microllm_quant::{ClipSearch, GptqOptions, QuantScheme};

use self::plan::{GroupSize, parse_group_size};
use self::report::{CalibrationRecord, EvalRecord, Report};
use super::calibrate::{self, CalibrationRequest};
use super::convert::{Dtype, GgufType};
use crate::progress::Bar;

/// Quantize a model's linear layers with GPTQ (calibrated) or round-to-nearest.
///
/// The model is streamed one decoder block at a time: peak memory is one block, its Hessians
/// and the calibration activations. Output is GGUF by default: GPTQ/RTN codes whose groups are
/// whole 32-weight blocks are written exactly as Q4_0 (symmetric, 2-4 bits), Q4_1
/// (asymmetric, 2-4 bits) or Q8_0 (symmetric, 5-8 bits); other settings are stored as F16 of
/// the quantized weights (the report says so). --format safetensors writes a Hugging Face
/// directory holding the quantized weights' values in --dtype. --format gptq and --format
/// compressed-tensors write Hugging Face directories with the codes packed as GPTQ (v1) or
/// compressed-tensors (pack-quantized) checkpoints, the other tensors in their source dtype
/// (f16 when the source is GGUF-quantized); with --act-order their groups follow the
/// processing order (g_idx), as transformers and vLLM expect. --gguf-type instead writes
/// llama.cpp's own block types or mixes (Q4_K_M ...) by llama.cpp's round-to-nearest, with an
/// importance matrix from --calib when given. A report
/// (OUT.report.json and OUT.report.md beside the output) records per-layer errors, size,
/// bits/weight, time, and with --eval the perplexity before and after.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Model directory, .gguf file or hub repo id.
    #[arg(long, short)]
    model: String,
    /// Output file (GGUF) or directory (safetensors, gptq, compressed-tensors); must not
    /// exist unless --force.
    #[arg(long, short)]
    out: PathBuf,
    /// Bits per weight code, 2-8.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u8).range(2..=8))]
    bits: u8,
    /// Quantization algorithm [default: gptq; rtn with --gguf-type].
    #[arg(long, value_enum)]
    method: Option<Method>,
    /// Input columns sharing one scale: a number dividing every linear's input size, or
    /// `channel` for one group per output row. Default: 32 for GGUF, 128 for safetensors (or
    /// the largest of 64/32/16 that divides every row).
    #[arg(long, value_parser = parse_group_size)]
    group_size: Option<GroupSize>,
    /// Symmetric grids (zero point 2^(bits-1)); the default.
    #[arg(long, conflicts_with = "asym")]
    sym: bool,
    /// Asymmetric grids (fitted zero point).
    #[arg(long)]
    asym: bool,
    /// GPTQ: process columns by decreasing Hessian diagonal (with GGUF output, groups are
    /// then fixed up front, "static groups", so they stay contiguous blocks).
    #[arg(long)]
    act_order: bool,
    /// GPTQ: weight of each calibration window's first token (the attention sink) in the
    /// q/k/v Hessians [default: --seqlen; 1 = plain GPTQ].
    #[arg(long)]
    sink_weight: Option<f64>,
    /// GPTQ: fit every group's grid to its min/max instead of searching the clipping range
    /// that loses least (the search is the default; see docs/benchmarks.md).
    #[arg(long)]
    no_clip_search: bool,
    /// GPTQ: dampening as a fraction of the Hessian's mean diagonal.
    #[arg(long, default_value_t = 0.01)]
    damp: f64,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Gguf)]
    format: Format,
    /// Write llama.cpp's block type or mix instead (`q4_k_m` ...; round-to-nearest as
    /// llama.cpp does, no GPTQ); with --calib, k-quant blocks are fitted with an importance
    /// matrix measured on the calibration windows (llama.cpp's imatrix).
    #[arg(long, value_enum)]
    gguf_type: Option<GgufType>,
    /// Weight dtype of --format safetensors output (gptq / compressed-tensors keep the
    /// unquantized tensors in their source dtype).
    #[arg(long, value_enum, default_value_t = Dtype::F16)]
    dtype: Dtype,
    /// Calibration data: a UTF-8 text file, or a .safetensors file with int64 `input_ids`.
    #[arg(long)]
    calib: Option<PathBuf>,
    /// Calibration windows.
    #[arg(long, default_value_t = 128)]
    samples: usize,
    /// Tokens per calibration window.
    #[arg(long, default_value_t = 512)]
    seqlen: usize,
    /// Seed of the calibration window draw.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Use fewer windows than --samples when the data is too short (recorded in the report)
    /// instead of failing.
    #[arg(long)]
    allow_short_calib: bool,
    /// Continue an interrupted run from its last finished block (same settings required).
    #[arg(long)]
    resume: bool,
    /// Print the plan (tensors, types, fallbacks, estimated size) and stop.
    #[arg(long)]
    dry_run: bool,
    /// Replace --out if it exists.
    #[arg(long)]
    force: bool,
    /// Measure perplexity on this text before and after, with the output file reloaded.
    #[arg(long)]
    eval: Option<PathBuf>,
    /// Tokens per evaluation window.
    #[arg(long, default_value_t = 512)]
    eval_ctx: usize,
    /// Evaluation windows (the first N of the text).
    #[arg(long, default_value_t = 24)]
    eval_windows: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Method {
    Gptq,
    Rtn,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Format {
    /// llama.cpp's GGUF file.
    Gguf,
    /// Hugging Face directory of the dequantized values in --dtype.
    Safetensors,
    /// GPTQ checkpoint (v1: qweight/qzeros/scales/g_idx), a Hugging Face directory.
    Gptq,
    /// compressed-tensors `pack-quantized` checkpoint (llm-compressor's), a directory.
    CompressedTensors,
}

impl Format {
    /// GPTQ and compressed-tensors: packed codes in a Hugging Face directory.
    fn packed(self) -> bool {
        matches!(self, Format::Gptq | Format::CompressedTensors)
    }
}

pub fn run(args: Args) -> Result<()> {
    let started = Instant::now();
    if args.out.exists() && !args.force && !args.dry_run {
        bail!(
            "{} already exists; pass --force to replace it",
            args.out.display()
        );
    }
    if args.gguf_type.is_some() && args.format != Format::Gguf {
        bail!(
            "--gguf-type applies to GGUF output, not --format {:?}",
            args.format
        );
    }
    if args
        .sink_weight
        .is_some_and(|w| !(w.is_finite() && w > 0.0))
    {
        bail!("--sink-weight must be a positive number");
    }
    let ckpt = super::open_model(&args.model)?;
    let mut report = Report::new(&args.model, &ckpt, &args.out);
    if let Some(note) = already_quantized_note(&ckpt) {
        report.notes.push(note);
    }
    if let Some(t) = args.gguf_type {
        return ggml_rtn(&args, &ckpt, t.types(), report, started);
    }
    let method_kind = args.method.unwrap_or(Method::Gptq);

    let linears = plan::linear_infos(&ckpt.config, ckpt.tensors.as_ref())?;
    let gguf = args.format == Format::Gguf;
    let group = plan::resolve_group_size(args.group_size, gguf, &linears)?;
    // Every packed format (GGUF blocks, GPTQ checkpoints) stores scales as f16: rounding them
    // before codes are chosen keeps every output exactly the quantizer's result.
    let scheme = QuantScheme::new(args.bits, group, !args.asym)?.with_f16_scales();
    let gptq = GptqOptions {
        damp_percent: args.damp,
        act_order: args.act_order,
        // Contiguous groups are what ggml blocks (and most kernels) need.
        static_groups: args.act_order && gguf,
        clip_search: (!args.no_clip_search).then(ClipSearch::default),
        ..GptqOptions::default()
    };
    let method = match method_kind {
        Method::Gptq => BlockMethod::Gptq {
            opts: gptq,
            sink_weight: args.sink_weight.unwrap_or(args.seqlen as f64),
        },
        Method::Rtn => BlockMethod::Rtn,
    };
    let scattered = args.act_order && !gptq.static_groups && method_kind == Method::Gptq;
    let (tensor_plan, dominant) = if gguf {
        plan::gguf_plan(&ckpt.config, ckpt.tensors.as_ref(), &scheme, scattered)?
    } else if args.format.packed() {
        let ct = args.format == Format::CompressedTensors;
        let plan = plan::packed_plan(&ckpt.config, ckpt.tensors.as_ref(), &scheme, ct, scattered);
        (plan, GgmlDType::F16)
    } else {
        let plan = plan::dense_plan(&ckpt.config, ckpt.tensors.as_ref(), args.dtype.out());
        (plan, GgmlDType::F16)
    };
    if gguf {
        let block_bits = match dominant {
            GgmlDType::Q8_0 => 8,
            GgmlDType::Q4_0 | GgmlDType::Q4_1 => 4,
            _ => 0,
        };
        if scheme.bits < block_bits {
            report.notes.push(format!(
                "{}-bit codes are stored in {dominant:?} blocks ({block_bits}-bit slots): the \
                 weights are exactly the {}-bit model's, the file is the size of a \
                 {block_bits}-bit one (GGUF has no legacy {}-bit block)",
                scheme.bits, scheme.bits, scheme.bits
            ));
        }
    }
    report.set_scheme(
        method_kind,
        &scheme,
        (method_kind == Method::Gptq).then_some(gptq),
    );
    if let BlockMethod::Gptq { sink_weight, .. } = method {
        report.scheme["gptq"]["sink_weight"] = serde_json::json!(sink_weight);
    }
    if gptq.static_groups {
        report
            .notes
            .push("act-order with GGUF output: groups fixed up front (static groups)".into());
    }
    println!(
        "quantize {} -> {}: {:?}, {} bits, {}, {}",
        args.model,
        args.out.display(),
        method_kind,
        scheme.bits,
        group.map_or("per-channel".to_string(), |g| format!("group {g}")),
        if scheme.symmetric {
            "symmetric"
        } else {
            "asymmetric"
        }
    );
    plan::print_plan(&tensor_plan);
    if args.dry_run {
        return Ok(());
    }

    let calibration = match method_kind {
        Method::Gptq => Some(calibrate::draw(
            CalibrationRequest {
                path: args.calib.as_deref(),
                samples: args.samples,
                seqlen: args.seqlen,
                seed: args.seed,
                allow_short: args.allow_short_calib,
                missing_hint: "GPTQ needs calibration data (or use --method rtn)",
            },
            &ckpt,
        )?),
        Method::Rtn => None,
    };
    if let Some(set) = &calibration {
        report.calibration = Some(CalibrationRecord::new(args.calib.as_deref(), set));
    }
    let windows = calibration.as_ref().map_or(&[][..], |c| &c.windows[..]);
    let work = calibrate::work_dir(&args.out);
    let fingerprint = serde_json::json!({
        "microllm": env!("CARGO_PKG_VERSION"),
        "model": args.model,
        "model_bytes": ckpt.stored_bytes(),
        "scheme": report.scheme,
        "calibration": report.calibration,
    });
    let store = BlockStore::open(&work, &fingerprint, args.resume)?;
    let job = LayerwiseJob {
        config: &ckpt.config,
        source: ckpt.tensors.as_ref(),
        calibration: windows,
        scheme,
        method,
    };
    let summary = run_layerwise(&job, &store, &Bar::new()).with_context(|| {
        format!(
            "quantizing {} (work directory {})",
            args.model,
            work.display()
        )
    })?;
    if summary.resumed_blocks > 0 {
        println!("resumed after {} finished blocks", summary.resumed_blocks);
    }

    let written = Instant::now();
    let quantized = QuantizedSource::new(&ckpt.config, ckpt.tensors.as_ref(), &store);
    if gguf {
        let codes = GgufCodes::new(&ckpt.config, &store);
        let export = gguf_export(&ckpt, &quantized, Some(&codes));
        let summary = write_gguf(&export, &args.out, dominant, args.force, &Bar::new())?;
        report.notes.extend(summary.notes);
    } else if args.format.packed() {
        let linears = StoredLinears::new(&ckpt.config, &store);
        let (method, quantization_config) = if args.format == Format::Gptq {
            let wrapped = linears.gptq_wrapped_zeros(ckpt.config.num_layers)?;
            if wrapped > 0 {
                report.notes.push(format!(
                    "{wrapped} groups have zero point 0, stored as GPTQ v1's wrapped field \
                     2^bits-1: microllm and GPTQModel read them exactly, kernels that add 1 \
                     without masking (legacy exllama) read zero 2^bits"
                ));
            }
            let qc = gptq_quantization_config(&scheme, scattered, gptq.static_groups, args.damp);
            (QuantMethod::Gptq, qc)
        } else {
            let qc = compressed_quantization_config(&scheme, scattered);
            (QuantMethod::CompressedTensors, qc)
        };
        let output = PackedOutput {
            config: &ckpt.config,
            tensors: ckpt.tensors.as_ref(),
            packed: &linears,
            method,
            quantization_config,
            tokenizer: ckpt.tokenizer.as_ref(),
            chat_template: ckpt.chat_template.as_deref(),
        };
        write_packed_dir(&output, &args.out, 2_000_000_000, args.force, &Bar::new())?;
    } else {
        let output = HfOutput {
            config: &ckpt.config,
            tensors: &quantized,
            tokenizer: ckpt.tokenizer.as_ref(),
            chat_template: ckpt.chat_template.as_deref(),
        };
        let opts = HfWriteOptions {
            dtype: args.dtype.out(),
            max_shard_bytes: 2_000_000_000,
            overwrite: args.force,
        };
        write_hf_dir(&output, &args.out, &opts, &Bar::new())?;
    }
    report.set_layers(ckpt.config.family, &summary, &tensor_plan);
    report.set_output(&args.out, &tensor_plan, written.elapsed().as_secs_f64())?;
    drop(quantized);
    finish(&args, &ckpt, report, started)?;
    store.remove()?;
    Ok(())
}

/// `--gguf-type`: llama.cpp's own types (or mixes) by round-to-nearest, as `convert` writes
/// them; with `--calib`, k-quant blocks are fitted with an importance matrix measured on the
/// calibration windows, as llama.cpp's `--imatrix` does.
fn ggml_rtn(
    args: &Args,
    ckpt: &Checkpoint,
    types: GgufTypes,
    mut report: Report,
    started: Instant,
) -> Result<()> {
    if args.method == Some(Method::Gptq) {
        bail!(
            "--gguf-type writes llama.cpp's round-to-nearest block types, which GPTQ does not \
             produce; use --method rtn, or drop --gguf-type to get GPTQ codes in Q4_0/Q4_1/Q8_0 blocks"
        );
    }
    let decisions = microllm_io::gguf::plan_types(&ckpt.config, ckpt.tensors.as_ref(), types)?;
    let plan = plan::from_decisions(&ckpt.config, decisions, |_| None)?;
    println!(
        "quantize {} -> {}: llama.cpp's {} by round-to-nearest{}",
        args.model,
        args.out.display(),
        types.describe(),
        if args.calib.is_some() {
            ", k-quant blocks weighted by an importance matrix from --calib"
        } else {
            ""
        }
    );
    plan::print_plan(&plan);
    if args.dry_run {
        return Ok(());
    }
    report.method = "ggml-rtn".into();
    report.scheme = serde_json::json!({ "gguf_types": types.describe() });
    let importance = match &args.calib {
        Some(_) => {
            let set = calibrate::draw(
                CalibrationRequest {
                    path: args.calib.as_deref(),
                    samples: args.samples,
                    seqlen: args.seqlen,
                    seed: args.seed,
                    allow_short: args.allow_short_calib,
                    missing_hint: "the importance matrix needs calibration data",
                },
                ckpt,
            )?;
            report.calibration = Some(CalibrationRecord::new(args.calib.as_deref(), &set));
            let matrix = measure_imatrix(
                &ckpt.config,
                ckpt.tensors.as_ref(),
                &set.windows,
                &Bar::new(),
            )
            .context("measuring the importance matrix")?;
            Some(matrix)
        }
        None => None,
    };
    report.notes.push(format!(
        "{}: llama.cpp's block types, by llama.cpp's round-to-nearest{} (GPTQ does not apply)",
        types.describe(),
        if importance.is_some() {
            " with an importance matrix (llama.cpp's imatrix) for k-quant blocks"
        } else {
            ", no calibration"
        }
    ));
    let mut export = gguf_export(ckpt, ckpt.tensors.as_ref(), None);
    export.importance = importance.as_ref();
    let written = Instant::now();
    let summary = write_gguf(&export, &args.out, types, args.force, &Bar::new())?;
    report.notes.extend(summary.notes);
    if importance.is_some() {
        let matrices = summary.tensors.iter().filter(|t| t.shape.len() == 2);
        let (weighted, plain): (Vec<_>, Vec<_>) = matrices.partition(|t| t.importance_weighted);
        let types_of = |ts: &[&microllm_io::gguf::TypeDecision]| {
            let set: std::collections::BTreeSet<_> =
                ts.iter().map(|t| format!("{:?}", t.dtype)).collect();
            set.into_iter().collect::<Vec<_>>().join(", ")
        };
        report.notes.push(format!(
            "importance matrix applied to {} matrices ({}); not to {} others ({}: candle has \
             importance-weighted quantizers for k-quants only)",
            weighted.len(),
            types_of(&weighted),
            plain.len(),
            types_of(&plain),
        ));
    }
    report.set_output(&args.out, &plan, written.elapsed().as_secs_f64())?;
    finish(args, ckpt, report, started)
}

fn gguf_export<'a>(
    ckpt: &'a Checkpoint,
    tensors: &'a dyn microllm_core::TensorSource,
    encoded: Option<&'a dyn microllm_io::gguf::EncodedTensors>,
) -> GgufExport<'a> {
    GgufExport {
        config: &ckpt.config,
        tensors,
        tokenizer: ckpt.tokenizer.as_ref(),
        chat_template: ckpt.chat_template.as_deref(),
        name: ckpt
            .path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("model"),
        encoded,
        importance: None,
    }
}

/// Optional evaluation, then the report files.
fn finish(args: &Args, ckpt: &Checkpoint, mut report: Report, started: Instant) -> Result<()> {
    if let Some(data) = &args.eval {
        let opts = microllm_eval::PerplexityOptions {
            ctx: args.eval_ctx,
            max_windows: Some(args.eval_windows),
        };
        let (base, after) = calibrate::evaluate_before_after(data, opts, ckpt, &args.out)?;
        report.eval = Some(EvalRecord::new(data, base, after));
    }
    report.total_seconds = started.elapsed().as_secs_f64();
    let (json, md) = report.write(&args.out)?;
    report.print_summary();
    println!("report       {} and {}", json.display(), md.display());
    Ok(())
}

/// A note when the source's linears are already block-quantized (re-quantizing with the same
/// scheme is then trivially lossless, which makes such a figure meaningless).
fn already_quantized_note(ckpt: &Checkpoint) -> Option<String> {
    let cfg = &ckpt.config;
    let types: std::collections::BTreeSet<String> = ckpt
        .tensors
        .infos()
        .into_iter()
        .filter(|i| microllm_core::names::parse_linear_weight(cfg.family, &i.name).is_some())
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
