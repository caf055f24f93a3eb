//! Hugging Face hub repo ids -> local files, through `hf-hub`.
//!
//! The local cache is always consulted first, so a model fetched once works offline. The
//! documented environment variables are honoured: `HF_HUB_OFFLINE=1` never touches the
//! network, `HF_HOME` / `HF_HUB_CACHE` move the cache, `HF_ENDPOINT` a mirror, `HF_TOKEN` (via
//! the token file) gated repos. Every failure names the repo.
//!
//! A spec is `owner/name` (a safetensors repo) or `owner/name:file.gguf` (one GGUF file in it).

use std::path::PathBuf;

use hf_hub::{Cache, Repo, RepoType, api::sync::ApiBuilder};
use microllm_core::{Error, Result};

use crate::hf::INDEX_FILE;

/// What a repo id resolved to on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolved {
    /// A snapshot directory holding config.json and weights.
    Dir(PathBuf),
    /// A single GGUF file.
    File(PathBuf),
}

/// Whether `spec` has the shape of a hub repo id (`owner/name` or `owner/name:file.gguf`).
pub fn looks_like_repo_id(spec: &str) -> bool {
    let repo = spec.split_once(':').map_or(spec, |(r, _)| r);
    let mut parts = repo.split('/');
    let ok = |s: Option<&str>| {
        s.is_some_and(|s| {
            !s.is_empty()
                && !s.starts_with('.')
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        })
    };
    ok(parts.next()) && ok(parts.next()) && parts.next().is_none()
}

/// Whether `HF_HUB_OFFLINE` asks for no network access.
pub fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE")
        .map(|v| {
            matches!(
                v.trim().to_ascii_lowercase().as_str(),
                "1" | "true" | "yes" | "on"
            )
        })
        .unwrap_or(false)
}

fn cache() -> Cache {
    match std::env::var_os("HF_HUB_CACHE") {
        Some(dir) => Cache::new(dir.into()),
        None => Cache::from_env(),
    }
}

/// Fetches (or finds in the cache) what is needed to open `spec`.
pub fn resolve(spec: &str) -> Result<Resolved> {
    let (repo_id, gguf_file) = match spec.split_once(':') {
        Some((r, f)) => (r, Some(f)),
        None => (spec, None),
    };
    let fetcher = Fetcher::new(repo_id)?;
    if let Some(file) = gguf_file {
        return fetcher.get(file).map(Resolved::File);
    }
    let config = fetcher.get("config.json")?;
    match fetcher.get(INDEX_FILE) {
        Ok(index) => {
            let text = std::fs::read_to_string(&index).map_err(|e| Error::io(&index, e))?;
            let value: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| Error::format(&index, format!("not valid JSON: {e}")))?;
            let mut shards: Vec<&str> = value
                .get("weight_map")
                .and_then(|m| m.as_object())
                .map(|m| m.values().filter_map(|v| v.as_str()).collect())
                .unwrap_or_default();
            shards.sort_unstable();
            shards.dedup();
            for shard in shards {
                fetcher.get(shard)?;
            }
        }
        Err(_) => {
            fetcher.get("model.safetensors")?;
        }
    }
    for optional in [
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    ] {
        let _ = fetcher.get(optional);
    }
    let dir = config
        .parent()
        .map(PathBuf::from)
        .ok_or_else(|| Error::Source {
            spec: spec.into(),
            msg: "cache path has no parent directory".into(),
        })?;
    Ok(Resolved::Dir(dir))
}

/// Gets files of one repo: cache first, then (unless offline) the network.
struct Fetcher {
    repo_id: String,
    cache: Cache,
    api: Option<hf_hub::api::sync::ApiRepo>,
}

impl Fetcher {
    fn new(repo_id: &str) -> Result<Self> {
        let cache = cache();
        let api = if offline() {
            None
        } else {
            let api = ApiBuilder::from_cache(cache.clone())
                .with_progress(true)
                .build()
                .map_err(|e| Error::Source {
                    spec: repo_id.into(),
                    msg: format!("cannot set up the hub client: {e}"),
                })?;
            Some(api.repo(Repo::new(repo_id.to_string(), RepoType::Model)))
        };
        Ok(Self {
            repo_id: repo_id.to_string(),
            cache,
            api,
        })
    }

    fn get(&self, file: &str) -> Result<PathBuf> {
        let repo = Repo::new(self.repo_id.clone(), RepoType::Model);
        if let Some(path) = self.cache.repo(repo).get(file) {
            return Ok(path);
        }
        match &self.api {
            None => Err(Error::Source {
                spec: self.repo_id.clone(),
                msg: format!(
                    "`{file}` is not in the local hub cache ({}) and HF_HUB_OFFLINE is set",
                    self.cache.path().display()
                ),
            }),
            Some(api) => api.get(file).map_err(|e| Error::Source {
                spec: self.repo_id.clone(),
                msg: format!("cannot fetch `{file}` from the hub: {e}"),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_id_shapes() {
        assert!(looks_like_repo_id("HuggingFaceTB/SmolLM2-135M"));
        assert!(looks_like_repo_id("owner/name:model-Q4_0.gguf"));
        assert!(!looks_like_repo_id("model.gguf"));
        assert!(!looks_like_repo_id("./a/b"));
        assert!(!looks_like_repo_id("a/b/c"));
    }

    #[test]
    fn offline_miss_names_the_repo() {
        // SAFETY: this test is the only one in this binary touching these variables.
        unsafe {
            std::env::set_var("HF_HUB_OFFLINE", "1");
            std::env::set_var(
                "HF_HUB_CACHE",
                std::env::temp_dir().join("microllm-empty-cache"),
            );
        }
        let err = resolve("someone/missing-model").unwrap_err().to_string();
        assert!(err.contains("someone/missing-model"), "{err}");
        assert!(err.contains("HF_HUB_OFFLINE"), "{err}");
    }
}
