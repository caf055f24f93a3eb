//! Reading and writing checkpoints.
//!
//! [`open`] turns what a user typed (a Hugging Face directory, a `.gguf` file or a hub repo id)
//! into a [`Checkpoint`]: the resolved [`ModelConfig`](microllm_core::ModelConfig), a lazy
//! [`TensorSource`](microllm_core::TensorSource) and the tokenizer. Nothing is loaded whole:
//! safetensors shards and GGUF files are memory-mapped and tensors are materialised one at a
//! time, under their canonical Hugging Face names, as f32. Quantized directories (GPTQ,
//! compressed-tensors; [`quantized`]) are dequantized on load the same way.
//!
//! Writers (the [`write`](crate::write) module) produce files atomically: everything goes to a temporary path that is
//! renamed into place only when complete, so a failed run leaves nothing half-written.

// Libraries report through return values and `Progress`, never by printing: the binary
// owns the terminal (unit tests may print).
#![cfg_attr(not(test), deny(clippy::print_stdout, clippy::print_stderr))]

pub mod arrays;
pub mod calibration;
pub mod fused;
pub mod gguf;
pub mod hf;
pub mod hub;
mod mmap;
pub mod quantized;
pub mod spm;
mod tokenizer;
pub mod tokens;
pub mod write;

use std::path::{Path, PathBuf};

use microllm_core::{Error, ModelConfig, Result, TensorSource};

pub use tokenizer::{SpecialTokens, Tokenizer};

/// Whether `name`, a file name read from a checkpoint's or store's own metadata (a shard index,
/// a manifest), names a file directly inside that directory: not absolute, no `..`, no
/// subdirectory, no NUL byte. Such names are joined to the directory, so anything else could open files
/// elsewhere on the machine (`../../etc/passwd`, `/etc/hostname`).
pub fn is_plain_file_name(name: &str) -> bool {
    let mut parts = Path::new(name).components();
    !name.contains('\0')
        && matches!(
            (parts.next(), parts.next()),
            (Some(std::path::Component::Normal(_)), None)
        )
}

/// The on-disk format a checkpoint was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointFormat {
    /// A Hugging Face directory: config.json + safetensors (one file or shards + index).
    HfDir,
    /// A single GGUF file.
    Gguf,
    /// A Hugging Face directory holding a GPTQ checkpoint (v1 layout).
    Gptq,
    /// A Hugging Face directory holding a compressed-tensors (`pack-quantized`) checkpoint.
    CompressedTensors,
    /// A Hugging Face directory holding an AWQ checkpoint (AutoAWQ's GEMM layout).
    Awq,
    /// A Hugging Face directory holding a sparse compressed-tensors checkpoint
    /// (`sparse-bitmask` / `sparse-24-bitmask`).
    Sparse,
}

impl std::fmt::Display for CheckpointFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CheckpointFormat::HfDir => "Hugging Face safetensors directory",
            CheckpointFormat::Gguf => "GGUF",
            CheckpointFormat::Gptq => "GPTQ checkpoint (Hugging Face directory)",
            CheckpointFormat::Awq => "AWQ checkpoint (Hugging Face directory)",
            CheckpointFormat::CompressedTensors => {
                "compressed-tensors checkpoint (Hugging Face directory)"
            }
            CheckpointFormat::Sparse => {
                "sparse compressed-tensors checkpoint (Hugging Face directory)"
            }
        })
    }
}

/// An opened model: configuration, lazy tensors and tokenizer.
pub struct Checkpoint {
    /// Where it was read from (a directory or a `.gguf` file).
    pub path: PathBuf,
    pub format: CheckpointFormat,
    pub config: ModelConfig,
    pub tensors: Box<dyn TensorSource>,
    /// The tokenizer, when the checkpoint carries one.
    pub tokenizer: Option<Tokenizer>,
    /// The chat template (Jinja), when the checkpoint carries one.
    pub chat_template: Option<String>,
    /// The licence identifier (`apache-2.0`, `llama2`), when the model card or GGUF names one.
    pub license: Option<String>,
}

impl std::fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpoint")
            .field("path", &self.path)
            .field("format", &self.format)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Checkpoint {
    /// The tokenizer, or an error saying this checkpoint has none.
    pub fn require_tokenizer(&self) -> Result<&Tokenizer> {
        self.tokenizer.as_ref().ok_or_else(|| Error::Tokenizer {
            origin: self.path.display().to_string(),
            msg: "this checkpoint carries no tokenizer (no tokenizer.json / no tokenizer metadata)"
                .into(),
        })
    }

    /// The model's name, for `general.name`: a directory's name (`TinyLlama-1.1B`), a file's
    /// stem.
    pub fn name(&self) -> String {
        let name = if self.path.is_dir() {
            self.path.file_name()
        } else {
            self.path.file_stem()
        };
        name.map_or_else(|| "model".into(), |s| s.to_string_lossy().into_owned())
    }

    /// Total bytes of tensor data as stored.
    pub fn stored_bytes(&self) -> u64 {
        self.tensors.infos().iter().map(|t| t.stored_bytes).sum()
    }
}

/// Opens a model from a local directory, a `.gguf` file, or a hub repo id (`owner/name`).
///
/// Local paths win: a spec is treated as a hub id only when no such path exists and it looks
/// like `owner/name`.
///
/// Every checkpoint is checked against its configuration before it is handed out: the tensors
/// present must be exactly those the architecture calls for, each of its shape
/// ([`microllm_core::check_tensors`]).
pub fn open(spec: &str) -> Result<Checkpoint> {
    let ckpt = open_unchecked(spec)?;
    microllm_core::check_tensors(&ckpt.config, ckpt.tensors.as_ref())?;
    Ok(ckpt)
}

fn open_unchecked(spec: &str) -> Result<Checkpoint> {
    let path = Path::new(spec);
    if path.is_dir() {
        return hf::open_dir(path);
    }
    if path.is_file() {
        return open_file(path);
    }
    if hub::looks_like_repo_id(spec) {
        let local = hub::resolve(spec)?;
        return match local {
            hub::Resolved::Dir(dir) => hf::open_dir(&dir),
            hub::Resolved::File(file) => open_file(&file),
        };
    }
    Err(Error::Source {
        spec: spec.to_string(),
        msg: "no such file or directory, and not a hub repo id of the form owner/name".into(),
    })
}

fn open_file(path: &Path) -> Result<Checkpoint> {
    if gguf::has_gguf_magic(path)? {
        gguf::open(path)
    } else if path.file_name().is_some_and(|n| n == "config.json") {
        hf::open_dir(path.parent().unwrap_or(Path::new(".")))
    } else {
        Err(Error::format(
            path,
            "not a GGUF file (bad magic) and not a model directory",
        ))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_names_inside_the_directory_are_plain() {
        for ok in [
            "model-00001-of-00002.safetensors",
            "shard.safetensors",
            "..x",
        ] {
            assert!(super::is_plain_file_name(ok), "{ok}");
        }
        for bad in [
            "",
            "..",
            ".",
            "../x",
            "/etc/hostname",
            "a/b",
            "x\0y",
            "./x/../../y",
        ] {
            assert!(!super::is_plain_file_name(bad), "{bad:?}");
        }
    }
}
