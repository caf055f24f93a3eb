//! The Runner: a [`Plan`] executed, ending in a [`CompressionReport`].
//!
//! Order: draw the calibration windows and read the evaluation tokens (a bad file fails here,
//! before anything is written), open the work directory, structured pruning (importance
//! measured once, then a slicing view of the source), evals of intermediate models, the
//! layerwise sweep, the output, evals of the written output (reloaded from disk), the report.
//!
//! Resuming: the work directory beside the output (`OUT.microllm-work`) is the layerwise
//! engine's [`BlockStore`], extended to the pass sequence: the structured pass's scores, every
//! eval's result and the fact that the output was written are stored there too (atomically),
//! under one fingerprint of the model, passes, data and output settings. `--resume` after a
//! kill anywhere skips what is stored and produces the same output bytes: every step that
//! reaches the output is deterministic (see docs/architecture.md).

mod data;
mod distill;
mod phases;
mod report;
mod tasks;
mod write;

use std::collections::BTreeMap;
use std::time::Instant;

use microllm_core::{Error, ModelConfig, Progress, Result, TensorSource};
use microllm_prune::structured::{PrunedSource, Scores, StructuredPlan};
use serde_json::{Value, json};

pub use data::{
    EvalTokens, bytes_on_disk, draw_calibration, hex, load_eval_tokens, peak_rss_bytes, sha256_of,
};
pub use write::{Current, Written, budget_note, write_output};

use microllm_engine::{BlockStore, LayerwiseSummary, OwlSchedule, work_dir};

use crate::plan::Plan;
use crate::report::{CalibrationRecord, CompressionReport, DistillRecord, EvalRecord};
use phases::Runner;

/// What the caller adds to a run.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub resume: bool,
    /// The command line, for the report.
    pub command: Vec<String>,
    /// The report's name.
    pub name: String,
    /// A sweep variant's settings.
    pub variant: BTreeMap<String, Value>,
    /// SHA-256 of the recipe text (or of the recipe as built from flags).
    pub recipe_sha256: String,
}

/// What happened, for the report.
#[derive(Default)]
pub(crate) struct Outcome {
    pub calibration: Option<CalibrationRecord>,
    pub eval_tokens: Option<EvalTokens>,
    pub structured: Option<(StructuredPlan, Scores, bool, f64)>,
    /// The distill pass's record, whether it was resumed, its seconds.
    pub distilled: Option<(DistillRecord, bool, f64)>,
    pub layerwise: Option<(LayerwiseSummary, f64)>,
    /// Per eval pass: its record and whether it was resumed.
    pub evals: Vec<(usize, EvalRecord, bool)>,
    pub writer_notes: Vec<String>,
    /// The output's tensors as written, when the writer chose their types (a size budget).
    pub written_tensors: Option<Vec<crate::plan::TensorPlan>>,
    pub write_seconds: f64,
    pub output_resumed: bool,
    pub global_threshold: Option<f32>,
    /// OWL's measured outlier ratios and block sparsities.
    pub owl: Option<OwlSchedule>,
}

impl Outcome {
    fn new(calibration: Option<CalibrationRecord>) -> Self {
        Self {
            calibration,
            ..Self::default()
        }
    }
}

/// Runs `plan`.
pub fn run(plan: &Plan, opts: &RunOptions, progress: &dyn Progress) -> Result<CompressionReport> {
    let started = Instant::now();
    let ckpt = &plan.model;
    let recipe = &plan.recipe;
    let calibration = match (&recipe.calibration, plan.needs_calibration()) {
        (Some(c), true) => Some(draw_calibration(c, ckpt)?),
        _ => None,
    };
    let wants_eval = !plan.evals.is_empty() || plan.distill.is_some();
    let eval_tokens = match (&recipe.evaluation, wants_eval) {
        (Some(e), true) => Some(load_eval_tokens(e, ckpt)?),
        _ => None,
    };
    let calib_record = calibration.as_ref().map(|set| {
        let c = recipe.calibration.as_ref();
        CalibrationRecord::new(
            c.map(|c| c.data.clone()),
            c.map_or_else(Default::default, |c| c.compute),
            set,
        )
    });
    let fingerprint = fingerprint(plan, calib_record.as_ref(), eval_tokens.as_ref());
    let store = BlockStore::open(&work_dir(&plan.output.path), &fingerprint, opts.resume)?;
    let windows = calibration.as_ref().map_or(&[][..], |c| &c.windows[..]);
    let mut outcome = Outcome::new(calib_record);
    let mut runner = Runner::new(
        plan,
        &store,
        opts.resume,
        windows,
        eval_tokens.as_ref(),
        progress,
    );

    // Structured pruning is a view of the source, not a checkpoint.
    let structured = runner.structured()?;
    let view = match &structured {
        Some((p, ..)) => Some(PrunedSource::new(ckpt.tensors.as_ref(), p)?),
        None => None,
    };
    let (config, source): (&ModelConfig, &dyn TensorSource) = match (&view, &structured) {
        (Some(v), Some((p, ..))) => (&p.config, v),
        _ => (&ckpt.config, ckpt.tensors.as_ref()),
    };

    // Evals before the distill pass see the model as it stands; the ones after it (and
    // every later pass) the trained student.
    let distill_pass = plan.distill.as_ref().map_or(usize::MAX, |d| d.pass);
    runner.evals_in_memory(&mut outcome, 0..distill_pass, config, source)?;
    let distilled = runner.distill(&mut outcome, config, source)?;
    let (config, source): (&ModelConfig, &dyn TensorSource) = match &distilled {
        Some(d) => (&d.config, d.tensors.as_ref()),
        None => (config, source),
    };
    runner.evals_in_memory(&mut outcome, distill_pass..usize::MAX, config, source)?;

    runner.layerwise(&mut outcome, config, source)?;
    runner.write(&mut outcome, config, source)?;
    drop(view);
    outcome.structured = structured;
    runner.evals_of_output(&mut outcome)?;
    drop(runner);

    outcome.eval_tokens = eval_tokens;
    report::build(plan, opts, &outcome, started)
}

/// What a resumed run must share with the killed one: model, passes, output settings and
/// data. `--resume` with anything else refuses to continue.
fn fingerprint(
    plan: &Plan,
    calibration: Option<&CalibrationRecord>,
    eval_tokens: Option<&EvalTokens>,
) -> Value {
    let recipe = &plan.recipe;
    json!({
        "microllm": env!("CARGO_PKG_VERSION"),
        "model": recipe.model,
        "model_bytes": plan.model.stored_bytes(),
        "passes": plan.recipe_value["passes"],
        "output": {
            "path": plan.output.path,
            "format": recipe.output.format,
            "dtype": recipe.output.dtype,
            "gguf_type": recipe.output.gguf_type,
        },
        "calibration": calibration,
        "evaluation": eval_tokens.map(|e| json!({"sha256": e.sha256, "ctx": e.ctx})),
    })
}

/// Removes the run's work directory once everything the run produces is written: the model
/// by [`run`], the reports by its caller. Until then a failure (a full disk while writing the
/// reports) leaves it, and `--resume` finishes the job from it.
pub fn finish(plan: &Plan) -> Result<()> {
    let dir = work_dir(&plan.output.path);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    }
    Ok(())
}
