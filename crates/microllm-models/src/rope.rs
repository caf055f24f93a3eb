//! Rotary position embeddings in the Hugging Face ("rotate half", GPT-NeoX) convention.
//!
//! For a head vector `x` whose first `rotary_dim` dimensions are rotated, dimension `i` and
//! `i + rotary_dim/2` form a pair rotated by angle `pos * theta^(-2i/rotary_dim)`; the rest
//! pass through (Phi-2's partial rotary). Frequencies may be rescaled (Llama-3.1's
//! `rope_type: llama3`, linear interpolation; [`RopeScaling`]), and a model may rotate its
//! sliding-window layers with a second base (Gemma 3). Tables are computed once per decoder.
//!
//! Attention needs the projections split into heads anyway, which is a transposing copy; the
//! rotation is folded into that copy ([`Rope::split_heads`]) so each of q and k is read and
//! written once, in the grouped layout attention multiplies on.

use candle_core::{CpuStorage, CustomOp1, Device, Layout, Shape, Tensor};
use microllm_core::{ModelConfig, Result, RopeScaling};
use rayon::prelude::*;

/// Precomputed cos/sin tables `[positions, rotary_dim / 2]`, row-major.
#[derive(Debug, Clone)]
pub struct Rope {
    cos: Vec<f32>,
    sin: Vec<f32>,
    positions: usize,
    rotary_dim: usize,
    head_dim: usize,
}

impl Rope {
    /// Tables of the global layers (base `rope_theta`, with the configured rescaling) for
    /// positions `0..positions`.
    pub fn new(cfg: &ModelConfig, positions: usize) -> Result<Self> {
        Self::with_base(cfg, cfg.rope_theta, &cfg.rope_scaling, positions)
    }

    /// Tables of the sliding-window layers when they rotate with their own base
    /// (`local_rope_theta`, never rescaled), else `None`.
    pub fn local(cfg: &ModelConfig, positions: usize) -> Result<Option<Self>> {
        cfg.local_rope_theta
            .map(|theta| Self::with_base(cfg, theta, &RopeScaling::None, positions))
            .transpose()
    }

    fn with_base(
        cfg: &ModelConfig,
        theta: f64,
        scaling: &RopeScaling,
        positions: usize,
    ) -> Result<Self> {
        let (cos, sin) = cos_sin(cfg, theta, scaling, positions);
        Ok(Self {
            cos,
            sin,
            positions,
            rotary_dim: cfg.rotary_dim(),
            head_dim: cfg.head_dim,
        })
    }

    /// Number of positions the tables cover.
    pub fn positions(&self) -> usize {
        self.positions
    }

    fn check_range(&self, offset: usize, seq: usize) -> Result<()> {
        if offset + seq > self.positions() {
            return Err(microllm_core::Error::Invalid(format!(
                "position {} is beyond the {} positions of the rotary tables \
                 (max_position_embeddings)",
                offset + seq,
                self.positions()
            )));
        }
        Ok(())
    }

    /// Rotates `x` `[batch, heads, seq, head_dim]` whose first token is at `offset`.
    pub fn apply(&self, x: &Tensor, offset: usize) -> Result<Tensor> {
        let seq = x.dim(2)?;
        self.check_range(offset, seq)?;
        let half = self.rotary_dim / 2;
        let rows = |t: &[f32]| {
            Tensor::from_slice(
                &t[offset * half..(offset + seq) * half],
                (seq, half),
                &Device::Cpu,
            )
        };
        let (cos, sin) = (rows(&self.cos)?, rows(&self.sin)?);
        if self.rotary_dim == self.head_dim {
            return Ok(candle_nn::rotary_emb::rope(&x.contiguous()?, &cos, &sin)?);
        }
        let rot = x.narrow(3, 0, self.rotary_dim)?.contiguous()?;
        let pass = x.narrow(3, self.rotary_dim, self.head_dim - self.rotary_dim)?;
        let rot = candle_nn::rotary_emb::rope(&rot, &cos, &sin)?;
        Ok(Tensor::cat(&[&rot, &pass], 3)?)
    }

    /// Splits a projection `x` `[batch, seq, kv_heads * group * head_dim]` into heads and,
    /// if `rotate`, rotates them as positions `offset..offset + seq`. The result is
    /// `[batch, kv_heads, seq * group, head_dim]` with row `i * group + g` holding query head
    /// `kv * group + g` of token `i`: the heads that share a key/value head sit together, one
    /// token after the other, so a range of tokens is a range of rows.
    pub fn split_heads(
        &self,
        x: &Tensor,
        kv_heads: usize,
        offset: usize,
        rotate: bool,
    ) -> Result<Tensor> {
        let (_, seq, _) = x.dims3()?;
        if rotate {
            self.check_range(offset, seq)?;
        }
        let op = SplitHeads {
            kv_heads,
            head_dim: self.head_dim,
            half: if rotate { self.rotary_dim / 2 } else { 0 },
            cos: &self.cos,
            sin: &self.sin,
            offset,
        };
        Ok(x.contiguous()?.apply_op1_no_bwd(&op)?)
    }
}

