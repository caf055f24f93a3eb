//! GPTQ checkpoints, v1 layout: what AutoGPTQ and GPTQModel save and transformers / vLLM load.
//!
//! Per quantized linear `P` (the module; its `P.weight` is replaced):
//!
//! | tensor | dtype | shape | content |
//! |---|---|---|---|
//! | `P.qweight` | int32 | `[ceil(in*bits/32), out]` | codes of column `o` as one bit stream down the input dimension |
//! | `P.qzeros` | int32 | `[n_groups, ceil(out*bits/32)]` | zero points minus one, one bit stream per group across outputs |
//! | `P.scales` | f16 | `[n_groups, out]` | |
//! | `P.g_idx` | int32 | `[in]` | group of each input column (non-monotonic with act-order) |
//!
//! Weights dequantize as `scales[g, o] * (code - zero)`, `g = g_idx[j]`.
//!
//! The v1 zero point: checkpoints store `zero - 1` (a historical off-by-one of the original
//! CUDA kernels that every v1 consumer undoes by adding one). For an asymmetric zero of 0 this
//! is -1: microllm stores it as the field `2^bits - 1`, masked to its own bits, so it never
//! borrows from the neighbouring field. That is what GPTQModel's current 3-bit path does
//! (decode fields, shift by one, mask, repack) and what its whole-word `-= 0x11111111`
//! produces for every field that is not 0. Reading, microllm computes `(field + 1) mod 2^bits`,
//! as GPTQModel's v1 -> v2 conversion does, so a round trip is exact; kernels that add one
//! without masking (the legacy exllama / AutoGPTQ CUDA path) read such a group with zero
//! `2^bits` instead of 0. [`v1_wrapped_zeros`] counts those groups so writers can say so.
//! `checkpoint_format: "gptq_v2"` (zeros stored as they are) is read too.

use std::path::Path;

use microllm_core::{Error, Result};
use safetensors::Dtype;
use serde_json::{Value, json};

use super::bits::{pack_stream, stream_get, stream_words, unpack_stream};
use super::{QuantScheme, QuantizedWeight, RawTensor, f16_bytes, words_bytes};

/// The tensor suffixes of one GPTQ linear.
pub const SUFFIXES: [&str; 4] = ["qweight", "qzeros", "scales", "g_idx"];

/// The settings of a GPTQ checkpoint (`quantization_config` in config.json).
#[derive(Debug, Clone, PartialEq)]
pub struct GptqConfig {
    pub bits: u8,
    /// `None` for one group per row (`group_size: -1`).
    pub group_size: Option<usize>,
    pub sym: bool,
    pub desc_act: bool,
    /// `zero - 1` stored (v1, "gptq") or `zero` (v2, "gptq_v2").
    pub v1: bool,
}

impl GptqConfig {
    /// Reads `quantization_config` (already known to say `quant_method: gptq`).
    pub fn parse(qc: &Value, path: &Path) -> Result<Self> {
        let key = |k: &str| format!("quantization_config.{k}");
        let int = |k: &str| -> Result<i64> {
            qc.get(k)
                .and_then(Value::as_i64)
                .ok_or_else(|| Error::config(path, key(k), "missing or not an integer"))
        };
        let bits = int("bits")?;
        if !u8::try_from(bits).is_ok_and(|b| microllm_core::CODE_BITS.contains(&b)) {
            return Err(Error::config(
                path,
                key("bits"),
                format!("{bits} bits (microllm reads 2-8)"),
            ));
        }
        let group_size = match int("group_size")? {
            -1 => None,
            g if g > 0 => Some(g as usize),
            g => {
                return Err(Error::config(
                    path,
                    key("group_size"),
                    format!("{g} is neither positive nor -1"),
                ));
            }
        };
        let format = qc
            .get("checkpoint_format")
            .or_else(|| qc.get("format"))
            .and_then(Value::as_str)
            .unwrap_or("gptq");
        let v1 = match format {
            "gptq" => true,
            "gptq_v2" => false,
            other => {
                return Err(Error::config(
                    path,
                    key("checkpoint_format"),
                    format!(
                        "`{other}` is not a layout microllm reads (it reads `gptq` and \
                         `gptq_v2`)"
                    ),
                ));
            }
        };
        Ok(Self {
            bits: bits as u8,
            group_size,
            sym: qc.get("sym").and_then(Value::as_bool).unwrap_or(true),
            desc_act: qc.get("desc_act").and_then(Value::as_bool).unwrap_or(false),
            v1,
        })
    }

