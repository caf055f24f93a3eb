//! Importance of MLP channels, attention heads and whole blocks, measured on calibration data.
//!
//! The calibration windows are embedded once and run through the *original* blocks one at a
//! time (the block is loaded from the source, run stage by stage with `Block::attn_input` ...
//! `Block::mlp_output`, then dropped), so peak memory is one block plus the windows' hidden
//! states, as in the quantization engine. Scores are measured on the unpruned model: every
//! structure is judged by what it contributes there.
//!
//! The `activation` metric is the L2 norm, over all calibration tokens, of each structure's
//! contribution to the residual stream:
//! * MLP channel `j`: `||h_j||_2 * ||W_down[:, j]||_2`, where `h_j` is the channel's hidden
//!   activation (the input of down) at every token. This is exactly the norm of
//!   `h_j W_down[:, j]^T`, the part of the MLP output that removing the channel deletes.
//! * Query head `h`: `||ctx_h W_o[:, h]^T||_F`, the norm of the head's share of the attention
//!   output (its context times its block of o_proj columns), again exactly what removing the
//!   head deletes from the block's output.
//! * Block `i` (ShortGPT's block influence): the mean over tokens of `1 - cos(x_t, y_t)` with
//!   `x` the block's input and `y` its output; blocks that barely turn the residual stream are
//!   the cheapest to remove.
//!
//! The `magnitude` metric needs no calibration: `||W_up[j, :]|| * ||W_down[:, j]||` (times the
//! gate row's norm in gated MLPs) per channel and `||W_q[h]||_F * ||W_o[:, h]||_F` per head.

use candle_core::{D, DType, Tensor};
use microllm_core::{Error, ModelConfig, Progress, Result, TensorSource};
use microllm_models::{Block, Positions, RopeTables};
use microllm_prune::structured::Scores;
use serde::Serialize;

/// How channels and heads are scored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ImportanceMetric {
    /// Norm of each structure's contribution to the residual stream on calibration tokens.
    Activation,
    /// Weight norms only (no calibration).
    Magnitude,
}

impl ImportanceMetric {
    /// The metric in words, for reports.
    pub fn describe(self) -> &'static str {
        match self {
            ImportanceMetric::Activation => {
                "activation: L2 norm over calibration tokens of each structure's contribution \
                 to the residual stream (channel j: ||h_j||·||W_down[:,j]||; head h: \
                 ||ctx_h·W_o[:,h]^T||)"
            }
            ImportanceMetric::Magnitude => {
                "magnitude: weight norms only (channel j: ||W_gate[j]||·||W_up[j]||·||W_down[:,j]||; \
                 head h: ||W_q[h]||·||W_o[:,h]||)"
            }
        }
    }
}

/// What to measure.
pub struct ImportanceJob<'a> {
    pub config: &'a ModelConfig,
    pub source: &'a dyn TensorSource,
    /// Calibration windows, all of one length; may be empty for magnitude without blocks.
    pub calibration: &'a [Vec<u32>],
    pub metric: ImportanceMetric,
    /// Measure ShortGPT's block influence (needs calibration).
    pub block_influence: bool,
}

/// Scores every channel, head and (when asked) block of the model, one block in memory at a
/// time.
pub fn measure_importance(job: &ImportanceJob<'_>, progress: &dyn Progress) -> Result<Scores> {
    let cfg = job.config;
    let needs_data = job.block_influence || job.metric == ImportanceMetric::Activation;
    if needs_data && job.calibration.is_empty() {
        return Err(Error::Invalid(
            "activation importance and block influence need calibration windows: none were given"
                .into(),
        ));
    }
    let seqlen = job.calibration.first().map_or(1, Vec::len).max(1);
    let rope = RopeTables::new(cfg, seqlen)?;
    let at = Positions {
        rope: &rope,
        offset: 0,
    };
    let mut hidden = if needs_data {
        crate::calibration::embed_windows(cfg, job.source, job.calibration)?
    } else {
        Vec::new()
    };
    let mut scores = Scores {
        block_influence: job.block_influence.then(Vec::new),
        ..Scores::default()
    };
    progress.begin("scoring blocks", cfg.num_layers as u64, "blocks");
    for layer in 0..cfg.num_layers {
        let block = Block::load(cfg, layer, job.source)?;
        let measured = if needs_data {
            Some(run_block(cfg, &block, &mut hidden, at)?)
        } else {
            None
        };
        let (channels, heads) = match (job.metric, &measured) {
            (ImportanceMetric::Activation, Some(m)) => (
                mul(&m.channel_norms, &column_norms(&block.mlp.down.weight()?)?),
                m.head_norms.clone(),
            ),
            _ => magnitude_scores(cfg, &block)?,
        };
        scores.channels.push(channels);
        scores.heads.push(heads);
        if let (Some(bi), Some(m)) = (scores.block_influence.as_mut(), &measured) {
            bi.push(m.influence);
        }
        progress.advance(1);
    }
    progress.finish();
    Ok(scores)
}

