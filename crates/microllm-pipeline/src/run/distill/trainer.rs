//! The trainer behind a recipe's `distill` pass: `microllm-distill`'s, as `microllm distill`
//! runs it.
//!
//! The runner hands over the student as it stands (usually a structured view of the
//! teacher), the teacher (the recipe's model or the pass's own), the data and a work
//! directory; this turns the pass into the trainer's settings, targets and hidden-state loss,
//! trains, and writes the trained student as a Hugging Face directory the runner reopens. A
//! store must come from the same data, tokenizer, window length, temperature and teacher.

use candle_core::DType;
use microllm_core::{Error, Progress, Result};
use microllm_distill::fingerprint::{model_sha256, sha256_bytes, tokenizer_id};
use microllm_distill::loss::{HiddenKind, HiddenLoss, LogitMix};
use microllm_distill::store::TeacherStore;
use microllm_distill::student::{Freeze, Student};
use microllm_distill::train::{
    AdamWConfig, Evaluation, MomentPrecision, Targets, TrainJob, TrainSettings, train,
};
use microllm_distill::training_data::TrainingData;
use microllm_distill::{DistillError, DistillResult};
use microllm_io::write::OutDtype;
use microllm_models::Decoder;

use super::DistillJob;
use crate::recipe::{DistillStage, MomentStorage};
use crate::report::DistillRecord;

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
        hidden_weight: stage.loss.hidden_mse + stage.loss.hidden_cos,
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
    let teacher = job.teacher();
    let settings = settings(stage, job.step.steps);
    settings.check()?;
    // The student's tokenizer reads the data (planning checked the teacher's is the same).
    let tokenizer = job.model.tokenizer.as_ref();
    let student_tokenizer = tokenizer_id(tokenizer);
    let data = TrainingData::read(&job.step.data, tokenizer)?;

    let store = match &stage.logits {
        Some(dir) => Some(open_store(
            job,
            dir,
            &student_tokenizer,
            &settings,
            &data.sha256,
        )?),
        None => None,
    };
    let live = match &store {
        None if stage.loss.uses_teacher() || stage.loss.uses_hidden() => {
            // The frozen teacher keeps the file's weight types (f32 activations: the dense
            // model's numbers at the file's memory).
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
    let layer_map = job.layer_map();
    let hidden = hidden_loss(job, &layer_map)?;

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
        serde_json::json!({
            "settings": settings,
            "data": data.sha256,
            "targets": store_id,
            "teacher": stage.teacher,
            "layer_map": layer_map,
        })
        .to_string()
        .as_bytes(),
    );
    let train_job = TrainJob {
        settings: &settings,
        student: &student,
        targets,
        hidden: hidden.as_ref(),
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
        chat_template: job.model.chat_template.as_deref(),
    };
    let write_opts = microllm_io::write::HfWriteOptions {
        dtype: job.step.output_dtype.unwrap_or(OutDtype::F32),
        overwrite: true,
        ..Default::default()
    };
    microllm_io::write::write_hf_dir(&hf, job.out, &write_opts, progress)?;

    let state = outcome.state;
    Ok(DistillRecord {
        teacher: teacher.path.display().to_string(),
        targets: described,
        loss: stage.loss.describe(),
        data: job.step.data.display().to_string(),
        data_sha256: data.sha256,
        windows,
        layer_map: if hidden.is_some() {
            layer_map
        } else {
            Vec::new()
        },
        steps: state.step,
        tokens: state.tokens,
        student_parameters: job.student.infos().iter().map(|i| i.numel() as u64).sum(),
        trainable_parameters: student.trainable_count() as u64,
        train_seconds: state.train_seconds,
        tokens_per_second: state.tokens as f64 / state.train_seconds.max(1e-9),
        resumed_at_step: outcome.resumed_at,
        evals: outcome.eval_before.into_iter().chain(state.evals).collect(),
        curve: state.curve,
        settings,
    })
}

/// The pass's store, checked against the run: the student's vocabulary and tokenizer, the
/// window length and temperature, the data, and the teacher where one is known (the pass's
/// `teacher`, or the recipe's model when the student was cut out of it; a recipe whose model
/// is itself the student says nothing about who made the store).
fn open_store(
    job: &DistillJob<'_>,
    dir: &std::path::Path,
    tokenizer_id: &str,
    settings: &TrainSettings,
    data_sha256: &str,
) -> DistillResult<TeacherStore> {
    let store = TeacherStore::open(dir)?;
    store.check_student(
        job.student_config.vocab_size,
        tokenizer_id,
        settings.seqlen,
        settings.mix.temperature,
    )?;
    let teacher =
        (job.step.teacher.is_some() || job.source_blocks.is_some()).then(|| job.teacher());
    let teacher_sha = teacher.map(|t| model_sha256(&t.path)).transpose()?;
    store.check_origin(
        &job.step.data,
        data_sha256,
        teacher
            .zip(teacher_sha.as_deref())
            .map(|(t, sha)| (t.path.as_path(), sha)),
    )?;
    Ok(store)
}

/// The hidden-state loss the pass asks for, over `pairs`.
fn hidden_loss(
    job: &DistillJob<'_>,
    pairs: &[(usize, usize)],
) -> DistillResult<Option<HiddenLoss>> {
    let stage = &job.step.stage;
    let kind = match (stage.loss.hidden_mse != 0.0, stage.loss.hidden_cos != 0.0) {
        (true, _) => HiddenKind::Mse,
        (_, true) => HiddenKind::Cosine,
        _ => return Ok(None),
    };
    Ok(Some(HiddenLoss::new(
        kind,
        pairs.to_vec(),
        (
            job.student_config.hidden_size,
            job.teacher().config.hidden_size,
        ),
        stage.hidden_projection,
        stage.seed,
        DType::F32,
    )?))
}
