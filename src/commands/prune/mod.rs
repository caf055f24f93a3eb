//! `microllm prune`: remove weights (unstructured, N:M) or whole structures (MLP channels,
//! attention heads, decoder blocks), with a report.
//!
//! Unstructured and N:M pruning run through the same layerwise engine as `quantize` (one
//! decoder block in memory, calibration activations propagated through the pruned blocks) and
//! can quantize in the same sweep (`--bits`). Structured pruning (`--structured`) measures
//! importance on calibration data, then writes a genuinely smaller model with a rewritten
//! config. Either way the flags mean a one-pass recipe (`--print-recipe` shows it), run by the
//! same plan and runner as `microllm run`.

mod structured;
mod unstructured;

use std::path::PathBuf;

use anyhow::Result;
use microllm_pipeline::recipe::{
    GgufTypeName, Output, OutputFormat, Recipe, RecipeDoc, ReportOptions,
};

use super::data_args::DataArgs;
use super::pipeline::{Invocation, Verdict, execute};
use crate::commands::convert::{Dtype, gguf_type_parser};

/// Prune a model: magnitude, Wanda or SparseGPT (unstructured or N:M), or structured.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Model: a Hugging Face directory, a .gguf file, or a hub repo id.
    #[arg(long, short)]
    pub model: String,
    /// Output directory (safetensors) or file (.gguf); must not exist unless --force.
    #[arg(long, short)]
    pub out: PathBuf,
    #[command(flatten)]
    pub data: DataArgs,
    /// Print the plan (resulting shapes, parameters, estimated size) and stop.
    #[arg(long)]
    pub dry_run: bool,
    /// Replace --out if it exists.
    #[arg(long)]
    pub force: bool,
    /// Output format [default: gguf when --out ends in .gguf, else safetensors].
    #[arg(long, value_enum)]
    pub format: Option<FormatArg>,
    /// Weight dtype of safetensors output [default: the source's f32/f16/bf16, else f16].
    #[arg(long, value_enum)]
    pub dtype: Option<Dtype>,
    /// Matrix type of GGUF output (llama.cpp's round-to-nearest for quantized types; with
    /// --bits the linears hold GPTQ's codes instead).
    #[arg(long, default_value = "f16", value_parser = gguf_type_parser())]
    pub gguf_type: GgufTypeName,
    /// Print the recipe these flags mean (YAML, for `microllm run`) and stop.
    #[arg(long)]
    pub print_recipe: bool,
    #[command(flatten)]
    pub structured: structured::StructuredArgs,
    #[command(flatten)]
    pub unstructured: unstructured::UnstructuredArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FormatArg {
    /// A Hugging Face directory (config.json, safetensors, tokenizer).
    Safetensors,
    /// One GGUF file with llama.cpp metadata.
    Gguf,
    /// A Hugging Face directory with the pruned linears in compressed-tensors'
    /// `sparse-bitmask` (or, for 2:4, `sparse-24-bitmask`) layout: smaller on disk, read by
    /// vLLM (unstructured and N:M pruning). With --bits: `pack-quantized` codes holding the
    /// pruned zeros, the structure declared in `sparsity_config` (stored `dense`).
    CompressedTensors,
}

/// The one-pass recipe the flags mean.
pub fn recipe(args: &Args) -> Result<Recipe> {
    let (mut passes, quantized) = if args.structured.structured {
        (vec![structured::stage(&args.structured)], false)
    } else {
        unstructured::stages(&args.unstructured)?
    };
    let format = args.format.map(|f| match f {
        FormatArg::Safetensors => OutputFormat::Safetensors,
        FormatArg::Gguf => OutputFormat::Gguf,
        FormatArg::CompressedTensors => OutputFormat::CompressedTensors,
    });
    let gguf = format == Some(OutputFormat::Gguf)
        || (format.is_none()
            && args
                .out
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("gguf")));
    let evaluation = args.data.evaluation(&mut passes);
    Ok(Recipe {
        version: microllm_pipeline::recipe::RECIPE_VERSION,
        name: Some("prune".into()),
        model: args.model.clone(),
        calibration: args.data.calibration(),
        evaluation,
        passes,
        output: Output {
            path: args.out.clone(),
            format,
            dtype: args
                .dtype
                .filter(|_| !gguf && format.is_none_or(|f| f == OutputFormat::Safetensors))
                .map(Dtype::recipe),
            // With --bits the linears hold GPTQ's codes and the rest follows llama.cpp.
            gguf_type: (gguf && !quantized).then_some(args.gguf_type),
            tensor_types: Vec::new(),
            target_bpw: None,
            target_size: None,
            overwrite: args.force,
        },
        report: ReportOptions::default(),
        gates: Vec::new(),
        matrix: Default::default(),
    })
}

pub fn run(args: Args) -> Result<Verdict> {
    let doc = RecipeDoc::from_recipe(&recipe(&args)?);
    let inv = Invocation {
        dry_run: args.dry_run,
        resume: args.unstructured.resume,
        print_recipe: args.print_recipe,
        by_flag: true,
        default_name: "prune".into(),
        ..Invocation::default()
    };
    execute(doc, &inv)
}
