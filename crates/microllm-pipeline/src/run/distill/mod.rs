//! The distill pass in a run: who trains, what they are given, where the result goes.
//!
//! Training code lives in `microllm-distill`, below this crate; [`trainer`] turns the planned
//! pass into its settings, data and targets and calls it.
//!
//! The trained student is written as a Hugging Face directory into the work directory and
//! reopened from there, so the passes after it read it as they read any model, and a killed
//! run resumes without training again: the trainer's own checkpoints cover a kill during
//! training, the stored record and directory a kill after it.

use std::path::Path;
use std::time::Instant;

use microllm_core::{Error, ModelConfig, Progress, Result, TensorSource};
use microllm_distill::loss::hidden::uniform_layer_map;
use microllm_engine::BlockStore;
use microllm_eval::PerplexityOptions;
use microllm_io::Checkpoint;
use serde_json::json;

use super::data::EvalTokens;
use crate::plan::DistillStep;
use crate::report::DistillRecord;

mod trainer;

/// What a distill pass trains, on what, and where its files go.
pub(super) struct DistillJob<'a> {
    pub step: &'a DistillStep,
    /// The recipe's model: the teacher unless the pass names its own; its tokenizer reads
    /// the data and goes with the trained student.
    pub model: &'a Checkpoint,
    /// The model as it stands before the pass (a structured view, or the original).
    pub student_config: &'a ModelConfig,
    pub student: &'a dyn TensorSource,
    /// The teacher block each student block came from, when the student was cut out of the
    /// recipe's model by `structured_prune`.
    pub source_blocks: Option<&'a [usize]>,
    /// Held-out tokens for the perplexity curve (the recipe's evaluation data), if any.
    pub eval: Option<(&'a [u32], PerplexityOptions)>,
    /// Where the trainer keeps its checkpoints.
    pub checkpoints: &'a Path,
    /// Where the trained student is written (a Hugging Face directory).
    pub out: &'a Path,
    /// Continue from the trainer's last checkpoint.
    pub resume: bool,
}

impl DistillJob<'_> {
    /// The model the student matches.
    pub fn teacher(&self) -> &Checkpoint {
        self.step.teacher.as_deref().unwrap_or(self.model)
    }

    /// The block pairs a hidden-state loss compares: the pass's `layer_map`, else each
    /// structured block with the teacher block it came from, else spread evenly.
    pub fn layer_map(&self) -> Vec<(usize, usize)> {
        if let Some(pairs) = &self.step.layer_map {
            return pairs.clone();
        }
        match self.source_blocks {
            Some(blocks) if self.step.teacher.is_none() => {
                blocks.iter().copied().enumerate().collect()
            }
            _ => uniform_layer_map(
                self.student_config.num_layers,
                self.teacher().config.num_layers,
            ),
        }
    }
}

/// The model as it stands before the pass: the student.
pub(super) struct StudentInput<'a> {
    pub config: &'a ModelConfig,
    pub source: &'a dyn TensorSource,
    /// The teacher block each block came from, when `structured_prune` cut it out of the
    /// recipe's model.
    pub source_blocks: Option<&'a [usize]>,
}

const RECORD: &str = "distill.json";
const MODEL_DIR: &str = "distilled-model";
const CHECKPOINT_DIR: &str = "distill-checkpoints";

/// The trained student, reopened from the work directory, with its record; `resumed`: taken
/// from a killed run's work directory without training.
pub(super) struct Distilled {
    pub model: Checkpoint,
    pub record: DistillRecord,
    pub resumed: bool,
    pub seconds: f64,
}

/// Where the trained student is kept in the work directory.
pub(super) fn distilled_dir(store: &BlockStore) -> std::path::PathBuf {
    store.dir().join(MODEL_DIR)
}

/// Runs (or resumes) the distill pass.
pub(super) fn run_distill(
    step: &DistillStep,
    model: &Checkpoint,
    student: StudentInput<'_>,
    eval: Option<&EvalTokens>,
    store: &BlockStore,
    resume: bool,
    progress: &dyn Progress,
) -> Result<Distilled> {
    let started = Instant::now();
    let out = distilled_dir(store);
    let reopen = || microllm_io::open(&out.to_string_lossy());
    if let Some(v) = store.load_json(RECORD)?
        && out.exists()
    {
        let record: DistillRecord = serde_json::from_value(v)
            .map_err(|e| Error::format(store.dir().join(RECORD), e.to_string()))?;
        return Ok(Distilled {
            model: reopen()?,
            record,
            resumed: true,
            seconds: started.elapsed().as_secs_f64(),
        });
    }
    let checkpoints = store.dir().join(CHECKPOINT_DIR);
    std::fs::create_dir_all(&checkpoints).map_err(|e| Error::io(&checkpoints, e))?;
    let job = DistillJob {
        step,
        model,
        student_config: student.config,
        student: student.source,
        source_blocks: student.source_blocks,
        eval: eval.map(|e| {
            (
                &e.tokens[..],
                PerplexityOptions {
                    ctx: e.ctx,
                    max_windows: Some(e.windows),
                    protocol: Default::default(),
                },
            )
        }),
        checkpoints: &checkpoints,
        out: &out,
        resume,
    };
    let record = trainer::train_student(&job, progress)?;
    store.save_json(RECORD, &json!(record))?;
    std::fs::remove_dir_all(&checkpoints).map_err(|e| Error::io(&checkpoints, e))?;
    Ok(Distilled {
        model: reopen()?,
        record,
        resumed: false,
        seconds: started.elapsed().as_secs_f64(),
    })
}
