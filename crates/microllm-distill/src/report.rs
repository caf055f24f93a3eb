//! The distillation report: a plain serde structure, written as JSON and Markdown.
//!
//! Kept free of behaviour so that other reports (the YAML pipelines') can embed it whole.

use std::fmt::Write as _;
use std::path::Path;

use microllm_core::{Error, Result};
use serde::{Deserialize, Serialize};

use crate::loss::LogitMix;
use crate::train::TrainSettings;

/// Version of the report's layout.
pub const REPORT_SCHEMA: u32 = 1;

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

/// A model on either side of the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelRecord {
    pub spec: String,
    pub family: String,
    pub layers: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub parameters: usize,
}

/// How the student was made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StudentRecord {
    pub model: ModelRecord,
    /// `checkpoint` or `from-teacher: drop-layers=6,...`.
    pub init: String,
    /// Original indices of the teacher's blocks removed (derived students).
    pub dropped_blocks: Vec<usize>,
    /// The teacher block each student block came from (derived students).
    pub source_blocks: Vec<usize>,
    pub trainable_parameters: usize,
}

/// The training data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataInfo {
    pub path: String,
    pub sha256: String,
    pub windows: usize,
    pub seqlen: usize,
    /// `store DIR` or `live teacher` or `labels only`.
    pub targets: String,
    pub store_bytes_per_token: Option<f64>,
}

/// The held-out set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalInfo {
    pub path: String,
    pub ctx: usize,
    pub windows: usize,
}

/// The whole run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DistillReport {
    pub schema_version: u32,
    pub microllm_version: String,
    pub kind: String,
    pub teacher: Option<ModelRecord>,
    pub student: StudentRecord,
    pub data: DataInfo,
    pub settings: TrainSettings,
    pub eval: Option<EvalInfo>,
    /// Perplexity of the initial student.
    pub eval_before: Option<EvalPoint>,
    /// Periodic evaluations, the last after the final step.
    pub evals: Vec<EvalPoint>,
    pub curve: Vec<StepRecord>,
    pub steps: u64,
    pub tokens: u64,
    /// Seconds in training steps (no evaluation, no writing).
    pub train_seconds: f64,
    pub eval_seconds: f64,
    pub total_seconds: f64,
    pub tokens_per_second: f64,
    /// The step a resumed run continued from.
    pub resumed_at_step: Option<u64>,
    pub output: String,
}

impl DistillReport {
    /// Writes `OUT.report.json` and `OUT.report.md` beside the output `out`.
    pub fn write(&self, out: &Path) -> Result<(std::path::PathBuf, std::path::PathBuf)> {
        let json_path = sibling(out, "report.json");
        let md_path = sibling(out, "report.md");
        let json = serde_json::to_string_pretty(self)
            .map_err(|e| Error::Invalid(format!("serialising the report: {e}")))?;
        microllm_io::write::write_file_atomic(&json_path, |tmp| {
            std::fs::write(tmp, json + "\n").map_err(|e| Error::io(tmp, e))
        })?;
        let md = self.markdown();
        microllm_io::write::write_file_atomic(&md_path, |tmp| {
            std::fs::write(tmp, &md).map_err(|e| Error::io(tmp, e))
        })?;
        Ok((json_path, md_path))
    }

    /// The report as Markdown.
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "# Distillation report\n");
        let _ = writeln!(s, "| | |\n|---|---|");
        if let Some(t) = &self.teacher {
            let _ = writeln!(
                s,
                "| teacher | {} ({}, {} blocks, {} parameters) |",
                t.spec, t.family, t.layers, t.parameters
            );
        }
        let st = &self.student;
        let _ = writeln!(
            s,
            "| student | {} ({} blocks, {} parameters, {} trained); init: {} |",
            st.model.spec, st.model.layers, st.model.parameters, st.trainable_parameters, st.init
        );
        if !st.dropped_blocks.is_empty() {
            let _ = writeln!(s, "| dropped teacher blocks | {:?} |", st.dropped_blocks);
        }
        let d = &self.data;
        let _ = writeln!(
            s,
            "| data | {} ({} windows of {}; sha256 {}) |",
            d.path, d.windows, d.seqlen, d.sha256
        );
        let _ = writeln!(s, "| targets | {} |", d.targets);
        if let Some(b) = d.store_bytes_per_token {
            let _ = writeln!(s, "| store size | {b:.1} bytes per token |");
        }
        let t = &self.settings;
        let _ = writeln!(
            s,
            "| loss | {} at temperature {} |",
            describe_mix(&t.mix, t.hidden_weight),
            t.mix.temperature
        );
        let _ = writeln!(
            s,
            "| optimizer | AdamW lr {} (warmup {}, cosine to {}x), clip {}, batch {} x {} tokens x {} accumulation, seed {} |",
            t.lr,
            t.warmup_steps,
            t.min_lr_ratio,
            t.clip_norm,
            t.batch,
            t.seqlen,
            t.accumulation,
            t.seed
        );
        let _ = writeln!(
            s,
            "| run | {} steps, {} tokens, {:.0} s training ({:.1} tokens/s), {:.0} s evaluating, {:.0} s total |",
            self.steps,
            self.tokens,
            self.train_seconds,
            self.tokens_per_second,
            self.eval_seconds,
            self.total_seconds
        );
        if let Some(r) = self.resumed_at_step {
            let _ = writeln!(s, "| resumed | at step {r} |");
        }
        let _ = writeln!(s, "| output | {} |", self.output);
        if let Some(e) = &self.eval {
            let _ = writeln!(
                s,
                "\n## Held-out perplexity ({}, {} windows of {})\n",
                e.path, e.windows, e.ctx
            );
            let _ = writeln!(
                s,
                "| model | step | tokens | training s | perplexity |\n|---|---|---|---|---|"
            );
            if let Some(p) = &self.eval_before {
                let _ = writeln!(s, "| student before | 0 | 0 | 0 | {:.4} |", p.perplexity);
            }
            for p in &self.evals {
                let _ = writeln!(
                    s,
                    "| student | {} | {} | {:.0} | {:.4} |",
                    p.step, p.tokens, p.train_seconds, p.perplexity
                );
            }
        }
        let _ = writeln!(s, "\n## Training curve\n");
        let _ = writeln!(
            s,
            "| step | tokens | loss | kl | ce | lr | grad norm | tokens/s |\n|---|---|---|---|---|---|---|---|"
        );
        let every = (self.curve.len() / 40).max(1);
        for (i, r) in self.curve.iter().enumerate() {
            if i % every == 0 || i + 1 == self.curve.len() {
                let _ = writeln!(
                    s,
                    "| {} | {} | {:.4} | {:.4} | {:.4} | {:.2e} | {:.3} | {:.1} |",
                    r.step, r.tokens, r.loss, r.kl, r.ce, r.lr, r.grad_norm, r.tokens_per_second
                );
            }
        }
        s
    }
}

/// `kl:1,ce:0.1`-style description of a loss mix.
pub fn describe_mix(mix: &LogitMix, hidden: f64) -> String {
    let parts: Vec<String> = [
        ("kl", mix.kl),
        ("reverse-kl", mix.reverse_kl),
        ("jsd", mix.jsd),
        ("ce", mix.ce),
        ("hidden", hidden),
    ]
    .iter()
    .filter(|(_, w)| *w != 0.0)
    .map(|(n, w)| format!("{n}:{w}"))
    .collect();
    parts.join(",")
}

/// `OUT.suffix` beside `out` (a directory or file).
fn sibling(out: &Path, suffix: &str) -> std::path::PathBuf {
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into());
    out.with_file_name(format!("{name}.{suffix}"))
}
