//! The comparison report of a sweep: every variant's settings, size, quality and gates, and
//! the size against perplexity Pareto front (variants no other variant beats in both).

use std::fmt::Write as _;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::html::{page_end, page_start};
use super::svg::{pareto_chart, pareto_front};
use super::{CompressionReport, REPORT_SCHEMA_VERSION, escape};

/// One variant of a sweep.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SweepVariant {
    pub label: String,
    pub settings: Value,
    pub report: PathBuf,
    pub output: PathBuf,
    pub metrics: std::collections::BTreeMap<String, f64>,
    pub gates_passed: bool,
}

/// The sweep's comparison.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SweepReport {
    pub schema_version: u32,
    pub kind: String,
    pub microllm_version: String,
    pub name: String,
    pub variants: Vec<SweepVariant>,
    /// Indices of the variants on the size-perplexity Pareto front (with perplexity measured).
    pub pareto_front: Vec<usize>,
}

impl SweepReport {
    pub fn new(name: &str, reports: &[(CompressionReport, PathBuf)]) -> Self {
        let variants: Vec<SweepVariant> = reports
            .iter()
            .map(|(r, path)| SweepVariant {
                label: r
                    .variant
                    .iter()
                    .map(|(k, v)| format!("{k}={}", v.as_str().map_or(v.to_string(), String::from)))
                    .collect::<Vec<_>>()
                    .join(","),
                settings: serde_json::to_value(&r.variant).expect("values serialize"),
                report: path.clone(),
                output: r.output.path.clone(),
                metrics: r.metrics.clone(),
                gates_passed: r.gates_passed,
            })
            .collect();
        let points: Vec<(f64, f64)> = variants
            .iter()
            .map(|v| {
                (
                    v.metrics.get("size_mb").copied().unwrap_or(f64::NAN),
                    v.metrics.get("ppl").copied().unwrap_or(f64::NAN),
                )
            })
            .collect();
        Self {
            schema_version: REPORT_SCHEMA_VERSION,
            kind: "sweep".into(),
            microllm_version: env!("CARGO_PKG_VERSION").into(),
            name: name.into(),
            pareto_front: pareto_front(&points),
            variants,
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("reports serialize") + "\n"
    }

    fn metric(v: &SweepVariant, k: &str) -> String {
        v.metrics
            .get(k)
            .map_or("-".into(), |x| super::svg::format_number(*x))
    }

    pub fn markdown(&self) -> String {
        let mut md = format!("# microllm sweep: {}\n\n", self.name);
        md += "| variant | size MB | bits/weight | perplexity | ppl increase % | KL | top-1 | gates | Pareto |\n|---|---|---|---|---|---|---|---|---|\n";
        for (i, v) in self.variants.iter().enumerate() {
            let _ = writeln!(
                md,
                "| `{}` | {} | {} | {} | {} | {} | {} | {} | {} |",
                v.label,
                Self::metric(v, "size_mb"),
                Self::metric(v, "bits_per_weight"),
                Self::metric(v, "ppl"),
                Self::metric(v, "ppl_increase_pct"),
                Self::metric(v, "kl"),
                Self::metric(v, "top1_agreement"),
                if v.gates_passed { "pass" } else { "**FAIL**" },
                if self.pareto_front.contains(&i) {
                    "yes"
                } else {
                    ""
                }
            );
        }
        md
    }

    pub fn html(&self) -> String {
        let mut h = page_start(&format!("microllm sweep: {}", self.name));
        let _ = writeln!(h, "<h1>microllm sweep: {}</h1>", escape(&self.name));
        let points: Vec<(String, f64, f64)> = self
            .variants
            .iter()
            .map(|v| {
                (
                    v.label.clone(),
                    v.metrics.get("size_mb").copied().unwrap_or(f64::NAN),
                    v.metrics.get("ppl").copied().unwrap_or(f64::NAN),
                )
            })
            .collect();
        if points.iter().any(|p| p.2.is_finite()) {
            h.push_str("<h2>Size against perplexity</h2>");
            h.push_str(&pareto_chart(
                "Size vs perplexity (Pareto front)",
                "size MB",
                "perplexity",
                &points,
            ));
        } else {
            h.push_str("<p class=\"muted\">No variant measured perplexity (add an eval pass) — no Pareto front.</p>");
        }
        h.push_str("<h2>Variants</h2><table class=\"sortable\"><thead><tr><th>variant</th><th>size MB</th><th>bits/weight</th><th>perplexity</th><th>ppl increase %</th><th>KL</th><th>top-1</th><th>gates</th><th>Pareto</th><th>report</th></tr></thead><tbody>");
        for (i, v) in self.variants.iter().enumerate() {
            let report = v
                .report
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let _ = write!(
                h,
                "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td><span class=\"{}\">{}</span></td><td>{}</td><td><a href=\"{}\">{}</a></td></tr>",
                escape(&v.label),
                Self::metric(v, "size_mb"),
                Self::metric(v, "bits_per_weight"),
                Self::metric(v, "ppl"),
                Self::metric(v, "ppl_increase_pct"),
                Self::metric(v, "kl"),
                Self::metric(v, "top1_agreement"),
                if v.gates_passed { "pass" } else { "fail" },
                if v.gates_passed { "PASS" } else { "FAIL" },
                if self.pareto_front.contains(&i) {
                    "yes"
                } else {
                    ""
                },
                escape(&report),
                escape(&report)
            );
        }
        h.push_str("</tbody></table>\n");
        h.push_str(&page_end());
        h
    }
}
