//! How the binary shows plans and results (the library returns them; this prints them).

use std::path::PathBuf;

use microllm_pipeline::plan::{Plan, tensors};
use microllm_pipeline::recipe::Pass;
use microllm_pipeline::report::CompressionReport;

/// One line before a run starts.
pub fn header(plan: &Plan) {
    let passes: Vec<&str> = plan.recipe.passes.iter().map(Pass::key).collect();
    println!(
        "{} {} -> {}: {} ({})",
        plan.method,
        plan.recipe.model,
        plan.output.path.display(),
        passes.join(" -> "),
        plan.output.format_name()
    );
}

/// `--dry-run`: what will be done, to which tensors, at what cost.
pub fn plan(plan: &Plan) {
    header(plan);
    let cfg = &plan.model.config;
    for (i, p) in plan.recipe.passes.iter().enumerate() {
        println!("  passes[{i}] {}: {}", p.key(), plan.describe_pass(i));
    }
    if let Some(s) = &plan.structured {
        let t = &s.targets;
        let row = |what: &str, before: usize, after: usize| {
            println!("    {what:<22} {before:>10} -> {after:<10}");
        };
        row("decoder blocks", cfg.num_layers, t.layers);
        row("MLP channels / block", cfg.intermediate_size, t.channels);
        row("query heads / block", cfg.num_heads, t.heads);
        row("KV heads / block", cfg.num_kv_heads, t.kv_heads);
        println!(
            "    head_dim {} (unchanged), hidden_size {} (unchanged)",
            cfg.head_dim, cfg.hidden_size
        );
    }
    let before: usize = plan.model.tensors.infos().iter().map(|i| i.numel()).sum();
    let e = &plan.estimate;
    println!(
        "  parameters {before} -> {} ({:.1}%)",
        e.output_parameters,
        100.0 * e.output_parameters as f64 / before.max(1) as f64
    );
    for line in tensors::summarize(&plan.output.tensors) {
        println!("  {line}");
    }
    if let Some(c) = plan
        .recipe
        .calibration
        .as_ref()
        .filter(|_| plan.needs_calibration())
    {
        println!(
            "  calibration {} windows x {} tokens of {} (seed {})",
            c.samples,
            c.seqlen,
            c.data.display(),
            c.seed
        );
    }
    if let Some(d) = plan
        .recipe
        .evaluation
        .as_ref()
        .filter(|_| !plan.evals.is_empty())
    {
        println!(
            "  evaluation {} windows x {} tokens of {}",
            d.windows,
            d.ctx,
            d.data.display()
        );
    }
    for g in &plan.gates {
        println!("  gate {}", g.expression());
    }
    for n in &plan.notes {
        println!("  note: {n}");
    }
    println!(
        "  estimated time {} (rough: operation counts at the reference machine's speed)",
        duration(e.seconds)
    );
}

fn duration(s: f64) -> String {
    if s < 90.0 {
        format!("{s:.0} s")
    } else if s < 5400.0 {
        format!("{:.0} min", s / 60.0)
    } else {
        format!("{:.1} h", s / 3600.0)
    }
}

/// After a run: what was written, what it cost, the gates.
pub fn summary(r: &CompressionReport, reports: &[PathBuf]) {
    if r.resumed_blocks > 0 {
        println!("resumed after {} finished blocks", r.resumed_blocks);
    }
    let o = &r.output;
    let quantized = if r.passes.iter().any(|p| p.pass == "quantize") {
        format!(", {:.2} in quantized linears", o.quantized_bits_per_weight)
    } else {
        String::new()
    };
    println!(
        "wrote        {} ({:.1} MB, {:.2} bits/weight overall{quantized})",
        o.path.display(),
        o.bytes as f64 / 1e6,
        o.bits_per_weight,
    );
    if r.size.parameters_after != r.size.parameters_before {
        println!(
            "parameters   {} -> {} ({:.1}%)",
            r.size.parameters_before,
            r.size.parameters_after,
            100.0 * r.size.parameters_after as f64 / r.size.parameters_before.max(1) as f64
        );
    }
    if let Some(d) = &r.distill {
        let loss = match (d.curve.first(), d.curve.last()) {
            (Some(first), Some(last)) => format!(" {:.4} -> {:.4}", first.loss, last.loss),
            _ => String::new(),
        };
        println!(
            "distilled    {} steps, loss {}{loss}; {}",
            d.steps,
            d.loss,
            d.outcome()
        );
    }
    if let Some(e) = &r.eval {
        println!(
            "perplexity   {:.4} -> {:.4} ({:+.4}) on {} tokens of {}",
            e.original.perplexity,
            e.compressed.perplexity,
            e.increase,
            e.compressed.scored_tokens,
            e.data.display()
        );
        println!(
            "agreement    KL {:.5} nats/token, top-1 {:.2}%",
            e.kl_divergence,
            100.0 * e.top1_agreement
        );
    }
    for note in &r.notes {
        println!("note: {note}");
    }
    for g in &r.gates {
        println!(
            "gate         {} {}: {}",
            if g.passed { "PASS" } else { "FAIL" },
            g.gate,
            g.value.map_or("not measured".into(), |v| format!("{v:.6}"))
        );
    }
    println!("time         {:.1} s", r.total_seconds);
    let paths: Vec<String> = reports.iter().map(|p| p.display().to_string()).collect();
    println!("report       {}", paths.join(", "));
}
