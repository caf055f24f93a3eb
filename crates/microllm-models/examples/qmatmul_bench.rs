//! Times one linear layer's product `x W^T` for a prompt-sized batch, with `W` stored as f32
//! (what every forward does today: the model dequantized on load) and as candle's packed
//! GGUF types through microllm's `PackedWeight` (the legacy types on its VNNI kernel) and
//! candle's `QMatMul` (the dot products on the blocks, activations quantized to 8 bits on the
//! fly). The question it answers: which weight types can be run packed without
//! losing speed, and so without the f32 copy of the model (issue 15).
//!
//! ```text
//! cargo run --release -p microllm-models --example qmatmul_bench -- [TOKENS=512] [OUT=1536] [IN=576] [RUNS=5]
//! ```
//!
//! Reports the best of RUNS in ms and GFLOP/s (`2 * tokens * out * in` flops). Random weights.

use std::time::{Duration, Instant};

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};
use microllm_core::{BlockType, PackedMatrix};
use microllm_models::{Activations, PackedWeight};

fn best_of(runs: usize, mut f: impl FnMut() -> candle_core::Result<Tensor>) -> Duration {
    let mut best = Duration::MAX;
    for _ in 0..runs {
        let t = Instant::now();
        let y = f().expect("product");
        // Materialise the result so nothing is left lazy.
        std::hint::black_box(y.dims());
        best = best.min(t.elapsed());
    }
    best
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mut next = |default: usize| args.next().map_or(Ok(default), |s| s.parse());
    let (tokens, out, inp, runs) = (next(512)?, next(1536)?, next(576)?, next(5)?);
    let dev = Device::Cpu;
    let x = Tensor::randn(0f32, 1.0, (tokens, inp), &dev)?;
    let w = Tensor::randn(0f32, 0.02, (out, inp), &dev)?;
    let flops = 2.0 * (tokens * out * inp) as f64;
    let report = |name: &str, d: Duration| {
        let s = d.as_secs_f64();
        println!(
            "{name:>22}: {:8.2} ms  {:7.1} GFLOP/s",
            s * 1e3,
            flops / s / 1e9
        );
    };
    println!("x [{tokens}, {inp}] W^T, W [{out}, {inp}], best of {runs}");
    let wt = w.t()?;
    report("f32", best_of(runs, || x.matmul(&wt)));
    for dtype in [
        GgmlDType::Q8_0,
        GgmlDType::Q4_0,
        GgmlDType::Q4_1,
        GgmlDType::Q5_0,
        GgmlDType::Q4K,
        GgmlDType::Q5K,
        GgmlDType::Q6K,
    ] {
        if !inp.is_multiple_of(dtype.block_size()) {
            println!(
                "{:>22}: in = {inp} is not a multiple of {}",
                format!("{dtype:?}"),
                dtype.block_size()
            );
            continue;
        }
        let qt = QTensor::quantize(&w, dtype)?;
        let packed = match dtype {
            GgmlDType::Q8_0 => Some(BlockType::Q8_0),
            GgmlDType::Q4_0 => Some(BlockType::Q4_0),
            GgmlDType::Q4_1 => Some(BlockType::Q4_1),
            GgmlDType::Q5_0 => Some(BlockType::Q5_0),
            _ => None,
        };
        if let Some(block_type) = packed {
            let m = PackedMatrix::new("w", block_type, out, inp, qt.data()?.to_vec())?;
            let p = PackedWeight::new(&m, Activations::Int8)?;
            let name = format!("{dtype:?} ({})", p.path());
            report(&name, best_of(runs, || Ok(p.matmul(&x).expect("product"))));
        }
        let q = QMatMul::from_qtensor(qt)?;
        report(
            &format!("{dtype:?} (candle)"),
            best_of(runs, || q.forward(&x)),
        );
    }
    Ok(())
}
