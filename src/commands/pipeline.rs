//! What every compressing command shares: a recipe document in, plans validated for every
//! variant before anything runs, the runs, their reports, the sweep's comparison, JUnit, and
//! the gates' verdict (which decides the exit status).
//!
//! `microllm run` hands it a recipe file; `microllm quantize`, `microllm prune` and
//! `microllm distill` hand it the one-pass recipe their flags mean, with a table that turns
//! recipe paths back into their flags in error messages.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use microllm_pipeline::plan::{Plan, PlanOptions};
use microllm_pipeline::recipe::{Pass, RecipeDoc, RecipeError};
use microllm_pipeline::report::{
    CompressionReport, SweepReport, junit_xml, report_path, write_report, write_text,
};
use microllm_pipeline::run::{RunOptions, hex, run};
use sha2::{Digest, Sha256};

use crate::progress::Bar;
use crate::render;

/// How a command wants its recipe run.
#[derive(Debug, Default)]
pub struct Invocation {
    pub dry_run: bool,
    pub resume: bool,
    pub print_recipe: bool,
    /// `--gate` expressions, added to the recipe's.
    pub gates: Vec<String>,
    /// `--matrix KEY=V1,V2`.
    pub matrix: Vec<String>,
    pub junit: Option<PathBuf>,
    /// Single-purpose commands: report errors by flag instead of recipe path.
    pub by_flag: bool,
    /// The report's name when the recipe has none.
    pub default_name: String,
}

/// What happened.
#[derive(Debug)]
pub enum Verdict {
    /// Printed a plan or a recipe; nothing ran.
    Planned,
    /// Ran; whether every gate of every variant passed.
    Ran { gates_passed: bool },
}

/// A recipe error as the user will read it: by flag for single-purpose commands.
pub fn recipe_error(err: RecipeError, by_flag: bool) -> anyhow::Error {
    if !by_flag {
        return anyhow::Error::new(err);
    }
    anyhow::anyhow!("{}: {}", flag_of(&err.path), err.msg)
}

/// The flag a recipe path of a one-pass recipe came from.
fn flag_of(path: &str) -> String {
    let last = path.rsplit(['.', ']']).next().unwrap_or(path);
    match (path, last) {
        (p, _) if p.starts_with("calibration.data") => "--calib".into(),
        (p, _) if p.starts_with("evaluation.data") => "--eval".into(),
        ("output.path", _) => "--out".into(),
        (_, "symmetric") => "--sym/--asym".into(),
        (_, "clip_search") => "--no-clip-search".into(),
        (_, "allow_short") => "--allow-short-calib".into(),
        (_, "importance_matrix_file") => "--imatrix".into(),
        (_, "save_importance_matrix") => "--save-imatrix".into(),
        ("model", _) => "--model".into(),
        (_, "") => "arguments".into(),
        (_, k) if k.starts_with("passes[") => "arguments".into(),
        (_, k) => format!("--{}", k.replace('_', "-")),
    }
}

