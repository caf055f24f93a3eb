//! The one report every run ends with, and its renderings.
//!
//! [`CompressionReport`] is versioned ([`REPORT_SCHEMA_VERSION`]) and holds the inputs'
//! hashes, the recipe as run, a record per pass and per linear layer, the fallbacks, timings
//! and metrics, and the gates with their verdicts. It is written as JSON (for machines:
//! `STEM.report.json`), Markdown (for people and CI job summaries: `STEM.report.md`) and a
//! self-contained HTML page with inline SVG charts (`STEM.report.html`, no network needed to
//! view it). A sweep adds one [`SweepReport`] comparing its variants.
//!
//! Rendering is pure (`to_json`, [`markdown`], [`html`] return strings); [`write_report`]
//! puts the files in place atomically.

mod html;
mod junit;
mod markdown;
mod records;
mod svg;
mod sweep;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use microllm_core::{Error, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use html::html;
pub use junit::junit_xml;
pub use markdown::markdown;
pub use records::*;
pub use sweep::{SweepReport, SweepVariant};

use crate::recipe::{Gate, ReportFormat};

/// Version of the report's JSON layout (docs/recipes.md describes it). 2: the distill record
/// became the one report of distillation (`losses` replaced by the per-step `curve`).
pub const REPORT_SCHEMA_VERSION: u32 = 2;

/// Everything a run did and measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CompressionReport {
    pub schema_version: u32,
    pub microllm_version: String,
    /// The recipe's name (or file name).
    pub name: String,
    /// The command line of the run.
    pub command: Vec<String>,
    /// A sweep variant's settings (`{"bits": 3}`); empty otherwise.
    pub variant: BTreeMap<String, Value>,
    /// The recipe as run, defaults filled in.
    pub recipe: Value,
    pub recipe_sha256: String,
    pub model: ModelRecord,
    pub calibration: Option<CalibrationRecord>,
    pub evaluation: Option<EvalDataRecord>,
    /// What compressed the model: `gptq`, `rtn`, `wanda`, `structured+gptq`, `ggml-rtn`, ...
    pub method: String,
    /// The layerwise sweep's settings (null without one).
    pub scheme: Value,
    pub passes: Vec<PassRecord>,
    /// One record per linear of the layerwise sweep, in block order.
    pub layers: Vec<LayerRecord>,
    pub block_seconds: Vec<f64>,
    /// Where the blocks computed in this run spent their time: staged forward passes, input
    /// statistics (Hessians), solves. Absent without a layerwise sweep.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_phase_seconds: Option<microllm_engine::BlockPhases>,
    /// Blocks taken from a killed run's work directory.
    pub resumed_blocks: usize,
    pub structure: Option<StructureRecord>,
    /// The distill pass's training, if the recipe has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distill: Option<DistillRecord>,
    pub size: SizeRecord,
    pub output: OutputRecord,
    pub fallbacks: Vec<FallbackRecord>,
    pub notes: Vec<String>,
    /// The final eval (of the written output), if the recipe has one.
    pub eval: Option<EvalRecord>,
    /// Every metric a gate can name that this run measured (docs/recipes.md).
    pub metrics: BTreeMap<String, f64>,
    pub gates: Vec<GateResult>,
    /// All gates passed (true without gates).
    pub gates_passed: bool,
    /// Peak resident memory of the process (VmHWM), bytes.
    pub peak_rss_bytes: Option<u64>,
    pub total_seconds: f64,
}

