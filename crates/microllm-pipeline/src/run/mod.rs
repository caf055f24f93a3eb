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
mod report;
mod tasks;
mod write;

use std::collections::BTreeMap;
use std::time::Instant;

use microllm_core::{Error, ModelConfig, Progress, Result, TensorSource};
use microllm_eval::{Comparison, PerplexityOptions, compare};
use microllm_models::Decoder;
use microllm_prune::structured::{PrunedSource, Scores, StructuredPlan};
use microllm_prune::{GlobalThreshold, Ranking, Schedule};
use serde_json::{Value, json};

pub use data::{
    EvalTokens, bytes_on_disk, draw_calibration, hex, load_eval_tokens, peak_rss_bytes, sha256_of,
};
pub use write::{Current, Written, budget_note, write_output};

use microllm_engine::structured::{ImportanceJob, measure_importance};
use microllm_engine::{
    BlockStore, CompressJob, LayerwiseSummary, OwlSchedule, measure_imatrix, owl_schedule,
    run_compress, work_dir,
};
use microllm_io::gguf::ImportanceMatrix;

use crate::plan::{Plan, Writer};
use crate::report::{CalibrationRecord, CompressionReport, DistillRecord, EvalRecord};
use distill::run_distill;

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
        CalibrationRecord::new(recipe.calibration.as_ref().map(|c| c.data.clone()), set)
    });
    let fingerprint = json!({
        "microllm": env!("CARGO_PKG_VERSION"),
        "model": recipe.model,
        "model_bytes": ckpt.stored_bytes(),
        "passes": plan.recipe_value["passes"],
        "output": {
            "path": plan.output.path,
            "format": recipe.output.format,
            "dtype": recipe.output.dtype,
            "gguf_type": recipe.output.gguf_type,
        },
        "calibration": calib_record,
        "evaluation": eval_tokens.as_ref().map(|e| json!({"sha256": e.sha256, "ctx": e.ctx})),
    });
    let store = BlockStore::open(&work_dir(&plan.output.path), &fingerprint, opts.resume)?;
    let windows = calibration.as_ref().map_or(&[][..], |c| &c.windows[..]);
    let mut outcome = Outcome {
        calibration: calib_record,
        // Kept apart while the run borrows it; the report gets it at the end.
        eval_tokens: None,
        structured: None,
        distilled: None,
        layerwise: None,
        evals: Vec::new(),
        writer_notes: Vec::new(),
        written_tensors: None,
        write_seconds: 0.0,
        output_resumed: false,
        global_threshold: None,
        owl: None,
    };

    // Structured pruning: measured once, stored, then a view of the source.
    if let Some(s) = &plan.structured {
        let t = Instant::now();
        let (scores, resumed) = match store.load_json("structured-scores.json")? {
            Some(v) => (scores_from(v)?, true),
            None => {
                let scores = if s.targets.removes_anything(&ckpt.config) {
                    let job = ImportanceJob {
                        config: &ckpt.config,
                        source: ckpt.tensors.as_ref(),
                        calibration: windows,
                        metric: s.metric,
                        block_influence: s.block_influence,
                    };
                    measure_importance(&job, progress)?
                } else {
                    Scores::default()
                };
                store.save_json("structured-scores.json", &json!(scores))?;
                (scores, false)
            }
        };
        let splan =
            StructuredPlan::from_scores(&ckpt.config, &s.targets, s.spec.head_mode, &scores)?;
        outcome.structured = Some((splan, scores, resumed, t.elapsed().as_secs_f64()));
    }
    let view = match &outcome.structured {
        Some((p, ..)) => Some(PrunedSource::new(ckpt.tensors.as_ref(), p)?),
        None => None,
    };
    let (config, source): (&ModelConfig, &dyn TensorSource) = match (&view, &outcome.structured) {
        (Some(v), Some((p, ..))) => (&p.config, v),
        _ => (&ckpt.config, ckpt.tensors.as_ref()),
    };

    // Evals of the model in memory before the distill pass (or the layerwise sweep).
    let distill_pass = plan.distill.as_ref().map_or(usize::MAX, |d| d.pass);
    let mut base: Option<Decoder> = None;
    let mut base_tasks: tasks::BaseScores = None;
    let mut evals_in_memory = |evals: &mut Vec<(usize, EvalRecord, bool)>,
                               range: std::ops::Range<usize>,
                               config: &ModelConfig,
                               source: &dyn TensorSource|
     -> Result<()> {
        let mut candidate: Option<Decoder> = None;
        for e in plan
            .evals
            .iter()
            .filter(|e| !e.of_output && range.contains(&e.pass))
        {
            if candidate.is_none() {
                candidate = Some(Decoder::load(config, source)?);
            }
            let model = candidate.as_ref().expect("loaded above");
            let rec = eval_step(
                plan,
                &store,
                (&mut base, &mut base_tasks),
                model,
                (e.pass, e.windows),
                eval_tokens.as_ref(),
                false,
                progress,
            )?;
            evals.push(rec);
        }
        Ok(())
    };
    evals_in_memory(&mut outcome.evals, 0..distill_pass, config, source)?;

    // Distillation: the model so far is the student, the original its teacher.
    let distilled = match &plan.distill {
        Some(step) => {
            let d = run_distill(
                step,
                ckpt,
                (config, source),
                eval_tokens.as_ref(),
                &store,
                opts.resume,
                progress,
            )?;
            outcome.distilled = Some((d.record, d.resumed, d.seconds));
            Some(d.model)
        }
        None => None,
    };
    let (config, source): (&ModelConfig, &dyn TensorSource) = match &distilled {
        Some(d) => (&d.config, d.tensors.as_ref()),
        None => (config, source),
    };
    evals_in_memory(&mut outcome.evals, distill_pass..usize::MAX, config, source)?;

    // The layerwise sweep.
    if let Some(l) = &plan.layerwise {
        let t = Instant::now();
        let mut spec = l.spec;
        if let (Some(sparsity), Some(p)) = (l.global_sparsity, spec.prune.as_mut()) {
            let threshold = global_threshold(config, source, sparsity, progress)?;
            outcome.global_threshold = threshold;
            if let Some(threshold) = threshold {
                p.ranking = Ranking::Global { threshold };
            }
        }
        if let Schedule::Owl { threshold, lambda } = l.schedule {
            let target = spec.prune.map_or(0.0, |p| p.pattern.sparsity());
            let importance = measure_imatrix(config, source, windows, progress)?;
            let owl = owl_schedule(
                config,
                source,
                &importance,
                target,
                (threshold, lambda),
                progress,
            )?;
            outcome.owl = Some(owl);
        }
        let job = CompressJob {
            config,
            source,
            calibration: windows,
            spec,
            block_sparsity: outcome.owl.as_ref().map(|o| o.sparsities.clone()),
        };
        let summary = run_compress(&job, &store, progress)?;
        outcome.layerwise = Some((summary, t.elapsed().as_secs_f64()));
    }

    // The output.
    let t = Instant::now();
    if opts.resume && store.load_json("output.json")?.is_some() && plan.output.path.exists() {
        outcome.output_resumed = true;
    } else {
        let importance = match plan.output.writer {
            Writer::Gguf {
                importance: true, ..
            } => Some(importance_matrix(plan, config, source, windows, progress)?),
            _ => None,
        };
        let now = Current {
            config,
            source,
            store: plan.layerwise.as_ref().map(|_| &store),
            importance: importance.as_deref(),
        };
        let written = write_output(plan, ckpt, &now, progress)?;
        outcome.writer_notes = written.notes;
        outcome.written_tensors = written.tensors;
        store.save_json(
            "output.json",
            &json!({"path": plan.output.path, "notes": outcome.writer_notes}),
        )?;
    }
    outcome.write_seconds = t.elapsed().as_secs_f64();
    if outcome.output_resumed
        && let Some(v) = store.load_json("output.json")?
    {
        outcome.writer_notes = serde_json::from_value(v["notes"].clone()).unwrap_or_default();
    }
    drop(view);

    // Evals of the written output, reloaded from disk.
    if plan.evals.iter().any(|e| e.of_output) {
        let written = microllm_io::open(&plan.output.path.to_string_lossy())?;
        let candidate = load_for_eval(&written.config, written.tensors.as_ref())?;
        for e in plan.evals.iter().filter(|e| e.of_output) {
            let rec = eval_step(
                plan,
                &store,
                (&mut base, &mut base_tasks),
                &candidate,
                (e.pass, e.windows),
                eval_tokens.as_ref(),
                true,
                progress,
            )?;
            outcome.evals.push(rec);
        }
    }
    outcome.eval_tokens = eval_tokens;
    report::build(plan, opts, &outcome, started)
}

