//! Checking a `distill` pass: its place among the passes, its data, its schedule, its
//! teacher.
//!
//! The student is the model as it stands after the passes before it, so a distill pass
//! belongs after `structured_prune` (the student it heals) and before `prune` / `quantize`
//! (training would move weights off their zeros and grids). The teacher is the recipe's
//! model, or the one the pass's `teacher` names: that one is opened here and checked against
//! the student (vocabulary, tokenizer, hidden widths, layer map) before any work.

use std::path::PathBuf;
use std::sync::Arc;

use microllm_core::ModelConfig;
use microllm_distill::fingerprint::tokenizer_id;
use microllm_distill::loss::hidden::parse_layer_map;
use microllm_distill::models::resolve_model_spec;
use microllm_io::Checkpoint;
use microllm_io::write::OutDtype;

use super::pass_path;
use super::steps::err;
use crate::recipe::{DistillStage, Pass, Recipe, RecipeResult};

/// A validated distill pass.
#[derive(Debug, Clone)]
pub struct DistillStep {
    pub pass: usize,
    pub stage: DistillStage,
    /// The training data (the pass's `data`, else the calibration file).
    pub data: PathBuf,
    /// Optimizer steps (from `steps`, or `tokens` rounded up to whole steps).
    pub steps: u64,
    /// The teacher `teacher` names, opened (None: the recipe's model).
    pub teacher: Option<Arc<Checkpoint>>,
    /// `layer_map`, parsed and checked against both models' blocks.
    pub layer_map: Option<Vec<(usize, usize)>>,
    /// The output's dtype when the trained student is itself the output (no pass after this
    /// one changes weights, and the output is a plain Hugging Face directory): the trainer
    /// then writes it in that dtype and the writer links its files into place instead of
    /// writing them a second time. Otherwise the student is kept in f32 for the passes after.
    pub output_dtype: Option<OutDtype>,
}

impl DistillStep {
    /// Training tokens one optimizer step consumes.
    pub fn tokens_per_step(&self) -> u64 {
        (self.stage.batch * self.stage.seqlen * self.stage.accumulation) as u64
    }
}

pub(super) fn distill_step(recipe: &Recipe, i: usize) -> RecipeResult<DistillStep> {
    let Pass::Distill(d) = &recipe.passes[i] else {
        unreachable!("checked by check_order")
    };
    let base = pass_path(i, &recipe.passes[i]);
    let at = |key: &str, msg: String| Err(err(format!("{base}.{key}"), msg));
    let data = match (&d.data, &recipe.calibration) {
        (Some(p), _) => p.clone(),
        (None, Some(c)) => c.data.clone(),
        (None, None) => {
            return at(
                "data",
                "a distill pass trains on text: give `data: FILE` here or `calibration: {data: \
                 FILE}`"
                    .into(),
            );
        }
    };
    for (key, v) in [("batch", d.batch), ("accumulation", d.accumulation)] {
        if v == 0 {
            return at(key, "must be at least 1".into());
        }
    }
    if d.seqlen < 2 {
        return at("seqlen", format!("{} is too short (at least 2)", d.seqlen));
    }
    let positive = |v: f64| v.is_finite() && v > 0.0;
    for (key, v) in [
        ("lr", d.lr),
        ("temperature", d.temperature),
        ("clip", d.clip),
    ] {
        if !positive(v) {
            return at(key, format!("{v} must be positive"));
        }
    }
    if !(0.0..=1.0).contains(&d.min_lr_ratio) {
        return at(
            "min_lr_ratio",
            format!("{} must be within [0, 1]", d.min_lr_ratio),
        );
    }
    if !(d.weight_decay.is_finite() && d.weight_decay >= 0.0) {
        return at(
            "weight_decay",
            format!("{} must be 0 or more", d.weight_decay),
        );
    }
    let l = &d.loss;
    let weights = [
        ("kl", l.kl),
        ("reverse_kl", l.reverse_kl),
        ("jsd", l.jsd),
        ("ce", l.ce),
        ("hidden_mse", l.hidden_mse),
        ("hidden_cos", l.hidden_cos),
    ];
    if let Some((key, w)) = weights.iter().find(|(_, w)| !(w.is_finite() && *w >= 0.0)) {
        return at(
            &format!("loss.{key}"),
            format!("weight {w} must be 0 or more"),
        );
    }
    if weights.iter().all(|(_, w)| *w == 0.0) {
        return at(
            "loss",
            "every loss weight is 0: give kl, reverse_kl, jsd, ce, hidden_mse or hidden_cos".into(),
        );
    }
    if l.hidden_mse != 0.0 && l.hidden_cos != 0.0 {
        return at(
            "loss",
            "give one hidden-state loss, hidden_mse or hidden_cos".into(),
        );
    }
    if d.logits.is_some() && l.uses_hidden() {
        return at(
            "loss",
            "hidden-state losses compare with the teacher's hidden states: they need a live \
             teacher (a logit store holds no hidden states; drop `logits`)"
                .into(),
        );
    }
    if !l.uses_hidden() && (d.layer_map.is_some() || d.hidden_projection) {
        let key = if d.layer_map.is_some() {
            "layer_map"
        } else {
            "hidden_projection"
        };
        return at(
            key,
            "pairs blocks for a hidden-state loss, and the loss has none (add hidden_mse or \
             hidden_cos)"
                .into(),
        );
    }
    if d.logits.is_some() && (l.reverse_kl != 0.0 || l.jsd != 0.0) {
        return at(
            "loss",
            "reverse_kl and jsd need the teacher's whole distribution; a store holds its top-k \
             (use kl, or drop `logits` to run the teacher live)"
                .into(),
        );
    }
    let per_step = (d.batch * d.seqlen * d.accumulation) as u64;
    let steps = match (d.steps, d.tokens) {
        (Some(_), Some(_)) => return at("tokens", "give `steps` or `tokens`, not both".into()),
        (Some(0), None) | (None, Some(0)) => {
            return at(
                if d.steps.is_some() { "steps" } else { "tokens" },
                "must be at least 1".into(),
            );
        }
        (Some(s), None) => s,
        (None, Some(t)) => t.div_ceil(per_step),
        (None, None) => {
            return at(
                "steps",
                "how long to train: give `steps: N` or `tokens: N`".into(),
            );
        }
    };
    Ok(DistillStep {
        pass: i,
        stage: d.clone(),
        data,
        steps,
        teacher: None,
        layer_map: None,
        output_dtype: None,
    })
}

