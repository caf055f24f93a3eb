//! The training loop: batches, losses, accumulation, clipping, AdamW, evaluation, checkpoints.
//!
//! One optimizer step consumes `batch × accumulation` windows in the seeded order of
//! [`data::DataOrder`]. Per micro-batch: the student's forward, the fused head loss against
//! the targets (a stored top-k, a live teacher's logits, or only the labels), the hidden-state
//! loss when asked, the backward pass, and the gradients added into f32 accumulators. Then
//! the global gradient norm is checked (non-finite: stop, see [`DistillError::NonFinite`]),
//! clipped, and AdamW applies the step at the schedule's learning rate. Held-out perplexity
//! runs every `eval_every` steps and after the last; a checkpoint every `checkpoint_every`.

pub mod checkpoint;
pub mod data;
mod optim;
mod step;

use std::path::Path;
use std::time::Instant;

use candle_core::Var;
use microllm_core::{Error, NoProgress, Progress};
use microllm_eval::PerplexityOptions;
use microllm_models::Decoder;
use serde::{Deserialize, Serialize};

pub use checkpoint::TrainState;
pub use optim::{AdamW, AdamWConfig, GradAccumulator, MomentPrecision, Moments, Schedule};

use crate::error::{DistillError, DistillResult};
use crate::loss::{HiddenLoss, LogitMix, RowTerms};
use crate::report::{EvalPoint, StepRecord};
use crate::store::TeacherStore;
use crate::student::Student;
use data::DataOrder;
use step::micro_step;

/// Everything that shapes the trained weights (and so goes into the run's fingerprint).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainSettings {
    /// Logit-loss weights and the temperature.
    pub mix: LogitMix,
    /// Weight of the hidden-state loss (0: none).
    pub hidden_weight: f64,
    /// Peak learning rate.
    pub lr: f64,
    pub warmup_steps: u64,
    /// The cosine ends at `min_lr_ratio × lr`.
    pub min_lr_ratio: f64,
    pub steps: u64,
    /// Windows per micro-batch.
    pub batch: usize,
    pub seqlen: usize,
    /// Micro-batches per optimizer step.
    pub accumulation: usize,
    /// Global gradient-norm limit.
    pub clip_norm: f64,
    pub adamw: AdamWConfig,
    pub seed: u64,
    pub freeze_embeddings: bool,
    /// Leading student blocks kept fixed.
    pub freeze_blocks: usize,
    /// Evaluate every N steps (0: only before and after).
    pub eval_every: u64,
    /// Checkpoint every N steps (0: never).
    pub checkpoint_every: u64,
}

impl TrainSettings {
    /// Tokens one optimizer step consumes.
    pub fn tokens_per_step(&self) -> u64 {
        (self.batch * self.seqlen * self.accumulation) as u64
    }

    /// Refuses settings that cannot train.
    pub fn check(&self) -> microllm_core::Result<()> {
        let bad = |msg: String| Err(Error::Invalid(msg));
        if self.steps == 0 || self.batch == 0 || self.accumulation == 0 {
            return bad("--steps, --batch and --accumulation must be positive".into());
        }
        if self.seqlen < 2 {
            return bad(format!(
                "--seqlen {} is too short (at least 2)",
                self.seqlen
            ));
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad(format!("--lr {} must be positive", self.lr));
        }
        if !(self.mix.temperature.is_finite() && self.mix.temperature > 0.0) {
            return bad(format!(
                "--temperature {} must be positive",
                self.mix.temperature
            ));
        }
        if self.clip_norm.is_nan() || self.clip_norm <= 0.0 {
            return bad(format!("--clip {} must be positive", self.clip_norm));
        }
        if !(0.0..=1.0).contains(&self.min_lr_ratio) {
            return bad(format!(
                "--min-lr-ratio {} must be within [0, 1]",
                self.min_lr_ratio
            ));
        }
        Ok(())
    }
}

