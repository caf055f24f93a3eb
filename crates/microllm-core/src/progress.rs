//! How long-running library code reports progress without printing.
//!
//! Libraries never write to the terminal; the binary implements [`Progress`] with progress bars
//! and tests use [`NoProgress`].

/// A sink for progress on one long task, counted in `unit`s (tokens, tensors, blocks...).
pub trait Progress: Send + Sync {
    /// A task of `total` units starts.
    fn begin(&self, _task: &str, _total: u64, _unit: &str) {}
    /// `n` more units are done.
    fn advance(&self, _n: u64) {}
    /// A short status of the running task (a training loss, a learning rate...).
    fn status(&self, _text: &str) {}
    /// The task is over.
    fn finish(&self) {}
}

/// A [`Progress`] that ignores everything.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;

impl Progress for NoProgress {}
