//! Task accuracy: multiple-choice benchmarks (HellaSwag, ARC, PIQA, WinoGrande, MMLU) scored
//! the way lm-evaluation-harness scores them, or the way llama-perplexity does.
//!
//! Perplexity, KL and top-1 agreement say how far a compressed model drifted from its
//! original; people choosing a compressed model look at task accuracy, and they compare it
//! with figures from the harness or from llama.cpp. So both scorers are reproduced rule for
//! rule rather than approximated:
//!
//! - [`TaskProtocol::LmEval`]: the harness's prompts (`doc_to_text` / `doc_to_choice` of its
//!   task configs, HellaSwag's preprocessing, WinoGrande's partial scoring, MMLU's letters),
//!   its context/continuation split (trailing spaces of the context move to the continuation;
//!   the continuation's tokens are those of the whole string past the context's tokens), no
//!   BOS (except Gemma, which the harness gives one), the sum of the continuation's
//!   log-likelihoods; `acc` is the argmax, `acc_norm` the argmax after dividing by the choice's
//!   length in characters; standard errors as the harness's `mean_stderr`.
//! - [`TaskProtocol::LlamaCpp`]: `llama-perplexity --hellaswag` / `--multiple-choice`: each
//!   choice is tokenized as `context + " " + choice` with BOS, the tokens all choices share are
//!   skipped, and choices are ranked by their mean log-probability per token; the items are
//!   those llama-perplexity picks, in its order ([`llama_draw`]: HellaSwag text files always
//!   drawn at random, multiple-choice files when fewer are asked for). WinoGrande follows
//!   `--winogrande`'s own rules ([`llama_winogrande`]: the words after the option scored when
//!   long enough, the last token left out).
//!
//! Items whose choices share their context run that context once: its keys and values are
//! cached and every choice continues from them ([`score`]).

mod items;
mod llama_draw;
mod llama_winogrande;
mod prompts;
mod score;

use std::str::FromStr;
use std::time::Instant;

use microllm_core::{Error, Progress, Result};
use microllm_models::Decoder;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

pub use items::{Item, read_items};
pub use prompts::Request;

/// A benchmark microllm can score.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    Hellaswag,
    ArcEasy,
    ArcChallenge,
    Piqa,
    Winogrande,
    Mmlu,
}

impl Task {
    pub const ALL: [Task; 6] = [
        Task::Hellaswag,
        Task::ArcEasy,
        Task::ArcChallenge,
        Task::Piqa,
        Task::Winogrande,
        Task::Mmlu,
    ];

    /// The harness's name of the task.
    pub fn name(self) -> &'static str {
        match self {
            Task::Hellaswag => "hellaswag",
            Task::ArcEasy => "arc_easy",
            Task::ArcChallenge => "arc_challenge",
            Task::Piqa => "piqa",
            Task::Winogrande => "winogrande",
            Task::Mmlu => "mmlu",
        }
    }

    /// Whether the harness reports `acc_norm` for the task (WinoGrande's choices are
    /// contexts, not continuations; MMLU's are single letters).
    pub fn has_acc_norm(self) -> bool {
        !matches!(self, Task::Winogrande | Task::Mmlu)
    }
}

impl std::fmt::Display for Task {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Task {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let wanted = s.trim().to_ascii_lowercase().replace('-', "_");
        Task::ALL
            .into_iter()
            .find(|t| t.name() == wanted)
            .ok_or_else(|| {
                let names: Vec<_> = Task::ALL.iter().map(|t| t.name()).collect();
                Error::Invalid(format!(
                    "unknown task `{s}`; tasks are {}",
                    names.join(", ")
                ))
            })
    }
}

/// Whose scoring rules to follow (see the module docs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TaskProtocol {
    #[default]
    LmEval,
    LlamaCpp,
}

/// Turns text into token ids; `add_special` adds what the tokenizer puts around a text (BOS).
pub trait Encode: Sync {
    fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>>;
}

impl<F: Fn(&str, bool) -> Result<Vec<u32>> + Sync> Encode for F {
    fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>> {
        self(text, add_special)
    }
}

/// What to score.
#[derive(Debug, Clone, Copy)]
pub struct TaskOptions {
    pub task: Task,
    pub protocol: TaskProtocol,
    /// Score only the first N items.
    pub limit: Option<usize>,
    /// Solved examples put before each item: the first `fewshot` of the few-shot items (of
    /// the item's own subject for MMLU, as the harness's `first_n` sampler takes them).
    pub fewshot: usize,
}

/// One item's outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ItemScore {
    pub gold: usize,
    /// The choice ranked first (by summed log-likelihood; by mean per token under llama.cpp's
    /// protocol).
    pub pred: usize,
    /// The choice ranked first by log-likelihood per character (`acc_norm`), where the task
    /// has it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pred_norm: Option<usize>,
    /// Log-likelihood of each choice's continuation (summed; mean per token under llama.cpp's
    /// protocol).
    pub logliks: Vec<f64>,
}

