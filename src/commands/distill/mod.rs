//! `microllm distill`: train a student to match a teacher, and `microllm distill logits`: store
//! a teacher's top-k logits once for any number of runs.
//!
//! The binary only parses and renders: training runs as a one-pass recipe through
//! `microllm-pipeline` (see `train`), whose distill pass calls `microllm-distill`'s trainer;
//! progress comes through the `Progress` sink (the bar shows loss, learning rate and tokens/s
//! as the status).

mod derivation;
mod logits;
mod train;

use clap::Subcommand;

use crate::commands::pipeline::Verdict;

/// Distill a teacher into a smaller student, from a live teacher or stored teacher logits.
///
/// The student is a checkpoint (--student) or cut out of the teacher by structured pruning
/// (--student-from-teacher "drop-layers=6,mlp-keep=0.75"). Losses mix forward KL (kl), reverse
/// KL, JSD, cross-entropy on the next token (ce) and hidden-state MSE/cosine. With --logits the
/// teacher's top-k from `microllm distill logits` replaces the live teacher.
///
/// Short model names: mistral-7b, llama-2-7b, llama-2-13b, tinyllama, tinyllama-chat, phi-2,
/// qwen2.5-0.5b, qwen2.5-1.5b, smollm2-135m, smollm2-360m, smollm2-1.7b, smollm2-135m-instruct
/// (see docs/distillation.md for their hub ids).
#[derive(Debug, clap::Args)]
#[command(
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true,
    after_help = "Examples:
  microllm distill logits --teacher smollm2.gguf --data c4.txt --seqlen 256 --top-k 64 --out store
  microllm distill --teacher smollm2.gguf --student-from-teacher drop-layers=6 --logits store \\
      --data c4.txt --seqlen 256 --loss kl:1 --steps 200 --eval wiki.txt --out student
  microllm distill --student small-model --data c4.txt --loss ce:1 --steps 200 --out tuned"
)]
pub struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    train: train::TrainArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Compute a teacher's top-k log-probabilities (and the rest mass) for every position of
    /// a text, once, in safetensors shards with a manifest; or merge shards made separately.
    Logits(logits::LogitsArgs),
}

pub fn run(args: Args) -> anyhow::Result<Verdict> {
    match args.command {
        Some(Command::Logits(a)) => logits::run(a).map(|()| Verdict::Planned),
        None => train::run(args.train),
    }
}
