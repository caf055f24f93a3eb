//! `microllm distill` end to end on the fixture models: a run killed with SIGKILL resumes to
//! the same weights, and bad input (unknown loss, vocabularies or widths that do not match,
//! stores from another tokenizer or window length, a loss that becomes NaN) fails with a
//! clear error and a non-zero exit, leaving no output behind.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{calib_ids, fixture, json, microllm};
use predicates::prelude::PredicateBooleanExt;
use predicates::str::contains;

/// A llama model with random weights: `vocab` tokens, `hidden` wide, 2 blocks, 4 heads of 16.
fn write_llama(dir: &Path, vocab: usize, hidden: usize) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let config = serde_json::json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
        "hidden_size": hidden, "intermediate_size": 96, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
        "max_position_embeddings": 256, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "tie_word_embeddings": true, "vocab_size": vocab, "torch_dtype": "float32"
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let mut shapes: Vec<(String, Vec<usize>)> = vec![
        ("model.embed_tokens.weight".into(), vec![vocab, hidden]),
        ("model.norm.weight".into(), vec![hidden]),
    ];
    for l in 0..2 {
        let p = format!("model.layers.{l}");
        for (name, shape) in [
            ("input_layernorm.weight", vec![hidden]),
            ("post_attention_layernorm.weight", vec![hidden]),
            ("self_attn.q_proj.weight", vec![64, hidden]),
            ("self_attn.k_proj.weight", vec![32, hidden]),
            ("self_attn.v_proj.weight", vec![32, hidden]),
            ("self_attn.o_proj.weight", vec![hidden, 64]),
            ("mlp.gate_proj.weight", vec![96, hidden]),
            ("mlp.up_proj.weight", vec![96, hidden]),
            ("mlp.down_proj.weight", vec![hidden, 96]),
        ] {
            shapes.push((format!("{p}.{name}"), shape));
        }
    }
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let data: Vec<Vec<u8>> = shapes
        .iter()
        .map(|(name, shape)| {
            let n: usize = shape.iter().product();
            (0..n)
                .flat_map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    let v = if name.contains("norm") {
                        1.0
                    } else {
                        ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.2
                    };
                    v.to_le_bytes()
                })
                .collect()
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = shapes
        .iter()
        .zip(&data)
        .map(|((n, s), d)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), d)
                    .unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
    dir.to_path_buf()
}

fn teacher() -> PathBuf {
    fixture("llama-tiny")
}

