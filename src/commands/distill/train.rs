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
use microllm_core::{ModelConfig, TensorSource};
use microllm_distill::fingerprint::{model_sha256, sha256_bytes};
use microllm_distill::init::{derive_student, parse_derivation};
use microllm_distill::loss::hidden::{parse_layer_map, uniform_layer_map};
use microllm_distill::loss::{HiddenLoss, LogitMix, LossSpec};
use microllm_distill::models::resolve_model_spec;
use microllm_distill::report::{DataInfo, DistillReport, EvalInfo, ModelRecord, StudentRecord};
use microllm_distill::store::TeacherStore;
use microllm_distill::student::{Freeze, Student};
use microllm_distill::train::{AdamWConfig, Evaluation, Targets, TrainJob, TrainSettings, train};
use microllm_eval::PerplexityOptions;
use microllm_io::Checkpoint;
use microllm_io::write::{HfOutput, HfWriteOptions, write_hf_dir};

use crate::commands::calibrate::{CalibrationRequest, draw};
use crate::commands::convert::Dtype;
use crate::progress::Bar;

#[derive(Debug, clap::Args)]
pub struct TrainArgs {
    /// The teacher: a directory, a .gguf file, a hub id or a short name (mistral-7b, phi-2,
    /// tinyllama, llama-2-7b, smollm2-135m, ...). Needed for a live teacher, for
    /// --student-from-teacher, and to check a store's teacher.
    #[arg(long)]
    teacher: Option<String>,
    /// The student checkpoint (same kinds of source as --teacher).
    #[arg(long, conflicts_with = "student_from_teacher")]
    student: Option<String>,
    /// Cut the student out of the teacher by structured pruning, e.g. "drop-layers=6" or
    /// "drop-layers=4,mlp-keep=0.75" (keys: drop-layers, mlp-keep, heads-keep, mlp-multiple,
    /// head-mode); importance is measured on --calib-samples windows of --data.
    #[arg(long)]
    student_from_teacher: Option<String>,
    /// Training text (UTF-8; or a .safetensors file with int64 `input_ids`), cut into windows
    /// of --seqlen tokens.
    #[arg(long, required = true)]
    data: Option<PathBuf>,
    /// A teacher-logit store from `microllm distill logits` (made from --data) to train
    /// against instead of a live teacher.
    #[arg(long)]
    logits: Option<PathBuf>,
    /// Loss terms and weights: kl (forward KL), reverse-kl, jsd, ce (next-token
    /// cross-entropy), hidden-mse, hidden-cos; e.g. kl:1.0,ce:0.1.
    #[arg(long, default_value = "kl:1")]
    loss: String,
    /// Temperature of the divergences (scaled by T²); a store fixes it.
    #[arg(long, default_value_t = 1.0)]
    temperature: f64,
    /// Optimizer steps.
    #[arg(long, conflicts_with = "tokens", required_unless_present = "tokens")]
    steps: Option<u64>,
    /// Training tokens (rounded up to whole steps).
    #[arg(long)]
    tokens: Option<u64>,
    /// Peak learning rate (AdamW).
    #[arg(long, default_value_t = 2e-4)]
    lr: f64,
    /// Linear warmup steps.
    #[arg(long, default_value_t = 10)]
    warmup_steps: u64,
    /// The cosine schedule ends at this fraction of --lr.
    #[arg(long, default_value_t = 0.1)]
    min_lr_ratio: f64,
    /// Windows per micro-batch.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Tokens per training window.
    #[arg(long, default_value_t = 256)]
    seqlen: usize,
    /// Micro-batches per optimizer step (gradient accumulation).
    #[arg(long, default_value_t = 1)]
    accumulation: usize,
    /// Clip the global gradient norm to this.
    #[arg(long, default_value_t = 1.0)]
    clip: f64,
    /// AdamW weight decay (matrices only).
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f64,
    /// Seed of the data order and of learned projections.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Keep the token embedding and the output head fixed (no [vocab, hidden] gradient:
    /// much faster with large vocabularies).
    #[arg(long)]
    freeze_embeddings: bool,
    /// Keep the first N student blocks fixed; with --freeze-embeddings the backward pass stops
    /// at block N (a derived student's first blocks are often the teacher's, untouched).
    #[arg(long, default_value_t = 0)]
    freeze_blocks: usize,
    /// Hidden-state pairs STUDENT:TEACHER, e.g. 0:1,5:11 [default: a derived student's source
    /// blocks, else evenly spread].
    #[arg(long)]
    layer_map: Option<String>,
    /// Learn a projection from the student's hidden width to the teacher's (required when
    /// they differ).
    #[arg(long)]
    hidden_projection: bool,
    /// Held-out text for perplexity before, during (--eval-every) and after training.
    #[arg(long)]
    eval: Option<PathBuf>,
    #[arg(long, default_value_t = 512)]
    eval_ctx: usize,
    #[arg(long, default_value_t = 24)]
    eval_windows: usize,
    /// Evaluate every N steps (0: before and after only).
    #[arg(long, default_value_t = 0)]
    eval_every: u64,
    /// Checkpoint every N steps (optimizer state and data position included; 0: never).
    #[arg(long, default_value_t = 50)]
    checkpoint_every: u64,
    /// Calibration windows for --student-from-teacher importance.
    #[arg(long, default_value_t = 8)]
    calib_samples: usize,
    #[arg(long, default_value_t = 512)]
    calib_seqlen: usize,
    /// Continue from the checkpoint in OUT.microllm-work.
    #[arg(long)]
    resume: bool,
    /// Replace --out if it exists.
    #[arg(long)]
    force: bool,
    /// Weight dtype of the output directory.
    #[arg(long, value_enum, default_value_t = Dtype::F32)]
    dtype: Dtype,
    /// Output directory (Hugging Face layout).
    #[arg(long, short, required = true)]
    out: Option<PathBuf>,
}

