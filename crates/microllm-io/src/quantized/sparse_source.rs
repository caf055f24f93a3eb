//! Reading compressed-tensors sparse directories (`sparse-bitmask`, `sparse-24-bitmask`): each
//! `P.weight` is rebuilt dense from `P.compressed` and `P.bitmask` when loaded, so `eval`,
//! `logits` and `convert` read pruned models written by microllm or llm-compressor.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use microllm_core::{Error, Result, TensorInfo, TensorSource};
use serde_json::Value;

use super::sparse::{SparseFormat, SparseWeight};
use crate::hf::SafetensorsSource;

/// The sparse format a config.json declares, if it declares a sparse, unquantized model.
pub fn detect_sparse(config: &Value) -> Option<SparseFormat> {
    let qc = config.get("quantization_config")?;
    let quantized = qc
        .get("config_groups")
        .and_then(Value::as_object)
        .is_some_and(|g| !g.is_empty());
    if quantized || qc.get("quant_method").and_then(Value::as_str) != Some("compressed-tensors") {
        return None;
    }
    SparseFormat::parse(qc.get("sparsity_config")?.get("format")?.as_str()?)
}

/// A sparse directory as dense tensors.
pub struct SparseDirSource {
    origin: String,
    inner: SafetensorsSource,
    /// Sparse weights by name (`P.weight`) -> shape.
    sparse: HashMap<String, [usize; 2]>,
    order: Vec<String>,
}

impl SparseDirSource {
    pub fn open(dir: &Path, files: &[PathBuf]) -> Result<Self> {
        let inner = SafetensorsSource::open(dir, files)?;
        let origin = dir.display().to_string();
        let mut sparse = HashMap::new();
        let mut order = Vec::new();
        for info in inner.infos() {
            let Some((prefix, suffix)) = info.name.rsplit_once('.') else {
                order.push(info.name);
                continue;
            };
            match suffix {
                "bitmask" => {
                    let shape_name = format!("{prefix}.shape");
                    let raw = inner.raw(&shape_name).ok_or_else(|| Error::MissingTensor {
                        name: shape_name.clone(),
                        origin: origin.clone(),
                    })?;
                    let dims: Vec<i64> = raw
                        .data
                        .chunks_exact(8)
                        .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
                        .collect();
                    let [rows, cols] = dims[..] else {
                        return Err(Error::TensorData {
                            name: shape_name,
                            origin: origin.clone(),
                            msg: format!("expected 2 int64 dimensions, got {dims:?}"),
                        });
                    };
                    let weight = format!("{prefix}.weight");
                    order.push(weight.clone());
                    sparse.insert(weight, [rows as usize, cols as usize]);
                }
                "shape" | "compressed" | "row_offsets" => {}
                _ => order.push(info.name),
            }
        }
        if sparse.is_empty() {
            return Err(Error::format(
                dir,
                "config.json declares a sparse compressed-tensors model but no tensor is named \
                 `*.bitmask`",
            ));
        }
        Ok(Self {
            origin,
            inner,
            sparse,
            order,
        })
    }
}

impl TensorSource for SparseDirSource {
    fn origin(&self) -> String {
        self.origin.clone()
    }

    fn infos(&self) -> Vec<TensorInfo> {
        self.order.iter().filter_map(|n| self.info(n)).collect()
    }

    fn info(&self, name: &str) -> Option<TensorInfo> {
        let Some(&[rows, cols]) = self.sparse.get(name) else {
            return self.inner.info(name);
        };
        let prefix = name.strip_suffix(".weight").unwrap_or(name);
        let stored_bytes = ["compressed", "bitmask", "row_offsets", "shape"]
            .iter()
            .filter_map(|s| self.inner.info(&format!("{prefix}.{s}")))
            .map(|i| i.stored_bytes)
            .sum();
        Some(TensorInfo {
            name: name.to_string(),
            dtype: "sparse".into(),
            shape: vec![rows, cols],
            stored_bytes,
        })
    }

    fn load(&self, name: &str) -> Result<Tensor> {
        let Some(&shape) = self.sparse.get(name) else {
            return self.inner.load(name);
        };
        let prefix = name.strip_suffix(".weight").unwrap_or(name);
        let values = self
            .inner
            .load(&format!("{prefix}.compressed"))?
            .flatten_all()?
            .to_dtype(candle_core::DType::F32)?
            .to_vec1::<f32>()?;
        let mask_name = format!("{prefix}.bitmask");
        let mask = self
            .inner
            .raw(&mask_name)
            .ok_or_else(|| Error::MissingTensor {
                name: mask_name,
                origin: self.origin.clone(),
            })?;
        let w = SparseWeight::from_parts(prefix, shape, &mask.data, values)?;
        Ok(Tensor::from_vec(
            w.decode(),
            (shape[0], shape[1]),
            &Device::Cpu,
        )?)
    }
}
