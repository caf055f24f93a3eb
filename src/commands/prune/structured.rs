//! `microllm prune --structured`: a genuinely smaller dense model.
//!
//! The flow is plan -> measure -> write. The kept counts (channels, heads, blocks) follow from
//! the flags and the model's configuration alone, so bad input and `--dry-run` (shapes,
//! parameters, size) need no calibration. Importance is then measured on calibration windows
//! run through the original blocks one at a time (`microllm_pipeline::structured`), the kept
//! indices are chosen per block (`microllm_prune::structured`), and the existing writers
//! stream the pruned model from a slicing view of the original (`PrunedSource`) with the
//! rewritten configuration: outputs stay atomic, tokenizer and chat template carry over.

mod report;

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use microllm_core::{ModelConfig, TensorSource};
use microllm_io::Checkpoint;
use microllm_io::calibration::CalibrationSet;
use microllm_io::gguf::{GgufExport, write_gguf};
use microllm_io::write::{HfOutput, HfWriteOptions, write_hf_dir};
use microllm_pipeline::structured::{ImportanceJob, ImportanceMetric, measure_importance};
use microllm_prune::structured::{
    HeadMode, PrunedSource, Scores, StructuredPlan, StructuredSpec, Targets, targets,
};

use self::report::{Report, SizeRecord};
use super::Output;
use crate::progress::Bar;