    /// `quantization_config` as transformers' GPTQ integration and GPTQModel read it (also
    /// the content of `quantize_config.json`).
    pub fn to_json(&self, damp_percent: f64, static_groups: bool) -> Value {
        json!({
            "quant_method": "gptq",
            "bits": self.bits,
            "group_size": self.group_size.map_or(-1, |g| g as i64),
            "desc_act": self.desc_act,
            "sym": self.sym,
            "true_sequential": true,
            "static_groups": static_groups,
            "damp_percent": damp_percent,
            "lm_head": false,
            "checkpoint_format": if self.v1 { "gptq" } else { "gptq_v2" },
            "format": if self.v1 { "gptq" } else { "gptq_v2" },
            "pack_dtype": "int32",
            "meta": { "quantizer": [format!("microllm:{}", env!("CARGO_PKG_VERSION"))] },
        })
    }
}

/// The stored v1 field of a zero point: `zero - 1`, wrapped within `bits`.
pub fn v1_zero_field(zero: u8, bits: u8) -> u8 {
    zero.wrapping_sub(1) & ((1u16 << bits) - 1) as u8
}

/// Groups whose zero point is 0 (stored as `2^bits - 1` in v1; see the module docs).
pub fn v1_wrapped_zeros(q: &QuantizedWeight) -> usize {
    q.zeros.iter().filter(|&&z| z == 0).count()
}

/// The GPTQ tensors of one linear, named `{prefix}.qweight` etc. (v1 zero points).
pub fn encode(prefix: &str, q: &QuantizedWeight) -> Vec<RawTensor<'static>> {
    assert_eq!(
        q.scheme.code_type,
        microllm_core::CodeType::Int,
        "GPTQ checkpoints hold integer codes; plans refuse FP8 for them"
    );
    let [out, inp] = q.shape;
    let (bits, ng) = (q.scheme.bits, q.n_groups());
    // Column o's codes as one stream down the input dimension, then transposed to [rows, out].
    let rows = stream_words(inp, bits);
    let mut qweight = vec![0u32; rows * out];
    for o in 0..out {
        let col = pack_stream(&q.codes[o * inp..(o + 1) * inp], bits);
        for (w, &word) in col.iter().enumerate() {
            qweight[w * out + o] = word;
        }
    }
    let zcols = stream_words(out, bits);
    let mut qzeros = Vec::with_capacity(ng * zcols);
    let mut scales = Vec::with_capacity(ng * out);
    for g in 0..ng {
        let fields: Vec<u8> = (0..out)
            .map(|o| v1_zero_field(q.zeros[o * ng + g], bits))
            .collect();
        qzeros.extend(pack_stream(&fields, bits));
        scales.extend((0..out).map(|o| q.scales[o * ng + g]));
    }
    let g_idx: Vec<u8> = q
        .g_idx()
        .iter()
        .flat_map(|&g| (g as i32).to_le_bytes())
        .collect();
    let name = |s: &str| format!("{prefix}.{s}");
    vec![
        RawTensor::owned(
            name("qweight"),
            Dtype::I32,
            vec![rows, out],
            words_bytes(&qweight),
        ),
        RawTensor::owned(
            name("qzeros"),
            Dtype::I32,
            vec![ng, zcols],
            words_bytes(&qzeros),
        ),
        RawTensor::owned(
            name("scales"),
            Dtype::F16,
            vec![ng, out],
            f16_bytes(&scales),
        ),
        RawTensor::owned(name("g_idx"), Dtype::I32, vec![inp], g_idx),
    ]
}

