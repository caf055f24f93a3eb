//! `microllm eval`: perplexity of a model on a text file, or its accuracy on a
//! multiple-choice task (`--task`, see `eval_task`).

use std::path::PathBuf;

use anyhow::{Context, Result};
use microllm_eval::tasks::{Task, TaskProtocol};
use microllm_eval::{
    KlAccumulator, KlBaseReader, KlBaseShape, KlBaseWriter, PerplexityOptions, Protocol,
    perplexity_with,
};
use serde_json::json;

use crate::progress::Bar;

/// Measure perplexity on a text file, or accuracy on a multiple-choice task.
///
/// The text is tokenized whole (no BOS unless the tokenizer adds one), or token ids are read
/// from a `.safetensors` file (its int64 `input_ids`, rows joined, as --calib takes them), and
/// cut into consecutive non-overlapping windows of --ctx tokens; the last partial window is dropped. Every position
/// after the first in each window is scored; perplexity = exp(mean negative log-likelihood).
/// `--protocol llama-cpp` scores as llama-perplexity does instead.
///
/// With --task, --data is the task's items (the Hugging Face dataset's fields as JSON Lines or
/// parquet, or llama.cpp's HellaSwag text or multiple-choice files) and accuracy is scored as lm-evaluation-harness scores
/// it (`--protocol llama-cpp`: as llama-perplexity --hellaswag / --multiple-choice does).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Model directory, .gguf file or hub repo id.
    #[arg(long, short)]
    model: String,
    /// UTF-8 text file to score, or a `.safetensors` file of token ids (`input_ids`); with
    /// --task, the task's items.
    #[arg(long, short)]
    data: PathBuf,
    /// Tokens per window.
    #[arg(long, default_value_t = 512)]
    ctx: usize,
    /// Score only the first N windows.
    #[arg(long, conflicts_with = "task")]
    max_windows: Option<usize>,
    /// Which positions are scored: `microllm` (every position after the first of each
    /// window), or `llama-cpp` (llama-perplexity's: BOS in the first slot of every window when
    /// the tokenizer adds one, only the second half scored), so that figures compare with
    /// llama-perplexity's on the same file. With --task, `microllm` follows
    /// lm-evaluation-harness and `llama-cpp` llama-perplexity's task scoring.
    #[arg(long, value_enum, default_value_t = ProtocolArg::Microllm)]
    protocol: ProtocolArg,
    /// Score a multiple-choice task instead of perplexity: hellaswag, arc_easy,
    /// arc_challenge, piqa, winogrande or mmlu.
    #[arg(long, value_parser = parse_task)]
    task: Option<Task>,
    /// With --task: score only N items: the first N, or with `--protocol llama-cpp` the ones
    /// llama-perplexity picks, in its order (HellaSwag text files: drawn at random as by
    /// `--hellaswag-tasks N`, the whole file shuffled when N is not given; WinoGrande: as by
    /// `--winogrande-tasks N`, never the file's last item, which llama-perplexity skips).
    #[arg(long, requires = "task")]
    limit: Option<usize>,
    /// With --task: put K solved examples before each item (the first K of --fewshot-data,
    /// of the item's subject for MMLU; without --fewshot-data the first K other items).
    #[arg(long, value_name = "K", default_value_t = 0, requires = "task")]
    fewshot: usize,
    /// With --fewshot: the items to take the examples from (e.g. the dataset's train or dev
    /// split), in the same layout as --data.
    #[arg(long, value_name = "FILE", requires = "task")]
    fewshot_data: Option<PathBuf>,
    /// Also write the result as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Store this model's next-token distributions on the scored positions in FILE (16 bits
    /// per vocabulary entry; 25 MB per 512-token window of a 49k vocabulary under
    /// `--protocol llama-cpp`), to measure other models against later with `--kl-base`.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["kl_base", "task"])]
    save_kl_base: Option<PathBuf>,
    /// Measure this model against distributions stored by `--save-kl-base` (same text,
    /// --ctx, --max-windows and --protocol): KL divergence (mean, median, p99, max), how
    /// often both put the same token first, and the RMS change of the next token's
    /// probability, as llama-perplexity's --kl-divergence.
    #[arg(long, value_name = "FILE", conflicts_with = "task")]
    kl_base: Option<PathBuf>,
    #[command(flatten)]
    compute: super::ComputeArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ProtocolArg {
    Microllm,
    #[value(alias = "llama-perplexity")]
    LlamaCpp,
}

