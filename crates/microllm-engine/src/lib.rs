//! The layerwise engine: a model streamed one decoder block at a time.
//!
//! DESIGN.md, "How data flows": the calibration hidden states enter block i, observers on its
//! linear layers collect what the algorithms need (GPTQ's Hessians, AWQ's and SmoothQuant's
//! activation statistics, Wanda's norms), the block is compressed, and the *compressed* block
//! produces block i+1's inputs, so errors propagate as in GPTQ's sequential mode. Only one
//! block's weights and the calibration activations are in memory at a time, and every finished
//! block is stored, so a killed run resumes.
//!
//! This crate sits below both the recipe road (`microllm-pipeline`, which plans passes and
//! calls in here) and the trainer (`microllm-distill`, which cuts students out of teachers
//! with [`structured`]'s importance measures), so neither has to know the other's layer.
//!
//! * [`quantize_block`] / [`compress_block`] — the per-block step (true-sequential GPTQ or
//!   RTN, pruning, AWQ's or SmoothQuant's scales folded first when asked).
//! * [`run_layerwise`] / [`run_compress`] — the streaming loop, resumable through a
//!   [`BlockStore`].
//! * [`output`] — the stored blocks as a tensor source or as exact GGUF blocks.
//! * [`packed`] — the stored blocks as GPTQ / compressed-tensors linears.
//! * [`structured`] — importance of channels, heads and blocks for structured pruning.
//! * [`measure_imatrix`] — llama.cpp's importance matrix, for weighted k-quants.
//! * [`owl_schedule`] — OWL's per-block sparsities.

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
pub use store::{BlockStore, StoredBlock, work_dir};
pub use structured::{ImportanceJob, ImportanceMetric, measure_importance};