/// The `[out, in]` shape of one linear, after checking every tensor's dtype and shape against
/// the others and the configuration (no data is read but `g_idx`'s length); errors name the
/// tensor.
pub fn shape_of(
    cfg: &GptqConfig,
    qweight: &RawTensor<'_>,
    qzeros: &RawTensor<'_>,
    scales: &RawTensor<'_>,
    g_idx: Option<&RawTensor<'_>>,
) -> Result<[usize; 2]> {
    let bits = cfg.bits;
    qweight.expect(&[Dtype::I32], 2)?;
    qzeros.expect(&[Dtype::I32], 2)?;
    scales.expect(&[Dtype::F16, Dtype::BF16, Dtype::F32], 2)?;
    let [rows, out] = [qweight.shape[0], qweight.shape[1]];
    let inp = match g_idx {
        Some(g) => {
            g.expect(&[Dtype::I32, Dtype::I64], 1)?;
            g.shape[0]
        }
        None if (rows * 32).is_multiple_of(bits as usize) => rows * 32 / bits as usize,
        None => {
            return Err(qweight.error(format!(
                "{rows} rows of {bits}-bit codes and no g_idx: the input size is ambiguous"
            )));
        }
    };
    qweight.expect_shape(
        &[stream_words(inp, bits), out],
        &format!("{inp} inputs x {out} outputs at {bits} bits"),
    )?;
    let ng = scales.shape[0];
    scales.expect_shape(&[ng, out], &format!("{out} outputs, from qweight"))?;
    qzeros.expect_shape(
        &[ng, stream_words(out, bits)],
        &format!("{ng} groups from scales x {out} outputs at {bits} bits"),
    )?;
    Ok([out, inp])
}

