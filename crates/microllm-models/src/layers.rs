//! Linear layers, norms and the MLP.

use candle_core::{D, Tensor};
use microllm_core::{Activation, MlpKind, ModelConfig, NormKind, Result, TensorSource};

/// `y = x W^T + b` with `W` `[out, in]`.
#[derive(Debug, Clone)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

impl Linear {
    /// Loads `{prefix}.weight` `[out, in]` and, if `bias`, `{prefix}.bias` `[out]`.
    pub fn load(
        src: &dyn TensorSource,
        prefix: &str,
        out: usize,
        inp: usize,
        bias: bool,
    ) -> Result<Self> {
        let weight = src.load_shaped(&format!("{prefix}.weight"), &[out, inp])?;
        let bias = if bias {
            Some(src.load_shaped(&format!("{prefix}.bias"), &[out])?)
        } else {
            None
        };
        Ok(Self { weight, bias })
    }

    /// Applies the layer to `x` `[..., in]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // A plain 2-D product on contiguous rows is gemm's fast path.
        let dims = x.dims().to_vec();
        let inp = dims[dims.len() - 1];
        let rows = x.elem_count() / inp;
        let y = x.reshape((rows, inp))?.matmul(&self.weight.t()?)?;
        let y = match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        let mut out_dims = dims;
        *out_dims.last_mut().expect("non-empty") = self.weight.dim(0)?;
        Ok(y.reshape(out_dims)?)
    }
}

/// RMSNorm or LayerNorm over the last dimension.
#[derive(Debug, Clone)]
pub struct Norm {
    pub kind: NormKind,
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub eps: f32,
}

impl Norm {
    /// Loads `{prefix}.weight` (and `.bias` for LayerNorm).
    pub fn load(src: &dyn TensorSource, prefix: &str, cfg: &ModelConfig) -> Result<Self> {
        let kind = cfg.layout().norm;
        let h = cfg.hidden_size;
        let weight = src.load_shaped(&format!("{prefix}.weight"), &[h])?;
        let bias = match kind {
            NormKind::Layer => Some(src.load_shaped(&format!("{prefix}.bias"), &[h])?),
            NormKind::Rms => None,
        };
        Ok(Self {
            kind,
            weight,
            bias,
            eps: cfg.norm_eps as f32,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = x.contiguous()?;
        Ok(match (&self.kind, &self.bias) {
            (NormKind::Rms, _) => candle_nn::ops::rms_norm(&x, &self.weight, self.eps)?,
            (NormKind::Layer, Some(b)) => {
                candle_nn::ops::layer_norm(&x, &self.weight, b, self.eps)?
            }
            (NormKind::Layer, None) => {
                let mean = x.mean_keepdim(D::Minus1)?;
                let centered = x.broadcast_sub(&mean)?;
                let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
                centered
                    .broadcast_div(&(var + self.eps as f64)?.sqrt()?)?
                    .broadcast_mul(&self.weight)?
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
