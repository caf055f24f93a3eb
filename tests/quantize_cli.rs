//! `microllm quantize` on the fixture models: every output holds exactly the quantizer's
//! weights, the report says what happened, and bad requests fail cleanly with nothing written.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::{calib_ids, fixture, microllm, smollm2_gguf};

/// Every tensor of a model, dequantized to f32 in Hugging Face layout by microllm's readers.
fn tensors(model: &Path) -> BTreeMap<String, Vec<f32>> {
    let ckpt = microllm_io::open(model.to_str().unwrap()).unwrap();
    ckpt.tensors
        .infos()
        .into_iter()
        .map(|i| {
            let t = ckpt.tensors.load(&i.name).unwrap();
            (i.name, t.flatten_all().unwrap().to_vec1::<f32>().unwrap())
        })
        .collect()
}

fn quantize(model: &Path, calib: &Path, out: &Path, extra: &[&str]) -> serde_json::Value {
    microllm()
        .args(["quantize", "--samples", "8", "--seqlen", "32", "--model"])
        .arg(model)
        .arg("--calib")
        .arg(calib)
        .arg("--out")
        .arg(out)
        .args(extra)
        .assert()
        .success();
    let stem = out.with_extension("");
    let report = stem.with_file_name(format!(
        "{}.report.json",
        stem.file_name().unwrap().to_string_lossy()
    ));
    assert!(
        stem.with_file_name(format!(
            "{}.report.md",
            stem.file_name().unwrap().to_string_lossy()
        ))
        .exists()
    );
    serde_json::from_str(&std::fs::read_to_string(report).unwrap()).unwrap()
}

/// The GGUF blocks and the f32 safetensors output of the same run decode to the same weights
/// (Q4_0 / Q8_0 bit for bit; Q4_1 up to the f16 rounding of its block minimum), so the GGUF
/// holds exactly what GPTQ produced, through llama.cpp's q/k row permutation and back.
#[test]
fn gguf_output_holds_exactly_the_quantized_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let calib = calib_ids(tmp.path(), 16, 32, 384);
    let cases: [(&str, &[&str], &str, f32); 8] = [
        (
            "llama-tiny",
            &["--bits", "4", "--group-size", "32"],
            "Q4_0",
            0.0,
        ),
        (
            "llama-tiny",
            &["--bits", "8", "--group-size", "channel"],
            "Q8_0",
            0.0,
        ),
        (
            "phi-tiny",
            &["--bits", "3", "--group-size", "32"],
            "Q4_0",
            0.0,
        ),
        (
            "qwen2-tiny",
            &["--bits", "4", "--asym", "--group-size", "32"],
            "Q4_1",
            1e-3,
        ),
        (
            "gemma3-tiny",
            &["--bits", "4", "--group-size", "32"],
            "Q4_0",
            0.0,
        ),
        (
            "qwen3-tiny",
            &["--bits", "8", "--group-size", "channel"],
            "Q8_0",
            0.0,
        ),
        (
            "phi3-tiny",
            &["--bits", "4", "--asym", "--group-size", "32"],
            "Q4_1",
            1e-3,
        ),
        (
            "llama3-tiny",
            &["--bits", "4", "--group-size", "32"],
            "Q4_0",
            0.0,
        ),
    ];
    for (i, (name, args, gguf_type, tol)) in cases.into_iter().enumerate() {
        let model = fixture(name);
        let gguf = tmp.path().join(format!("{i}-{name}-{gguf_type}.gguf"));
        let dense = tmp.path().join(format!("{i}-{name}-{gguf_type}-st"));
        let report = quantize(&model, &calib, &gguf, args);
        let mut dense_args = args.to_vec();
        dense_args.extend(["--format", "safetensors", "--dtype", "f32"]);
        quantize(&model, &calib, &dense, &dense_args);

        let layers = report["layers"].as_array().unwrap();
        let linears = if name == "phi-tiny" { 6 } else { 7 };
        assert_eq!(layers.len(), 3 * linears, "{name}");
        assert!(
            layers.iter().all(|l| l["output_type"] == gguf_type),
            "{name}: {layers:?}"
        );
        assert!(
            layers
                .iter()
                .all(|l| l["gptq_loss"].as_f64().unwrap() >= 0.0)
        );
        assert_eq!(report["calibration"]["tokens_used"], 8 * 32);

        let (a, b, original) = (tensors(&gguf), tensors(&dense), tensors(&model));
        assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
        for (tensor, values) in &a {
            let other = &b[tensor];
            let diff = common::max_abs_diff(values, other);
            let is_linear = tensor.ends_with(".weight")
                && (tensor.contains("_proj.")
                    || tensor.contains(".fc")
                    || tensor.contains(".dense."));
            if is_linear {
                let scale = other.iter().fold(0f32, |m, x| m.max(x.abs()));
                assert!(
                    diff <= tol * scale,
                    "{name} {tensor}: GGUF and safetensors differ by {diff}"
                );
                // And the weights did change: they are quantized, not copied.
                assert!(
                    common::max_abs_diff(other, &original[tensor]) > 0.0,
                    "{name} {tensor}"
                );
            } else if tensor.ends_with("norm.weight") || tensor.ends_with(".bias") {
                // Gemma's GGUF norms hold 1 + w in f32 (llama.cpp's convention): w comes
                // back to within the f32 rounding of 1 + w.
                let tol = if name.starts_with("gemma") { 2e-7 } else { 0.0 };
                assert!(diff <= tol, "{name} {tensor}: {diff}");
            }
        }
    }
}

