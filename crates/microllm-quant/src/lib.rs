//! Quantization algorithms on tensors: round-to-nearest (RTN) and GPTQ, on a CPU.
//!
//! Everything here is pure computation on in-memory weights and activations, so it is tested on
//! synthetic tensors; reading checkpoints, streaming blocks and packing output formats live
//! elsewhere (DESIGN.md: algorithms depend on core + candle only).
//!
//! * [`QuantScheme`] — bits, grouping, symmetry, validated against a weight's shape.
//! * [`QuantizedWeight`] — the one canonical result (codes, per-group scales and integer zero
//!   points, GPTQ-style `g_idx`, act-order permutation) from which every writer packs.
//! * [`rtn_quantize`] — round-to-nearest, the calibration-free baseline.
//! * [`search_scales`] + [`search_clip`] — AWQ's activation-aware scales and clipping.
//! * [`HessianAccumulator`] + [`gptq_quantize`] — GPTQ (Frantar et al., 2022) with
//!   dampening, lazy block updates, act-order and (static) groups.
//!
//! ```
//! use microllm_quant::{GptqOptions, HessianAccumulator, QuantScheme, gptq_quantize, rtn_quantize};
//!
//! let scheme = QuantScheme::new(4, Some(2), false)?;
//! let w = [0.3f32, -0.7, 1.2, 0.05, -0.4, 0.9, 0.0, 0.25]; // [2, 4]
//! let rtn = rtn_quantize(&w, [2, 4], scheme)?;
//! assert_eq!(rtn.scales.len(), 2 * 2);
//!
//! let mut h = HessianAccumulator::new(4);
//! h.add_batch_slice(&[1.0, 0.9, 0.1, 0.0, 0.5, 0.4, -1.0, 0.2, -0.3, -0.2, 0.3, 1.0])?;
//! let (q, stats) = gptq_quantize(&w, [2, 4], h.hessian(), scheme, GptqOptions::default())?;
//! assert_eq!(q.dequantize_vec().len(), 8);
//! assert!(stats.loss.is_finite());
//! # Ok::<(), microllm_core::Error>(())
//! ```

// Libraries report through return values and `Progress`, never by printing: the binary
// owns the terminal (unit tests may print).
#![cfg_attr(not(test), deny(clippy::print_stdout, clippy::print_stderr))]

mod awq;
mod diagonal;
mod factor;
mod gptq;
mod hessian;
mod hessian_tiles;
pub mod obs;
mod rtn;
mod scheme;
mod weight;

#[cfg(test)]
mod gptq_tests;
#[cfg(test)]
mod obs_tests;
#[cfg(test)]
mod testutil;

pub use awq::{
    AwqOptions, ChannelMagnitude, ClipOutcome, GroupWeight, ScaleSearch, scale_hessian,
    search_clip, search_scales,
};
pub use diagonal::DiagonalAccumulator;
pub use factor::{MAX_DAMP_RETRIES, ObsFactor};
pub use gptq::{
    GptqOptions, GptqStats, ObsResult, ObsTarget, ObsTimings, gptq_quantize, gptq_quantize_tensor,
    obs_compress, obs_compress_factored,
};
pub use hessian::{HessianAccumulator, HessianKernel};
pub use hessian_tiles::bf16_faster_than_f32;
pub use obs::PruneRule;
pub use rtn::{rtn_quantize, rtn_quantize_tensor};
pub use scheme::{ClipSearch, Grid, QuantScheme};
pub use weight::QuantizedWeight;
