//! Only the diagonal of the layer Hessian: `diag(H) = 2/n * sum_t x_t²` per input feature.
//!
//! Wanda scores a weight by `|W_ij| * ||X_j||`, which needs the inputs' column norms and
//! nothing else; with no OBS solve in the pass (Wanda alone, no quantization) accumulating
//! the whole `[in, in]` Hessian spends `in²` operations per token where `in` suffice (on
//! SmolLM2's 1536-wide down projection, 1536 times the work). The running average is the
//! Hessian's ([`crate::HessianAccumulator`]), so the values are its diagonal up to rounding:
//! the squares are summed in f64 here, where the Hessian sums f32 products.

use candle_core::Tensor;
use microllm_core::{Error, Result};

use crate::hessian::{column_sums_of_squares, with_f32_data};

/// Running `2/n * sum_t x_t²` per input feature of one linear layer.
#[derive(Debug, Clone)]
pub struct DiagonalAccumulator {
    d: Vec<f64>,
    n_tokens: usize,
}

impl DiagonalAccumulator {
    /// An empty accumulator for a layer with `in_features` inputs.
    pub fn new(in_features: usize) -> Self {
        Self {
            d: vec![0.0; in_features],
            n_tokens: 0,
        }
    }

    /// Tokens accumulated so far.
    pub fn n_tokens(&self) -> usize {
        self.n_tokens
    }

    /// The current diagonal.
    pub fn diagonal(&self) -> &[f64] {
        &self.d
    }

    /// The diagonal, giving up the accumulator.
    pub fn into_diagonal(self) -> Vec<f64> {
        self.d
    }

    /// Adds a batch of layer inputs: any tensor whose last dimension is the layer's input
    /// width (`[tokens, in]`, `[batch, seq, in]`, any float dtype). A batch with non-finite
    /// values is refused and leaves the accumulator unchanged.
    pub fn add_batch(&mut self, x: &Tensor) -> Result<()> {
        let inp = self.d.len();
        let dims = x.dims();
        if dims.last().copied().unwrap_or(0) != inp || inp == 0 {
            return Err(Error::Invalid(format!(
                "Hessian diagonal for {inp} input features: activation batch has shape {dims:?}"
            )));
        }
        let m = x.elem_count() / inp;
        if m == 0 {
            return Ok(());
        }
        let sq = with_f32_data(x, |data| Ok(column_sums_of_squares(data, inp)))?;
        if sq.iter().any(|s| !s.is_finite()) {
            return Err(Error::Invalid(format!(
                "activation batch of shape {dims:?} has non-finite values"
            )));
        }
        let (n, mf) = (self.n_tokens as f64, m as f64);
        let keep = n / (n + mf);
        let add = 2.0 / (n + mf);
        for (d, s) in self.d.iter_mut().zip(sq) {
            *d = *d * keep + add * s;
        }
        self.n_tokens += m;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::HessianAccumulator;
    use candle_core::Device;

    #[test]
    fn it_is_the_hessians_diagonal() {
        let (inp, dev) = (7, Device::Cpu);
        let mut full = HessianAccumulator::new(inp);
        let mut diag = DiagonalAccumulator::new(inp);
        for b in 0..3 {
            let vals: Vec<f32> = (0..5 * inp)
                .map(|i| ((i * 37 + b * 11) % 23) as f32 / 7.0 - 1.5)
                .collect();
            let x = Tensor::from_vec(vals, (5, inp), &dev).unwrap();
            full.add_batch(&x).unwrap();
            diag.add_batch(&x).unwrap();
        }
        assert_eq!(diag.n_tokens(), full.n_tokens());
        for (j, &d) in diag.diagonal().iter().enumerate() {
            let h = full.hessian()[j * inp + j];
            assert!((d - h).abs() <= 1e-6 * h.abs().max(1.0), "{j}: {d} vs {h}");
        }
    }

    #[test]
    fn non_finite_batches_are_refused_and_change_nothing() {
        let dev = Device::Cpu;
        let mut diag = DiagonalAccumulator::new(2);
        diag.add_batch(&Tensor::new(&[[1f32, 2.0]], &dev).unwrap())
            .unwrap();
        let before = diag.diagonal().to_vec();
        let bad = Tensor::new(&[[f32::NAN, 1.0]], &dev).unwrap();
        assert!(diag.add_batch(&bad).is_err());
        assert_eq!(diag.diagonal(), before);
        assert!(
            diag.add_batch(&Tensor::new(&[[1f32, 2.0, 3.0]], &dev).unwrap())
                .is_err()
        );
    }
}
