//! The evaluation's multiple-choice tasks, scored on the original model (once per run) and on
//! the model an eval pass measures.

use microllm_core::{Progress, Result};
use microllm_eval::tasks::{TaskOptions, TaskProtocol, TaskResult, score_task};
use microllm_models::Decoder;

use crate::plan::Plan;
use crate::report::TaskRecord;

/// The original model's scores, kept for every eval pass of the run.
pub(super) type BaseScores = Option<Vec<TaskResult>>;

/// Scores `plan.tasks` on `candidate` beside the original's scores (measured on `original`
/// the first time).
pub(super) fn score_tasks(
    plan: &Plan,
    original: &Decoder,
    base: &mut BaseScores,
    candidate: &Decoder,
    progress: &dyn Progress,
) -> Result<Vec<TaskRecord>> {
    if plan.tasks.is_empty() {
        return Ok(Vec::new());
    }
    // One tokenizer for both models: the items must become the same tokens.
    let tokenizer = plan.model.require_tokenizer()?;
    let encode = |text: &str, special: bool| tokenizer.encode(text, special);
    let score = |model: &Decoder, step: &crate::plan::TaskStep| {
        let opts = TaskOptions {
            task: step.task,
            protocol: TaskProtocol::LmEval,
            limit: step.limit,
            fewshot: step.fewshot,
        };
        score_task(
            model,
            &encode,
            &step.items,
            &step.fewshot_items,
            opts,
            progress,
        )
    };
    if base.is_none() {
        *base = Some(
            plan.tasks
                .iter()
                .map(|step| score(original, step))
                .collect::<Result<_>>()?,
        );
    }
    let base = base.as_ref().expect("scored above");
    plan.tasks
        .iter()
        .zip(base)
        .map(|(step, base)| {
            let compressed = score(candidate, step)?;
            Ok(TaskRecord::new(step.data.clone(), base, &compressed))
        })
        .collect()
}
