//! The lazy view of a checkpoint's tensors.
//!
//! A checkpoint is never loaded whole: readers implement [`TensorSource`], which lists tensors
//! by their canonical (Hugging Face) names and materialises one at a time as f32 on the CPU.
//! Whatever the storage (bf16 safetensors shards, GGUF Q4_1 blocks with llama.cpp's rotary
//! permutation), callers see the same names and the same values.

use candle_core::Tensor;

use crate::Result;

/// What is known about a stored tensor without reading its data.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    /// Canonical (Hugging Face) name, e.g. `model.layers.0.self_attn.q_proj.weight`.
    pub name: String,
    /// Storage type as the file names it: `F32`, `BF16`, `Q4_1`, ...
    pub dtype: String,
    /// Logical shape, outermost dimension first (`[out_features, in_features]` for linears).
    pub shape: Vec<usize>,
    /// Bytes the tensor occupies in its file.
    pub stored_bytes: u64,
}

impl TensorInfo {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Read access to a checkpoint's tensors, one at a time.
pub trait TensorSource: Send + Sync {
    /// A short description of where the tensors come from (a path), used in error messages.
    fn origin(&self) -> String;

    /// Every tensor, in a stable order.
    fn infos(&self) -> Vec<TensorInfo>;

    /// Metadata of one tensor, if present.
    fn info(&self, name: &str) -> Option<TensorInfo>;

    /// Loads one tensor as f32 on the CPU, dequantizing and un-permuting as needed.
    fn load(&self, name: &str) -> Result<Tensor>;

    /// The stored blocks of a 2-D weight `[rows, cols]`, when the source holds it in a
    /// [`BlockType`](crate::BlockType) the forward pass runs on directly; `None` when it is
    /// stored otherwise (f32, a type without a packed kernel) and [`load`](Self::load) is the
    /// way to read it.
    fn load_packed(&self, name: &str) -> Result<Option<crate::PackedMatrix>> {
        let _ = name;
        Ok(None)
    }

    /// Whether a tensor of that name exists.
    fn contains(&self, name: &str) -> bool {
        self.info(name).is_some()
    }

    /// Loads a tensor and checks its shape, naming the tensor on any mismatch.
    fn load_shaped(&self, name: &str, expected: &[usize]) -> Result<Tensor> {
        let info = self.info(name).ok_or_else(|| crate::Error::MissingTensor {
            name: name.to_string(),
            origin: self.origin(),
        })?;
        if info.shape != expected {
            return Err(crate::Error::Shape {
                name: name.to_string(),
                origin: self.origin(),
                expected: expected.to_vec(),
                actual: info.shape,
            });
        }
        self.load(name)
    }
}

/// The first tensor of `src` holding a NaN or infinite value, if any: the diagnosis when a
/// forward pass turns out non-finite. It reads every tensor, so it is for the failure path.
pub fn first_non_finite(src: &dyn TensorSource) -> Result<Option<String>> {
    for info in src.infos() {
        let values = src
            .load(&info.name)?
            .flatten_all()?
            .to_dtype(candle_core::DType::F32)?
            .to_vec1::<f32>()?;
        if values.iter().any(|v| !v.is_finite()) {
            return Ok(Some(info.name));
        }
    }
    Ok(None)
}

/// Tensors held in memory, served through the same interface as a checkpoint on disk (results
/// of a computation about to be written, small test models).
#[derive(Debug, Default, Clone)]
pub struct MemorySource {
    origin: String,
    tensors: Vec<(String, Tensor)>,
}

impl MemorySource {
    /// An empty source; `origin` names it in errors.
    pub fn new(origin: impl Into<String>) -> Self {
        Self {
            origin: origin.into(),
            tensors: Vec::new(),
        }
    }

    /// Adds (or replaces) a tensor.
    pub fn insert(&mut self, name: impl Into<String>, tensor: Tensor) {
        let name = name.into();
        match self.tensors.iter_mut().find(|(n, _)| *n == name) {
            Some(slot) => slot.1 = tensor,
            None => self.tensors.push((name, tensor)),
        }
    }

    fn make_info(name: &str, t: &Tensor) -> TensorInfo {
        TensorInfo {
            name: name.to_string(),
            dtype: format!("{:?}", t.dtype()).to_uppercase(),
            shape: t.dims().to_vec(),
            stored_bytes: (t.elem_count() * t.dtype().size_in_bytes()) as u64,
        }
    }
}

impl TensorSource for MemorySource {
    fn origin(&self) -> String {
        self.origin.clone()
    }

    fn infos(&self) -> Vec<TensorInfo> {
        self.tensors
            .iter()
            .map(|(n, t)| Self::make_info(n, t))
            .collect()
    }

    fn info(&self, name: &str) -> Option<TensorInfo> {
        self.tensors
            .iter()
            .find(|(n, _)| n == name)
            .map(|(n, t)| Self::make_info(n, t))
    }

    fn load(&self, name: &str) -> Result<Tensor> {
        let (_, t) = self
            .tensors
            .iter()
            .find(|(n, _)| n == name)
            .ok_or_else(|| crate::Error::MissingTensor {
                name: name.to_string(),
                origin: self.origin.clone(),
            })?;
        Ok(t.to_dtype(candle_core::DType::F32)?)
    }
}