fn parse_task(s: &str) -> std::result::Result<Task, String> {
    s.parse().map_err(|e: microllm_core::Error| e.to_string())
}

pub fn run(args: Args) -> Result<()> {
    if let Some(task) = args.task {
        return super::eval_task::run(super::eval_task::TaskArgs {
            model: &args.model,
            task,
            data: &args.data,
            protocol: match args.protocol {
                ProtocolArg::Microllm => TaskProtocol::LmEval,
                ProtocolArg::LlamaCpp => TaskProtocol::LlamaCpp,
            },
            limit: args.limit,
            fewshot: args.fewshot,
            fewshot_data: args.fewshot_data.as_deref(),
            json: args.json.as_ref(),
            compute: args.compute.compute,
        });
    }
    let ckpt = super::open_model(&args.model)?;
    let (_, tokens) =
        microllm_io::tokens::read_tokens(&args.data, || ckpt.require_tokenizer(), true)?;
    let model = super::load_decoder(&ckpt, args.compute.compute)?;
    let protocol = match args.protocol {
        ProtocolArg::Microllm => Protocol::AllPositions,
        ProtocolArg::LlamaCpp => {
            // The BOS the tokenizer puts before a text, if it puts one.
            let tokenizer = ckpt.require_tokenizer()?;
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
    let shape = KlBaseShape {
        vocab: model.config().vocab_size,
        ctx: opts.ctx,
        first: opts.first_scored_row(),
        windows: opts.windows(tokens.len())?,
    };
    let mut writer = match &args.save_kl_base {
        Some(path) => Some(KlBaseWriter::create(path, shape)?),
        None => None,
    };
    let mut reader = match &args.kl_base {
        Some(path) => Some(KlBaseReader::open(path, shape)?),
        None => None,
    };
    let mut kl = KlAccumulator::default();
    let result = perplexity_with(&model, &tokens, opts, &Bar::new(), &mut |rows| {
        if let Some(w) = writer.as_mut() {
            w.write(&rows)?;
        }
        if let Some(r) = reader.as_mut() {
            let base = r.rows_for(&rows)?;
            kl.add(&base, &rows)?;
        }
        Ok(())
    })
    .with_context(|| format!("evaluating on {}", args.data.display()))
    .map_err(|e| super::explain_non_finite(&ckpt, e))?;
    let kl_stats = match reader {
        Some(_) => Some(kl.finish(result.mean_nll)?),
        None => None,
    };

    println!("perplexity   {:.4}", result.perplexity);
    println!(
        "scored       {} tokens in {} windows of {} ({} tokens in the text)",
        result.scored_tokens, result.windows, result.ctx, result.text_tokens
    );
    println!(
        "speed        {:.1} tokens/s ({:.1} s)",
        result.tokens_per_second, result.seconds
    );
    if let Some(k) = &kl_stats {
        println!(
            "base         perplexity {:.4} on the same positions (ratio {:.4})",
            k.base_perplexity, k.perplexity_ratio
        );
        println!(
            "KL vs base   mean {:.6} ± {:.6}, median {:.6}, p99 {:.6}, p99.9 {:.6}, max {:.6}",
            k.mean_kld, k.mean_kld_stderr, k.median_kld, k.p99_kld, k.p99_9_kld, k.max_kld
        );
        println!(
            "same top     {:.2}% of {} positions; Δp mean {:+.4}%, RMS {:.4}%",
            100.0 * k.same_top_p,
            k.positions,
            100.0 * k.mean_delta_p,
            100.0 * k.rms_delta_p
        );
    }
    if let Some(w) = writer {
        println!("wrote        {}", w.finish()?.display());
    }
    if let Some(path) = &args.json {
        let doc = json!({
            "microllm_version": env!("CARGO_PKG_VERSION"),
            "model": args.model,
            "data": args.data,
            "protocol": match args.protocol {
                ProtocolArg::Microllm => "microllm",
                ProtocolArg::LlamaCpp => "llama-cpp",
            },
            "compute": format!("{:?}", args.compute.compute).to_lowercase(),
            "result": result,
            "kl_base": kl_stats.as_ref().map(|_| args.kl_base.clone()),
            "kl": kl_stats,
        });
        super::write_json(path, &doc)?;
    }
    Ok(())
}
