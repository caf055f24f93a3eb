//! A compressed model against its original on the same tokens: perplexity of both, the KL
//! divergence of the compressed model's next-token distribution from the original's, and how
//! often both put the same token first.
//!
//! Both models run window by window side by side, and their output heads
//! `COMPARE_ROWS` (256) rows at a time, so no window's logits are held whole (a window of
//! SmolLM2's 49,152-token vocabulary is 100 MB of f32); the price is both decoders in memory
//! at once. Windows and scored positions are exactly those of
//! [`perplexity`](crate::perplexity): row `t` of a window predicts token `t + 1`, rows
//! `0..ctx-1` are scored.

use std::time::Instant;

use candle_core::{Device, Tensor};
use microllm_core::{Error, Progress, Result};
use microllm_models::Decoder;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::perplexity::{PerplexityOptions, PerplexityResult, rows_nll};

/// Rows of the output head per product. Larger than `eval`'s
/// [`HEAD_ROWS`](crate::perplexity::HEAD_ROWS): a packed head with f32 activations (how
/// reports run GGUF files) is decoded once per product. On a Qwen2.5-0.5B report (8 windows,
/// 151,936 x 896 Q8_0 head) the two models' evaluation took 64.0 s whole-window, 86.7 s at 64
/// rows (8 decodes a window) and 70.0 s at 256 (two), with peaks of 2.44, 1.38 and 1.83 GB.
const COMPARE_ROWS: usize = 256;

/// The outcome of a comparison.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Comparison {
    /// The original model on these tokens.
    pub original: PerplexityResult,
    /// The compressed model on the same tokens.
    pub compressed: PerplexityResult,
    /// Mean over scored positions of KL(original || compressed), in nats.
    pub kl_divergence: f64,
    /// Fraction of scored positions where both models' most likely next token is the same.
    pub top1_agreement: f64,
}

/// Compares `compressed` with `original` on `tokens`.
pub fn compare(
    original: &Decoder,
    compressed: &Decoder,
    tokens: &[u32],
    opts: PerplexityOptions,
    progress: &dyn Progress,
) -> Result<Comparison> {
    let windows = opts.windows(tokens.len())?;
    progress.begin("comparing models", (windows * opts.ctx) as u64, "tokens");
    let (mut nll_a, mut nll_b, mut kl, mut agree) = (0f64, 0f64, 0f64, 0usize);
    let (mut secs_a, mut secs_b) = (0f64, 0f64);
    // Row `t` predicts token `t + 1`: rows `0..ctx - 1` are scored, COMPARE_ROWS at a time, so
    // neither model's logits exist for a whole window (two windows of a 152k-token
    // vocabulary are 0.6 GB of f32, and as much again in the copies the KL reads).
    let scored_rows = opts.ctx - 1;
    for window in tokens.chunks_exact(opts.ctx).take(windows) {
        let ids = Tensor::from_slice(window, (1, opts.ctx), &Device::Cpu)?;
        let t = Instant::now();
        let hidden_a = original.final_hidden(&ids)?;
        secs_a += t.elapsed().as_secs_f64();
        let t = Instant::now();
        let hidden_b = compressed.final_hidden(&ids)?;
        secs_b += t.elapsed().as_secs_f64();
        for offset in (0..scored_rows).step_by(COMPARE_ROWS) {
            let n = COMPARE_ROWS.min(scored_rows - offset);
            let targets = &window[offset + 1..offset + 1 + n];
            let t = Instant::now();
            let a = original.head(&hidden_a.narrow(1, offset, n)?)?.squeeze(0)?;
            secs_a += t.elapsed().as_secs_f64();
            let t = Instant::now();
            let b = compressed
                .head(&hidden_b.narrow(1, offset, n)?)?
                .squeeze(0)?;
            secs_b += t.elapsed().as_secs_f64();
            nll_a += rows_nll(&a, targets)?;
            nll_b += rows_nll(&b, targets)?;
            let (k, agreeing) = kl_and_agreement(&a, &b)?;
            kl += k;
            agree += agreeing;
        }
        progress.advance(opts.ctx as u64);
    }
    progress.finish();
    let scored = windows * (opts.ctx - 1);
    let result = |nll: f64, seconds: f64| {
        let mean_nll = nll / scored as f64;
        PerplexityResult {
            perplexity: mean_nll.exp(),
            mean_nll,
            ctx: opts.ctx,
            windows,
            scored_tokens: scored,
            text_tokens: tokens.len(),
            seconds,
            tokens_per_second: (windows * opts.ctx) as f64 / seconds.max(f64::MIN_POSITIVE),
        }
    };
    Ok(Comparison {
        original: result(nll_a, secs_a),
        compressed: result(nll_b, secs_b),
        kl_divergence: kl / scored as f64,
        top1_agreement: agree as f64 / scored as f64,
    })
}

