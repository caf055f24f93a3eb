//! Quantized safetensors checkpoints: GPTQ (v1 layout) and compressed-tensors
//! (`pack-quantized`, `int-quantized`, `float-quantized`, `naive-quantized`), written and read;
//! AWQ (AutoAWQ's GEMM layout, [`awq`]), read.
//!
//! Both formats hold, per linear layer, the same information as microllm's canonical
//! quantized weight ([`QuantizedWeight`]): one integer code per weight, a scale and an integer
//! zero point per (row, group), and optionally GPTQ's per-column group index. The packers
//! ([`gptq`], [`compressed`]) only re-arrange its bits, and the reader
//! ([`QuantizedDirSource`]) unpacks them into the same type, with
//! [`QuantScheme::stored`]'s scheme, and dequantizes with the quantizer's own code, so a round
//! trip gives identical weights.
//!
//! Which format a directory holds is `config.json`'s `quantization_config.quant_method`
//! ([`QuantMethod::detect`]).

pub mod awq;
pub mod bits;
pub mod compressed;
mod ct_config;
pub mod gptq;
mod source;
pub mod sparse;
mod sparse_source;

use microllm_core::le::decode_le;
use std::path::Path;

use microllm_core::{Error, Result};
pub use microllm_quant::{QuantScheme, QuantizedWeight};
use serde_json::Value;

pub use self::source::QuantizedDirSource;
pub use self::sparse_source::{SparseDirSource, detect_sparse};

/// The quantized formats microllm reads and writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuantMethod {
    /// GPTQ checkpoint, v1 layout (`qweight` / `qzeros` / `scales` / `g_idx`).
    Gptq,
    /// compressed-tensors (llm-compressor), `pack-quantized`.
    CompressedTensors,
    /// AWQ, AutoAWQ's GEMM layout (read only).
    Awq,
}

impl QuantMethod {
    /// The method a `config.json` declares: `None` for an unquantized checkpoint, an error for
    /// a `quant_method` microllm does not read.
    pub fn detect(config: &Value, path: &Path) -> Result<Option<Self>> {
        let Some(qc) = config.get("quantization_config") else {
            return Ok(None);
        };
        let key = "quantization_config.quant_method";
        let method = qc
            .get("quant_method")
            .and_then(Value::as_str)
            .ok_or_else(|| Error::config(path, key, "missing or not a string"))?;
        match method {
            "gptq" => Ok(Some(QuantMethod::Gptq)),
            "compressed-tensors" => Ok(Some(QuantMethod::CompressedTensors)),
            "awq" => Ok(Some(QuantMethod::Awq)),
            "auto-round" => Self::auto_round_layout(qc, path).map(Some),
            other => Err(Error::config(
                path,
                key,
                format!(
                    "quant_method `{other}` is not one microllm reads (it reads `gptq`, \
                     `compressed-tensors`, `awq` and `auto-round`)"
                ),
            )),
        }
    }

    /// The layout of an AutoRound checkpoint (its own `auto_round` export), which stores
    /// integer weights in one of the other tools' layouts and says which in
    /// `packing_format`: GPTQ's v1 layout (`auto_round:auto_gptq`, what AutoRound 0.15 writes
    /// for symmetric schemes; `auto_round:gptqmodel` is the same) or AutoAWQ's GEMM layout
    /// (`auto_round:auto_awq`, 4-bit asymmetric). The settings (`bits`, `group_size`, `sym`)
    /// are then read by that layout's parser. Float, MX and NV formats, quantized
    /// activations and other packings are refused by key.
    fn auto_round_layout(qc: &Value, path: &Path) -> Result<Self> {
        let key = |k: &str| format!("quantization_config.{k}");
        let data_type = qc.get("data_type").and_then(Value::as_str).unwrap_or("int");
        if data_type != "int" {
            return Err(Error::config(
                path,
                key("data_type"),
                format!("`{data_type}` (microllm reads AutoRound's integer weights, `int`)"),
            ));
        }
        if let Some(act) = qc.get("act_bits").and_then(Value::as_u64)
            && act < 16
        {
            return Err(Error::config(
                path,
                key("act_bits"),
                format!(
                    "{act}: activations quantized (microllm reads weight-only AutoRound files)"
                ),
            ));
        }
        match qc.get("packing_format").and_then(Value::as_str) {
            Some("auto_round:auto_gptq" | "auto_round:gptqmodel") => Ok(QuantMethod::Gptq),
            Some("auto_round:auto_awq") => Ok(QuantMethod::Awq),
            other => Err(Error::config(
                path,
                key("packing_format"),
                format!(
                    "{}: microllm reads AutoRound's `auto_round:auto_gptq` and \
                     `auto_round:auto_awq` packings",
                    other.map_or("missing".to_string(), |f| format!("`{f}`"))
                ),
            )),
        }
    }
}