#[test]
fn rtn_needs_no_calibration_and_dry_run_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("rtn.gguf");
    let plan = microllm()
        .args([
            "quantize",
            "--method",
            "rtn",
            "--bits",
            "4",
            "--dry-run",
            "--model",
        ])
        .arg(fixture("llama-tiny"))
        .arg("--out")
        .arg(&out)
        .assert()
        .success();
    let stdout = String::from_utf8_lossy(&plan.get_output().stdout).to_string();
    assert!(
        stdout.contains("Q4_0") && stdout.contains("estimated size"),
        "{stdout}"
    );
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);

    microllm()
        .args(["quantize", "--method", "rtn", "--bits", "2", "--model"])
        .arg(fixture("mistral-tiny"))
        .arg("--out")
        .arg(&out)
        .assert()
        .success();
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tmp.path().join("rtn.report.json")).unwrap())
            .unwrap();
    assert_eq!(report["method"], "rtn");
    assert!(report["calibration"].is_null());
    let bpw = report["output"]["quantized_bits_per_weight"]
        .as_f64()
        .unwrap();
    assert!(
        (bpw - 4.5).abs() < 1e-9,
        "2-bit codes in Q4_0 blocks: {bpw}"
    );
    assert!(!tmp.path().join("rtn.gguf.microllm-work").exists());
}

#[test]
fn odd_group_sizes_fall_back_to_f16_with_a_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let calib = calib_ids(tmp.path(), 16, 32, 384);
    let out = tmp.path().join("g16.gguf");
    let report = quantize(
        &fixture("llama-tiny"),
        &calib,
        &out,
        &["--group-size", "16"],
    );
    let fallbacks = report["fallbacks"].as_array().unwrap();
    assert_eq!(fallbacks.len(), 21, "{fallbacks:?}");
    assert!(
        fallbacks[0]["why"]
            .as_str()
            .unwrap()
            .contains("multiple of 32")
    );
    assert!(
        report["layers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l["output_type"] == "F16")
    );
}

/// Runs quantize with `args`, expects failure, checks that nothing was written.
fn refused(dir: &Path, args: &[&str]) -> String {
    let before: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let out = microllm()
        .arg("quantize")
        .args(["--model", fixture("llama-tiny").to_str().unwrap()])
        .args(args)
        .assert()
        .failure();
    let after: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(before, after, "files appeared for {args:?}");
    String::from_utf8_lossy(&out.get_output().stderr).to_string()
}

