//! Models whose weights do not fit their configuration, GGUF files with a corrupt tensor layout,
//! and weights holding NaN or values no output type can store: each is refused with an error
//! naming the tensor (or key), exit status 1, and nothing written. Inputs are built from the
//! fixtures at test time.

mod common;

use std::path::{Path, PathBuf};

use common::{copy_dir, fixture, microllm};

/// Runs `microllm args...`, expects exit status 1, returns stderr.
fn fails(args: &[&std::ffi::OsStr]) -> String {
    let out = microllm().args(args).assert().failure().code(1);
    String::from_utf8_lossy(&out.get_output().stderr).to_string()
}

/// `convert` of `model` into `tmp/out`: the error, with the check that nothing was written.
fn convert_fails(model: &Path, extra: &[&str]) -> String {
    let out = model.with_file_name(format!(
        "{}-out",
        model.file_name().unwrap().to_string_lossy()
    ));
    let mut args: Vec<&std::ffi::OsStr> = vec![
        "convert".as_ref(),
        "--model".as_ref(),
        model.as_os_str(),
        "--out".as_ref(),
        out.as_os_str(),
    ];
    args.extend(extra.iter().map(std::ffi::OsStr::new));
    let err = fails(&args);
    assert!(!out.exists(), "{} was written", out.display());
    err
}

/// A copy of `name` in `tmp/dir` with config.json edited.
fn with_config(
    tmp: &Path,
    name: &str,
    dir: &str,
    edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>),
) -> PathBuf {
    let model = tmp.join(dir);
    copy_dir(&fixture(name), &model);
    let path = model.join("config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(v.as_object_mut().unwrap());
    std::fs::write(&path, v.to_string()).unwrap();
    model
}

/// Rewrites `model/model.safetensors` with the tensors `edit` leaves, values as `edit` sets.
fn with_tensors(model: &Path, edit: impl FnOnce(&mut Vec<(String, Vec<usize>, Vec<f32>)>)) {
    let file = model.join("model.safetensors");
    let bytes = std::fs::read(&file).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = st
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            assert_eq!(view.dtype(), safetensors::Dtype::F32);
            let values = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect();
            (name, view.shape().to_vec(), values)
        })
        .collect();
    edit(&mut tensors);
    let data: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .into_iter()
        .map(|(n, s, v)| (n, s, v.iter().flat_map(|x| x.to_le_bytes()).collect()))
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = data
        .iter()
        .map(|(n, s, b)| {
            let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                .unwrap();
            (n.clone(), view)
        })
        .collect();
    safetensors::tensor::serialize_to_file(views, None, &file).unwrap();
}

#[test]
fn weights_that_do_not_fit_the_configuration_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();

    // Config says fewer blocks than the file holds: the extra block is named.
    let extra = with_config(t, "llama-tiny", "extra", |c| {
        c.insert("num_hidden_layers".into(), 2.into());
    });
    let err = convert_fails(&extra, &[]);
    assert!(
        err.contains("model.layers.2.") && err.contains("block 2"),
        "{err}"
    );

    // Config says more blocks: the first missing tensor is named.
    let fewer = with_config(t, "llama-tiny", "fewer", |c| {
        c.insert("num_hidden_layers".into(), 4.into());
    });
    let err = convert_fails(&fewer, &[]);
    assert!(
        err.contains("model.layers.3.") && err.contains("not found"),
        "{err}"
    );

    // A vocabulary larger than the embedding, up to one no machine could allocate.
    for (dir, vocab) in [("short", 385u64), ("huge", 1 << 40)] {
        let model = with_config(t, "llama-tiny", dir, |c| {
            c.insert("vocab_size".into(), vocab.into());
        });
        let err = convert_fails(&model, &[]);
        assert!(
            err.contains("model.embed_tokens.weight") && err.contains(&format!("[{vocab}, 64]")),
            "{err}"
        );
    }

    // A tensor missing from the file, and one the architecture does not have.
    let missing = with_config(t, "llama-tiny", "missing", |_| {});
    with_tensors(&missing, |ts| {
        ts.retain(|(n, _, _)| n != "model.layers.1.input_layernorm.weight")
    });
    let err = convert_fails(&missing, &[]);
    assert!(
        err.contains("model.layers.1.input_layernorm.weight") && err.contains("not found"),
        "{err}"
    );
    let unknown = with_config(t, "llama-tiny", "unknown", |_| {});
    with_tensors(&unknown, |ts| {
        ts.push((
            "model.layers.0.mystery.weight".into(),
            vec![4],
            vec![0.0; 4],
        ))
    });
    let err = convert_fails(&unknown, &[]);
    assert!(err.contains("model.layers.0.mystery.weight"), "{err}");

    // Every command opens models the same way: quantize, prune and logits refuse too.
    let reference = fixture("llama-tiny").join("reference.safetensors");
    let out = t.join("never");
    for args in [
        vec!["quantize", "--method", "rtn", "--bits", "4"],
        vec!["prune", "--method", "magnitude", "--sparsity", "0.5"],
    ] {
        let mut full: Vec<&std::ffi::OsStr> = args.iter().map(std::ffi::OsStr::new).collect();
        full.extend([
            "--model".as_ref(),
            extra.as_os_str(),
            "--out".as_ref(),
            out.as_os_str(),
        ]);
        let err = fails(&full);
        assert!(err.contains("block 2"), "{args:?}: {err}");
        assert!(!out.exists());
    }
    let err = fails(&[
        "logits".as_ref(),
        "--model".as_ref(),
        fewer.as_os_str(),
        "--tokens".as_ref(),
        reference.as_os_str(),
        "--out".as_ref(),
        out.as_os_str(),
    ]);
    assert!(err.contains("model.layers.3."), "{err}");
}

