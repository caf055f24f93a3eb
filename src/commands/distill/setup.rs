//! Building a run from the flags: the student (loaded or cut out of the teacher), the checks
//! between teacher, student and store, the hidden-state loss. Every check here runs before
//! any long work.

use std::path::Path;

use anyhow::{Context, Result, bail};
use microllm_core::{ModelConfig, TensorSource};
use microllm_distill::fingerprint::{model_sha256, sha256_bytes};
use microllm_distill::init::{derive_student, parse_derivation};
use microllm_distill::loss::hidden::{parse_layer_map, uniform_layer_map};
use microllm_distill::loss::{HiddenLoss, LossSpec};
use microllm_distill::models::resolve_model_spec;
use microllm_distill::report::{ModelRecord, StudentRecord};
use microllm_distill::store::TeacherStore;
use microllm_io::Checkpoint;

use super::train::TrainArgs;
use crate::progress::Bar;
use microllm_pipeline::recipe::CalibrationData;
use microllm_pipeline::run::draw_calibration;

/// The student's weights and what the report says about them.
pub(super) struct StudentSource<'a> {
    pub config: ModelConfig,
    pub tokenizer: Option<microllm_io::Tokenizer>,
    pub tensors: Box<dyn TensorSource + 'a>,
    pub record: StudentRecord,
    /// Fingerprint of what the weights come from.
    pub sha256: String,
}

pub(super) fn model_record(spec: &str, cfg: &ModelConfig, src: &dyn TensorSource) -> ModelRecord {
    ModelRecord {
        spec: spec.to_string(),
        family: cfg.family.to_string(),
        layers: cfg.num_layers,
        hidden_size: cfg.hidden_size,
        intermediate_size: cfg.intermediate_size,
        parameters: src.infos().iter().map(|i| i.numel()).sum(),
    }
}

pub(super) fn student_source<'a>(
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
    let calib = draw_calibration(
        &CalibrationData {
            data: data.to_path_buf(),
            samples: args.calib_samples,
            seqlen: args.calib_seqlen,
            seed: 0,
            allow_short: false,
        },
        teacher,
    )
    .context("--student-from-teacher measures block importance on calibration windows")?;
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
pub(super) fn eval_tokens(
    path: &Path,
    tokenizer: Option<&microllm_io::Tokenizer>,
) -> Result<Vec<u32>> {
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
pub(super) fn check_vocabularies(
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

pub(super) fn open_store(
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
    let teacher_sha = teacher.map(|t| model_sha256(&t.path)).transpose()?;
    store.check_origin(
        args.data.as_deref().unwrap_or(Path::new("")),
        data_sha,
        teacher
            .zip(teacher_sha.as_deref())
            .map(|(t, sha)| (t.path.as_path(), sha)),
    )?;
    Ok(store)
}

pub(super) fn hidden_loss(
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
