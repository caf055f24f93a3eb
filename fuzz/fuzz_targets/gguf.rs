//! GGUF files: header, metadata, tensor infos, configuration and tokenizer rebuilt from the
//! metadata, then every tensor loaded.
#![no_main]

mod common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(ckpt) = microllm_io::gguf::open_bytes(std::path::Path::new("fuzz.gguf"), data) {
        common::touch_tensors(&ckpt);
    }
});
