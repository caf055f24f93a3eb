//! `microllm prune` (unstructured and N:M) on the fixture models: the output has exactly the
//! sparsity asked for, in the pattern asked for, loads back, and bad requests fail cleanly.

mod common;

use std::path::Path;

use common::{calib_ids, fixture, microllm};
use microllm_core::{LinearKind, names};

/// Every linear weight of the model at `path`, as f32 rows of length `in`.
fn linears(path: &Path) -> Vec<(String, [usize; 2], Vec<f32>)> {
    let ckpt = microllm_io::open(path.to_str().unwrap()).unwrap();
    let cfg = &ckpt.config;
    let mut out = Vec::new();
    for layer in 0..cfg.num_layers {
        for kind in LinearKind::ALL {
            let name = names::linear_weight(cfg.family, layer, kind);
            let Ok(t) = ckpt.tensors.load(&name) else {
                continue;
            };
            let (o, i) = t.dims2().unwrap();
            out.push((
                name,
                [o, i],
                t.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            ));
        }
    }
    out
}

fn prune(model: &Path, out: &Path, args: &[&str]) -> serde_json::Value {
    microllm()
        .args(["prune", "--samples", "8", "--seqlen", "32", "--model"])
        .arg(model)
        .arg("--out")
        .arg(out)
        .args(args)
        .assert()
        .success();
    // The report sits beside the output, named after it without a `.gguf` extension.
    let stem = match out.extension() {
        Some(e) if e == "gguf" => out.with_extension(""),
        _ => out.to_path_buf(),
    };
    let report = stem.with_file_name(format!(
        "{}.report.json",
        stem.file_name().unwrap().to_string_lossy()
    ));
    serde_json::from_str(&std::fs::read_to_string(report).unwrap()).unwrap()
}

#[test]
fn unstructured_masks_have_exactly_the_asked_sparsity() {
    let tmp = tempfile::tempdir().unwrap();
    let calib = calib_ids(tmp.path(), 8, 32, 384);
    let calib = calib.to_str().unwrap();
    for (model, method, ranking) in [
        ("llama-tiny", "magnitude", "layer"),
        ("qwen2-tiny", "wanda", "row"),
        ("mistral-tiny", "sparsegpt", "row"),
        ("gemma3-tiny", "wanda", "row"),
        ("phi3-tiny", "sparsegpt", "row"),
        ("qwen3-tiny", "magnitude", "layer"),
    ] {
        let out = tmp.path().join(format!("{model}-{method}"));
        let report = prune(
            &fixture(model),
            &out,
            &["--method", method, "--sparsity", "0.5", "--calib", calib],
        );
        assert_eq!(report["method"], method);
        for (name, [o, i], w) in linears(&out) {
            let zeros = w.iter().filter(|&&x| x == 0.0).count();
            assert_eq!(zeros, o * i / 2, "{model} {method}: {name}");
            if ranking == "row" {
                for row in w.chunks(i) {
                    assert_eq!(row.iter().filter(|&&x| x == 0.0).count(), i / 2, "{name}");
                }
            }
        }
        let sparsity = report["output"]["linear_sparsity"].as_f64().unwrap();
        assert!((sparsity - 0.5).abs() < 1e-9, "{sparsity}");
        assert!(
            report["layers"]
                .as_array()
                .unwrap()
                .iter()
                .all(|l| l["sparsity"] == 0.5)
        );
    }
}

#[test]
fn n_of_m_rows_are_exactly_n_of_m_for_every_method() {
    let tmp = tempfile::tempdir().unwrap();
    let calib = calib_ids(tmp.path(), 8, 32, 384);
    for (method, pattern) in [("magnitude", "2:4"), ("wanda", "2:4"), ("sparsegpt", "4:8")] {
        let out = tmp.path().join(method);
        prune(
            &fixture("llama-tiny"),
            &out,
            &[
                "--method",
                method,
                "--pattern",
                pattern,
                "--calib",
                calib.to_str().unwrap(),
            ],
        );
        let (n, m) = if pattern == "2:4" { (2, 4) } else { (4, 8) };
        for (name, _, w) in linears(&out) {
            for group in w.chunks(m) {
                let nonzero = group.iter().filter(|&&x| x != 0.0).count();
                assert!(nonzero <= n, "{method} {name}: {group:?}");
            }
        }
    }
}

