//! Vocabulary shared by every microllm crate.
//!
//! This crate holds the types that the readers (`microllm-io`), the architectures
//! (`microllm-models`) and later the algorithms all speak: the architecture-neutral
//! [`ModelConfig`], canonical tensor naming ([`LinearKind`], [`names`]), the lazy
//! [`TensorSource`] a checkpoint hands out, the shared [`Error`] and the [`Progress`] sink
//! through which libraries report long work without printing.
//!
//! It does no I/O of its own: everything here can be built and tested from plain values.
//! [`alloc::HugePageAlloc`], the global allocator the binary and the timing examples use, is
//! here because every crate's large buffers go through it.

// Libraries report through return values and `Progress`, never by printing: the binary
// owns the terminal (unit tests may print).
#![cfg_attr(not(test), deny(clippy::print_stdout, clippy::print_stderr))]

pub mod alloc;
mod architecture;
mod config;
mod error;
pub mod fp8;
pub mod le;
pub mod names;
mod packed;
mod progress;
pub mod rng;
mod source;

/// The bit widths of quantized codes microllm writes and reads (GPTQ, compressed-tensors,
/// its own schemes): one code per `u8`, and below 2 bits no grid is worth storing.
pub const CODE_BITS: std::ops::RangeInclusive<u8> = 2..=8;

pub use architecture::{check_tensors, expected_tensors};
pub use config::{
    Activation, ActivationQuant, BlockLayout, Family, FusedLinear, MlpKind, ModelConfig, NormKind,
    RopeScaling,
};
pub use error::{Error, Result};
pub use fp8::CodeType;
pub use names::LinearKind;
pub use packed::{BlockType, IQ4_LEVELS, PackedMatrix, iq4_xs_sub_scale};
pub use progress::{NoProgress, Progress};
pub use source::{MemorySource, TensorInfo, TensorSource, first_non_finite};
