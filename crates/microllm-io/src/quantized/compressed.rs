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

use std::path::Path;

use microllm_core::{ActivationQuant, CodeType, Error, Result};
use safetensors::Dtype;
use serde_json::{Value, json};

use super::bits::{fixed_get, fixed_words, pack_fixed, unpack_fixed};
use super::{LinearCodes, RawTensor, f16_bytes, words_bytes};

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

/// The compression format microllm reads and writes for weight-only schemes.
pub const PACK_QUANTIZED: &str = "pack-quantized";

/// How the quantized weights are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CtFormat {
    /// Codes packed into int32 words (`weight_packed`).
    PackQuantized,
    /// One int8 per weight, the config quantizing activations too (W8A8).
    IntQuantized,
    /// One int8 (or FP8) per weight, weights only.
    NaiveQuantized,
    /// One FP8 E4M3 per weight, the config quantizing activations to FP8 too.
    FloatQuantized,
}

impl CtFormat {
    pub fn name(self) -> &'static str {
        match self {
            CtFormat::PackQuantized => PACK_QUANTIZED,
            CtFormat::IntQuantized => "int-quantized",
            CtFormat::NaiveQuantized => "naive-quantized",
            CtFormat::FloatQuantized => "float-quantized",
        }
    }

    fn parse(name: &str) -> Option<Self> {
        [
            CtFormat::PackQuantized,
            CtFormat::IntQuantized,
            CtFormat::NaiveQuantized,
            CtFormat::FloatQuantized,
        ]
        .into_iter()
        .find(|f| f.name() == name)
    }

    /// The format a `quantization_config` declares (pack-quantized when it says nothing
    /// microllm writes).
    pub fn of_config(qc: &Value) -> Self {
        qc.get("format")
            .and_then(Value::as_str)
            .and_then(Self::parse)
            .unwrap_or(CtFormat::PackQuantized)
    }

    /// Whether each weight is one byte (`weight`), not packed words.
    pub fn one_byte_per_weight(self) -> bool {
        self != CtFormat::PackQuantized
    }

    /// The format compressed-tensors gives a scheme: one byte per weight when activations are
    /// quantized (`int-quantized`, `float-quantized`) or the weights are FP8
    /// (`naive-quantized`), else packed words.
    pub fn for_scheme(code_type: CodeType, activations: bool) -> Self {
        match (code_type, activations) {
            (CodeType::Int, true) => CtFormat::IntQuantized,
            (CodeType::Fp8E4M3, true) => CtFormat::FloatQuantized,
            (CodeType::Fp8E4M3, false) => CtFormat::NaiveQuantized,
            (CodeType::Int, false) => CtFormat::PackQuantized,
        }
    }
}

/// The weight scheme of a compressed-tensors checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct CtConfig {
    pub bits: u8,
    pub symmetric: bool,
    /// `None` for the `channel` strategy.
    pub group_size: Option<usize>,
    /// `actorder: "group"`: `weight_g_idx` is stored.
    pub actorder: bool,
    pub format: CtFormat,
    /// Quantization of every linear's input (W8A8: int-quantized, float-quantized).
    pub activations: Option<ActivationQuant>,
    /// `weights.type`: `int`, or `float` (FP8 E4M3).
    pub code_type: CodeType,
}