/// Unpacks one linear from its GPTQ tensors (`g_idx` may be absent), checking every shape
/// against the others and the configuration; errors name the tensor.
pub fn decode(
    cfg: &GptqConfig,
    qweight: &RawTensor<'_>,
    qzeros: &RawTensor<'_>,
    scales: &RawTensor<'_>,
    g_idx: Option<&RawTensor<'_>>,
) -> Result<QuantizedWeight> {
    let bits = cfg.bits;
    let [out, inp] = shape_of(cfg, qweight, qzeros, scales, g_idx)?;
    let rows = qweight.shape[0];
    let ng = scales.shape[0];
    let group_size = cfg.group_size.unwrap_or(inp);
    let g_idx = match g_idx {
        Some(t) => {
            let g = t.ints();
            if let Some(bad) = g.iter().find(|&&x| x < 0 || x as usize >= ng) {
                return Err(t.error(format!("group {bad} is outside 0..{ng}")));
            }
            Some(g.into_iter().map(|x| x as u32).collect::<Vec<_>>())
        }
        None if inp.div_ceil(group_size) == ng => None,
        None => {
            return Err(scales.error(format!(
                "{ng} groups, but {inp} inputs in groups of {group_size} make {}",
                inp.div_ceil(group_size)
            )));
        }
    };

    let words = qweight.words();
    let mut codes = vec![0u8; out * inp];
    let mut column = vec![0u32; rows];
    for o in 0..out {
        for (w, slot) in column.iter_mut().enumerate() {
            *slot = words[w * out + o];
        }
        let row = &mut codes[o * inp..(o + 1) * inp];
        for (j, c) in row.iter_mut().enumerate() {
            *c = stream_get(&column, bits, j);
        }
    }
    let zwords = qzeros.words();
    let zcols = qzeros.shape[1];
    let mask = ((1u16 << bits) - 1) as u8;
    let mut zeros = vec![0u8; out * ng];
    for g in 0..ng {
        let fields = unpack_stream(&zwords[g * zcols..(g + 1) * zcols], bits, out);
        for (o, f) in fields.into_iter().enumerate() {
            zeros[o * ng + g] = if cfg.v1 { f.wrapping_add(1) & mask } else { f };
        }
    }
    let s = scales.floats();
    let mut scales_t = vec![0f32; out * ng];
    for g in 0..ng {
        for o in 0..out {
            scales_t[o * ng + g] = s[g * out + o];
        }
    }
    let scheme = QuantScheme::stored(bits, group_size, inp, cfg.sym, microllm_core::CodeType::Int)
        .map_err(|e| qweight.error(e.to_string()))?;
    let mut q = QuantizedWeight {
        shape: [out, inp],
        scheme,
        codes,
        scales: scales_t,
        zeros,
        g_idx,
        perm: None,
    };
    if q.g_idx.is_some() && q.contiguous() && inp.div_ceil(group_size) == ng {
        q.g_idx = None;
    }
    q.validate(&qweight.name)?;
    Ok(q)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quantized::bits::Rng;
    use crate::quantized::testing::{explicit, random_codes};

    fn cfg(q: &QuantizedWeight) -> GptqConfig {
        GptqConfig {
            bits: q.scheme.bits,
            group_size: Some(q.group_len()),
            sym: q.scheme.symmetric,
            desc_act: q.g_idx.is_some(),
            v1: true,
        }
    }

    fn round_trip(q: &QuantizedWeight) -> QuantizedWeight {
        let t = encode("m", q);
        decode(&cfg(q), &t[0], &t[1], &t[2], Some(&t[3])).unwrap()
    }

    #[test]
    fn random_weights_round_trip_exactly() {
        let mut rng = Rng(7);
        for case in 0..400 {
            let bits = [2u8, 3, 4, 8][case % 4];
            let (sym, act) = (case % 8 < 4, case % 3 == 0);
            let q = random_codes(&mut rng, bits, sym, act);
            let back = round_trip(&q);
            assert_eq!(
                explicit(back.clone()),
                explicit(q.clone()),
                "case {case}: {bits} bits sym={sym} act_order={act}"
            );
            assert_eq!(back.dequantize_vec(), q.dequantize_vec());
        }
    }

    /// Shapes as the reference writes them, and the v1 zero of a symmetric 4-bit weight (8)
    /// stored as 7 in every nibble.
    #[test]
    fn layout_matches_the_reference() {
        let mut rng = Rng(3);
        let mut q = random_codes(&mut rng, 4, true, false);
        q.shape = [16, 64];
        q.scheme.group_size = Some(32);
        q.codes = (0..16 * 64).map(|i| (i % 16) as u8).collect();
        q.scales = vec![0.5; 32];
        q.zeros = vec![8; 32];
        let t = encode("layer", &q);
        assert_eq!(t[0].shape, vec![8, 16]);
        assert_eq!(t[1].shape, vec![2, 2]);
        assert_eq!(t[2].shape, vec![2, 16]);
        assert_eq!(t[3].shape, vec![64]);
        assert!(t[1].words().iter().all(|&w| w == 0x7777_7777));
        // qweight[0, 0] holds row 0's first eight codes, 0..8, lowest nibble first.
        assert_eq!(t[0].words()[0], 0x7654_3210);
    }

    /// A zero of 0 is stored as the masked field 2^bits - 1 and does not disturb its
    /// neighbours; reading adds one modulo 2^bits.
    #[test]
    fn zero_point_zero_wraps_within_its_field() {
        let mut rng = Rng(11);
        for bits in [2u8, 3, 4, 8] {
            let mut q = random_codes(&mut rng, bits, false, false);
            for (i, z) in q.zeros.iter_mut().enumerate() {
                *z = if i % 2 == 0 {
                    0
                } else {
                    ((1u16 << bits) - 1) as u8
                };
            }
            assert_eq!(v1_zero_field(0, bits) as u16, (1u16 << bits) - 1);
            assert_eq!(round_trip(&q), q, "{bits} bits");
            assert!(v1_wrapped_zeros(&q) > 0);
        }
    }

    #[test]
    fn inconsistent_shapes_name_the_tensor() {
        let mut rng = Rng(5);
        let q = random_codes(&mut rng, 4, true, false);
        let t = encode("model.layers.0.mlp.up_proj", &q);
        let mut bad = t[1].clone();
        bad.shape = vec![bad.shape[0] + 1, bad.shape[1]];
        let err = decode(&cfg(&q), &t[0], &bad, &t[2], Some(&t[3]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("up_proj.qzeros"), "{err}");
        let mut bad = t[3].clone();
        bad.shape = vec![bad.shape[0] + 32];
        let err = decode(&cfg(&q), &t[0], &t[1], &t[2], Some(&bad))
            .unwrap_err()
            .to_string();
        assert!(err.contains("up_proj.qweight"), "{err}");
    }

    #[test]
    fn config_errors_name_the_key() {
        let p = Path::new("config.json");
        let err = GptqConfig::parse(
            &json!({"bits": 4, "group_size": 128, "checkpoint_format": "marlin"}),
            p,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("checkpoint_format") && err.contains("marlin"),
            "{err}"
        );
        let err = GptqConfig::parse(&json!({"group_size": 128}), p)
            .unwrap_err()
            .to_string();
        assert!(err.contains("quantization_config.bits"), "{err}");
        let c =
            GptqConfig::parse(&json!({"bits": 3, "group_size": -1, "desc_act": true}), p).unwrap();
        assert_eq!(c.group_size, None);
        assert!(c.v1 && c.sym && c.desc_act);
        assert_eq!(GptqConfig::parse(&c.to_json(0.01, false), p).unwrap(), c);
    }
}
