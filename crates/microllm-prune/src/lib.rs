//! Pruning algorithms: which weights, channels, heads or blocks to remove, and how the rest
//! compensates.
//!
//! Unstructured and N:M pruning zero individual weights inside a linear layer's matrix; the
//! layer keeps its shape, so the savings come from a sparse format or from quantizing the
//! zeros away. Structured pruning removes whole MLP channels, attention heads or decoder
//! blocks, producing a smaller dense model that every runtime loads as is.
//!
//! Like `microllm-quant`, this crate works on plain tensors and calibration statistics; the
//! layerwise engine in `microllm-pipeline` feeds it.

// Libraries report through return values and `Progress`, never by printing: the binary
// owns the terminal (unit tests may print).
#![cfg_attr(not(test), deny(clippy::print_stdout, clippy::print_stderr))]

mod schedule;
pub mod structured;
mod unstructured;

pub use schedule::{Schedule, outlier_ratio, owl_sparsities};
pub use unstructured::{
    GlobalThreshold, PruneMethod, Ranking, SparsityPattern, magnitude_scores, mask_from_scores,
    wanda_scores,
};
