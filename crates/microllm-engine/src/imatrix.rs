//! The importance matrix of a model (llama.cpp's imatrix), measured on calibration data.
//!
//! One streamed pass over the *original* blocks, as llama.cpp's `llama-imatrix` measures the
//! unquantized model: the calibration windows are embedded, each block is loaded, run on every
//! window with a [`LinearTap`] that accumulates the square of every linear's input per column,
//! and dropped; its outputs are the next block's inputs. Peak memory is one block plus the
//! windows' hidden states. The result is the mean square per input column of every linear
//! ([`ImportanceMatrix`]), which weighted round-to-nearest into k-quant blocks consumes.

use candle_core::{DType, Tensor};
use microllm_core::{LinearKind, ModelConfig, Progress, Result, TensorSource, names};
use microllm_io::gguf::ImportanceMatrix;
use microllm_models::{Block, LinearTap, Positions, RopeTables};

use crate::calibration::embed_windows;

/// Measures the importance matrix of every linear of the model on `calibration` windows (all
/// of one length), one block in memory at a time.
pub fn measure_imatrix(
    cfg: &ModelConfig,
    source: &dyn TensorSource,
    calibration: &[Vec<u32>],
    progress: &dyn Progress,
) -> Result<ImportanceMatrix> {
    let seqlen = calibration.first().map_or(1, Vec::len).max(1);
    let tokens: usize = calibration.iter().map(Vec::len).sum();
    let rope = RopeTables::new(cfg, seqlen)?;
    let at = Positions {
        rope: &rope,
        offset: 0,
    };
    let mut hidden = embed_windows(cfg, source, calibration)?;
    let mut matrix = ImportanceMatrix::new(tokens);
    progress.begin("measuring importance", cfg.num_layers as u64, "blocks");
    for layer in 0..cfg.num_layers {
        let block = Block::load(cfg, layer, source)?;
        let mut tap = SquareSums::default();
        for x in hidden.iter_mut() {
            *x = block.forward(x, at, None, &mut tap)?;
        }
        for (kind, sums) in tap.sums {
            let means = sums.iter().map(|s| (s / tokens.max(1) as f64) as f32);
            matrix.insert(
                names::linear_weight(cfg.family, layer, kind),
                means.collect(),
            );
        }
        progress.advance(1);
    }
    progress.finish();
    Ok(matrix)
}

/// Sums of the squared inputs of each linear of one block, per input column.
#[derive(Default)]
struct SquareSums {
    sums: Vec<(LinearKind, Vec<f64>)>,
}

impl LinearTap for SquareSums {
    fn observe(&mut self, _layer: usize, kind: LinearKind, input: &Tensor) -> Result<()> {
        let cols = input.dim(candle_core::D::Minus1)?;
        let rows = input.elem_count() / cols;
        // f32 squares summed over one window's tokens, accumulated across windows in f64.
        let window = input
            .reshape((rows, cols))?
            .sqr()?
            .sum(0)?
            .to_dtype(DType::F64)?
            .to_vec1::<f64>()?;
        match self.sums.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, acc)) => acc.iter_mut().zip(window).for_each(|(a, w)| *a += w),
            None => self.sums.push((kind, window)),
        }
        Ok(())
    }
}
