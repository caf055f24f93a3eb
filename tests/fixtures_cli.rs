//! The real binary against the architecture fixtures: `logits` matches the reference
//! implementation, sharded/bf16 copies agree, `convert` round-trips.

mod common;

use common::{fixture, max_abs_diff, microllm, read_f32};

/// Reference logits are computed in f32 by transformers (eager attention).
const F32_TOLERANCE: f32 = 1e-4;

/// Every family with a reference, the older four and the newer four.
const FAMILIES: [&str; 8] = [
    "llama-tiny",
    "mistral-tiny",
    "qwen2-tiny",
    "phi-tiny",
    "gemma3-tiny",
    "qwen3-tiny",
    "phi3-tiny",
    "llama3-tiny",
];

fn logits_of(model: &std::path::Path, tokens: &std::path::Path, out: &std::path::Path) -> Vec<f32> {
    microllm()
        .args(["logits", "--model"])
        .arg(model)
        .arg("--tokens")
        .arg(tokens)
        .arg("--out")
        .arg(out)
        .assert()
        .success();
    let (shape, values) = read_f32(out, "logits");
    assert_eq!(shape, vec![2, 24, 384]);
    values
}

/// `eval` on a token-id file scores exactly those tokens: the reference's two 24-token rows as
/// two windows give the perplexity of the reference implementation's own logits.
#[test]
fn eval_of_token_ids_gives_the_reference_perplexity() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = fixture("llama-tiny");
    let reference = dir.join("reference.safetensors");
    let json = tmp.path().join("eval.json");
    microllm()
        .args(["eval", "--ctx", "24", "--model"])
        .arg(&dir)
        .arg("--data")
        .arg(&reference)
        .arg("--json")
        .arg(&json)
        .assert()
        .success();
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let ours = report["result"]["perplexity"].as_f64().unwrap();
    let ids = microllm_io::arrays::read_token_ids(&reference, "input_ids").unwrap();
    let (_, logits) = read_f32(&reference, "logits");
    let (mut nll, mut n) = (0.0f64, 0usize);
    for (r, row) in ids.iter().enumerate() {
        for (t, next) in row.iter().enumerate().skip(1) {
            let l = &logits[(r * 24 + t - 1) * 384..(r * 24 + t) * 384];
            let max = l.iter().fold(f32::MIN, |m, &v| m.max(v)) as f64;
            let sum: f64 = l.iter().map(|&v| (v as f64 - max).exp()).sum();
            nll += max + sum.ln() - l[*next as usize] as f64;
            n += 1;
        }
    }
    let theirs = (nll / n as f64).exp();
    assert_eq!(report["result"]["scored_tokens"], 46);
    assert!(
        (ours - theirs).abs() <= 1e-4 * theirs,
        "eval {ours} vs the reference's {theirs}"
    );
}

#[test]
fn logits_match_the_reference_for_every_family() {
    let tmp = tempfile::tempdir().unwrap();
    for name in FAMILIES {
        let dir = fixture(name);
        let reference = dir.join("reference.safetensors");
        let ours = logits_of(
            &dir,
            &reference,
            &tmp.path().join(format!("{name}.safetensors")),
        );
        let (_, expected) = read_f32(&reference, "logits");
        let diff = max_abs_diff(&ours, &expected);
        assert!(diff <= F32_TOLERANCE, "{name}: max abs diff {diff}");
    }
}

#[test]
fn sharded_and_bf16_copies_agree() {
    let tmp = tempfile::tempdir().unwrap();
    let reference = fixture("llama-tiny").join("reference.safetensors");
    let sharded = logits_of(
        &fixture("llama-tiny-sharded"),
        &reference,
        &tmp.path().join("sharded.safetensors"),
    );
    let (_, expected) = read_f32(&reference, "logits");
    assert!(max_abs_diff(&sharded, &expected) <= F32_TOLERANCE);

    let mistral_ref = fixture("mistral-tiny").join("reference.safetensors");
    let bf16 = logits_of(
        &fixture("mistral-tiny-bf16"),
        &mistral_ref,
        &tmp.path().join("bf16.safetensors"),
    );
    let (_, expected) = read_f32(&mistral_ref, "logits");
    // bf16 keeps 8 mantissa bits (relative error ~4e-3 per weight); through 3 blocks of
    // random weights the logits move by a few hundredths at most.
    let diff = max_abs_diff(&bf16, &expected);
    assert!(diff <= 0.05, "bf16 max abs diff {diff}");
    assert!(
        diff > 0.0,
        "bf16 weights should not be bit-identical to f32"
    );
}

