//! Recipe errors: every one names where in the recipe it is.
//!
//! A person fixing a recipe needs the key (`passes[1].quantize.group_size`), the line of the
//! file it is on, and what is wrong with it, in that order. Values that came from the command
//! line (`--set`, `--matrix`, or a single-purpose command's flags) have no line; they say so.

use std::fmt;
use std::path::PathBuf;

/// Where a value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// Line `n` (1-based) of the recipe file.
    Line(usize),
    /// A `--set` or `--matrix` override.
    Override,
    /// Not located (a default, or a recipe built in code).
    Unknown,
}

/// A recipe that cannot run, with the YAML path and line of the offending value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipeError {
    /// The recipe file, when the recipe came from one.
    pub file: Option<PathBuf>,
    /// The YAML path of the value (`passes[1].quantize.group_size`); empty for the whole
    /// document.
    pub path: String,
    pub origin: Origin,
    pub msg: String,
    /// A path to take the line from when `path` itself is not in the file (a missing section
    /// reported at the pass that needs it).
    pub near: Option<String>,
}

impl RecipeError {
    /// An error at `path`, not yet located (the loader fills in the line).
    pub fn at(path: impl Into<String>, msg: impl Into<String>) -> Self {
        Self {
            file: None,
            path: path.into(),
            origin: Origin::Unknown,
            msg: msg.into(),
            near: None,
        }
    }
}

impl fmt::Display for RecipeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(file) = &self.file {
            write!(f, "{}: ", file.display())?;
        }
        let path = if self.path.is_empty() {
            "recipe"
        } else {
            &self.path
        };
        match self.origin {
            Origin::Line(n) => write!(f, "{path} (line {n}): {}", self.msg),
            Origin::Override => write!(f, "{path} (from the command line): {}", self.msg),
            Origin::Unknown => write!(f, "{path}: {}", self.msg),
        }
    }
}

impl std::error::Error for RecipeError {}

/// Result of recipe loading and validation.
pub type RecipeResult<T> = std::result::Result<T, RecipeError>;
