//! Bad input gets a clear error naming the file and the key or tensor, a non-zero exit, and no
//! partial output.

mod common;

use std::path::Path;

use common::{copy_dir, fixture, microllm, smollm2_gguf, text};

/// Runs `microllm args...`, expects failure, returns stderr.
fn fails(args: &[&std::ffi::OsStr]) -> String {
    let out = microllm().args(args).assert().failure().code(1);
    String::from_utf8_lossy(&out.get_output().stderr).to_string()
}

fn inspect_fails(model: &Path) -> String {
    fails(&["inspect".as_ref(), "--model".as_ref(), model.as_os_str()])
}

fn edit_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) {
    let path = dir.join("config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(v.as_object_mut().unwrap());
    std::fs::write(&path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

#[test]
fn truncated_safetensors_names_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&fixture("llama-tiny"), tmp.path());
    let file = tmp.path().join("model.safetensors");
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() / 2]).unwrap();
    let err = inspect_fails(tmp.path());
    assert!(err.contains("model.safetensors"), "{err}");
}

#[test]
fn shard_index_naming_a_missing_file() {
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&fixture("llama-tiny-sharded"), tmp.path());
    std::fs::remove_file(tmp.path().join("model-00003-of-00007.safetensors")).unwrap();
    let err = inspect_fails(tmp.path());
    assert!(err.contains("model.safetensors.index.json"), "{err}");
    assert!(err.contains("model-00003-of-00007.safetensors"), "{err}");
}

#[test]
fn config_missing_a_required_key() {
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&fixture("llama-tiny"), tmp.path());
    edit_config(tmp.path(), |c| {
        c.remove("num_hidden_layers");
    });
    let err = inspect_fails(tmp.path());
    assert!(
        err.contains("config.json") && err.contains("`num_hidden_layers`"),
        "{err}"
    );
}

#[test]
fn unknown_model_type_lists_the_supported_ones() {
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&fixture("llama-tiny"), tmp.path());
    edit_config(tmp.path(), |c| {
        c.insert("model_type".into(), "mamba".into());
    });
    let err = inspect_fails(tmp.path());
    assert!(
        err.contains("`mamba`")
            && err.contains("llama, mistral, qwen2, qwen3, phi, phi3, gemma3_text"),
        "{err}"
    );
}

#[test]
fn tensor_with_the_wrong_shape_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&fixture("llama-tiny"), tmp.path());
    edit_config(tmp.path(), |c| {
        c.insert("intermediate_size".into(), 128.into());
    });
    let reference = fixture("llama-tiny").join("reference.safetensors");
    let out = tmp.path().join("logits.safetensors");
    let err = fails(&[
        "logits".as_ref(),
        "--model".as_ref(),
        tmp.path().as_os_str(),
        "--tokens".as_ref(),
        reference.as_os_str(),
        "--out".as_ref(),
        out.as_os_str(),
    ]);
    assert!(err.contains("model.layers.0.mlp."), "{err}");
    assert!(
        err.contains("[128, 64]") || err.contains("[64, 128]"),
        "{err}"
    );
    assert!(!out.exists());
}

#[test]
fn gguf_with_a_bad_magic() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("broken.gguf");
    std::fs::write(&file, b"GGUX\x03\x00\x00\x00 not really a model").unwrap();
    let err = inspect_fails(&file);
    assert!(
        err.contains("broken.gguf") && err.contains("magic"),
        "{err}"
    );
}

#[test]
fn gguf_with_truncated_tensor_data() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("cut.gguf");
    let bytes = std::fs::read(smollm2_gguf()).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() * 3 / 4]).unwrap();
    let err = inspect_fails(&file);
    assert!(err.contains("cut.gguf"), "{err}");
    assert!(
        err.contains("blk.") || err.contains("model.layers."),
        "names no tensor: {err}"
    );
}

#[test]
fn text_that_is_not_utf8() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("latin1.txt");
    std::fs::write(&data, b"caf\xe9 au lait, encore du caf\xe9").unwrap();
    let err = fails(&[
        "eval".as_ref(),
        "--model".as_ref(),
        smollm2_gguf().as_os_str(),
        "--data".as_ref(),
        data.as_os_str(),
    ]);
    assert!(err.contains("latin1.txt") && err.contains("UTF-8"), "{err}");
    // The real text is fine; the check is about the bytes, not the path.
    assert!(text("wiki.eval.txt").is_file());
}

#[test]
fn convert_leaves_nothing_behind_on_failure() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    copy_dir(&fixture("llama-tiny"), &model);
    poison_last_tensor(&model.join("model.safetensors"));
    let out = tmp.path().join("converted");
    let err = fails(&[
        "convert".as_ref(),
        "--model".as_ref(),
        model.as_os_str(),
        "--out".as_ref(),
        out.as_os_str(),
    ]);
    assert!(err.contains("NaN"), "{err}");
    assert!(err.contains("model.norm.weight"), "{err}");
    assert!(!out.exists());
    let left: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        left,
        vec![std::ffi::OsString::from("model")],
        "leftovers: {left:?}"
    );
}

/// Fills `model.norm.weight` with NaNs. Tensors are written in name order, so `model.norm`
/// comes after every block: the failure happens once most of the output exists.
fn poison_last_tensor(file: &Path) {
    let bytes = std::fs::read(file).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let view = st.tensor("model.norm.weight").unwrap();
    let start = view.data().as_ptr() as usize - bytes.as_ptr() as usize;
    let len = view.data().len();
    let mut patched = bytes.clone();
    for chunk in patched[start..start + len].chunks_exact_mut(4) {
        chunk.copy_from_slice(&f32::NAN.to_le_bytes());
    }
    std::fs::write(file, patched).unwrap();
}

#[test]
fn non_finite_numbers_in_flags_are_refused() {
    let model = fixture("llama-tiny");
    for (command, flag, value) in [
        ("prune", "--sparsity", "nan"),
        ("prune", "--damp", "inf"),
        ("quantize", "--damp", "NaN"),
        ("quantize", "--sink-weight", "-inf"),
    ] {
        let out = microllm()
            .arg(command)
            .arg(format!("{flag}={value}"))
            .args(["--out", "never-written", "--model"])
            .arg(&model)
            .arg("--calib")
            .arg(text("tinystories.txt"))
            .assert()
            .failure();
        let err = String::from_utf8_lossy(&out.get_output().stderr).to_string();
        assert!(
            err.contains("not a finite number"),
            "{command} {flag} {value}: {err}"
        );
        assert!(err.contains(flag), "{command} {flag} {value}: {err}");
        assert!(!Path::new("never-written").exists());
    }
}

#[test]
fn gguf_alignment_zero_is_an_error_not_a_panic() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("aligned.gguf");
    let mut bytes = common::fixture_gguf(&file);
    let key = b"general.alignment";
    let at = bytes
        .windows(key.len())
        .position(|w| w == key)
        .expect("the writer sets general.alignment");
    // After the key: the value type (u32) and the value (u32).
    let value = at + key.len() + 4;
    for (alignment, what) in [
        (0u32, "general.alignment = 0"),
        (3, "general.alignment = 3"),
    ] {
        bytes[value..value + 4].copy_from_slice(&alignment.to_le_bytes());
        std::fs::write(&file, &bytes).unwrap();
        let err = inspect_fails(&file);
        assert!(err.contains(what) && err.contains("aligned.gguf"), "{err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}
