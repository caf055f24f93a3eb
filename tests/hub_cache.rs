//! Hub repo ids resolve from the local Hugging Face cache without the network
//! (`HF_HUB_OFFLINE=1`), and a repo missing from the cache is an error naming it.

mod common;

use common::{copy_dir, fixture, microllm};

/// Lays out `fixture` as the hub cache does: `models--OWNER--NAME/refs/main` holds a commit
/// id and `snapshots/COMMIT/` the files.
fn fake_cache(root: &std::path::Path, repo: &str, fixture_name: &str) {
    let dir = root.join(format!("models--{}", repo.replace('/', "--")));
    let commit = "0123456789abcdef0123456789abcdef01234567";
    std::fs::create_dir_all(dir.join("refs")).unwrap();
    std::fs::write(dir.join("refs/main"), commit).unwrap();
    copy_dir(&fixture(fixture_name), &dir.join("snapshots").join(commit));
}

#[test]
fn repo_id_opens_from_the_cache_offline() {
    let cache = tempfile::tempdir().unwrap();
    fake_cache(cache.path(), "tiny-org/llama-tiny", "llama-tiny-sharded");
    let out = microllm()
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_HUB_CACHE", cache.path())
        .args(["inspect", "--model", "tiny-org/llama-tiny"])
        .assert()
        .success();
    let stdout = String::from_utf8_lossy(&out.get_output().stdout).to_string();
    assert!(stdout.contains("family       llama"), "{stdout}");
    assert!(stdout.contains("154048"), "{stdout}");
}

#[test]
fn repo_missing_from_the_cache_is_named() {
    let cache = tempfile::tempdir().unwrap();
    let out = microllm()
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_HUB_CACHE", cache.path())
        .args(["inspect", "--model", "nobody/no-such-model"])
        .assert()
        .failure()
        .code(1);
    let stderr = String::from_utf8_lossy(&out.get_output().stderr).to_string();
    assert!(stderr.contains("nobody/no-such-model"), "{stderr}");
    assert!(stderr.contains("HF_HUB_OFFLINE"), "{stderr}");
}
