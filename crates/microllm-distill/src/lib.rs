//! Knowledge distillation on a CPU.
//!
//! Crate map:
//! - [`ops`]: differentiable kernels (RMSNorm, RoPE head split, causal softmax, SwiGLU) with
//!   their backward passes, so the student trains through candle's autograd.

pub mod ops;
mod real;

pub use real::Real;
pub mod loss;
pub mod student;
