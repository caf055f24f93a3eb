//! `microllm inspect`: what a model is, before any work is done on it.

use std::collections::BTreeMap;

use anyhow::Result;
use microllm_core::TensorInfo;

/// Show a model's architecture, parameter count, tensor types and size.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Model directory, .gguf file or hub repo id.
    #[arg(long, short)]
    model: String,
    /// List every tensor (name, storage type, shape) instead of a summary.
    #[arg(long)]
    tensors: bool,
    /// Print the resolved configuration as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> Result<()> {
    let ckpt = super::open_model(&args.model)?;
    let cfg = &ckpt.config;
    let infos = ckpt.tensors.infos();
    if args.json {
        println!("{}", serde_json::to_string_pretty(cfg)?);
        return Ok(());
    }
    let params: usize = infos.iter().map(TensorInfo::numel).sum();
    let bytes = ckpt.stored_bytes();

    println!("model        {}", ckpt.path.display());
    println!("format       {}", ckpt.format);
    println!(
        "family       {} ({})",
        cfg.family,
        cfg.family.hf_architecture()
    );
    println!(
        "shape        {} blocks, hidden {}, MLP {}, {} heads / {} KV heads x {}, vocab {}",
        cfg.num_layers,
        cfg.hidden_size,
        cfg.intermediate_size,
        cfg.num_heads,
        cfg.num_kv_heads,
        cfg.head_dim,
        cfg.vocab_size
    );
    println!(
        "attention    rope theta {}, rotary dims {}/{}{}",
        cfg.rope_theta,
        cfg.rotary_dim(),
        cfg.head_dim,
        cfg.sliding_window
            .map(|w| format!(", sliding window {w}"))
            .unwrap_or_default()
    );
    println!(
        "head         {}",
        if cfg.tie_word_embeddings {
            "tied to the token embeddings"
        } else {
            "separate lm_head"
        }
    );
    println!("parameters   {params} ({:.1} M)", params as f64 / 1e6);
    println!(
        "size         {:.1} MB of tensor data, {:.2} bits/parameter",
        bytes as f64 / 1e6,
        bytes as f64 * 8.0 / params.max(1) as f64
    );
    match &ckpt.tokenizer {
        Some(t) => println!("tokenizer    {} tokens ({})", t.vocab_size(), t.origin()),
        None => println!("tokenizer    none"),
    }

    let mut by_type: BTreeMap<&str, (usize, usize, u64)> = BTreeMap::new();
    for t in &infos {
        let e = by_type.entry(t.dtype.as_str()).or_default();
        e.0 += 1;
        e.1 += t.numel();
        e.2 += t.stored_bytes;
    }
    println!("\nstorage types");
    for (dtype, (count, numel, bytes)) in &by_type {
        println!(
            "  {dtype:<6} {count:>5} tensors {:>12} params {:>10.1} MB",
            numel,
            *bytes as f64 / 1e6
        );
    }

    println!();
    if args.tensors {
        println!("tensors");
        for t in &infos {
            println!("  {:<56} {:<6} {:?}", t.name, t.dtype, t.shape);
        }
    } else {
        println!("tensors (block 0 and the tensors outside blocks; --tensors lists all)");
        for t in infos.iter().filter(|t| {
            !t.name.starts_with("model.layers.") || t.name.starts_with("model.layers.0.")
        }) {
            println!("  {:<56} {:<6} {:?}", t.name, t.dtype, t.shape);
        }
    }
    Ok(())
}
