//! The report of a structured prune, beside the output: `OUT.report.json` and `OUT.report.md`.
//!
//! It says what was asked, what each remaining block kept (indices, so a result can be
//! reproduced or checked against an oracle), the block influence of every original block,
//! the importance metric by name, parameters and bytes before and after, and perplexities.

use std::path::{Path, PathBuf};

use anyhow::Result;
use microllm_io::Checkpoint;
use microllm_io::calibration::CalibrationSet;
use microllm_io::write::write_file_atomic;
use microllm_pipeline::structured::ImportanceMetric;
use microllm_prune::structured::{Scores, StructuredPlan, StructuredSpec};
use serde::Serialize;
use serde_json::{Value, json};

/// Parameters and bytes before and after.
#[derive(Debug, Clone, Serialize)]
pub struct SizeRecord {
    pub parameters_before: usize,
    pub parameters_after: usize,
    /// Tensor data of the unpruned model written the same way (format, dtype).
    pub tensor_bytes_before: u64,
    /// Tensor data of the pruned model.
    pub tensor_bytes_after: u64,
    /// The output as written (all files), once written.
    pub file_bytes: Option<u64>,
}

/// Perplexity of the original and the pruned model (reloaded from disk).
#[derive(Debug, Clone, Serialize)]
pub struct EvalRecord {
    pub data: String,
    pub original: microllm_eval::PerplexityResult,
    pub pruned: microllm_eval::PerplexityResult,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub schema_version: u32,
    pub microllm: &'static str,
    pub kind: &'static str,
    pub model: String,
    pub output: String,
    pub format: String,
    pub request: StructuredSpec,
    pub importance: Value,
    pub calibration: Option<Value>,
    pub config_before: Value,
    pub config_after: Value,
    pub size: SizeRecord,
    pub dropped_layers: Vec<usize>,
    /// Per original block: ShortGPT block influence (when measured).
    pub block_influence: Option<Vec<f64>>,
    pub layers: Vec<Value>,
    pub eval: Option<EvalRecord>,
    pub notes: Vec<String>,
    pub write_seconds: f64,
    pub total_seconds: f64,
}

fn config_summary(cfg: &microllm_core::ModelConfig) -> Value {
    json!({
        "model_type": cfg.family.model_type(),
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim,
    })
}

/// The calibration record: file, hash, windows.
pub fn calibration(args: &super::super::Args, set: &CalibrationSet) -> Value {
    json!({
        "path": args.calib.as_ref().map(|p| p.display().to_string()),
        "sha256": set.text_sha256,
        "windows": set.windows.len(),
        "requested": set.requested,
        "seqlen": set.seqlen,
        "tokens": set.tokens_used(),
        "seed": set.seed,
    })
}

impl Report {
    pub fn new(
        args: &super::super::Args,
        ckpt: &Checkpoint,
        spec: &StructuredSpec,
        metric: ImportanceMetric,
        format: String,
    ) -> Self {
        let mut notes = Vec::new();
        if ckpt.config.family == microllm_core::Family::Phi && spec.heads_keep < 1.0 {
            notes.push(
                "Phi with fewer heads: config.json states head_dim explicitly; loaders that \
                 derive it as hidden_size / num_attention_heads will not load this model"
                    .into(),
            );
        }
        Self {
            schema_version: 1,
            microllm: env!("CARGO_PKG_VERSION"),
            kind: "structured-prune",
            model: args.model.clone(),
            output: args.out.display().to_string(),
            format,
            request: *spec,
            importance: json!({ "metric": metric, "description": metric.describe() }),
            calibration: None,
            config_before: config_summary(&ckpt.config),
            config_after: Value::Null,
            size: SizeRecord {
                parameters_before: 0,
                parameters_after: 0,
                tensor_bytes_before: 0,
                tensor_bytes_after: 0,
                file_bytes: None,
            },
            dropped_layers: Vec::new(),
            block_influence: None,
            layers: Vec::new(),
            eval: None,
            notes,
            write_seconds: 0.0,
            total_seconds: 0.0,
        }
    }

    pub fn set_plan(&mut self, plan: &StructuredPlan, scores: &Scores) {
        self.config_after = config_summary(&plan.config);
        self.dropped_layers = plan.dropped.clone();
        self.block_influence = scores.block_influence.clone();
        self.layers = plan
            .layers
            .iter()
            .enumerate()
            .map(|(i, l)| {
                json!({
                    "layer": i,
                    "source_layer": l.source,
                    "mlp_channels": l.channels.len(),
                    "heads": l.heads.len(),
                    "kv_heads": l.kv_heads.len(),
                    "kept_channels": l.channels,
                    "kept_heads": l.heads,
                    "kept_kv_heads": l.kv_heads,
                })
            })
            .collect();
    }

