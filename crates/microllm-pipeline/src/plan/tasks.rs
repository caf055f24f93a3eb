//! The evaluation's multiple-choice tasks: names checked and item files read when the recipe
//! is validated, so a misspelt task or a malformed line is refused before any work.

use std::path::PathBuf;

use microllm_eval::tasks::{Item, Task, read_items};

use super::steps::err;
use crate::recipe::{Recipe, RecipeResult};

/// A task every eval pass scores, with its items.
#[derive(Debug, Clone)]
pub struct TaskStep {
    pub task: Task,
    pub data: PathBuf,
    pub items: Vec<Item>,
    /// Few-shot examples (empty: the other items serve).
    pub fewshot_items: Vec<Item>,
    pub limit: Option<usize>,
    pub fewshot: usize,
}

/// Reads `evaluation.tasks`; with `data_optional` (a dry run before data is chosen) files that
/// do not exist yet are left unread.
pub(super) fn task_steps(recipe: &Recipe, data_optional: bool) -> RecipeResult<Vec<TaskStep>> {
    let Some(evaluation) = &recipe.evaluation else {
        return Ok(Vec::new());
    };
    let mut steps = Vec::new();
    for (i, t) in evaluation.tasks.iter().enumerate() {
        let at = |key: &str| format!("evaluation.tasks[{i}].{key}");
        let task: Task = t
            .task
            .parse()
            .map_err(|e| err(at("task"), format!("{e}")))?;
        if steps.iter().any(|s: &TaskStep| s.task == task) {
            return Err(err(at("task"), format!("{task} is listed twice")));
        }
        let read = |key: &str, path: &PathBuf| {
            if data_optional && !path.exists() {
                return Ok(Vec::new());
            }
            read_items(task, path).map_err(|e| err(at(key), e.to_string()))
        };
        let items = read("data", &t.data)?;
        let fewshot_items = match &t.fewshot_data {
            Some(path) => read("fewshot_data", path)?,
            None => Vec::new(),
        };
        if t.limit == Some(0) {
            return Err(err(at("limit"), "at least 1 item is needed"));
        }
        if t.fewshot_data.is_some() && t.fewshot == 0 {
            return Err(err(
                at("fewshot_data"),
                "few-shot examples are given but `fewshot` is 0: set `fewshot: K`",
            ));
        }
        steps.push(TaskStep {
            task,
            data: t.data.clone(),
            items,
            fewshot_items,
            limit: t.limit,
            fewshot: t.fewshot,
        });
    }
    Ok(steps)
}
