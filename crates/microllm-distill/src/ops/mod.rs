//! Differentiable kernels of the student's forward pass.
//!
//! candle's autograd covers matrix products, element-wise arithmetic, reshapes and
//! reductions, but candle-nn's fused kernels (`rms_norm`, `softmax_last_dim`, `rope`) have no
//! backward, and the inference decoder runs SwiGLU and the causal softmax in place, where
//! autograd cannot see them. These nodes compute the same things (tests compare them with
//! the inference kernels or a textbook composition) with their backward passes written out,
//! f32 for training and f64 for the gradient checks against finite differences. Each is one
//! autograd node where candle would build several: fewer gradient buffers to allocate, zero
//! and accumulate is most of what the fusions buy.

mod attention;
#[cfg(test)]
pub(crate) mod gradcheck;
mod heads;
mod linear;
mod node;
mod rms_norm;
mod softmax;
mod swiglu;

pub use attention::Attention;
pub use heads::RopeTables;
pub use linear::linear;
pub use rms_norm::RmsNorm;
pub use swiglu::SwiGlu;
