//! The phases of a run, in order, each skipping what a killed run's work directory already
//! holds: structured pruning, evals of the model in memory, distillation, the layerwise
//! sweep, the output, evals of the written output.

use std::time::Instant;

use microllm_core::{Error, ModelConfig, Progress, Result, TensorSource};
use microllm_engine::structured::{ImportanceJob, measure_importance};
use microllm_engine::{BlockStore, CompressJob, measure_imatrix, owl_schedule, run_compress};
use microllm_eval::{Comparison, PerplexityOptions, compare};
use microllm_io::Checkpoint;
use microllm_io::gguf::ImportanceMatrix;
use microllm_models::Decoder;
use microllm_prune::structured::{Scores, StructuredPlan};
use microllm_prune::{GlobalThreshold, Ranking, Schedule};
use serde_json::{Value, json};

use super::data::EvalTokens;
use super::distill::{StudentInput, distilled_dir, run_distill};
use super::write::{Current, write_output};
use super::{Outcome, tasks};
use crate::plan::{Plan, Writer};
use crate::recipe::CalibrationCompute;
use crate::report::EvalRecord;
use microllm_io::write::link_dir;

const STRUCTURED_SCORES: &str = "structured-scores.json";
const OUTPUT_RECORD: &str = "output.json";

/// What every phase works with: the plan, the work directory, the data, and the original
/// model once an eval has loaded it (kept for the later evals).
pub(super) struct Runner<'r> {
    plan: &'r Plan,
    store: &'r BlockStore,
    resume: bool,
    windows: &'r [Vec<u32>],
    eval_tokens: Option<&'r EvalTokens>,
    progress: &'r dyn Progress,
    base: Option<Decoder>,
    base_tasks: tasks::BaseScores,
}

impl<'r> Runner<'r> {
    pub fn new(
        plan: &'r Plan,
        store: &'r BlockStore,
        resume: bool,
        windows: &'r [Vec<u32>],
        eval_tokens: Option<&'r EvalTokens>,
        progress: &'r dyn Progress,
    ) -> Self {
        Self {
            plan,
            store,
            resume,
            windows,
            eval_tokens,
            progress,
            base: None,
            base_tasks: None,
        }
    }

    /// Structured pruning's plan: importance measured once (or read back), then the kept
    /// channels, heads and blocks; with whether it was read back and its seconds.
    pub fn structured(&self) -> Result<Option<(StructuredPlan, Scores, bool, f64)>> {
        let Some(s) = &self.plan.structured else {
            return Ok(None);
        };
        let ckpt = &self.plan.model;
        let t = Instant::now();
        let (scores, resumed) = match self.store.load_json(STRUCTURED_SCORES)? {
            Some(v) => (scores_from(v)?, true),
            None => {
                let scores = if s.targets.removes_anything(&ckpt.config) {
                    let job = ImportanceJob {
                        config: &ckpt.config,
                        source: ckpt.tensors.as_ref(),
                        calibration: self.windows,
                        metric: s.metric,
                        block_influence: s.block_influence,
                    };
                    measure_importance(&job, self.progress)?
                } else {
                    Scores::default()
                };
                self.store.save_json(STRUCTURED_SCORES, &json!(scores))?;
                (scores, false)
            }
        };
        let splan =
            StructuredPlan::from_scores(&ckpt.config, &s.targets, s.spec.head_mode, &scores)?;
        Ok(Some((splan, scores, resumed, t.elapsed().as_secs_f64())))
    }

    /// The eval passes in `passes` that measure the model in memory (`config`, `source`),
    /// loaded once for all of them.
    pub fn evals_in_memory(
        &mut self,
        outcome: &mut Outcome,
        passes: std::ops::Range<usize>,
        config: &ModelConfig,
        source: &dyn TensorSource,
    ) -> Result<()> {
        let mut candidate: Option<Decoder> = None;
        let plan = self.plan;
        for e in plan
            .evals
            .iter()
            .filter(|e| !e.of_output && passes.contains(&e.pass))
        {
            if candidate.is_none() {
                candidate = Some(Decoder::load(config, source)?);
            }
            let model = candidate.as_ref().expect("loaded above");
            let rec = self.eval_step(model, (e.pass, e.windows), false)?;
            outcome.evals.push(rec);
        }
        Ok(())
    }

