//! Profiles GPTQ on the linears of one decoder block: Hessian accumulation per shared input,
//! then per linear the factorisation, the grids fitted up front, the column sweep (grid fits
//! of dynamic groups, rounding, in-block updates) and the lazy updates past each block.
//! Random weights and inputs, so only time means anything.
//!
//! ```text
//! cargo run --release -p microllm-quant --example gptq_block -- [HIDDEN=4096] [MLP=11008] [TOKENS=2048] [GROUP=128]
//! ```
//!
//! The defaults are LLaMA-2-7B's shapes with 8 x 256 calibration tokens. `CLIP=0` turns the
//! clipping search off, `ACT_ORDER=1` turns act-order on.

mod common;

// As in the binary, so the example measures what a run does.
#[global_allocator]
static ALLOC: microllm_core::alloc::HugePageAlloc = microllm_core::alloc::HugePageAlloc;

use common::values;

use std::time::{Duration, Instant};

use microllm_quant::{
    GptqOptions, GptqStats, HessianAccumulator, ObsFactor, ObsTarget, QuantScheme,
    obs_compress_factored,
};

/// A block input: its name, width and the linears reading it, as (name, output features).
type Input = (&'static str, usize, Vec<(&'static str, usize)>);

fn secs(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mut next = |default: usize| args.next().map_or(Ok(default), |s| s.parse());
    let (hidden, mlp, tokens, group) = (next(4096)?, next(11008)?, next(2048)?, next(128)?);
    let flag = |name: &str| std::env::var(name).is_ok_and(|v| v == "1");
    let scheme = QuantScheme::new(4, Some(group), true)?.with_f16_scales();
    let mut opts = GptqOptions {
        act_order: flag("ACT_ORDER"),
        ..GptqOptions::default()
    };
    if std::env::var("CLIP").is_ok_and(|v| v == "0") {
        opts.clip_search = None;
    }
    // Inputs: (name, width, linears reading it as (name, out)).
    let inputs: [Input; 4] = [
        (
            "attention input",
            hidden,
            vec![("q_proj", hidden), ("k_proj", hidden), ("v_proj", hidden)],
        ),
        ("o_proj input", hidden, vec![("o_proj", hidden)]),
        (
            "MLP input",
            hidden,
            vec![("gate_proj", mlp), ("up_proj", mlp)],
        ),
        ("down_proj input", mlp, vec![("down_proj", hidden)]),
    ];
    println!(
        "hidden {hidden}, MLP {mlp}, {tokens} tokens, 4-bit g{group}, act-order {}, clip \
         search {}, {} threads",
        opts.act_order,
        opts.clip_search.is_some(),
        rayon::current_num_threads()
    );
    println!("| part | shape | wall s | factor | fit | columns | update |");
    println!("|---|---|---|---|---|---|---|");
    let start = Instant::now();
    let mut seed = 1;
    let mut totals = [Duration::ZERO; 5];
    for (input, width, linears) in &inputs {
        let x = values(tokens * width, seed);
        seed += 1;
        let t0 = Instant::now();
        let mut acc = HessianAccumulator::new(*width);
        for batch in x.chunks(512 * width) {
            acc.add_batch_slice(batch)?;
        }
        drop(x);
        let hess = t0.elapsed();
        totals[0] += hess;
        println!(
            "| Hessian, {input} | {tokens} x {width} | {} | | | | |",
            secs(hess)
        );
        // One factorisation per input, shared by its linears (as the pipeline does).
        let factor = ObsFactor::new(acc.into_hessian(), *width, opts)?;
        totals[1] += factor.seconds();
        println!(
            "| factorisation, {input} | {width} x {width} | {} | {} | | | |",
            secs(factor.seconds()),
            secs(factor.seconds())
        );
        for (name, out) in linears {
            let w = values(out * width, seed);
            seed += 1;
            let t0 = Instant::now();
            let target = ObsTarget {
                scheme: Some(scheme),
                mask: None,
                rule: None,
            };
            let r = obs_compress_factored(&w, [*out, *width], &factor, target, opts)?;
            let wall = t0.elapsed();
            r.quantized.expect("a scheme was given").validate(name)?;
            let stats: GptqStats = r.stats;
            let t = stats.timings;
            for (total, d) in totals[1..]
                .iter_mut()
                .zip([t.factor, t.fit, t.columns, t.update])
            {
                *total += d;
            }
            println!(
                "| GPTQ {name} | {out} x {width} | {} | {} | {} | {} | {} |",
                secs(wall),
                secs(t.factor),
                secs(t.fit),
                secs(t.columns),
                secs(t.update)
            );
        }
    }
    println!(
        "| block | | {} | {} | {} | {} | {} |",
        secs(start.elapsed()),
        secs(totals[1]),
        secs(totals[2]),
        secs(totals[3]),
        secs(totals[4])
    );
    println!("Hessians {}", secs(totals[0]));
    Ok(())
}
