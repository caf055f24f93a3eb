//! `microllm prune --structured`: a genuinely smaller dense model.
//!
//! The flow is plan -> measure -> write, in the library (`microllm_pipeline::plan` and
//! `run`): the kept counts (channels, heads, blocks) follow from the flags and the model's
//! configuration alone, so bad input and `--dry-run` need no calibration; importance is then
//! measured on calibration windows run through the original blocks one at a time, and the
//! writers stream the pruned model from a slicing view of the original (`PrunedSource`).

use microllm_pipeline::recipe::{HeadModeName, ImportanceName, Pass, StructuredStage};

/// Structured pruning flags (with --structured).
#[derive(clap::Args, Debug)]
pub struct StructuredArgs {
    /// Remove whole structures (MLP channels, attention heads, decoder blocks) and write a
    /// smaller dense model with a rewritten config.json.
    #[arg(long)]
    pub structured: bool,
    /// Fraction of MLP channels (intermediate neurons) kept in every block, in (0, 1].
    #[arg(long, value_parser = crate::commands::finite_f64, default_value_t = 1.0, requires = "structured")]
    pub mlp_keep: f64,
    /// Round the kept MLP channel count to a multiple of this (kernels like multiples of 32;
    /// 1 keeps exactly the fraction).
    #[arg(long, default_value_t = 32, requires = "structured")]
    pub mlp_multiple: usize,
    /// Fraction of query heads kept in every block, in (0, 1]; must spread evenly over the
    /// key/value groups (see --head-mode).
    #[arg(long, value_parser = crate::commands::finite_f64, default_value_t = 1.0, requires = "structured")]
    pub heads_keep: f64,
    /// kv-groups: remove whole KV groups (a key/value head and its query heads); per-group:
    /// keep every key/value head and the same number of query heads in each group.
    #[arg(long, value_enum, default_value_t = HeadModeArg::PerGroup, requires = "structured")]
    pub head_mode: HeadModeArg,
    /// Decoder blocks to remove, those of least ShortGPT block influence (1 - cos(input,
    /// output) on calibration tokens).
    #[arg(long, default_value_t = 0, requires = "structured")]
    pub drop_layers: usize,
    /// How channels and heads are scored: activation (calibration activations times the
    /// output weights) or magnitude (weights only, no calibration).
    #[arg(long, value_enum, default_value_t = ImportanceArg::Activation, requires = "structured")]
    pub importance: ImportanceArg,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum HeadModeArg {
    KvGroups,
    PerGroup,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ImportanceArg {
    Activation,
    Magnitude,
}

/// The structured pass the flags mean.
pub fn stage(s: &StructuredArgs) -> Pass {
    Pass::StructuredPrune(StructuredStage {
        mlp_keep: s.mlp_keep,
        mlp_multiple: s.mlp_multiple,
        heads_keep: s.heads_keep,
        head_mode: match s.head_mode {
            HeadModeArg::KvGroups => HeadModeName::KvGroups,
            HeadModeArg::PerGroup => HeadModeName::PerGroup,
        },
        drop_layers: s.drop_layers,
        importance: match s.importance {
            ImportanceArg::Activation => ImportanceName::Activation,
            ImportanceArg::Magnitude => ImportanceName::Magnitude,
        },
    })
}
