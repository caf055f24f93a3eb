//! `microllm distill`: the training command.
//!
//! Everything that can be wrong with the input is checked before any long work: the loss
//! names, the vocabularies and tokenizers of teacher and student, the store's tokenizer,
//! window length, temperature, data and teacher against the run, hidden-state widths. Then
//! the student is built (loaded, or cut out of the teacher), trained with checkpoints in
//! `OUT.microllm-work`, written as a Hugging Face directory and described in
//! `OUT.report.json` / `OUT.report.md`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use microllm_distill::fingerprint::sha256_bytes;
use microllm_distill::loss::{LogitMix, LossSpec};
use microllm_distill::models::resolve_model_spec;
use microllm_distill::report::{DataInfo, DistillReport, EvalInfo, StudentRecord};
use microllm_distill::store::TeacherStore;
use microllm_distill::student::{Freeze, Student};
use microllm_distill::train::{
    AdamWConfig, Evaluation, MomentPrecision, Targets, TrainJob, TrainOutcome, TrainSettings, train,
};
use microllm_eval::PerplexityOptions;
use microllm_io::Checkpoint;
use microllm_io::write::{HfOutput, HfWriteOptions, write_hf_dir};
use microllm_models::Decoder;

use super::setup::{
    StudentSource, check_vocabularies, eval_tokens, hidden_loss, model_record, open_store,
    student_source,
};
use super::summary::{print_plan, print_summary};
use crate::commands::convert::Dtype;
use crate::progress::Bar;

/// How AdamW stores its moments (`--moments`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(super) enum Moments {
    Bf16,
    F32,
}

#[derive(Debug, clap::Args)]
pub struct TrainArgs {
    /// The teacher: a directory, a .gguf file, a hub id or a short name (mistral-7b, phi-2,
    /// tinyllama, llama-2-7b, smollm2-135m, ...). Needed for a live teacher, for
    /// --student-from-teacher, and to check a store's teacher.
    #[arg(long)]
    pub(super) teacher: Option<String>,
    /// The student checkpoint (same kinds of source as --teacher).
    #[arg(long, conflicts_with = "student_from_teacher")]
    pub(super) student: Option<String>,
    /// Cut the student out of the teacher by structured pruning, e.g. "drop-layers=6" or
    /// "drop-layers=4,mlp-keep=0.75" (keys: drop-layers, mlp-keep, heads-keep, mlp-multiple,
    /// head-mode); importance is measured on --calib-samples windows of --data.
    #[arg(long)]
    pub(super) student_from_teacher: Option<String>,
    /// Training text (UTF-8; or a .safetensors file with int64 `input_ids`), cut into windows
    /// of --seqlen tokens.
    #[arg(long, required = true)]
    pub(super) data: Option<PathBuf>,
    /// A teacher-logit store from `microllm distill logits` (made from --data) to train
    /// against instead of a live teacher.
    #[arg(long)]
    pub(super) logits: Option<PathBuf>,
    /// Loss terms and weights: kl (forward KL), reverse-kl, jsd, ce (next-token
    /// cross-entropy), hidden-mse, hidden-cos; e.g. kl:1.0,ce:0.1.
    #[arg(long, default_value = "kl:1")]
    pub(super) loss: String,
    /// Temperature of the divergences (scaled by T²); a store fixes it.
    #[arg(long, value_parser = crate::commands::finite_f64, default_value_t = 1.0)]
    pub(super) temperature: f64,
    /// Optimizer steps.
    #[arg(long, conflicts_with = "tokens", required_unless_present = "tokens")]
    pub(super) steps: Option<u64>,
    /// Training tokens (rounded up to whole steps).
    #[arg(long)]
    pub(super) tokens: Option<u64>,
    /// Peak learning rate (AdamW).
    #[arg(long, value_parser = crate::commands::finite_f64, default_value_t = 2e-4)]
    pub(super) lr: f64,
    /// Linear warmup steps.
    #[arg(long, default_value_t = 10)]
    pub(super) warmup_steps: u64,
    /// The cosine schedule ends at this fraction of --lr.
    #[arg(long, value_parser = crate::commands::finite_f64, default_value_t = 0.1)]
    pub(super) min_lr_ratio: f64,
    /// Windows per micro-batch.
    #[arg(long, default_value_t = 8)]
    pub(super) batch: usize,
    /// Tokens per training window.
    #[arg(long, default_value_t = 256)]
    pub(super) seqlen: usize,
    /// Micro-batches per optimizer step (gradient accumulation).
    #[arg(long, default_value_t = 1)]
    pub(super) accumulation: usize,
    /// Clip the global gradient norm to this.
    #[arg(long, value_parser = crate::commands::finite_f64, default_value_t = 1.0)]
    pub(super) clip: f64,
    /// AdamW weight decay (matrices only).
    #[arg(long, value_parser = crate::commands::finite_f64, default_value_t = 0.0)]
    pub(super) weight_decay: f64,
    /// How AdamW stores its two moments: bf16 (stochastically rounded; half the optimizer's
    /// memory) or f32.
    #[arg(long, value_enum, default_value_t = Moments::Bf16)]
    pub(super) moments: Moments,
    /// Seed of the data order and of learned projections.
    #[arg(long, default_value_t = 0)]
    pub(super) seed: u64,
    /// Keep the token embedding and the output head fixed (no [vocab, hidden] gradient:
    /// much faster with large vocabularies).
    #[arg(long)]
    pub(super) freeze_embeddings: bool,
    /// Keep the first N student blocks fixed; with --freeze-embeddings the backward pass stops
    /// at block N (a derived student's first blocks are often the teacher's, untouched).
    #[arg(long, default_value_t = 0)]
    pub(super) freeze_blocks: usize,
    /// Hidden-state pairs STUDENT:TEACHER, e.g. 0:1,5:11 [default: a derived student's source
    /// blocks, else evenly spread].
    #[arg(long)]
    pub(super) layer_map: Option<String>,
    /// Learn a projection from the student's hidden width to the teacher's (required when
    /// they differ).
    #[arg(long)]
    pub(super) hidden_projection: bool,
    /// Held-out text for perplexity before, during (--eval-every) and after training.
    #[arg(long)]
    pub(super) eval: Option<PathBuf>,
    #[arg(long, default_value_t = 512)]
    pub(super) eval_ctx: usize,
    #[arg(long, default_value_t = 24)]
    pub(super) eval_windows: usize,
    /// Evaluate every N steps (0: before and after only).
    #[arg(long, default_value_t = 0)]
    pub(super) eval_every: u64,
    /// Checkpoint every N steps (optimizer state and data position included; 0: never).
    #[arg(long, default_value_t = 50)]
    pub(super) checkpoint_every: u64,
    /// Calibration windows for --student-from-teacher importance.
    #[arg(long, default_value_t = 8)]
    pub(super) calib_samples: usize,
    #[arg(long, default_value_t = 512)]
    pub(super) calib_seqlen: usize,
    /// Continue from the checkpoint in OUT.microllm-work.
    #[arg(long)]
    pub(super) resume: bool,
    /// Replace --out if it exists.
    #[arg(long)]
    pub(super) force: bool,
    /// Weight dtype of the output directory.
    #[arg(long, value_enum, default_value_t = Dtype::F32)]
    pub(super) dtype: Dtype,
    /// Output directory (Hugging Face layout).
    #[arg(long, short, required = true)]
    pub(super) out: Option<PathBuf>,
}

