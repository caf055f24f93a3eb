//! `microllm distill logits --shard I/N` as a cluster runs it: N separate processes at once
//! (a Kubernetes Indexed Job, a Slurm array; configs/distill/), each writing its part, then
//! `--merge`: the merged store holds exactly what one unsharded run writes.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::{calib_ids, fixture};
use microllm_distill::store::TeacherStore;

const SHARDS: usize = 3;

fn logits_args(data: &Path, out: &Path) -> Vec<String> {
    let teacher = fixture("llama-tiny");
    [
        "distill",
        "logits",
        "--teacher",
        teacher.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--seqlen",
        "16",
        "--top-k",
        "8",
        "--out",
        out.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

#[test]
fn shards_run_as_separate_processes_merge_into_the_unsharded_store() {
    let tmp = tempfile::tempdir().unwrap();
    // 10 windows: shards of 3, 3 and 4 windows.
    let data = calib_ids(tmp.path(), 10, 16, 384);
    let bin = env!("CARGO_BIN_EXE_microllm");

    let parts: Vec<PathBuf> = (1..=SHARDS)
        .map(|i| tmp.path().join(format!("part-{i}")))
        .collect();
    let running: Vec<_> = parts
        .iter()
        .enumerate()
        .map(|(i, part)| {
            Command::new(bin)
                .args(logits_args(&data, part))
                .args(["--shard", &format!("{}/{SHARDS}", i + 1)])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for (i, child) in running.into_iter().enumerate() {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "shard {} failed: {}",
            i + 1,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    let merged = tmp.path().join("merged");
    let mut merge = Command::new(bin);
    merge.args(["distill", "logits", "--merge"]);
    // In another order than computed: the manifest orders the shards.
    merge.args(parts.iter().rev());
    let out = merge
        .args(["--out", merged.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "merge failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let whole = tmp.path().join("whole");
    let out = Command::new(bin)
        .args(logits_args(&data, &whole))
        .output()
        .unwrap();
    assert!(out.status.success());

    let (merged, whole) = (
        TeacherStore::open(&merged).unwrap(),
        TeacherStore::open(&whole).unwrap(),
    );
    assert_eq!(merged.manifest().shards.len(), SHARDS);
    assert_eq!(merged.windows(), 10);
    assert_eq!(merged.windows(), whole.windows());
    for w in 0..whole.windows() {
        assert_eq!(
            merged.window(w).unwrap(),
            whole.window(w).unwrap(),
            "window {w}"
        );
    }
}
