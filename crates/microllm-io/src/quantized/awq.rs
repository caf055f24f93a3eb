//! AWQ checkpoints in AutoAWQ's GEMM layout (`quant_method: awq`, `version: gemm`): what
//! AutoAWQ and AutoRound's `auto_awq` export save and transformers loads. Read only: microllm
//! writes its own AWQ results as compressed-tensors, GPTQ or GGUF.
//!
//! Per quantized linear `P` (its `P.weight` is replaced), 4-bit codes:
//!
//! | tensor | dtype | shape | content |
//! |---|---|---|---|
//! | `P.qweight` | int32 | `[in, out / 8]` | row `j`: the codes of input `j` for eight consecutive outputs per word |
//! | `P.qzeros` | int32 | `[n_groups, out / 8]` | zero points, packed the same way |
//! | `P.scales` | f16 | `[n_groups, out]` | |
//!
//! Weights dequantize as `scales[g, o] * (code - zero)` with `g = j / group_size` (zero points
//! are stored as they are, unlike GPTQ v1). Within a word the outputs are interleaved, AutoAWQ's
//! order: bits `4k..4k + 4` of the word for outputs `8c..8c + 8` hold output `8c + ORDER[k]`,
//! `ORDER = [0, 2, 4, 6, 1, 3, 5, 7]`.

use std::path::Path;

use microllm_core::{CodeType, Error, Result};
use safetensors::Dtype;
use serde_json::Value;

use super::{QuantScheme, QuantizedWeight, RawTensor};

/// The tensor suffixes of one AWQ linear.
pub const SUFFIXES: [&str; 3] = ["qweight", "qzeros", "scales"];

/// Which output of a word's eight each 4-bit field holds (AutoAWQ's packing order).
const ORDER: [usize; 8] = [0, 2, 4, 6, 1, 3, 5, 7];

/// The settings of an AWQ checkpoint (`quantization_config` in config.json).
#[derive(Debug, Clone, PartialEq)]
pub struct AwqConfig {
    /// Inputs per group (`group_size`, AutoAWQ's `q_group_size`).
    pub group_size: usize,
}

impl AwqConfig {
    /// Reads `quantization_config` (already known to say `quant_method: awq`): 4 bits, the
    /// GEMM layout, zero points; anything else is an error naming the key.
    pub fn parse(qc: &Value, path: &Path) -> Result<Self> {
        let key = |k: &str| format!("quantization_config.{k}");
        let bits = qc.get("bits").or_else(|| qc.get("w_bit"));
        if bits.and_then(Value::as_u64) != Some(4) {
            return Err(Error::config(
                path,
                key("bits"),
                format!(
                    "{}: microllm reads 4-bit AWQ checkpoints",
                    bits.cloned().unwrap_or(Value::Null)
                ),
            ));
        }
        let version = qc.get("version").and_then(Value::as_str).unwrap_or("gemm");
        if !version.eq_ignore_ascii_case("gemm") {
            return Err(Error::config(
                path,
                key("version"),
                format!("`{version}` (microllm reads AutoAWQ's `gemm` layout)"),
            ));
        }
        if qc.get("zero_point").and_then(Value::as_bool) == Some(false) {
            return Err(Error::config(
                path,
                key("zero_point"),
                "false (microllm reads AWQ checkpoints with zero points)",
            ));
        }
        let group_size = qc
            .get("group_size")
            .or_else(|| qc.get("q_group_size"))
            .and_then(Value::as_u64)
            .filter(|&g| g > 0)
            .ok_or_else(|| Error::config(path, key("group_size"), "missing or not positive"))?;
        Ok(Self {
            group_size: group_size as usize,
        })
    }
}

/// The `[out, in]` shape of one linear after checking the tensors against each other.
pub fn shape_of(
    cfg: &AwqConfig,
    qweight: &RawTensor<'_>,
    qzeros: &RawTensor<'_>,
    scales: &RawTensor<'_>,
) -> Result<[usize; 2]> {
    qweight.expect(&[Dtype::I32], 2)?;
    qzeros.expect(&[Dtype::I32], 2)?;
    scales.expect(&[Dtype::F16, Dtype::BF16, Dtype::F32], 2)?;
    let [inp, words] = [qweight.shape[0], qweight.shape[1]];
    let out = words * 8;
    let ng = inp.div_ceil(cfg.group_size);
    scales.expect_shape(
        &[ng, out],
        &format!(
            "{inp} inputs in groups of {}, {out} outputs",
            cfg.group_size
        ),
    )?;
    qzeros.expect_shape(&[ng, words], &format!("{ng} groups x {out} outputs"))?;
    Ok([out, inp])
}

/// The eight codes of one word, by output offset.
fn unpack(word: u32) -> [u8; 8] {
    let mut codes = [0u8; 8];
    for (k, &o) in ORDER.iter().enumerate() {
        codes[o] = ((word >> (4 * k)) & 0xF) as u8;
    }
    codes
}

