//! Teacher-logit stores: the manifest and one shard, opened and every window read.
#![no_main]

mod common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let parts = common::split(data, 2);
    let dir = tempfile::tempdir().expect("a temporary directory");
    std::fs::write(dir.path().join("manifest.json"), parts[0]).unwrap();
    // The shard under the name the manifest gives, when it gives one that is a plain name.
    let name = std::str::from_utf8(parts[0])
        .ok()
        .and_then(|t| t.split("\"file\":").nth(1))
        .and_then(|t| t.split('"').nth(1))
        .filter(|n| microllm_io::is_plain_file_name(n))
        .unwrap_or("shard-00000.safetensors");
    // A name the file system refuses (a NUL byte) is a finding of this harness, not of the
    // reader: the store is then opened without its shard.
    let _ = std::fs::write(dir.path().join(name), parts[1]);
    if let Ok(store) = microllm_distill::store::TeacherStore::open(dir.path()) {
        for w in 0..store.windows().min(64) {
            let _ = store.window(w);
        }
    }
});