pub fn run(args: TrainArgs) -> Result<()> {
    crate::commands::single_threaded_elementwise();
    let started = Instant::now();
    let out = args.out.clone().expect("clap requires --out");
    let data = args.data.clone().expect("clap requires --data");
    if out.exists() && !args.force {
        bail!(
            "{} already exists; pass --force to replace it",
            out.display()
        );
    }
    let loss = LossSpec::parse(&args.loss)?;
    let teacher = match &args.teacher {
        Some(t) => Some(crate::commands::open_model(&resolve_model_spec(t))?),
        None => None,
    };
    let student = student_source(&args, teacher.as_ref(), &data)?;
    let tokenizer = student.tokenizer.clone();
    let student_tok = super::tokenizer_id(tokenizer.as_ref());
    let text = microllm_distill::training_data::TrainingData::read(&data, tokenizer.as_ref())?;
    let data_sha = text.sha256.clone();
    if let Some(t) = &teacher {
        check_vocabularies(t, &student.config, &student_tok)?;
    }

    let store = match &args.logits {
        Some(dir) => Some(open_store(
            dir,
            &args,
            &student.config,
            &student_tok,
            &data_sha,
            teacher.as_ref(),
        )?),
        None => None,
    };
    let teacher_decoder = live_teacher(&args, &loss, teacher.as_ref(), store.is_some())?;
    let hidden = hidden_loss(&args, &loss, &student, teacher.as_ref(), store.is_some())?;

    let settings = train_settings(&args, &loss)?;
    settings.check()?;

    let tokens = text.tokens;
    let targets = match (&store, &teacher_decoder) {
        (Some(s), _) => Targets::Store(s),
        (None, Some(t)) => Targets::Live {
            teacher: t,
            tokens: &tokens,
        },
        (None, None) => Targets::Labels { tokens: &tokens },
    };
    let windows = targets.windows(settings.seqlen);
    let described = targets.describe();
    if windows < settings.batch {
        bail!(
            "{} holds {windows} windows of {} tokens, fewer than one batch of {}",
            data.display(),
            settings.seqlen,
            settings.batch
        );
    }
    let eval_tokens = match &args.eval {
        Some(p) => Some(eval_tokens(p, tokenizer.as_ref())?),
        None => None,
    };

    let model = load_student(&args, &student, settings.seqlen)?;
    let fingerprint = run_fingerprint(&args, &settings, &student, &data_sha, store.as_ref());
    let work = prepare_work_dir(&out, args.resume)?;

    print_plan(&args, &student, &settings, windows, store.as_ref());
    let job = TrainJob {
        settings: &settings,
        student: &model,
        targets,
        hidden: hidden.as_ref(),
        eval: eval_tokens.as_ref().map(|t| evaluation(&args, t)),
        work_dir: &work,
        resume: args.resume,
        fingerprint,
    };
    let outcome = train(&job, &Bar::new())?;

    write_student(&args, &model, &student, teacher.as_ref(), &out)?;

    let run = Finished {
        args: &args,
        teacher: teacher.as_ref(),
        student: &student,
        trainable: model.trainable_count(),
        data: DataInfo {
            path: data.display().to_string(),
            sha256: data_sha,
            windows,
            seqlen: settings.seqlen,
            targets: described,
            store_bytes_per_token: store.as_ref().map(|s| s.manifest().bytes_per_token()),
        },
        settings: &settings,
        out: &out,
    };
    let report = distill_report(&run, &outcome, started);
    let (json, md) = report.write(&out)?;
    std::fs::remove_dir_all(&work).with_context(|| format!("removing {}", work.display()))?;
    print_summary(&report);
    println!("report       {} and {}", json.display(), md.display());
    Ok(())
}

