//! Measuring models: token-level perplexity, and a compressed model against its original on
//! the same tokens (KL divergence, top-1 agreement, speed of both).
//!
//! The perplexity protocol is the one the reference figures in `shared/assets` use, so numbers
//! are comparable with transformers: the text is tokenized once, cut into consecutive
//! non-overlapping windows of `ctx` tokens (the last partial window is dropped), each window is
//! run independently, and every position after the first in a window is scored (the first has
//! no context). Perplexity is `exp(mean NLL)` over all scored tokens. Note that llama.cpp's
//! `llama-perplexity` scores only the second half of each window, so its figures are lower and
//! not comparable unless [`Protocol::LlamaCpp`] is used. A base model's distributions can be
//! stored once ([`KlBaseWriter`]) and another model measured against them later
//! ([`KlAccumulator`]), as llama-perplexity's `--kl-divergence-base` does. Task accuracy
//! (HellaSwag, ARC, PIQA, WinoGrande, MMLU) is scored in [`tasks`] as the harness and
//! llama.cpp score it.

// Libraries report through return values and `Progress`, never by printing: the binary
// owns the terminal (unit tests may print).
#![cfg_attr(not(test), deny(clippy::print_stdout, clippy::print_stderr))]

mod compare;
mod kl_base;
mod perplexity;
pub mod tasks;

pub use compare::{Comparison, compare};
pub use kl_base::{KlAccumulator, KlBaseReader, KlBaseShape, KlBaseWriter, KlStats};

pub use perplexity::{
    HEAD_ROWS, PerplexityOptions, PerplexityResult, Protocol, ScoredRows, perplexity,
    perplexity_with, window_nll, window_nll_from,
};
