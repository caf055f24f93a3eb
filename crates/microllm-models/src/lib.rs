//! One generic decoder for every supported family.
//!
//! The families differ only in data ([`ModelConfig`](microllm_core::ModelConfig)): which norm,
//! sequential or parallel blocks, gated or plain MLP, biases, rotary fraction, sliding window.
//! Blocks are public and self-contained: a [`Block`] can be loaded, run and dropped on its own
//! (the streaming compression passes need exactly that), and its forward calls a
//! [`LinearTap`] with the input of every linear layer (GPTQ Hessians, Wanda norms).
//!
//! candle-transformers keeps its blocks private and has one model per family; this crate
//! exists so that calibration can see inside blocks and a new family is a config row.

// Libraries report through return values and `Progress`, never by printing: the binary
// owns the terminal (unit tests may print).
#![cfg_attr(not(test), deny(clippy::print_stdout, clippy::print_stderr))]

mod attention;
mod block;
mod decoder;
pub mod elementwise;
mod grouped;
mod layers;
pub mod packed;
mod rope;
mod sgemm;
mod softmax;
mod streamed;

pub use attention::{KvCache, LayerKvCache, Positions, RopeTables};
pub use block::{Block, LinearTap, NoTap};
pub use decoder::{Decoder, scale_embeddings};
pub use layers::{Linear, LinearWeight, Mlp, Norm, SharedInput};
pub use packed::{Activations, PackedWeight};
pub use rope::{Rope, cos_sin};
pub use softmax::CausalSoftmax;
pub use streamed::StreamedDecoder;