#[test]
fn shard_indexes_are_confined_to_their_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("sharded");
    copy_dir(&fixture("llama-tiny-sharded"), &model);
    let index_path = model.join("model.safetensors.index.json");
    let index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&index_path).unwrap()).unwrap();
    let first = index["weight_map"]
        .as_object()
        .unwrap()
        .keys()
        .next()
        .unwrap()
        .clone();
    // A shard outside the directory (it exists: the escape, not a missing file, is refused).
    std::fs::copy(
        model.join("model-00001-of-00007.safetensors"),
        tmp.path().join("outside.safetensors"),
    )
    .unwrap();
    for escape in ["../outside.safetensors", "/etc/hostname"] {
        let mut bad = index.clone();
        bad["weight_map"][&first] = escape.into();
        std::fs::write(&index_path, bad.to_string()).unwrap();
        let err = convert_fails(&model, &[]);
        assert!(
            err.contains(escape) && err.contains("not a file name inside"),
            "{escape}: {err}"
        );
    }
    // An empty weight map names the first tensor it lacks instead of writing an empty model.
    let mut empty = index.clone();
    empty["weight_map"] = serde_json::json!({});
    std::fs::write(&index_path, empty.to_string()).unwrap();
    let err = convert_fails(&model, &[]);
    assert!(err.contains("model.embed_tokens.weight"), "{err}");
}

#[test]
fn a_huge_context_length_costs_nothing_until_used() {
    let tmp = tempfile::tempdir().unwrap();
    // 2^40 positions of rotary tables would be terabytes: they are sized by the sequence.
    let model = with_config(tmp.path(), "llama-tiny", "long", |c| {
        c.insert("max_position_embeddings".into(), (1u64 << 40).into());
    });
    let reference = fixture("llama-tiny").join("reference.safetensors");
    let out = tmp.path().join("logits.safetensors");
    microllm()
        .args(["logits", "--compute", "f32", "--model"])
        .arg(&model)
        .arg("--tokens")
        .arg(&reference)
        .arg("--out")
        .arg(&out)
        .assert()
        .success();
    let (_, ours) = common::read_f32(&out, "logits");
    let (_, want) = common::read_f32(&reference, "logits");
    assert!(common::max_abs_diff(&ours, &want) < 1e-3);
}

#[test]
fn non_finite_and_out_of_range_weights_name_the_tensor() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let down = "model.layers.1.mlp.down_proj.weight";
    let set = |dir: &str, value: f32| {
        let model = with_config(t, "llama-tiny", dir, |_| {});
        with_tensors(&model, |ts| {
            let (_, _, v) = ts.iter_mut().find(|(n, _, _)| n == down).unwrap();
            v[1] = value;
        });
        model
    };
    let nan = set("nan", f32::NAN);
    let reference = fixture("llama-tiny").join("reference.safetensors");
    let out = t.join("never");
    let err = fails(&[
        "logits".as_ref(),
        "--model".as_ref(),
        nan.as_os_str(),
        "--tokens".as_ref(),
        reference.as_os_str(),
        "--out".as_ref(),
        out.as_os_str(),
    ]);
    assert!(err.contains(down) && err.contains("NaN"), "{err}");
    assert!(!out.exists());
    let err = fails(&[
        "quantize".as_ref(),
        "--method".as_ref(),
        "rtn".as_ref(),
        "--model".as_ref(),
        nan.as_os_str(),
        "--out".as_ref(),
        out.as_os_str(),
    ]);
    assert!(err.contains(down) && err.contains("not finite"), "{err}");

    // 1e6 is finite but beyond f16: as f16 values, and as the f16 scale of a 4-bit group.
    let big = set("big", 1e6);
    let err = convert_fails(&big, &["--dtype", "f16"]);
    assert!(
        err.contains(down) && err.contains("beyond the range of F16"),
        "{err}"
    );
    let err = fails(&[
        "quantize".as_ref(),
        "--method".as_ref(),
        "rtn".as_ref(),
        "--bits".as_ref(),
        "4".as_ref(),
        "--model".as_ref(),
        big.as_os_str(),
        "--out".as_ref(),
        out.as_os_str(),
    ]);
    assert!(err.contains(down) && err.contains("f16 range"), "{err}");
    assert!(!out.exists());
}

