//! Linear layers, norms and the MLP.

use std::sync::Arc;

use candle_core::{D, Tensor};
use microllm_core::{
    Activation, ActivationQuant, Error, MlpKind, ModelConfig, NormKind, Result, TensorSource,
};

use crate::packed::{Activations, PackedWeight, QuantActs};

/// The weight of a [`Linear`]: f32 in memory, or kept in the file's packed type.
#[derive(Debug, Clone)]
pub enum LinearWeight {
    Dense(Tensor),
    Packed(Arc<PackedWeight>),
}

/// `y = x W^T + b` with `W` `[out, in]`.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: LinearWeight,
    pub bias: Option<Tensor>,
    /// Quantization of the input before the product (W8A8 checkpoints run this way).
    pub input_quant: Option<ActivationQuant>,
}

impl Linear {
    /// A layer over a dense f32 weight `[out, in]`.
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self {
            weight: LinearWeight::Dense(weight),
            bias,
            input_quant: None,
        }
    }

    /// A layer over a packed weight.
    pub fn packed(weight: Arc<PackedWeight>, bias: Option<Tensor>) -> Self {
        Self {
            weight: LinearWeight::Packed(weight),
            bias,
            input_quant: None,
        }
    }

    /// Loads `{prefix}.weight` `[out, in]` as f32 and, if `bias`, `{prefix}.bias` `[out]`.
    pub fn load(
        src: &dyn TensorSource,
        prefix: &str,
        out: usize,
        inp: usize,
        bias: bool,
    ) -> Result<Self> {
        Self::load_with(src, prefix, [out, inp], bias, None)
    }

    /// As [`load`](Self::load); with `packed`, a weight the source holds in a packed type
    /// stays in it, its products computed with those activations.
    pub fn load_with(
        src: &dyn TensorSource,
        prefix: &str,
        [out, inp]: [usize; 2],
        bias: bool,
        packed: Option<Activations>,
    ) -> Result<Self> {
        let name = format!("{prefix}.weight");
        let weight = match packed {
            Some(acts) => load_weight(src, &name, [out, inp], acts)?,
            None => LinearWeight::Dense(src.load_shaped(&name, &[out, inp])?),
        };
        let bias = if bias {
            Some(src.load_shaped(&format!("{prefix}.bias"), &[out])?)
        } else {
            None
        };
        Ok(Self {
            weight,
            bias,
            input_quant: None,
        })
    }

    /// The weight as stored in the layer.
    pub fn stored_weight(&self) -> &LinearWeight {
        &self.weight
    }

    /// The weight `[out, in]` as f32 (dequantized when packed).
    pub fn weight(&self) -> Result<Tensor> {
        match &self.weight {
            LinearWeight::Dense(w) => Ok(w.clone()),
            LinearWeight::Packed(p) => p.dequantize(),
        }
    }

    /// Replaces the weight with a dense one of the same shape.
    pub fn set_weight(&mut self, weight: Tensor) {
        self.weight = LinearWeight::Dense(weight);
    }

    /// Replaces the weight with a packed one of the same shape.
    pub fn set_packed(&mut self, weight: Arc<PackedWeight>) {
        self.weight = LinearWeight::Packed(weight);
    }

    /// Output features.
    pub fn out_features(&self) -> usize {
        match &self.weight {
            LinearWeight::Dense(w) => w.dims()[0],
            LinearWeight::Packed(p) => p.rows(),
        }
    }

    /// Input features.
    pub fn in_features(&self) -> usize {
        match &self.weight {
            LinearWeight::Dense(w) => w.dims()[1],
            LinearWeight::Packed(p) => p.cols(),
        }
    }

    /// Applies the layer to `x` `[..., in]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_shared(&SharedInput::new(x))
    }

    /// Applies the layer to an input other layers read too (see [`SharedInput`]).
    pub fn forward_shared(&self, input: &SharedInput<'_>) -> Result<Tensor> {
        let x = match self.input_quant {
            Some(q) => match input.fake_quantized.get() {
                Some(t) => t,
                None => {
                    let t = fake_quantize_rows(input.x, q)?;
                    input.fake_quantized.get_or_init(|| t)
                }
            },
            None => input.x,
        };
        // A plain 2-D product on contiguous rows is gemm's fast path.
        let dims = x.dims().to_vec();
        let inp = dims[dims.len() - 1];
        let rows = x.elem_count() / inp;
        let x = x.reshape((rows, inp))?.contiguous()?;
        let y = match &self.weight {
            LinearWeight::Dense(w) => x.matmul(&w.t()?)?,
            LinearWeight::Packed(p) if p.takes_quantized_acts() => {
                let quantized = match input.quantized.get() {
                    Some(q) => q,
                    None => {
                        let values = x.flatten_all()?.to_vec1::<f32>()?;
                        input.quantized.get_or_init(|| QuantActs::new(&values, inp))
                    }
                };
                p.matmul_with(&x, Some(quantized))?
            }
            LinearWeight::Packed(p) => p.matmul(&x)?,
        };
        let y = match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        let mut out_dims = dims;
        *out_dims.last_mut().expect("non-empty") = self.out_features();
        Ok(y.reshape(out_dims)?)
    }
}