/// The arguments of a small run from a live teacher (`extra` appended).
fn run_args(data: &Path, out: &Path, extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = [
        "distill",
        "--teacher",
        teacher().to_str().unwrap(),
        "--student-from-teacher",
        "drop-layers=1",
        "--calib-samples",
        "4",
        "--calib-seqlen",
        "16",
        "--data",
        data.to_str().unwrap(),
        "--seqlen",
        "16",
        "--batch",
        "4",
        "--out",
        out.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

#[test]
fn help_lists_the_short_model_names() {
    microllm()
        .args(["distill", "--help"])
        .assert()
        .success()
        .stdout(
            contains("mistral-7b")
                .and(contains("tinyllama"))
                .and(contains("smollm2-135m")),
        );
    microllm()
        .args(["distill", "logits", "--help"])
        .assert()
        .success()
        .stdout(contains("--top-k"));
}

/// SIGKILL mid-run, then `--resume`: the same weights, byte for byte, as an uninterrupted run.
#[test]
fn killed_run_resumes_to_identical_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let data = calib_ids(tmp.path(), 64, 16, 384);
    let extra = [
        "--loss",
        "kl:1,ce:0.2",
        "--temperature",
        "2",
        "--steps",
        "240",
        "--lr",
        "1e-3",
        "--checkpoint-every",
        "20",
    ];
    let whole = tmp.path().join("whole");
    microllm()
        .args(run_args(&data, &whole, &extra))
        .assert()
        .success();

    let resumed = tmp.path().join("resumed");
    let work = tmp.path().join("resumed.microllm-work");
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("microllm"))
        .args(run_args(&data, &resumed, &extra))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    let state_file = work.join("distill-checkpoints/checkpoint/state.json");
    loop {
        assert!(Instant::now() < deadline, "no checkpoint after 5 minutes");
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before it could be killed"
        );
        if let Ok(text) = std::fs::read_to_string(&state_file) {
            let v: serde_json::Value = serde_json::from_str(&text).unwrap();
            if v["step"].as_u64().unwrap() >= 60 {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(!resumed.exists(), "killed before the output was written");

    let mut args = run_args(&data, &resumed, &extra);
    args.push("--resume".into());
    microllm()
        .args(args)
        .assert()
        .success()
        .stdout(contains("resumed at step"));
    let a = std::fs::read(whole.join("model.safetensors")).unwrap();
    let b = std::fs::read(resumed.join("model.safetensors")).unwrap();
    assert!(
        a == b,
        "the resumed run's weights differ from the uninterrupted run's"
    );
    assert!(
        !work.exists(),
        "the work directory is removed after success"
    );
}

#[test]
fn unknown_loss_names_the_known_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let data = calib_ids(tmp.path(), 8, 16, 384);
    let out = tmp.path().join("out");
    microllm()
        .args(run_args(
            &data,
            &out,
            &["--loss", "kl:1,entropy:1", "--steps", "2"],
        ))
        .assert()
        .failure()
        .stderr(contains("unknown loss `entropy`").and(contains("reverse-kl")));
    assert!(!out.exists());
}

#[test]
fn mismatched_vocabularies_fail_before_any_work() {
    let tmp = tempfile::tempdir().unwrap();
    let data = calib_ids(tmp.path(), 8, 16, 300);
    let student = write_llama(&tmp.path().join("student"), 383, 64);
    let out = tmp.path().join("out");
    microllm()
        .args([
            "distill",
            "--teacher",
            teacher().to_str().unwrap(),
            "--student",
            student.to_str().unwrap(),
        ])
        .args([
            "--data",
            data.to_str().unwrap(),
            "--seqlen",
            "16",
            "--batch",
            "2",
            "--steps",
            "2",
            "--out",
            out.to_str().unwrap(),
        ])
        .assert()
        .failure()
        .stderr(contains("vocabulary of 384 tokens and the student 383"));
    assert!(!out.exists() && !tmp.path().join("out.microllm-work").exists());
}

#[test]
fn wider_student_needs_a_projection_for_hidden_losses() {
    let tmp = tempfile::tempdir().unwrap();
    let data = calib_ids(tmp.path(), 8, 16, 384);
    let student = write_llama(&tmp.path().join("wide"), 384, 96);
    let out = tmp.path().join("out");
    let teacher = teacher();
    let base = [
        "distill",
        "--teacher",
        teacher.to_str().unwrap(),
        "--student",
        student.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
    ];
    let rest = [
        "--seqlen",
        "16",
        "--batch",
        "2",
        "--steps",
        "2",
        "--loss",
        "kl:1,hidden-mse:1",
        "--layer-map",
        "0:0,1:2",
        "--out",
        out.to_str().unwrap(),
    ];
    microllm()
        .args(base)
        .args(rest)
        .assert()
        .failure()
        .stderr(contains("96 wide and the teacher's 64").and(contains("--hidden-projection")));
    assert!(!out.exists());
    // With the projection it trains.
    microllm()
        .args(base)
        .args(rest)
        .arg("--hidden-projection")
        .assert()
        .success();
    assert!(out.join("model.safetensors").is_file());
}

#[test]
fn stores_from_another_tokenizer_or_window_length_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let data = calib_ids(tmp.path(), 8, 16, 384);
    let store = tmp.path().join("store");
    microllm()
        .args([
            "distill",
            "logits",
            "--teacher",
            teacher().to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
        ])
        .args([
            "--seqlen",
            "16",
            "--top-k",
            "8",
            "--out",
            store.to_str().unwrap(),
        ])
        .assert()
        .success()
        .stdout(contains("bytes per token"));
    let out = tmp.path().join("out");
    let train = |store: &Path, seqlen: &str| {
        let mut a = run_args(
            &data,
            &out,
            &["--logits", store.to_str().unwrap(), "--steps", "2"],
        );
        let at = a.iter().position(|x| x == "--seqlen").unwrap();
        a[at + 1] = seqlen.into();
        a
    };
    microllm()
        .args(train(&store, "8"))
        .assert()
        .failure()
        .stderr(contains("key `seqlen`").and(contains("manifest.json")));
    // The same store, as if made with another tokenizer.
    let other = tmp.path().join("other-tokenizer");
    common::copy_dir(&store, &other);
    let manifest = other.join("manifest.json");
    let text = std::fs::read_to_string(&manifest).unwrap().replace(
        "\"tokenizer_sha256\": \"none\"",
        "\"tokenizer_sha256\": \"0123abcd\"",
    );
    std::fs::write(&manifest, text).unwrap();
    microllm()
        .args(train(&other, "16"))
        .assert()
        .failure()
        .stderr(contains("key `tokenizer_sha256`"));
    assert!(!out.exists());
    microllm().args(train(&store, "16")).assert().success();
}

