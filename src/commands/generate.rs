//! `microllm generate`: greedy continuation of a prompt.

use std::io::Write;

use anyhow::{Context, Result};
use candle_core::{D, Device, Tensor};
use microllm_models::KvCache;

/// Continue a prompt greedily (always the most likely next token).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Model directory, .gguf file or hub repo id.
    #[arg(long, short)]
    model: String,
    /// Text to continue.
    #[arg(long, short)]
    prompt: String,
    /// Maximum number of new tokens.
    #[arg(long, default_value_t = 32)]
    max_tokens: usize,
    #[command(flatten)]
    compute: super::ComputeArgs,
}

pub fn run(args: Args) -> Result<()> {
    let ckpt = super::open_model(&args.model)?;
    let tokenizer = ckpt.require_tokenizer()?;
    let model = super::load_decoder(&ckpt, args.compute.compute)?;
    let prompt = tokenizer.encode(&args.prompt, true)?;
    if prompt.is_empty() {
        anyhow::bail!("the prompt is empty after tokenization");
    }
    let eos = &ckpt.config.eos_token_ids;
    let mut cache = KvCache::new(model.config());
    let mut generated: Vec<u32> = Vec::new();
    let mut input = prompt.clone();
    let mut printed = 0;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    write!(out, "{}", args.prompt)?;
    for _ in 0..args.max_tokens {
        let ids = Tensor::from_slice(&input, (1, input.len()), &Device::Cpu)?;
        let logits = model
            .forward_cached(&ids, &mut cache)
            .context("forward pass")?;
        let next = logits
            .squeeze(0)?
            .get(input.len() - 1)?
            .argmax(D::Minus1)?
            .to_scalar::<u32>()?;
        if eos.contains(&next) {
            break;
        }
        generated.push(next);
        // Decode the whole continuation each time so multi-byte characters split over
        // tokens print correctly.
        let text = tokenizer.decode(&generated)?;
        if text.len() > printed && text.is_char_boundary(printed) {
            write!(out, "{}", &text[printed..])?;
            out.flush()?;
            printed = text.len();
        }
        input = vec![next];
    }
    writeln!(out)?;
    Ok(())
}