    pub fn write(&self, out: &Path) -> Result<(PathBuf, PathBuf)> {
        let json_path = sibling(out, "report.json");
        let md_path = sibling(out, "report.md");
        let text = serde_json::to_string_pretty(self)? + "\n";
        for (path, body) in [(&json_path, text), (&md_path, self.markdown())] {
            write_file_atomic(path, |tmp| {
                std::fs::write(tmp, &body).map_err(|e| microllm_core::Error::io(tmp, e))
            })?;
        }
        Ok((json_path, md_path))
    }

    pub fn print_summary(&self) {
        let s = &self.size;
        println!(
            "wrote        {} ({:.1} MB; parameters {} -> {}, {:.1}%)",
            self.output,
            s.file_bytes.unwrap_or(0) as f64 / 1e6,
            s.parameters_before,
            s.parameters_after,
            100.0 * s.parameters_after as f64 / s.parameters_before.max(1) as f64
        );
        if let Some(e) = &self.eval {
            println!(
                "perplexity   {:.4} -> {:.4} on {} windows of {} tokens of {}",
                e.original.perplexity, e.pruned.perplexity, e.pruned.windows, e.pruned.ctx, e.data
            );
        }
    }

    fn markdown(&self) -> String {
        let s = &self.size;
        let mb = |b: u64| format!("{:.2} MB", b as f64 / 1e6);
        let mut md = format!(
            "# Structured pruning report\n\n\
             | | |\n|---|---|\n\
             | model | `{}` |\n| output | `{}` ({}) |\n| importance | {} |\n\
             | parameters | {} -> {} ({:.1}%) |\n\
             | tensor data | {} -> {} (saves {}) |\n| output files | {} |\n\
             | dropped blocks | {:?} |\n\n",
            self.model,
            self.output,
            self.format,
            self.importance["description"].as_str().unwrap_or_default(),
            s.parameters_before,
            s.parameters_after,
            100.0 * s.parameters_after as f64 / s.parameters_before.max(1) as f64,
            mb(s.tensor_bytes_before),
            mb(s.tensor_bytes_after),
            mb(s.tensor_bytes_before.saturating_sub(s.tensor_bytes_after)),
            s.file_bytes.map_or("-".into(), mb),
            self.dropped_layers,
        );
        md += "| config | before | after |\n|---|---|---|\n";
        if let Some(before) = self.config_before.as_object() {
            for (k, v) in before {
                md += &format!("| {k} | {v} | {} |\n", self.config_after[k]);
            }
        }
        if let Some(e) = &self.eval {
            md += &format!(
                "\n## Perplexity\n\n{} windows of {} tokens of `{}`: {:.4} -> {:.4}\n",
                e.pruned.windows, e.pruned.ctx, e.data, e.original.perplexity, e.pruned.perplexity
            );
        }
        if let Some(bi) = &self.block_influence {
            md += "\n## Block influence (1 - cos, mean over calibration tokens)\n\n| block | influence | |\n|---|---|---|\n";
            for (i, v) in bi.iter().enumerate() {
                let gone = if self.dropped_layers.contains(&i) {
                    "dropped"
                } else {
                    ""
                };
                md += &format!("| {i} | {v:.5} | {gone} |\n");
            }
        }
        md += "\n## Kept per block\n\n| block | from | MLP channels | heads | KV heads |\n|---|---|---|---|---|\n";
        for l in &self.layers {
            md += &format!(
                "| {} | {} | {} | {} {} | {} |\n",
                l["layer"],
                l["source_layer"],
                l["mlp_channels"],
                l["heads"],
                l["kept_heads"],
                l["kv_heads"]
            );
        }
        for n in &self.notes {
            md += &format!("\nNote: {n}\n");
        }
        md
    }
}

/// `OUT.report.json` beside a directory, `NAME.report.json` for `NAME.gguf`.
fn sibling(out: &Path, suffix: &str) -> PathBuf {
    let stem = match out.extension() {
        Some(e) if e.eq_ignore_ascii_case("gguf") => out.with_extension(""),
        _ => out.to_path_buf(),
    };
    let mut name = stem.file_name().unwrap_or_default().to_os_string();
    name.push(".");
    name.push(suffix);
    stem.with_file_name(name)
}
