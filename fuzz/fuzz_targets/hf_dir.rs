//! Hugging Face directories: config.json, model.safetensors.index.json (when present) and a
//! safetensors file, opened as a checkpoint, then every tensor loaded.
#![no_main]

mod common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let parts = common::split(data, 3);
    let dir = tempfile::tempdir().expect("a temporary directory");
    let write = |name: &str, bytes: &[u8]| std::fs::write(dir.path().join(name), bytes).unwrap();
    write("config.json", parts[0]);
    if !parts[1].is_empty() {
        write("model.safetensors.index.json", parts[1]);
        write("model-00001-of-00001.safetensors", parts[2]);
    } else {
        write("model.safetensors", parts[2]);
    }
    if let Ok(ckpt) = microllm_io::open(&dir.path().to_string_lossy()) {
        common::touch_tensors(&ckpt);
    }
});