impl CtConfig {
    /// Reads `quantization_config` (known to say `quant_method: compressed-tensors`). Formats
    /// and schemes microllm does not read are errors naming the key.
    pub fn parse(qc: &Value, path: &Path) -> Result<Self> {
        let err =
            |k: &str, msg: String| Error::config(path, format!("quantization_config.{k}"), msg);
        let format = qc
            .get("format")
            .and_then(Value::as_str)
            .ok_or_else(|| err("format", "missing or not a string".into()))?;
        let format = CtFormat::parse(format).ok_or_else(|| {
            err(
                "format",
                format!(
                    "compressed-tensors format `{format}` is not one microllm reads (it reads \
                     `{PACK_QUANTIZED}`, `int-quantized`, `float-quantized` and \
                     `naive-quantized`)"
                ),
            )
        })?;
        // Pruned and quantized checkpoints declare their sparsity beside the quantization;
        // with `dense` storage the weights are the quantized ones as they are, any other
        // sparse compressor would have to be undone first.
        if let Some(sparse) = qc
            .get("sparsity_config")
            .and_then(|s| s.get("format"))
            .and_then(Value::as_str)
            && sparse != "dense"
        {
            return Err(err(
                "sparsity_config.format",
                format!(
                    "`{sparse}` on quantized weights (microllm reads sparse + quantized \
                     checkpoints stored `dense`)"
                ),
            ));
        }
        let groups = qc
            .get("config_groups")
            .and_then(Value::as_object)
            .ok_or_else(|| err("config_groups", "missing or not an object".into()))?;
        let (gname, group) = match groups.iter().collect::<Vec<_>>()[..] {
            [one] => one,
            _ => {
                return Err(err(
                    "config_groups",
                    format!(
                        "{} groups; microllm reads checkpoints with one scheme for every linear",
                        groups.len()
                    ),
                ));
            }
        };
        let at = |k: &str| format!("config_groups.{gname}.{k}");
        if let Some(f) = group.get("format").and_then(Value::as_str)
            && f != format.name()
        {
            return Err(err(
                &at("format"),
                format!("format `{f}` is not the checkpoint's `{}`", format.name()),
            ));
        }
        let activations = match group.get("input_activations") {
            None | Some(Value::Null) => None,
            Some(a) => match format {
                CtFormat::IntQuantized | CtFormat::FloatQuantized => Some(
                    activation_scheme(a, format).map_err(|m| err(&at("input_activations"), m))?,
                ),
                _ => {
                    return Err(err(
                        &at("input_activations"),
                        format!(
                            "activations quantized in a `{}` checkpoint (microllm reads them \
                             with `int-quantized` and `float-quantized`)",
                            format.name()
                        ),
                    ));
                }
            },
        };
        let w = group
            .get("weights")
            .and_then(Value::as_object)
            .ok_or_else(|| err(&at("weights"), "missing or not an object".into()))?;
        let code_type = match w.get("type").and_then(Value::as_str).unwrap_or("int") {
            "int" => CodeType::Int,
            "float" => CodeType::Fp8E4M3,
            ty => {
                return Err(err(
                    &at("weights.type"),
                    format!("`{ty}` (microllm reads `int` and `float`)"),
                ));
            }
        };
        let fits = match code_type {
            CodeType::Fp8E4M3 => {
                matches!(format, CtFormat::FloatQuantized | CtFormat::NaiveQuantized)
            }
            CodeType::Int => format != CtFormat::FloatQuantized,
        };
        if !fits {
            return Err(err(
                &at("weights.type"),
                format!(
                    "`{}` weights in a `{}` checkpoint (FP8 weights are `float-quantized` or \
                     `naive-quantized`)",
                    if code_type == CodeType::Int {
                        "int"
                    } else {
                        "float"
                    },
                    format.name()
                ),
            ));
        }
        let bits = w
            .get("num_bits")
            .and_then(Value::as_u64)
            .filter(|b| u8::try_from(*b).is_ok_and(|b| microllm_core::CODE_BITS.contains(&b)))
            .ok_or_else(|| err(&at("weights.num_bits"), "missing or not in 2..=8".into()))?;
        let symmetric = w.get("symmetric").and_then(Value::as_bool).unwrap_or(true);
        if code_type == CodeType::Fp8E4M3 && (bits != 8 || !symmetric) {
            return Err(err(
                &at("weights"),
                format!(
                    "float weights of {bits} bits, symmetric: {symmetric} (microllm reads FP8 \
                     E4M3: 8 bits, symmetric)"
                ),
            ));
        }
        let strategy = w.get("strategy").and_then(Value::as_str).unwrap_or("group");
        let group_size = match strategy {
            "channel" => None,
            "group" => Some(
                w.get("group_size")
                    .and_then(Value::as_u64)
                    .filter(|&g| g > 0)
                    .ok_or_else(|| {
                        err(&at("weights.group_size"), "missing or not positive".into())
                    })? as usize,
            ),
            other => {
                return Err(err(
                    &at("weights.strategy"),
                    format!("`{other}` (microllm reads `group` and `channel`)"),
                ));
            }
        };
        // compressed-tensors' `ActivationOrdering`: `group` (alias `dynamic`, or `true`)
        // reorders the groups and stores `weight_g_idx`; `weight` (alias `static`, what
        // llm-compressor writes by default) reorders only the solve, so the groups stay
        // contiguous and nothing extra is stored. Values are read case-insensitively, as there.
        let actorder = match w.get("actorder") {
            None | Some(Value::Null) | Some(Value::Bool(false)) => false,
            Some(Value::Bool(true)) => true,
            Some(Value::String(s)) if matches!(s.to_lowercase().as_str(), "group" | "dynamic") => {
                true
            }
            Some(Value::String(s)) if matches!(s.to_lowercase().as_str(), "weight" | "static") => {
                false
            }
            Some(other) => {
                return Err(err(
                    &at("weights.actorder"),
                    format!("unknown value {other}"),
                ));
            }
        };
        if actorder && format.one_byte_per_weight() {
            return Err(err(
                &at("weights.actorder"),
                format!("`{}` stores no group index", format.name()),
            ));
        }
        Ok(Self {
            bits: bits as u8,
            symmetric,
            group_size,
            actorder,
            format,
            activations,
            code_type,
        })
    }

