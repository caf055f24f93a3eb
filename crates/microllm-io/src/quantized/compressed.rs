//! compressed-tensors checkpoints (llm-compressor's format; vLLM and transformers load it):
//! `pack-quantized` weights, `int-quantized` / `naive-quantized` ones (one signed int8 per
//! weight; `int-quantized` is the W8A8 format, its config quantizing every linear's input too),
//! and FP8 ones (`float-quantized`, W8A8 FP8; `naive-quantized` with `type: float`, FP8
//! weights only).
//!
//! `pack-quantized`, per quantized linear `P` (its `P.weight` is replaced):
//!
//! | tensor | dtype | shape | content |
//! |---|---|---|---|
//! | `P.weight_packed` | int32 | `[out, ceil(in / (32/bits))]` | `32/bits` codes per word along the input dimension, lowest bits first (3-bit: 10 per word, 2 bits unused) |
//! | `P.weight_scale` | f16 | `[out, n_groups]` | |
//! | `P.weight_zero_point` | int32 | `[ceil(out / (32/bits)), n_groups]` | asymmetric only: zero points packed the same way, down the *output* dimension |
//! | `P.weight_shape` | int64 | `[2]` | `[out, in]` |
//! | `P.weight_g_idx` | int32 | `[in]` | with `actorder: "group"` (or `"dynamic"`) only |
//!
//! compressed-tensors quantizes to signed integers `q` in `[-2^(bits-1), 2^(bits-1))` with a
//! signed zero point `zp` (0 when symmetric) and dequantizes `scale * (q - zp)`; packing adds
//! `2^(bits-1)` to both. microllm's unsigned code `c` and zero `z` are therefore exactly the
//! packed fields (`c = q + 2^(bits-1)`, `z = zp + 2^(bits-1)`): nothing is shifted, and a
//! symmetric weight's zero is `2^(bits-1)`. An unpacked int8 `weight_zero_point` `[out,
//! n_groups]` (older releases) is read as well.
//!
//! `int-quantized` / `naive-quantized`: `P.weight` int8 `[out, in]` holds the signed codes
//! `q = c - 2^(bits-1)`, `P.weight_scale` `[out, n_groups]` the scales (written as f32, so a
//! consumer dequantizing in f32 gets exactly microllm's weights), `P.weight_zero_point` int8
//! `[out, n_groups]` the signed zero points of asymmetric schemes. W8A8's activations are
//! `input_activations: {num_bits: 8, type: int, symmetric: true, strategy: token, dynamic:
//! true}` ([`ActivationQuant::Int8PerToken`]); other activation schemes are refused by name.
//!
//! FP8 (`weights.type: float`, 8 bits, symmetric): `P.weight` is `F8_E4M3` `[out, in]`, the
//! E4M3 bytes themselves (microllm's FP8 codes), `P.weight_scale` f32 `[out, n_groups]`;
//! `float-quantized` declares `input_activations` of `type: float`, dynamic per token
//! ([`ActivationQuant::Fp8PerToken`]). compressed-tensors names the format by what it can
//! compress: `float-quantized` needs quantized activations, so FP8 weight-only checkpoints are
//! `naive-quantized`, which is what llm-compressor writes for them.

use microllm_core::{CodeType, Result};
use safetensors::Dtype;

use super::bits::{fixed_get, fixed_words, pack_fixed, unpack_fixed};
pub use super::ct_config::{CtConfig, CtFormat, CtGroup, PACK_QUANTIZED, Targets, group_of};
use super::{QuantScheme, QuantizedWeight, RawTensor, f16_bytes, words_bytes};

/// The tensor suffixes of one int-quantized / naive-quantized linear.
pub const INT_SUFFIXES: [&str; 3] = ["weight", "weight_scale", "weight_zero_point"];

/// The tensor suffixes of one pack-quantized linear.
pub const SUFFIXES: [&str; 5] = [
    "weight_packed",
    "weight_scale",
    "weight_zero_point",
    "weight_shape",
    "weight_g_idx",
];

/// The tensors of one linear in `format`.
pub fn encode_as(format: CtFormat, prefix: &str, q: &QuantizedWeight) -> Vec<RawTensor<'static>> {
    match format {
        CtFormat::PackQuantized => encode(prefix, q),
        CtFormat::IntQuantized | CtFormat::NaiveQuantized | CtFormat::FloatQuantized => {
            encode_int(prefix, q)
        }
    }
}