/// An input several linear layers read (q/k/v, gate/up): where their products take 8-bit
/// activations, it is quantized once for all of them instead of once per layer.
pub struct SharedInput<'a> {
    x: &'a Tensor,
    quantized: std::cell::OnceCell<QuantActs>,
    /// `x` quantized and dequantized per token, for layers with an [`ActivationQuant`].
    fake_quantized: std::cell::OnceCell<Tensor>,
}

impl<'a> SharedInput<'a> {
    pub fn new(x: &'a Tensor) -> Self {
        Self {
            x,
            quantized: std::cell::OnceCell::new(),
            fake_quantized: std::cell::OnceCell::new(),
        }
    }
}

/// `x` (`[..., in]`) with every token (row over the last dimension) quantized and
/// dequantized by `q`, in f32.
fn fake_quantize_rows(x: &Tensor, q: ActivationQuant) -> Result<Tensor> {
    let inp = x.dims().last().copied().unwrap_or(0);
    let mut values = x
        .to_dtype(candle_core::DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    if inp > 0 {
        values
            .chunks_exact_mut(inp)
            .for_each(|row| q.fake_quantize(row));
    }
    Ok(Tensor::from_vec(values, x.dims(), x.device())?)
}

/// `name` checked to be `shape`, packed when the source holds it packed, else f32.
pub(crate) fn load_weight(
    src: &dyn TensorSource,
    name: &str,
    shape: [usize; 2],
    acts: Activations,
) -> Result<LinearWeight> {
    let info = src.info(name).ok_or_else(|| Error::MissingTensor {
        name: name.to_string(),
        origin: src.origin(),
    })?;
    if info.shape != shape {
        return Err(Error::Shape {
            name: name.to_string(),
            origin: src.origin(),
            expected: shape.to_vec(),
            actual: info.shape,
        });
    }
    Ok(match src.load_packed(name)? {
        Some(m) => LinearWeight::Packed(Arc::new(PackedWeight::new(&m, acts)?)),
        None => LinearWeight::Dense(src.load(name)?),
    })
}

/// RMSNorm or LayerNorm over the last dimension.
#[derive(Debug, Clone)]
pub struct Norm {
    pub kind: NormKind,
    /// The weight as the checkpoint stores it.
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub eps: f32,
    /// The weight is applied as `1 + weight` (Gemma).
    pub unit_offset: bool,
}

impl Norm {
    /// Loads `{prefix}.weight` (and `.bias` for LayerNorm) over the hidden size.
    pub fn load(src: &dyn TensorSource, prefix: &str, cfg: &ModelConfig) -> Result<Self> {
        Self::load_width(src, prefix, cfg, cfg.hidden_size)
    }

    /// Loads a norm over `width` values (a head's queries or keys for q/k norms).
    pub fn load_width(
        src: &dyn TensorSource,
        prefix: &str,
        cfg: &ModelConfig,
        width: usize,
    ) -> Result<Self> {
        let layout = cfg.layout();
        let weight = src.load_shaped(&format!("{prefix}.weight"), &[width])?;
        let bias = match layout.norm {
            NormKind::Layer => Some(src.load_shaped(&format!("{prefix}.bias"), &[width])?),
            NormKind::Rms => None,
        };
        Ok(Self {
            kind: layout.norm,
            weight,
            bias,
            eps: cfg.norm_eps as f32,
            unit_offset: layout.norm_unit_offset,
        })
    }

    /// The multiplier actually applied: `weight`, or `1 + weight` for Gemma.
    pub fn scale(&self) -> Result<Tensor> {
        Ok(if self.unit_offset {
            (&self.weight + 1.0)?
        } else {
            self.weight.clone()
        })
    }

    /// Divides the norm's output by `s` per channel (`[width]`): the multiplier actually
    /// applied and a LayerNorm's bias are divided, so a following linear whose columns are
    /// multiplied by `s` computes what it did (AWQ's folded scales).
    pub fn divide_channels(&mut self, s: &Tensor) -> Result<()> {
        let s = s.to_dtype(self.weight.dtype())?;
        let scale = self.scale()?.div(&s)?;
        self.weight = if self.unit_offset {
            (scale - 1.0)?
        } else {
            scale
        };
        if let Some(b) = &self.bias {
            self.bias = Some(b.div(&s)?);
        }
        Ok(())
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = x.contiguous()?;
        let scale = self.scale()?;
        let scale = &scale;
        Ok(match (&self.kind, &self.bias) {
            (NormKind::Rms, _) => candle_nn::ops::rms_norm(&x, scale, self.eps)?,
            (NormKind::Layer, Some(b)) => candle_nn::ops::layer_norm(&x, scale, b, self.eps)?,
            (NormKind::Layer, None) => {
                let mean = x.mean_keepdim(D::Minus1)?;
                let centered = x.broadcast_sub(&mean)?;
                let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
                centered
                    .broadcast_div(&(var + self.eps as f64)?.sqrt()?)?
                    .broadcast_mul(scale)?
            }
        })
    }
}

/// Applies an activation function.
pub fn activate(act: Activation, x: &Tensor) -> Result<Tensor> {
    Ok(match act {
        Activation::Silu => candle_nn::ops::silu(x)?,
        // candle's `gelu` is the tanh approximation, which is what `gelu_new` means.
        Activation::GeluNew => x.gelu()?,
        Activation::Gelu => x.gelu_erf()?,
        Activation::Relu => x.relu()?,
    })
}

/// The feed-forward part of a block.
#[derive(Debug, Clone)]
pub struct Mlp {
    pub kind: MlpKind,
    pub gate: Option<Linear>,
    pub up: Linear,
    pub down: Linear,
    pub act: Activation,
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// A layer with per-token int8 inputs computes `W q(x)`, `q` quantizing each token on
    /// its own (batch and sequence positions alike), whatever the input's layout.
    #[test]
    fn input_quantization_is_per_token() {
        let dev = Device::Cpu;
        let x: Vec<f32> = (0..2 * 3 * 8)
            .map(|i| ((i * 37 % 19) as f32 - 9.0) * (1.0 + (i % 8) as f32))
            .collect();
        let w: Vec<f32> = (0..4 * 8)
            .map(|i| ((i * 13 % 7) as f32 - 3.0) * 0.1)
            .collect();
        let mut linear = Linear::new(Tensor::from_slice(&w, (4, 8), &dev).unwrap(), None);
        linear.input_quant = Some(ActivationQuant::Int8PerToken);
        // A transposed (non-contiguous) view of the same values.
        let xt = Tensor::from_slice(&x, (2, 8, 3), &dev).unwrap();
        let xs = Tensor::from_slice(&x, (2, 3, 8), &dev).unwrap();
        let mut expect = Vec::new();
        for token in x.chunks_exact(8) {
            let mut q = token.to_vec();
            ActivationQuant::Int8PerToken.fake_quantize(&mut q);
            for row in w.chunks_exact(8) {
                expect.push(row.iter().zip(&q).map(|(a, b)| a * b).sum::<f32>());
            }
        }
        let got = linear
            .forward(&xs)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        for (g, e) in got.iter().zip(&expect) {
            assert!((g - e).abs() < 1e-4, "{g} vs {e}");
        }
        let strided = xt.transpose(1, 2).unwrap();
        let values = |t: Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let got = values(linear.forward(&strided).unwrap());
        let want = values(linear.forward(&strided.contiguous().unwrap()).unwrap());
        assert_eq!(got, want);
    }

    fn t(v: &[f32]) -> Tensor {
        Tensor::new(v, &Device::Cpu)
            .unwrap()
            .reshape((1, v.len()))
            .unwrap()
    }

    fn vals(x: Tensor) -> Vec<f32> {
        x.flatten_all().unwrap().to_vec1().unwrap()
    }

    #[test]
    fn rms_norm_by_hand() {
        // mean of squares of (3, 4) is 12.5.
        let norm = Norm {
            kind: NormKind::Rms,
            weight: Tensor::new(&[1f32, 2.0], &Device::Cpu).unwrap(),
            bias: None,
            eps: 0.0,
            unit_offset: false,
        };
        let y = vals(norm.forward(&t(&[3.0, 4.0])).unwrap());
        let r = 12.5f32.sqrt();
        assert!(
            (y[0] - 3.0 / r).abs() < 1e-6 && (y[1] - 8.0 / r).abs() < 1e-6,
            "{y:?}"
        );
    }

    #[test]
    fn unit_offset_applies_one_plus_weight() {
        // Gemma: a stored weight of (0, 1) scales by (1, 2).
        let norm = Norm {
            kind: NormKind::Rms,
            weight: Tensor::new(&[0f32, 1.0], &Device::Cpu).unwrap(),
            bias: None,
            eps: 0.0,
            unit_offset: true,
        };
        let y = vals(norm.forward(&t(&[3.0, 4.0])).unwrap());
        let r = 12.5f32.sqrt();
        assert!(
            (y[0] - 3.0 / r).abs() < 1e-6 && (y[1] - 8.0 / r).abs() < 1e-6,
            "{y:?}"
        );
    }

    #[test]
    fn layer_norm_by_hand() {
        let norm = Norm {
            kind: NormKind::Layer,
            weight: Tensor::new(&[1f32, 1.0], &Device::Cpu).unwrap(),
            bias: Some(Tensor::new(&[0.5f32, 0.5], &Device::Cpu).unwrap()),
            eps: 0.0,
            unit_offset: false,
        };
        let y = vals(norm.forward(&t(&[1.0, 3.0])).unwrap());
        assert!(
            (y[0] + 0.5).abs() < 1e-6 && (y[1] - 1.5).abs() < 1e-6,
            "{y:?}"
        );
    }

    #[test]
    fn gelu_new_is_the_tanh_approximation() {
        let x = 1.5f32;
        let tanh = 0.5
            * x
            * (1.0 + ((2.0 / std::f32::consts::PI).sqrt() * (x + 0.044715 * x.powi(3))).tanh());
        let y = vals(activate(Activation::GeluNew, &t(&[x])).unwrap());
        assert!((y[0] - tanh).abs() < 1e-5, "{} vs {tanh}", y[0]);
        let silu = vals(activate(Activation::Silu, &t(&[x])).unwrap());
        assert!((silu[0] - x / (1.0 + (-x).exp())).abs() < 1e-6);
    }

    #[test]
    fn linear_with_bias() {
        let lin = Linear::new(
            Tensor::new(&[[1f32, 2.0], [0.0, -1.0], [3.0, 0.0]], &Device::Cpu).unwrap(),
            Some(Tensor::new(&[0.5f32, 0.0, -1.0], &Device::Cpu).unwrap()),
        );
        let x = Tensor::new(&[1f32, 1.0], &Device::Cpu)
            .unwrap()
            .reshape((1, 1, 2))
            .unwrap();
        let y = lin.forward(&x).unwrap();
        assert_eq!(y.dims(), &[1, 1, 3]);
        assert_eq!(vals(y), vec![3.5, -1.0, 2.0]);
    }
}