#[test]
fn bad_requests_fail_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let calib = calib_ids(tmp.path(), 4, 32, 384);
    let calib = calib.to_str().unwrap();
    let out = tmp.path().join("out.gguf");
    let out = out.to_str().unwrap();
    let base = ["--calib", calib, "--seqlen", "32", "--out", out];
    let with = |extra: &[&'static str]| -> Vec<&str> { [&base[..], extra].concat() };

    for bits in ["1", "9"] {
        let err = refused(tmp.path(), &with(&["--bits", bits]));
        assert!(err.contains("2..=8") || err.contains("bits"), "{err}");
    }
    let err = refused(tmp.path(), &with(&["--group-size", "48"]));
    assert!(
        err.contains("group size 48") && err.contains("q_proj"),
        "{err}"
    );
    let err = refused(tmp.path(), &with(&["--format", "onnx"]));
    assert!(err.contains("onnx"), "{err}");
    let err = refused(tmp.path(), &with(&["--samples", "5"]));
    assert!(err.contains("fewer than the 5 asked for"), "{err}");
    let err = refused(tmp.path(), &["--out", out]);
    assert!(err.contains("--calib"), "{err}");

    std::fs::write(out, b"keep me").unwrap();
    let err = refused(tmp.path(), &base);
    assert!(err.contains("--force"), "{err}");
    assert_eq!(std::fs::read(out).unwrap(), b"keep me");
}

/// `--gguf-type q3_k_m`: llama.cpp's mix rules per block (more bits for v, o and down), then
/// its row-length fallbacks (the fixture's 64-wide rows fit no k-quant); with `--calib` the
/// importance matrix is measured and the report says which matrices it could weight.
#[test]
fn llama_cpp_mixes_follow_its_rules_then_its_fallbacks() {
    let tmp = tempfile::tempdir().unwrap();
    let calib = calib_ids(tmp.path(), 16, 32, 384);
    let out = tmp.path().join("q3km.gguf");
    let report = quantize(
        &fixture("llama-tiny"),
        &calib,
        &out,
        &["--gguf-type", "q3_k_m"],
    );
    let ckpt = microllm_io::open(out.to_str().unwrap()).unwrap();
    let dtype = |name: &str| {
        ckpt.tensors
            .infos()
            .into_iter()
            .find(|i| i.name == name)
            .unwrap_or_else(|| panic!("{name} missing"))
            .dtype
    };
    let linear =
        |layer: usize, module: &str| dtype(&format!("model.layers.{layer}.{module}.weight"));
    for layer in 0..3 {
        // Q3_K asked, 64-wide rows: llama.cpp's fallback Q4_0.
        assert_eq!(linear(layer, "self_attn.q_proj"), "Q4_0");
        assert_eq!(linear(layer, "mlp.up_proj"), "Q4_0");
        // o and down: Q4_K asked (Q5_0 after the fallback).
        assert_eq!(linear(layer, "self_attn.o_proj"), "Q5_0");
        assert_eq!(linear(layer, "mlp.down_proj"), "Q5_0");
    }
    // v: Q5_K for the first two blocks (Q5_1 after the fallback), Q4_K after.
    assert_eq!(linear(0, "self_attn.v_proj"), "Q5_1");
    assert_eq!(linear(1, "self_attn.v_proj"), "Q5_1");
    assert_eq!(linear(2, "self_attn.v_proj"), "Q5_0");
    assert_eq!(report["calibration"]["tokens_used"], 8 * 32);
    let notes = report["notes"].to_string();
    // The fallbacks Q4_0, Q5_0 and Q5_1 take the matrix (as in llama.cpp); Q8_0 does not.
    assert!(
        notes.contains(
            "importance matrix applied to 21 matrices (Q4_0, Q5_0, Q5_1); not to 1 other matrix (Q8_0"
        ),
        "{notes}"
    );
}

