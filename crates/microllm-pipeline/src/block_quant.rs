//! Quantizing one decoder block: true-sequential GPTQ (or RTN) over its linear layers.
//!
//! GPTQ wants, for each linear, the Hessian of its *inputs* as they will be in the compressed
//! model. Within a block the linears are therefore handled in the order their inputs are
//! produced (the reference implementation's `true-sequential`): q/k/v, then o, then gate/up,
//! then down. Before each group the calibration inputs are run through the block again (with
//! the groups before it already quantized) and a [`LinearTap`] accumulates one Hessian per
//! distinct input: q, k and v share one, as do gate and up.

use std::collections::BTreeMap;

use candle_core::Tensor;
use microllm_core::{LinearKind, Result};
use microllm_models::{Block, LinearTap, Positions};
use microllm_quant::{
    GptqOptions, HessianAccumulator, QuantScheme, QuantizedWeight, gptq_quantize_tensor,
    rtn_quantize_tensor,
};

/// The linear layers of a block in true-sequential order, grouped by shared input.
pub const SEQUENTIAL_GROUPS: [&[LinearKind]; 4] = [
    &[LinearKind::Q, LinearKind::K, LinearKind::V],
    &[LinearKind::O],
    &[LinearKind::Gate, LinearKind::Up],
    &[LinearKind::Down],
];

/// How a block's linears are quantized.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum BlockMethod {
    /// Round to nearest: no calibration.
    Rtn,
    /// GPTQ with these options, on Hessians from the calibration inputs.
    Gptq(GptqOptions),
}

/// What happened to one linear layer.
#[derive(Debug, Clone, PartialEq)]
pub struct LinearRecord {
    pub layer: usize,
    pub kind: LinearKind,
    /// GPTQ's loss (`sum e^2 / 2` in its scaled error space); `None` for RTN.
    pub gptq_loss: Option<f64>,
    /// Damping actually used (after retries), as a fraction of `mean(diag H)`.
    pub damp_percent: Option<f64>,
    /// Calibration tokens behind the Hessian.
    pub tokens: usize,
}

/// The input every kind reads; kinds sharing an input share its Hessian.
fn input_site(kind: LinearKind) -> LinearKind {
    match kind {
        LinearKind::Q | LinearKind::K | LinearKind::V => LinearKind::Q,
        LinearKind::Gate | LinearKind::Up => LinearKind::Up,
        other => other,
    }
}

/// Accumulates Hessians of the inputs of `wanted` linears of one block.
struct HessianTap {
    wanted: Vec<LinearKind>,
    sites: BTreeMap<LinearKind, HessianAccumulator>,
}

impl LinearTap for HessianTap {
    fn observe(&mut self, _layer: usize, kind: LinearKind, input: &Tensor) -> Result<()> {
        // Only the kind that names a site accumulates, so shared inputs are counted once.
        if input_site(kind) != kind || !self.wanted.iter().any(|&w| input_site(w) == kind) {
            return Ok(());
        }
        let in_features = input.dims().last().copied().unwrap_or(0);
        self.sites
            .entry(kind)
            .or_insert_with(|| HessianAccumulator::new(in_features))
            .add_batch(input)
    }
}

/// Quantizes every linear of `block` in place (weights replaced by their dequantized values,
/// so the block computes what the quantized model will) and returns the quantized weights
/// and a record per linear. `inputs` are the calibration hidden states entering the block,
/// `[batch, seq, hidden]` each, at positions `at`.
pub fn quantize_block(
    block: &mut Block,
    inputs: &[Tensor],
    at: Positions<'_>,
    scheme: QuantScheme,
    method: BlockMethod,
) -> Result<(BTreeMap<LinearKind, QuantizedWeight>, Vec<LinearRecord>)> {
    let mut weights = BTreeMap::new();
    let mut records = Vec::new();
    for group in SEQUENTIAL_GROUPS {
        let kinds: Vec<LinearKind> = group
            .iter()
            .copied()
            .filter(|&k| block.linear(k).is_some())
            .collect();
        let mut tap = HessianTap {
            wanted: kinds.clone(),
            sites: BTreeMap::new(),
        };
        if let BlockMethod::Gptq(_) = method {
            for x in inputs {
                block.forward(x, at, None, &mut tap)?;
            }
        }
        for kind in kinds {
            let linear = block.linear(kind).expect("filtered above");
            let (q, record) = match method {
                BlockMethod::Rtn => (
                    rtn_quantize_tensor(&linear.weight, scheme)?,
                    LinearRecord {
                        layer: block.layer,
                        kind,
                        gptq_loss: None,
                        damp_percent: None,
                        tokens: 0,
                    },
                ),
                BlockMethod::Gptq(opts) => {
                    let hessian = &tap.sites[&input_site(kind)];
                    let (q, stats) = gptq_quantize_tensor(&linear.weight, hessian, scheme, opts)?;
                    let record = LinearRecord {
                        layer: block.layer,
                        kind,
                        gptq_loss: Some(stats.loss),
                        damp_percent: Some(stats.damp_percent),
                        tokens: hessian.n_tokens(),
                    };
                    (q, record)
                }
            };
            let device = linear.weight.device().clone();
            block.linear_mut(kind).expect("present").weight = q.dequantize(&device)?;
            weights.insert(kind, q);
            records.push(record);
        }
    }
    Ok((weights, records))
}