impl std::fmt::Display for QuantMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            QuantMethod::Gptq => "gptq",
            QuantMethod::CompressedTensors => "compressed-tensors",
            QuantMethod::Awq => "awq",
        })
    }
}

/// Little-endian bytes of 32-bit words (packed int32 tensors).
pub(crate) fn words_bytes(words: &[u32]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}

/// 32-bit words from little-endian bytes.
pub(crate) fn bytes_words(bytes: &[u8]) -> Vec<u32> {
    decode_le(bytes)
}

/// Little-endian f16 bytes of f32 values.
pub(crate) fn f16_bytes(values: &[f32]) -> Vec<u8> {
    values
        .iter()
        .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
        .collect()
}

#[cfg(test)]
pub(crate) mod testing {
    use super::{QuantScheme, QuantizedWeight};
    use crate::quantized::bits::Rng;

    /// A random, valid weight: bits, group, symmetry and act-order drawn by `rng`; scales
    /// representable in f16 (as the quantizer makes them).
    pub fn random_codes(
        rng: &mut Rng,
        bits: u8,
        symmetric: bool,
        act_order: bool,
    ) -> QuantizedWeight {
        let out = rng.below(40) + 1;
        let group_size = [8usize, 16, 32, 64][rng.below(4)];
        let ng = rng.below(4) + 1;
        let inp = group_size * ng;
        let maxq = (1usize << bits) - 1;
        let codes = (0..out * inp).map(|_| rng.below(maxq + 1) as u8).collect();
        let scales = (0..out * ng)
            .map(|_| half::f16::from_f32((rng.below(1000) + 1) as f32 * 1e-4).to_f32())
            .collect();
        let zeros = (0..out * ng)
            .map(|_| {
                if symmetric {
                    1u8 << (bits - 1)
                } else {
                    rng.below(maxq + 1) as u8
                }
            })
            .collect();
        let g_idx = act_order.then(|| {
            let mut g: Vec<u32> = (0..inp).map(|j| (j / group_size) as u32).collect();
            for i in (1..inp).rev() {
                g.swap(i, rng.below(i + 1));
            }
            g
        });
        let scheme = QuantScheme::stored(
            bits,
            group_size,
            inp,
            symmetric,
            microllm_core::CodeType::Int,
        )
        .expect("2..=8 bits");
        QuantizedWeight {
            shape: [out, inp],
            scheme,
            codes,
            scales,
            zeros,
            g_idx,
            perm: None,
        }
    }

    /// `q` with its group index spelled out, so contiguous groups compare equal however
    /// they are stored.
    pub fn explicit(mut q: QuantizedWeight) -> QuantizedWeight {
        q.g_idx = Some(q.g_idx());
        q
    }
}

/// One tensor of a quantized checkpoint: safetensors dtype, shape and little-endian bytes
/// (borrowed from a memory map when read, owned when about to be written).
#[derive(Debug, Clone)]
pub struct RawTensor<'a> {
    pub name: String,
    pub dtype: safetensors::Dtype,
    pub shape: Vec<usize>,
    pub data: std::borrow::Cow<'a, [u8]>,
}