    /// The distill pass, if the plan has one: the model so far is the student, the original
    /// (or the pass's own `teacher`) its teacher. Returns the trained student, reopened from
    /// the work directory.
    pub fn distill(
        &self,
        outcome: &mut Outcome,
        config: &ModelConfig,
        source: &dyn TensorSource,
    ) -> Result<Option<Checkpoint>> {
        let Some(step) = &self.plan.distill else {
            return Ok(None);
        };
        let source_blocks: Option<Vec<usize>> = outcome
            .structured
            .as_ref()
            .map(|(plan, ..)| plan.layers.iter().map(|l| l.source).collect());
        let student = StudentInput {
            config,
            source,
            source_blocks: source_blocks.as_deref(),
        };
        let d = run_distill(
            step,
            &self.plan.model,
            student,
            self.eval_tokens,
            self.store,
            self.resume,
            self.progress,
        )?;
        outcome.distilled = Some((d.record, d.resumed, d.seconds));
        Ok(Some(d.model))
    }

    /// The layerwise sweep (quantization and unstructured pruning, block by block), with
    /// the global threshold or OWL's block sparsities measured first when the plan asks.
    pub fn layerwise(
        &self,
        outcome: &mut Outcome,
        config: &ModelConfig,
        source: &dyn TensorSource,
    ) -> Result<()> {
        let Some(l) = &self.plan.layerwise else {
            return Ok(());
        };
        let t = Instant::now();
        let mut spec = l.spec;
        if let (Some(sparsity), Some(p)) = (l.global_sparsity, spec.prune.as_mut()) {
            let threshold = global_threshold(config, source, sparsity, self.progress)?;
            outcome.global_threshold = threshold;
            if let Some(threshold) = threshold {
                p.ranking = Ranking::Global { threshold };
            }
        }
        if let Schedule::Owl { threshold, lambda } = l.schedule {
            let target = spec.prune.map_or(0.0, |p| p.pattern.sparsity());
            let importance = measure_imatrix(config, source, self.windows, self.progress)?;
            let owl = owl_schedule(
                config,
                source,
                &importance,
                target,
                (threshold, lambda),
                self.progress,
            )?;
            outcome.owl = Some(owl);
        }
        let job = CompressJob {
            config,
            source,
            calibration: self.windows,
            spec,
            block_sparsity: outcome.owl.as_ref().map(|o| o.sparsities.clone()),
            packed: calibration_packing(self.plan),
        };
        let summary = run_compress(&job, self.store, self.progress)?;
        outcome.layerwise = Some((summary, t.elapsed().as_secs_f64()));
        Ok(())
    }

    /// The output, unless a killed run already wrote it (then its notes are read back).
    pub fn write(
        &self,
        outcome: &mut Outcome,
        config: &ModelConfig,
        source: &dyn TensorSource,
    ) -> Result<()> {
        let plan = self.plan;
        let t = Instant::now();
        let stored = self.store.load_json(OUTPUT_RECORD)?;
        match stored {
            Some(v) if self.resume && plan.output.path.exists() => {
                outcome.output_resumed = true;
                outcome.writer_notes =
                    serde_json::from_value(v["notes"].clone()).unwrap_or_default();
            }
            _ => {
                let importance = match plan.output.writer {
                    Writer::Gguf {
                        importance: true, ..
                    } => Some(self.importance_matrix(config, source)?),
                    _ => None,
                };
                let distilled = distilled_dir(self.store);
                if plan
                    .distill
                    .as_ref()
                    .is_some_and(|d| d.output_dtype.is_some())
                    && distilled.is_dir()
                {
                    // The trainer wrote the student as the output is to be: link, not rewrite.
                    link_dir(&distilled, &plan.output.path, plan.output.overwrite)?;
                } else {
                    let now = Current {
                        config,
                        source,
                        store: plan.layerwise.as_ref().map(|_| self.store),
                        importance: importance.as_deref(),
                    };
                    let written = write_output(plan, &plan.model, &now, self.progress)?;
                    outcome.writer_notes = written.notes;
                    outcome.written_tensors = written.tensors;
                }
                self.store.save_json(
                    OUTPUT_RECORD,
                    &json!({"path": plan.output.path, "notes": outcome.writer_notes}),
                )?;
            }
        }
        outcome.write_seconds = t.elapsed().as_secs_f64();
        Ok(())
    }