/// Per-block measurements on the calibration windows.
struct Measured {
    /// `||h_j||_2` over all tokens, per MLP channel.
    channel_norms: Vec<f64>,
    /// `||ctx_h W_o[:, h]^T||_F` over all tokens, per query head.
    head_norms: Vec<f64>,
    /// Mean `1 - cos(input, output)` over tokens.
    influence: f64,
}

/// Runs `block` on every window, replacing each window's hidden states by the block output.
fn run_block(
    cfg: &ModelConfig,
    block: &Block,
    hidden: &mut [Tensor],
    at: Positions<'_>,
) -> Result<Measured> {
    let (hd, heads) = (cfg.head_dim, cfg.num_heads);
    let mut channel_sq = vec![0f64; cfg.intermediate_size];
    let mut head_sq = vec![0f64; heads];
    let (mut influence, mut tokens) = (0f64, 0usize);
    // o_proj's column block of each head, `[hidden, head_dim]`, transposed once.
    let o_weight = block.o.weight()?;
    let o_blocks = (0..heads)
        .map(|h| Ok(o_weight.narrow(1, h * hd, hd)?.t()?.contiguous()?))
        .collect::<Result<Vec<_>>>()?;
    for x in hidden.iter_mut() {
        let normed = block.attn_input(x)?;
        let ctx = block.attn_context(&normed, at)?;
        let seq = ctx.dim(1)?;
        let ctx2 = ctx.reshape((seq, cfg.q_dim()))?;
        for (h, o_h) in o_blocks.iter().enumerate() {
            let share = ctx2.narrow(1, h * hd, hd)?.matmul(o_h)?;
            head_sq[h] += sum_sq(&share)?;
        }
        let residual = block.attn_residual(x, &ctx)?;
        let mlp_in = block.mlp_input(x, &residual)?;
        let act = block.mlp_hidden(&mlp_in)?;
        let sq = act
            .reshape((seq, cfg.intermediate_size))?
            .to_dtype(DType::F64)?
            .sqr()?
            .sum(0)?
            .to_vec1::<f64>()?;
        for (acc, v) in channel_sq.iter_mut().zip(sq) {
            *acc += v;
        }
        let out = block.mlp_output(&residual, &act)?;
        influence += one_minus_cos_sum(x, &out)?;
        tokens += seq;
        *x = out;
    }
    Ok(Measured {
        channel_norms: channel_sq.into_iter().map(f64::sqrt).collect(),
        head_norms: head_sq.into_iter().map(f64::sqrt).collect(),
        influence: influence / tokens.max(1) as f64,
    })
}

/// `sum_t (1 - cos(x_t, y_t))` over the tokens of `[1, seq, hidden]` tensors.
fn one_minus_cos_sum(x: &Tensor, y: &Tensor) -> Result<f64> {
    let x = x.to_dtype(DType::F64)?;
    let y = y.to_dtype(DType::F64)?;
    let dot = (&x * &y)?.sum(D::Minus1)?;
    let nx = x.sqr()?.sum(D::Minus1)?.sqrt()?;
    let ny = y.sqr()?.sum(D::Minus1)?.sqrt()?;
    let cos = dot.div(&(nx * ny)?.clamp(1e-30, f64::INFINITY)?)?;
    let cos = cos.flatten_all()?.to_vec1::<f64>()?;
    Ok(cos.iter().map(|c| 1.0 - c).sum())
}

fn sum_sq(t: &Tensor) -> Result<f64> {
    Ok(t.to_dtype(DType::F64)?
        .sqr()?
        .sum_all()?
        .to_scalar::<f64>()?)
}

/// L2 norm of each column of a `[out, in]` matrix.
fn column_norms(w: &Tensor) -> Result<Vec<f64>> {
    Ok(w.to_dtype(DType::F64)?
        .sqr()?
        .sum(0)?
        .sqrt()?
        .to_vec1::<f64>()?)
}

/// L2 norm of each row of a `[out, in]` matrix.
fn row_norms(w: &Tensor) -> Result<Vec<f64>> {
    Ok(w.to_dtype(DType::F64)?
        .sqr()?
        .sum(1)?
        .sqrt()?
        .to_vec1::<f64>()?)
}

fn mul(a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter().zip(b).map(|(x, y)| x * y).collect()
}

/// Frobenius norms of consecutive groups of `size` values (squared norms given).
fn group_norms(squares: &[f64], size: usize) -> Vec<f64> {
    squares
        .chunks(size)
        .map(|c| c.iter().sum::<f64>().sqrt())
        .collect()
}

fn magnitude_scores(cfg: &ModelConfig, block: &Block) -> Result<(Vec<f64>, Vec<f64>)> {
    let mlp = &block.mlp;
    let mut channels = mul(
        &row_norms(&mlp.up.weight()?)?,
        &column_norms(&mlp.down.weight()?)?,
    );
    if let Some(gate) = &mlp.gate {
        channels = mul(&channels, &row_norms(&gate.weight()?)?);
    }
    let sq = |v: Vec<f64>| v.into_iter().map(|x| x * x).collect::<Vec<_>>();
    let q = group_norms(&sq(row_norms(&block.q.weight()?)?), cfg.head_dim);
    let o = group_norms(&sq(column_norms(&block.o.weight()?)?), cfg.head_dim);
    Ok((channels, mul(&q, &o)))
}
