//! `microllm run RECIPE`: a YAML recipe from model to verdict.

use std::path::PathBuf;

use anyhow::Result;
use microllm_pipeline::recipe::RecipeDoc;

use super::pipeline::{Invocation, Verdict, execute, recipe_error};

/// Run a recipe: its passes in order, the output, the report (JSON, Markdown, HTML), the gates.
///
/// Every variant of a sweep is validated (recipe keys and types, shapes, data, formats) before
/// any work starts; an error names the YAML path and line. Exit status: 0 when every gate
/// passed (or there are none), 3 when a gate failed (the output and reports are written), 1 on
/// any other error, 2 on bad command-line usage.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The recipe (YAML); see docs/recipes.md and `microllm recipe schema`.
    recipe: PathBuf,
    /// Validate and print the plan (tensors, types, fallbacks, estimated size and time), then
    /// stop.
    #[arg(long)]
    dry_run: bool,
    /// Continue a killed run from its work directory (same recipe and data required).
    #[arg(long)]
    resume: bool,
    /// Override a recipe value: KEY=VALUE, e.g. passes.1.bits=3, model=path, output.path=out.gguf
    /// (paths relative to the working directory).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Sweep a value: KEY=V1,V2 (repeatable; every combination runs, and a comparison report
    /// is written).
    #[arg(long, value_name = "KEY=V1,V2")]
    matrix: Vec<String>,
    /// Add a gate, e.g. ppl_increase_pct<=5 or size_mb<=80.
    #[arg(long, value_name = "METRIC<=N")]
    gate: Vec<String>,
    /// Write the gates as JUnit XML to this file.
    #[arg(long, value_name = "FILE")]
    junit: Option<PathBuf>,
    /// Print the recipe after --set (YAML) and stop.
    #[arg(long)]
    print_recipe: bool,
    /// Replace existing outputs (output.overwrite).
    #[arg(long)]
    force: bool,
}

pub fn run(args: Args) -> Result<Verdict> {
    let mut doc = RecipeDoc::from_file(&args.recipe).map_err(|e| recipe_error(e, false))?;
    for s in &args.set {
        doc.set(s).map_err(|e| recipe_error(doc.locate(e), false))?;
    }
    if args.force {
        doc.set("output.overwrite=true")
            .map_err(|e| recipe_error(e, false))?;
    }
    let inv = Invocation {
        dry_run: args.dry_run,
        resume: args.resume,
        print_recipe: args.print_recipe,
        gates: args.gate,
        matrix: args.matrix,
        junit: args.junit,
        by_flag: false,
        default_name: "recipe".into(),
    };
    execute(doc, &inv)
}
