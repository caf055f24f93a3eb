//! Where one forward pass spends its time: embeddings, blocks, head, per phase, best of N
//! runs (the minimum is the figure least disturbed by other work on a shared machine).
//!
//! `cargo run --release -p microllm-models --example forward_phases -- MODEL [SEQ] [RUNS]
//! [dense|f32|int8]`: the last argument says how products are computed (default `int8`: the
//! file's weight types with 8-bit activations; see `microllm_models::packed`).

use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};
use microllm_models::{Activations, Decoder, NoTap};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let model = args
        .next()
        .ok_or("usage: forward_phases MODEL [SEQ] [RUNS] [dense|f32|int8]")?;
    let seq: usize = args.next().map_or(Ok(512), |s| s.parse())?;
    let runs: usize = args.next().map_or(Ok(5), |s| s.parse())?;
    let packed = match args.next().as_deref() {
        None | Some("int8") => Some(Activations::Int8),
        Some("f32") => Some(Activations::F32),
        Some("dense") => None,
        Some(other) => return Err(format!("unknown compute mode `{other}`").into()),
    };

    let ckpt = microllm_io::open(&model)?;
    let decoder = Decoder::load_with(&ckpt.config, ckpt.tensors.as_ref(), packed)?;
    let vocab = ckpt.config.vocab_size as u32;
    let ids: Vec<u32> = (0..seq as u32).map(|i| (i * 7919) % vocab).collect();
    let ids = Tensor::from_vec(ids, (1, seq), &Device::Cpu)?;

    let mut best = [Duration::MAX; 3];
    for _ in 0..runs {
        let t0 = Instant::now();
        let mut x = decoder.embed(&ids)?;
        let t1 = Instant::now();
        for block in decoder.blocks() {
            x = block.forward(&x, decoder.positions(0), None, &mut NoTap)?;
        }
        let t2 = Instant::now();
        let logits = decoder.head(&x)?;
        let _ = logits.dims();
        let t3 = Instant::now();
        for (slot, d) in best.iter_mut().zip([t1 - t0, t2 - t1, t3 - t2]) {
            *slot = (*slot).min(d);
        }
    }
    let total: Duration = best.iter().sum();
    println!(
        "seq {seq}, best of {runs}: embed {:.1} ms, blocks {:.1} ms, head {:.1} ms, total {:.1} ms ({:.0} tokens/s)",
        best[0].as_secs_f64() * 1e3,
        best[1].as_secs_f64() * 1e3,
        best[2].as_secs_f64() * 1e3,
        total.as_secs_f64() * 1e3,
        seq as f64 / total.as_secs_f64()
    );
    Ok(())
}