/// The GGUF writer's importance matrix: the one the plan read from the recipe's file, or one
/// measured on the calibration windows (and saved where the recipe asks).
fn importance_matrix<'p>(
    plan: &'p Plan,
    config: &ModelConfig,
    source: &dyn TensorSource,
    windows: &[Vec<u32>],
    progress: &dyn Progress,
) -> Result<std::borrow::Cow<'p, ImportanceMatrix>> {
    if let Some(matrix) = &plan.output.importance_read {
        return Ok(std::borrow::Cow::Borrowed(matrix));
    }
    let matrix = measure_imatrix(config, source, windows, progress)?;
    if let Some(path) = &plan.output.save_importance {
        let dataset = plan
            .recipe
            .calibration
            .as_ref()
            .map(|c| c.data.to_string_lossy().into_owned())
            .unwrap_or_default();
        let chunk = windows.first().map_or(0, Vec::len);
        matrix.write_gguf(path, config.family, &dataset, chunk, true)?;
    }
    Ok(std::borrow::Cow::Owned(matrix))
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

/// One eval pass: from the work directory when a killed run finished it, else measured.
#[allow(clippy::too_many_arguments)]
fn eval_step(
    plan: &Plan,
    store: &BlockStore,
    (base, base_tasks): (&mut Option<Decoder>, &mut tasks::BaseScores),
    candidate: &Decoder,
    (pass, windows): (usize, usize),
    tokens: Option<&EvalTokens>,
    of_output: bool,
    progress: &dyn Progress,
) -> Result<(usize, EvalRecord, bool)> {
    let name = format!("eval-{pass:03}.json");
    if let Some(v) = store.load_json(&name)? {
        let rec: EvalRecord = serde_json::from_value(v)
            .map_err(|e| Error::format(store.dir().join(&name), e.to_string()))?;
        return Ok((pass, rec, true));
    }
    let tokens = tokens.expect("validated: eval passes have evaluation data");
    if base.is_none() {
        *base = Some(load_for_eval(
            &plan.model.config,
            plan.model.tensors.as_ref(),
        )?);
    }
    let original = base.as_ref().expect("loaded above");
    let opts = PerplexityOptions {
        ctx: tokens.ctx,
        max_windows: Some(windows),
        protocol: Default::default(),
    };
    let c: Comparison = compare(original, candidate, &tokens.tokens, opts, progress)?;
    let mut rec = EvalRecord::new(tokens.file.clone(), of_output, c);
    rec.tasks = tasks::score_tasks(plan, original, base_tasks, candidate, progress)?;
    store.save_json(&name, &json!(rec))?;
    Ok((pass, rec, false))
}

