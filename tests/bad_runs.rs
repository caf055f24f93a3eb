//! Runs that cannot succeed are refused before any work (`recipe validate` included), leave
//! nothing behind when they fail, and a damaged work directory is reported when a run resumes,
//! not when it reaches the damage. Every file written follows the umask.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::{calib_ids, fixture, microllm, random_llama, recipe, write};

/// Runs `microllm args...`, expects exit status 1, returns stderr.
fn fails(cmd: &mut assert_cmd::Command) -> String {
    let out = cmd.assert().failure().code(1);
    String::from_utf8_lossy(&out.get_output().stderr).to_string()
}

/// The mode a new file gets in `dir` under this process's umask.
fn new_file_mode(dir: &Path) -> u32 {
    let probe = dir.join("mode-probe");
    std::fs::write(&probe, b"").unwrap();
    let mode = std::fs::metadata(&probe).unwrap().permissions().mode() & 0o777;
    std::fs::remove_file(&probe).unwrap();
    mode
}

#[test]
fn recipes_that_would_fail_at_run_time_fail_validation() {
    let tmp = tempfile::tempdir().unwrap();
    let model = fixture("llama-tiny");
    let ids = calib_ids(tmp.path(), 8, 32, 384);
    let out = tmp.path().join("out.gguf");
    let good = recipe(
        &model,
        &ids,
        "  - quantize: {method: gptq, bits: 4}\n  - eval: {}\n",
        &format!("  path: {}\n", out.display()),
    );
    let validate = |name: &str, text: &str| {
        let path = write(tmp.path(), name, text);
        microllm().args(["recipe", "validate"]).arg(path).assert()
    };
    validate("good.yaml", &good).success();
    let missing = tmp.path().join("missing.safetensors");
    for (edit, key, needle) in [
        (
            good.replacen(
                &format!("data: {}", ids.display()),
                &format!("data: {}", missing.display()),
                1,
            ),
            "calibration.data",
            "does not exist",
        ),
        (
            good.replace("seqlen: 32", "seqlen: 0"),
            "calibration.seqlen",
            "at least 2",
        ),
        (
            good.replace("ctx: 32", "ctx: 100000"),
            "evaluation.ctx",
            "beyond the model's context of 256",
        ),
        (
            good.replace("windows: 4", "windows: 0"),
            "evaluation.windows",
            "at least 1",
        ),
        (
            good.replace(&format!("path: {}", out.display()), "path: ''"),
            "output.path",
            "empty",
        ),
        (
            good.replace("bits: 4}", "bits: 4, damp: 0}"),
            "damp",
            "not a positive number",
        ),
    ] {
        let assert = validate("bad.yaml", &edit).failure().code(1);
        let err = String::from_utf8_lossy(&assert.get_output().stderr).to_string();
        assert!(err.contains(key) && err.contains(needle), "{key}: {err}");
        assert!(!err.contains("GptqOptions"), "{err}");
    }
    assert!(!out.exists());
}

#[test]
fn outputs_written_after_the_work_are_checked_before_it() {
    let tmp = tempfile::tempdir().unwrap();
    let model = fixture("llama-tiny");
    let ids = calib_ids(tmp.path(), 8, 32, 384);
    let out = tmp.path().join("out.gguf");
    let text = recipe(
        &model,
        &ids,
        "  - quantize: {method: rtn, bits: 4}\n  - eval: {}\n",
        &format!("  path: {}\n", out.display()),
    );
    let path = write(tmp.path(), "r.yaml", &text);
    // A JUnit file under a regular file can never be written.
    let blocker = write(tmp.path(), "a-file", "x");
    let err = fails(
        microllm()
            .arg("run")
            .arg(&path)
            .arg("--junit")
            .arg(blocker.join("junit.xml")),
    );
    assert!(err.contains("--junit") && err.contains("a-file"), "{err}");
    // An evaluation window of 0 tokens is refused at planning, before the model is written.
    let zero = write(tmp.path(), "z.yaml", &text.replace("ctx: 32", "ctx: 0"));
    let err = fails(microllm().arg("run").arg(&zero));
    assert!(err.contains("evaluation.ctx"), "{err}");
    assert!(!out.exists());
    assert!(!tmp.path().join("out.gguf.microllm-work").exists());
}

#[test]
fn resume_checks_the_work_directory_first_and_files_follow_the_umask() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("random-llama");
    random_llama(&model);
    let calib = calib_ids(tmp.path(), 32, 256, 384);
    let out = tmp.path().join("out.gguf");
    let text = recipe(
        &model,
        &calib,
        "  - quantize: {bits: 4, group_size: 64}\n",
        &format!("  path: {}\n", out.display()),
    )
    .replace("samples: 8\n  seqlen: 32", "samples: 32\n  seqlen: 256");
    let r = write(tmp.path(), "r.yaml", &text);
    let work = tmp.path().join("out.gguf.microllm-work");
    common::run_and_kill_when(&r, &work.join("block-00001.safetensors"));
    assert!(!out.exists(), "killed before the output was written");

    let mode = new_file_mode(tmp.path());
    let block = work.join("block-00000.safetensors");
    let block_mode = std::fs::metadata(&block).unwrap().permissions().mode() & 0o777;
    assert_eq!(block_mode, mode, "work files get the umask's mode");

    let bytes = std::fs::read(&block).unwrap();
    std::fs::write(&block, &bytes[..bytes.len() - 100]).unwrap();
    let err = fails(microllm().arg("run").arg(&r).arg("--resume"));
    assert!(
        err.contains("block-00000.safetensors") && err.contains("damaged"),
        "{err}"
    );
    assert!(!err.contains("download"), "{err}");
    assert!(!out.exists());
}

#[test]
fn logit_store_shards_follow_the_umask() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let teacher = fixture("llama-tiny");
    microllm()
        .args([
            "distill",
            "logits",
            "--seqlen",
            "8",
            "--top-k",
            "4",
            "--teacher",
        ])
        .arg(&teacher)
        .arg("--data")
        .arg(teacher.join("reference.safetensors"))
        .arg("--out")
        .arg(&store)
        .assert()
        .success();
    let mode = new_file_mode(tmp.path());
    for entry in std::fs::read_dir(&store).unwrap() {
        let path = entry.unwrap().path();
        let m = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(m, mode, "{}", path.display());
    }
}