/// What the student is trained to match.
pub enum Targets<'a> {
    /// A stored top-k (the windows are the store's).
    Store(&'a TeacherStore),
    /// A live teacher on windows cut from `tokens`.
    Live {
        teacher: &'a Decoder,
        tokens: &'a [u32],
    },
    /// Only the next tokens of windows cut from `tokens` (plain fine-tuning).
    Labels { tokens: &'a [u32] },
}

impl Targets<'_> {
    /// Training windows of `seqlen` tokens available (a store's are its own).
    pub fn windows(&self, seqlen: usize) -> usize {
        match self {
            Targets::Store(s) => s.windows(),
            Targets::Live { tokens, .. } | Targets::Labels { tokens } => tokens.len() / seqlen,
        }
    }

    /// What the student matches, in words (for reports).
    pub fn describe(&self) -> String {
        match self {
            Targets::Store(s) => format!(
                "teacher-logit store {} (top-{})",
                s.dir().display(),
                s.manifest().top_k
            ),
            Targets::Live { .. } => "live teacher (full distribution)".into(),
            Targets::Labels { .. } => "next-token labels only".into(),
        }
    }
}

/// Held-out perplexity.
pub struct Evaluation<'a> {
    pub tokens: &'a [u32],
    pub options: PerplexityOptions,
}

/// A training run.
pub struct TrainJob<'a> {
    pub settings: &'a TrainSettings,
    pub student: &'a Student,
    pub targets: Targets<'a>,
    pub hidden: Option<&'a HiddenLoss>,
    pub eval: Option<Evaluation<'a>>,
    /// Where checkpoints live.
    pub work_dir: &'a Path,
    /// Continue from the checkpoint in `work_dir` when there is one.
    pub resume: bool,
    /// Identifies settings, student and data; a checkpoint of another run is refused.
    pub fingerprint: String,
}

/// How the run ended.
#[derive(Debug, Clone)]
pub struct TrainOutcome {
    pub state: TrainState,
    pub resumed_at: Option<u64>,
    pub eval_before: Option<EvalPoint>,
    pub eval_seconds: f64,
}

fn evaluate(job: &TrainJob<'_>, state: &TrainState) -> DistillResult<Option<EvalPoint>> {
    let Some(eval) = &job.eval else {
        return Ok(None);
    };
    let started = Instant::now();
    let source = job.student.to_source("student being trained")?;
    let decoder = Decoder::load(job.student.config(), &source)?;
    let r = microllm_eval::perplexity(&decoder, eval.tokens, eval.options, &NoProgress)?;
    Ok(Some(EvalPoint {
        step: state.step,
        tokens: state.tokens,
        train_seconds: state.train_seconds,
        perplexity: r.perplexity,
        mean_nll: r.mean_nll,
        seconds: started.elapsed().as_secs_f64(),
    }))
}

