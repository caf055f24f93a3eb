//! The fixture models and block inputs the block-pass tests share.

use std::path::PathBuf;

use candle_core::{Device, Tensor};
use microllm_models::{Block, Decoder, NoTap};

/// The fixture model `name` (../shared/fixtures).
pub fn model(name: &str) -> Decoder {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/fixtures")
        .join(name);
    let ckpt = microllm_io::open(dir.to_str().unwrap()).unwrap();
    Decoder::load(&ckpt.config, ckpt.tensors.as_ref()).unwrap()
}

/// Hidden states entering block 1 for `batch` pseudo-random sequences of 24 tokens.
pub fn block1_inputs(m: &Decoder, batch: usize, seed: u64) -> Tensor {
    let mut state = seed;
    let vocab = m.config().vocab_size as u64;
    let ids: Vec<u32> = (0..batch * 24)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((state >> 33) % vocab) as u32
        })
        .collect();
    let ids = Tensor::from_vec(ids, (batch, 24), &Device::Cpu).unwrap();
    let x = m.embed(&ids).unwrap();
    m.blocks()[0]
        .forward(&x, m.positions(0), None, &mut NoTap)
        .unwrap()
}

/// Mean squared difference between `quantized`'s output on `x` and the model's block 1's.
pub fn output_error(m: &Decoder, quantized: &Block, x: &Tensor) -> f32 {
    let at = m.positions(0);
    let want = m.blocks()[1].forward(x, at, None, &mut NoTap).unwrap();
    let got = quantized.forward(x, at, None, &mut NoTap).unwrap();
    (got - want)
        .unwrap()
        .sqr()
        .unwrap()
        .mean_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}
