//! Checking a `distill` pass: its place among the passes, its data, its schedule.
//!
//! The teacher is always the recipe's model, the student the model as it stands after the
//! passes before it, so a distill pass belongs after `structured_prune` (the student it heals)
//! and before `prune` / `quantize` (training would move weights off their zeros and grids).

use std::path::PathBuf;

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
            "every loss weight is 0: give kl, reverse_kl, jsd or ce".into(),
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
    })
}
