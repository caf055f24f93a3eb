//! Times Hessian accumulation and GPTQ on one layer of SmolLM2-135M's largest shape
//! (`down_proj`: 576 x 1536) with random weights and inputs, best of N runs.
//!
//! `cargo run --release -p microllm-quant --example gptq_layer -- [TOKENS=4096] [RUNS=3]`

mod common;

use common::values;

use std::time::{Duration, Instant};

use microllm_quant::{GptqOptions, HessianAccumulator, QuantScheme, gptq_quantize};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let tokens: usize = args.next().map_or(Ok(4096), |s| s.parse())?;
    let runs: usize = args.next().map_or(Ok(3), |s| s.parse())?;
    let (out, n) = (576, 1536);
    let w = values(out * n, 1);
    let x = values(tokens * n, 2);
    let scheme = QuantScheme::new(4, Some(128), true)?;
    let opts = GptqOptions {
        act_order: true,
        ..GptqOptions::default()
    };
    let (mut hess, mut gptq) = (Duration::MAX, Duration::MAX);
    for _ in 0..runs {
        let t0 = Instant::now();
        let mut acc = HessianAccumulator::new(n);
        for batch in x.chunks(1024 * n) {
            acc.add_batch_slice(batch)?;
        }
        let t1 = Instant::now();
        let (q, _) = gptq_quantize(&w, [out, n], acc.hessian(), scheme, opts)?;
        q.validate("layer")?;
        hess = hess.min(t1 - t0);
        gptq = gptq.min(t1.elapsed());
    }
    println!(
        "[{out}, {n}], {tokens} tokens, 4-bit g128 act-order, best of {runs}: Hessian {:.0} ms, GPTQ {:.0} ms",
        hess.as_secs_f64() * 1e3,
        gptq.as_secs_f64() * 1e3
    );
    Ok(())
}