#[test]
fn pruning_and_gptq_in_one_pass_write_exact_zeros_into_gguf_blocks() {
    let tmp = tempfile::tempdir().unwrap();
    let calib = calib_ids(tmp.path(), 8, 32, 384);
    let out = tmp.path().join("pruned-q4.gguf");
    let report = prune(
        &fixture("llama-tiny"),
        &out,
        &[
            "--method",
            "sparsegpt",
            "--pattern",
            "2:4",
            "--bits",
            "4",
            "--calib",
            calib.to_str().unwrap(),
        ],
    );
    assert_eq!(report["scheme"]["quantize"]["bits"], 4);
    let gguf = microllm_io::open(out.to_str().unwrap()).unwrap();
    assert_eq!(gguf.format, microllm_io::CheckpointFormat::Gguf);
    for (name, _, w) in linears(&out) {
        for group in w.chunks(4) {
            assert!(group.iter().filter(|&&x| x != 0.0).count() <= 2, "{name}");
        }
    }
}

#[test]
fn bad_requests_fail_with_nothing_written() {
    let tmp = tempfile::tempdir().unwrap();
    let model = fixture("llama-tiny");
    let out = tmp.path().join("out");
    let cases: [(&[&str], &str); 5] = [
        (&["--method", "magnitude", "--sparsity", "1.0"], "[0, 1)"),
        (&["--method", "magnitude", "--pattern", "4:4"], "0 < N < M"),
        (
            &["--method", "magnitude", "--pattern", "2:3"],
            "multiple of 3",
        ),
        (&["--method", "magnitude", "--sparsity=-0.5"], "[0, 1)"),
        (&["--method", "wanda"], "--calib"),
    ];
    for (args, expected) in cases {
        let assert = microllm()
            .args(["prune", "--model"])
            .arg(&model)
            .arg("--out")
            .arg(&out)
            .args(args)
            .assert()
            .failure();
        let stderr = String::from_utf8_lossy(&assert.get_output().stderr).to_string();
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert!(!out.exists(), "{args:?} left output behind");
    }
    std::fs::create_dir(&out).unwrap();
    let assert = microllm()
        .args(["prune", "--method", "magnitude", "--model"])
        .arg(&model)
        .arg("--out")
        .arg(&out)
        .assert()
        .failure();
    assert!(String::from_utf8_lossy(&assert.get_output().stderr).contains("--force"));
}

/// `--format compressed-tensors` stores the pruned linears sparse (values + bitmask): the
/// directory reads back to exactly the dense pruned weights and is smaller.
#[test]
fn sparse_compressed_tensors_output_reads_back_exactly_and_is_smaller() {
    let tmp = tempfile::tempdir().unwrap();
    let model = fixture("llama-tiny");
    for (pattern, format) in [
        ("--sparsity=0.5", "sparse-bitmask"),
        ("--pattern=2:4", "sparse-24-bitmask"),
    ] {
        let dense = tmp.path().join(format!("dense-{format}"));
        let sparse = tmp.path().join(format!("sparse-{format}"));
        prune(
            &model,
            &dense,
            &["--method", "magnitude", pattern, "--dtype", "f32"],
        );
        prune(
            &model,
            &sparse,
            &[
                "--method",
                "magnitude",
                pattern,
                "--format",
                "compressed-tensors",
            ],
        );
        let config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(sparse.join("config.json")).unwrap())
                .unwrap();
        let sc = &config["quantization_config"]["sparsity_config"];
        assert_eq!(sc["format"], format);
        assert_eq!(
            config["quantization_config"]["quant_method"],
            "compressed-tensors"
        );
        let ckpt = microllm_io::open(sparse.to_str().unwrap()).unwrap();
        assert_eq!(ckpt.format, microllm_io::CheckpointFormat::Sparse);
        assert_eq!(linears(&sparse), linears(&dense), "{format}");
        let size = |p: &Path| {
            std::fs::metadata(p.join("model.safetensors"))
                .unwrap()
                .len()
        };
        assert!(
            size(&sparse) < size(&dense),
            "{format}: {} >= {}",
            size(&sparse),
            size(&dense)
        );
    }
}

