//! Importance matrices: how much each input column of a matrix matters, for weighted
//! round-to-nearest.
//!
//! Round-to-nearest into k-quant blocks chooses each block's scales to minimise the squared
//! error of the weights. What matters is the error of the layer's *output*, `(W - Q) x`, and
//! over calibration inputs its expectation is `sum_j E[x_j^2] (W - Q)_ij^2` when the inputs'
//! columns are uncorrelated: the error of column `j` should be weighted by the mean square of
//! input `j`. That vector per matrix is llama.cpp's "importance matrix" (imatrix); candle's
//! k-quant quantizers take it (`QTensor::quantize_imatrix`). GPTQ uses the whole second
//! moment `E[x x^T]` instead; the imatrix is its diagonal, and costs one forward pass.

use std::collections::BTreeMap;

/// Per-column importance (mean square of the layer's input over calibration tokens) of the
/// matrices of a model, by Hugging Face weight name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ImportanceMatrix {
    pub(super) columns: BTreeMap<String, Vec<f32>>,
    /// Calibration tokens the means were taken over.
    pub tokens: usize,
}

impl ImportanceMatrix {
    /// An empty matrix over `tokens` calibration tokens.
    pub fn new(tokens: usize) -> Self {
        Self {
            columns: BTreeMap::new(),
            tokens,
        }
    }

    /// Sets the importance of `hf_name`'s input columns.
    pub fn insert(&mut self, hf_name: impl Into<String>, columns: Vec<f32>) {
        self.columns.insert(hf_name.into(), columns);
    }

    /// The importance of `hf_name`'s input columns, if measured.
    pub fn columns(&self, hf_name: &str) -> Option<&[f32]> {
        self.columns.get(hf_name).map(Vec::as_slice)
    }

    /// Every entry: weight name and per-column importance, in name order.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &[f32])> {
        self.columns.iter().map(|(n, c)| (n.as_str(), c.as_slice()))
    }

    /// Matrices measured.
    pub fn len(&self) -> usize {
        self.columns.len()
    }

    /// Whether nothing was measured.
    pub fn is_empty(&self) -> bool {
        self.columns.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use crate::gguf::GgufType;
    use candle_core::quantized::QTensor;
    use candle_core::{Device, Tensor};

    /// The property the whole feature rests on: with inputs whose columns differ in scale,
    /// candle's importance-weighted Q4_K blocks give a smaller output error than plain ones.
    #[test]
    fn importance_weighted_k_quants_lose_less_output() {
        let dev = Device::Cpu;
        let (rows, cols, tokens) = (64, 512, 256);
        let w = Tensor::randn(0f32, 1.0, (rows, cols), &dev).unwrap();
        // Column j's inputs have scale s_j spread over two orders of magnitude.
        let scale: Vec<f32> = (0..cols)
            .map(|j| 10f32.powf(2.0 * ((j * 37) % cols) as f32 / cols as f32 - 1.0))
            .collect();
        let s = Tensor::from_slice(&scale, (1, cols), &dev).unwrap();
        let x = Tensor::randn(0f32, 1.0, (tokens, cols), &dev)
            .unwrap()
            .broadcast_mul(&s)
            .unwrap();
        let imatrix: Vec<f32> = scale.iter().map(|s| s * s).collect();
        let output_error = |q: QTensor| -> f32 {
            let deq = q.dequantize(&dev).unwrap();
            let diff = x.matmul(&(&w - deq).unwrap().t().unwrap()).unwrap();
            diff.sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        };
        let plain = output_error(QTensor::quantize(&w, GgufType::Q4K.candle().unwrap()).unwrap());
        let weighted = output_error(
            QTensor::quantize_imatrix(&w, &imatrix, GgufType::Q4K.candle().unwrap()).unwrap(),
        );
        assert!(
            weighted < 0.9 * plain,
            "weighted {weighted} vs plain {plain}"
        );
    }
}