/// Sum over the rows of KL(p || q) and the count of rows whose argmax agrees, for logits `a`
/// (p) and `b` (q) of shape `[rows, vocab]`.
fn kl_and_agreement(a: &Tensor, b: &Tensor) -> Result<(f64, usize)> {
    let (rows, vocab) = a.dims2()?;
    if b.dims2()? != (rows, vocab) {
        return Err(Error::Invalid(format!(
            "the models' logits differ in shape: {:?} and {:?}",
            a.dims(),
            b.dims()
        )));
    }
    let a = a.flatten_all()?.to_vec1::<f32>()?;
    let b = b.flatten_all()?.to_vec1::<f32>()?;
    let (kl, agree) = a
        .par_chunks_exact(vocab)
        .zip(b.par_chunks_exact(vocab))
        .map(|(p, q)| (row_kl(p, q), usize::from(argmax(p) == argmax(q))))
        .reduce(|| (0.0, 0), |x, y| (x.0 + y.0, x.1 + y.1));
    Ok((kl, agree))
}

/// KL(softmax(p) || softmax(q)) in nats, computed from log-softmaxes in f64.
fn row_kl(p: &[f32], q: &[f32]) -> f64 {
    let lse = |r: &[f32]| {
        let m = r.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        m + r.iter().map(|&x| (x as f64 - m).exp()).sum::<f64>().ln()
    };
    let (lp, lq) = (lse(p), lse(q));
    p.iter()
        .zip(q)
        .map(|(&x, &y)| {
            let log_p = x as f64 - lp;
            log_p.exp() * (log_p - (y as f64 - lq))
        })
        .sum::<f64>()
        .max(0.0)
}

fn argmax(r: &[f32]) -> usize {
    r.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |best, (i, &x)| {
            if x > best.1 { (i, x) } else { best }
        })
        .0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_rows_have_zero_kl_and_agree() {
        let p = [0.5f32, -1.0, 2.0, 0.0];
        assert!(row_kl(&p, &p).abs() < 1e-12);
        assert_eq!(argmax(&p), 2);
    }

    #[test]
    fn hand_checked_kl() {
        // p = softmax([0, ln 3]) = [1/4, 3/4], q = uniform [1/2, 1/2]:
        // KL = 1/4 ln(1/2) + 3/4 ln(3/2).
        let p = [0f32, 3f32.ln()];
        let q = [0f32, 0.0];
        let want = 0.25 * 0.5f64.ln() + 0.75 * 1.5f64.ln();
        assert!((row_kl(&p, &q) - want).abs() < 1e-6, "{}", row_kl(&p, &q));
        let a = Tensor::new(&[[0f32, 3f32.ln()], [1.0, 0.0]], &Device::Cpu).unwrap();
        let b = Tensor::new(&[[0f32, 0.0], [0.0, 1.0]], &Device::Cpu).unwrap();
        let (kl, agree) = kl_and_agreement(&a, &b).unwrap();
        // Every row given counts; row 1: p = softmax([1, 0]), q = softmax([0, 1]), so
        // KL = p0 ln e + p1 ln(1/e) = (e - 1) / (e + 1).
        let e = std::f64::consts::E;
        assert!((kl - want - (e - 1.0) / (e + 1.0)).abs() < 1e-6, "{kl}");
        // Row 0: argmax 1 vs 0 (ties go to the first); row 1: 0 vs 1.
        assert_eq!(agree, 0);
    }
}