/// One signed int8 (or FP8 E4M3 byte) per weight, f32 scales, int8 zero points when
/// asymmetric.
fn encode_int(prefix: &str, q: &QuantizedWeight) -> Vec<RawTensor<'static>> {
    let [out, inp] = q.shape;
    let offset = 1i16 << (q.scheme.bits - 1);
    let signed = |c: u8| ((c as i16 - offset) as i8) as u8;
    let name = |s: &str| format!("{prefix}.{s}");
    let weight = match q.scheme.code_type {
        CodeType::Int => (Dtype::I8, q.codes.iter().map(|&c| signed(c)).collect()),
        CodeType::Fp8E4M3 => (Dtype::F8_E4M3, q.codes.clone()),
    };
    let mut t = vec![
        RawTensor::owned(name("weight"), weight.0, vec![out, inp], weight.1),
        RawTensor::owned(
            name("weight_scale"),
            Dtype::F32,
            vec![out, q.n_groups()],
            q.scales.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ),
    ];
    if !q.scheme.symmetric {
        t.push(RawTensor::owned(
            name("weight_zero_point"),
            Dtype::I8,
            vec![out, q.n_groups()],
            q.zeros.iter().map(|&z| signed(z)).collect(),
        ));
    }
    t
}

/// The compressed-tensors tensors of one linear, named `{prefix}.weight_packed` etc.
pub fn encode(prefix: &str, q: &QuantizedWeight) -> Vec<RawTensor<'static>> {
    let [out, inp] = q.shape;
    let (bits, ng) = (q.scheme.bits, q.n_groups());
    let cols = fixed_words(inp, bits);
    let packed: Vec<u32> = q
        .codes
        .chunks_exact(inp)
        .flat_map(|row| pack_fixed(row, bits))
        .collect();
    let name = |s: &str| format!("{prefix}.{s}");
    let mut t = vec![
        RawTensor::owned(
            name("weight_packed"),
            Dtype::I32,
            vec![out, cols],
            words_bytes(&packed),
        ),
        RawTensor::owned(
            name("weight_scale"),
            Dtype::F16,
            vec![out, ng],
            f16_bytes(&q.scales),
        ),
    ];
    if !q.scheme.symmetric {
        let zrows = fixed_words(out, bits);
        let mut zp = vec![0u32; zrows * ng];
        for g in 0..ng {
            let column: Vec<u8> = (0..out).map(|o| q.zeros[o * ng + g]).collect();
            for (w, word) in pack_fixed(&column, bits).into_iter().enumerate() {
                zp[w * ng + g] = word;
            }
        }
        t.push(RawTensor::owned(
            name("weight_zero_point"),
            Dtype::I32,
            vec![zrows, ng],
            words_bytes(&zp),
        ));
    }
    let shape: Vec<u8> = [out as i64, inp as i64]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    t.push(RawTensor::owned(
        name("weight_shape"),
        Dtype::I64,
        vec![2],
        shape,
    ));
    if let Some(g) = &q.g_idx {
        let bytes = g.iter().flat_map(|&x| (x as i32).to_le_bytes()).collect();
        t.push(RawTensor::owned(
            name("weight_g_idx"),
            Dtype::I32,
            vec![inp],
            bytes,
        ));
    }
    t
}

/// The stored tensors of one linear (`zero_point` and `g_idx` optional; `packed` is the int8
/// `weight` and `shape` absent in the one-byte formats).
pub struct CtTensors<'t, 'a> {
    pub packed: &'t RawTensor<'a>,
    pub scale: &'t RawTensor<'a>,
    pub shape: Option<&'t RawTensor<'a>>,
    pub zero_point: Option<&'t RawTensor<'a>>,
    pub g_idx: Option<&'t RawTensor<'a>>,
}

