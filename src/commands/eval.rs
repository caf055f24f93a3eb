//! `microllm eval`: perplexity of a model on a text file.

use std::path::PathBuf;

use anyhow::{Context, Result};
use microllm_eval::{PerplexityOptions, Protocol, perplexity};
use serde_json::json;

use crate::progress::Bar;

/// Measure perplexity on a text file.
///
/// The text is tokenized whole (no BOS unless the tokenizer adds one) and cut into consecutive
/// non-overlapping windows of --ctx tokens; the last partial window is dropped. Every position
/// after the first in each window is scored; perplexity = exp(mean negative log-likelihood).
/// `--protocol llama-cpp` scores as llama-perplexity does instead.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Model directory, .gguf file or hub repo id.
    #[arg(long, short)]
    model: String,
    /// UTF-8 text file to score.
    #[arg(long, short)]
    data: PathBuf,
    /// Tokens per window.
    #[arg(long, default_value_t = 512)]
    ctx: usize,
    /// Score only the first N windows.
    #[arg(long)]
    max_windows: Option<usize>,
    /// Which positions are scored: `microllm` (every position after the first of each
    /// window), or `llama-cpp` (llama-perplexity's: BOS in the first slot of every window when
    /// the tokenizer adds one, only the second half scored), so that figures compare with
    /// llama-perplexity's on the same file.
    #[arg(long, value_enum, default_value_t = ProtocolArg::Microllm)]
    protocol: ProtocolArg,
    /// Also write the result as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    #[command(flatten)]
    compute: super::ComputeArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ProtocolArg {
    Microllm,
    LlamaCpp,
}

pub fn run(args: Args) -> Result<()> {
    let ckpt = super::open_model(&args.model)?;
    let tokenizer = ckpt.require_tokenizer()?;
    let text = super::read_text(&args.data)?;
    let tokens = tokenizer
        .encode(&text, true)
        .with_context(|| format!("tokenizing {}", args.data.display()))?;
    let model = super::load_decoder(&ckpt, args.compute.compute)?;
    let protocol = match args.protocol {
        ProtocolArg::Microllm => Protocol::AllPositions,
        ProtocolArg::LlamaCpp => {
            // The BOS the tokenizer puts before a text, if it puts one.
            let with = tokenizer.encode("a", true)?;
            let without = tokenizer.encode("a", false)?;
            let bos = (with.len() > without.len() && with.ends_with(&without)).then(|| with[0]);
            Protocol::LlamaCpp { bos }
        }
    };
    let opts = PerplexityOptions {
        ctx: args.ctx,
        max_windows: args.max_windows,
        protocol,
    };
    let result = perplexity(&model, &tokens, opts, &Bar::new())
        .with_context(|| format!("evaluating on {}", args.data.display()))?;

    println!("perplexity   {:.4}", result.perplexity);
    println!(
        "scored       {} tokens in {} windows of {} ({} tokens in the text)",
        result.scored_tokens, result.windows, result.ctx, result.text_tokens
    );
    println!(
        "speed        {:.1} tokens/s ({:.1} s)",
        result.tokens_per_second, result.seconds
    );
    if let Some(path) = &args.json {
        let doc = json!({
            "microllm_version": env!("CARGO_PKG_VERSION"),
            "model": args.model,
            "data": args.data,
            "protocol": match args.protocol {
                ProtocolArg::Microllm => "microllm",
                ProtocolArg::LlamaCpp => "llama-cpp",
            },
            "result": result,
        });
        let text = serde_json::to_string_pretty(&doc)? + "\n";
        microllm_io::write::write_file_atomic(path, |tmp| {
            std::fs::write(tmp, &text).map_err(|e| microllm_core::Error::io(tmp, e))
        })?;
        println!("wrote        {}", path.display());
    }
    Ok(())
}