/// The student's weights and what the report says about them.
struct StudentSource<'a> {
    config: ModelConfig,
    tokenizer: Option<microllm_io::Tokenizer>,
    tensors: Box<dyn TensorSource + 'a>,
    record: StudentRecord,
    /// Fingerprint of what the weights come from.
    sha256: String,
}

fn model_record(spec: &str, cfg: &ModelConfig, src: &dyn TensorSource) -> ModelRecord {
    ModelRecord {
        spec: spec.to_string(),
        family: cfg.family.to_string(),
        layers: cfg.num_layers,
        hidden_size: cfg.hidden_size,
        intermediate_size: cfg.intermediate_size,
        parameters: src.infos().iter().map(|i| i.numel()).sum(),
    }
}

/// Sets candle's element-wise thread pool to one thread unless the user chose otherwise.
///
/// candle runs element-wise ops on its own pool beside rayon's, and its main thread spins
/// while the pool's workers finish; a training step issues thousands of small element-wise
/// ops, and on two cores (shared with other work) the spinning cost 15-20% of the step's CPU
/// time in `crates/microllm-distill/examples/step_phases.rs`. The matrix products still use
/// every core.
fn single_threaded_elementwise() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        // SAFETY: called first thing in the command, before any thread of this process
        // exists (no progress bar, no thread pool has started yet).
        unsafe { std::env::set_var("CANDLE_NUM_THREADS", "1") };
    }
}

