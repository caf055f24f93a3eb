//! `microllm eval --task`: multiple-choice accuracy (HellaSwag, ARC, PIQA, WinoGrande, MMLU).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use microllm_eval::tasks::{Task, TaskOptions, TaskProtocol, TaskResult, read_items, score_task};
use serde_json::json;

use crate::progress::Bar;

/// What `eval --task` was asked to do.
pub struct TaskArgs<'a> {
    pub model: &'a str,
    pub task: Task,
    pub data: &'a Path,
    pub protocol: TaskProtocol,
    pub limit: Option<usize>,
    pub fewshot: usize,
    pub fewshot_data: Option<&'a Path>,
    pub json: Option<&'a PathBuf>,
    pub compute: super::Compute,
}

pub fn run(args: TaskArgs<'_>) -> Result<()> {
    let items = read_items(args.task, args.data)?;
    let fewshot_items = match args.fewshot_data {
        Some(path) => read_items(args.task, path)?,
        None => Vec::new(),
    };
    let ckpt = super::open_model(args.model)?;
    let tokenizer = ckpt.require_tokenizer()?;
    let model = super::load_decoder(&ckpt, args.compute)?;
    let encode = |text: &str, special: bool| tokenizer.encode(text, special);
    let opts = TaskOptions {
        task: args.task,
        protocol: args.protocol,
        limit: args.limit,
        fewshot: args.fewshot,
    };
    let result = score_task(&model, &encode, &items, &fewshot_items, opts, &Bar::new())
        .with_context(|| format!("scoring {} on {}", args.task, args.data.display()))
        .map_err(|e| super::explain_non_finite(&ckpt, e))?;
    print_result(&result);
    if let Some(path) = args.json {
        let doc = json!({
            "microllm_version": env!("CARGO_PKG_VERSION"),
            "model": args.model,
            "data": args.data,
            "fewshot_data": args.fewshot_data,
            "compute": format!("{:?}", args.compute).to_lowercase(),
            "result": result,
        });
        super::write_json(path, &doc)?;
    }
    Ok(())
}

fn print_result(r: &TaskResult) {
    let rules = match r.protocol {
        TaskProtocol::LmEval => "lm-evaluation-harness rules",
        TaskProtocol::LlamaCpp => "llama-perplexity rules: mean log-probability per token",
    };
    println!(
        "task         {} ({}-shot, {rules}), {} items",
        r.task, r.fewshot, r.items
    );
    println!("acc          {:.4} ± {:.4}", r.acc, r.acc_stderr);
    if let (Some(norm), Some(se)) = (r.acc_norm, r.acc_norm_stderr) {
        println!("acc_norm     {norm:.4} ± {se:.4}");
    }
    println!(
        "speed        {:.2} items/s, {:.0} tokens/s ({:.1} s, {} tokens run)",
        r.items_per_second,
        r.tokens as f64 / r.seconds.max(f64::MIN_POSITIVE),
        r.seconds,
        r.tokens
    );
}
