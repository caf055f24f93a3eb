//! The `distill` pass's options: training the model as it stands (usually a structurally
//! pruned one) to match a teacher: the recipe's original model, or the one `teacher` names.
//!
//! The pass is planned and ordered here and trained by `microllm-distill`'s trainer (the
//! runner's `run::distill`). `microllm distill` is this pass in a one-pass recipe, so both
//! roads share every check, the resume logic and the report.

use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Teacher-student training against the recipe's model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DistillStage {
    /// The model to match: a directory, a .gguf file or a hub id; the recipe's model (after
    /// any `structured_prune`) is then the student [default: the recipe's model is the
    /// teacher, and what the passes before this one made of it the student].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub teacher: Option<String>,
    /// Training text (UTF-8, or .safetensors with int64 `input_ids`), cut into windows of
    /// `seqlen` tokens [default: `calibration.data`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<PathBuf>,
    /// A teacher-logit store made from `data` by `microllm distill logits` with the recipe's
    /// model as the teacher [default: the teacher runs live beside the student].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logits: Option<PathBuf>,
    /// Loss terms and their weights [default: `{kl: 1}`].
    #[serde(default)]
    pub loss: DistillLoss,
    /// Temperature of the divergences (scaled by T²); a store fixes it.
    #[serde(default = "one")]
    pub temperature: f64,
    /// Optimizer steps (give this or `tokens`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<u64>,
    /// Training tokens, rounded up to whole steps (give this or `steps`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<u64>,
    /// Peak learning rate (AdamW).
    #[serde(default = "default_lr")]
    pub lr: f64,
    /// Linear warmup steps.
    #[serde(default = "ten")]
    pub warmup_steps: u64,
    /// The cosine schedule ends at this fraction of `lr`.
    #[serde(default = "tenth")]
    pub min_lr_ratio: f64,
    /// Windows per micro-batch.
    #[serde(default = "eight")]
    pub batch: usize,
    /// Tokens per training window.
    #[serde(default = "default_seqlen")]
    pub seqlen: usize,
    /// Micro-batches per optimizer step (gradient accumulation).
    #[serde(default = "one_usize")]
    pub accumulation: usize,
    /// Global gradient-norm limit.
    #[serde(default = "one")]
    pub clip: f64,
    /// AdamW weight decay (matrices only).
    #[serde(default)]
    pub weight_decay: f64,
    /// How AdamW stores its two moments: bf16 (stochastically rounded, half the optimizer's
    /// memory) or f32.
    #[serde(default)]
    pub moments: MomentStorage,
    /// Seed of the data order.
    #[serde(default)]
    pub seed: u64,
    /// Keep the token embedding and the output head fixed (much faster with a large
    /// vocabulary).
    #[serde(default)]
    pub freeze_embeddings: bool,
    /// Keep the first N blocks fixed.
    #[serde(default)]
    pub freeze_blocks: usize,
    /// Block pairs `student:teacher` ("0:1,5:11") compared by a hidden-state loss [default:
    /// the teacher block each block of a structured student came from, else evenly spread].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer_map: Option<String>,
    /// Learn a projection from the student's hidden width to the teacher's (required for a
    /// hidden-state loss when they differ).
    #[serde(default)]
    pub hidden_projection: bool,
    /// Held-out perplexity on `evaluation.data` every N steps, for the report's curve
    /// (0: before and after training only).
    #[serde(default)]
    pub eval_every: u64,
    /// Checkpoint every N steps (optimizer state included), so `--resume` continues a killed
    /// run from there.
    #[serde(default = "fifty")]
    pub checkpoint_every: u64,
}

/// The precision of AdamW's moments.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum MomentStorage {
    #[default]
    Bf16,
    F32,
}

/// Weights of the logit-loss terms; the ones not given are 0.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DistillLoss {
    /// Forward KL(teacher || student).
    #[serde(default)]
    pub kl: f64,
    /// Reverse KL(student || teacher) (live teacher only).
    #[serde(default)]
    pub reverse_kl: f64,
    /// Jensen-Shannon divergence (live teacher only).
    #[serde(default)]
    pub jsd: f64,
    /// Cross-entropy on the next token (no teacher needed).
    #[serde(default)]
    pub ce: f64,
    /// Mean squared error between student and teacher block outputs (live teacher only).
    #[serde(default)]
    pub hidden_mse: f64,
    /// Mean `1 - cos` between student and teacher block outputs (live teacher only).
    #[serde(default)]
    pub hidden_cos: f64,
}

impl Default for DistillLoss {
    fn default() -> Self {
        Self {
            kl: 1.0,
            reverse_kl: 0.0,
            jsd: 0.0,
            ce: 0.0,
            hidden_mse: 0.0,
            hidden_cos: 0.0,
        }
    }
}

impl DistillLoss {
    /// `kl:1,ce:0.1`: the terms with a weight, as the `distill` command's `--loss` spells them.
    pub fn describe(&self) -> String {
        let terms = [
            ("kl", self.kl),
            ("reverse-kl", self.reverse_kl),
            ("jsd", self.jsd),
            ("ce", self.ce),
            ("hidden-mse", self.hidden_mse),
            ("hidden-cos", self.hidden_cos),
        ];
        let named: Vec<String> = terms
            .iter()
            .filter(|(_, w)| *w != 0.0)
            .map(|(n, w)| format!("{n}:{w}"))
            .collect();
        named.join(",")
    }

    /// Whether any term compares with the teacher's distribution.
    pub fn uses_teacher(&self) -> bool {
        self.kl != 0.0 || self.reverse_kl != 0.0 || self.jsd != 0.0
    }

    /// Whether a term compares hidden states (a live teacher's: a store holds none).
    pub fn uses_hidden(&self) -> bool {
        self.hidden_mse != 0.0 || self.hidden_cos != 0.0
    }
}

fn one() -> f64 {
    1.0
}

fn one_usize() -> usize {
    1
}

fn default_lr() -> f64 {
    2e-4
}

fn ten() -> u64 {
    10
}

fn tenth() -> f64 {
    0.1
}

fn eight() -> usize {
    8
}

fn default_seqlen() -> usize {
    256
}

fn fifty() -> u64 {
    50
}