/// The outcome of a task run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskResult {
    pub task: Task,
    pub protocol: TaskProtocol,
    pub fewshot: usize,
    pub items: usize,
    pub acc: f64,
    pub acc_stderr: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acc_norm: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acc_norm_stderr: Option<f64>,
    /// Tokens run through the model (shared contexts counted once).
    pub tokens: usize,
    pub seconds: f64,
    pub items_per_second: f64,
    /// Every item's scores, in the file's order.
    pub per_item: Vec<ItemScore>,
}

/// Scores `model` on `items` (the first `opts.limit` of them), with `fewshot_items` as the
/// source of solved examples when `opts.fewshot > 0` (the items themselves when it is empty,
/// each item never its own example).
pub fn score_task(
    model: &Decoder,
    encoder: &dyn Encode,
    items: &[Item],
    fewshot_items: &[Item],
    opts: TaskOptions,
    progress: &dyn Progress,
) -> Result<TaskResult> {
    let llama_winogrande = opts.protocol == TaskProtocol::LlamaCpp && opts.task == Task::Winogrande;
    if llama_winogrande && opts.fewshot > 0 {
        return Err(Error::Invalid(
            "llama-perplexity's --winogrande has no few-shot examples; use --fewshot with \
             the lm-eval protocol"
                .into(),
        ));
    }
    // llama-perplexity never reaches a WinoGrande file's last line ([`llama_winogrande`]).
    let available = match llama_winogrande {
        true => items.len().saturating_sub(1),
        false => items.len(),
    };
    let n = opts.limit.map_or(available, |l| l.min(available));
    // llama-perplexity's own choice of items (`llama_draw`); lm-eval takes the first N.
    let chosen: Vec<usize> = match (opts.protocol, items.first().map(|i| i.verbatim)) {
        _ if llama_winogrande => llama_draw::multiple_choice(available, n),
        (TaskProtocol::LlamaCpp, Some(false)) if opts.task == Task::Hellaswag => {
            llama_draw::hellaswag(items.len(), n)
        }
        (TaskProtocol::LlamaCpp, Some(true)) => llama_draw::multiple_choice(items.len(), n),
        _ => (0..n).collect(),
    };
    if n == 0 {
        return Err(Error::Invalid(format!(
            "no {} items to score (the file has {}, the limit is {:?}{})",
            opts.task,
            items.len(),
            opts.limit,
            match llama_winogrande {
                true => "; llama-perplexity's protocol never scores the last",
                false => "",
            }
        )));
    }
    let examples = if fewshot_items.is_empty() {
        items
    } else {
        fewshot_items
    };
    let family = model.config().family;
    // The harness gives Gemma models a BOS; everything else runs without one.
    let add_special = match opts.protocol {
        TaskProtocol::LmEval => family == microllm_core::Family::Gemma3,
        TaskProtocol::LlamaCpp => true,
    };

    let max_len = model.config().max_position_embeddings;

    progress.begin(opts.task.name(), n as u64, "items");
    let start = Instant::now();
    let scored: Vec<(ItemScore, usize)> = chosen
        .par_iter()
        .map(|&index| {
            let item = &items[index];
            if llama_winogrande {
                let scored = score_llama_winogrande(model, encoder, item, max_len)
                    .map_err(|e| in_item(index, e))?;
                progress.advance(1);
                return Ok(scored);
            }
            let exclude = fewshot_items.is_empty().then_some(index);
            let shots = prompts::fewshot_examples(item, examples, opts.fewshot, exclude)?;
            let requests = prompts::requests(opts.task, item, &shots)?;
            let seqs = score::tokenize(encoder, &requests, opts.protocol, add_special, max_len)
                .map_err(|e| in_item(index, e))?;
            let (scores, tokens) =
                score::score_choices(model, &seqs).map_err(|e| in_item(index, e))?;
            progress.advance(1);
            Ok((
                rank(opts.task, opts.protocol, item, &requests, &scores),
                tokens,
            ))
        })
        .collect::<Result<_>>()
        .map_err(|e| match e {
            Error::Invalid(msg) => Error::Invalid(format!("{}: {msg}", opts.task)),
            other => other,
        })?;
    progress.finish();
    let seconds = start.elapsed().as_secs_f64();

    let tokens = scored.iter().map(|(_, t)| t).sum();
    let per_item: Vec<ItemScore> = scored.into_iter().map(|(s, _)| s).collect();
    let (acc, acc_stderr) = mean_and_stderr(per_item.iter().map(|s| s.pred == s.gold));
    let norm = per_item
        .iter()
        .map(|s| s.pred_norm.map(|p| p == s.gold))
        .collect::<Option<Vec<bool>>>()
        .map(|hits| mean_and_stderr(hits.into_iter()));
    Ok(TaskResult {
        task: opts.task,
        protocol: opts.protocol,
        fewshot: opts.fewshot,
        items: n,
        acc,
        acc_stderr,
        acc_norm: norm.map(|(m, _)| m),
        acc_norm_stderr: norm.map(|(_, s)| s),
        tokens,
        seconds,
        items_per_second: n as f64 / seconds.max(f64::MIN_POSITIVE),
        per_item,
    })
}

