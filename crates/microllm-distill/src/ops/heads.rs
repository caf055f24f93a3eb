//! Splitting projections into attention heads (with rotary embeddings) and merging them back:
//! the reorderings inside [`super::Attention`], forward and backward.
//!
//! The layout is the inference decoder's grouped one: `[batch, kv_heads, seq * group,
//! head_dim]`, row `i * group + g` holding query head `kv * group + g` of token `i`, so the
//! query heads sharing a key/value head form one matrix and attention is one batched product
//! per key/value head, with no repeated keys. Both directions only reorder contiguous units of
//! `group * head_dim` values (one token's heads of one KV group), rotating pairs `(j, j + r/2)`
//! of the first `r` dimensions of each head by the position's angle on the way (RoPE, the
//! "rotate half" convention). The rotation is orthogonal, so the backward of a rotated split
//! is the merge rotated by `-θ`, and the backward of a merge is a plain split.

use std::sync::Arc;

use microllm_core::{ModelConfig, RopeScaling};
use rayon::prelude::*;

use crate::real::Real;

/// cos/sin tables `[positions, rotary_dim / 2]`, computed like the inference decoder's
/// (angles in f32, as the reference implementation does).
#[derive(Debug, Clone)]
pub struct RopeTables {
    cos: Arc<[f32]>,
    sin: Arc<[f32]>,
    positions: usize,
    /// Rotated pairs per head.
    half: usize,
}

impl RopeTables {
    /// The global layers' tables: base `rope_theta`, with the configured rescaling.
    pub fn new(cfg: &ModelConfig, positions: usize) -> Self {
        Self::with_base(cfg, cfg.rope_theta, &cfg.rope_scaling, positions)
    }

    /// The sliding-window layers' tables when they have a base of their own
    /// (`local_rope_theta`, never rescaled), as in the inference decoder.
    pub fn local(cfg: &ModelConfig, positions: usize) -> Option<Self> {
        cfg.local_rope_theta
            .map(|theta| Self::with_base(cfg, theta, &RopeScaling::None, positions))
    }

    fn with_base(cfg: &ModelConfig, theta: f64, scaling: &RopeScaling, positions: usize) -> Self {
        let (cos, sin) = microllm_models::cos_sin(cfg, theta, scaling, positions);
        Self {
            cos: cos.into(),
            sin: sin.into(),
            positions,
            half: cfg.rotary_dim() / 2,
        }
    }

    /// Positions covered.
    pub fn positions(&self) -> usize {
        self.positions
    }
}

/// Moves units of `group * head_dim` values between token order `[rows, kv, unit]` (rows =
/// batch × seq; the projections' layout) and head order `[batch, kv, seq, unit]`, rotating
/// the first `rotary_dim` dimensions of every head by the token's position on the way (by
/// `-θ` when `inverse`).
fn reorder<T: Real>(
    src: &[T],
    (batch, seq, kv, head_dim): (usize, usize, usize, usize),
    to_heads: bool,
    rope: Option<(&RopeTables, bool)>,
) -> Vec<T> {
    let unit = src.len() / (batch * seq * kv);
    let d = head_dim;
    let mut dst = vec![T::ZERO; src.len()];
    dst.par_chunks_mut(unit)
        .with_min_len(16)
        .enumerate()
        .for_each(|(u, out)| {
            // `u` counts destination units; find the token `i` and KV head `h`.
            let (bi, h, i) = if to_heads {
                (u / (kv * seq), (u / seq) % kv, u % seq)
            } else {
                (u / (seq * kv), u % kv, (u / kv) % seq)
            };
            let from = if to_heads {
                ((bi * seq + i) * kv + h) * unit
            } else {
                ((bi * kv + h) * seq + i) * unit
            };
            let x = &src[from..from + unit];
            let Some((tables, inverse)) = rope else {
                out.copy_from_slice(x);
                return;
            };
            let half = tables.half;
            let row = i * half;
            let (cos, sin) = (&tables.cos[row..row + half], &tables.sin[row..row + half]);
            let sign = if inverse { -1.0 } else { 1.0 };
            for (x, out) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
                for j in 0..half {
                    let c = T::from_f64(cos[j] as f64);
                    let s = T::from_f64((sign * sin[j]) as f64);
                    out[j] = x[j] * c - x[j + half] * s;
                    out[j + half] = x[j + half] * c + x[j] * s;
                }
                out[2 * half..].copy_from_slice(&x[2 * half..]);
            }
        });
    dst
}

