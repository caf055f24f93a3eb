//! The importance matrix on a fixture model: every linear's entry is the mean square, per
//! input column, of what that linear sees in the unquantized model's forward pass.

use std::path::PathBuf;

use candle_core::{D, Tensor};
use microllm_core::{LinearKind, NoProgress, names};
use microllm_engine::measure_imatrix;
use microllm_models::{Block, Decoder, LinearTap, Positions};

/// Records the input of every linear of a block, as the forward pass shows it.
#[derive(Default)]
struct Inputs(Vec<(usize, LinearKind, Tensor)>);

impl LinearTap for Inputs {
    fn observe(&mut self, layer: usize, kind: LinearKind, x: &Tensor) -> microllm_core::Result<()> {
        self.0.push((layer, kind, x.clone()));
        Ok(())
    }
}

#[test]
fn imatrix_is_the_mean_square_of_every_linears_input() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/llama-tiny");
    let ckpt = microllm_io::open(dir.to_str().unwrap()).unwrap();
    let cfg = &ckpt.config;
    let vocab = cfg.vocab_size as u32;
    let windows: Vec<Vec<u32>> = (0..3)
        .map(|w| (0..16).map(|t| (w * 131 + t * 17 + 5) % vocab).collect())
        .collect();
    let matrix = measure_imatrix(cfg, ckpt.tensors.as_ref(), &windows, &NoProgress).unwrap();
    assert_eq!(matrix.tokens, 48);

    // The same quantities by a plain forward pass of the whole model over all windows.
    let model = Decoder::load(cfg, ckpt.tensors.as_ref()).unwrap();
    let mut inputs = Inputs::default();
    for w in &windows {
        let ids = Tensor::from_slice(w, (1, w.len()), &candle_core::Device::Cpu).unwrap();
        let mut x = model.embed(&ids).unwrap();
        let at: Positions<'_> = model.positions(0);
        for block in model.blocks() {
            x = Block::forward(block, &x, at, None, &mut inputs).unwrap();
        }
    }
    let mut checked = 0;
    for layer in 0..cfg.num_layers {
        for kind in LinearKind::ALL {
            let Some(got) = matrix.columns(&names::linear_weight(cfg.family, layer, kind)) else {
                continue;
            };
            let seen: Vec<Tensor> = inputs
                .0
                .iter()
                .filter(|(l, k, _)| *l == layer && *k == kind)
                .map(|(_, _, x)| x.squeeze(0).unwrap())
                .collect();
            let all = Tensor::cat(&seen, 0).unwrap();
            let expected: Vec<f32> = all.sqr().unwrap().mean(0).unwrap().to_vec1().unwrap();
            assert_eq!(got.len(), all.dim(D::Minus1).unwrap());
            for (g, e) in got.iter().zip(&expected) {
                assert!(
                    (g - e).abs() <= 1e-5 * e.abs().max(1e-3),
                    "{layer} {kind:?}: {g} vs {e}"
                );
            }
            checked += 1;
        }
    }
    assert_eq!(
        checked,
        7 * cfg.num_layers,
        "every linear of every block measured"
    );
}
