//! The quantization report: JSON for machines (CI gates, dashboards), Markdown for people,
//! written atomically beside the output as `OUT.report.json` / `OUT.report.md`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Result;
use microllm_core::{Family, names};
use microllm_eval::PerplexityResult;
use microllm_io::Checkpoint;
use microllm_io::calibration::CalibrationSet;
use microllm_io::write::write_file_atomic;
use microllm_pipeline::LayerwiseSummary;
use microllm_quant::{GptqOptions, QuantScheme};
use serde::Serialize;
use serde_json::{Value, json};

use super::Method;
use super::plan::TensorPlan;

#[derive(Debug, Serialize)]
pub struct CalibrationRecord {
    pub file: Option<PathBuf>,
    pub sha256: String,
    pub samples_requested: usize,
    pub samples_used: usize,
    pub seqlen: usize,
    pub tokens_used: usize,
    pub tokens_in_file: usize,
    pub seed: u64,
    pub shortfall: usize,
}

impl CalibrationRecord {
    pub fn new(file: Option<&Path>, set: &CalibrationSet) -> Self {
        Self {
            file: file.map(Path::to_path_buf),
            sha256: set.text_sha256.clone(),
            samples_requested: set.requested,
            samples_used: set.windows.len(),
            seqlen: set.seqlen,
            tokens_used: set.tokens_used(),
            tokens_in_file: set.text_tokens,
            seed: set.seed,
            shortfall: set.shortfall(),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct EvalRecord {
    pub data: PathBuf,
    pub original: PerplexityResult,
    pub quantized: PerplexityResult,
    /// `quantized - original` perplexity.
    pub increase: f64,
}

impl EvalRecord {
    pub fn new(data: &Path, original: PerplexityResult, quantized: PerplexityResult) -> Self {
        Self {
            data: data.to_path_buf(),
            increase: quantized.perplexity - original.perplexity,
            original,
            quantized,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub microllm_version: &'static str,
    pub command: Vec<String>,
    pub model: Value,
    pub method: String,
    pub scheme: Value,
    pub calibration: Option<CalibrationRecord>,
    pub output: Value,
    pub layers: Vec<Value>,
    pub block_seconds: Vec<f64>,
    pub resumed_blocks: usize,
    pub fallbacks: Vec<Value>,
    pub notes: Vec<String>,
    pub eval: Option<EvalRecord>,
    pub total_seconds: f64,
}

impl Report {
    pub fn new(spec: &str, ckpt: &Checkpoint, out: &Path) -> Self {
        let cfg = &ckpt.config;
        Self {
            microllm_version: env!("CARGO_PKG_VERSION"),
            command: std::env::args().collect(),
            model: json!({
                "spec": spec,
                "path": ckpt.path,
                "family": cfg.family.to_string(),
                "layers": cfg.num_layers,
                "hidden_size": cfg.hidden_size,
                "parameters": ckpt.tensors.infos().iter().map(|i| i.numel()).sum::<usize>(),
                "stored_bytes": ckpt.stored_bytes(),
            }),
            method: String::new(),
            scheme: Value::Null,
            calibration: None,
            output: json!({ "path": out }),
            layers: Vec::new(),
            block_seconds: Vec::new(),
            resumed_blocks: 0,
            fallbacks: Vec::new(),
            notes: Vec::new(),
            eval: None,
            total_seconds: 0.0,
        }
    }

    pub fn set_scheme(&mut self, method: Method, s: &QuantScheme, gptq: Option<GptqOptions>) {
        self.method = match method {
            Method::Gptq => "gptq",
            Method::Rtn => "rtn",
        }
        .into();
        self.scheme = json!({
            "bits": s.bits,
            "group_size": s.group_size,
            "symmetric": s.symmetric,
            "f16_scales": s.f16_scales,
            "gptq": gptq.map(|g| json!({
                "damp_percent": g.damp_percent,
                "block_size": g.block_size,
                "act_order": g.act_order,
                "static_groups": g.static_groups,
                "clip_search": g.clip_search.map(|c| json!({
                    "steps": c.steps, "max_shrink": c.max_shrink, "norm": c.norm,
                })),
                "true_sequential": true,
            })),
        });
    }

    pub fn set_layers(&mut self, family: Family, summary: &LayerwiseSummary, plan: &[TensorPlan]) {
        self.block_seconds = summary.block_seconds.clone();
        self.resumed_blocks = summary.resumed_blocks;
        self.layers = summary
            .records
            .iter()
            .map(|r| {
                let mut v = serde_json::to_value(r).expect("records serialize");
                let hf_name = names::linear_weight(family, r.layer, r.kind);
                let dtype = plan.iter().find(|t| t.hf_name == hf_name).map(|t| &t.dtype);
                v["output_type"] = json!(dtype);
                v
            })
            .collect();
    }

    pub fn set_output(
        &mut self,
        out: &Path,
        plan: &[TensorPlan],
        write_seconds: f64,
    ) -> Result<()> {
        let file_bytes = dir_or_file_bytes(out)?;
        let params: u64 = plan.iter().map(|t| numel(t) as u64).sum();
        let (q_params, q_bytes) = plan
            .iter()
            .filter(|t| t.quantized)
            .fold((0u64, 0u64), |(p, b), t| (p + numel(t) as u64, b + t.bytes));
        self.fallbacks = plan
            .iter()
            .filter_map(|t| {
                t.fallback
                    .as_ref()
                    .map(|why| json!({"tensor": t.name, "type": t.dtype, "why": why}))
            })
            .collect();
        self.output = json!({
            "path": out,
            "bytes": file_bytes,
            "parameters": params,
            "bits_per_weight": file_bytes as f64 * 8.0 / params.max(1) as f64,
            "quantized_parameters": q_params,
            "quantized_bits_per_weight": q_bytes as f64 * 8.0 / q_params.max(1) as f64,
            "tensors": plan,
            "write_seconds": write_seconds,
        });
        Ok(())
    }

    /// Writes `OUT.report.json` and `OUT.report.md`.
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
        let o = &self.output;
        println!(
            "wrote        {} ({:.1} MB, {:.2} bits/weight overall, {:.2} in quantized linears)",
            o["path"].as_str().unwrap_or_default(),
            o["bytes"].as_f64().unwrap_or(0.0) / 1e6,
            o["bits_per_weight"].as_f64().unwrap_or(0.0),
            o["quantized_bits_per_weight"].as_f64().unwrap_or(0.0),
        );
        if let Some(e) = &self.eval {
            println!(
                "perplexity   {:.4} -> {:.4} ({:+.4}) on {} tokens of {}",
                e.original.perplexity,
                e.quantized.perplexity,
                e.increase,
                e.quantized.scored_tokens,
                e.data.display()
            );
        }
        for note in &self.notes {
            println!("note: {note}");
        }
        println!("time         {:.1} s", self.total_seconds);
    }

    fn markdown(&self) -> String {
        let mut md = String::new();
        let o = &self.output;
        let _ = writeln!(md, "# microllm quantize report\n");
        let _ = writeln!(md, "| | |\n|---|---|");
        let _ = writeln!(
            md,
            "| model | `{}` |",
            self.model["spec"].as_str().unwrap_or("")
        );
        let _ = writeln!(md, "| method | {} |", self.method);
        let _ = writeln!(md, "| scheme | `{}` |", self.scheme);
        if let Some(c) = &self.calibration {
            let _ = writeln!(
                md,
                "| calibration | {} windows x {} tokens = {} tokens (asked {}), seed {}, sha256 `{}` |",
                c.samples_used, c.seqlen, c.tokens_used, c.samples_requested, c.seed, c.sha256
            );
        }
        let _ = writeln!(
            md,
            "| output | `{}`, {:.1} MB |",
            o["path"].as_str().unwrap_or(""),
            o["bytes"].as_f64().unwrap_or(0.0) / 1e6
        );
        let _ = writeln!(
            md,
            "| bits/weight | {:.2} overall, {:.2} in quantized linears |",
            o["bits_per_weight"].as_f64().unwrap_or(0.0),
            o["quantized_bits_per_weight"].as_f64().unwrap_or(0.0)
        );
        if let Some(e) = &self.eval {
            let _ = writeln!(
                md,
                "| perplexity | {:.4} -> {:.4} ({:+.4}), {} windows x {} of `{}` |",
                e.original.perplexity,
                e.quantized.perplexity,
                e.increase,
                e.quantized.windows,
                e.quantized.ctx,
                e.data.display()
            );
        }
        let _ = writeln!(md, "| time | {:.1} s |", self.total_seconds);
        if !self.notes.is_empty() {
            let _ = writeln!(md, "\n## Notes\n");
            for n in &self.notes {
                let _ = writeln!(md, "- {n}");
            }
        }
        if !self.fallbacks.is_empty() {
            let _ = writeln!(md, "\n## Fallbacks\n");
            for f in &self.fallbacks {
                let _ = writeln!(
                    md,
                    "- `{}` -> {}: {}",
                    f["tensor"].as_str().unwrap_or(""),
                    f["type"].as_str().unwrap_or(""),
                    f["why"].as_str().unwrap_or("")
                );
            }
        }
        if !self.layers.is_empty() {
            let _ = writeln!(
                md,
                "\n## Layers\n\n| block | linear | type | weight error | GPTQ loss | damp |\n|---|---|---|---|---|---|"
            );
            for l in &self.layers {
                let num = |k: &str| {
                    l[k].as_f64()
                        .map_or("-".to_string(), |v| format!("{v:.3e}"))
                };
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {} | {} | {} |",
                    l["layer"],
                    l["kind"].as_str().unwrap_or(""),
                    l["output_type"].as_str().unwrap_or("-"),
                    num("weight_error"),
                    num("gptq_loss"),
                    num("damp_percent"),
                );
            }
        }
        md
    }
}

fn numel(t: &TensorPlan) -> usize {
    t.shape.iter().product()
}

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

fn dir_or_file_bytes(path: &Path) -> Result<u64> {
    let meta = std::fs::metadata(path)?;
    if meta.is_file() {
        return Ok(meta.len());
    }
    let mut total = 0;
    for entry in std::fs::read_dir(path)? {
        let entry = entry?;
        if entry.metadata()?.is_file() {
            total += entry.metadata()?.len();
        }
    }
    Ok(total)
}
