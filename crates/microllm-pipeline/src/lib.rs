//! Compression pipelines: recipes, plans, runs, reports, and the engine underneath.
//!
//! A run goes YAML -> [`recipe::RecipeDoc`] (the document, with the line of every key) ->
//! [`recipe::Recipe`] (typed, unknown keys refused) -> [`plan::Plan`] (validated against the
//! model: shapes, data, formats, fallbacks; `--dry-run` stops here) -> [`run::run`] ->
//! [`report::CompressionReport`] (JSON, Markdown, HTML, gates, JUnit). The single-purpose
//! commands (`microllm quantize`, `microllm prune`) build a one-pass recipe and take the same
//! road.
//!
//! The layerwise engine (DESIGN.md, "How data flows") streams a model one decoder block at a
//! time: the calibration hidden states enter block i, observers on its linear layers collect
//! what the algorithms need (GPTQ's Hessians), the block is compressed, and the *compressed*
//! block produces block i+1's inputs, so errors propagate as in GPTQ's sequential mode.
//!
//! * [`quantize_block`] — the per-block step (true-sequential GPTQ or RTN, AWQ's scales
//!   folded first when asked).
//! * [`run_layerwise`] — the streaming loop, resumable through a [`BlockStore`].
//! * [`output`] — the stored blocks as a tensor source or as exact GGUF blocks.
//! * [`packed`] — the stored blocks as GPTQ / compressed-tensors linears.
//! * [`structured`] — importance of channels, heads and blocks for structured pruning.
//! * [`measure_imatrix`] — llama.cpp's importance matrix, for weighted k-quants.
//! * [`owl_schedule`] — OWL's per-block sparsities.
//! * [`recipe`], [`plan`], [`run`], [`report`] — the road above.

// Libraries report through return values and `Progress`, never by printing: the binary
// owns the terminal (unit tests may print).
#![cfg_attr(not(test), deny(clippy::print_stdout, clippy::print_stderr))]

mod block_awq;
mod block_quant;
mod block_smooth;
mod calibration;
mod imatrix;
mod layerwise;
mod linear_step;
pub mod output;
pub mod packed;
pub mod plan;
pub mod recipe;
pub mod report;
pub mod run;
mod schedule;
mod store;
pub mod structured;

pub use block_awq::{AwqRecord, Producer, ScaleGroup, fold_scales, scale_groups};
pub use block_quant::{
    BlockMethod, BlockOutput, BlockPhases, BlockResult, BlockSpec, LinearRecord, SEQUENTIAL_GROUPS,
    compress_block, quantize_block,
};
pub use imatrix::measure_imatrix;
pub use layerwise::{CompressJob, LayerwiseJob, LayerwiseSummary, run_compress, run_layerwise};
pub use linear_step::PruneSpec;
pub use schedule::{OwlSchedule, owl_schedule};
pub use store::{BlockStore, StoredBlock};
pub use structured::{ImportanceJob, ImportanceMetric, measure_importance};
