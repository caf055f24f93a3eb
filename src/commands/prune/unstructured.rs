//! `microllm prune --method magnitude|wanda|sparsegpt`: unstructured and N:M pruning through
//! the layerwise engine, optionally quantized with GPTQ in the same sweep (`--bits`).
//!
//! Pruned-only linears keep their shape with zeros in them: the output is a dense checkpoint
//! (safetensors or GGUF F16/F32) whose savings come later, from a sparse runtime or from
//! quantization. With `--bits`, pruned weights are stored as their group's zero point, so a
//! GGUF Q4_0/Q4_1/Q8_0 file holds the pruned, quantized model exactly.

use anyhow::Result;
use microllm_pipeline::recipe::{
    GroupSize, Pass, PruneMethodName, PruneStage, QuantMethodName, QuantizeStage, RankingName,
    ScheduleName,
};

/// The passes the flags mean: a prune pass, and with `--bits` a quantize pass (both run in
/// one sweep); and whether the linears are quantized.
pub fn stages(u: &UnstructuredArgs) -> Result<(Vec<Pass>, bool)> {
    let prune = PruneStage {
        method: match u.method.unwrap_or(MethodArg::Wanda) {
            MethodArg::Magnitude => PruneMethodName::Magnitude,
            MethodArg::Wanda => PruneMethodName::Wanda,
            MethodArg::Sparsegpt => PruneMethodName::Sparsegpt,
        },
        sparsity: u.pattern.is_none().then_some(u.sparsity),
        pattern: u.pattern.clone(),
        ranking: u.ranking.map(|r| match r {
            RankingArg::Row => RankingName::Row,
            RankingArg::Layer => RankingName::Layer,
            RankingArg::Global => RankingName::Global,
        }),
        damp: Some(u.damp),
        sink_weight: u.sink_weight,
        schedule: (u.schedule == ScheduleArg::Owl).then_some(ScheduleName::Owl),
        owl_threshold: u.owl_threshold,
        owl_lambda: u.owl_lambda,
    };
    let mut passes = vec![Pass::Prune(prune)];
    if let Some(bits) = u.bits {
        passes.push(Pass::Quantize(QuantizeStage {
            method: QuantMethodName::Gptq,
            bits: Some(bits),
            group_size: u.group_size,
            symmetric: Some(!u.asym),
            ..QuantizeStage::default()
        }));
    }
    Ok((passes, u.bits.is_some()))
}

/// Unstructured / N:M pruning flags.
#[derive(clap::Args, Debug)]
pub struct UnstructuredArgs {
    /// Pruning method [default: wanda].
    #[arg(long, value_enum)]
    pub method: Option<MethodArg>,
    /// Fraction of every linear's weights to remove, in [0, 1).
    #[arg(long, value_parser = crate::commands::finite_f64, default_value_t = 0.5)]
    pub sparsity: f64,
    /// Semi-structured N:M pattern instead of --sparsity: at most N nonzero weights in every M
    /// consecutive ones (2:4, 4:8).
    #[arg(long)]
    pub pattern: Option<String>,
    /// Which weights an unstructured score competes with: each output row, each layer, or
    /// (magnitude only) the whole model [default: row for wanda and sparsegpt, layer for
    /// magnitude].
    #[arg(long, value_enum)]
    pub ranking: Option<RankingArg>,
    /// Also quantize with GPTQ to this many bits, in the same sweep (pruned weights become
    /// the grids' zero points).
    #[arg(long, value_parser = crate::commands::code_bits())]
    pub bits: Option<u8>,
    /// With --bits: input columns per scale (`channel` = one per row) [default: 32 for GGUF,
    /// 128 for safetensors].
    #[arg(long, value_parser = GroupSize::parse)]
    pub group_size: Option<GroupSize>,
    /// With --bits: asymmetric grids.
    #[arg(long)]
    pub asym: bool,
    /// Dampening of every OBS solve (SparseGPT, GPTQ), as a fraction of the mean Hessian
    /// diagonal.
    #[arg(long, value_parser = crate::commands::finite_f64, default_value_t = 0.01)]
    pub damp: f64,
    /// Weight of each calibration window's first token in the q/k/v statistics [default:
    /// --seqlen for SparseGPT and --bits, 1 for Wanda].
    #[arg(long, value_parser = crate::commands::finite_f64)]
    pub sink_weight: Option<f64>,
    /// Continue an interrupted run from its last finished block (same settings required).
    #[arg(long)]
    pub resume: bool,
    /// How unstructured sparsity is spread over the blocks: the same everywhere, or OWL's
    /// outlier-weighted schedule (blocks with more outlier weights pruned less, measured on
    /// the dense model; needs --calib).
    #[arg(long, value_enum, default_value_t = ScheduleArg::Uniform)]
    pub schedule: ScheduleArg,
    /// With --schedule owl: a weight is an outlier when its Wanda score exceeds this many
    /// times its block's mean score (the paper's M) [default: 5].
    #[arg(long, value_parser = crate::commands::finite_f64)]
    pub owl_threshold: Option<f64>,
    /// With --schedule owl: block sparsities spread over target +- this (the paper's lambda)
    /// [default: 0.08].
    #[arg(long, value_parser = crate::commands::finite_f64)]
    pub owl_lambda: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ScheduleArg {
    Uniform,
    Owl,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MethodArg {
    Magnitude,
    Wanda,
    Sparsegpt,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RankingArg {
    Row,
    Layer,
    /// One magnitude threshold over every linear of the model (magnitude only).
    Global,
}
