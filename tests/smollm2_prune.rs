//! `microllm prune` on the real model: at 50% unstructured and at 2:4, the calibrated methods
//! (Wanda, SparseGPT) must lose less than magnitude pruning, and 2:4 rows must be exactly 2:4.
//!
//! Calibration here is 16 windows x 512 tokens of c4.calib.txt and evaluation 8 windows x 512
//! of wiki.eval.txt, to keep the suite short; `scripts/bench/prune.sh` runs the issue's
//! 128 x 512 calibration with 24 evaluation windows and records the figures.

mod common;

use std::path::Path;

use common::{microllm, smollm2_gguf, text};

/// Perplexity of the pruned output (its report's `--eval` figure).
fn prune(out: &Path, args: &[&str]) -> f64 {
    microllm()
        .args(["prune", "--samples", "16", "--seqlen", "512", "--model"])
        .arg(smollm2_gguf())
        .arg("--calib")
        .arg(text("c4.calib.txt"))
        .arg("--eval")
        .arg(text("wiki.eval.txt"))
        .args(["--eval-windows", "8", "--out"])
        .arg(out)
        .args(args)
        .assert()
        .success();
    let report = out.with_file_name(format!(
        "{}.report.json",
        out.file_name().unwrap().to_string_lossy()
    ));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(report).unwrap()).unwrap();
    report["eval"]["compressed"]["perplexity"].as_f64().unwrap()
}

/// No group of 4 consecutive weights of any linear holds more than 2 nonzeros.
fn assert_two_of_four(model: &Path) {
    let ckpt = microllm_io::open(model.to_str().unwrap()).unwrap();
    let cfg = &ckpt.config;
    for layer in 0..cfg.num_layers {
        for kind in microllm_core::LinearKind::ALL {
            let name = microllm_core::names::linear_weight(cfg.family, layer, kind);
            let w = ckpt.tensors.load(&name).unwrap();
            let w = w.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            for (g, group) in w.chunks(4).enumerate() {
                let nonzero = group.iter().filter(|&&x| x != 0.0).count();
                assert!(
                    nonzero <= 2,
                    "{name}, weights {}..{}: {group:?}",
                    4 * g,
                    4 * g + 4
                );
            }
        }
    }
}

#[test]
fn calibrated_pruning_beats_magnitude_at_half_and_two_of_four() {
    let tmp = tempfile::tempdir().unwrap();
    for pattern in [["--sparsity", "0.5"], ["--pattern", "2:4"]] {
        let mut ppl = Vec::new();
        for method in ["magnitude", "wanda", "sparsegpt"] {
            let out = tmp
                .path()
                .join(format!("{method}-{}", pattern[1].replace(':', "of")));
            ppl.push(prune(&out, &["--method", method, pattern[0], pattern[1]]));
            if pattern[1] == "2:4" {
                assert_two_of_four(&out);
            }
            std::fs::remove_dir_all(&out).unwrap();
        }
        eprintln!(
            "{} {}: magnitude {:.2}, wanda {:.2}, sparsegpt {:.2}",
            pattern[0], pattern[1], ppl[0], ppl[1], ppl[2]
        );
        assert!(
            ppl[1] < ppl[0],
            "{pattern:?}: Wanda {} >= magnitude {}",
            ppl[1],
            ppl[0]
        );
        assert!(
            ppl[2] < ppl[0],
            "{pattern:?}: SparseGPT {} >= magnitude {}",
            ppl[2],
            ppl[0]
        );
    }
}
