//! `microllm quantize` on the real model: GPTQ must beat round-to-nearest where the issue says
//! it must, its Q4_0 file must open in llama.cpp's reader, and a run killed with SIGKILL must
//! resume to the same bytes.
//!
//! Calibration here is 32 windows x 512 tokens of c4.calib.txt (the benchmark,
//! `scripts/bench/gptq.sh`, runs the full 128 x 512); evaluation is the reference protocol,
//! 24 windows x 512 tokens of wiki.eval.txt.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{eval_json, microllm, smollm2_gguf, text};

/// Unquantized model (transformers, f32 dequantized from the GGUF), from the assets README.
const BASE_PPL: f64 = 22.5373;
/// llama.cpp's own Q4_0 build, from the assets README (ours equals it: `tests/smollm2.rs`).
const LLAMA_CPP_Q4_0_PPL: f64 = 27.7591;

fn quantize(out: &Path, args: &[&str]) {
    microllm()
        .args(["quantize", "--samples", "32", "--seqlen", "512", "--model"])
        .arg(smollm2_gguf())
        .arg("--calib")
        .arg(text("c4.calib.txt"))
        .arg("--out")
        .arg(out)
        .args(args)
        .assert()
        .success();
}

fn perplexity(model: &Path) -> f64 {
    let result = eval_json(model, &model.with_extension("eval.json"));
    assert_eq!(result["scored_tokens"], 12_264);
    result["perplexity"].as_f64().unwrap()
}

#[test]
fn gptq_loses_less_than_rtn_at_4_and_3_bits() {
    let tmp = tempfile::tempdir().unwrap();
    for bits in ["4", "3"] {
        let mut increase = Vec::new();
        let methods: &[&str] = if bits == "3" {
            &["rtn", "gptq", "awq"]
        } else {
            &["rtn", "gptq"]
        };
        for &method in methods {
            let out = tmp.path().join(format!("{method}-{bits}.gguf"));
            quantize(
                &out,
                &[
                    "--method",
                    method,
                    "--bits",
                    bits,
                    "--group-size",
                    "64",
                    "--asym",
                ],
            );
            increase.push(perplexity(&out) - BASE_PPL);
        }
        let (rtn, gptq) = (increase[0], increase[1]);
        eprintln!("{bits}-bit g64 asym: perplexity increase RTN {rtn:.4}, GPTQ {gptq:.4}");
        assert!(gptq < rtn, "{bits} bits: GPTQ +{gptq} vs RTN +{rtn}");
        if bits == "3" {
            assert!(gptq < 0.5 * rtn, "3 bits: GPTQ +{gptq} vs RTN +{rtn}");
            // AWQ's scales and clipping, then round-to-nearest: measured 57% of RTN's
            // increase on 8 windows (docs/benchmarks.md); asked here to stay under 80%.
            let awq = increase[2];
            eprintln!("3-bit g64 asym: perplexity increase AWQ {awq:.4}");
            assert!(awq < 0.8 * rtn, "3 bits: AWQ +{awq} vs RTN +{rtn}");
        }
    }
}

/// GPTQ's codes (act-order, static groups, the default clipping search) inside llama.cpp's own
/// Q4_0 blocks close at least half of the perplexity gap between llama.cpp's Q4_0 and the
/// unquantized model, as the issue asks (measured figures in docs/benchmarks.md).
#[test]
fn gptq_in_q4_0_beats_llama_cpp_q4_0() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("gptq-q4_0.gguf");
    quantize(
        &out,
        &["--bits", "4", "--group-size", "32", "--sym", "--act-order"],
    );
    let check = std::process::Command::new("bash")
        .arg(common::repo_root().join("scripts/check-gguf.sh"))
        .arg(&out)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&check.stdout).to_string();
    assert!(check.status.success(), "gguf reader failed: {report}");
    assert!(report.contains("tensors Q4_0: 210"), "{report}");
    assert!(report.contains("tokenizer: gpt2"), "{report}");
    let ppl = perplexity(&out);
    let closed = (LLAMA_CPP_Q4_0_PPL - ppl) / (LLAMA_CPP_Q4_0_PPL - BASE_PPL);
    eprintln!(
        "GPTQ Q4_0 perplexity {ppl:.4}: closes {:.0}% of the gap",
        closed * 100.0
    );
    assert!(
        closed >= 0.5,
        "GPTQ Q4_0 {ppl} closes only {closed:.2} of the gap"
    );
}

/// SIGKILL in the middle of a GPTQ run, then `--resume`: the same bytes as an uninterrupted run.
#[test]
fn killed_gptq_run_resumes_to_identical_bytes() {
    killed_run_resumes_to_identical_bytes("gptq");
}

/// The same for AWQ, whose blocks also store folded norms and pass full-precision hidden
/// states on.
#[test]
fn killed_awq_run_resumes_to_identical_bytes() {
    killed_run_resumes_to_identical_bytes("awq");
}

fn killed_run_resumes_to_identical_bytes(method: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let args = |out: &Path| -> Vec<std::ffi::OsString> {
        let mut v: Vec<std::ffi::OsString> = [
            "quantize",
            "--method",
            method,
            "--samples",
            "4",
            "--seqlen",
            "256",
            "--bits",
            "4",
            "--model",
        ]
        .iter()
        .map(Into::into)
        .collect();
        v.push(smollm2_gguf().into());
        v.extend(["--calib".into(), text("c4.calib.txt").into()]);
        v.extend(["--out".into(), out.as_os_str().to_owned()]);
        v
    };
    let whole = tmp.path().join("whole.gguf");
    microllm().args(args(&whole)).assert().success();

    let resumed = tmp.path().join("resumed.gguf");
    let work: PathBuf = tmp.path().join("resumed.gguf.microllm-work");
    let mut child = std::process::Command::new(microllm().get_program())
        .args(args(&resumed))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(600);
    while !work.join("block-00004.safetensors").exists() {
        assert!(Instant::now() < deadline, "the run never reached block 4");
        assert!(child.try_wait().unwrap().is_none(), "the run ended early");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(!resumed.exists(), "killed before the output was written");

    let mut resume = args(&resumed);
    resume.push("--resume".into());
    let out = microllm().args(resume).assert().success();
    let stdout = String::from_utf8_lossy(&out.get_output().stdout).to_string();
    assert!(stdout.contains("resumed after"), "{stdout}");
    assert!(
        std::fs::read(&whole).unwrap() == std::fs::read(&resumed).unwrap(),
        "resumed output differs from the uninterrupted one"
    );
    assert!(
        !work.exists(),
        "the work directory is removed after success"
    );
}
