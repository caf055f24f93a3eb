//! Quantizes a model in process and prints its perplexity: a quick way to compare GPTQ
//! settings without writing files (the CLI's `--eval` measures the written output instead).
//!
//! ```text
//! cargo run --release -p microllm-pipeline --example gptq_probe -- MODEL CALIB EVAL [SAMPLES] [EVAL_WINDOWS]
//! ```
//!
//! The setting comes from the environment: `BITS` (4), `GROUP` (32), `SYM` (1), `ACT_ORDER`
//! (1, static groups), `CLIP` (1 = the default clipping search, 0 = min/max grids), `NORM`
//! (2, the search's error exponent), `SINK` (seqlen), `METHOD` (gptq|rtn).
//! Calibration windows are 512 tokens drawn with seed 0; evaluation uses 512-token windows.

use std::env;

use microllm_core::NoProgress;
use microllm_engine::output::QuantizedSource;
use microllm_engine::{BlockMethod, BlockStore, LayerwiseJob, run_layerwise};
use microllm_eval::{PerplexityOptions, perplexity};
use microllm_io::calibration::CalibrationSet;
use microllm_models::Decoder;
use microllm_quant::{ClipSearch, GptqOptions, QuantScheme};

fn var(name: &str, default: &str) -> String {
    env::var(name).unwrap_or_else(|_| default.to_string())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = env::args().skip(1).collect();
    let [model, calib, eval] = [&args[0], &args[1], &args[2]];
    let samples: usize = args.get(3).map_or(32, |s| s.parse().unwrap());
    let windows: usize = args.get(4).map_or(24, |s| s.parse().unwrap());
    let seqlen = 512;
    let bits: u8 = var("BITS", "4").parse().unwrap();
    let group: usize = var("GROUP", "32").parse().unwrap();
    let sym = var("SYM", "1") == "1";
    let act_order = var("ACT_ORDER", "1") == "1";
    let clip = var("CLIP", "1") == "1";
    let sink: f64 = var("SINK", &seqlen.to_string()).parse().unwrap();

    let ckpt = microllm_io::open(model)?;
    let tok = ckpt.require_tokenizer()?;
    let text = std::fs::read_to_string(calib)?;
    let ids = tok.encode(&text, true)?;
    let set = CalibrationSet::draw(&text, &ids, samples, seqlen, 0);
    let scheme = QuantScheme::new(bits, Some(group), sym)?.with_f16_scales();
    let opts = GptqOptions {
        act_order,
        static_groups: act_order,
        clip_search: clip.then(|| ClipSearch {
            norm: var("NORM", "2").parse().unwrap(),
            max_shrink: var("SHRINK", "0.2").parse().unwrap(),
            ..ClipSearch::default()
        }),
        ..GptqOptions::default()
    };
    let method = match var("METHOD", "gptq").as_str() {
        "rtn" => BlockMethod::Rtn,
        _ => BlockMethod::Gptq {
            opts,
            sink_weight: sink,
        },
    };
    let dir = tempfile::tempdir()?;
    let store = BlockStore::open(&dir.path().join("work"), &serde_json::json!({}), false)?;
    let job = LayerwiseJob {
        config: &ckpt.config,
        source: ckpt.tensors.as_ref(),
        calibration: &set.windows,
        scheme,
        method,
    };
    let t = std::time::Instant::now();
    run_layerwise(&job, &store, &NoProgress)?;
    let quant_s = t.elapsed().as_secs_f64();
    let source = QuantizedSource::new(&ckpt.config, ckpt.tensors.as_ref(), &store);
    let decoder = Decoder::load(&ckpt.config, &source)?;
    let eval_ids = tok.encode(&std::fs::read_to_string(eval)?, true)?;
    let opts = PerplexityOptions {
        ctx: seqlen,
        max_windows: Some(windows),
        protocol: Default::default(),
    };
    let ppl = perplexity(&decoder, &eval_ids, opts, &NoProgress)?;
    println!(
        "bits {bits} group {group} sym {sym} act_order {act_order} clip {clip} sink {sink} \
         samples {samples}: perplexity {:.4} (quantized in {quant_s:.0} s)",
        ppl.perplexity
    );
    Ok(())
}
