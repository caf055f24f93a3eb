//! Compression passes that tie models and algorithms together.
//!
//! The layerwise engine (DESIGN.md, "How data flows") streams a model one decoder block at a
//! time: the calibration hidden states enter block i, observers on its linear layers collect
//! what the algorithms need (GPTQ's Hessians), the block is compressed, and the *compressed*
//! block produces block i+1's inputs, so errors propagate as in GPTQ's sequential mode. This
//! crate holds that engine, piece by piece; [`quantize_block`] is the per-block step.

mod block_quant;

pub use block_quant::{BlockMethod, LinearRecord, SEQUENTIAL_GROUPS, quantize_block};