#[test]
fn convert_round_trips_and_shards() {
    let tmp = tempfile::tempdir().unwrap();
    for name in FAMILIES {
        let src = fixture(name);
        let out = tmp.path().join(format!("{name}-converted"));
        microllm()
            .args(["convert", "--max-shard-size", "200KB", "--model"])
            .arg(&src)
            .arg("--out")
            .arg(&out)
            .assert()
            .success();
        assert!(
            out.join("model.safetensors.index.json").is_file(),
            "{name} not sharded"
        );
        let shards = std::fs::read_dir(&out)
            .unwrap()
            .filter(|e| {
                let n = e
                    .as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .to_string();
                n.starts_with("model-") && n.ends_with(".safetensors")
            })
            .count();
        assert!(shards > 1, "{name}: {shards} shard(s)");
        let reference = src.join("reference.safetensors");
        let a = logits_of(&src, &reference, &tmp.path().join("a.safetensors"));
        let b = logits_of(&out, &reference, &tmp.path().join("b.safetensors"));
        assert_eq!(
            max_abs_diff(&a, &b),
            0.0,
            "{name}: f32 conversion must be exact"
        );
    }
}

#[test]
fn gguf_export_round_trips_every_family() {
    // f32 GGUF: llama.cpp's names and q/k row permutation on the way out, undone on the way
    // in, must give back the reference logits.
    let tmp = tempfile::tempdir().unwrap();
    for name in FAMILIES {
        let src = fixture(name);
        let gguf = tmp.path().join(format!("{name}.gguf"));
        microllm()
            .args(["convert", "--gguf-type", "f32", "--model"])
            .arg(&src)
            .arg("--out")
            .arg(&gguf)
            .assert()
            .success();
        let reference = src.join("reference.safetensors");
        let ours = logits_of(&gguf, &reference, &tmp.path().join("g.safetensors"));
        let (_, expected) = read_f32(&reference, "logits");
        let diff = max_abs_diff(&ours, &expected);
        assert!(
            diff <= F32_TOLERANCE,
            "{name} via GGUF: max abs diff {diff}"
        );
    }
}

#[test]
fn fused_families_are_written_fused() {
    // Phi-3 checkpoints fuse q/k/v and gate/up; microllm works on the parts, so its writers
    // must fuse them again: transformers' Phi3 loads `qkv_proj` / `gate_up_proj` only.
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("phi3");
    microllm()
        .args(["convert", "--model"])
        .arg(fixture("phi3-tiny"))
        .arg("--out")
        .arg(&out)
        .assert()
        .success();
    let names = |path: &std::path::Path| -> Vec<String> {
        let bytes = std::fs::read(path).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let mut n: Vec<String> = st.names().into_iter().map(str::to_string).collect();
        n.sort();
        n
    };
    assert_eq!(
        names(&out.join("model.safetensors")),
        names(&fixture("phi3-tiny").join("model.safetensors")),
        "the converted Phi-3 has the source's tensor names"
    );
}

#[test]
fn inspect_reports_the_architecture() {
    let out = microllm()
        .args(["inspect", "--model"])
        .arg(fixture("phi-tiny"))
        .assert()
        .success();
    let text = String::from_utf8_lossy(&out.get_output().stdout).to_string();
    assert!(text.contains("family       phi"), "{text}");
    assert!(text.contains("rotary dims 8/16"), "{text}");
    assert!(
        text.contains("model.layers.0.self_attn.dense.weight"),
        "{text}"
    );
}

/// `microllm inspect | head`: output into a pipe whose reader has gone ends the process
/// quietly (as SIGPIPE does for other tools), never with a panic. The sleep makes sure the
/// reader (`true`) has exited before microllm writes.
#[test]
fn closed_output_pipe_is_not_a_panic() {
    let bin = assert_cmd::cargo::cargo_bin("microllm");
    let script = format!(
        "{{ sleep 0.5; '{}' inspect --model '{}' --tensors; }} | true",
        bin.display(),
        fixture("llama-tiny").display()
    );
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(&script)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// `--threads N` (global, before or after the command) sizes the pools without changing the
/// result; zero threads is a usage error.
#[test]
fn threads_option_keeps_the_logits_and_rejects_zero() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = fixture("llama-tiny");
    let reference = dir.join("reference.safetensors");
    let (_, expected) = read_f32(&reference, "logits");
    for (i, place) in ["before", "after"].iter().enumerate() {
        let out = tmp.path().join(format!("threads-{i}.safetensors"));
        let mut cmd = microllm();
        if *place == "before" {
            cmd.args(["--threads", "1"]);
        }
        cmd.args(["logits", "--model"])
            .arg(&dir)
            .arg("--tokens")
            .arg(&reference)
            .arg("--out")
            .arg(&out);
        if *place == "after" {
            cmd.args(["--threads", "3"]);
        }
        cmd.assert().success();
        let (_, ours) = read_f32(&out, "logits");
        let diff = max_abs_diff(&ours, &expected);
        assert!(
            diff <= F32_TOLERANCE,
            "--threads {place}: max abs diff {diff}"
        );
    }
    let out = microllm()
        .args(["--threads", "0", "inspect", "--model"])
        .arg(&dir)
        .assert()
        .code(2);
    let stderr = String::from_utf8_lossy(&out.get_output().stderr).to_string();
    assert!(stderr.contains("--threads"), "{stderr}");
}
