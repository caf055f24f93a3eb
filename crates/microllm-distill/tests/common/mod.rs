//! Shared helpers of the distillation tests: the fixture models beside the checkout.
#![allow(dead_code)]

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use microllm_io::Checkpoint;

/// The fixture families the student supports (every family microllm implements).
pub const FAMILIES: [&str; 8] = [
    "llama-tiny",
    "mistral-tiny",
    "qwen2-tiny",
    "phi-tiny",
    "gemma3-tiny",
    "qwen3-tiny",
    "phi3-tiny",
    "llama3-tiny",
];

/// `../shared/fixtures/NAME`; a missing directory is a broken environment.
pub fn fixture(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/fixtures")
        .join(name);
    assert!(dir.is_dir(), "missing fixture {}", dir.display());
    dir
}

pub fn open(name: &str) -> Checkpoint {
    microllm_io::open(fixture(name).to_str().unwrap()).unwrap()
}

/// The reference token ids `[2, 24]` of a fixture.
pub fn reference_ids(name: &str) -> Tensor {
    let path = fixture(name).join("reference.safetensors");
    let tensors = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    tensors["input_ids"].to_dtype(DType::U32).unwrap()
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims());
    (a.to_dtype(DType::F64).unwrap() - b.to_dtype(DType::F64).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}
