//! The Markdown rendering: for people, and for CI job summaries (it pastes into a GitHub
//! Actions step summary as it is).

use std::fmt::Write as _;

use super::CompressionReport;

/// The overview rows shared by the Markdown and HTML renderings.
pub(crate) fn overview(r: &CompressionReport) -> Vec<(&'static str, String)> {
    let o = &r.output;
    let mut rows = vec![
        (
            "model",
            format!(
                "`{}` ({}, {} parameters)",
                r.model.spec, r.model.family, r.model.parameters
            ),
        ),
        ("method", r.method.clone()),
    ];
    if !r.scheme.is_null() {
        rows.push(("scheme", format!("`{}`", r.scheme)));
    }
    if let Some(c) = &r.calibration {
        rows.push((
            "calibration",
            format!(
                "{} windows x {} tokens = {} tokens (asked {}), seed {}, sha256 `{}`",
                c.samples_used, c.seqlen, c.tokens_used, c.samples_requested, c.seed, c.sha256
            ),
        ));
    }
    rows.push((
        "output",
        format!(
            "`{}` ({}), {:.2} MB",
            o.path.display(),
            o.format,
            o.bytes as f64 / 1e6
        ),
    ));
    rows.push((
        "bits/weight",
        format!(
            "{:.2} overall, {:.2} in quantized linears",
            o.bits_per_weight, o.quantized_bits_per_weight
        ),
    ));
    rows.push((
        "parameters",
        format!(
            "{} -> {} ({:.1}%)",
            r.size.parameters_before,
            r.size.parameters_after,
            100.0 * r.size.parameters_after as f64 / r.size.parameters_before.max(1) as f64
        ),
    ));
    if let Some(s) = o.linear_sparsity {
        rows.push(("linear sparsity", format!("{:.1}%", 100.0 * s)));
    }
    if let Some(e) = &r.eval {
        rows.push((
            "perplexity",
            format!(
                "{:.4} -> {:.4} ({:+.4}, {:+.2}%), {} windows x {} of `{}`",
                e.original.perplexity,
                e.compressed.perplexity,
                e.increase,
                e.increase_pct,
                e.compressed.windows,
                e.compressed.ctx,
                e.data.display()
            ),
        ));
        rows.push((
            "KL divergence",
            format!("{:.5} nats/token (original || output)", e.kl_divergence),
        ));
        rows.push((
            "top-1 agreement",
            format!("{:.2}%", 100.0 * e.top1_agreement),
        ));
        rows.push((
            "eval speed",
            format!("{:.1} tokens/s", e.compressed.tokens_per_second),
        ));
        for t in &e.tasks {
            let mut text = format!(
                "acc {:.4} -> {:.4} ± {:.4} ({:+.2} points)",
                t.acc_base, t.acc, t.acc_stderr, -t.acc_drop
            );
            if let (Some(b), Some(a), Some(d)) = (t.acc_norm_base, t.acc_norm, t.acc_norm_drop) {
                let _ = write!(text, ", acc_norm {b:.4} -> {a:.4} ({:+.2} points)", -d);
            }
            let _ = write!(
                text,
                "; same answer on {:.1}% of {} items, {}-shot, `{}`",
                100.0 * t.same_answer,
                t.items,
                t.fewshot,
                t.data.display()
            );
            rows.push((t.task.name(), text));
        }
    }
    rows.push(("time", format!("{:.1} s", r.total_seconds)));
    if let Some(p) = r.block_phase_seconds {
        let mut text = format!(
            "forward {:.1} s, input statistics {:.1} s, solves {:.1} s",
            p.forward, p.statistics, p.solve
        );
        if p.awq > 0.0 {
            let _ = write!(text, ", AWQ searches {:.1} s", p.awq);
        }
        rows.push(("block time", text));
    }
    if let Some(b) = r.peak_rss_bytes {
        rows.push(("peak memory", format!("{:.0} MB (VmHWM)", b as f64 / 1e6)));
    }
    rows.push(("model sha256", format!("`{}`", r.model.sha256)));
    rows.push(("recipe sha256", format!("`{}`", r.recipe_sha256)));
    rows
}

/// `PASS` / `FAIL` and the measured value of each gate.
pub(crate) fn gate_rows(r: &CompressionReport) -> Vec<(String, String, bool)> {
    r.gates
        .iter()
        .map(|g| {
            let value = g
                .value
                .map_or("not measured".to_string(), |v| format!("{v:.6}"));
            (g.gate.clone(), value, g.passed)
        })
        .collect()
}