/// `--tensor-type PATTERN=TYPE` as llama-quantize's: a rule types the matrices whose GGUF names
/// it matches, over the mix; llama.cpp's mix then counts only the matrices it typed itself, so
/// retyping blocks 0 and 1's down projections moves Q4_K_M's extra bits for later ones (blocks
/// 2-4 instead of 0-2, then 6 instead of 5). Checked byte for byte against llama-quantize in
/// docs/interop-results.md.
#[test]
fn tensor_types_override_the_mix_as_llama_quantize_does() {
    let tmp = tempfile::tempdir().unwrap();
    let dtypes = |out: &Path| -> BTreeMap<String, String> {
        let ckpt = microllm_io::open(out.to_str().unwrap()).unwrap();
        ckpt.tensors
            .infos()
            .into_iter()
            .map(|i| (i.name, i.dtype.to_string()))
            .collect()
    };
    let convert = |name: &str, rules: &[&str]| {
        let out = tmp.path().join(name);
        let mut cmd = microllm();
        cmd.args(["convert", "--model"])
            .arg(smollm2_gguf())
            .arg("--out")
            .arg(&out)
            .args(["--gguf-type", "q4_k_m"]);
        for rule in rules {
            cmd.args(["--tensor-type", rule]);
        }
        cmd.assert().success();
        dtypes(&out)
    };
    let plain = convert("plain.gguf", &[]);
    let ruled = convert(
        "ruled.gguf",
        &["ATTN_V=q8_0", r"blk\.(0|1)\.ffn_down=q6_k", "attn_q=q4_1"],
    );
    // The same rules from a file, as llama-quantize's --tensor-type-file.
    let rules = tmp.path().join("rules.txt");
    std::fs::write(
        &rules,
        "ATTN_V=q8_0 blk\\.(0|1)\\.ffn_down=q6_k\nattn_q=q4_1\n",
    )
    .unwrap();
    let from_file = tmp.path().join("from-file.gguf");
    microllm()
        .args(["convert", "--model"])
        .arg(smollm2_gguf())
        .arg("--out")
        .arg(&from_file)
        .args(["--gguf-type", "q4_k_m", "--tensor-type-file"])
        .arg(&rules)
        .assert()
        .success();
    assert_eq!(dtypes(&from_file), ruled);
    let down = |t: &BTreeMap<String, String>, l: usize| {
        t[&format!("model.layers.{l}.mlp.down_proj.weight")].clone()
    };
    let more_bits = |t: &BTreeMap<String, String>| -> Vec<usize> {
        (0..30).filter(|&l| down(t, l) == down(t, 0)).collect()
    };
    assert_eq!(more_bits(&plain)[..5], [0, 1, 2, 5, 8]);
    assert_eq!(more_bits(&ruled)[..6], [0, 1, 2, 3, 4, 7]);
    for l in 0..30 {
        let attn = |m: &str| ruled[&format!("model.layers.{l}.self_attn.{m}.weight")].clone();
        assert_eq!(attn("v_proj"), "Q8_0", "layer {l}");
        assert_eq!(attn("q_proj"), "Q4_1", "layer {l}");
        assert_eq!(
            attn("k_proj"),
            plain[&format!("model.layers.{l}.self_attn.k_proj.weight")]
        );
    }

    let refused = |rule: &str| -> String {
        let out = microllm()
            .args(["convert", "--model"])
            .arg(smollm2_gguf())
            .arg("--out")
            .arg(tmp.path().join("refused.gguf"))
            .args(["--gguf-type", "q4_0", "--tensor-type", rule])
            .assert()
            .failure();
        assert!(!tmp.path().join("refused.gguf").exists());
        String::from_utf8_lossy(&out.get_output().stderr).to_string()
    };
    let err = refused("attn_vv=q8_0");
    assert!(
        err.contains("attn_vv") && err.contains("matches no matrix") && err.contains("blk."),
        "{err}"
    );
    let err = refused("attn_v=q4_k_m");
    assert!(err.contains("mixes"), "{err}");
    let err = refused("attn_(v=q8_0");
    assert!(err.contains("not a regular expression"), "{err}");
    let err = refused("attn_v");
    assert!(err.contains("PATTERN=TYPE"), "{err}");
}