/// A WinoGrande item as `llama-perplexity --winogrande` scores it ([`llama_winogrande`]).
fn score_llama_winogrande(
    model: &Decoder,
    encoder: &dyn Encode,
    item: &Item,
    max_len: usize,
) -> Result<(ItemScore, usize)> {
    let tokens = llama_winogrande::tokenize(encoder, item, max_len)?;
    let plan = llama_winogrande::plan(&tokens)?;
    let (means, run) = llama_winogrande::score(model, &tokens, &plan)?;
    Ok((
        ItemScore {
            gold: item.gold,
            pred: llama_winogrande::pick(means),
            pred_norm: None,
            logliks: means.to_vec(),
        },
        run,
    ))
}

/// The item's outcome from its choices' scores.
fn rank(
    task: Task,
    protocol: TaskProtocol,
    item: &Item,
    requests: &[Request],
    scores: &[score::ChoiceScore],
) -> ItemScore {
    match protocol {
        TaskProtocol::LmEval => {
            let logliks: Vec<f64> = scores.iter().map(|s| s.logprob).collect();
            let pred_norm = task.has_acc_norm().then(|| {
                let per_char: Vec<f64> = logliks
                    .iter()
                    .zip(requests)
                    .map(|(ll, r)| ll / r.norm_chars as f64)
                    .collect();
                argmax(&per_char)
            });
            ItemScore {
                gold: item.gold,
                pred: argmax(&logliks),
                pred_norm,
                logliks,
            }
        }
        TaskProtocol::LlamaCpp => {
            let logliks: Vec<f64> = scores.iter().map(|s| s.logprob / s.tokens as f64).collect();
            ItemScore {
                gold: item.gold,
                pred: argmax(&logliks),
                pred_norm: None,
                logliks,
            }
        }
    }
}

/// `err` with the item it happened in named, when it is about the item's text.
fn in_item(index: usize, err: Error) -> Error {
    match err {
        Error::Invalid(msg) => Error::Invalid(format!("item {index}: {msg}")),
        Error::Tokenizer { origin, msg } => Error::Tokenizer {
            origin,
            msg: format!("item {index}: {msg}"),
        },
        other => other,
    }
}

/// Index of the largest value, the first on ties (numpy's `argmax`, llama.cpp's strict `>`).
fn argmax(values: &[f64]) -> usize {
    values
        .iter()
        .enumerate()
        .fold((0, f64::NEG_INFINITY), |(bi, bv), (i, &v)| {
            if v > bv { (i, v) } else { (bi, bv) }
        })
        .0
}

/// Mean of the hits, and its standard error as the harness computes it: the sample standard
/// deviation (n - 1) over `sqrt(n)`.
fn mean_and_stderr(hits: impl Iterator<Item = bool>) -> (f64, f64) {
    let values: Vec<f64> = hits.map(|h| if h { 1.0 } else { 0.0 }).collect();
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    if values.len() < 2 {
        return (mean, 0.0);
    }
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, (var / n).sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_names_parse_both_ways() {
        for t in Task::ALL {
            assert_eq!(t.name().parse::<Task>().unwrap(), t);
        }
        assert_eq!("ARC-Easy".parse::<Task>().unwrap(), Task::ArcEasy);
        let err = "boolq".parse::<Task>().unwrap_err().to_string();
        assert!(err.contains("boolq") && err.contains("hellaswag"), "{err}");
    }

    #[test]
    fn argmax_takes_the_first_of_equals() {
        assert_eq!(argmax(&[-3.0, -1.0, -1.0]), 1);
        assert_eq!(argmax(&[-1.0]), 0);
        assert_eq!(argmax(&[f64::NAN, -2.0]), 1);
    }

    #[test]
    fn stderr_is_the_harness_sample_formula() {
        // 3 hits of 4: mean 0.75, sample variance 0.25, stderr sqrt(0.25 / 4) = 0.25.
        let (m, s) = mean_and_stderr([true, true, false, true].into_iter());
        assert_eq!(m, 0.75);
        assert!((s - 0.25).abs() < 1e-12, "{s}");
    }
}