/// The `[out, in]` shape of one linear after checking the tensors' dtypes and shapes against
/// `weight_shape` and the configuration; errors name the tensor.
pub fn shape_of(cfg: &CtConfig, t: &CtTensors<'_, '_>) -> Result<[usize; 2]> {
    let bits = cfg.bits;
    let [out, inp] = if cfg.format.one_byte_per_weight() {
        t.packed.expect(
            &[match cfg.code_type {
                CodeType::Int => Dtype::I8,
                CodeType::Fp8E4M3 => Dtype::F8_E4M3,
            }],
            2,
        )?;
        [t.packed.shape[0], t.packed.shape[1]]
    } else {
        let shape = t
            .shape
            .ok_or_else(|| t.packed.error("no weight_shape beside it"))?;
        shape.expect(&[Dtype::I64, Dtype::I32], 1)?;
        let dims = shape.ints();
        let [out, inp] = match dims[..] {
            [o, i] if o > 0 && i > 0 => [o as usize, i as usize],
            _ => return Err(shape.error(format!("holds {dims:?}, not a 2-D shape"))),
        };
        t.packed.expect(&[Dtype::I32], 2)?;
        t.packed.expect_shape(
            &[out, fixed_words(inp, bits)],
            &format!("weight_shape [{out}, {inp}] at {bits} bits"),
        )?;
        [out, inp]
    };
    t.scale.expect(&[Dtype::F16, Dtype::BF16, Dtype::F32], 2)?;
    let ng = t.scale.shape[1];
    match (cfg.block_rows, cfg.group_size) {
        (Some(rows), Some(cols)) => t.scale.expect_shape(
            &[out.div_ceil(rows), inp.div_ceil(cols)],
            &format!("blocks of {rows} x {cols} over [{out}, {inp}]"),
        )?,
        _ => t
            .scale
            .expect_shape(&[out, ng], &format!("{out} outputs from weight_shape"))?,
    }
    Ok([out, inp])
}

/// The scales `[out, groups]` of a linear: as stored, or, for the `block` strategy, each
/// block's scale repeated over its rows (a block of `r x c` weights is `r` rows of one group
/// of `c` columns with the same scale).
fn row_scales(cfg: &CtConfig, scale: &RawTensor<'_>, out: usize) -> Vec<f32> {
    let stored = scale.floats();
    match cfg.block_rows {
        None => stored,
        Some(rows) => {
            let ng = scale.shape[1];
            (0..out)
                .flat_map(|o| stored[(o / rows) * ng..(o / rows + 1) * ng].iter().copied())
                .collect()
        }
    }
}

