//! Size and time a plan is expected to take, for `--dry-run`.
//!
//! Size is exact where the writers' decisions are known (every tensor's type and bytes, see
//! [`super::tensors`]). Time is a rough count of floating-point work (forward passes, Hessians,
//! OBS sweeps, the eval's two models) divided by a throughput fitted to the 2-core development
//! machine (docs/benchmarks.md: 4-bit GPTQ of SmolLM2 on 128 x 512 tokens, about 20 TFLOP in
//! about 290 s; the quickstart recipe), scaled by the cores present; distillation's steps by
//! their own measured throughput. It leaves out the clipping search and the writers, and says
//! which order of magnitude to expect, no more.

use microllm_core::{ModelConfig, TensorInfo};
use serde::Serialize;

use super::distill::DistillStep;
use super::steps::{EvalStep, LayerwiseStep, OutputPlan};
use crate::recipe::Recipe;

/// Floating-point operations per second per core on the reference machine.
const REFERENCE_FLOPS_PER_CORE: f64 = 25e9;

/// The same for distillation's training steps, whose large matrix products run nearer the
/// kernels' peak (docs/benchmarks.md, "Distillation": about 0.67 GFLOP per token at 215-240
/// tokens/s on 2 cores).
const TRAINING_FLOPS_PER_CORE: f64 = 75e9;

/// What a plan is expected to cost.
#[derive(Debug, Clone, Serialize)]
pub struct Estimate {
    /// Tensor data of the output, bytes.
    pub output_bytes: u64,
    pub output_parameters: u64,
    pub bits_per_weight: f64,
    /// Rough wall time, seconds.
    pub seconds: f64,
}

impl Estimate {
    pub(super) fn of(
        recipe: &Recipe,
        original: &ModelConfig,
        linears: &[TensorInfo],
        output: &OutputPlan,
        layerwise: Option<&LayerwiseStep>,
        distill: Option<&DistillStep>,
        evals: &[EvalStep],
    ) -> Self {
        let output_bytes: u64 = output.tensors.iter().map(|t| t.bytes).sum();
        let output_parameters: u64 = output
            .tensors
            .iter()
            .map(|t| t.shape.iter().product::<usize>() as u64)
            .sum();
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let rate = REFERENCE_FLOPS_PER_CORE * cores;
        let linear_params: f64 = linears.iter().map(|i| i.numel() as f64).sum();
        let calib_tokens = recipe
            .calibration
            .as_ref()
            .map_or(0.0, |c| (c.samples * c.seqlen) as f64);
        let mut flops = 0.0;
        if let Some(l) = layerwise {
            if l.spec.calibrated() {
                // One staged forward pass of every block, and the Hessians (in^2 per token
                // for each distinct input).
                let hessians: f64 = linears
                    .iter()
                    .filter(|i| !i.name.contains("k_proj") && !i.name.contains("v_proj"))
                    .filter(|i| !i.name.contains("up_proj"))
                    .map(|i| (i.shape[1] * i.shape[1]) as f64)
                    .sum();
                flops += 2.0 * linear_params * calib_tokens + 2.0 * hessians * calib_tokens;
                // The OBS sweep: about 2 out * in^2 per linear.
                flops += linears
                    .iter()
                    .map(|i| 2.0 * (i.shape[0] * i.shape[1] * i.shape[1]) as f64)
                    .sum::<f64>();
            } else {
                flops += 20.0 * linear_params;
            }
        }
        let training_seconds = distill.map_or(0.0, |d| {
            // The student's forward and backward (3 x 2 flops per parameter and token), and a
            // live teacher's forward.
            let tokens = (d.steps * d.tokens_per_step()) as f64;
            let student = output.config.parameter_count() as f64;
            let teacher = if d.stage.logits.is_none() && d.stage.loss.uses_teacher() {
                original.parameter_count() as f64
            } else {
                0.0
            };
            tokens * (6.0 * student + 2.0 * teacher) / (TRAINING_FLOPS_PER_CORE * cores)
        });
        for e in evals {
            let tokens = (e.windows * recipe.evaluation.as_ref().map_or(512, |d| d.ctx)) as f64;
            // Both models, every parameter twice per token (the head included).
            let params = original.parameter_count() as f64;
            flops += 2.0 * 2.0 * params * tokens;
        }
        Self {
            output_bytes,
            output_parameters,
            bits_per_weight: output_bytes as f64 * 8.0 / output_parameters.max(1) as f64,
            seconds: flops / rate + training_seconds,
        }
    }
}
