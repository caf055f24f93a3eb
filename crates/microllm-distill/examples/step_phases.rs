//! Times one training step (forward, fused head + loss, backward) of a student, by phase.
//!
//! `cargo run --release -p microllm-distill --example step_phases -- MODEL TEXT BATCH SEQ RUNS [FROZEN]`
//! prints, per run, the milliseconds of each phase and the step's tokens/s (cross-entropy on
//! the text's next tokens, embeddings and the first FROZEN blocks frozen). This is the measurement the trainer's speed
//! work was driven by; the end-to-end figure comes from `scripts/bench/distill.sh`.

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use microllm_core::NoProgress;
use microllm_distill::loss::{LogitMix, LogitTargets, Teacher, head_loss};
use microllm_distill::student::{Freeze, Student};

/// CPU seconds (user + system) this process has used, from /proc/self/stat (Linux).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (model, text, batch, seq, runs, frozen) = match &args[1..] {
        [m, t, b, s, r] => (m, t, b, s, r, "0"),
        [m, t, b, s, r, f] => (m, t, b, s, r, f.as_str()),
        _ => return Err("usage: step_phases MODEL TEXT BATCH SEQ RUNS [FROZEN_BLOCKS]".into()),
    };
    let (batch, seq, runs): (usize, usize, usize) = (batch.parse()?, seq.parse()?, runs.parse()?);
    let _ = NoProgress;
    let ckpt = microllm_io::open(model)?;
    let text = std::fs::read_to_string(text)?;
    let ids = ckpt.require_tokenizer()?.encode(&text, false)?;
    let freeze = Freeze {
        embeddings: true,
        blocks: frozen.parse()?,
    };
    let student = Student::load(&ckpt.config, ckpt.tensors.as_ref(), DType::F32, freeze, seq)?;
    println!("trainable values: {}", student.trainable_count());
    let mix = LogitMix {
        kl: 0.0,
        reverse_kl: 0.0,
        jsd: 0.0,
        ce: 1.0,
        temperature: 1.0,
    };
    for run in 0..runs {
        let window = &ids[run * batch * seq..(run + 1) * batch * seq];
        let input = Tensor::from_slice(window, (batch, seq), &Device::Cpu)?;
        let labels: Vec<Option<u32>> = (0..batch * seq)
            .map(|i| (i % seq + 1 < seq).then(|| window[i + 1]))
            .collect();
        let cpu0 = cpu_seconds();
        let t0 = Instant::now();
        let out = student.forward(&input, &[])?;
        let t1 = Instant::now();
        let targets = LogitTargets {
            labels: &labels,
            teacher: Teacher::None,
        };
        let loss = head_loss(&student, &out.hidden, &targets, &mix)?;
        let t2 = Instant::now();
        let grads = loss.loss.backward()?;
        let t3 = Instant::now();
        let n = student
            .trainable()
            .filter(|(_, v)| grads.get(v.as_tensor()).is_some())
            .count();
        let ms = |a: Instant, b: Instant| (b - a).as_secs_f64() * 1e3;
        println!(
            "run {run}: loss {:.4}  forward {:.0} ms  head+loss {:.0} ms  backward {:.0} ms  \
             total {:.0} ms  {:.1} tokens/s  cpu {:.1} s  ({n} gradients)",
            loss.value,
            ms(t0, t1),
            ms(t1, t2),
            ms(t2, t3),
            ms(t0, t3),
            (batch * seq) as f64 / (t3 - t0).as_secs_f64(),
            cpu_seconds() - cpu0
        );
    }
    Ok(())
}