    /// `quantization_config` as llm-compressor writes it for the scheme.
    pub fn to_json(&self, ignore: &[String]) -> Value {
        let activations = self.activations.map(|a| {
            json!({
                "num_bits": 8,
                "type": activation_type(a),
                "symmetric": true,
                "strategy": "token",
                "dynamic": true,
                "group_size": null,
                "block_structure": null,
                "actorder": null,
                "observer": null,
                "observer_kwargs": {},
            })
        });
        json!({
            "quant_method": "compressed-tensors",
            "format": self.format.name(),
            "quantization_status": "compressed",
            "config_groups": {
                "group_0": {
                    "targets": ["Linear"],
                    "weights": {
                        "num_bits": self.bits,
                        "type": code_type_name(self.code_type),
                        "symmetric": self.symmetric,
                        "strategy": if self.group_size.is_some() { "group" } else { "channel" },
                        "group_size": self.group_size,
                        "actorder": if self.actorder { json!("group") } else { Value::Null },
                        "dynamic": false,
                        "observer": "minmax",
                        "observer_kwargs": {},
                        "block_structure": null,
                    },
                    "input_activations": activations,
                    "output_activations": null,
                    "format": self.format.name(),
                }
            },
            "ignore": ignore,
            "kv_cache_scheme": null,
            "global_compression_ratio": null,
            "sparsity_config": {},
            "version": "0.10.2",
        })
    }
}

/// compressed-tensors' `type` of codes.
fn code_type_name(t: CodeType) -> &'static str {
    match t {
        CodeType::Int => "int",
        CodeType::Fp8E4M3 => "float",
    }
}

/// compressed-tensors' `type` of an activation scheme.
fn activation_type(a: ActivationQuant) -> &'static str {
    match a {
        ActivationQuant::Int8PerToken => "int",
        ActivationQuant::Fp8PerToken => "float",
    }
}