impl CompressionReport {
    /// Computes `metrics` from the records.
    pub fn compute_metrics(&mut self) {
        let mut m = BTreeMap::new();
        let o = &self.output;
        m.insert("size_mb".into(), o.bytes as f64 / 1e6);
        m.insert("bits_per_weight".into(), o.bits_per_weight);
        m.insert("parameters".into(), o.parameters as f64);
        if let Some(s) = o.linear_sparsity {
            m.insert("sparsity".into(), s);
        }
        m.insert("wall_s".into(), self.total_seconds);
        if let Some(b) = self.peak_rss_bytes {
            m.insert("peak_rss_mb".into(), b as f64 / 1e6);
        }
        if let Some(d) = &self.distill {
            m.insert("distill_tokens_per_s".into(), d.tokens_per_second);
            if let Some(last) = d.evals.last() {
                m.insert("distill_ppl".into(), last.perplexity);
            }
        }
        if let Some(e) = &self.eval {
            m.insert("ppl".into(), e.compressed.perplexity);
            m.insert("ppl_base".into(), e.original.perplexity);
            m.insert("ppl_increase".into(), e.increase);
            m.insert("ppl_increase_pct".into(), e.increase_pct);
            m.insert("kl".into(), e.kl_divergence);
            m.insert("top1_agreement".into(), e.top1_agreement);
            m.insert("eval_tokens_per_s".into(), e.compressed.tokens_per_second);
            task_metrics(&e.tasks, &mut m);
        }
        self.metrics = m;
    }

    /// Evaluates `gates` on the metrics (call [`compute_metrics`](Self::compute_metrics)
    /// first).
    pub fn evaluate_gates(&mut self, gates: &[Gate]) {
        self.gates = gates
            .iter()
            .map(|g| {
                let value = self.metrics.get(&g.metric).copied();
                GateResult {
                    gate: g.expression(),
                    metric: g.metric.clone(),
                    op: g.op.symbol().to_string(),
                    threshold: g.threshold,
                    value,
                    passed: g.check(value),
                }
            })
            .collect();
        self.gates_passed = self.gates.iter().all(|g| g.passed);
    }

    /// The report as pretty JSON (ending in a newline).
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("reports serialize") + "\n"
    }
}

/// The task-accuracy metrics (recipe/gate.rs `TASK_METRICS`): each task's under its name,
/// and their means over the tasks that have them.
fn task_metrics(tasks: &[records::TaskRecord], m: &mut BTreeMap<String, f64>) {
    let mut sums: BTreeMap<&str, (f64, usize)> = BTreeMap::new();
    for t in tasks {
        let values = [
            ("acc", Some(t.acc)),
            ("acc_base", Some(t.acc_base)),
            ("acc_drop", Some(t.acc_drop)),
            ("acc_norm", t.acc_norm),
            ("acc_norm_base", t.acc_norm_base),
            ("acc_norm_drop", t.acc_norm_drop),
        ];
        for (name, value) in values {
            if let Some(v) = value {
                m.insert(format!("{}.{name}", t.task), v);
                let s = sums.entry(name).or_default();
                *s = (s.0 + v, s.1 + 1);
            }
        }
    }
    for (name, (sum, n)) in sums {
        m.insert(name.to_string(), sum / n as f64);
    }
}

/// `STEM.report.EXT`.
pub fn report_path(stem: &Path, ext: &str) -> PathBuf {
    let mut name = stem.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".report.{ext}"));
    stem.with_file_name(name)
}

/// Writes the asked renderings of `report` beside `stem`, atomically; returns their paths.
pub fn write_report(
    report: &CompressionReport,
    stem: &Path,
    formats: &[ReportFormat],
) -> Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    for f in formats {
        let body = match f {
            ReportFormat::Json => report.to_json(),
            ReportFormat::Md => markdown(report),
            ReportFormat::Html => html(report),
        };
        let path = report_path(stem, f.extension());
        write_text(&path, &body)?;
        written.push(path);
    }
    Ok(written)
}

/// Writes a text file atomically.
pub fn write_text(path: &Path, body: &str) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    microllm_io::write::write_file_atomic(path, |tmp| {
        std::fs::write(tmp, body).map_err(|e| Error::io(tmp, e))
    })
}

/// Escapes text for HTML and XML.
pub(crate) fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}
