//! The trainer behind a recipe's `distill` pass: `microllm-distill`'s, as `microllm distill`
//! runs it.
//!
//! The runner hands over the student as it stands (usually a structured view of the
//! teacher), the teacher (the recipe's model), the data and a work directory; this turns the
//! pass into the trainer's settings and targets, trains, and writes the trained student as a
//! Hugging Face directory the runner reopens. The checks are the command's: a store must come
//! from the same data, teacher, tokenizer, window length and temperature.

use candle_core::DType;
use microllm_core::{Error, Progress, Result};
use microllm_distill::fingerprint::{model_sha256, sha256_bytes, tokenizer_sha256};
use microllm_distill::loss::LogitMix;
use microllm_distill::store::TeacherStore;
use microllm_distill::student::{Freeze, Student};
use microllm_distill::train::{
    AdamWConfig, Evaluation, MomentPrecision, Targets, TrainJob, TrainSettings, train,
};
use microllm_distill::training_data::TrainingData;
use microllm_distill::{DistillError, DistillResult};
use microllm_models::Decoder;

use super::DistillJob;
use crate::recipe::{DistillStage, MomentStorage};
use crate::report::{DistillEval, DistillLoss, DistillRecord};

/// Trains `job.student` against `job.teacher`, writes the trained student as a Hugging Face
/// directory at `job.out`, and says what happened. A loss that stops being finite is
/// [`Error::Diverged`], with the trainer's message (where the last good state is).
pub(super) fn train_student(
    job: &DistillJob<'_>,
    progress: &dyn Progress,
) -> Result<DistillRecord> {
    distill(job, progress).map_err(|e| match e {
        DistillError::Core(e) => e,
        diverged @ DistillError::NonFinite { .. } => Error::Diverged(diverged.to_string()),
    })
}

/// The trainer's settings for a pass.
fn settings(stage: &DistillStage, steps: u64) -> TrainSettings {
    TrainSettings {
        mix: LogitMix {
            kl: stage.loss.kl,
            reverse_kl: stage.loss.reverse_kl,
            jsd: stage.loss.jsd,
            ce: stage.loss.ce,
            temperature: stage.temperature,
        },
        hidden_weight: 0.0,
        lr: stage.lr,
        warmup_steps: stage.warmup_steps,
        min_lr_ratio: stage.min_lr_ratio,
        steps,
        batch: stage.batch,
        seqlen: stage.seqlen,
        accumulation: stage.accumulation,
        clip_norm: stage.clip,
        adamw: AdamWConfig {
            weight_decay: stage.weight_decay,
            moments: match stage.moments {
                MomentStorage::Bf16 => MomentPrecision::Bf16,
                MomentStorage::F32 => MomentPrecision::F32,
            },
            ..AdamWConfig::default()
        },
        seed: stage.seed,
        freeze_embeddings: stage.freeze_embeddings,
        freeze_blocks: stage.freeze_blocks,
        eval_every: stage.eval_every,
        checkpoint_every: stage.checkpoint_every,
    }
}

fn distill(job: &DistillJob<'_>, progress: &dyn Progress) -> DistillResult<DistillRecord> {
    let stage = &job.step.stage;
    let teacher = job.teacher;
    let settings = settings(stage, job.step.steps);
    settings.check()?;
    let tokenizer = teacher.tokenizer.as_ref();
    let tokenizer_id = tokenizer.map_or_else(|| "none".into(), tokenizer_sha256);
    let data = TrainingData::read(&job.step.data, tokenizer)?;

    let store = match &stage.logits {
        Some(dir) => {
            let store = TeacherStore::open(dir)?;
            store.check_student(
                job.student_config.vocab_size,
                &tokenizer_id,
                settings.seqlen,
                settings.mix.temperature,
            )?;
            let teacher_sha = model_sha256(&teacher.path)?;
            store.check_origin(
                &job.step.data,
                &data.sha256,
                Some((&teacher.path, &teacher_sha)),
            )?;
            Some(store)
        }
        None => None,
    };
    let live = match &store {
        None if stage.loss.uses_teacher() => {
            // The frozen teacher keeps the file's weight types (f32 activations: the dense
            // model's numbers at the file's memory), as `microllm distill` loads it.
            Some(Decoder::load_with(
                &teacher.config,
                teacher.tensors.as_ref(),
                Some(microllm_models::Activations::F32),
            )?)
        }
        _ => None,
    };
    let targets = match (&store, &live) {
        (Some(s), _) => Targets::Store(s),
        (None, Some(t)) => Targets::Live {
            teacher: t,
            tokens: &data.tokens,
        },
        (None, None) => Targets::Labels {
            tokens: &data.tokens,
        },
    };
    let windows = targets.windows(settings.seqlen);
    let described = targets.describe();
    if windows < settings.batch {
        return Err(Error::Invalid(format!(
            "{} holds {windows} windows of {} tokens, fewer than one batch of {}",
            job.step.data.display(),
            settings.seqlen,
            settings.batch
        ))
        .into());
    }

    let freeze = Freeze {
        embeddings: stage.freeze_embeddings,
        blocks: stage.freeze_blocks,
    };
    let student = Student::load(
        job.student_config,
        job.student,
        DType::F32,
        freeze,
        settings.seqlen,
    )?;
    let store_id = store.as_ref().map_or("live".to_string(), |s| {
        let shards = s.manifest().shards.iter().map(|x| x.sha256.as_str());
        shards.collect::<Vec<_>>().join(",")
    });
    let fingerprint = sha256_bytes(
        serde_json::json!({"settings": settings, "data": data.sha256, "targets": store_id})
            .to_string()
            .as_bytes(),
    );
    let train_job = TrainJob {
        settings: &settings,
        student: &student,
        targets,
        hidden: None,
        eval: job
            .eval
            .map(|(tokens, options)| Evaluation { tokens, options }),
        work_dir: job.checkpoints,
        resume: job.resume,
        fingerprint,
    };
    let outcome = train(&train_job, progress)?;

    let trained = student.to_source("distilled student")?;
    let hf = microllm_io::write::HfOutput {
        config: job.student_config,
        tensors: &trained,
        tokenizer,
        chat_template: teacher.chat_template.as_deref(),
    };
    let write_opts = microllm_io::write::HfWriteOptions {
        overwrite: true,
        ..Default::default()
    };
    microllm_io::write::write_hf_dir(&hf, job.out, &write_opts, progress)?;

    let state = &outcome.state;
    let point = |step, tokens, perplexity| DistillEval {
        step,
        tokens,
        perplexity,
    };
    let evals = outcome
        .eval_before
        .iter()
        .chain(&state.evals)
        .map(|e| point(e.step, e.tokens, e.perplexity))
        .collect();
    Ok(DistillRecord {
        targets: described,
        loss: stage.loss.describe(),
        steps: state.step,
        tokens: state.tokens,
        student_parameters: job.student.infos().iter().map(|i| i.numel() as u64).sum(),
        trainable_parameters: student.trainable_count() as u64,
        train_seconds: state.train_seconds,
        tokens_per_second: state.tokens as f64 / state.train_seconds.max(1e-9),
        resumed_at_step: outcome.resumed_at,
        evals,
        losses: state
            .curve
            .iter()
            .map(|c| DistillLoss {
                step: c.step,
                tokens: c.tokens,
                loss: c.loss,
            })
            .collect(),
    })
}