/// A learning rate that blows the weights up: the loss turns non-finite, the run stops with
/// a non-zero exit naming the step, the last good state stays checkpointed, no output.
#[test]
fn non_finite_loss_stops_and_keeps_the_last_good_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let data = calib_ids(tmp.path(), 16, 16, 384);
    let out = tmp.path().join("out");
    microllm()
        .args(run_args(
            &data,
            &out,
            &[
                "--steps",
                "20",
                "--lr",
                "1e30",
                "--warmup-steps",
                "0",
                "--clip",
                "1e30",
                "--checkpoint-every",
                "1",
            ],
        ))
        .assert()
        .failure()
        .stderr(contains("is not finite at step").and(contains("checkpointed in")));
    assert!(!out.exists(), "no output from a failed run");
    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            tmp.path()
                .join("out.microllm-work/distill-checkpoints/checkpoint/state.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let curve = state["curve"].as_array().unwrap();
    assert!(
        curve
            .iter()
            .all(|r| r["loss"].as_f64().unwrap().is_finite()),
        "only finite steps recorded"
    );
}

/// Every new family distils from a live teacher into a student cut from it: the loss falls,
/// and per-block properties (Gemma 3's window flags) follow the blocks the student kept.
#[test]
fn new_families_distil_with_falling_loss() {
    let tmp = tempfile::tempdir().unwrap();
    let data = calib_ids(tmp.path(), 64, 16, 384);
    for family in ["gemma3-tiny", "qwen3-tiny", "phi3-tiny", "llama3-tiny"] {
        let out = tmp.path().join(family);
        let mut args = run_args(&data, &out, &["--steps", "30", "--lr", "1e-3"]);
        args[2] = fixture(family).to_str().unwrap().to_string();
        microllm().args(&args).assert().success();
        let report = json(&tmp.path().join(format!("{family}.report.json")));
        let curve = report["distill"]["curve"].as_array().unwrap();
        let (first, last) = (
            curve[0]["loss"].as_f64().unwrap(),
            curve[curve.len() - 1]["loss"].as_f64().unwrap(),
        );
        assert!(last < 0.9 * first, "{family}: loss {first} -> {last}");
        let teacher_cfg = json(&fixture(family).join("config.json"));
        let student_cfg = json(&out.join("config.json"));
        let layers = teacher_cfg["num_hidden_layers"].as_u64().unwrap();
        assert_eq!(student_cfg["num_hidden_layers"], layers - 1, "{family}");
        if family == "gemma3-tiny" {
            let types = teacher_cfg["layer_types"].as_array().unwrap();
            let kept: Vec<usize> = report["structure"]["layers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| b["source_layer"].as_u64().unwrap() as usize)
                .collect();
            let want: Vec<&serde_json::Value> = kept.iter().map(|&b| &types[b]).collect();
            let got: Vec<&serde_json::Value> = student_cfg["layer_types"]
                .as_array()
                .unwrap()
                .iter()
                .collect();
            assert_eq!(got, want, "{family}: layer types of the kept blocks");
        }
    }
}

/// The trained student is the output: written once in the asked dtype (and linked from the
/// work directory into place), loadable, and nothing left of the work directory.
#[test]
fn output_dtype_is_the_written_students() {
    let tmp = tempfile::tempdir().unwrap();
    let data = calib_ids(tmp.path(), 8, 16, 384);
    let out = tmp.path().join("half");
    microllm()
        .args(run_args(&data, &out, &["--steps", "2", "--dtype", "bf16"]))
        .assert()
        .success();
    assert_eq!(json(&out.join("config.json"))["torch_dtype"], "bfloat16");
    let bytes = std::fs::read(out.join("model.safetensors")).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + header_len]).unwrap();
    let weight = &header["model.layers.0.mlp.down_proj.weight"];
    assert_eq!(weight["dtype"], "BF16", "{header}");
    assert!(!tmp.path().join("half.microllm-work").exists());
    microllm()
        .args(["eval", "--model", out.to_str().unwrap(), "--data"])
        .arg(&data)
        .args(["--ctx", "16", "--max-windows", "2"])
        .assert()
        .success();
}