/// Unpacks one linear; errors name the tensor.
pub fn decode(
    cfg: &AwqConfig,
    qweight: &RawTensor<'_>,
    qzeros: &RawTensor<'_>,
    scales: &RawTensor<'_>,
) -> Result<QuantizedWeight> {
    let [out, inp] = shape_of(cfg, qweight, qzeros, scales)?;
    let ng = scales.shape[0];
    let words = out / 8;
    let mut codes = vec![0u8; out * inp];
    for (j, row) in qweight.words().chunks_exact(words).enumerate() {
        for (c, &w) in row.iter().enumerate() {
            for (r, code) in unpack(w).into_iter().enumerate() {
                codes[(8 * c + r) * inp + j] = code;
            }
        }
    }
    let mut zeros = vec![0u8; out * ng];
    for (g, row) in qzeros.words().chunks_exact(words).enumerate() {
        for (c, &w) in row.iter().enumerate() {
            for (r, z) in unpack(w).into_iter().enumerate() {
                zeros[(8 * c + r) * ng + g] = z;
            }
        }
    }
    let s = scales.floats();
    let mut scales_t = vec![0f32; out * ng];
    for g in 0..ng {
        for o in 0..out {
            scales_t[o * ng + g] = s[g * out + o];
        }
    }
    let scheme = QuantScheme::stored(4, cfg.group_size, inp, false, CodeType::Int)
        .map_err(|e| qweight.error(e.to_string()))?;
    let q = QuantizedWeight {
        shape: [out, inp],
        scheme,
        codes,
        scales: scales_t,
        zeros,
        g_idx: None,
        perm: None,
    };
    q.validate(&qweight.name)?;
    Ok(q)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// AutoAWQ's packing, written out as its reference packs (`order_map`), for the test.
    fn pack(codes: &[u8]) -> u32 {
        ORDER
            .iter()
            .enumerate()
            .fold(0u32, |w, (k, &o)| w | (u32::from(codes[o]) << (4 * k)))
    }

    fn raw(name: &str, dtype: Dtype, shape: Vec<usize>, data: Vec<u8>) -> RawTensor<'static> {
        RawTensor::owned(name.into(), dtype, shape, data)
    }

    /// A 16 x 6 weight (two words of outputs, two groups of 3 inputs, the last ragged-free):
    /// every code, zero and scale lands where the layout says.
    #[test]
    fn hand_packed_weights_unpack_in_awq_order() {
        let (out, inp, g) = (16usize, 6usize, 3usize);
        let code = |o: usize, j: usize| ((o * 7 + j * 3) % 16) as u8;
        let zero = |o: usize, grp: usize| ((o + 5 * grp) % 16) as u8;
        let mut qweight = Vec::new();
        for j in 0..inp {
            for c in 0..out / 8 {
                let codes: Vec<u8> = (0..8).map(|r| code(8 * c + r, j)).collect();
                qweight.extend(pack(&codes).to_le_bytes());
            }
        }
        let mut qzeros = Vec::new();
        for grp in 0..inp / g {
            for c in 0..out / 8 {
                let z: Vec<u8> = (0..8).map(|r| zero(8 * c + r, grp)).collect();
                qzeros.extend(pack(&z).to_le_bytes());
            }
        }
        let scales: Vec<u8> = (0..inp / g * out)
            .flat_map(|k| half::f16::from_f32(0.25 + k as f32 / 64.0).to_le_bytes())
            .collect();
        let cfg = AwqConfig { group_size: g };
        let q = decode(
            &cfg,
            &raw("p.qweight", Dtype::I32, vec![inp, out / 8], qweight),
            &raw("p.qzeros", Dtype::I32, vec![inp / g, out / 8], qzeros),
            &raw("p.scales", Dtype::F16, vec![inp / g, out], scales),
        )
        .unwrap();
        let w = q.dequantize_vec();
        for o in 0..out {
            for j in 0..inp {
                let grp = j / g;
                let s = half::f16::from_f32(0.25 + (grp * out + o) as f32 / 64.0).to_f32();
                let want = s * (code(o, j) as f32 - zero(o, grp) as f32);
                assert_eq!(w[o * inp + j], want, "[{o}, {j}]");
            }
        }
    }

    #[test]
    fn configs_outside_4_bit_gemm_are_refused_by_key() {
        let p = Path::new("config.json");
        let ok = json!({"quant_method": "awq", "bits": 4, "group_size": 128, "version": "gemm",
                        "zero_point": true});
        assert_eq!(AwqConfig::parse(&ok, p).unwrap().group_size, 128);
        let autoawq = json!({"quant_method": "awq", "w_bit": 4, "q_group_size": 64});
        assert_eq!(AwqConfig::parse(&autoawq, p).unwrap().group_size, 64);
        for (k, v, key) in [
            ("bits", json!(3), "quantization_config.bits"),
            ("version", json!("gemv"), "quantization_config.version"),
            ("zero_point", json!(false), "quantization_config.zero_point"),
            ("group_size", json!(0), "quantization_config.group_size"),
        ] {
            let mut c = ok.clone();
            c[k] = v;
            let err = AwqConfig::parse(&c, p).unwrap_err().to_string();
            assert!(err.contains(key), "{k}: {err}");
        }
    }
}