/// The activation scheme of `input_activations` in a checkpoint of `format` (W8A8's dynamic
/// per-token int8, or FP8 in `float-quantized`), or what is not read.
fn activation_scheme(a: &Value, format: CtFormat) -> std::result::Result<ActivationQuant, String> {
    let field = |k: &str| a.get(k).cloned().unwrap_or(Value::Null);
    let scheme = if format == CtFormat::FloatQuantized {
        ActivationQuant::Fp8PerToken
    } else {
        ActivationQuant::Int8PerToken
    };
    let want = [
        ("num_bits", json!(8)),
        ("type", json!(activation_type(scheme))),
        ("symmetric", json!(true)),
        ("strategy", json!("token")),
        ("dynamic", json!(true)),
    ];
    for (key, value) in want {
        if field(key) != value {
            return Err(format!(
                "`{key}: {}`: microllm runs dynamic per-token symmetric 8-bit activations in a \
                 `{}` checkpoint (`{key}: {value}`)",
                field(key),
                format.name()
            ));
        }
    }
    Ok(scheme)
}

/// The tensors of one linear in `format`.
pub fn encode_as(format: CtFormat, prefix: &str, q: &LinearCodes) -> Vec<RawTensor<'static>> {
    match format {
        CtFormat::PackQuantized => encode(prefix, q),
        CtFormat::IntQuantized | CtFormat::NaiveQuantized | CtFormat::FloatQuantized => {
            encode_int(prefix, q)
        }
    }
}

/// One signed int8 (or FP8 E4M3 byte) per weight, f32 scales, int8 zero points when
/// asymmetric.
fn encode_int(prefix: &str, q: &LinearCodes) -> Vec<RawTensor<'static>> {
    let [out, inp] = q.shape;
    let offset = 1i16 << (q.bits - 1);
    let signed = |c: u8| ((c as i16 - offset) as i8) as u8;
    let name = |s: &str| format!("{prefix}.{s}");
    let weight = match q.code_type {
        CodeType::Int => (Dtype::I8, q.codes.iter().map(|&c| signed(c)).collect()),
        CodeType::Fp8E4M3 => (Dtype::F8_E4M3, q.codes.clone()),
    };
    let mut t = vec![
        RawTensor::owned(name("weight"), weight.0, vec![out, inp], weight.1),
        RawTensor::owned(
            name("weight_scale"),
            Dtype::F32,
            vec![out, q.n_groups],
            q.scales.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ),
    ];
    if !q.symmetric {
        t.push(RawTensor::owned(
            name("weight_zero_point"),
            Dtype::I8,
            vec![out, q.n_groups],
            q.zeros.iter().map(|&z| signed(z)).collect(),
        ));
    }
    t
}

/// The compressed-tensors tensors of one linear, named `{prefix}.weight_packed` etc.
pub fn encode(prefix: &str, q: &LinearCodes) -> Vec<RawTensor<'static>> {
    let [out, inp] = q.shape;
    let (bits, ng) = (q.bits, q.n_groups);
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
    if !q.symmetric {
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
    t.scale
        .expect_shape(&[out, ng], &format!("{out} outputs from weight_shape"))?;
    Ok([out, inp])
}

