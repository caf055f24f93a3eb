//! `microllm logits`: the model's logits on given token ids, for comparisons with other
//! implementations and as the base for KL-divergence evaluations.

use std::path::PathBuf;

use anyhow::{Context, Result};
use candle_core::{Device, Tensor};

use crate::progress::Bar;
use microllm_core::Progress;

/// Write the model's logits for given token ids.
///
/// Reads the int64 tensor `input_ids` [batch, seq] from a safetensors file and writes the f32
/// tensor `logits` [batch, seq, vocab] to --out (written atomically).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Model directory, .gguf file or hub repo id.
    #[arg(long, short)]
    model: String,
    /// safetensors file with an int64 `input_ids` tensor [batch, seq].
    #[arg(long)]
    tokens: PathBuf,
    /// Output safetensors file.
    #[arg(long, short)]
    out: PathBuf,
    #[command(flatten)]
    compute: super::ComputeArgs,
}

pub fn run(args: Args) -> Result<()> {
    let ckpt = super::open_model(&args.model)?;
    let rows = microllm_io::arrays::read_token_ids(&args.tokens, "input_ids")?;
    let vocab = ckpt.config.vocab_size;
    if let Some(bad) = rows.iter().flatten().find(|&&id| id as usize >= vocab) {
        anyhow::bail!(
            "{}: token id {bad} in `input_ids` is outside the model's vocabulary of {vocab}",
            args.tokens.display()
        );
    }
    let model = super::load_decoder(&ckpt, args.compute.compute)?;
    let (batch, seq) = (rows.len(), rows.first().map_or(0, Vec::len));
    let bar = Bar::new();
    bar.begin("logits", (batch * seq) as u64, "tokens");
    let mut outputs = Vec::with_capacity(batch);
    for row in &rows {
        let ids = Tensor::from_slice(row, (1, seq), &Device::Cpu)?;
        outputs.push(model.forward(&ids).context("forward pass")?);
        bar.advance(seq as u64);
    }
    bar.finish();
    let logits = Tensor::cat(&outputs, 0)?;
    // The writer refuses non-finite logits (nothing is written); the weights say why.
    microllm_io::arrays::write_f32_tensors(&args.out, vec![("logits".into(), logits)])
        .map_err(|e| super::explain_non_finite(&ckpt, e.into()))?;
    println!(
        "wrote {} (logits [{batch}, {seq}, {vocab}])",
        args.out.display()
    );
    Ok(())
}
