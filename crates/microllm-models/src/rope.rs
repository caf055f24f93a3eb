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
