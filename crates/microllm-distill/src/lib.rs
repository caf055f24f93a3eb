//! Knowledge distillation on a CPU: a student learns to match a teacher.
//!
//! - [`student`]: the student, a decoder whose weights are autograd variables, computing the
//!   inference decoder's function from differentiable [`ops`] (linear, attention with RoPE,
//!   RMSNorm, SwiGLU, each with its backward);
//! - [`loss`]: forward/reverse KL and JSD with temperature, cross-entropy, fused with the
//!   output head; hidden-state MSE/cosine with a learned projection;
//! - [`store`]: the offline teacher-logit store (top-k + rest mass, sharded, with a manifest);
//! - [`train`]: AdamW with warmup + cosine, clipping, accumulation, evaluation, checkpoints
//!   that resume bit for bit;
//! - [`models`]: short names for well-known models;
//! - [`report`]: the records of steps and evaluations; [`training_data`]: data files as
//!   tokens.
//!
//! A recipe's `distill` pass (`microllm-pipeline`, the layer above) calls the trainer, with
//! the student the passes before it made (a structurally pruned teacher, say); `microllm
//! distill` runs such a pass.
//!
//! The library never prints: long work reports through [`microllm_core::Progress`].

// Libraries report through return values and `Progress`, never by printing: the binary
// owns the terminal (unit tests may print).
#![cfg_attr(not(test), deny(clippy::print_stdout, clippy::print_stderr))]

mod error;
pub mod fingerprint;
pub mod loss;
pub mod models;
pub mod ops;
mod real;
pub mod report;
pub mod store;
pub mod student;
pub mod train;
pub mod training_data;

pub use error::{DistillError, DistillResult};
pub use real::Real;
