//! `microllm convert`: any model source -> a Hugging Face directory or a GGUF file.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::builder::TypedValueParser;
use microllm_engine::output::GgufCodes;
use microllm_io::CheckpointFormat;
use microllm_io::gguf::{
    EncodedTensors, GgufExport, SizeTarget, TensorTypeRule, fit_budget, write_gguf,
};
use microllm_io::write::{HfOutput, HfWriteOptions, OutDtype, write_hf_dir};
use microllm_pipeline::plan::parse_size;
use microllm_pipeline::recipe::{DtypeName, GgufTypeName};

use crate::progress::Bar;

/// Convert a model to a Hugging Face directory or a GGUF file.
///
/// Hugging Face output (the default, or --format hf): config.json, safetensors (sharded with
/// model.safetensors.index.json when larger than --max-shard-size), tokenizer.json and
/// tokenizer_config.json, in --dtype. GGUF output (--format gguf, or an --out ending in .gguf):
/// full llama.cpp metadata, tokenizer and chat template; matrices in --gguf-type, quantized by
/// round-to-nearest (llama.cpp's block formats), with llama.cpp's fallbacks where a row does not
/// fit a type's block. Quantized GGUF inputs are dequantized first; llama.cpp's rotary
/// permutation of q/k is undone on input and redone on GGUF output. From a GPTQ or
/// compressed-tensors checkpoint, linears whose codes fit a ggml block exactly (contiguous
/// groups that are multiples of 32: symmetric 2-4 bits -> Q4_0, asymmetric 2-4 bits -> Q4_1,
/// symmetric 5-8 bits -> Q8_0) are copied code for code, the others stored as F16 of their
/// dequantized weights; --gguf-type then applies to the other matrices. --tensor-type sets
/// single tensors' types as llama-quantize's does. Outputs appear only when complete.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Model directory, .gguf file or hub repo id.
    #[arg(long, short)]
    model: String,
    /// Output directory (Hugging Face) or file (GGUF); must not exist unless --force.
    #[arg(long, short)]
    out: PathBuf,
    /// Output format; by default GGUF when --out ends in .gguf, else Hugging Face.
    #[arg(long, value_enum)]
    format: Option<Format>,
    /// Weight dtype of Hugging Face output.
    #[arg(long, value_enum, default_value_t = Dtype::F32)]
    dtype: Dtype,
    /// Type of the matrices in GGUF output (norms stay F32; the output head gets Q6_K for
    /// quantized types, as llama.cpp does).
    #[arg(long, default_value = "f16", value_parser = gguf_type_parser())]
    gguf_type: GgufTypeName,
    /// A GGUF tensor's type by name, as llama-quantize's --tensor-type: PATTERN=TYPE, PATTERN
    /// a regular expression searched for in the GGUF names (`blk.3.attn_v.weight`), the first
    /// rule that matches wins over --gguf-type and its mix (e.g. `attn_v=q8_0`,
    /// `'blk\.(0|1)\.ffn_down=q6_k'`); repeatable.
    #[arg(long = "tensor-type", value_name = "PATTERN=TYPE")]
    tensor_types: Vec<String>,
    /// GGUF: more --tensor-type rules from a file, separated by spaces or newlines (as
    /// llama-quantize's --tensor-type-file).
    #[arg(long, value_name = "FILE")]
    tensor_type_file: Option<PathBuf>,
    /// GGUF: choose each block linear's type so the file's tensor data averages X bits per
    /// weight, with the least measured error (each matrix tried in every block type its rows
    /// fit; --gguf-type types the rest: embeddings, output head).
    #[arg(long, value_name = "X", conflicts_with = "target_size")]
    target_bpw: Option<f64>,
    /// GGUF: as --target-bpw, for a size of tensor data (e.g. 100MB).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    target_size: Option<u64>,
    /// Largest safetensors shard (tensor data), e.g. 2GB, 500MB, 64KB.
    #[arg(long, default_value = "2GB", value_parser = parse_size)]
    max_shard_size: u64,
    /// Replace --out if it exists.
    #[arg(long)]
    force: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Format {
    Hf,
    Gguf,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(crate) enum Dtype {
    F32,
    F16,
    Bf16,
}

impl Dtype {
    pub(crate) fn out(self) -> OutDtype {
        match self {
            Dtype::F32 => OutDtype::F32,
            Dtype::F16 => OutDtype::F16,
            Dtype::Bf16 => OutDtype::BF16,
        }
    }
}

/// `--gguf-type`: the names recipes take (`q4_k`, `q4_k_m`, ...), listed in `--help`.
pub(crate) fn gguf_type_parser() -> impl TypedValueParser<Value = GgufTypeName> {
    clap::builder::PossibleValuesParser::new(GgufTypeName::NAMES)
        .map(|name| name.parse().expect("every listed name parses"))
}

impl Dtype {
    /// The recipe's name of this dtype.
    pub(crate) fn recipe(self) -> DtypeName {
        match self {
            Dtype::F32 => DtypeName::F32,
            Dtype::F16 => DtypeName::F16,
            Dtype::Bf16 => DtypeName::Bf16,
        }
    }
}

pub fn run(args: Args) -> Result<()> {
    let format = args.format.unwrap_or(
        if args
            .out
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
        {
            Format::Gguf
        } else {
            Format::Hf
        },
    );
    let specs = super::tensor_type_specs(&args.tensor_types, args.tensor_type_file.as_deref())?;
    let tensor_types = microllm_pipeline::plan::tensor_type_rules(&specs)
        .map_err(|e| anyhow::anyhow!("--tensor-type {e}"))?;
    let target = match (args.target_bpw, args.target_size) {
        (Some(bpw), _) if !(bpw > 0.0 && bpw.is_finite()) => {
            anyhow::bail!("--target-bpw {bpw}: a positive number of bits per weight is needed")
        }
        (Some(bpw), _) => Some(SizeTarget::BitsPerWeight(bpw)),
        (None, Some(bytes)) => Some(SizeTarget::Bytes(bytes)),
        (None, None) => None,
    };
    if (!tensor_types.is_empty() || target.is_some()) && format == Format::Hf {
        anyhow::bail!(
            "--tensor-type, --target-bpw and --target-size apply to GGUF output (--format gguf \
             or an --out ending in .gguf)"
        );
    }
    let ckpt = super::open_model(&args.model)?;
    match format {
        Format::Hf => to_hf(&args, &ckpt),
        Format::Gguf => to_gguf(&args, &ckpt, &tensor_types, target),
    }
}

fn to_hf(args: &Args, ckpt: &microllm_io::Checkpoint) -> Result<()> {
    let opts = HfWriteOptions {
        dtype: args.dtype.out(),
        max_shard_bytes: args.max_shard_size,
        overwrite: args.force,
    };
    let output = HfOutput {
        config: &ckpt.config,
        tensors: ckpt.tensors.as_ref(),
        tokenizer: ckpt.tokenizer.as_ref(),
        chat_template: ckpt.chat_template.as_deref(),
    };
    let summary = write_hf_dir(&output, &args.out, &opts, &Bar::new())
        .with_context(|| format!("converting to {}", args.out.display()))?;
    println!(
        "wrote {} ({} tensors, {} shard(s), {:.1} MB)",
        summary.dir.display(),
        summary.tensors,
        summary.shards,
        summary.tensor_bytes as f64 / 1e6
    );
    Ok(())
}

fn to_gguf(
    args: &Args,
    ckpt: &microllm_io::Checkpoint,
    tensor_types: &[TensorTypeRule],
    target: Option<SizeTarget>,
) -> Result<()> {
    let name = ckpt.name();
    // A GPTQ / compressed-tensors source: linears whose codes a ggml block type holds are
    // written exactly from the codes (Q4_0 / Q4_1 / Q8_0), not re-quantized.
    let packed = match ckpt.format {
        CheckpointFormat::Gptq | CheckpointFormat::CompressedTensors | CheckpointFormat::Awq => {
            microllm_io::hf::open_quantized(&ckpt.path)?
        }
        _ => None,
    };
    let codes = packed
        .as_ref()
        .map(|src| GgufCodes::from_checkpoint(&ckpt.config, src));
    let mut export = GgufExport {
        config: &ckpt.config,
        tensors: ckpt.tensors.as_ref(),
        tokenizer: ckpt.tokenizer.as_ref(),
        chat_template: ckpt.chat_template.as_deref(),
        name: &name,
        license: ckpt.license.as_deref(),
        encoded: codes.as_ref().map(|c| c as &dyn EncodedTensors),
        importance: None,
        tensor_types,
    };
    let types = microllm_pipeline::plan::gguf_types(args.gguf_type);
    let budget;
    if let Some(target) = target {
        budget = fit_budget(&export, types, target, &Bar::new())
            .with_context(|| format!("choosing types for {}", args.out.display()))?;
        println!("{}", microllm_pipeline::run::budget_note(&budget));
        export.tensor_types = &budget.rules;
    }
    let summary = write_gguf(&export, &args.out, types, args.force, &Bar::new())
        .with_context(|| format!("converting to {}", args.out.display()))?;
    let params: usize = summary
        .tensors
        .iter()
        .map(|t| t.shape.iter().product::<usize>())
        .sum();
    let fallbacks: Vec<_> = summary
        .tensors
        .iter()
        .filter(|t| t.fallback.is_some())
        .collect();
    println!(
        "wrote {} ({} tensors, {:.1} MB, {:.2} bits/parameter)",
        summary.path.display(),
        summary.tensors.len(),
        summary.bytes as f64 / 1e6,
        summary.bytes as f64 * 8.0 / params.max(1) as f64
    );
    if !fallbacks.is_empty() {
        println!("{} tensors fell back to another type:", fallbacks.len());
        for t in fallbacks.iter().take(8) {
            println!(
                "  {} -> {:?}: {}",
                t.gguf_name,
                t.dtype,
                t.fallback.as_deref().unwrap_or_default()
            );
        }
        if fallbacks.len() > 8 {
            println!("  ... and {} more", fallbacks.len() - 8);
        }
    }
    for note in &summary.notes {
        println!("note: {note}");
    }
    Ok(())
}
