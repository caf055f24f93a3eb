//! The machine's f32 multiply-add ceiling, for "how close to the hardware" statements: each
//! of THREADS threads runs 24 independent chains of 16-lane fused multiply-adds (AVX-512, or
//! two 8-lane AVX2 chains per 16 lanes without it) entirely in registers, so nothing but the
//! FMA units limits it. Prints GFLOP/s per thread and in all (2 flops per lane and FMA).
//!
//! `cargo run --release -p microllm-models --example fma_peak -- [THREADS=1] [MILLION_STEPS=100]
//! [bf16]`: with `bf16`, the chains are AVX-512 BF16's `vdpbf16ps` (two multiply-adds per
//! f32 lane; the GPTQ Hessians' kernel), counted the same way (2 flops per multiply-add).

use std::time::Instant;

/// Runs `steps` rounds of 24 chains x 16 lanes of `acc = acc * a + b`; returns the lanes'
/// sum so the work cannot be optimised away.
fn chains(steps: usize) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512 F, checked above.
        return unsafe { avx512::chains(steps) };
    }
    // Portable fallback: the compiler vectorises these independent lanes (AVX2 + FMA in the
    // workspace's x86-64-v3 build).
    let mut acc = [[0f32; 16]; 24];
    for _ in 0..steps {
        for chain in acc.iter_mut() {
            for v in chain.iter_mut() {
                *v = v.mul_add(1.000_000_1, 0.999_999_9);
            }
        }
    }
    acc.iter().flatten().sum()
}

/// As [`chains`], with `vdpbf16ps` (32 bf16 multiply-adds into 16 f32 lanes); `None` without
/// AVX-512 BF16.
fn bf16_chains(steps: usize) -> Option<f32> {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bf16")
    {
        // SAFETY: the CPU has AVX-512 F and BF16, checked above.
        return Some(unsafe { avx512::bf16_chains(steps) });
    }
    let _ = steps;
    None
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    /// # Safety
    /// The CPU has AVX-512 F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn chains(steps: usize) -> f32 {
        let mut acc = [_mm512_setzero_ps(); 24];
        let (a, b) = (_mm512_set1_ps(1.000_000_1), _mm512_set1_ps(0.999_999_9));
        for _ in 0..steps {
            for x in acc.iter_mut() {
                *x = _mm512_fmadd_ps(*x, a, b);
            }
        }
        let mut sum = _mm512_setzero_ps();
        for x in acc {
            sum = _mm512_add_ps(sum, x);
        }
        _mm512_reduce_add_ps(sum)
    }

    /// # Safety
    /// The CPU has AVX-512 F and BF16.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn bf16_chains(steps: usize) -> f32 {
        let mut acc = [_mm512_setzero_ps(); 24];
        // bf16 1.0 in every half of every lane.
        let one: __m512bh = unsafe { std::mem::transmute(_mm512_set1_epi16(0x3f80)) };
        for _ in 0..steps {
            for x in acc.iter_mut() {
                *x = _mm512_dpbf16_ps(*x, one, one);
            }
        }
        let mut sum = _mm512_setzero_ps();
        for x in acc {
            sum = _mm512_add_ps(sum, x);
        }
        _mm512_reduce_add_ps(sum)
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    let bf16 = raw.iter().any(|a| a == "bf16");
    let mut args = raw
        .iter()
        .filter(|a| *a != "bf16")
        .map(|a| a.parse::<usize>());
    let threads = args.next().unwrap_or(Ok(1))?;
    let steps = args.next().unwrap_or(Ok(100))? * 1_000_000;
    if bf16 && bf16_chains(1).is_none() {
        return Err("this CPU has no AVX-512 BF16".into());
    }
    let per_step = if bf16 { 32 } else { 16 };
    let flops = (steps * 24 * per_step * 2) as f64;
    let start = Instant::now();
    let per_thread: Vec<f64> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(move || {
                    let t = Instant::now();
                    if bf16 {
                        std::hint::black_box(bf16_chains(steps));
                    } else {
                        std::hint::black_box(chains(steps));
                    }
                    flops / t.elapsed().as_secs_f64() / 1e9
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    let all = flops * threads as f64 / start.elapsed().as_secs_f64() / 1e9;
    for (i, g) in per_thread.iter().enumerate() {
        println!("thread {i}: {g:.1} GFLOP/s");
    }
    let what = if bf16 {
        "bf16 pairs into f32 (vdpbf16ps in registers)"
    } else {
        "f32 (fused multiply-adds in registers)"
    };
    println!("all {threads} threads: {all:.1} GFLOP/s {what}");
    Ok(())
}
