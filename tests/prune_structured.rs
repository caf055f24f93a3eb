//! `microllm prune --structured` on the architecture fixtures.
//!
//! * Removing nothing is exactly the identity (same logits, bit for bit).
//! * Exactness oracle: the pruned model computes what the original computes with the removed
//!   structures' contributions zeroed and the removed blocks skipped. A removed MLP channel is
//!   the original with that channel's down_proj column (and gate/up rows, fc1 bias) zeroed; a
//!   removed query head is the original with that head's o_proj columns zeroed (zeroing its q
//!   rows would not do: scores of 0 give uniform attention, not silence; under GQA the KV
//!   head stays as long as any of its query heads does); a removed block is skipped.
//! * Config and tensor shapes agree, and the pruned model loads and runs in the binary.
//! * Bad input fails with the flag and the model's numbers, leaving nothing behind.

mod common;

use std::path::Path;

use candle_core::{Device, Tensor};
use common::{fixture, max_abs_diff, microllm, read_f32};
use microllm_core::LinearKind;
use microllm_models::{Decoder, NoTap};

/// Same computation, different summation lengths in the matmuls (f32).
const ORACLE_TOLERANCE: f32 = 1e-4;

const FAMILIES: [&str; 4] = ["llama-tiny", "mistral-tiny", "qwen2-tiny", "phi-tiny"];

fn logits_cli(model: &Path, tokens: &Path, out: &Path) -> Vec<f32> {
    microllm()
        .args(["logits", "--model"])
        .arg(model)
        .arg("--tokens")
        .arg(tokens)
        .arg("--out")
        .arg(out)
        .assert()
        .success();
    read_f32(out, "logits").1
}

fn prune(model: &Path, out: &Path, extra: &[&str]) -> serde_json::Value {
    let reference = model.join("reference.safetensors");
    microllm()
        .args(["prune", "--structured", "--model"])
        .arg(model)
        .arg("--out")
        .arg(out)
        .arg("--calib")
        .arg(&reference)
        .args(["--samples", "2", "--seqlen", "24", "--dtype", "f32"])
        .args(extra)
        .assert()
        .success();
    let report = out.with_file_name(format!(
        "{}.report.json",
        out.file_stem().unwrap().to_string_lossy()
    ));
    serde_json::from_str(&std::fs::read_to_string(report).unwrap()).unwrap()
}

fn input_ids(model: &Path) -> Tensor {
    let rows =
        microllm_io::arrays::read_token_ids(&model.join("reference.safetensors"), "input_ids")
            .unwrap();
    let (b, s) = (rows.len(), rows[0].len());
    Tensor::from_vec(rows.concat(), (b, s), &Device::Cpu).unwrap()
}

fn flat(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

#[test]
fn removing_nothing_is_the_identity() {
    let tmp = tempfile::tempdir().unwrap();
    for name in FAMILIES {
        let dir = fixture(name);
        let tokens = dir.join("reference.safetensors");
        let out = tmp.path().join(name);
        let report = prune(&dir, &out, &[]);
        assert_eq!(
            report["size"]["parameters_before"],
            report["size"]["parameters_after"]
        );
        let before = logits_cli(&dir, &tokens, &tmp.path().join(format!("{name}-a.st")));
        let after = logits_cli(&out, &tokens, &tmp.path().join(format!("{name}-b.st")));
        assert_eq!(
            max_abs_diff(&before, &after),
            0.0,
            "{name}: not the identity"
        );
    }
}

/// Masks of kept indices (1 kept, 0 removed) over `n`.
fn mask(kept: &[usize], n: usize, repeat: usize) -> Vec<f32> {
    (0..n * repeat)
        .map(|i| {
            if kept.contains(&(i / repeat)) {
                1.0
            } else {
                0.0
            }
        })
        .collect()
}

fn indices(v: &serde_json::Value) -> Vec<usize> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect()
}