/// Structured pruning flags (with --structured).
#[derive(clap::Args, Debug)]
pub struct StructuredArgs {
    /// Remove whole structures (MLP channels, attention heads, decoder blocks) and write a
    /// smaller dense model with a rewritten config.json.
    #[arg(long)]
    pub structured: bool,
    /// Fraction of MLP channels (intermediate neurons) kept in every block, in (0, 1].
    #[arg(long, default_value_t = 1.0, requires = "structured")]
    pub mlp_keep: f64,
    /// Round the kept MLP channel count to a multiple of this (kernels like multiples of 32;
    /// 1 keeps exactly the fraction).
    #[arg(long, default_value_t = 32, requires = "structured")]
    pub mlp_multiple: usize,
    /// Fraction of query heads kept in every block, in (0, 1]; must spread evenly over the
    /// key/value groups (see --head-mode).
    #[arg(long, default_value_t = 1.0, requires = "structured")]
    pub heads_keep: f64,
    /// kv-groups: remove whole KV groups (a key/value head and its query heads); per-group:
    /// keep every key/value head and the same number of query heads in each group.
    #[arg(long, value_enum, default_value_t = HeadModeArg::PerGroup, requires = "structured")]
    pub head_mode: HeadModeArg,
    /// Decoder blocks to remove, those of least ShortGPT block influence (1 - cos(input,
    /// output) on calibration tokens).
    #[arg(long, default_value_t = 0, requires = "structured")]
    pub drop_layers: usize,
    /// How channels and heads are scored: activation (calibration activations times the
    /// output weights) or magnitude (weights only, no calibration).
    #[arg(long, value_enum, default_value_t = ImportanceArg::Activation, requires = "structured")]
    pub importance: ImportanceArg,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum HeadModeArg {
    KvGroups,
    PerGroup,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ImportanceArg {
    Activation,
    Magnitude,
}

pub fn run(args: &super::Args) -> Result<()> {
    let started = Instant::now();
    let s = &args.structured;
    if args.out.exists() && !args.force && !args.dry_run {
        bail!(
            "{} already exists; pass --force to replace it",
            args.out.display()
        );
    }
    let ckpt = crate::commands::open_model(&args.model)?;
    let cfg = &ckpt.config;
    let spec = StructuredSpec {
        mlp_keep: s.mlp_keep,
        mlp_multiple: s.mlp_multiple,
        heads_keep: s.heads_keep,
        head_mode: match s.head_mode {
            HeadModeArg::KvGroups => HeadMode::KvGroups,
            HeadModeArg::PerGroup => HeadMode::PerGroup,
        },
        drop_layers: s.drop_layers,
    };
    let t = targets(&spec, cfg)?;
    let output = super::output_kind(args, cfg);
    let metric = match s.importance {
        ImportanceArg::Activation => ImportanceMetric::Activation,
        ImportanceArg::Magnitude => ImportanceMetric::Magnitude,
    };

    let shapes = StructuredPlan::shapes_only(cfg, &t);
    let shaped = PrunedSource::new(ckpt.tensors.as_ref(), &shapes)?;
    let size = SizeRecord {
        parameters_before: parameters(ckpt.tensors.as_ref()),
        parameters_after: parameters(&shaped),
        tensor_bytes_before: tensor_bytes(cfg, ckpt.tensors.as_ref(), output)?,
        tensor_bytes_after: tensor_bytes(&shapes.config, &shaped, output)?,
        file_bytes: None,
    };
    drop(shaped);
    print_plan(args, cfg, &t, &size, output);
    if args.dry_run {
        return Ok(());
    }

    let channels_or_heads = t.channels < cfg.intermediate_size || t.heads < cfg.num_heads;
    let drops = t.layers < cfg.num_layers;
    let needs_calibration = drops || (channels_or_heads && metric == ImportanceMetric::Activation);
    let calibration = if needs_calibration {
        Some(calibration(args, &ckpt, drops)?)
    } else {
        None
    };
    let scores = if t.removes_anything(cfg) {
        let job = ImportanceJob {
            config: cfg,
            source: ckpt.tensors.as_ref(),
            calibration: calibration.as_ref().map_or(&[][..], |c| &c.windows[..]),
            metric,
            block_influence: drops,
        };
        measure_importance(&job, &Bar::new()).context("measuring importance")?
    } else {
        Scores::default()
    };
    let plan = StructuredPlan::from_scores(cfg, &t, spec.head_mode, &scores)?;
    let pruned = PrunedSource::new(ckpt.tensors.as_ref(), &plan)?;
    let written = Instant::now();
    let file_bytes = write(args, &ckpt, &plan.config, &pruned, output)?;
    let write_seconds = written.elapsed().as_secs_f64();
    drop(pruned);

    let mut report = Report::new(args, &ckpt, &spec, metric, output_name(output));
    report.calibration = calibration.as_ref().map(|c| report::calibration(args, c));
    report.size = SizeRecord {
        file_bytes: Some(file_bytes),
        ..size
    };
    report.set_plan(&plan, &scores);
    report.write_seconds = write_seconds;
    if let Some(data) = &args.eval {
        report.eval = Some(evaluate(args, data, &ckpt)?);
    }
    report.total_seconds = started.elapsed().as_secs_f64();
    let (json, md) = report.write(&args.out)?;
    report.print_summary();
    println!("report       {} and {}", json.display(), md.display());
    Ok(())
}

fn output_name(output: Output) -> String {
    match output {
        Output::Safetensors(d) => format!("safetensors ({})", d.torch_name()),
        Output::Gguf(t) => format!("gguf ({} matrices)", t.describe()),
    }
}

fn parameters(src: &dyn TensorSource) -> usize {
    src.infos().iter().map(|i| i.numel()).sum()
}

/// Bytes of tensor data the output format takes for `src` (exact for safetensors; for GGUF
/// the writer's own type decisions, fallbacks included).
fn tensor_bytes(cfg: &ModelConfig, src: &dyn TensorSource, output: Output) -> Result<u64> {
    Ok(match output {
        Output::Safetensors(d) => src
            .infos()
            .iter()
            .map(|i| (i.numel() * d.size()) as u64)
            .sum(),
        Output::Gguf(t) => microllm_io::gguf::plan_types(cfg, src, t)?
            .iter()
            .map(|d| {
                let n: usize = d.shape.iter().product();
                (n / d.dtype.block_size() * d.dtype.type_size()) as u64
            })
            .sum(),
    })
}

fn print_plan(args: &super::Args, cfg: &ModelConfig, t: &Targets, size: &SizeRecord, out: Output) {
    println!(
        "prune --structured {} -> {} ({})",
        args.model,
        args.out.display(),
        output_name(out)
    );
    let row = |what: &str, before: usize, after: usize| {
        println!("  {what:<22} {before:>10} -> {after:<10}");
    };
    row("decoder blocks", cfg.num_layers, t.layers);
    row("MLP channels / block", cfg.intermediate_size, t.channels);
    row("query heads / block", cfg.num_heads, t.heads);
    row("KV heads / block", cfg.num_kv_heads, t.kv_heads);
    println!(
        "  head_dim {} (unchanged), hidden_size {} (unchanged)",
        cfg.head_dim, cfg.hidden_size
    );
    let (h, hd) = (cfg.hidden_size, cfg.head_dim);
    println!(
        "  per block: q [{}, {h}] -> [{}, {h}], k/v [{}, {h}] -> [{}, {h}], o [{h}, {}] -> [{h}, {}]",
        cfg.num_heads * hd,
        t.heads * hd,
        cfg.num_kv_heads * hd,
        t.kv_heads * hd,
        cfg.num_heads * hd,
        t.heads * hd
    );
    println!(
        "             up/gate [{}, {h}] -> [{}, {h}], down [{h}, {}] -> [{h}, {}]",
        cfg.intermediate_size, t.channels, cfg.intermediate_size, t.channels
    );
    println!(
        "  parameters {} -> {} ({:.1}%), tensor data {:.1} MB -> {:.1} MB (estimated)",
        size.parameters_before,
        size.parameters_after,
        100.0 * size.parameters_after as f64 / size.parameters_before.max(1) as f64,
        size.tensor_bytes_before as f64 / 1e6,
        size.tensor_bytes_after as f64 / 1e6
    );
}

fn write(
    args: &super::Args,
    ckpt: &Checkpoint,
    config: &ModelConfig,
    pruned: &PrunedSource<'_>,
    output: Output,
) -> Result<u64> {
    match output {
        Output::Safetensors(dtype) => {
            let out = HfOutput {
                config,
                tensors: pruned,
                tokenizer: ckpt.tokenizer.as_ref(),
                chat_template: ckpt.chat_template.as_deref(),
            };
            let opts = HfWriteOptions {
                dtype,
                max_shard_bytes: 2_000_000_000,
                overwrite: args.force,
            };
            let summary = write_hf_dir(&out, &args.out, &opts, &Bar::new())
                .with_context(|| format!("writing {}", args.out.display()))?;
            dir_bytes(&summary.dir)
        }
        Output::Gguf(dtype) => {
            let name = ckpt
                .path
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or("model");
            let export = GgufExport {
                config,
                tensors: pruned,
                tokenizer: ckpt.tokenizer.as_ref(),
                chat_template: ckpt.chat_template.as_deref(),
                name,
                encoded: None,
                importance: None,
            };
            let summary = write_gguf(&export, &args.out, dtype, args.force, &Bar::new())
                .with_context(|| format!("writing {}", args.out.display()))?;
            Ok(std::fs::metadata(&summary.path)
                .with_context(|| format!("reading {}", summary.path.display()))?
                .len())
        }
    }
}

/// Total bytes of the files in a directory (flat, as the writers produce it).
fn dir_bytes(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        total += entry?.metadata()?.len();
    }
    Ok(total)
}

/// Calibration windows from --calib, with a too-short file an error unless allowed.
fn calibration(args: &super::Args, ckpt: &Checkpoint, drops: bool) -> Result<CalibrationSet> {
    let Some(path) = &args.calib else {
        bail!(
            "{} needs calibration data: pass --calib FILE (text, or .safetensors with int64 \
             `input_ids`){}",
            if drops {
                "--drop-layers (block influence)"
            } else {
                "--importance activation"
            },
            if drops {
                ""
            } else {
                ", or use --importance magnitude"
            }
        );
    };
    if args.samples == 0 || args.seqlen == 0 {
        bail!("--samples and --seqlen must be positive");
    }
    let is_ids = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("safetensors"));
    let set = if is_ids {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let ids: Vec<u32> = microllm_io::arrays::read_token_ids(path, "input_ids")?.concat();
        CalibrationSet::draw_from(&bytes, &ids, args.samples, args.seqlen, args.seed)
    } else {
        let text = crate::commands::read_text(path)?;
        let ids = ckpt
            .require_tokenizer()?
            .encode(&text, false)
            .with_context(|| format!("tokenizing {}", path.display()))?;
        CalibrationSet::draw(&text, &ids, args.samples, args.seqlen, args.seed)
    };
    if set.windows.is_empty() || (set.shortfall() > 0 && !args.allow_short_calib) {
        bail!(
            "{} holds {} tokens: {} windows of {}, fewer than the {} asked for (--samples); use \
             a longer file, fewer --samples or a shorter --seqlen{}",
            path.display(),
            set.text_tokens,
            set.available,
            set.seqlen,
            set.requested,
            if set.windows.is_empty() {
                ""
            } else {
                ", or --allow-short-calib"
            }
        );
    }
    Ok(set)
}

fn evaluate(args: &super::Args, data: &Path, ckpt: &Checkpoint) -> Result<report::EvalRecord> {
    let text = crate::commands::read_text(data)?;
    let tokens = ckpt
        .require_tokenizer()?
        .encode(&text, true)
        .with_context(|| format!("tokenizing {}", data.display()))?;
    let opts = microllm_eval::PerplexityOptions {
        ctx: args.eval_ctx,
        max_windows: Some(args.eval_windows),
    };
    let measure = |c: &Checkpoint| -> Result<microllm_eval::PerplexityResult> {
        let model = crate::commands::load_decoder(c)?;
        Ok(microllm_eval::perplexity(
            &model,
            &tokens,
            opts,
            &Bar::new(),
        )?)
    };
    let original = measure(ckpt).context("evaluating the original model")?;
    let output = crate::commands::open_model(&args.out.to_string_lossy())?;
    let pruned = measure(&output).context("evaluating the pruned model")?;
    Ok(report::EvalRecord {
        data: data.display().to_string(),
        original,
        pruned,
    })
}
