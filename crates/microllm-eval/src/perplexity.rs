//! Windowed perplexity over a token stream.
//!
//! Two protocols. microllm's own scores every position after the first of each window (the
//! protocol of the reference figures in `shared/assets/README.md`). llama.cpp's
//! `llama-perplexity` puts BOS in the first slot of every window and scores only the second
//! half, so each scored token has at least `ctx / 2` tokens of context; its figures are lower
//! and only comparable with the same protocol, which [`Protocol::LlamaCpp`] reproduces.

use std::time::Instant;

use candle_core::{Device, Tensor};
use microllm_core::{Error, Progress, Result};
use microllm_models::Decoder;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// How to cut the token stream.
#[derive(Debug, Clone, Copy)]
pub struct PerplexityOptions {
    /// Tokens per window.
    pub ctx: usize,
    /// Evaluate at most this many windows (all complete windows when `None`).
    pub max_windows: Option<usize>,
    pub protocol: Protocol,
}

/// Which positions of a window are scored (see the module docs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Protocol {
    /// Every position after the first.
    #[default]
    AllPositions,
    /// llama-perplexity's: the window's first token replaced by `bos` (when the model has
    /// one), positions from `ctx / 2` on scored.
    LlamaCpp { bos: Option<u32> },
}

impl Protocol {
    /// Index of the first logits row scored in a window of `ctx`.
    fn first_row(self, ctx: usize) -> usize {
        match self {
            Protocol::AllPositions => 0,
            Protocol::LlamaCpp { .. } => ctx / 2,
        }
    }
}

/// The outcome of a perplexity run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PerplexityResult {
    pub perplexity: f64,
    /// Mean negative log-likelihood per scored token, in nats.
    pub mean_nll: f64,
    pub ctx: usize,
    pub windows: usize,
    /// Tokens whose likelihood was scored: `windows * (ctx - 1)`, or `windows * (ctx - 1 -
    /// ctx / 2)` under llama.cpp's protocol.
    pub scored_tokens: usize,
    /// Tokens in the whole text.
    pub text_tokens: usize,
    /// Wall time of the forward passes and scoring.
    pub seconds: f64,
    /// Tokens run through the model per second (`windows * ctx / seconds`).
    pub tokens_per_second: f64,
}

/// Scored rows of logits, as [`perplexity_with`] hands them to its visitor: a window's
/// scored rows come in consecutive chunks of at most [`HEAD_ROWS`].
pub struct ScoredRows<'a> {
    /// Which window (0-based).
    pub window: usize,
    /// The window's tokens as the model saw them (with the protocol's BOS).
    pub tokens: &'a [u32],
    /// Index of the first of these rows among the window's scored rows (0 for its first chunk).
    pub offset: usize,
    /// Logits `[targets.len(), vocab]`: row `i` predicts `targets[i]`.
    pub logits: &'a Tensor,
    /// The scored tokens.
    pub targets: &'a [u32],
}

/// Rows of logits computed at once: a window's logits never exist whole (for a 262k-token
/// vocabulary 256 rows of f32 are 268 MB).
pub const HEAD_ROWS: usize = 64;

impl PerplexityOptions {
    /// Windows a run over `tokens` tokens evaluates, or why there are none.
    pub fn windows(&self, tokens: usize) -> Result<usize> {
        if self.ctx < 2 {
            return Err(Error::Invalid(format!(
                "context length {} is too short: at least 2 tokens are needed to score one",
                self.ctx
            )));
        }
        let available = tokens / self.ctx;
        if available == 0 {
            return Err(Error::Invalid(format!(
                "the text has {tokens} tokens, fewer than one window of {} tokens",
                self.ctx
            )));
        }
        match self.max_windows.map_or(available, |m| m.min(available)) {
            0 => Err(Error::Invalid(
                "at least 1 evaluation window is needed (max windows is 0)".into(),
            )),
            n => Ok(n),
        }
    }

    /// Index of the first logits row scored in each window.
    pub fn first_scored_row(&self) -> usize {
        self.protocol.first_row(self.ctx)
    }
}

/// Perplexity of `model` on `tokens`.
pub fn perplexity(
    model: &Decoder,
    tokens: &[u32],
    opts: PerplexityOptions,
    progress: &dyn Progress,
) -> Result<PerplexityResult> {
    perplexity_with(model, tokens, opts, progress, &mut |_| Ok(()))
}