/// The fused head split and rotation behind [`Rope::split_heads`].
struct SplitHeads<'a> {
    kv_heads: usize,
    head_dim: usize,
    /// Rotated pairs per head (0: no rotation).
    half: usize,
    cos: &'a [f32],
    sin: &'a [f32],
    offset: usize,
}

impl CustomOp1 for SplitHeads<'_> {
    fn name(&self) -> &'static str {
        "split-heads-rope"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("split-heads expects f32 activations")
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("split-heads expects a contiguous input")
        };
        let src = &data[start..end];
        let (b, seq, width) = layout.shape().dims3()?;
        let (kv, d, half) = (self.kv_heads, self.head_dim, self.half);
        if width % (kv * d) != 0 {
            candle_core::bail!("split-heads: width {width} is not a multiple of {kv} x {d}")
        }
        let group = width / (kv * d);
        // One unit: the `group` heads of one token that share key/value head `h`.
        let unit = group * d;
        let mut dst = vec![0f32; src.len()];
        dst.par_chunks_mut(unit)
            .with_min_len(16)
            .enumerate()
            .for_each(|(u, out)| {
                let i = u % seq;
                let h = (u / seq) % kv;
                let bi = u / (seq * kv);
                let from = (bi * seq + i) * width + h * unit;
                let x = &src[from..from + unit];
                let table = (self.offset + i) * half;
                let (cos, sin) = (
                    &self.cos[table..table + half],
                    &self.sin[table..table + half],
                );
                for (x, out) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
                    let (x1, x2) = x[..2 * half].split_at(half);
                    let (o1, rest) = out.split_at_mut(half);
                    let (o2, tail) = rest.split_at_mut(half);
                    for j in 0..half {
                        o1[j] = x1[j] * cos[j] - x2[j] * sin[j];
                        o2[j] = x2[j] * cos[j] + x1[j] * sin[j];
                    }
                    tail.copy_from_slice(&x[2 * half..]);
                }
            });
        Ok((CpuStorage::F32(dst), Shape::from((b, kv, seq * group, d))))
    }
}

/// `cos` and `sin` of every rotation angle, `[positions, rotary_dim / 2]` row-major, for base
/// `theta` rescaled by `scaling`: the tables the decoder and the distillation student share.
/// Angles are taken in f32 like the reference (`inv_freq` is an f32 tensor there), so that
/// large positions round the same way.
pub fn cos_sin(
    cfg: &ModelConfig,
    theta: f64,
    scaling: &RopeScaling,
    positions: usize,
) -> (Vec<f32>, Vec<f32>) {
    let rotary_dim = cfg.rotary_dim();
    let half = rotary_dim / 2;
    let base: Vec<f64> = (0..half)
        .map(|i| 1.0 / theta.powf(2.0 * i as f64 / rotary_dim as f64))
        .collect();
    let inv_freq: Vec<f32> = base
        .iter()
        .zip(scaling.divisors(&base))
        .map(|(f, d)| (f / d) as f32)
        .collect();
    let mut cos = Vec::with_capacity(positions * half);
    let mut sin = Vec::with_capacity(positions * half);
    for pos in 0..positions {
        for f in &inv_freq {
            let angle = pos as f32 * f;
            cos.push(angle.cos());
            sin.push(angle.sin());
        }
    }
    (cos, sin)
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
            rope_scaling: RopeScaling::None,
            partial_rotary_factor: partial,
            norm_eps: 1e-5,
            sliding_window: None,
            sliding_layers: None,
            local_rope_theta: None,
            query_pre_attn_scalar: None,
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
            activation_quant: None,
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

    /// `split_heads` must equal the plain path: split into `[b, heads, s, d]`, rotate, then
    /// regroup heads `kv * group + g` into rows `i * group + g` of kv head `kv`.
    #[test]
    fn split_heads_is_split_then_rotate() {
        let (b, s, heads, kv, d) = (2, 5, 4, 2, 8);
        let group = heads / kv;
        let x = Tensor::randn(0f32, 1.0, (b, s, heads * d), &Device::Cpu).unwrap();
        for partial in [1.0, 0.5] {
            let rope = Rope::new(&cfg(d, partial), 16).unwrap();
            let split = x
                .reshape((b, s, heads, d))
                .unwrap()
                .transpose(1, 2)
                .unwrap();
            let regroup = |t: Tensor| {
                t.reshape((b, kv, group, s, d))
                    .unwrap()
                    .transpose(2, 3)
                    .unwrap()
                    .reshape((b, kv, s * group, d))
                    .unwrap()
            };
            let want = regroup(rope.apply(&split, 3).unwrap());
            let got = rope.split_heads(&x, kv, 3, true).unwrap();
            let diff = (got - want)
                .unwrap()
                .abs()
                .unwrap()
                .flatten_all()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(diff < 1e-6, "partial {partial}: {diff}");
            let plain = rope.split_heads(&x, kv, 3, false).unwrap();
            let want = regroup(split.contiguous().unwrap());
            assert_eq!(
                plain.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                want.flatten_all().unwrap().to_vec1::<f32>().unwrap()
            );
        }
        let rope = Rope::new(&cfg(d, 1.0), 6).unwrap();
        assert!(
            rope.split_heads(&x, kv, 2, true).is_err(),
            "beyond the table"
        );
    }
}