/// Opens the pass's own teacher, if it names one, and checks teacher and student against
/// each other: one vocabulary and tokenizer, a layer map within both models' blocks, equal
/// hidden widths or a projection. `student` is the model's configuration after the passes
/// before this one.
pub(super) fn check_teacher(
    step: &mut DistillStep,
    model: &Checkpoint,
    student: &ModelConfig,
) -> RecipeResult<()> {
    let base = format!("passes[{}].distill", step.pass);
    let at = |key: &str, msg: String| err(format!("{base}.{key}"), msg);
    let d = &step.stage;
    if let Some(spec) = &d.teacher {
        let teacher = microllm_io::open(&resolve_model_spec(spec))
            .map_err(|e| at("teacher", format!("cannot open `{spec}`: {e}")))?;
        if teacher.config.vocab_size != student.vocab_size {
            return Err(at(
                "teacher",
                format!(
                    "the teacher ({}) has a vocabulary of {} tokens and the student {}: \
                     distillation compares distributions over the same tokens, so both must \
                     use one tokenizer",
                    teacher.path.display(),
                    teacher.config.vocab_size,
                    student.vocab_size
                ),
            ));
        }
        let (t, s) = (
            tokenizer_id(teacher.tokenizer.as_ref()),
            tokenizer_id(model.tokenizer.as_ref()),
        );
        if t != s {
            return Err(at(
                "teacher",
                format!(
                    "the teacher's tokenizer ({}, id->token SHA-256 {t}) differs from the \
                     student's ({s}): the same id would mean different tokens",
                    teacher.path.display()
                ),
            ));
        }
        step.teacher = Some(Arc::new(teacher));
    }
    if !d.loss.uses_hidden() {
        return Ok(());
    }
    let teacher_cfg = step.teacher.as_ref().map_or(&model.config, |t| &t.config);
    if let Some(text) = &d.layer_map {
        let pairs = parse_layer_map(text, student.num_layers, teacher_cfg.num_layers)
            .map_err(|e| at("layer_map", e.to_string()))?;
        step.layer_map = Some(pairs);
    }
    let (s, t) = (student.hidden_size, teacher_cfg.hidden_size);
    if s != t && !d.hidden_projection {
        return Err(at(
            "hidden_projection",
            format!(
                "the student's hidden states are {s} wide and the teacher's {t}: a hidden-state \
                 loss needs a learned projection between them (`hidden_projection: true`)"
            ),
        ));
    }
    Ok(())
}