/// Byte position of the tensor info of `name` (its length prefix) in a GGUF header.
fn tensor_info(bytes: &[u8], name: &str) -> usize {
    let mut key = (name.len() as u64).to_le_bytes().to_vec();
    key.extend_from_slice(name.as_bytes());
    bytes
        .windows(key.len())
        .position(|w| w == key)
        .unwrap_or_else(|| panic!("no tensor info for {name}"))
}

/// Byte position of the type field (u32, followed by the u64 offset) of tensor `name`'s info:
/// after its name, dimension count and dimensions.
fn type_field(bytes: &[u8], name: &str) -> usize {
    let at = tensor_info(bytes, name) + 8 + name.len();
    let n_dims = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
    at + 4 + 8 * n_dims
}

#[test]
fn gguf_tensor_layout_is_checked() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("model.gguf");
    let bytes = common::fixture_gguf(&file);
    let inspect_fails = || fails(&["inspect".as_ref(), "--model".as_ref(), file.as_os_str()]);

    // The type of a 2-D tensor changed from F32 to F16: its data no longer ends where the
    // next tensor starts.
    let ty = type_field(&bytes, "blk.0.ffn_down.weight");
    let mut changed = bytes.clone();
    assert_eq!(changed[ty..ty + 4], 0u32.to_le_bytes());
    changed[ty..ty + 4].copy_from_slice(&1u32.to_le_bytes());
    std::fs::write(&file, &changed).unwrap();
    let err = inspect_fails();
    assert!(
        err.contains("offset") && err.contains("model.gguf"),
        "{err}"
    );

    // A tensor listed twice (a name overwritten with another of the same length).
    let mut doubled = bytes.clone();
    let at = tensor_info(&doubled, "blk.1.ffn_up.weight") + 8;
    doubled[at..at + "blk.0".len()].copy_from_slice(b"blk.0");
    std::fs::write(&file, &doubled).unwrap();
    let err = inspect_fails();
    assert!(
        err.contains("blk.0.ffn_up.weight") && err.contains("twice"),
        "{err}"
    );

    // A data offset moved by 32 bytes (still aligned): overlapping data.
    let mut moved = bytes.clone();
    let name = "blk.2.attn_q.weight";
    let off = type_field(&moved, name) + 4;
    let offset = u64::from_le_bytes(moved[off..off + 8].try_into().unwrap());
    moved[off..off + 8].copy_from_slice(&(offset - 32).to_le_bytes());
    std::fs::write(&file, &moved).unwrap();
    let err = inspect_fails();
    assert!(err.contains(name) && err.contains("offset"), "{err}");

    // A version this reader does not know is named, not echoed as raw bytes.
    let mut old = bytes.clone();
    old[4..8].copy_from_slice(&1u32.to_le_bytes());
    std::fs::write(&file, &old).unwrap();
    let err = inspect_fails();
    assert!(err.contains("GGUF version 1 is not supported"), "{err}");
    assert!(!err.contains('\0'), "{err:?}");

    // A tensor type no reader knows: candle's error, without the backtrace candle attaches
    // when RUST_BACKTRACE is set.
    let mut unknown = bytes.clone();
    let ty = type_field(&unknown, "blk.0.ffn_up.weight");
    unknown[ty..ty + 4].copy_from_slice(&99u32.to_le_bytes());
    std::fs::write(&file, &unknown).unwrap();
    let out = microllm()
        .env("RUST_BACKTRACE", "1")
        .args(["inspect", "--model"])
        .arg(&file)
        .assert()
        .failure()
        .code(1);
    let err = String::from_utf8_lossy(&out.get_output().stderr).to_string();
    assert!(err.contains("model.gguf"), "{err}");
    assert!(
        !err.contains("backtrace") && !err.contains(" at /"),
        "{err}"
    );
}