/// Validates every variant, then (unless planning only) runs them.
pub fn execute(mut doc: RecipeDoc, inv: &Invocation) -> Result<Verdict> {
    let located = |e: RecipeError| recipe_error(e, inv.by_flag);
    if !inv.gates.is_empty() {
        let gates = doc
            .value
            .as_object_mut()
            .context("a recipe is a mapping")?
            .entry("gates")
            .or_insert_with(|| serde_json::json!([]));
        if let Some(list) = gates.as_array_mut() {
            list.extend(inv.gates.iter().map(|g| serde_json::json!(g)));
        }
    }
    if inv.print_recipe {
        print!("{}", doc.to_yaml());
        return Ok(Verdict::Planned);
    }
    let recipe_sha256 = hex(&Sha256::digest(doc.to_yaml().as_bytes()));
    let variants = doc.variants(&inv.matrix).map_err(located)?;
    let sweep = variants.len() > 1 || !variants[0].settings.is_empty();
    let opts = PlanOptions {
        resume: inv.resume,
        dry_run: inv.dry_run,
        data_optional: inv.dry_run && inv.by_flag,
    };
    // Every variant is validated before any runs: a bad one stops the sweep before work.
    let recipes = variants
        .iter()
        .map(|v| v.doc.parse().map_err(located))
        .collect::<Result<Vec<_>>>()?;
    let distills = recipes
        .iter()
        .any(|r| r.passes.iter().any(|p| matches!(p, Pass::Distill(_))));
    if distills && !inv.dry_run {
        // Before Plan::new opens a model (and with it any thread).
        super::single_threaded_elementwise();
    }
    let mut plans = Vec::new();
    for (v, recipe) in variants.iter().zip(recipes) {
        let plan = Plan::new(&v.doc, recipe, opts).map_err(located)?;
        plans.push((v, plan));
    }
    let name = plans[0]
        .1
        .recipe
        .name
        .clone()
        .or_else(|| {
            doc.file
                .as_ref()
                .and_then(|f| f.file_stem())
                .map(|s| s.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| inv.default_name.clone());
    if inv.dry_run {
        for (v, plan) in &plans {
            if sweep {
                println!("variant {}", v.label());
            }
            render::plan(plan);
        }
        return Ok(Verdict::Planned);
    }
    // Everything written after the long work must be writable before it starts.
    for (_, plan) in &plans {
        for format in &plan.report_formats {
            check_writable(
                &report_path(&plan.report_stem, format.extension()),
                "report",
            )?;
        }
    }
    if let Some(path) = &inv.junit {
        check_writable(path, "--junit")?;
    }
    let mut reports: Vec<(CompressionReport, PathBuf)> = Vec::new();
    for (v, plan) in &plans {
        if sweep {
            println!("variant {}", v.label());
        }
        render::header(plan);
        let run_opts = RunOptions {
            resume: inv.resume,
            command: std::env::args().collect(),
            name: name.clone(),
            variant: v.settings.iter().cloned().collect::<BTreeMap<_, _>>(),
            recipe_sha256: recipe_sha256.clone(),
        };
        let report = run(plan, &run_opts, &Bar::new()).with_context(|| {
            format!(
                "running {} (work directory {})",
                plan.recipe.model,
                microllm_engine::work_dir(&plan.output.path).display()
            )
        })?;
        let written = write_report(&report, &plan.report_stem, &plan.report_formats)?;
        microllm_pipeline::run::finish(plan)?;
        render::summary(&report, &written);
        let json = report_path(&plan.report_stem, "json");
        reports.push((report, json));
    }
    if sweep {
        let stem = sweep_stem(&plans[0].1, &doc);
        let s = SweepReport::new(&name, &reports);
        for (ext, body) in [
            ("json", s.to_json()),
            ("md", s.markdown()),
            ("html", s.html()),
        ] {
            let mut n = stem.file_name().unwrap_or_default().to_os_string();
            n.push(format!(".sweep.{ext}"));
            let path = stem.with_file_name(n);
            write_text(&path, &body)?;
            println!("sweep        {}", path.display());
        }
    }
    let all: Vec<&CompressionReport> = reports.iter().map(|(r, _)| r).collect();
    if let Some(path) = &inv.junit {
        write_text(path, &junit_xml(&all))?;
        println!("junit        {}", path.display());
    }
    Ok(Verdict::Ran {
        gates_passed: all.iter().all(|r| r.gates_passed),
    })
}

/// Where a sweep's comparison goes: beside the recipe's own output path, less `.gguf`.
fn sweep_stem(first: &Plan, doc: &RecipeDoc) -> PathBuf {
    let out = doc
        .value
        .get("output")
        .and_then(|o| o.get("path"))
        .and_then(|p| p.as_str())
        .map(PathBuf::from)
        .unwrap_or_else(|| first.output.path.clone());
    microllm_pipeline::plan::report_stem(&out)
}

/// Fails now, naming `what`, if a file could not be written at `path` later: the path is a
/// directory, or its nearest existing ancestor is not a directory this process can write in
/// (tried by creating and removing a file there).
fn check_writable(path: &Path, what: &str) -> Result<()> {
    if path.is_dir() {
        anyhow::bail!("{what} {}: is a directory", path.display());
    }
    let mut dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    while !dir.exists() {
        dir = dir
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
    }
    let probe = dir.join(format!(".microllm-write-probe-{}", std::process::id()));
    std::fs::File::create(&probe).with_context(|| {
        format!(
            "{what} {}: cannot write in {}",
            path.display(),
            dir.display()
        )
    })?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}
