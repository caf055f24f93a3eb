//! Compression passes that tie models and algorithms together.
//!
//! The layerwise engine (DESIGN.md, "How data flows") streams a model one decoder block at a
//! time: the calibration hidden states enter block i, observers on its linear layers collect
//! what the algorithms need (GPTQ's Hessians), the block is compressed, and the *compressed*
//! block produces block i+1's inputs, so errors propagate as in GPTQ's sequential mode.
//!
//! * [`quantize_block`] — the per-block step (true-sequential GPTQ or RTN).
//! * [`run_layerwise`] — the streaming loop, resumable through a [`BlockStore`].
//! * [`output`] — the stored blocks as a tensor source or as exact GGUF blocks.

mod block_quant;
mod layerwise;
pub mod output;
mod store;

pub use block_quant::{BlockMethod, BlockResult, LinearRecord, SEQUENTIAL_GROUPS, quantize_block};
pub use layerwise::{LayerwiseJob, LayerwiseSummary, run_layerwise};
pub use store::{BlockStore, StoredBlock};
