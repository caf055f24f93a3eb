//! Rotary position embeddings in the Hugging Face ("rotate half", GPT-NeoX) convention.
//!
//! For a head vector `x` whose first `rotary_dim` dimensions are rotated, dimension `i` and
//! `i + rotary_dim/2` form a pair rotated by angle `pos * theta^(-2i/rotary_dim)`; the rest
//! pass through (Phi-2's partial rotary). Tables are computed once per decoder.

use candle_core::{DType, Device, Tensor};
use microllm_core::{ModelConfig, Result};

/// Precomputed cos/sin tables `[positions, rotary_dim / 2]`.
#[derive(Debug, Clone)]
pub struct Rope {
    cos: Tensor,
    sin: Tensor,
    rotary_dim: usize,
    head_dim: usize,
}

impl Rope {
    /// Tables for positions `0..positions`.
    pub fn new(cfg: &ModelConfig, positions: usize) -> Result<Self> {
        let rotary_dim = cfg.rotary_dim();
        let half = rotary_dim / 2;
        let inv_freq: Vec<f32> = (0..half)
            .map(|i| (1.0 / cfg.rope_theta.powf(2.0 * i as f64 / rotary_dim as f64)) as f32)
            .collect();
        let inv_freq = Tensor::from_vec(inv_freq, (1, half), &Device::Cpu)?;
        let pos = Tensor::arange(0u32, positions as u32, &Device::Cpu)?
            .to_dtype(DType::F32)?
            .reshape((positions, 1))?;
        let angles = pos.broadcast_mul(&inv_freq)?;
        Ok(Self {
            cos: angles.cos()?,
            sin: angles.sin()?,
            rotary_dim,
            head_dim: cfg.head_dim,
        })
    }

    /// Number of positions the tables cover.
    pub fn positions(&self) -> usize {
        self.cos.dim(0).unwrap_or(0)
    }

    /// Rotates `x` `[batch, heads, seq, head_dim]` whose first token is at `offset`.
    pub fn apply(&self, x: &Tensor, offset: usize) -> Result<Tensor> {
        let seq = x.dim(2)?;
        if offset + seq > self.positions() {
            return Err(microllm_core::Error::Invalid(format!(
                "position {} is beyond the {} positions of the rotary tables",
                offset + seq,
                self.positions()
            )));
        }
        let cos = self.cos.narrow(0, offset, seq)?;
        let sin = self.sin.narrow(0, offset, seq)?;
        if self.rotary_dim == self.head_dim {
            return Ok(candle_nn::rotary_emb::rope(&x.contiguous()?, &cos, &sin)?);
        }
        let rot = x.narrow(3, 0, self.rotary_dim)?.contiguous()?;
        let pass = x.narrow(3, self.rotary_dim, self.head_dim - self.rotary_dim)?;
        let rot = candle_nn::rotary_emb::rope(&rot, &cos, &sin)?;
        Ok(Tensor::cat(&[&rot, &pass], 3)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use microllm_core::{Activation, Family};

    fn cfg(head_dim: usize, partial: f64) -> ModelConfig {
        ModelConfig {
            family: Family::Llama,
            vocab_size: 8,
            hidden_size: head_dim,
            intermediate_size: 8,
            num_layers: 1,
            num_heads: 1,
            num_kv_heads: 1,
            head_dim,
            rope_theta: 10_000.0,
            partial_rotary_factor: partial,
            norm_eps: 1e-5,
            sliding_window: None,
            max_position_embeddings: 16,
            tie_word_embeddings: true,
            activation: Activation::Silu,
            qkv_bias: false,
            o_bias: false,
            mlp_bias: false,
            lm_head_bias: false,
            bos_token_id: None,
            eos_token_ids: vec![],
            torch_dtype: None,
        }
    }

    #[test]
    fn rotates_pairs_half_apart() {
        // head_dim 4: pairs (0, 2) at frequency 1 and (1, 3) at 1/100. At position 1, the
        // vector e0 turns into (cos 1, 0, sin 1, 0).
        let rope = Rope::new(&cfg(4, 1.0), 4).unwrap();
        let x = Tensor::new(&[1f32, 0.0, 0.0, 0.0], &Device::Cpu)
            .unwrap()
            .reshape((1, 1, 1, 4))
            .unwrap();
        let y: Vec<f32> = rope
            .apply(&x, 1)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let expected = [1f32.cos(), 0.0, 1f32.sin(), 0.0];
        for (a, b) in y.iter().zip(expected) {
            assert!((a - b).abs() < 1e-6, "{y:?}");
        }
        let y0: Vec<f32> = rope
            .apply(&x, 0)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(y0, vec![1.0, 0.0, 0.0, 0.0], "position 0 is the identity");
    }

    #[test]
    fn partial_rotary_leaves_the_tail_alone() {
        let rope = Rope::new(&cfg(8, 0.5), 4).unwrap();
        let x = Tensor::arange(1f32, 9.0, &Device::Cpu)
            .unwrap()
            .reshape((1, 1, 1, 8))
            .unwrap();
        let y: Vec<f32> = rope
            .apply(&x, 3)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(&y[4..], &[5.0, 6.0, 7.0, 8.0]);
        assert_ne!(&y[..4], &[1.0, 2.0, 3.0, 4.0]);
        assert!(rope.apply(&x, 4).is_err(), "beyond the table");
    }
}