/// [`perplexity`], handing each window's scored logits to `visit` (to store them, or to
/// compare them with stored ones) before they are dropped.
pub fn perplexity_with(
    model: &Decoder,
    tokens: &[u32],
    opts: PerplexityOptions,
    progress: &dyn Progress,
    visit: &mut dyn FnMut(ScoredRows<'_>) -> Result<()>,
) -> Result<PerplexityResult> {
    let windows = opts.windows(tokens.len())?;

    progress.begin("perplexity", (windows * opts.ctx) as u64, "tokens");
    let start = Instant::now();
    let mut nll_sum = 0f64;
    let first = opts.protocol.first_row(opts.ctx);
    let mut window = Vec::with_capacity(opts.ctx);
    for (index, chunk) in tokens.chunks_exact(opts.ctx).take(windows).enumerate() {
        window.clear();
        window.extend_from_slice(chunk);
        if let Protocol::LlamaCpp { bos: Some(bos) } = opts.protocol {
            window[0] = bos;
        }
        let ids = Tensor::from_slice(&window, (1, opts.ctx), &Device::Cpu)?;
        // Only rows `first..ctx - 1` are scored; the last row predicts past the window.
        let hidden = model.final_hidden(&ids)?;
        let scored = opts.ctx - 1 - first;
        for offset in (0..scored).step_by(HEAD_ROWS) {
            let n = HEAD_ROWS.min(scored - offset);
            let rows = hidden.narrow(1, first + offset, n)?;
            let logits = model.head(&rows)?.squeeze(0)?;
            let targets = &window[first + 1 + offset..first + 1 + offset + n];
            nll_sum += rows_nll(&logits, targets)?;
            visit(ScoredRows {
                window: index,
                tokens: &window,
                offset,
                logits: &logits,
                targets,
            })?;
        }
        progress.advance(opts.ctx as u64);
    }
    progress.finish();
    let seconds = start.elapsed().as_secs_f64();

    let scored_tokens = windows * (opts.ctx - 1 - first);
    let mean_nll = nll_sum / scored_tokens as f64;
    Ok(PerplexityResult {
        perplexity: mean_nll.exp(),
        mean_nll,
        ctx: opts.ctx,
        windows,
        scored_tokens,
        text_tokens: tokens.len(),
        seconds,
        tokens_per_second: (windows * opts.ctx) as f64 / seconds.max(f64::MIN_POSITIVE),
    })
}

/// Sum of negative log-likelihoods of `ids[1..]` given `logits` `[seq, vocab]` of the window
/// `ids` (row `t` predicts token `t + 1`). Rows are scored in parallel; each row's
/// log-sum-exp is taken after subtracting its maximum and summed in f64.
pub fn window_nll(logits: &Tensor, ids: &[u32]) -> Result<f64> {
    window_nll_from(logits, ids, 0)
}

/// [`window_nll`] over the predictions of rows `first..seq - 1` only.
pub fn window_nll_from(logits: &Tensor, ids: &[u32], first: usize) -> Result<f64> {
    let (seq, _) = logits.dims2()?;
    if first + 1 >= seq {
        return Err(Error::Invalid(format!(
            "no position to score: window of {seq} tokens scored from {first}"
        )));
    }
    if seq != ids.len() {
        return Err(Error::Invalid(format!(
            "{seq} rows of logits for {} tokens",
            ids.len()
        )));
    }
    rows_nll(
        &logits.narrow(0, first, seq - 1 - first)?,
        &ids[first + 1..],
    )
}

/// Sum of negative log-likelihoods of `targets`, row `i` of `logits` `[targets.len(), vocab]`
/// predicting `targets[i]`; every target is checked against the vocabulary.
pub(crate) fn rows_nll(logits: &Tensor, targets: &[u32]) -> Result<f64> {
    let (rows, vocab) = logits.dims2()?;
    if rows != targets.len() {
        return Err(Error::Invalid(format!(
            "{rows} rows of logits for {} targets",
            targets.len()
        )));
    }
    if let Some(&bad) = targets.iter().find(|&&t| t as usize >= vocab) {
        return Err(Error::Invalid(format!(
            "token id {bad} is outside the model's vocabulary of {vocab}"
        )));
    }
    let flat = logits.flatten_all()?.to_vec1::<f32>()?;
    let total: f64 = flat
        .par_chunks_exact(vocab)
        .zip(targets)
        .map(|(row, &target)| log_sum_exp(row) - row[target as usize] as f64)
        .sum();
    if !total.is_finite() {
        // A perplexity of NaN is not a measurement: stop, and let the caller find the cause.
        return Err(Error::NonFinite {
            name: "logits".into(),
            origin: "the forward pass".into(),
            msg: "the model's next-token log-likelihoods are not finite (NaN or infinite \
                  weights, or activations that overflowed)"
                .into(),
        });
    }
    Ok(total)
}

/// `log(sum(exp(row)))`, stable: the maximum is subtracted before exponentiating.
fn log_sum_exp(row: &[f32]) -> f64 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = row.iter().map(|&x| (x - max).exp() as f64).sum();
    max as f64 + sum.ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_logits_give_log_vocab() {
        let logits = Tensor::zeros((4, 8), candle_core::DType::F32, &Device::Cpu).unwrap();
        let nll = window_nll(&logits, &[1, 2, 3, 4]).unwrap();
        assert!((nll - 3.0 * 8f64.ln()).abs() < 1e-9);
    }

    #[test]
    fn scoring_from_a_row_skips_the_earlier_predictions() {
        // Row 0 is confident and right; rows 1.. are uniform.
        let mut rows = vec![vec![0f32; 8]; 4];
        rows[0][1] = 20.0;
        let logits = Tensor::new(rows, &Device::Cpu).unwrap();
        let all = window_nll(&logits, &[0, 1, 2, 3]).unwrap();
        let tail = window_nll_from(&logits, &[0, 1, 2, 3], 2).unwrap();
        assert!((tail - 8f64.ln()).abs() < 1e-9, "{tail}");
        assert!((all - tail - 8f64.ln()).abs() < 1e-3, "{all}");
        assert!(window_nll_from(&logits, &[0, 1, 2, 3], 3).is_err());
    }

    #[test]
    fn hand_checked_row() {
        // Row 0 predicts token 1: logits [0, ln 3] -> p(1) = 3/4.
        let logits = Tensor::new(&[[0f32, 3f32.ln()], [0.0, 0.0]], &Device::Cpu).unwrap();
        let nll = window_nll(&logits, &[0, 1]).unwrap();
        assert!((nll - (4f64 / 3.0).ln()).abs() < 1e-6, "{nll}");
    }
}