/// The original model with the report's removed channels and heads zeroed and its dropped
/// blocks skipped: logits of `ids`.
fn oracle_logits(dir: &Path, report: &serde_json::Value, ids: &Tensor) -> Tensor {
    let ckpt = microllm_io::open(dir.to_str().unwrap()).unwrap();
    let cfg = ckpt.config.clone();
    let mut model = Decoder::load(&cfg, ckpt.tensors.as_ref()).unwrap();
    let dev = Device::Cpu;
    let mut kept_blocks = Vec::new();
    for layer in report["structure"]["layers"].as_array().unwrap() {
        let source = layer["source_layer"].as_u64().unwrap() as usize;
        kept_blocks.push(source);
        let channels = mask(&indices(&layer["kept_channels"]), cfg.intermediate_size, 1);
        let heads = mask(&indices(&layer["kept_heads"]), cfg.num_heads, cfg.head_dim);
        let rows = |m: &[f32]| Tensor::from_slice(m, (m.len(), 1), &dev).unwrap();
        let cols = |m: &[f32]| Tensor::from_slice(m, (1, m.len()), &dev).unwrap();
        let block = &mut model.blocks_mut()[source];
        let down = block.linear_mut(LinearKind::Down).unwrap();
        down.set_weight(
            down.weight()
                .unwrap()
                .broadcast_mul(&cols(&channels))
                .unwrap(),
        );
        for kind in [LinearKind::Gate, LinearKind::Up] {
            if let Some(lin) = block.linear_mut(kind) {
                lin.set_weight(
                    lin.weight()
                        .unwrap()
                        .broadcast_mul(&rows(&channels))
                        .unwrap(),
                );
                let m = Tensor::new(channels.as_slice(), &dev).unwrap();
                lin.bias = lin.bias.as_ref().map(|b| (b * &m).unwrap());
            }
        }
        let o = block.linear_mut(LinearKind::O).unwrap();
        o.set_weight(o.weight().unwrap().broadcast_mul(&cols(&heads)).unwrap());
    }
    let mut x = model.embed(ids).unwrap();
    for (i, block) in model.blocks().iter().enumerate() {
        if kept_blocks.contains(&i) {
            x = block
                .forward(&x, model.positions(0), None, &mut NoTap)
                .unwrap();
        }
    }
    model.head(&x).unwrap()
}

#[test]
fn pruning_equals_zeroing_and_skipping_in_the_original() {
    let tmp = tempfile::tempdir().unwrap();
    // Phi has as many KV heads as query heads: only whole groups (of one) can go.
    let cases = [
        ("llama-tiny", "per-group"),
        ("mistral-tiny", "kv-groups"),
        ("qwen2-tiny", "per-group"),
        ("phi-tiny", "kv-groups"),
        ("qwen3-tiny", "per-group"),
        ("phi3-tiny", "kv-groups"),
        ("llama3-tiny", "per-group"),
        ("gemma3-tiny", "per-group"),
    ];
    for (name, mode) in cases {
        let dir = fixture(name);
        let out = tmp.path().join(name);
        let args = [
            "--mlp-keep",
            "0.9",
            "--mlp-multiple",
            "1",
            "--heads-keep",
            "0.5",
            "--head-mode",
            mode,
            "--drop-layers",
            "1",
        ];
        let report = prune(&dir, &out, &args);
        let pruned = microllm_io::open(out.to_str().unwrap()).unwrap();
        let cfg = &pruned.config;
        let orig = microllm_io::open(dir.to_str().unwrap()).unwrap().config;
        let group = orig.num_heads / orig.num_kv_heads;
        let kv = if mode == "kv-groups" {
            2 / group.min(2)
        } else {
            orig.num_kv_heads
        };
        assert_eq!(
            (
                cfg.num_layers,
                cfg.intermediate_size,
                cfg.num_heads,
                cfg.num_kv_heads
            ),
            (2, 144, 2, kv),
            "{name}: config"
        );
        assert_eq!(cfg.head_dim, orig.head_dim, "{name}: head_dim kept");
        assert_eq!(
            report["structure"]["dropped_layers"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
        let (h, hd) = (cfg.hidden_size, cfg.head_dim);
        let shape = |l: usize, k: LinearKind| {
            pruned
                .tensors
                .info(&microllm_core::names::linear_weight(cfg.family, l, k))
                .map(|i| i.shape)
        };
        for l in 0..2 {
            assert_eq!(shape(l, LinearKind::Q), Some(vec![2 * hd, h]), "{name}");
            assert_eq!(shape(l, LinearKind::K), Some(vec![kv * hd, h]), "{name}");
            assert_eq!(shape(l, LinearKind::O), Some(vec![h, 2 * hd]), "{name}");
            assert_eq!(shape(l, LinearKind::Up), Some(vec![144, h]), "{name}");
            assert_eq!(shape(l, LinearKind::Down), Some(vec![h, 144]), "{name}");
        }
        assert!(
            pruned
                .tensors
                .info("model.layers.2.input_layernorm.weight")
                .is_none()
        );
        let params: usize = pruned.tensors.infos().iter().map(|i| i.numel()).sum();
        assert_eq!(
            params,
            cfg.parameter_count(),
            "{name}: tensors match config.json"
        );
        assert_eq!(report["size"]["parameters_after"], params, "{name}: report");

        let ids = input_ids(&dir);
        let ours = Decoder::load(cfg, pruned.tensors.as_ref())
            .unwrap()
            .forward(&ids)
            .unwrap();
        let expected = oracle_logits(&dir, &report, &ids);
        let diff = max_abs_diff(&flat(&ours), &flat(&expected));
        assert!(
            diff <= ORACLE_TOLERANCE,
            "{name}: pruned vs oracle max abs diff {diff}"
        );
        // And the binary loads and runs it.
        let tokens = dir.join("reference.safetensors");
        let cli = logits_cli(&out, &tokens, &tmp.path().join(format!("{name}.logits.st")));
        assert!(
            max_abs_diff(&cli, &flat(&ours)) <= 1e-5,
            "{name}: logits command"
        );
    }
}

#[test]
fn gguf_output_holds_the_same_pruned_model() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = fixture("llama-tiny");
    let args = [
        "--mlp-keep",
        "0.5",
        "--heads-keep",
        "0.5",
        "--drop-layers",
        "1",
    ];
    let st = tmp.path().join("st");
    let gguf = tmp.path().join("pruned.gguf");
    let a = prune(&dir, &st, &args);
    let mut gguf_args = args.to_vec();
    gguf_args.extend(["--gguf-type", "f32"]);
    let b = prune(&dir, &gguf, &gguf_args);
    assert_eq!(
        a["structure"]["layers"], b["structure"]["layers"],
        "same calibration, same plan"
    );
    assert!(!b["structure"]["layers"].as_array().unwrap().is_empty());
    assert!(b["output"]["format"].as_str().unwrap().starts_with("gguf"));
    let tokens = dir.join("reference.safetensors");
    let x = logits_cli(&st, &tokens, &tmp.path().join("a.st"));
    let y = logits_cli(&gguf, &tokens, &tmp.path().join("b.st"));
    assert!(max_abs_diff(&x, &y) <= 1e-5);
    let size = std::fs::metadata(&gguf).unwrap().len();
    assert_eq!(b["size"]["file_bytes"], size);
}

#[test]
fn dry_run_prints_shapes_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("never");
    microllm()
        .args([
            "prune",
            "--structured",
            "--dry-run",
            "--mlp-keep",
            "0.8",
            "--drop-layers",
            "1",
        ])
        .arg("--model")
        .arg(fixture("llama-tiny"))
        .arg("--out")
        .arg(&out)
        .assert()
        .success()
        .stdout(predicates::str::contains("160 -> 128"))
        .stdout(predicates::str::contains("parameters 154048 ->"));
    assert!(!out.exists());
}