/// The report as Markdown.
pub fn markdown(r: &CompressionReport) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# microllm report: {}\n", r.name);
    if !r.variant.is_empty() {
        let v: Vec<String> = r.variant.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let _ = writeln!(md, "Sweep variant: `{}`\n", v.join(", "));
    }
    let _ = writeln!(md, "| | |\n|---|---|");
    for (k, v) in overview(r) {
        let _ = writeln!(md, "| {k} | {v} |");
    }
    if !r.gates.is_empty() {
        let verdict = if r.gates_passed {
            "all passed"
        } else {
            "FAILED"
        };
        let _ = writeln!(
            md,
            "\n## Gates: {verdict}\n\n| gate | value | result |\n|---|---|---|"
        );
        for (gate, value, passed) in gate_rows(r) {
            let _ = writeln!(
                md,
                "| `{gate}` | {value} | {} |",
                if passed { "PASS" } else { "**FAIL**" }
            );
        }
    }
    let _ = writeln!(
        md,
        "\n## Passes\n\n| # | pass | what | time |\n|---|---|---|---|"
    );
    for p in &r.passes {
        let _ = writeln!(
            md,
            "| {} | {} | {}{} | {:.1} s |",
            p.index,
            p.pass,
            p.summary,
            if p.resumed { " (resumed)" } else { "" },
            p.seconds
        );
    }
    if let Some(d) = &r.distill {
        let _ = writeln!(
            md,
            "\n## Distillation\n\nTeacher `{}`; targets: {}; loss `{}`; data `{}` ({} windows of {} tokens); {} steps, {} tokens in {:.0} s ({:.1} tokens/s); {} of {} parameters trained.",
            d.teacher,
            d.targets,
            d.loss,
            d.data,
            d.windows,
            d.settings.seqlen,
            d.steps,
            d.tokens,
            d.train_seconds,
            d.tokens_per_second,
            d.trainable_parameters,
            d.student_parameters
        );
        if let Some(step) = d.resumed_at_step {
            let _ = writeln!(md, "Resumed at step {step}.");
        }
        if !d.evals.is_empty() {
            let _ = writeln!(
                md,
                "\n| step | training tokens | student perplexity |\n|---|---|---|"
            );
            for e in &d.evals {
                let _ = writeln!(md, "| {} | {} | {:.4} |", e.step, e.tokens, e.perplexity);
            }
        }
    }
    if !r.notes.is_empty() {
        let _ = writeln!(md, "\n## Notes\n");
        for n in &r.notes {
            let _ = writeln!(md, "- {n}");
        }
    }
    if !r.fallbacks.is_empty() {
        let _ = writeln!(md, "\n## Fallbacks\n");
        for f in &r.fallbacks {
            let _ = writeln!(md, "- `{}` -> {}: {}", f.tensor, f.dtype, f.why);
        }
    }
    if let Some(s) = &r.structure {
        let _ = writeln!(
            md,
            "\n## Structure\n\nImportance: {}. Dropped blocks: {:?}.\n\n| block | from | MLP channels | heads | KV heads |\n|---|---|---|---|---|",
            s.importance["description"].as_str().unwrap_or_default(),
            s.dropped_layers
        );
        for l in &s.layers {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} {} | {} |",
                l["layer"],
                l["source_layer"],
                l["mlp_channels"],
                l["heads"],
                l["kept_heads"],
                l["kv_heads"]
            );
        }
        if let Some(bi) = &s.block_influence {
            let _ = writeln!(
                md,
                "\nBlock influence (1 - cos, mean over calibration tokens):\n"
            );
            for (i, v) in bi.iter().enumerate() {
                let gone = if s.dropped_layers.contains(&i) {
                    " (dropped)"
                } else {
                    ""
                };
                let _ = writeln!(md, "- block {i}: {v:.5}{gone}");
            }
        }
    }
    if !r.layers.is_empty() {
        let _ = writeln!(
            md,
            "\n## Layers\n\n| block | linear | type | weight error | sparsity | GPTQ loss | damp |\n|---|---|---|---|---|---|---|"
        );
        let num = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.3e}"));
        for l in &r.layers {
            let kind = serde_json::to_value(l.record.kind).unwrap_or_default();
            let _ = writeln!(
                md,
                "| {} | {} | {} | {:.3e} | {} | {} | {} |",
                l.record.layer,
                kind.as_str().unwrap_or_default(),
                l.output_type.as_deref().unwrap_or("-"),
                l.record.weight_error,
                l.record
                    .sparsity
                    .map_or("-".to_string(), |s| format!("{:.1}%", 100.0 * s)),
                num(l.record.gptq_loss),
                num(l.record.damp_percent),
            );
        }
    }
    md
}