/// Runs (or resumes) training; the student's variables hold the result.
pub fn train(job: &TrainJob<'_>, progress: &dyn Progress) -> DistillResult<TrainOutcome> {
    let s = job.settings;
    s.check()?;
    let windows = job.targets.windows(s.seqlen);
    if windows == 0 {
        return Err(Error::Invalid(format!(
            "the training data holds no window of {} tokens",
            s.seqlen
        ))
        .into());
    }
    let mut vars: Vec<(String, Var)> = job
        .student
        .trainable()
        .map(|(n, v)| (n.to_string(), v.clone()))
        .collect();
    if let Some(h) = job.hidden {
        vars.extend(
            h.named_projections()
                .into_iter()
                .map(|(n, v)| (n, v.clone())),
        );
    }
    let var_refs: Vec<&Var> = vars.iter().map(|(_, v)| v).collect();
    let named: Vec<(&str, &Var)> = vars.iter().map(|(n, v)| (n.as_str(), v)).collect();
    let mut opt = AdamW::new(s.adamw, &var_refs);
    let mut acc = GradAccumulator::new(&var_refs);
    let mut state = TrainState {
        step: 0,
        adam_steps: 0,
        windows_consumed: 0,
        tokens: 0,
        train_seconds: 0.0,
        curve: Vec::new(),
        evals: Vec::new(),
        eval_before: None,
        fingerprint: job.fingerprint.clone(),
    };
    let mut resumed_at = None;
    if job.resume
        && let Some(saved) = checkpoint::read_state(job.work_dir)?
    {
        if saved.fingerprint != job.fingerprint {
            return Err(Error::Invalid(format!(
                "the checkpoint in {} belongs to another run (other settings, student or data); \
                 remove it or run without --resume",
                job.work_dir.display()
            ))
            .into());
        }
        checkpoint::restore(job.work_dir, &named, &mut opt, &saved)?;
        resumed_at = Some(saved.step);
        state = saved;
    }
    let mut eval_seconds = 0.0;
    if state.step == 0 && state.eval_before.is_none() {
        progress.status("evaluating the initial student");
        state.eval_before = evaluate(job, &state)?;
        eval_seconds += state.eval_before.as_ref().map_or(0.0, |e| e.seconds);
    }
    let schedule = Schedule {
        peak: s.lr,
        warmup: s.warmup_steps,
        total: s.steps,
        min_ratio: s.min_lr_ratio,
    };
    let mut order = DataOrder::new(windows, s.seed);
    progress.begin("distilling", s.steps, "steps");
    progress.advance(state.step);
    while state.step < s.steps {
        let started = Instant::now();
        acc.clear();
        let (mut loss, mut terms, mut hidden) = (0.0, RowTerms::default(), 0.0);
        let mut position = state.windows_consumed;
        for _ in 0..s.accumulation {
            let batch: Vec<usize> = (0..s.batch as u64)
                .map(|i| order.window_at(position + i))
                .collect();
            position += s.batch as u64;
            let r = micro_step(job, &vars, &mut acc, &batch)?;
            let w = 1.0 / s.accumulation as f64;
            loss += w * r.loss;
            hidden += w * r.hidden;
            terms.add(&RowTerms {
                kl: w * r.terms.kl,
                reverse_kl: w * r.terms.reverse_kl,
                jsd: w * r.terms.jsd,
                ce: w * r.terms.ce,
            });
        }
        let grad_norm = acc.norm();
        let bad = if !loss.is_finite() {
            Some(format!("the loss ({loss})"))
        } else if !grad_norm.is_finite() {
            Some(format!("the gradient norm ({grad_norm})"))
        } else {
            None
        };
        if let Some(what) = bad {
            progress.finish();
            let checkpoint = checkpoint::save(job.work_dir, &named, &opt, &state)?;
            return Err(DistillError::NonFinite {
                step: state.step + 1,
                what,
                checkpoint,
            });
        }
        if grad_norm > s.clip_norm {
            acc.scale((s.clip_norm / grad_norm) as f32);
        }
        let lr = schedule.lr(state.step);
        opt.step(&var_refs, &acc.sums, lr)?;
        let seconds = started.elapsed().as_secs_f64();
        state.step += 1;
        state.adam_steps = opt.steps;
        state.windows_consumed = position;
        state.tokens += s.tokens_per_step();
        state.train_seconds += seconds;
        let record = StepRecord {
            step: state.step,
            tokens: state.tokens,
            loss,
            kl: terms.kl,
            reverse_kl: terms.reverse_kl,
            jsd: terms.jsd,
            ce: terms.ce,
            hidden,
            lr,
            grad_norm,
            tokens_per_second: s.tokens_per_step() as f64 / seconds,
        };
        progress.advance(1);
        progress.status(&format!(
            "loss {:.4}  lr {:.2e}  {:.0} tokens/s",
            record.loss, record.lr, record.tokens_per_second
        ));
        state.curve.push(record);
        let last = state.step == s.steps;
        if last || (s.eval_every > 0 && state.step.is_multiple_of(s.eval_every)) {
            progress.status("evaluating");
            if let Some(p) = evaluate(job, &state)? {
                eval_seconds += p.seconds;
                state.evals.push(p);
            }
        }
        if !last && s.checkpoint_every > 0 && state.step.is_multiple_of(s.checkpoint_every) {
            checkpoint::save(job.work_dir, &named, &opt, &state)?;
        }
    }
    progress.finish();
    Ok(TrainOutcome {
        eval_before: state.eval_before.clone(),
        state,
        resumed_at,
        eval_seconds,
    })
}
