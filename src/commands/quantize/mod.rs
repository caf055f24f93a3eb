//! `microllm quantize`: GPTQ or RTN, streamed block by block, to GGUF or safetensors, with a
//! report of what was lost.
//!
//! The flags mean a one-pass recipe (`--print-recipe` shows it), which runs through the same
//! plan and runner as `microllm run`.

use std::path::PathBuf;

use anyhow::{Result, bail};
use microllm_pipeline::recipe::{
    GgufTypeName, GroupSize, Output, OutputFormat, Pass, QuantMethodName, QuantizeStage, Recipe,
    RecipeDoc, ReportOptions, SchemeName,
};

use super::convert::{Dtype, gguf_type_parser};
use super::data_args::DataArgs;
use super::pipeline::{Invocation, Verdict, execute};

/// Quantize a model's linear layers with GPTQ (calibrated) or round-to-nearest.
///
/// The model is streamed one decoder block at a time: peak memory is one block, its Hessians
/// and the calibration activations. Output is GGUF by default: GPTQ/RTN codes whose groups are
/// whole 32-weight blocks are written exactly as Q4_0 (symmetric, 2-4 bits), Q4_1
/// (asymmetric, 2-4 bits) or Q8_0 (symmetric, 5-8 bits); other settings are stored as F16 of
/// the quantized weights (the report says so). --format safetensors writes a Hugging Face
/// directory holding the quantized weights' values in --dtype. --format gptq and --format
/// compressed-tensors write Hugging Face directories with the codes packed as GPTQ (v1) or
/// compressed-tensors (pack-quantized) checkpoints, the other tensors in their source dtype
/// (f16 when the source is GGUF-quantized); with --act-order their groups follow the
/// processing order (g_idx), as transformers and vLLM expect. --gguf-type instead writes
/// llama.cpp's own block types or mixes (Q4_K_M ...) by llama.cpp's round-to-nearest, with an
/// importance matrix from --calib when given. A report
/// (OUT.report.json, .md and .html beside the output) records per-layer errors, size,
/// bits/weight, time, and with --eval the perplexity before and after, KL divergence and
/// top-1 agreement. The flags mean a one-pass recipe: --print-recipe prints it as YAML.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Model directory, .gguf file or hub repo id.
    #[arg(long, short)]
    model: String,
    /// Output file (GGUF) or directory (safetensors, gptq, compressed-tensors); must not
    /// exist unless --force.
    #[arg(long, short)]
    out: PathBuf,
    /// Bits per weight code, 2-8.
    #[arg(long, default_value_t = 4, value_parser = crate::commands::code_bits())]
    bits: u8,
    /// Quantization algorithm [default: gptq; rtn with --gguf-type]. awq: activation-aware
    /// scales searched on --calib and folded into the norms and linears, then
    /// round-to-nearest; awq+gptq: the scales, then GPTQ.
    #[arg(long, value_enum)]
    method: Option<Method>,
    /// Weight-and-activation preset instead of --bits: w8a8-int8 (8-bit symmetric
    /// per-channel weights, every linear's input quantized to int8 per token when the model
    /// runs), written as compressed-tensors `int-quantized` (vLLM's W8A8); w8a8-fp8 (FP8
    /// E4M3 weights per channel, or per --group-size columns, FP8 activations per token),
    /// `float-quantized`; w8a16-fp8 (FP8 weights only), `naive-quantized`.
    #[arg(long, value_enum)]
    scheme: Option<SchemeArg>,
    /// With --scheme w8a8-int8 or w8a8-fp8: SmoothQuant's migration strength (0, 1], per-channel scales
    /// from --calib moving activation outliers into the weights, folded into the norms and
    /// producing linears (0.5 measured best on SmolLM2, docs/benchmarks.md).
    #[arg(long, value_name = "ALPHA", value_parser = crate::commands::finite_f64, requires = "scheme")]
    smoothquant: Option<f64>,
    /// AWQ: scale exponents tried (0, 1/n, ..., (n-1)/n).
    #[arg(long, value_name = "N", default_value_t = 20)]
    awq_grid: u32,
    /// AWQ: search each row-group's clipping range after scaling [default: on for awq, off
    /// for awq+gptq, whose GPTQ searches its own ranges].
    #[arg(long, value_name = "BOOL")]
    awq_clip: Option<bool>,
    /// Input columns sharing one scale: a number dividing every linear's input size, or
    /// `channel` for one group per output row. Default: 32 for GGUF, 128 for safetensors (or
    /// the largest of 64/32/16 that divides every row).
    #[arg(long, value_parser = GroupSize::parse)]
    group_size: Option<GroupSize>,
    /// Symmetric grids (zero point 2^(bits-1)); the default.
    #[arg(long, conflicts_with = "asym")]
    sym: bool,
    /// Asymmetric grids (fitted zero point).
    #[arg(long)]
    asym: bool,
    /// GPTQ: process columns by decreasing Hessian diagonal (with GGUF output, groups are
    /// then fixed up front, "static groups", so they stay contiguous blocks).
    #[arg(long)]
    act_order: bool,
    /// GPTQ: weight of each calibration window's first token (the attention sink) in the
    /// q/k/v Hessians [default: --seqlen; 1 = plain GPTQ].
    #[arg(long, value_parser = crate::commands::finite_f64)]
    sink_weight: Option<f64>,
    /// GPTQ: fit every group's grid to its min/max instead of searching the clipping range
    /// that loses least (the search is the default; see docs/benchmarks.md).
    #[arg(long)]
    no_clip_search: bool,
    /// GPTQ with --act-order: fix the groups up front (contiguous columns, no g_idx); the
    /// default for GGUF and compressed-tensors output.
    #[arg(long)]
    static_groups: bool,
    /// GPTQ: dampening as a fraction of the Hessian's mean diagonal.
    #[arg(long, value_parser = crate::commands::finite_f64, default_value_t = 0.01)]
    damp: f64,
    /// Output format [default: gguf; compressed-tensors with --scheme].
    #[arg(long, value_enum)]
    format: Option<Format>,
    /// Write llama.cpp's block type or mix instead (`q4_k_m`, `iq4_xs` ...; round-to-nearest
    /// as llama.cpp does, no GPTQ); with --calib, k- and i-quant and Q4/Q5 blocks are fitted
    /// with an importance matrix measured on the calibration windows (llama.cpp's imatrix).
    #[arg(long, value_parser = gguf_type_parser())]
    gguf_type: Option<GgufTypeName>,
    /// With --gguf-type: a tensor's type by name, as llama-quantize's --tensor-type:
    /// PATTERN=TYPE, PATTERN a regular expression searched for in the GGUF names
    /// (`blk.3.attn_v.weight`), the first rule that matches wins over --gguf-type's mix (e.g.
    /// `attn_v=q8_0`); repeatable.
    #[arg(
        long = "tensor-type",
        value_name = "PATTERN=TYPE",
        requires = "gguf_type"
    )]
    tensor_types: Vec<String>,
    /// With --gguf-type: more --tensor-type rules from a file, separated by spaces or newlines
    /// (as llama-quantize's --tensor-type-file).
    #[arg(long, value_name = "FILE", requires = "gguf_type")]
    tensor_type_file: Option<PathBuf>,
    /// With --gguf-type: choose each block linear's type so the file's tensor data averages X
    /// bits per weight, with the least measured error (every type the rows fit is tried; with
    /// --calib or --imatrix errors are weighted by the importance matrix); --gguf-type types
    /// the embeddings and output head.
    #[arg(
        long,
        value_name = "X",
        requires = "gguf_type",
        conflicts_with = "target_size"
    )]
    target_bpw: Option<f64>,
    /// With --gguf-type: as --target-bpw, for a size of tensor data (e.g. 95MB).
    #[arg(long, value_name = "SIZE", requires = "gguf_type")]
    target_size: Option<String>,
    /// With --gguf-type: fit the blocks with this importance matrix instead of measuring
    /// one (llama-imatrix's output, GGUF or legacy .dat, or a file --save-imatrix wrote);
    /// needs no --calib.
    #[arg(
        long,
        value_name = "FILE",
        requires = "gguf_type",
        conflicts_with = "save_imatrix"
    )]
    imatrix: Option<PathBuf>,
    /// With --gguf-type and --calib: also save the measured importance matrix, in
    /// llama-imatrix's GGUF layout (llama-quantize --imatrix takes it).
    #[arg(long, value_name = "FILE", requires_all = ["gguf_type", "calib"])]
    save_imatrix: Option<PathBuf>,
    /// Weight dtype of --format safetensors output (gptq / compressed-tensors keep the
    /// unquantized tensors in their source dtype).
    #[arg(long, value_enum, default_value_t = Dtype::F16)]
    dtype: Dtype,
    #[command(flatten)]
    pub data: DataArgs,
    /// Continue an interrupted run from its last finished block (same settings required).
    #[arg(long)]
    resume: bool,
    /// Print the plan (tensors, types, fallbacks, estimated size) and stop.
    #[arg(long)]
    dry_run: bool,
    /// Replace --out if it exists.
    #[arg(long)]
    force: bool,
    /// Print the recipe these flags mean (YAML, for `microllm run`) and stop.
    #[arg(long)]
    print_recipe: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Method {
    Gptq,
    Rtn,
    Awq,
    #[value(name = "awq+gptq")]
    AwqGptq,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum SchemeArg {
    #[value(name = "w8a8-int8")]
    W8a8Int8,
    #[value(name = "w8a8-fp8")]
    W8a8Fp8,
    #[value(name = "w8a16-fp8")]
    W8a16Fp8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Format {
    /// llama.cpp's GGUF file.
    Gguf,
    /// Hugging Face directory of the dequantized values in --dtype.
    Safetensors,
    /// GPTQ checkpoint (v1: qweight/qzeros/scales/g_idx), a Hugging Face directory.
    Gptq,
    /// compressed-tensors checkpoint (llm-compressor's), a directory: pack-quantized, or
    /// int-/float-/naive-quantized with --scheme.
    CompressedTensors,
}

impl Format {
    fn recipe(self) -> OutputFormat {
        match self {
            Format::Gguf => OutputFormat::Gguf,
            Format::Safetensors => OutputFormat::Safetensors,
            Format::Gptq => OutputFormat::Gptq,
            Format::CompressedTensors => OutputFormat::CompressedTensors,
        }
    }
}

/// The one-pass recipe the flags mean.
pub fn recipe(args: &Args) -> Result<Recipe> {
    let format = args.format.unwrap_or(if args.scheme.is_some() {
        Format::CompressedTensors
    } else {
        Format::Gguf
    });
    if args.gguf_type.is_some() && format != Format::Gguf {
        bail!("--gguf-type applies to GGUF output, not --format {format:?}");
    }
    if args.scheme.is_some() && args.gguf_type.is_some() {
        bail!(
            "--scheme chooses the weight and activation types; --gguf-type llama.cpp's: give one"
        );
    }
    let method = match (args.gguf_type, args.method) {
        (Some(_), Some(m @ (Method::Gptq | Method::Awq | Method::AwqGptq))) => bail!(
            "--gguf-type writes llama.cpp's round-to-nearest block types, which --method {} \
             does not produce; use --method rtn, or drop --gguf-type to get the codes in \
             Q4_0/Q4_1/Q8_0 blocks",
            clap::ValueEnum::to_possible_value(&m)
                .map_or_else(String::new, |v| v.get_name().to_string())
        ),
        (Some(_), _) => QuantMethodName::Ggml,
        (None, Some(Method::Rtn)) => QuantMethodName::Rtn,
        (None, Some(Method::Awq)) => QuantMethodName::Awq,
        (None, Some(Method::AwqGptq)) => QuantMethodName::AwqGptq,
        (None, _) => QuantMethodName::Gptq,
    };
    let grid = method != QuantMethodName::Ggml && args.scheme.is_none();
    let gptq = method.uses_gptq();
    let awq = method.uses_awq();
    let stage = QuantizeStage {
        method,
        bits: grid.then_some(args.bits),
        // FP8 schemes take a group size (one scale per channel without it).
        group_size: args.group_size.filter(|_| {
            grid || args
                .scheme
                .is_some_and(|s| matches!(s, SchemeArg::W8a8Fp8 | SchemeArg::W8a16Fp8))
        }),
        symmetric: grid.then_some(!args.asym),
        act_order: gptq.then_some(args.act_order),
        static_groups: (gptq && args.static_groups).then_some(true),
        damp: gptq.then_some(args.damp),
        sink_weight: args.sink_weight.filter(|_| gptq),
        clip_search: gptq.then_some(!args.no_clip_search),
        scheme: args.scheme.map(|s| match s {
            SchemeArg::W8a8Int8 => SchemeName::W8a8Int8,
            SchemeArg::W8a8Fp8 => SchemeName::W8a8Fp8,
            SchemeArg::W8a16Fp8 => SchemeName::W8a16Fp8,
        }),
        smoothquant: args.smoothquant,
        awq_grid: (awq && args.awq_grid != 20).then_some(args.awq_grid),
        awq_clip: args.awq_clip.filter(|_| awq),
        gguf_type: args.gguf_type,
        // llama.cpp's types take an importance matrix when calibration data is given.
        importance_matrix: (method == QuantMethodName::Ggml
            && args.data.calib.is_some()
            && args.imatrix.is_none())
        .then_some(true),
        importance_matrix_file: args.imatrix.clone(),
        save_importance_matrix: args.save_imatrix.clone(),
    };
    let mut passes = vec![Pass::Quantize(stage)];
    let evaluation = args.data.evaluation(&mut passes);
    Ok(Recipe {
        version: microllm_pipeline::recipe::RECIPE_VERSION,
        name: Some("quantize".into()),
        model: args.model.clone(),
        calibration: args.data.calibration(),
        evaluation,
        passes,
        output: Output {
            path: args.out.clone(),
            format: Some(format.recipe()),
            dtype: (format == Format::Safetensors).then(|| args.dtype.recipe()),
            gguf_type: None,
            tensor_types: super::tensor_type_specs(
                &args.tensor_types,
                args.tensor_type_file.as_deref(),
            )?,
            target_bpw: args.target_bpw,
            target_size: args.target_size.clone(),
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
        resume: args.resume,
        print_recipe: args.print_recipe,
        by_flag: true,
        default_name: "quantize".into(),
        ..Invocation::default()
    };
    execute(doc, &inv)
}
