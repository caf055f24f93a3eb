//! Times [`HessianAccumulator::add_batch`] on SmolLM2-sized layers: `m` tokens per batch into
//! an `in x in` Hessian (the last pending tokens folded in before the clock stops), reporting
//! ms per batch and GFLOP/s counted as the full product (`in * in * m * 2` flops, even when
//! only a triangle is computed).
//!
//! `cargo run --release -p microllm-quant --example hessian_bench -- [BATCHES=20] [TOKENS=512] [IN...]`
//! (default widths: 576 and 1536). `KERNEL=gemm|f32|bf16` in the environment picks the
//! product (`HessianKernel`): faer's GEMM, the AVX-512 f32 tiles (the default where the CPU
//! has AVX-512), or the AVX-512 BF16 tiles on bf16-rounded inputs (also on CPUs where GPTQ
//! keeps f32 because they are slower there).

mod common;

// As in the binary, so the example measures what a run does.
#[global_allocator]
static ALLOC: microllm_core::alloc::HugePageAlloc = microllm_core::alloc::HugePageAlloc;

use common::values;

use std::time::Instant;

use candle_core::{Device, Tensor};
use microllm_quant::{HessianAccumulator, HessianKernel};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let batches: usize = args.next().map_or(Ok(20), |s| s.parse())?;
    let tokens: usize = args.next().map_or(Ok(512), |s| s.parse())?;
    let mut widths = args.map(|s| s.parse()).collect::<Result<Vec<usize>, _>>()?;
    if widths.is_empty() {
        widths = vec![576, 1536];
    }
    for inp in widths {
        let data = Tensor::from_vec(
            values(tokens * inp, inp as u64),
            (tokens, inp),
            &Device::Cpu,
        )?;
        let mut acc = match std::env::var("KERNEL").as_deref() {
            Ok("gemm") => HessianAccumulator::with_kernel(inp, HessianKernel::Gemm),
            Ok("bf16") => HessianAccumulator::with_kernel(inp, HessianKernel::TiledBf16),
            Ok("f32") | Err(_) => HessianAccumulator::with_kernel(inp, HessianKernel::TiledF32)
                .or_else(|| HessianAccumulator::with_kernel(inp, HessianKernel::Gemm)),
            Ok(other) => return Err(format!("KERNEL={other}: gemm, f32 or bf16").into()),
        }
        .ok_or("this CPU lacks the kernel's instructions")?;
        acc.add_batch(&data)?; // warm-up (thread pool, caches)
        let start = Instant::now();
        for _ in 0..batches {
            acc.add_batch(&data)?;
        }
        let h0 = acc.hessian()[0];
        let secs = start.elapsed().as_secs_f64() / batches as f64;
        let gflops = (inp * inp * tokens * 2) as f64 / secs / 1e9;
        println!(
            "in={inp:5} m={tokens}: {:8.2} ms/batch, {gflops:6.1} GFLOP/s (h[0]={h0:.4})",
            secs * 1e3,
        );
    }
    Ok(())
}
