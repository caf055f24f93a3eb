//! Why a distillation run stopped.
//!
//! Most failures are the shared [`microllm_core::Error`] (a file, a key, a tensor, a
//! mismatch between store and student). A loss or gradient that stops being finite is its own
//! case: the run is stopped before the bad update, the last good state is checkpointed, and
//! the caller learns where, so it can say how to resume.

use std::path::PathBuf;

/// A failed run.
#[derive(Debug, thiserror::Error)]
pub enum DistillError {
    #[error(transparent)]
    Core(#[from] microllm_core::Error),
    /// The loss or the gradient norm was NaN or infinite at `step`; nothing of that step was
    /// applied.
    #[error(
        "{what} is not finite at step {step}: training stopped before applying it; the last \
         good state (after step {}) is checkpointed in {}",
        step - 1,
        checkpoint.display()
    )]
    NonFinite {
        step: u64,
        what: String,
        checkpoint: PathBuf,
    },
}

impl From<candle_core::Error> for DistillError {
    fn from(e: candle_core::Error) -> Self {
        DistillError::Core(e.into())
    }
}

/// Result of the training entry points.
pub type DistillResult<T> = std::result::Result<T, DistillError>;
