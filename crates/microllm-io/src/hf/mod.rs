//! Hugging Face model directories: `config.json`, safetensors (one file, or shards listed by
//! `model.safetensors.index.json`), and the tokenizer files (`tokenizer_files`). A
//! `quantization_config` in config.json (GPTQ, compressed-tensors) makes the packed linears
//! appear dequantized under their usual names ([`crate::quantized`]).

mod config;
mod safetensors;
mod tokenizer_files;

use std::path::{Path, PathBuf};

use microllm_core::{Error, Result, TensorSource};
use serde_json::Value;

pub use self::config::{parse_config, read_config};
pub use self::safetensors::SafetensorsSource;
use crate::fused::SplitFused;
use crate::quantized::{QuantMethod, QuantizedDirSource, SparseDirSource, detect_sparse};
use crate::{Checkpoint, CheckpointFormat};

/// The index file that lists the shards of a sharded checkpoint.
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// Opens a Hugging Face model directory.
pub fn open_dir(dir: &Path) -> Result<Checkpoint> {
    let config_path = dir.join("config.json");
    if !config_path.is_file() {
        return Err(Error::Source {
            spec: dir.display().to_string(),
            msg: "no config.json in this directory".into(),
        });
    }
    let text = std::fs::read_to_string(&config_path).map_err(|e| Error::io(&config_path, e))?;
    let value: Value = serde_json::from_str(&text)
        .map_err(|e| Error::format(&config_path, format!("not valid JSON: {e}")))?;
    let sparse = detect_sparse(&value);
    let method = match sparse {
        Some(_) => None,
        None => QuantMethod::detect(&value, &config_path)?,
    };
    let mut config = parse_config(&value, &config_path)?;
    let files = weight_files(dir)?;
    let (format, tensors): (CheckpointFormat, Box<dyn TensorSource>) = match method {
        None if sparse.is_some() => {
            let tensors = SparseDirSource::open(dir, &files)?;
            (CheckpointFormat::Sparse, Box::new(tensors))
        }
        None => {
            let tensors = SafetensorsSource::open(dir, &files)?;
            check_index(dir, |name| tensors.file_of(name).map(Path::to_path_buf))?;
            (CheckpointFormat::HfDir, Box::new(tensors))
        }
        Some(method) => {
            let tensors = QuantizedDirSource::open(dir, &files, method, &value, &config_path)?;
            config.activation_quant = tensors.activation_quant();
            let raw = SafetensorsSource::open(dir, &files)?;
            check_index(dir, |name| raw.file_of(name).map(Path::to_path_buf))?;
            let format = match method {
                QuantMethod::Gptq => CheckpointFormat::Gptq,
                QuantMethod::CompressedTensors => CheckpointFormat::CompressedTensors,
                QuantMethod::Awq => CheckpointFormat::Awq,
            };
            (format, Box::new(tensors))
        }
    };
    let tensors: Box<dyn TensorSource> = if config.family.fused_linears().is_empty() {
        tensors
    } else {
        Box::new(SplitFused::new(tensors, &config)?)
    };

    let tokenizer = tokenizer_files::load_tokenizer(dir, &config)?;
    Ok(Checkpoint {
        path: dir.to_path_buf(),
        format,
        config,
        tensors,
        tokenizer,
        chat_template: tokenizer_files::chat_template(dir)?,
        license: tokenizer_files::license(dir),
    })
}

/// The packed-linear view of a GPTQ / compressed-tensors directory (codes, not only
/// dequantized values), or `None` when its config.json declares no quantization.
pub fn open_quantized(dir: &Path) -> Result<Option<QuantizedDirSource>> {
    let config_path = dir.join("config.json");
    let text = std::fs::read_to_string(&config_path).map_err(|e| Error::io(&config_path, e))?;
    let value: Value = serde_json::from_str(&text)
        .map_err(|e| Error::format(&config_path, format!("not valid JSON: {e}")))?;
    let Some(method) = QuantMethod::detect(&value, &config_path)? else {
        return Ok(None);
    };
    let files = weight_files(dir)?;
    QuantizedDirSource::open(dir, &files, method, &value, &config_path).map(Some)
}

/// The safetensors files of a directory: the shards named by the index, or `*.safetensors`.
fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join(INDEX_FILE);
    if index.is_file() {
        let map = read_weight_map(&index)?;
        let mut files: Vec<String> = map.into_iter().map(|(_, f)| f).collect();
        files.sort();
        files.dedup();
        return files
            .into_iter()
            .map(|f| {
                let p = dir.join(&f);
                if p.is_file() {
                    Ok(p)
                } else {
                    Err(Error::format(
                        &index,
                        format!("weight_map names shard `{f}`, which does not exist"),
                    ))
                }
            })
            .collect();
    }
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    // No index and no model.safetensors: the `model*.safetensors` files, else every
    // `*.safetensors` (other files, such as adapters or reference outputs, are not weights).
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    let model_files: Vec<PathBuf> = files
        .iter()
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("model"))
        })
        .cloned()
        .collect();
    if !model_files.is_empty() {
        return Ok(model_files);
    }
    if files.is_empty() {
        return Err(Error::Source {
            spec: dir.display().to_string(),
            msg: "no *.safetensors files and no model.safetensors.index.json".into(),
        });
    }
    Ok(files)
}

/// `(tensor, file)` pairs of an index's `weight_map`.
fn read_weight_map(index: &Path) -> Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string(index).map_err(|e| Error::io(index, e))?;
    let value: Value = serde_json::from_str(&text)
        .map_err(|e| Error::format(index, format!("not valid JSON: {e}")))?;
    let map = value
        .get("weight_map")
        .and_then(Value::as_object)
        .ok_or_else(|| Error::config(index, "weight_map", "missing or not an object"))?;
    map.iter()
        .map(|(name, file)| {
            let key = || format!("weight_map.{name}");
            match file.as_str() {
                Some(f) if crate::is_plain_file_name(f) => Ok((name.clone(), f.to_string())),
                Some(f) => Err(Error::config(
                    index,
                    key(),
                    format!("`{f}` is not a file name inside the model directory"),
                )),
                None => Err(Error::config(index, key(), "expected a file name")),
            }
        })
        .collect()
}

/// Every tensor the index promises is in the shard it names.
fn check_index(dir: &Path, file_of: impl Fn(&str) -> Option<PathBuf>) -> Result<()> {
    let index = dir.join(INDEX_FILE);
    if !index.is_file() {
        return Ok(());
    }
    for (name, file) in read_weight_map(&index)? {
        let found = file_of(&name);
        if found.as_deref().and_then(Path::file_name) != Some(std::ffi::OsStr::new(&file)) {
            return Err(Error::format(
                &index,
                format!("weight_map says tensor `{name}` is in `{file}`, but it is not there"),
            ));
        }
    }
    Ok(())
}
