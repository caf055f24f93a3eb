//! Lazy access to one or many safetensors files.
//!
//! Each file is memory-mapped and only its header is parsed at open time; a tensor's bytes are
//! touched when it is loaded, converted to f32, and dropped by the caller when done. This is
//! what lets a model larger than RAM be streamed block by block.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use memmap2::Mmap;
use microllm_core::{Error, Result, TensorInfo, TensorSource};
use safetensors::{Dtype, SafeTensors};

/// One memory-mapped safetensors file.
struct Shard {
    path: PathBuf,
    map: Mmap,
}

/// Where one tensor lives.
struct Entry {
    shard: usize,
    dtype: Dtype,
    shape: Vec<usize>,
    /// Byte range inside the shard's mapping (absolute, header included).
    start: usize,
    end: usize,
}

/// The tensors of one or more safetensors files, read one at a time.
pub struct SafetensorsSource {
    origin: String,
    shards: Vec<Shard>,
    entries: HashMap<String, Entry>,
    order: Vec<String>,
}

impl SafetensorsSource {
    /// Maps `files` and indexes their headers. `origin` names the checkpoint in errors.
    pub fn open(origin: &Path, files: &[PathBuf]) -> Result<Self> {
        let mut shards = Vec::with_capacity(files.len());
        let mut entries = HashMap::new();
        let mut order = Vec::new();
        for (idx, path) in files.iter().enumerate() {
            let file = File::open(path).map_err(|e| Error::io(path, e))?;
            // SAFETY: the mapping is read-only; a checkpoint modified underneath a running
            // process is outside what any reader can defend against.
            let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
            let parsed = SafeTensors::deserialize(&map)
                .map_err(|e| Error::format(path, format!("invalid safetensors file: {e}")))?;
            let (header_len, _) = SafeTensors::read_metadata(&map)
                .map_err(|e| Error::format(path, format!("invalid safetensors header: {e}")))?;
            let data_start = 8 + header_len;
            let mut names: Vec<_> = parsed.names().into_iter().map(str::to_string).collect();
            names.sort();
            for name in names {
                let view = parsed
                    .tensor(&name)
                    .map_err(|e| Error::format(path, format!("tensor `{name}`: {e}")))?;
                let start = view.data().as_ptr() as usize - map.as_ptr() as usize;
                debug_assert!(start >= data_start);
                let entry = Entry {
                    shard: idx,
                    dtype: view.dtype(),
                    shape: view.shape().to_vec(),
                    start,
                    end: start + view.data().len(),
                };
                if entries.insert(name.clone(), entry).is_some() {
                    return Err(Error::format(
                        path,
                        format!("tensor `{name}` appears in more than one file"),
                    ));
                }
                order.push(name);
            }
            shards.push(Shard {
                path: path.clone(),
                map,
            });
        }
        Ok(Self {
            origin: origin.display().to_string(),
            shards,
            entries,
            order,
        })
    }

    /// Path of the file holding `name`.
    pub fn file_of(&self, name: &str) -> Option<&Path> {
        self.entries
            .get(name)
            .map(|e| self.shards[e.shard].path.as_path())
    }

    /// A tensor's stored bytes, dtype and shape, borrowed from the mapping (for packed
    /// integer tensors, which [`TensorSource::load`] does not decode).
    pub fn raw(&self, name: &str) -> Option<crate::quantized::RawTensor<'_>> {
        let e = self.entries.get(name)?;
        Some(crate::quantized::RawTensor {
            name: name.to_string(),
            dtype: e.dtype,
            shape: e.shape.clone(),
            data: std::borrow::Cow::Borrowed(&self.shards[e.shard].map[e.start..e.end]),
        })
    }

    fn entry_info(&self, name: &str, e: &Entry) -> TensorInfo {
        TensorInfo {
            name: name.to_string(),
            dtype: format!("{:?}", e.dtype),
            shape: e.shape.clone(),
            stored_bytes: (e.end - e.start) as u64,
        }
    }
}

impl TensorSource for SafetensorsSource {
    fn origin(&self) -> String {
        self.origin.clone()
    }

    fn infos(&self) -> Vec<TensorInfo> {
        self.order
            .iter()
            .map(|n| self.entry_info(n, &self.entries[n]))
            .collect()
    }

    fn info(&self, name: &str) -> Option<TensorInfo> {
        self.entries.get(name).map(|e| self.entry_info(name, e))
    }

    fn load(&self, name: &str) -> Result<Tensor> {
        let e = self.entries.get(name).ok_or_else(|| Error::MissingTensor {
            name: name.to_string(),
            origin: self.origin.clone(),
        })?;
        let shard = &self.shards[e.shard];
        let bytes = &shard.map[e.start..e.end];
        let dtype = match e.dtype {
            Dtype::F32 => DType::F32,
            Dtype::F16 => DType::F16,
            Dtype::BF16 => DType::BF16,
            Dtype::F64 => DType::F64,
            other => {
                return Err(Error::TensorData {
                    name: name.to_string(),
                    origin: shard.path.display().to_string(),
                    msg: format!("storage type {other:?} is not a floating-point weight"),
                });
            }
        };
        let tensor = Tensor::from_raw_buffer(bytes, dtype, &e.shape, &Device::Cpu)
            .and_then(|t| t.to_dtype(DType::F32))
            .map_err(|err| Error::TensorData {
                name: name.to_string(),
                origin: shard.path.display().to_string(),
                msg: err.to_string(),
            })?;
        crate::mmap::release(&shard.map, e.start, e.end);
        Ok(tensor)
    }
}