/// The teacher to run beside the student, when the loss needs its logits or hidden states
/// and no store stands in for it; a loss that needs a teacher without one is refused.
fn live_teacher(
    args: &TrainArgs,
    loss: &LossSpec,
    teacher: Option<&Checkpoint>,
    has_store: bool,
) -> Result<Option<Decoder>> {
    if loss.uses_teacher_logits() && !has_store && teacher.is_none() {
        bail!(
            "--loss {} compares with a teacher: pass --teacher (live) or --logits (a store)",
            args.loss
        );
    }
    Ok(match teacher {
        Some(t) if !has_store && (loss.uses_teacher_logits() || loss.hidden.is_some()) => Some(
            crate::commands::load_decoder(t, crate::commands::Compute::F32)?,
        ),
        _ => None,
    })
}

/// The student's weights as f32 variables (the frozen ones as constants).
fn load_student(args: &TrainArgs, student: &StudentSource<'_>, seqlen: usize) -> Result<Student> {
    let freeze = Freeze {
        embeddings: args.freeze_embeddings,
        blocks: args.freeze_blocks,
    };
    Student::load(
        &student.config,
        student.tensors.as_ref(),
        candle_core::DType::F32,
        freeze,
        seqlen,
    )
    .context("loading the student")
}

/// Held-out perplexity on `tokens` as `--eval-ctx` / `--eval-windows` ask.
fn evaluation<'a>(args: &TrainArgs, tokens: &'a [u32]) -> Evaluation<'a> {
    Evaluation {
        tokens,
        options: PerplexityOptions {
            ctx: args.eval_ctx,
            max_windows: Some(args.eval_windows),
            protocol: Default::default(),
        },
    }
}

/// What a resumed run must share with the killed one (its checkpoints carry it).
fn run_fingerprint(
    args: &TrainArgs,
    settings: &TrainSettings,
    student: &StudentSource<'_>,
    data_sha: &str,
    store: Option<&TeacherStore>,
) -> String {
    let targets = match store {
        Some(s) => {
            let shards: Vec<&str> = s
                .manifest()
                .shards
                .iter()
                .map(|x| x.sha256.as_str())
                .collect();
            shards.join(",")
        }
        None => "live".into(),
    };
    let value = serde_json::json!({
        "settings": settings,
        "student": student.sha256,
        "student_init": student.record.init,
        "data": data_sha,
        "targets": targets,
        "hidden": args.layer_map,
    });
    sha256_bytes(value.to_string().as_bytes())
}