impl<'a> RawTensor<'a> {
    /// An owned tensor.
    pub fn owned(
        name: String,
        dtype: safetensors::Dtype,
        shape: Vec<usize>,
        data: Vec<u8>,
    ) -> RawTensor<'static> {
        RawTensor {
            name,
            dtype,
            shape,
            data: std::borrow::Cow::Owned(data),
        }
    }

    fn error(&self, msg: impl Into<String>) -> Error {
        Error::TensorData {
            name: self.name.clone(),
            origin: "quantized checkpoint".into(),
            msg: msg.into(),
        }
    }

    /// Checks dtype and rank, naming the tensor.
    pub(crate) fn expect(&self, dtypes: &[safetensors::Dtype], rank: usize) -> Result<()> {
        if !dtypes.contains(&self.dtype) {
            return Err(self.error(format!(
                "stored as {:?}, expected {}",
                self.dtype,
                dtypes
                    .iter()
                    .map(|d| format!("{d:?}"))
                    .collect::<Vec<_>>()
                    .join(" or ")
            )));
        }
        if self.shape.len() != rank {
            return Err(self.error(format!(
                "has shape {:?}, expected {rank} dimensions",
                self.shape
            )));
        }
        Ok(())
    }

    /// Errors unless the shape is `expected`, naming the tensor and what was expected.
    pub(crate) fn expect_shape(&self, expected: &[usize], why: &str) -> Result<()> {
        if self.shape != expected {
            return Err(Error::Shape {
                name: format!("{} ({why})", self.name),
                origin: "quantized checkpoint".into(),
                expected: expected.to_vec(),
                actual: self.shape.clone(),
            });
        }
        Ok(())
    }

    /// The values as 32-bit words (int32 tensors).
    pub(crate) fn words(&self) -> Vec<u32> {
        bytes_words(&self.data)
    }

    /// The values as f32 (f16, bf16 or f32 tensors).
    pub(crate) fn floats(&self) -> Vec<f32> {
        match self.dtype {
            safetensors::Dtype::F16 => decode_le::<u16>(&self.data)
                .into_iter()
                .map(|b| half::f16::from_bits(b).to_f32())
                .collect(),
            safetensors::Dtype::BF16 => decode_le::<u16>(&self.data)
                .into_iter()
                .map(|b| half::bf16::from_bits(b).to_f32())
                .collect(),
            _ => decode_le(&self.data),
        }
    }

    /// The values as integers (int32 or int64 tensors).
    pub(crate) fn ints(&self) -> Vec<i64> {
        match self.dtype {
            safetensors::Dtype::I64 => self
                .data
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
                .collect(),
            _ => bytes_words(&self.data)
                .into_iter()
                .map(|w| w as i32 as i64)
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::QuantMethod;
    use serde_json::json;
    use std::path::Path;

    /// AutoRound's own export names the layout it packed into; the settings keys are the
    /// other tools' (read by their parsers), and what microllm cannot apply is named.
    #[test]
    fn auto_round_files_are_read_in_the_layout_they_name() {
        let p = Path::new("config.json");
        let config = |edit: &dyn Fn(&mut serde_json::Value)| {
            let mut qc = json!({
                "quant_method": "auto-round", "bits": 4, "group_size": 32, "sym": true,
                "data_type": "int", "packing_format": "auto_round:auto_gptq",
                "autoround_version": "0.15.1", "block_name_to_quantize": "model.layers"
            });
            edit(&mut qc);
            json!({ "quantization_config": qc })
        };
        let detect = |edit: &dyn Fn(&mut serde_json::Value)| QuantMethod::detect(&config(edit), p);
        assert_eq!(detect(&|_| {}).unwrap(), Some(QuantMethod::Gptq));
        let awq = detect(&|q| {
            q["packing_format"] = json!("auto_round:auto_awq");
            q["sym"] = json!(false);
        });
        assert_eq!(awq.unwrap(), Some(QuantMethod::Awq));
        for (edit, key) in [
            (
                &(|q: &mut serde_json::Value| q["packing_format"] = json!("auto_round"))
                    as &dyn Fn(&mut serde_json::Value),
                "quantization_config.packing_format",
            ),
            (
                &|q| q["data_type"] = json!("nv_fp"),
                "quantization_config.data_type",
            ),
            (
                &|q| q["act_bits"] = json!(8),
                "quantization_config.act_bits",
            ),
        ] {
            let err = detect(edit).unwrap_err().to_string();
            assert!(err.contains(key), "{err}");
        }
    }
}