    /// The eval passes of the written output, reloaded from disk.
    pub fn evals_of_output(&mut self, outcome: &mut Outcome) -> Result<()> {
        let plan = self.plan;
        if !plan.evals.iter().any(|e| e.of_output) {
            return Ok(());
        }
        let written = microllm_io::open(&plan.output.path.to_string_lossy())?;
        let candidate = load_for_eval(&written.config, written.tensors.as_ref())?;
        for e in plan.evals.iter().filter(|e| e.of_output) {
            let rec = self.eval_step(&candidate, (e.pass, e.windows), true)?;
            outcome.evals.push(rec);
        }
        Ok(())
    }

    /// The GGUF writer's importance matrix: the one the plan read from the recipe's file, or
    /// one measured on the calibration windows (and saved where the recipe asks).
    fn importance_matrix(
        &self,
        config: &ModelConfig,
        source: &dyn TensorSource,
    ) -> Result<std::borrow::Cow<'r, ImportanceMatrix>> {
        let plan = self.plan;
        if let Some(matrix) = &plan.output.importance_read {
            return Ok(std::borrow::Cow::Borrowed(matrix));
        }
        let matrix = measure_imatrix(config, source, self.windows, self.progress)?;
        if let Some(path) = &plan.output.save_importance {
            let dataset = plan
                .recipe
                .calibration
                .as_ref()
                .map(|c| c.data.to_string_lossy().into_owned())
                .unwrap_or_default();
            let chunk = self.windows.first().map_or(0, Vec::len);
            matrix.write_gguf(path, config.family, &dataset, chunk, true)?;
        }
        Ok(std::borrow::Cow::Owned(matrix))
    }

    /// One eval pass: from the work directory when a killed run finished it, else measured.
    fn eval_step(
        &mut self,
        candidate: &Decoder,
        (pass, windows): (usize, usize),
        of_output: bool,
    ) -> Result<(usize, EvalRecord, bool)> {
        let name = format!("eval-{pass:03}.json");
        if let Some(v) = self.store.load_json(&name)? {
            let rec: EvalRecord = serde_json::from_value(v)
                .map_err(|e| Error::format(self.store.dir().join(&name), e.to_string()))?;
            return Ok((pass, rec, true));
        }
        let tokens = self
            .eval_tokens
            .expect("validated: eval passes have evaluation data");
        let model = &self.plan.model;
        if self.base.is_none() {
            self.base = Some(load_for_eval(&model.config, model.tensors.as_ref())?);
        }
        let original = self.base.as_ref().expect("loaded above");
        let opts = PerplexityOptions {
            ctx: tokens.ctx,
            max_windows: Some(windows),
            protocol: Default::default(),
        };
        let c: Comparison = compare(original, candidate, &tokens.tokens, opts, self.progress)?;
        let mut rec = EvalRecord::new(tokens.file.clone(), of_output, c);
        rec.tasks = tasks::score_tasks(
            self.plan,
            original,
            &mut self.base_tasks,
            candidate,
            self.progress,
        )?;
        self.store.save_json(&name, &json!(rec))?;
        Ok((pass, rec, false))
    }
}

/// How the layerwise sweep's calibration forward runs its products (see
/// [`CalibrationCompute`]).
fn calibration_packing(plan: &Plan) -> Option<microllm_models::Activations> {
    let compute = plan.recipe.calibration.as_ref().map(|c| c.compute);
    match compute.unwrap_or_default() {
        CalibrationCompute::Int8 => Some(microllm_models::Activations::Int8),
        CalibrationCompute::F32 => None,
    }
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
