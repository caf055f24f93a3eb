//! `microllm recipe validate|schema`: check a recipe without running it, print its schema.

use std::path::PathBuf;

use anyhow::Result;
use microllm_pipeline::plan::{Plan, PlanOptions};
use microllm_pipeline::recipe::{RecipeDoc, json_schema};

use super::pipeline::recipe_error;

/// Check recipes and print their JSON Schema.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Validate a recipe against its model (keys, types, shapes, data, formats, gates) without
    /// running anything; every sweep variant is checked.
    Validate {
        recipe: PathBuf,
        /// Override a value, as `microllm run --set`.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
    },
    /// Print the recipe JSON Schema (for editors; committed as configs/recipe.schema.json).
    Schema,
}

pub fn run(args: Args) -> Result<()> {
    match args.command {
        Command::Schema => {
            println!("{}", serde_json::to_string_pretty(&json_schema())?);
            Ok(())
        }
        Command::Validate { recipe, set } => {
            let mut doc = RecipeDoc::from_file(&recipe).map_err(|e| recipe_error(e, false))?;
            for s in &set {
                doc.set(s).map_err(|e| recipe_error(doc.locate(e), false))?;
            }
            let variants = doc.variants(&[]).map_err(|e| recipe_error(e, false))?;
            let opts = PlanOptions {
                resume: false,
                dry_run: true,
                data_optional: false,
            };
            for v in &variants {
                let r = v.doc.parse().map_err(|e| recipe_error(e, false))?;
                let plan = Plan::new(&v.doc, r, opts).map_err(|e| recipe_error(e, false))?;
                println!(
                    "ok {}{}: {} passes, {} -> {} ({}), {:.1} MB estimated",
                    recipe.display(),
                    if v.settings.is_empty() {
                        String::new()
                    } else {
                        format!(" [{}]", v.label())
                    },
                    plan.recipe.passes.len(),
                    plan.recipe.model,
                    plan.output.path.display(),
                    plan.output.format_name(),
                    plan.estimate.output_bytes as f64 / 1e6
                );
            }
            Ok(())
        }
    }
}