pub fn run(args: TrainArgs) -> Result<()> {
    single_threaded_elementwise();
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
    let text = super::read_data(&data, tokenizer.as_ref())?;
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
    if loss.uses_teacher_logits() && store.is_none() && teacher.is_none() {
        bail!(
            "--loss {} compares with a teacher: pass --teacher (live) or --logits (a store)",
            args.loss
        );
    }
    let teacher_decoder = match (&teacher, &store) {
        (Some(t), None) if loss.uses_teacher_logits() || loss.hidden.is_some() => {
            Some(crate::commands::load_decoder(t)?)
        }
        _ => None,
    };
    let hidden = hidden_loss(&args, &loss, &student, teacher.as_ref(), store.is_some())?;

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
    let windows = match &targets {
        Targets::Store(s) => s.windows(),
        Targets::Live { tokens, .. } | Targets::Labels { tokens } => tokens.len() / settings.seqlen,
    };
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

    let freeze = Freeze {
        embeddings: args.freeze_embeddings,
        blocks: args.freeze_blocks,
    };
    let model = Student::load(
        &student.config,
        student.tensors.as_ref(),
        candle_core::DType::F32,
        freeze,
        settings.seqlen,
    )
    .context("loading the student")?;
    let fingerprint = sha256_bytes(
        serde_json::json!({
            "settings": settings,
            "student": student.sha256,
            "student_init": student.record.init,
            "data": data_sha,
            "targets": match &store { Some(s) => s.manifest().shards.iter().map(|x| x.sha256.clone()).collect::<Vec<_>>().join(","), None => "live".into() },
            "hidden": args.layer_map,
        })
        .to_string()
        .as_bytes(),
    );
    let work = super::work_dir(&out);
    if !args.resume && work.exists() {
        std::fs::remove_dir_all(&work).with_context(|| format!("clearing {}", work.display()))?;
    }
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;

    print_plan(&args, &student, &settings, windows, store.as_ref());
    let job = TrainJob {
        settings: &settings,
        student: &model,
        targets,
        hidden: hidden.as_ref(),
        eval: eval_tokens.as_ref().map(|t| Evaluation {
            tokens: t,
            options: PerplexityOptions {
                ctx: args.eval_ctx,
                max_windows: Some(args.eval_windows),
            },
        }),
        work_dir: &work,
        resume: args.resume,
        fingerprint,
    };
    let outcome = train(&job, &Bar::new())?;

    let source = model.to_source("distilled student")?;
    let write_opts = HfWriteOptions {
        dtype: args.dtype.out(),
        overwrite: args.force,
        ..HfWriteOptions::default()
    };
    let chat_template = teacher.as_ref().and_then(|t| t.chat_template.clone());
    let hf = HfOutput {
        config: &student.config,
        tensors: &source,
        tokenizer: tokenizer.as_ref(),
        chat_template: chat_template.as_deref(),
    };
    write_hf_dir(&hf, &out, &write_opts, &Bar::new())
        .with_context(|| format!("writing {}", out.display()))?;

    let state = &outcome.state;
    let report = DistillReport {
        schema_version: microllm_distill::report::REPORT_SCHEMA,
        microllm_version: env!("CARGO_PKG_VERSION").into(),
        kind: "distill".into(),
        teacher: teacher.as_ref().map(|t| {
            model_record(
                args.teacher.as_deref().unwrap_or_default(),
                &t.config,
                t.tensors.as_ref(),
            )
        }),
        student: StudentRecord {
            trainable_parameters: model.trainable_count(),
            ..student.record.clone()
        },
        data: DataInfo {
            path: data.display().to_string(),
            sha256: data_sha,
            windows,
            seqlen: settings.seqlen,
            targets: match (&store, &teacher_decoder) {
                (Some(s), _) => format!(
                    "teacher-logit store {} (top-{})",
                    s.dir().display(),
                    s.manifest().top_k
                ),
                (None, Some(_)) => "live teacher (full distribution)".into(),
                (None, None) => "next-token labels only".into(),
            },
            store_bytes_per_token: store.as_ref().map(|s| s.manifest().bytes_per_token()),
        },
        settings: settings.clone(),
        eval: args.eval.as_ref().map(|p| EvalInfo {
            path: p.display().to_string(),
            ctx: args.eval_ctx,
            windows: args.eval_windows,
        }),
        eval_before: outcome.eval_before.clone(),
        eval_teacher: None,
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
        output: out.display().to_string(),
    };
    let (json, md) = report.write(&out)?;
    std::fs::remove_dir_all(&work).with_context(|| format!("removing {}", work.display()))?;
    print_summary(&report);
    println!("report       {} and {}", json.display(), md.display());
    Ok(())
}

