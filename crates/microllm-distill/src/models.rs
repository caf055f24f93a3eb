//! Short names for well-known models.
//!
//! `microllm distill --teacher mistral-7b` should not need the hub id spelled out. A spec is
//! looked up here only when it is not an existing local path; anything else passes through
//! unchanged (a directory, a `.gguf` file, a hub id).

use std::path::Path;

/// `(short name, hub repo id)`, in the order `--help` lists them.
pub const SHORT_NAMES: [(&str, &str); 12] = [
    ("mistral-7b", "mistralai/Mistral-7B-v0.1"),
    ("llama-2-7b", "meta-llama/Llama-2-7b-hf"),
    ("llama-2-13b", "meta-llama/Llama-2-13b-hf"),
    (
        "tinyllama",
        "TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T",
    ),
    ("tinyllama-chat", "TinyLlama/TinyLlama-1.1B-Chat-v1.0"),
    ("phi-2", "microsoft/phi-2"),
    ("qwen2.5-0.5b", "Qwen/Qwen2.5-0.5B"),
    ("qwen2.5-1.5b", "Qwen/Qwen2.5-1.5B"),
    ("smollm2-135m", "HuggingFaceTB/SmolLM2-135M"),
    ("smollm2-360m", "HuggingFaceTB/SmolLM2-360M"),
    ("smollm2-1.7b", "HuggingFaceTB/SmolLM2-1.7B"),
    (
        "smollm2-135m-instruct",
        "HuggingFaceTB/SmolLM2-135M-Instruct",
    ),
];

/// The model source a user's spec means: an existing path as given, a short name's hub id,
/// or the spec itself.
pub fn resolve_model_spec(spec: &str) -> String {
    if Path::new(spec).exists() {
        return spec.to_string();
    }
    let lower = spec.to_ascii_lowercase();
    SHORT_NAMES
        .iter()
        .find(|(short, _)| *short == lower)
        .map_or_else(|| spec.to_string(), |(_, id)| (*id).to_string())
}

/// `name = repo id` lines for help texts.
pub fn short_names_help() -> String {
    SHORT_NAMES
        .iter()
        .map(|(s, id)| format!("{s} = {id}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_map_to_hub_ids_and_paths_win() {
        assert_eq!(
            resolve_model_spec("mistral-7b"),
            "mistralai/Mistral-7B-v0.1"
        );
        assert_eq!(resolve_model_spec("Phi-2"), "microsoft/phi-2");
        assert_eq!(resolve_model_spec("owner/model"), "owner/model");
        let dir = tempfile::tempdir().unwrap();
        let local = dir.path().join("tinyllama");
        std::fs::create_dir(&local).unwrap();
        let spec = local.to_str().unwrap();
        assert_eq!(
            resolve_model_spec(spec),
            spec,
            "an existing path is never renamed"
        );
    }
}
