//! The data flags the compressing commands share: calibration windows and evaluation text.
//!
//! `quantize` and `prune` take the same `--calib` / `--samples` / ... / `--eval` flags and
//! mean the same recipe sections by them, so the flags and their translation live here once.

use std::path::PathBuf;

use microllm_pipeline::recipe::{
    CalibrationCompute, CalibrationData, EvalStage, EvaluationData, Pass,
};

/// `--calib-compute`: the recipe's [`CalibrationCompute`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CalibCompute {
    Int8,
    F32,
}

impl From<CalibCompute> for CalibrationCompute {
    fn from(c: CalibCompute) -> Self {
        match c {
            CalibCompute::Int8 => Self::Int8,
            CalibCompute::F32 => Self::F32,
        }
    }
}

/// Calibration and evaluation data.
#[derive(Debug, clap::Args)]
pub struct DataArgs {
    /// Calibration data: a UTF-8 text file, or a .safetensors file with int64 `input_ids`.
    #[arg(long)]
    pub calib: Option<PathBuf>,
    /// Calibration windows.
    #[arg(long, default_value_t = 128)]
    pub samples: usize,
    /// Tokens per calibration window.
    #[arg(long, default_value_t = 512)]
    pub seqlen: usize,
    /// Seed of the calibration window draw.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Use fewer windows than --samples when the data is too short (recorded in the report)
    /// instead of failing.
    #[arg(long)]
    pub allow_short_calib: bool,
    /// How the calibration forward computes: `int8` runs GGUF weights and the linears already
    /// quantized in their ggml block types with 8-bit activations (as llama.cpp runs the
    /// file); `f32` runs every product in f32 on dequantized weights.
    #[arg(long, value_enum, default_value_t = CalibCompute::Int8)]
    pub calib_compute: CalibCompute,
    /// Measure the output against the original on this text (perplexity of both, KL
    /// divergence, top-1 agreement), with the output reloaded from disk.
    #[arg(long)]
    pub eval: Option<PathBuf>,
    /// Tokens per evaluation window.
    #[arg(long, default_value_t = 512)]
    pub eval_ctx: usize,
    /// Evaluation windows (the first N of the text).
    #[arg(long, default_value_t = 24)]
    pub eval_windows: usize,
}

impl DataArgs {
    /// The recipe's `calibration` section, when `--calib` is given.
    pub fn calibration(&self) -> Option<CalibrationData> {
        self.calib.as_ref().map(|data| CalibrationData {
            data: data.clone(),
            samples: self.samples,
            seqlen: self.seqlen,
            seed: self.seed,
            allow_short: self.allow_short_calib,
            compute: self.calib_compute.into(),
        })
    }

    /// The recipe's `evaluation` section when `--eval` is given, with an eval pass appended
    /// to `passes` (it then measures the written output).
    pub fn evaluation(&self, passes: &mut Vec<Pass>) -> Option<EvaluationData> {
        let data = self.eval.as_ref()?;
        passes.push(Pass::Eval(EvalStage::default()));
        Some(EvaluationData {
            data: data.clone(),
            ctx: self.eval_ctx,
            windows: self.eval_windows,
            tasks: Vec::new(),
        })
    }
}