/// A model as the report's evals run it: matrices a file stores packed (GGUF blocks) stay
/// packed, with f32 activations, so the numbers are the dense model's while the memory is
/// the file's. Dense on load, the original and a written Qwen2.5-0.5B peaked at 6.2 GB in
/// `quantize --eval` (RTN 4-bit, 8 windows; 2.44 GB packed), most of it two f32 copies of
/// 630 M parameters.
fn load_for_eval(config: &ModelConfig, source: &dyn TensorSource) -> Result<Decoder> {
    Decoder::load_with(config, source, Some(microllm_models::Activations::F32))
}

fn scores_from(v: Value) -> Result<Scores> {
    serde_json::from_value(v).map_err(|e| Error::Invalid(format!("stored structured scores: {e}")))
}

/// The magnitude below which `sparsity` of all linear weights lie, found exactly in two
/// streaming passes over the model's linears (`None`: nothing to prune).
fn global_threshold(
    cfg: &ModelConfig,
    src: &dyn TensorSource,
    sparsity: f64,
    progress: &dyn Progress,
) -> Result<Option<f32>> {
    let linears = crate::plan::tensors::linear_infos(cfg, src)?;
    let mut g = GlobalThreshold::default();
    for pass in 0..2 {
        progress.begin(
            "global magnitude threshold",
            linears.len() as u64,
            "tensors",
        );
        for info in &linears {
            let w = src.load(&info.name)?.flatten_all()?.to_vec1::<f32>()?;
            if pass == 0 {
                g.count(&w);
            } else {
                g.collect(&w);
            }
            progress.advance(1);
        }
        progress.finish();
        if pass == 0 && !g.aim(sparsity) {
            return Ok(None);
        }
    }
    Ok(Some(g.threshold().unwrap_or(0.0)))
}