/// Unpacks one linear, checking every shape; errors name the tensor.
pub fn decode(cfg: &CtConfig, t: &CtTensors<'_, '_>) -> Result<QuantizedWeight> {
    let bits = cfg.bits;
    let [out, inp] = shape_of(cfg, t)?;
    let ng = t.scale.shape[1];
    let group_size = cfg.group_size.unwrap_or(inp);
    let zeros = match (cfg.symmetric, t.zero_point) {
        (true, _) if cfg.code_type == CodeType::Fp8E4M3 => vec![0; out * ng],
        (true, _) => vec![1u8 << (bits - 1); out * ng],
        (false, None) => {
            return Err(t
                .packed
                .error("the scheme is asymmetric but there is no weight_zero_point beside it"));
        }
        (false, Some(zp)) if zp.dtype == Dtype::I8 => {
            zp.expect_shape(&[out, ng], "unpacked int8 zero points")?;
            let offset = 1i16 << (bits - 1);
            zp.data
                .iter()
                .map(|&b| (b as i8 as i16 + offset) as u8)
                .collect()
        }
        (false, Some(zp)) => {
            zp.expect(&[Dtype::I32], 2)?;
            zp.expect_shape(
                &[fixed_words(out, bits), ng],
                &format!("{out} outputs x {ng} groups at {bits} bits"),
            )?;
            let words = zp.words();
            let mut zeros = vec![0u8; out * ng];
            for g in 0..ng {
                let column: Vec<u32> = words.iter().skip(g).step_by(ng).copied().collect();
                for (o, z) in unpack_fixed(&column, bits, out).into_iter().enumerate() {
                    zeros[o * ng + g] = z;
                }
            }
            zeros
        }
    };
    let g_idx = match t.g_idx {
        Some(g) => {
            g.expect(&[Dtype::I32, Dtype::I64], 1)?;
            g.expect_shape(&[inp], "one group per input column")?;
            let v = g.ints();
            if let Some(bad) = v.iter().find(|&&x| x < 0 || x as usize >= ng) {
                return Err(g.error(format!("group {bad} is outside 0..{ng}")));
            }
            Some(v.into_iter().map(|x| x as u32).collect::<Vec<_>>())
        }
        None if inp.div_ceil(group_size) == ng => None,
        None => {
            return Err(t.scale.error(format!(
                "{ng} groups, but {inp} inputs in groups of {group_size} make {}",
                inp.div_ceil(group_size)
            )));
        }
    };
    let codes = if cfg.code_type == CodeType::Fp8E4M3 {
        // The E4M3 bytes are the codes; NaN bytes are refused by `validate` below.
        t.packed.data.to_vec()
    } else if cfg.format.one_byte_per_weight() {
        let offset = 1i16 << (bits - 1);
        let maxq = (1i16 << bits) - 1;
        let mut codes = Vec::with_capacity(out * inp);
        for (j, &b) in t.packed.data.iter().enumerate() {
            let c = b as i8 as i16 + offset;
            if !(0..=maxq).contains(&c) {
                return Err(t.packed.error(format!(
                    "value {} at [{}, {}] is outside the {bits}-bit range",
                    b as i8,
                    j / inp,
                    j % inp
                )));
            }
            codes.push(c as u8);
        }
        codes
    } else {
        let words = t.packed.words();
        let cols = t.packed.shape[1];
        let mut codes = vec![0u8; out * inp];
        for (o, row) in codes.chunks_exact_mut(inp).enumerate() {
            let w = &words[o * cols..(o + 1) * cols];
            for (j, c) in row.iter_mut().enumerate() {
                *c = fixed_get(w, bits, j);
            }
        }
        codes
    };
    let scheme = QuantScheme::stored(bits, group_size, inp, cfg.symmetric, cfg.code_type)
        .map_err(|e| t.packed.error(e.to_string()))?;
    let mut q = QuantizedWeight {
        shape: [out, inp],
        scheme,
        codes,
        scales: row_scales(cfg, t.scale, out),
        zeros,
        g_idx,
        perm: None,
    };
    if q.g_idx.is_some() && q.contiguous() && inp.div_ceil(group_size) == ng {
        q.g_idx = None;
    }
    q.validate(&t.packed.name)?;
    Ok(q)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quantized::bits::Rng;
    use crate::quantized::testing::{explicit, random_codes};
    use microllm_core::ActivationQuant;
    use serde_json::json;
    use std::path::Path;

    fn cfg(q: &QuantizedWeight) -> CtConfig {
        CtConfig {
            bits: q.scheme.bits,
            symmetric: q.scheme.symmetric,
            group_size: Some(q.group_len()),
            block_rows: None,
            actorder: q.g_idx.is_some(),
            format: CtFormat::PackQuantized,
            activations: None,
            code_type: CodeType::Int,
        }
    }

    fn find<'t>(t: &'t [RawTensor<'static>], s: &str) -> Option<&'t RawTensor<'static>> {
        t.iter().find(|x| x.name.ends_with(&format!(".{s}")))
    }

    fn round_trip(q: &QuantizedWeight) -> Result<QuantizedWeight> {
        let t = encode("m", q);
        decode(
            &cfg(q),
            &CtTensors {
                packed: find(&t, "weight_packed").unwrap(),
                scale: find(&t, "weight_scale").unwrap(),
                shape: find(&t, "weight_shape"),
                zero_point: find(&t, "weight_zero_point"),
                g_idx: find(&t, "weight_g_idx"),
            },
        )
    }

    #[test]
    fn random_weights_round_trip_exactly() {
        let mut rng = Rng(17);
        for case in 0..400 {
            let bits = [2u8, 3, 4, 8][case % 4];
            let (sym, act) = (case % 8 < 4, case % 3 == 0);
            let q = random_codes(&mut rng, bits, sym, act);
            let back = round_trip(&q).unwrap();
            assert_eq!(explicit(back.clone()), explicit(q.clone()), "case {case}");
            assert_eq!(back.dequantize_vec(), q.dequantize_vec());
        }
    }

    /// Eight 4-bit codes per word along the input, the symmetric zero implied, an asymmetric
    /// zero point packed down the output dimension.
    #[test]
    fn layout_matches_the_reference() {
        let mut rng = Rng(1);
        let mut q = random_codes(&mut rng, 4, false, false);
        q.shape = [10, 16];
        q.scheme.group_size = Some(8);
        q.codes = (0..160).map(|i| (i % 16) as u8).collect();
        q.scales = vec![1.0; 20];
        q.zeros = (0..20).map(|i| (i / 2) as u8).collect();
        let t = encode("m", &q);
        let packed = find(&t, "weight_packed").unwrap();
        assert_eq!(packed.shape, vec![10, 2]);
        assert_eq!(packed.words()[0], 0x7654_3210);
        let zp = find(&t, "weight_zero_point").unwrap();
        assert_eq!(zp.shape, vec![2, 2]);
        // Group 0 of outputs 0..8 has zeros 0..8.
        assert_eq!(zp.words()[0], 0x7654_3210);
        assert_eq!(find(&t, "weight_shape").unwrap().ints(), vec![10, 16]);
        q.scheme.symmetric = true;
        q.zeros = vec![8; 20];
        assert!(find(&encode("m", &q), "weight_zero_point").is_none());
    }

    #[test]
    fn missing_zero_point_and_bad_shapes_name_the_tensor() {
        let mut rng = Rng(2);
        let q = random_codes(&mut rng, 4, false, false);
        let t = encode("model.layers.1.self_attn.k_proj", &q);
        let mut c = cfg(&q);
        let base = CtTensors {
            packed: find(&t, "weight_packed").unwrap(),
            scale: find(&t, "weight_scale").unwrap(),
            shape: find(&t, "weight_shape"),
            zero_point: None,
            g_idx: None,
        };
        let err = decode(&c, &base).unwrap_err().to_string();
        assert!(
            err.contains("k_proj.weight_packed") && err.contains("zero_point"),
            "{err}"
        );
        c.bits = 2;
        let err = decode(&c, &base).unwrap_err().to_string();
        assert!(err.contains("k_proj.weight_packed"), "{err}");
    }

    /// int8 storage (W8A8's `int-quantized`, weight-only `naive-quantized`): codes of any
    /// width round-trip, and the W8A8 config reads back with its activation scheme.
    #[test]
    fn int_quantized_round_trips_and_declares_w8a8() {
        let mut rng = Rng(5);
        for case in 0..120 {
            let bits = [8u8, 4, 3][case % 3];
            let q = random_codes(&mut rng, bits, case % 2 == 0, false);
            let t = encode_as(CtFormat::IntQuantized, "m", &q);
            assert_eq!(find(&t, "weight").unwrap().dtype, Dtype::I8);
            let mut c = cfg(&q);
            c.format = CtFormat::IntQuantized;
            let back = decode(
                &c,
                &CtTensors {
                    packed: find(&t, "weight").unwrap(),
                    scale: find(&t, "weight_scale").unwrap(),
                    shape: None,
                    zero_point: find(&t, "weight_zero_point"),
                    g_idx: None,
                },
            )
            .unwrap();
            assert_eq!(explicit(back), explicit(q.clone()), "case {case}");
        }
        let p = Path::new("config.json");
        let w8a8 = CtConfig {
            bits: 8,
            symmetric: true,
            group_size: None,
            block_rows: None,
            actorder: false,
            format: CtFormat::IntQuantized,
            activations: Some(ActivationQuant::Int8PerToken),
            code_type: CodeType::Int,
        };
        let v = w8a8.to_json(&["lm_head".into()]);
        assert_eq!(v["format"], "int-quantized");
        assert_eq!(CtConfig::parse(&v, p).unwrap(), w8a8);
        let mut stat = v.clone();
        stat["config_groups"]["group_0"]["input_activations"]["dynamic"] = json!(false);
        let err = CtConfig::parse(&stat, p).unwrap_err().to_string();
        assert!(
            err.contains("group_0.input_activations") && err.contains("dynamic"),
            "{err}"
        );
        let mut packed = v;
        packed["format"] = json!(PACK_QUANTIZED);
        packed["config_groups"]["group_0"]["format"] = json!(PACK_QUANTIZED);
        let err = CtConfig::parse(&packed, p).unwrap_err().to_string();
        assert!(err.contains("input_activations"), "{err}");
    }

    /// FP8: E4M3 bytes stored as `F8_E4M3` in `float-quantized` (W8A8, FP8 activations) and
    /// `naive-quantized` (weights only) round-trip exactly; the configs read back; NaN bytes,
    /// FP8 weights in a packed format and non-8-bit float weights are refused by name.
    /// The `block` strategy (llm-compressor's FP8_BLOCK): one scale per block of rows and
    /// columns, partial blocks at the edges; each weight is its code times its block's scale.
    #[test]
    fn block_scales_cover_their_rows_and_columns() {
        let (out, inp) = (5, 7);
        // E4M3 0x38 is 1.0, 0x40 is 2.0.
        let codes: Vec<u8> = (0..out * inp)
            .map(|i| if i % 2 == 0 { 0x38 } else { 0x40 })
            .collect();
        // Blocks of 2 x 4: ceil(5/2) = 3 block rows, ceil(7/4) = 2 block columns.
        let block_scales = [1.0f32, 10.0, 100.0, 1000.0, 0.5, 0.25];
        let scale_bytes: Vec<u8> = block_scales.iter().flat_map(|v| v.to_le_bytes()).collect();
        let weight = RawTensor::owned("m.weight".into(), Dtype::F8_E4M3, vec![out, inp], codes);
        let scale = RawTensor::owned("m.weight_scale".into(), Dtype::F32, vec![3, 2], scale_bytes);
        let c = CtConfig {
            bits: 8,
            symmetric: true,
            group_size: Some(4),
            block_rows: Some(2),
            actorder: false,
            format: CtFormat::FloatQuantized,
            activations: None,
            code_type: CodeType::Fp8E4M3,
        };
        let t = CtTensors {
            packed: &weight,
            scale: &scale,
            shape: None,
            zero_point: None,
            g_idx: None,
        };
        let w = decode(&c, &t).unwrap().dequantize_vec();
        for r in 0..out {
            for k in 0..inp {
                let code = if (r * inp + k) % 2 == 0 { 1.0 } else { 2.0 };
                let want = code * block_scales[(r / 2) * 2 + k / 4];
                assert_eq!(w[r * inp + k], want, "[{r}, {k}]");
            }
        }
        // Scales of another shape are named with the blocks expected.
        let wrong = RawTensor::owned("m.weight_scale".into(), Dtype::F32, vec![5, 2], vec![0; 40]);
        let err = decode(&c, &CtTensors { scale: &wrong, ..t })
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("m.weight_scale") && err.contains("2 x 4"),
            "{err}"
        );
    }

    #[test]
    fn fp8_round_trips_and_declares_its_formats() {
        let p = Path::new("config.json");
        let mut rng = Rng(23);
        for (format, activations) in [
            (CtFormat::FloatQuantized, Some(ActivationQuant::Fp8PerToken)),
            (CtFormat::NaiveQuantized, None),
        ] {
            let mut q = random_codes(&mut rng, 8, true, false);
            q.scheme = QuantScheme::fp8(q.scheme.group_size)
                .unwrap()
                .with_f16_scales();
            q.zeros.fill(0);
            for c in q.codes.iter_mut().filter(|c| **c & 0x7F == 0x7F) {
                *c = 0x7E;
            }
            let t = encode_as(format, "m", &q);
            let weight = find(&t, "weight").unwrap();
            assert_eq!(weight.dtype, Dtype::F8_E4M3);
            assert!(find(&t, "weight_zero_point").is_none());
            let c = CtConfig {
                format,
                activations,
                code_type: CodeType::Fp8E4M3,
                ..cfg(&q)
            };
            let tensors = |weight| CtTensors {
                packed: weight,
                scale: find(&t, "weight_scale").unwrap(),
                shape: None,
                zero_point: None,
                g_idx: None,
            };
            let back = decode(&c, &tensors(weight)).unwrap();
            assert_eq!(back.dequantize_vec(), q.dequantize_vec());
            assert_eq!(back.codes, q.codes);
            let v = c.to_json(&[]);
            assert_eq!(v["format"], format.name());
            assert_eq!(v["config_groups"]["group_0"]["weights"]["type"], "float");
            assert_eq!(CtConfig::parse(&v, p).unwrap(), c);

            let mut nan = weight.clone();
            nan.data.to_mut()[0] = 0xFF;
            let err = decode(&c, &tensors(&nan)).unwrap_err().to_string();
            assert!(err.contains("m.weight") && err.contains("NaN"), "{err}");
        }
    }
}
