//! `microllm convert`: any model source -> a Hugging Face directory.

use std::path::PathBuf;

use anyhow::{Context, Result};
use microllm_io::write::{HfOutput, HfWriteOptions, OutDtype, write_hf_dir};

use crate::progress::Bar;

/// Convert any model source to a Hugging Face directory that transformers loads.
///
/// Writes config.json, safetensors (sharded with model.safetensors.index.json when larger than
/// --max-shard-mb), tokenizer.json and tokenizer_config.json. Quantized GGUF weights are
/// dequantized; llama.cpp's rotary permutation of q/k is undone. The directory appears only
/// when complete.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Model directory, .gguf file or hub repo id.
    #[arg(long, short)]
    model: String,
    /// Output directory (must not exist unless --force).
    #[arg(long, short)]
    out: PathBuf,
    /// Weight dtype of the output.
    #[arg(long, value_enum, default_value_t = Dtype::F32)]
    dtype: Dtype,
    /// Largest safetensors shard (tensor data), e.g. 2GB, 500MB, 64KB.
    #[arg(long, default_value = "2GB", value_parser = parse_size)]
    max_shard_size: u64,
    /// Replace --out if it exists.
    #[arg(long)]
    force: bool,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Dtype {
    F32,
    F16,
    Bf16,
}

pub fn run(args: Args) -> Result<()> {
    let ckpt = super::open_model(&args.model)?;
    let opts = HfWriteOptions {
        dtype: match args.dtype {
            Dtype::F32 => OutDtype::F32,
            Dtype::F16 => OutDtype::F16,
            Dtype::Bf16 => OutDtype::BF16,
        },
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

/// Parses a byte size such as `2GB`, `500MB`, `64KB` or `1000` (decimal units).
fn parse_size(text: &str) -> std::result::Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("`{text}` is not a size like 2GB, 500MB or 64KB"))?;
    let scale = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => return Err(format!("unknown unit in `{text}` (use B, KB, MB or GB)")),
    };
    match n.checked_mul(scale) {
        Some(0) => Err("the shard size must be positive".into()),
        Some(bytes) => Ok(bytes),
        None => Err(format!("`{text}` is too large")),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("2GB"), Ok(2_000_000_000));
        assert_eq!(parse_size("64kb"), Ok(64_000));
        assert_eq!(parse_size("123"), Ok(123));
        assert!(parse_size("0").is_err());
        assert!(parse_size("12XB").is_err());
    }
}