/// `--gguf-type iq4_xs` is llama.cpp's IQ4_XS file type: IQ4_XS where rows are a multiple of
/// 256 (SmolLM2's 1536-wide down projections), IQ4_NL for the 576-wide matrices, Q5_K for the
/// first eighth of the down projections without an importance matrix, Q8_0 for the tied
/// head. The file is read back with those types (microllm's own GGUF header reader; candle's
/// refuses i-quants) and evaluates near the source. A per-tensor rule may name an i-quant.
#[test]
fn iq4_xs_is_llama_cpps_mix_and_reads_back() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("iq4.gguf");
    microllm()
        .args(["convert", "--model"])
        .arg(smollm2_gguf())
        .arg("--out")
        .arg(&out)
        .args([
            "--gguf-type",
            "iq4_xs",
            "--tensor-type",
            r"blk\.7\.ffn_up=iq4_xs",
        ])
        .assert()
        .success();
    let ckpt = microllm_io::open(out.to_str().unwrap()).unwrap();
    let dtype = |name: &str| ckpt.tensors.info(name).unwrap().dtype.to_string();
    let layer = |l: usize, m: &str| format!("model.layers.{l}.{m}.weight");
    for l in 0..3 {
        assert_eq!(dtype(&layer(l, "mlp.down_proj")), "Q5_K", "layer {l}");
    }
    assert_eq!(dtype(&layer(3, "mlp.down_proj")), "IQ4_XS");
    assert_eq!(dtype(&layer(3, "self_attn.q_proj")), "IQ4_NL");
    assert_eq!(dtype(&layer(3, "self_attn.v_proj")), "IQ4_NL");
    // The rule asks IQ4_XS; 576-wide rows fall back to IQ4_NL all the same.
    assert_eq!(dtype(&layer(7, "mlp.up_proj")), "IQ4_NL");
    assert_eq!(dtype("model.embed_tokens.weight"), "Q8_0");
    let source = ckpt.tensors.load(&layer(3, "mlp.down_proj")).unwrap();
    assert_eq!(source.dims(), [576, 1536]);

    let ppl = |model: &Path| -> f64 {
        let out = microllm()
            .args(["eval", "--ctx", "256", "--max-windows", "2", "--model"])
            .arg(model)
            .arg("--data")
            .arg(common::text("wiki.eval.txt"))
            .assert()
            .success();
        let stdout = String::from_utf8_lossy(&out.get_output().stdout).to_string();
        stdout
            .lines()
            .find_map(|l| l.strip_prefix("perplexity"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no perplexity in {stdout}"))
    };
    let (before, after) = (ppl(&smollm2_gguf()), ppl(&out));
    // About +10% on these two windows (IQ4_XS without an importance matrix).
    assert!(
        after > before && after < 1.25 * before,
        "{before} -> {after}"
    );
}

/// A size budget (`--target-bpw` / `--target-size`) chooses each block linear's type: the
/// file's tensor data lands at or just under the target, the matrices get several types, a
/// target below the smallest types is refused before anything is written, and the report lists
/// the types as written (not the plan's).
#[test]
fn size_budgets_choose_types_that_fit() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("budget.gguf");
    let run = microllm()
        .args(["convert", "--model"])
        .arg(smollm2_gguf())
        .arg("--out")
        .arg(&out)
        .args(["--gguf-type", "q4_0", "--target-bpw", "5.1"])
        .assert()
        .success();
    let stdout = String::from_utf8_lossy(&run.get_output().stdout).to_string();
    let bpw: f64 = stdout
        .split("budget: ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no budget line in {stdout}"));
    assert!(bpw <= 5.1 && bpw > 5.0, "{stdout}");
    let ckpt = microllm_io::open(out.to_str().unwrap()).unwrap();
    let linear_types: std::collections::BTreeSet<String> = ckpt
        .tensors
        .infos()
        .into_iter()
        .filter(|i| i.name.contains("layers."))
        .filter(|i| i.shape.len() == 2)
        .map(|i| i.dtype.to_string())
        .collect();
    assert!(linear_types.len() >= 2, "{linear_types:?}");

    let err = microllm()
        .args(["convert", "--model"])
        .arg(smollm2_gguf())
        .arg("--out")
        .arg(tmp.path().join("small.gguf"))
        .args(["--gguf-type", "q4_0", "--target-bpw", "2"])
        .assert()
        .failure();
    let err = String::from_utf8_lossy(&err.get_output().stderr).to_string();
    assert!(err.contains("below the smallest choice"), "{err}");
    assert!(!tmp.path().join("small.gguf").exists());

    // Through quantize's recipe: the report holds the written types.
    let calib = calib_ids(tmp.path(), 8, 32, 384);
    let out = tmp.path().join("tiny.gguf");
    let report = quantize(
        &fixture("llama-tiny"),
        &calib,
        &out,
        &["--gguf-type", "q4_0", "--target-size", "150KB"],
    );
    let ckpt = microllm_io::open(out.to_str().unwrap()).unwrap();
    let written: BTreeMap<String, String> = ckpt
        .tensors
        .infos()
        .into_iter()
        .map(|i| (i.name, i.dtype.to_string()))
        .collect();
    for t in report["output"]["tensors"].as_array().unwrap() {
        let name = t["hf_name"].as_str().unwrap();
        assert_eq!(written[name], t["dtype"].as_str().unwrap(), "{name}");
    }
    let notes = report["notes"].to_string();
    assert!(notes.contains("size budget: "), "{notes}");
}
