//! Recipes: YAML -> raw serde types -> (validated by [`crate::plan`]) a Plan -> the Runner.
//!
//! A [`RecipeDoc`] is a recipe document before it is typed: the YAML as a value, the line of
//! every path, and the file it came from. Command-line overrides (`--set`, `--matrix`) edit it;
//! [`RecipeDoc::parse`] then builds the typed [`Recipe`], and every error on the way names the
//! YAML path and line (see [`error`]).
//!
//! Relative paths written in a recipe file (`model`, `calibration.data`, `evaluation.data`,
//! `evaluation.tasks[].data` and `fewshot_data`, `output.path`, `report.path`, a distill
//! pass's `data` and `logits`, and its `teacher` where a file is there) are relative to that
//! file, so a recipe means the same from any working directory; values given on the command
//! line are relative to where it runs.

mod distill;
pub mod error;
pub mod gate;
mod overrides;
mod schema;
pub mod yaml;

use std::path::{Path, PathBuf};

use serde_json::Value;

pub use error::{Origin, RecipeError, RecipeResult};
pub use gate::{Gate, GateOp};
pub use overrides::Variant;
pub use schema::*;
use yaml::LineIndex;

/// A recipe document: the YAML value, where each path is in the file, and the file.
#[derive(Debug, Clone)]
pub struct RecipeDoc {
    pub value: Value,
    lines: LineIndex,
    pub file: Option<PathBuf>,
}

/// Keys whose values are paths, resolved against the recipe file's directory.
const PATH_KEYS: [(&str, &str); 4] = [
    ("calibration", "data"),
    ("evaluation", "data"),
    ("output", "path"),
    ("report", "path"),
];

/// Keys of a `distill` pass whose values are paths.
const DISTILL_PATH_KEYS: [&str; 2] = ["data", "logits"];
/// Path keys of a quantize pass.
const QUANTIZE_PATH_KEYS: [&str; 2] = ["importance_matrix_file", "save_importance_matrix"];

impl RecipeDoc {
    /// Reads a recipe file.
    pub fn from_file(path: &Path) -> RecipeResult<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| RecipeError {
            file: Some(path.to_path_buf()),
            path: String::new(),
            origin: Origin::Unknown,
            msg: format!("cannot read the recipe: {e}"),
            near: None,
        })?;
        let mut doc = Self::from_text(&text).map_err(|mut e| {
            e.file = Some(path.to_path_buf());
            e
        })?;
        doc.file = Some(path.to_path_buf());
        doc.resolve_paths(path.parent().unwrap_or(Path::new("")));
        Ok(doc)
    }

    /// Reads recipe text (paths stay as written).
    pub fn from_text(text: &str) -> RecipeResult<Self> {
        let (value, lines) = yaml::parse(text)?;
        if !value.is_object() {
            return Err(lines.locate(RecipeError::at(
                "",
                "a recipe is a mapping of keys (model, passes, output, ...)",
            )));
        }
        Ok(Self {
            value,
            lines,
            file: None,
        })
    }

    /// A document built in code (a single-purpose command's flags): no lines.
    pub fn from_recipe(recipe: &Recipe) -> Self {
        Self {
            value: serde_json::to_value(recipe).expect("recipes serialize"),
            lines: LineIndex::default(),
            file: None,
        }
    }

    fn resolve_paths(&mut self, dir: &Path) {
        let join = |v: &mut Value, only_if_exists: bool| {
            // An empty path stays empty (and is refused as such), not the recipe's directory.
            if let Some(s) = v.as_str().filter(|s| !s.is_empty()) {
                let p = Path::new(s);
                if p.is_relative() {
                    let joined = dir.join(p);
                    if !only_if_exists || joined.exists() {
                        *v = Value::String(joined.to_string_lossy().into_owned());
                    }
                }
            }
        };
        // A model is a path only if it exists there; otherwise it may be a hub repo id.
        if let Some(m) = self.value.get_mut("model") {
            join(m, true);
        }
        for (section, key) in PATH_KEYS {
            if let Some(v) = self.value.get_mut(section).and_then(|s| s.get_mut(key)) {
                join(v, false);
            }
        }
        let tasks = self
            .value
            .get_mut("evaluation")
            .and_then(|e| e.get_mut("tasks"))
            .and_then(Value::as_array_mut);
        for task in tasks.into_iter().flatten() {
            for key in ["data", "fewshot_data"] {
                if let Some(v) = task.get_mut(key) {
                    join(v, false);
                }
            }
        }
        let passes = self.value.get_mut("passes").and_then(Value::as_array_mut);
        for pass in passes.into_iter().flatten() {
            for (stage, keys) in [
                ("distill", &DISTILL_PATH_KEYS[..]),
                ("quantize", &QUANTIZE_PATH_KEYS[..]),
            ] {
                if let Some(d) = pass.get_mut(stage).and_then(Value::as_object_mut) {
                    for key in keys {
                        if let Some(v) = d.get_mut(*key) {
                            join(v, false);
                        }
                    }
                    // A teacher, like the model, is a path only if it exists there.
                    if let Some(v) = d.get_mut("teacher") {
                        join(v, true);
                    }
                }
            }
        }
    }

    /// Locates an error at a path of this document (line, file).
    pub fn locate(&self, err: RecipeError) -> RecipeError {
        let mut err = self.lines.locate(err);
        if err.file.is_none() {
            err.file.clone_from(&self.file);
        }
        err
    }

    /// The typed recipe.
    pub fn parse(&self) -> RecipeResult<Recipe> {
        let recipe: Recipe = serde_path_to_error::deserialize(&self.value).map_err(|e| {
            let mut path = e.path().to_string();
            if path == "." {
                path.clear();
            }
            let msg = e.inner().to_string();
            // An unknown key is reported at its parent; point at the key itself.
            if let Some(key) = msg
                .strip_prefix("unknown field `")
                .and_then(|r| r.split('`').next())
                && !path.ends_with(key)
            {
                path = yaml::child(&path, key);
            }
            self.locate(RecipeError::at(path, msg))
        })?;
        if recipe.version != RECIPE_VERSION {
            return Err(self.locate(RecipeError::at(
                "version",
                format!(
                    "recipe version {} is not one this microllm reads (it reads {RECIPE_VERSION})",
                    recipe.version
                ),
            )));
        }
        Ok(recipe)
    }

    /// The recipe as YAML (what `--print-recipe` prints).
    pub fn to_yaml(&self) -> String {
        yaml::to_yaml_ordered(&self.value, &overrides::TOP_LEVEL)
    }
}
