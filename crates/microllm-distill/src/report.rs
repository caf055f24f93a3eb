//! What training records as it goes: every optimizer step and every held-out evaluation.
//!
//! Plain serde structures without behaviour: checkpoints carry them (so a resumed run's
//! curves are whole) and the pipeline's report embeds them in its distill record.

use serde::{Deserialize, Serialize};

/// One optimizer step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    pub step: u64,
    /// Training tokens seen after this step.
    pub tokens: u64,
    /// The weighted loss.
    pub loss: f64,
    /// Unweighted terms (divergences at temperature, before `τ²`).
    pub kl: f64,
    pub reverse_kl: f64,
    pub jsd: f64,
    pub ce: f64,
    /// Hidden-state loss (weighted sum over mapped layers, unweighted by its mix weight).
    pub hidden: f64,
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    pub tokens_per_second: f64,
}

/// One held-out evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalPoint {
    pub step: u64,
    pub tokens: u64,
    /// Seconds of training (steps only) before this evaluation.
    pub train_seconds: f64,
    pub perplexity: f64,
    pub mean_nll: f64,
    pub seconds: f64,
}