/// Unpacks one linear, checking every shape; errors name the tensor.
pub fn decode(cfg: &CtConfig, t: &CtTensors<'_, '_>) -> Result<LinearCodes> {
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
    let mut q = LinearCodes {
        shape: [out, inp],
        bits,
        group_size,
        symmetric: cfg.symmetric,
        codes,
        scales: t.scale.floats(),
        zeros,
        g_idx,
        n_groups: ng,
        code_type: cfg.code_type,
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

    fn cfg(q: &LinearCodes) -> CtConfig {
        CtConfig {
            bits: q.bits,
            symmetric: q.symmetric,
            group_size: Some(q.group_size),
            actorder: q.g_idx.is_some(),
            format: CtFormat::PackQuantized,
            activations: None,
            code_type: CodeType::Int,
        }
    }

    fn find<'t>(t: &'t [RawTensor<'static>], s: &str) -> Option<&'t RawTensor<'static>> {
        t.iter().find(|x| x.name.ends_with(&format!(".{s}")))
    }

    fn round_trip(q: &LinearCodes) -> Result<LinearCodes> {
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
            assert_eq!(back.dequantize(), q.dequantize());
        }
    }

    /// Eight 4-bit codes per word along the input, the symmetric zero implied, an asymmetric
    /// zero point packed down the output dimension.
    #[test]
    fn layout_matches_the_reference() {
        let mut rng = Rng(1);
        let mut q = random_codes(&mut rng, 4, false, false);
        q.shape = [10, 16];
        q.group_size = 8;
        q.n_groups = 2;
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
        q.symmetric = true;
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

    /// 4-bit symmetric groups of 32, no act-order: the scheme the config tests edit.
    fn w4_g32() -> CtConfig {
        CtConfig {
            bits: 4,
            symmetric: true,
            group_size: Some(32),
            actorder: false,
            format: CtFormat::PackQuantized,
            activations: None,
            code_type: CodeType::Int,
        }
    }

    #[test]
    fn unread_formats_and_schemes_name_the_key() {
        let p = Path::new("config.json");
        let cfg = w4_g32();
        let mut v = cfg.to_json(&["lm_head".into()]);
        assert_eq!(CtConfig::parse(&v, p).unwrap(), cfg);
        v["format"] = json!("sparse-bitmask");
        let err = CtConfig::parse(&v, p).unwrap_err().to_string();
        assert!(
            err.contains("quantization_config.format") && err.contains("sparse-bitmask"),
            "{err}"
        );
        let mut v = cfg.to_json(&[]);
        v["config_groups"]["group_0"]["weights"]["type"] = json!("float");
        let err = CtConfig::parse(&v, p).unwrap_err().to_string();
        assert!(err.contains("config_groups.group_0.weights.type"), "{err}");
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
    #[test]
    fn fp8_round_trips_and_declares_its_formats() {
        let p = Path::new("config.json");
        let mut rng = Rng(23);
        for (format, activations) in [
            (CtFormat::FloatQuantized, Some(ActivationQuant::Fp8PerToken)),
            (CtFormat::NaiveQuantized, None),
        ] {
            let mut q = random_codes(&mut rng, 8, true, false);
            q.code_type = CodeType::Fp8E4M3;
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
            assert_eq!(back.dequantize(), q.dequantize());
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
        let w4 = w4_g32();
        let mut v = w4.to_json(&[]);
        v["config_groups"]["group_0"]["weights"]["type"] = json!("float");
        let err = CtConfig::parse(&v, p).unwrap_err().to_string();
        assert!(
            err.contains("weights.type") && err.contains("pack-quantized"),
            "{err}"
        );
        v["format"] = json!("naive-quantized");
        v["config_groups"]["group_0"]["format"] = json!("naive-quantized");
        let err = CtConfig::parse(&v, p).unwrap_err().to_string();
        assert!(
            err.contains("group_0.weights") && err.contains("4 bits"),
            "{err}"
        );
    }

    /// Every spelling of compressed-tensors' activation ordering, llm-compressor's default
    /// `"static"` included (it was refused as an unknown value).
    #[test]
    fn every_actorder_value_is_read() {
        let p = Path::new("config.json");
        let cfg = w4_g32();
        for (value, g_idx) in [
            (json!("static"), false),
            (json!("weight"), false),
            (json!("Static"), false),
            (json!("group"), true),
            (json!("dynamic"), true),
            (json!(true), true),
            (json!(false), false),
            (Value::Null, false),
        ] {
            let mut v = cfg.to_json(&[]);
            v["config_groups"]["group_0"]["weights"]["actorder"] = value.clone();
            let got = CtConfig::parse(&v, p).unwrap();
            assert_eq!(got.actorder, g_idx, "{value}");
        }
        let mut v = cfg.to_json(&[]);
        v["config_groups"]["group_0"]["weights"]["actorder"] = json!("sideways");
        let err = CtConfig::parse(&v, p).unwrap_err().to_string();
        assert!(
            err.contains("weights.actorder") && err.contains("sideways"),
            "{err}"
        );
    }
}