/// The shape of one attention call: batch, tokens, key/value heads, head width.
pub(crate) type HeadShape = (usize, usize, usize, usize);

/// Projections `[rows, kv * group * d]` -> heads `[batch, kv, seq * group, d]` (row
/// `i * group + g` = query head `kv * group + g` of token `i`), rotated when `rope` is given.
pub(crate) fn to_heads<T: Real>(x: &[T], shape: HeadShape, rope: Option<&RopeTables>) -> Vec<T> {
    reorder(x, shape, true, rope.map(|t| (t, false)))
}

/// The inverse reordering, heads -> projections; with `rope`, also the inverse rotation (the
/// backward pass of a rotated [`to_heads`]).
pub(crate) fn from_heads<T: Real>(x: &[T], shape: HeadShape, rope: Option<&RopeTables>) -> Vec<T> {
    reorder(x, shape, false, rope.map(|t| (t, true)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::gradcheck::randn;
    use microllm_core::{Activation, Family};

    fn cfg(head_dim: usize, partial: f64) -> ModelConfig {
        ModelConfig {
            family: Family::Llama,
            vocab_size: 8,
            hidden_size: 4 * head_dim,
            intermediate_size: 8,
            num_layers: 1,
            num_heads: 4,
            num_kv_heads: 2,
            head_dim,
            rope_theta: 10_000.0,
            rope_scaling: microllm_core::RopeScaling::None,
            sliding_layers: None,
            local_rope_theta: None,
            query_pre_attn_scalar: None,
            partial_rotary_factor: partial,
            norm_eps: 1e-5,
            sliding_window: None,
            max_position_embeddings: 32,
            tie_word_embeddings: true,
            activation: Activation::Silu,
            qkv_bias: false,
            o_bias: false,
            mlp_bias: false,
            lm_head_bias: false,
            bos_token_id: None,
            eos_token_ids: vec![],
            torch_dtype: None,
            activation_quant: None,
        }
    }

    /// The split equals the inference decoder's fused split + RoPE, full and partial rotary.
    #[test]
    fn split_matches_the_inference_rope() {
        for partial in [1.0, 0.5] {
            let c = cfg(8, partial);
            let x = randn(&[2, 5, 32], 1)
                .to_dtype(candle_core::DType::F32)
                .unwrap();
            let flat: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
            let ours = to_heads(&flat, (2, 5, 2, 8), Some(&RopeTables::new(&c, 16)));
            let theirs: Vec<f32> = microllm_models::Rope::new(&c, 16)
                .unwrap()
                .split_heads(&x, 2, 0, true)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            assert_eq!(ours, theirs, "partial {partial}");
        }
    }

    /// `from_heads` inverts `to_heads`, rotation included (the rotation is orthogonal).
    #[test]
    fn merging_inverts_splitting() {
        let x: Vec<f64> = randn(&[2 * 5 * 32], 2).to_vec1().unwrap();
        let tables = RopeTables::new(&cfg(8, 0.5), 16);
        for rope in [None, Some(&tables)] {
            let back = from_heads(&to_heads(&x, (2, 5, 2, 8), rope), (2, 5, 2, 8), rope);
            let err = back
                .iter()
                .zip(&x)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max);
            assert!(err < 1e-6, "{err}");
        }
    }
}