/// `OUT.microllm-work`, emptied unless resuming.
fn prepare_work_dir(out: &Path, resume: bool) -> Result<PathBuf> {
    let work = super::work_dir(out);
    if !resume && work.exists() {
        std::fs::remove_dir_all(&work).with_context(|| format!("clearing {}", work.display()))?;
    }
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    Ok(work)
}

/// The trainer's settings from the flags, the step count from --steps or --tokens.
fn train_settings(args: &TrainArgs, loss: &LossSpec) -> Result<TrainSettings> {
    let settings = TrainSettings {
        mix: LogitMix {
            kl: loss.kl,
            reverse_kl: loss.reverse_kl,
            jsd: loss.jsd,
            ce: loss.ce,
            temperature: args.temperature,
        },
        hidden_weight: loss.hidden.map_or(0.0, |(_, w)| w),
        lr: args.lr,
        warmup_steps: args.warmup_steps,
        min_lr_ratio: args.min_lr_ratio,
        steps: 0,
        batch: args.batch,
        seqlen: args.seqlen,
        accumulation: args.accumulation,
        clip_norm: args.clip,
        adamw: AdamWConfig {
            weight_decay: args.weight_decay,
            moments: match args.moments {
                Moments::Bf16 => MomentPrecision::Bf16,
                Moments::F32 => MomentPrecision::F32,
            },
            ..AdamWConfig::default()
        },
        seed: args.seed,
        freeze_embeddings: args.freeze_embeddings,
        freeze_blocks: args.freeze_blocks,
        eval_every: args.eval_every,
        checkpoint_every: args.checkpoint_every,
    };
    let per_step = settings.tokens_per_step();
    let settings = TrainSettings {
        steps: match (args.steps, args.tokens) {
            (Some(s), _) => s,
            (None, Some(t)) => t.div_ceil(per_step.max(1)),
            (None, None) => bail!("give --steps or --tokens"),
        },
        ..settings
    };
    Ok(settings)
}

/// The trained student as a Hugging Face directory at `out`, with the student's tokenizer and
/// the teacher's chat template.
fn write_student(
    args: &TrainArgs,
    model: &Student,
    student: &StudentSource<'_>,
    teacher: Option<&Checkpoint>,
    out: &Path,
) -> Result<()> {
    let source = model.to_source("distilled student")?;
    let write_opts = HfWriteOptions {
        dtype: args.dtype.out(),
        overwrite: args.force,
        ..HfWriteOptions::default()
    };
    let chat_template = teacher.and_then(|t| t.chat_template.clone());
    let hf = HfOutput {
        config: &student.config,
        tensors: &source,
        tokenizer: student.tokenizer.as_ref(),
        chat_template: chat_template.as_deref(),
    };
    write_hf_dir(&hf, out, &write_opts, &Bar::new())
        .with_context(|| format!("writing {}", out.display()))?;
    Ok(())
}

/// A finished run, as the report describes it.
struct Finished<'a> {
    args: &'a TrainArgs,
    teacher: Option<&'a Checkpoint>,
    student: &'a StudentSource<'a>,
    trainable: usize,
    data: DataInfo,
    settings: &'a TrainSettings,
    out: &'a Path,
}

fn distill_report(run: &Finished<'_>, outcome: &TrainOutcome, started: Instant) -> DistillReport {
    let args = run.args;
    let state = &outcome.state;
    DistillReport {
        schema_version: microllm_distill::report::REPORT_SCHEMA,
        microllm_version: env!("CARGO_PKG_VERSION").into(),
        kind: "distill".into(),
        teacher: run.teacher.map(|t| {
            model_record(
                args.teacher.as_deref().unwrap_or_default(),
                &t.config,
                t.tensors.as_ref(),
            )
        }),
        student: StudentRecord {
            trainable_parameters: run.trainable,
            ..run.student.record.clone()
        },
        data: run.data.clone(),
        settings: run.settings.clone(),
        eval: args.eval.as_ref().map(|p| EvalInfo {
            path: p.display().to_string(),
            ctx: args.eval_ctx,
            windows: args.eval_windows,
        }),
        eval_before: outcome.eval_before.clone(),
        evals: state.evals.clone(),
        curve: state.curve.clone(),
        steps: state.step,
        tokens: state.tokens,
        train_seconds: state.train_seconds,
        eval_seconds: state.evals.iter().map(|e| e.seconds).sum::<f64>()
            + outcome.eval_before.as_ref().map_or(0.0, |e| e.seconds),
        total_seconds: started.elapsed().as_secs_f64(),
        tokens_per_second: state.tokens as f64 / state.train_seconds.max(1e-9),
        resumed_at_step: outcome.resumed_at,
        output: run.out.display().to_string(),
    }
}
