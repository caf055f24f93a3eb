//! Compression pipelines: recipes, plans, runs and reports.
//!
//! A run goes YAML -> [`recipe::RecipeDoc`] (the document, with the line of every key) ->
//! [`recipe::Recipe`] (typed, unknown keys refused) -> [`plan::Plan`] (validated against the
//! model: shapes, data, formats, fallbacks; `--dry-run` stops here) -> [`run::run`] ->
//! [`report::CompressionReport`] (JSON, Markdown, HTML, gates, JUnit). The single-purpose
//! commands (`microllm quantize`, `microllm prune`) build a one-pass recipe and take the same
//! road.
//!
//! Underneath, the layerwise engine (`microllm-engine`) streams the model one decoder block at
//! a time for the passes that need calibration; a `distill` pass calls `microllm-distill`'s
//! trainer. Both sit below this crate, so the road runs one way: recipe -> plan -> run ->
//! engine / trainer.

// Libraries report through return values and `Progress`, never by printing: the binary
// owns the terminal (unit tests may print).
#![cfg_attr(not(test), deny(clippy::print_stdout, clippy::print_stderr))]

pub mod plan;
pub mod recipe;
pub mod report;
pub mod run;