fn fails_with(extra: &[&str], needles: &[&str]) {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let dir = fixture("llama-tiny");
    let assert = microllm()
        .args(["prune", "--structured", "--model"])
        .arg(&dir)
        .arg("--out")
        .arg(&out)
        .args(extra)
        .assert()
        .failure();
    let stderr = String::from_utf8_lossy(&assert.get_output().stderr).to_string();
    for n in needles {
        assert!(stderr.contains(n), "`{n}` not in: {stderr}");
    }
    assert_eq!(
        std::fs::read_dir(tmp.path()).unwrap().count(),
        0,
        "left files behind"
    );
}

#[test]
fn bad_input_is_refused_with_the_flag_and_the_models_numbers() {
    fails_with(&["--mlp-keep", "0"], &["--mlp-keep 0", "(0, 1]"]);
    fails_with(&["--mlp-keep", "1.5"], &["--mlp-keep 1.5", "(0, 1]"]);
    fails_with(&["--heads-keep=-0.5"], &["--heads-keep -0.5"]);
    fails_with(
        &["--heads-keep", "0.1"],
        &["keeps zero", "4 attention heads"],
    );
    fails_with(
        &["--mlp-keep", "0.001", "--mlp-multiple", "1"],
        &["keeps zero of the model's 160 MLP channels"],
    );
    fails_with(
        &["--heads-keep", "0.75"],
        &[
            "3 of the model's 4 query heads (2 KV heads)",
            "0.5000 (2 heads)",
        ],
    );
    fails_with(
        &["--heads-keep", "0.75", "--head-mode", "kv-groups"],
        &["whole KV groups of 2 query heads"],
    );
    fails_with(
        &["--drop-layers", "3"],
        &["--drop-layers 3", "all of the model's 3"],
    );
    fails_with(&["--mlp-keep", "0.5"], &["--calib"]);
    fails_with(&["--mlp-multiple", "0"], &["--mlp-multiple"]);
}

#[test]
fn structured_flags_need_structured() {
    microllm()
        .args(["prune", "--model", "m", "--out", "o", "--mlp-keep", "0.5"])
        .assert()
        .failure()
        .stderr(predicates::str::contains("--structured"));
}