fn student_source<'a>(
    args: &TrainArgs,
    teacher: Option<&'a Checkpoint>,
    data: &Path,
) -> Result<StudentSource<'a>> {
    if let Some(spec) = &args.student {
        let ckpt = crate::commands::open_model(&resolve_model_spec(spec))?;
        let record = StudentRecord {
            model: model_record(spec, &ckpt.config, ckpt.tensors.as_ref()),
            init: "checkpoint".into(),
            dropped_blocks: Vec::new(),
            source_blocks: Vec::new(),
            trainable_parameters: 0,
        };
        return Ok(StudentSource {
            config: ckpt.config.clone(),
            tokenizer: ckpt.tokenizer.clone(),
            sha256: model_sha256(&ckpt.path)?,
            tensors: ckpt.tensors,
            record,
        });
    }
    let Some(derivation) = &args.student_from_teacher else {
        bail!("give the student: --student CHECKPOINT or --student-from-teacher \"drop-layers=N\"");
    };
    let Some(teacher) = teacher else {
        bail!("--student-from-teacher needs --teacher (the student is cut out of its weights)");
    };
    let spec = parse_derivation(derivation)?;
    let calib = draw(
        CalibrationRequest {
            path: Some(data),
            samples: args.calib_samples,
            seqlen: args.calib_seqlen,
            seed: 0,
            allow_short: false,
            missing_hint: "--student-from-teacher measures block importance",
        },
        teacher,
    )?;
    let derived = derive_student(
        &teacher.config,
        teacher.tensors.as_ref(),
        &spec,
        &calib.windows,
        &Bar::new(),
    )
    .context("cutting the student out of the teacher")?;
    let config = derived.plan.config.clone();
    let record = StudentRecord {
        model: model_record(
            &format!(
                "{} ({derivation})",
                args.teacher.as_deref().unwrap_or_default()
            ),
            &config,
            &derived.source,
        ),
        init: format!("from teacher: {derivation}"),
        dropped_blocks: derived.plan.dropped.clone(),
        source_blocks: derived.plan.layers.iter().map(|l| l.source).collect(),
        trainable_parameters: 0,
    };
    let sha256 = sha256_bytes(
        format!(
            "{}|{derivation}|{}",
            model_sha256(&teacher.path)?,
            calib.text_sha256
        )
        .as_bytes(),
    );
    Ok(StudentSource {
        config,
        tokenizer: teacher.tokenizer.clone(),
        tensors: Box::new(derived.source),
        record,
        sha256,
    })
}

/// Held-out tokens: text tokenized as `microllm eval` does (special tokens as the tokenizer
/// adds them), or pre-tokenized ids.
fn eval_tokens(path: &Path, tokenizer: Option<&microllm_io::Tokenizer>) -> Result<Vec<u32>> {
    if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("safetensors"))
    {
        return Ok(microllm_io::arrays::read_token_ids(path, "input_ids")?.concat());
    }
    let tok = tokenizer.context("--eval text needs a tokenizer; the student carries none")?;
    tok.encode(&crate::commands::read_text(path)?, true)
        .with_context(|| format!("tokenizing {}", path.display()))
}

/// The student must speak the teacher's vocabulary, token for token.
fn check_vocabularies(
    teacher: &Checkpoint,
    student: &ModelConfig,
    student_tok: &str,
) -> Result<()> {
    if teacher.config.vocab_size != student.vocab_size {
        bail!(
            "the teacher ({}) has a vocabulary of {} tokens and the student {}: distillation \
             compares distributions over the same tokens, so both must use one tokenizer",
            teacher.path.display(),
            teacher.config.vocab_size,
            student.vocab_size
        );
    }
    let t = super::tokenizer_id(teacher.tokenizer.as_ref());
    if t != student_tok {
        bail!(
            "the teacher's tokenizer ({}, id->token SHA-256 {t}) differs from the student's \
             ({student_tok}): the same id would mean different tokens",
            teacher.path.display()
        );
    }
    Ok(())
}