/// `--ranking global`: one magnitude threshold over the whole model; the layers' sparsities
/// differ and average (weighted by size) to the target.
#[test]
fn global_magnitude_ranking_hits_the_model_wide_target() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("global");
    let report = prune(
        &fixture("llama-tiny"),
        &out,
        &[
            "--method",
            "magnitude",
            "--ranking",
            "global",
            "--sparsity",
            "0.4",
            "--dtype",
            "f32",
        ],
    );
    let layers = linears(&out);
    let total: usize = layers.iter().map(|(_, [o, i], _)| o * i).sum();
    let zeros: usize = layers
        .iter()
        .map(|(_, _, w)| w.iter().filter(|&&x| x == 0.0).count())
        .sum();
    assert_eq!(zeros, (0.4 * total as f64).round() as usize);
    let per_layer: Vec<f64> = report["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["sparsity"].as_f64().unwrap())
        .collect();
    assert!(
        per_layer.iter().any(|&s| (s - 0.4).abs() > 0.01),
        "{per_layer:?}"
    );
    let err = microllm()
        .args([
            "prune",
            "--method",
            "wanda",
            "--ranking",
            "global",
            "--model",
        ])
        .arg(fixture("llama-tiny"))
        .arg("--out")
        .arg(tmp.path().join("x"))
        .assert()
        .failure();
    assert!(String::from_utf8_lossy(&err.get_output().stderr).contains("magnitude"));
}

/// `--schedule owl`: each block is pruned to the sparsity OWL chose for it (recorded in the
/// report with the outlier ratios it came from), the blocks differ, and the mean is the target.
#[test]
fn owl_schedule_prunes_each_block_to_its_own_sparsity() {
    let tmp = tempfile::tempdir().unwrap();
    let calib = calib_ids(tmp.path(), 8, 32, 384);
    let out = tmp.path().join("owl");
    let report = prune(
        &fixture("llama-tiny"),
        &out,
        &[
            "--method",
            "wanda",
            "--sparsity",
            "0.5",
            "--schedule",
            "owl",
            "--owl-threshold",
            "2",
            "--calib",
            calib.to_str().unwrap(),
        ],
    );
    let schedule = &report["scheme"]["schedule"];
    assert_eq!(schedule["kind"], "owl");
    let sparsities: Vec<f64> = schedule["block_sparsities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(sparsities.len(), 3);
    let mean = sparsities.iter().sum::<f64>() / 3.0;
    assert!((mean - 0.5).abs() < 1e-9, "{sparsities:?}");
    let spread = sparsities.iter().cloned().fold(0f64, f64::max)
        - sparsities.iter().cloned().fold(1f64, f64::min);
    assert!(
        (spread - 0.16).abs() < 1e-9,
        "2 lambda apart: {sparsities:?}"
    );
    for (name, [_, i], w) in linears(&out) {
        let layer: usize = name.split('.').nth(2).unwrap().parse().unwrap();
        // Wanda compares within rows: every row loses floor(sparsity * in) weights.
        let per_row = (sparsities[layer] * i as f64).floor() as usize;
        for row in w.chunks(i) {
            let zeros = row.iter().filter(|&&x| x == 0.0).count();
            assert!(
                zeros.abs_diff(per_row) <= 1,
                "{name}: {zeros} zeros, expected {per_row}"
            );
        }
    }
    // N:M patterns fix every block's sparsity: OWL is refused.
    microllm()
        .args(["prune", "--pattern", "2:4", "--schedule", "owl", "--model"])
        .arg(fixture("llama-tiny"))
        .arg("--calib")
        .arg(&calib)
        .arg("--out")
        .arg(tmp.path().join("owl24"))
        .assert()
        .failure()
        .stderr(predicates::str::contains("N:M"));
    assert!(!tmp.path().join("owl24").exists());
}
