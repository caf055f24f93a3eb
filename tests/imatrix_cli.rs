//! Importance-matrix files: the matrix `quantize --save-imatrix` writes (llama-imatrix's GGUF
//! layout), read back with `--imatrix`, gives the same GGUF bytes as measuring it again; it
//! changes the k-quant blocks (so it is applied); and a matrix made for another model is
//! refused before any work, naming the entry. llama.cpp's own files are checked against
//! llama-quantize by scripts/interop/imatrix.sh.

mod common;

use std::path::Path;

use common::{calib_ids, fixture, microllm, random_llama};

fn quantize(model: &Path, out: &Path, extra: &[&std::ffi::OsStr]) {
    microllm()
        .args(["quantize", "--gguf-type", "q4_k_m", "--model"])
        .arg(model)
        .arg("--out")
        .arg(out)
        .args(extra)
        .assert()
        .success();
}

#[test]
fn a_saved_importance_matrix_reads_back_to_the_same_model() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    // Rows of 1024 (the down projections) fit Q4_K / Q6_K blocks, which take the matrix.
    let model = t.join("random-llama");
    random_llama(&model);
    let calib = calib_ids(t, 8, 128, 384);
    let imatrix = t.join("imatrix.gguf");
    let measured = t.join("measured.gguf");
    quantize(
        &model,
        &measured,
        &[
            "--calib".as_ref(),
            calib.as_os_str(),
            "--samples".as_ref(),
            "8".as_ref(),
            "--seqlen".as_ref(),
            "128".as_ref(),
            "--save-imatrix".as_ref(),
            imatrix.as_os_str(),
        ],
    );
    let bytes = std::fs::read(&imatrix).unwrap();
    assert!(bytes.starts_with(b"GGUF"));
    let needle = b"blk.0.ffn_down.weight.in_sum2";
    assert!(bytes.windows(needle.len()).any(|w| w == needle));

    let read = t.join("read.gguf");
    quantize(&model, &read, &["--imatrix".as_ref(), imatrix.as_os_str()]);
    assert!(
        std::fs::read(&measured).unwrap() == std::fs::read(&read).unwrap(),
        "the read-back matrix gives other bytes than the measured one"
    );
    let plain = t.join("plain.gguf");
    quantize(&model, &plain, &[]);
    assert!(
        std::fs::read(&plain).unwrap() != std::fs::read(&read).unwrap(),
        "the importance matrix changed nothing"
    );

    // The same matrix against a model of other shapes: refused up front, entry named.
    let out = t.join("never.gguf");
    let assert = microllm()
        .args(["quantize", "--gguf-type", "q4_k_m", "--model"])
        .arg(fixture("llama-tiny"))
        .arg("--imatrix")
        .arg(&imatrix)
        .arg("--out")
        .arg(&out)
        .assert()
        .failure()
        .code(1);
    let err = String::from_utf8_lossy(&assert.get_output().stderr).to_string();
    assert!(
        err.contains("--imatrix") && err.contains("imatrix.gguf") && err.contains("down_proj"),
        "{err}"
    );
    assert!(!out.exists());
}