fn open_store(
    dir: &Path,
    args: &TrainArgs,
    student: &ModelConfig,
    student_tok: &str,
    data_sha: &str,
    teacher: Option<&Checkpoint>,
) -> Result<TeacherStore> {
    let store = TeacherStore::open(dir)
        .with_context(|| format!("opening the teacher-logit store {}", dir.display()))?;
    store.check_student(
        student.vocab_size,
        student_tok,
        args.seqlen,
        args.temperature,
    )?;
    let manifest = dir.join(microllm_distill::store::MANIFEST_FILE);
    let m = store.manifest();
    if m.data.sha256 != data_sha {
        bail!(
            "{}: key `data.sha256`: the store was made from {} ({}), not from {} ({data_sha})",
            manifest.display(),
            m.data.path,
            m.data.sha256,
            args.data.as_deref().unwrap_or(Path::new("")).display()
        );
    }
    if let Some(t) = teacher {
        let sha = model_sha256(&t.path)?;
        if sha != m.teacher.sha256 {
            bail!(
                "{}: key `teacher.sha256`: the store was made by {} ({}), not by {} ({sha})",
                manifest.display(),
                m.teacher.spec,
                m.teacher.sha256,
                t.path.display()
            );
        }
    }
    Ok(store)
}

fn hidden_loss(
    args: &TrainArgs,
    loss: &LossSpec,
    student: &StudentSource<'_>,
    teacher: Option<&Checkpoint>,
    from_store: bool,
) -> Result<Option<HiddenLoss>> {
    let Some((kind, _)) = loss.hidden else {
        return Ok(None);
    };
    let (Some(teacher), false) = (teacher, from_store) else {
        bail!(
            "hidden-state losses compare with the teacher's hidden states: they need a live --teacher (a logit store holds no hidden states)"
        );
    };
    let (s, t) = (student.config.num_layers, teacher.config.num_layers);
    let pairs = match &args.layer_map {
        Some(text) => parse_layer_map(text, s, t)?,
        None if !student.record.source_blocks.is_empty() => student
            .record
            .source_blocks
            .iter()
            .copied()
            .enumerate()
            .collect(),
        None => uniform_layer_map(s, t),
    };
    Ok(Some(HiddenLoss::new(
        kind,
        pairs,
        (student.config.hidden_size, teacher.config.hidden_size),
        args.hidden_projection,
        args.seed,
        candle_core::DType::F32,
    )?))
}

fn print_plan(
    args: &TrainArgs,
    student: &StudentSource<'_>,
    s: &TrainSettings,
    windows: usize,
    store: Option<&TeacherStore>,
) {
    let r = &student.record;
    println!(
        "distill      {} -> {}",
        r.model.spec,
        args.out.as_deref().unwrap_or(Path::new("")).display()
    );
    if !r.dropped_blocks.is_empty() {
        println!(
            "student      {} blocks (teacher blocks {:?} dropped), {} parameters",
            r.model.layers, r.dropped_blocks, r.model.parameters
        );
    } else {
        println!(
            "student      {} blocks, {} parameters",
            r.model.layers, r.model.parameters
        );
    }
    println!(
        "loss         {} at temperature {}",
        args.loss, s.mix.temperature
    );
    if let Some(st) = store {
        println!(
            "targets      store {} (top-{}, {:.1} bytes/token)",
            st.dir().display(),
            st.manifest().top_k,
            st.manifest().bytes_per_token()
        );
    }
    println!(
        "schedule     {} steps x {} tokens ({} windows of {} x {} accumulation) = {} tokens; {} windows available",
        s.steps,
        s.tokens_per_step(),
        s.batch,
        s.seqlen,
        s.accumulation,
        s.steps * s.tokens_per_step(),
        windows
    );
}

fn print_summary(r: &DistillReport) {
    if let Some(step) = r.resumed_at_step {
        println!("resumed at step {step}");
    }
    if let (Some(before), Some(after)) = (&r.eval_before, r.evals.last()) {
        println!(
            "perplexity   {:.4} -> {:.4} (student before -> after)",
            before.perplexity, after.perplexity
        );
    }
    if let Some(last) = r.curve.last() {
        println!(
            "final loss   {:.4} (kl {:.4}, ce {:.4})",
            last.loss, last.kl, last.ce
        );
    }
    println!(
        "trained      {} steps, {} tokens in {:.0} s ({:.1} tokens/s); evaluation {:.0} s",
        r.steps, r.tokens, r.train_seconds, r.tokens_per_second, r.eval_seconds
    );
    println!("wrote        {}", r.output);
}
