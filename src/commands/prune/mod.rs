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
    CalibrationData, EvalStage, EvaluationData, Output, OutputFormat, Pass, Recipe, RecipeDoc,
    ReportOptions,
};

use super::pipeline::{Invocation, Verdict, execute};
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
    /// vLLM (unstructured and N:M pruning without --bits).
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
    let evaluation = args.eval.as_ref().map(|data| {
        passes.push(Pass::Eval(EvalStage::default()));
        EvaluationData {
            data: data.clone(),
            ctx: args.eval_ctx,
            windows: args.eval_windows,
        }
    });
    Ok(Recipe {
        version: microllm_pipeline::recipe::RECIPE_VERSION,
        name: Some("prune".into()),
        model: args.model.clone(),
        calibration: args.calib.as_ref().map(|data| CalibrationData {
            data: data.clone(),
            samples: args.samples,
            seqlen: args.seqlen,
            seed: args.seed,
            allow_short: args.allow_short_calib,
        }),
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
            gguf_type: (gguf && !quantized).then(|| args.gguf_type.recipe()),
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
