//! `microllm prune`: remove weights (unstructured, N:M) or whole structures (MLP channels,
//! attention heads, decoder blocks), with a report.
//!
//! Unstructured and N:M pruning run through the same layerwise engine as `quantize` (one
//! decoder block in memory, calibration activations propagated through the pruned blocks) and
//! can quantize in the same pass. Structured pruning (`--structured`) measures importance on
//! calibration data, then writes a genuinely smaller model with a rewritten config.

mod structured;
mod unstructured;

use std::path::PathBuf;

use anyhow::Result;
use microllm_core::ModelConfig;
use microllm_io::gguf::GgufTypes;
use microllm_io::write::OutDtype;

use crate::commands::convert::{Dtype, GgufType};

/// Prune a model: magnitude, Wanda or SparseGPT (unstructured or N:M), or structured.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Model: a Hugging Face directory, a .gguf file, or a hub repo id.
    #[arg(long, short)]
    pub model: String,
    /// Output directory (safetensors) or file (.gguf); must not exist unless --force.
    #[arg(long, short)]
    pub out: PathBuf,
    /// Calibration data: a UTF-8 text file, or a .safetensors file with int64 `input_ids`.
    #[arg(long)]
    pub calib: Option<PathBuf>,
    /// Calibration windows.
    #[arg(long, default_value_t = 128)]
    pub samples: usize,
    /// Tokens per calibration window.
    #[arg(long, default_value_t = 512)]
    pub seqlen: usize,
    /// Seed of the calibration window draw.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Use fewer windows than --samples when the data is too short (recorded in the report)
    /// instead of failing.
    #[arg(long)]
    pub allow_short_calib: bool,
    /// Print the plan (resulting shapes, parameters, estimated size) and stop.
    #[arg(long)]
    pub dry_run: bool,
    /// Replace --out if it exists.
    #[arg(long)]
    pub force: bool,
    /// Measure perplexity on this text before and after, with the output reloaded.
    #[arg(long)]
    pub eval: Option<PathBuf>,
    /// Tokens per evaluation window.
    #[arg(long, default_value_t = 512)]
    pub eval_ctx: usize,
    /// Evaluation windows (the first N of the text).
    #[arg(long, default_value_t = 24)]
    pub eval_windows: usize,
    /// Output format [default: gguf when --out ends in .gguf, else safetensors].
    #[arg(long, value_enum)]
    pub format: Option<FormatArg>,
    /// Weight dtype of safetensors output [default: the source's f32/f16/bf16, else f16].
    #[arg(long, value_enum)]
    pub dtype: Option<Dtype>,
    /// Matrix type of GGUF output (llama.cpp's round-to-nearest for quantized types; with
    /// --bits the linears hold GPTQ's codes instead).
    #[arg(long, value_enum, default_value_t = GgufType::F16)]
    pub gguf_type: GgufType,
    #[command(flatten)]
    pub structured: structured::StructuredArgs,
    #[command(flatten)]
    pub unstructured: unstructured::UnstructuredArgs,
}

pub fn run(args: Args) -> Result<()> {
    if args.structured.structured {
        if args.format == Some(FormatArg::CompressedTensors) {
            anyhow::bail!(
                "--format compressed-tensors stores pruned weights sparse; structured pruning \
                 writes a smaller dense model: use --format safetensors or gguf"
            );
        }
        return structured::run(&args);
    }
    unstructured::run(&args)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FormatArg {
    /// A Hugging Face directory (config.json, safetensors, tokenizer).
    Safetensors,
    /// One GGUF file with llama.cpp metadata.
    Gguf,
    /// A Hugging Face directory with the pruned linears in compressed-tensors'
    /// `sparse-bitmask` (or, for 2:4, `sparse-24-bitmask`) layout: smaller on disk, read by
    /// vLLM (unstructured and N:M pruning without --bits).
    CompressedTensors,
}

/// Where and how the output is written.
#[derive(Debug, Clone, Copy)]
pub enum Output {
    Safetensors(OutDtype),
    Gguf(GgufTypes),
}

/// The output the flags ask for: `--format`, else by the extension of `--out`; safetensors in
/// `--dtype`, else the source's own float dtype (f16 for quantized sources).
pub fn output_kind(args: &Args, cfg: &ModelConfig) -> Output {
    let gguf_ext = args
        .out
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"));
    match args.format {
        Some(FormatArg::Gguf) => Output::Gguf(args.gguf_type.types()),
        // The sparse writer keeps every value in the source's float dtype.
        Some(FormatArg::CompressedTensors) => Output::Safetensors(OutDtype::F16),
        None if gguf_ext => Output::Gguf(args.gguf_type.types()),
        _ => Output::Safetensors(match args.dtype {
            Some(d) => d.out(),
            None => match cfg.torch_dtype.as_deref() {
                Some("float32") => OutDtype::F32,
                Some("bfloat16") => OutDtype::BF16,
                _ => OutDtype::F16,
            },
        }),
    }
}
