//! compressed-tensors' `quantization_config`: which scheme each linear was quantized with.
//!
//! A checkpoint has one or more config groups, each a weight scheme (bits, symmetry, grouping,
//! integer or FP8 codes), an optional activation scheme and the `targets` it applies to
//! (`Linear`, `re:` regular expressions over module names, or names); a `mixed-precision`
//! checkpoint gives each group its own storage format. [`CtConfig::parse_groups`] reads them
//! all, refusing by key what microllm would otherwise get wrong: unknown formats and types,
//! rotated weights (`transform_config`), a quantized KV cache (`kv_cache_scheme`), sparse
//! compressors over quantized weights, and groups that quantize activations differently.
//! [`CtConfig::to_json`] writes the one-group form llm-compressor writes.

use std::path::Path;

use microllm_core::{ActivationQuant, CodeType, Error, Result};
use serde_json::{Value, json};

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
    /// Columns per scale: `None` for the `channel` strategy; a block's columns for `block`.
    pub group_size: Option<usize>,
    /// Rows per scale for the `block` strategy (`block_structure: [rows, columns]`, one scale
    /// per block; llm-compressor's FP8_BLOCK uses 128 x 128); `None` for one scale per row.
    pub block_rows: Option<usize>,
    /// `actorder: "group"`: `weight_g_idx` is stored.
    pub actorder: bool,
    pub format: CtFormat,
    /// Quantization of every linear's input (W8A8: int-quantized, float-quantized).
    pub activations: Option<ActivationQuant>,
    /// `weights.type`: `int`, or `float` (FP8 E4M3).
    pub code_type: CodeType,
}

impl CtConfig {
    /// Reads a `quantization_config` with one config group (what microllm writes). Formats and
    /// schemes microllm does not read are errors naming the key.
    pub fn parse(qc: &Value, path: &Path) -> Result<Self> {
        let mut groups = Self::parse_groups(qc, path)?;
        if groups.len() != 1 {
            return Err(Error::config(
                path,
                "quantization_config.config_groups",
                format!("{} groups where one was expected", groups.len()),
            ));
        }
        Ok(groups.remove(0).config)
    }

    /// Reads `quantization_config` (known to say `quant_method: compressed-tensors`): every
    /// config group, in file order. Formats, schemes and settings microllm does not apply are
    /// errors naming the key.
    pub fn parse_groups(qc: &Value, path: &Path) -> Result<Vec<CtGroup>> {
        let err =
            |k: &str, msg: String| Error::config(path, format!("quantization_config.{k}"), msg);
        let format = qc
            .get("format")
            .and_then(Value::as_str)
            .ok_or_else(|| err("format", "missing or not a string".into()))?;
        // `mixed-precision`: each group names its own format.
        let format = match format {
            MIXED_PRECISION => None,
            name => Some(CtFormat::parse(name).ok_or_else(|| unread_format(&err, "format", name))?),
        };
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
        // Rotations (SpinQuant, QuIP) change what the stored weights mean, and a quantized KV
        // cache changes how attention runs: neither is applied here, so neither is ignored.
        check_keys(qc, "", TOP_KEYS, &err)?;
        if let Some(t) = qc.get("transform_config").filter(|t| !is_empty(t)) {
            return Err(err(
                "transform_config",
                format!(
                    "{t}: the weights are stored rotated (SpinQuant / QuIP transforms), which \
                     microllm does not undo"
                ),
            ));
        }
        if let Some(kv) = qc.get("kv_cache_scheme").filter(|t| !is_empty(t)) {
            return Err(err(
                "kv_cache_scheme",
                format!("{kv}: microllm does not quantize the KV cache as the checkpoint asks"),
            ));
        }
        let groups = qc
            .get("config_groups")
            .and_then(Value::as_object)
            .filter(|g| !g.is_empty())
            .ok_or_else(|| err("config_groups", "missing, empty or not an object".into()))?;
        let mut parsed = Vec::with_capacity(groups.len());
        for (gname, group) in groups {
            let at = |k: &str| format!("config_groups.{gname}.{k}");
            let targets = group
                .get("targets")
                .and_then(Value::as_array)
                .map(|t| {
                    t.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_else(|| vec!["Linear".to_string()]);
            let matcher = Targets::new(&targets).map_err(|m| err(&at("targets"), m))?;
            let config = Self::parse_group(group, format, &at, &err)?;
            parsed.push(CtGroup {
                name: gname.clone(),
                targets: matcher,
                config,
            });
        }
        let activations: Vec<_> = parsed.iter().map(|g| g.config.activations).collect();
        if activations.windows(2).any(|w| w[0] != w[1]) {
            return Err(err(
                "config_groups",
                "the groups quantize activations differently (microllm applies one activation \
                 scheme to every linear)"
                    .into(),
            ));
        }
        Ok(parsed)
    }

    /// One config group; `format` is the checkpoint's (`None` for `mixed-precision`, where the
    /// group names its own), `at` the key path of a field of this group.
    fn parse_group(
        group: &Value,
        format: Option<CtFormat>,
        at: &dyn Fn(&str) -> String,
        err: &dyn Fn(&str, String) -> Error,
    ) -> Result<Self> {
        let own = group.get("format").and_then(Value::as_str);
        let format = match (own, format) {
            (Some(f), Some(top)) if f != top.name() => {
                return Err(err(
                    &at("format"),
                    format!("format `{f}` is not the checkpoint's `{}`", top.name()),
                ));
            }
            (_, Some(top)) => top,
            (Some(f), None) => {
                CtFormat::parse(f).ok_or_else(|| unread_format(err, &at("format"), f))?
            }
            (None, None) => {
                return Err(err(
                    &at("format"),
                    "missing: a mixed-precision checkpoint names each group's format".into(),
                ));
            }
        };
        check_keys(group, &at(""), GROUP_KEYS, err)?;
        if let Some(a) = group.get("input_activations").filter(|a| !a.is_null()) {
            check_keys(a, &at("input_activations."), ARGS_KEYS, err)?;
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
        check_keys(&group["weights"], &at("weights."), ARGS_KEYS, err)?;
        if w.get("dynamic")
            .is_some_and(|d| d != &json!(false) && !d.is_null())
        {
            return Err(err(
                &at("weights.dynamic"),
                format!(
                    "{}: microllm reads weights quantized once, stored",
                    w["dynamic"]
                ),
            ));
        }
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
                    code_type_name(code_type),
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
        let (group_size, block_rows) = weight_grouping(w, symmetric, at, err)?;
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
            block_rows,
            actorder,
            format,
            activations,
            code_type,
        })
    }

    /// `quantization_config` as llm-compressor writes it for the scheme.
    pub fn to_json(&self, ignore: &[String]) -> Value {
        let activations = self.activations.map(|a| {
            let (strategy, group_size) = activation_strategy(a);
            json!({
                "num_bits": 8,
                "type": activation_type(a),
                "symmetric": true,
                "strategy": strategy,
                "dynamic": true,
                "group_size": group_size,
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
                        "strategy": match (self.block_rows, self.group_size) {
                            (Some(_), _) => "block",
                            (None, Some(_)) => "group",
                            (None, None) => "channel",
                        },
                        "group_size": if self.block_rows.is_some() { None } else { self.group_size },
                        "actorder": if self.actorder { json!("group") } else { Value::Null },
                        "dynamic": false,
                        "observer": "minmax",
                        "observer_kwargs": {},
                        "block_structure": self.block_rows.zip(self.group_size).map(|(r, c)| [r, c]),
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

/// How a group's weights share scales, from `strategy` (and `group_size` / `block_structure`):
/// `(columns per scale, rows per scale)`, `None` meaning a whole row / one row. `channel` is
/// `(None, None)`, `group` `(Some(g), None)`, `block` `(Some(columns), Some(rows))`.
fn weight_grouping(
    w: &serde_json::Map<String, Value>,
    symmetric: bool,
    at: &dyn Fn(&str) -> String,
    err: &dyn Fn(&str, String) -> Error,
) -> Result<(Option<usize>, Option<usize>)> {
    let strategy = w.get("strategy").and_then(Value::as_str).unwrap_or("group");
    let block = w.get("block_structure").filter(|b| !is_empty(b));
    if block.is_some() && strategy != "block" {
        return Err(err(
            &at("weights.block_structure"),
            format!("set for the `{strategy}` strategy (it belongs to `block`)"),
        ));
    }
    match strategy {
        "channel" => Ok((None, None)),
        "group" => {
            let g = w
                .get("group_size")
                .and_then(Value::as_u64)
                .filter(|&g| g > 0)
                .ok_or_else(|| err(&at("weights.group_size"), "missing or not positive".into()))?;
            Ok((Some(g as usize), None))
        }
        "block" => {
            let dims: Option<Vec<usize>> = block.and_then(Value::as_array).and_then(|a| {
                a.iter()
                    .map(|d| d.as_u64().filter(|&d| d > 0).map(|d| d as usize))
                    .collect()
            });
            let [rows, cols] = dims.as_deref().unwrap_or_default() else {
                return Err(err(
                    &at("weights.block_structure"),
                    "missing or not two positive sizes [rows, columns]".into(),
                ));
            };
            if !symmetric {
                return Err(err(
                    &at("weights.symmetric"),
                    "false with the `block` strategy (microllm reads symmetric blocks)".into(),
                ));
            }
            Ok((Some(*cols), Some(*rows)))
        }
        other => Err(err(
            &at("weights.strategy"),
            format!("`{other}` (microllm reads `group`, `channel` and `block`)"),
        )),
    }
}

/// The top-level `format` of a checkpoint whose groups differ.
const MIXED_PRECISION: &str = "mixed-precision";

/// The error for a format microllm does not read, at `key`.
fn unread_format(err: &dyn Fn(&str, String) -> Error, key: &str, name: &str) -> Error {
    err(
        key,
        format!(
            "compressed-tensors format `{name}` is not one microllm reads (it reads \
             `{PACK_QUANTIZED}`, `int-quantized`, `float-quantized`, `naive-quantized`, and \
             `{MIXED_PRECISION}` of those)"
        ),
    )
}

/// The keys of `quantization_config` microllm knows; the values that would change the weights
/// (`transform_config`, `kv_cache_scheme`, `sparsity_config`, `moe_sparsity_config`) are
/// checked where they are read.
const TOP_KEYS: &[(&str, Allowed)] = &[
    ("quant_method", Allowed::Any),
    ("format", Allowed::Any),
    ("config_groups", Allowed::Any),
    ("ignore", Allowed::Any),
    ("quantization_status", Allowed::Any),
    ("global_compression_ratio", Allowed::Any),
    ("version", Allowed::Any),
    ("sparsity_config", Allowed::Any),
    ("transform_config", Allowed::Any),
    ("kv_cache_scheme", Allowed::Any),
    ("moe_sparsity_config", Allowed::Empty),
];

/// The keys of a config group.
const GROUP_KEYS: &[(&str, Allowed)] = &[
    ("targets", Allowed::Any),
    ("weights", Allowed::Any),
    ("input_activations", Allowed::Any),
    ("output_activations", Allowed::Empty),
    ("format", Allowed::Any),
];

/// The keys of compressed-tensors' `QuantizationArgs` (weights, input activations); those
/// read elsewhere are `Any` here, the rest must say nothing or only how a tool measured
/// (observers).
const ARGS_KEYS: &[(&str, Allowed)] = &[
    ("num_bits", Allowed::Any),
    ("type", Allowed::Any),
    ("symmetric", Allowed::Any),
    ("group_size", Allowed::Any),
    ("strategy", Allowed::Any),
    ("dynamic", Allowed::Any),
    ("actorder", Allowed::Any),
    ("observer", Allowed::Any),
    ("observer_kwargs", Allowed::Any),
    ("block_structure", Allowed::Any),
    ("scale_dtype", Allowed::Empty),
    ("zp_dtype", Allowed::Empty),
];

/// What a known key may hold.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Allowed {
    /// Read (and checked) by the parser, or known not to change the weights.
    Any,
    /// Only `null` or empty: other values change the weights or how they run.
    Empty,
}

/// Errors for a key of `obj` (at key path `at`, ending in `.` or empty) that microllm does not
/// know, or that says something where only nothing is read.
fn check_keys(
    obj: &Value,
    at: &str,
    known: &[(&str, Allowed)],
    err: &dyn Fn(&str, String) -> Error,
) -> Result<()> {
    let Some(map) = obj.as_object() else {
        return Ok(());
    };
    for (key, value) in map {
        match known.iter().find(|(k, _)| k == key) {
            None => {
                let names: Vec<&str> = known.iter().map(|(k, _)| *k).collect();
                return Err(err(
                    &format!("{at}{key}"),
                    format!(
                        "unknown key (microllm reads {}; a key it does not know may change \
                         what the weights mean)",
                        names.join(", ")
                    ),
                ));
            }
            Some((_, Allowed::Empty)) if !is_empty(value) => {
                return Err(err(
                    &format!("{at}{key}"),
                    format!("{value}: microllm reads checkpoints where this is null"),
                ));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// Whether a config value says nothing (`null`, `{}`, `[]`).
fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Object(o) => o.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

/// One config group: the linears it applies to and their scheme.
#[derive(Debug, Clone)]
pub struct CtGroup {
    /// Its key in `config_groups` (`group_0`, ...).
    pub name: String,
    pub targets: Targets,
    pub config: CtConfig,
}

/// compressed-tensors' `targets` of a group, matched against a linear's module name as the
/// library matches them: a layer class (`Linear`: every linear microllm reads), `re:PATTERN`
/// (a regular expression matched from the start of the name, Python's `re.match`), or the
/// module name itself.
#[derive(Debug, Clone)]
pub struct Targets {
    all_linears: bool,
    patterns: Vec<regex::Regex>,
    names: Vec<String>,
}

impl Targets {
    fn new(targets: &[String]) -> std::result::Result<Self, String> {
        let mut t = Targets {
            all_linears: false,
            patterns: Vec::new(),
            names: Vec::new(),
        };
        for target in targets {
            if let Some(pattern) = target.strip_prefix("re:") {
                let re = regex::Regex::new(&format!("^(?:{pattern})"))
                    .map_err(|e| format!("`{target}` is not a regular expression: {e}"))?;
                t.patterns.push(re);
            } else if target == "Linear" {
                t.all_linears = true;
            } else {
                t.names.push(target.clone());
            }
        }
        Ok(t)
    }

    /// Whether the linear `module` (`model.layers.0.self_attn.q_proj`) is a target.
    pub fn matches(&self, module: &str) -> bool {
        self.all_linears
            || self.names.iter().any(|n| n == module)
            || self.patterns.iter().any(|re| re.is_match(module))
    }
}

/// The group of the linear `module`: the first whose targets match (compressed-tensors gives
/// a module to one group; the first match is what its own loader applies).
pub fn group_of<'g>(groups: &'g [CtGroup], module: &str) -> Option<&'g CtGroup> {
    groups.iter().find(|g| g.targets.matches(module))
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
        ActivationQuant::Fp8PerToken | ActivationQuant::Fp8PerGroup { .. } => "float",
    }
}

/// compressed-tensors' `strategy` and `group_size` of an activation scheme.
fn activation_strategy(a: ActivationQuant) -> (&'static str, Option<usize>) {
    match a {
        ActivationQuant::Fp8PerGroup { group_size } => ("group", Some(group_size)),
        ActivationQuant::Int8PerToken | ActivationQuant::Fp8PerToken => ("token", None),
    }
}

/// The activation scheme of `input_activations` in a checkpoint of `format` (W8A8's dynamic
/// per-token int8, or FP8 per token or per group of columns in `float-quantized`), or what is
/// not read.
fn activation_scheme(a: &Value, format: CtFormat) -> std::result::Result<ActivationQuant, String> {
    let field = |k: &str| a.get(k).cloned().unwrap_or(Value::Null);
    let float = format == CtFormat::FloatQuantized;
    let group = field("group_size").as_u64().filter(|&g| g > 0);
    let scheme = match (float, field("strategy").as_str(), group) {
        (true, Some("group"), Some(g)) => ActivationQuant::Fp8PerGroup {
            group_size: g as usize,
        },
        (true, _, _) => ActivationQuant::Fp8PerToken,
        (false, _, _) => ActivationQuant::Int8PerToken,
    };
    let (strategy, group_size) = activation_strategy(scheme);
    let want = [
        ("num_bits", json!(8)),
        ("type", json!(activation_type(scheme))),
        ("symmetric", json!(true)),
        ("strategy", json!(strategy)),
        ("group_size", json!(group_size)),
        ("dynamic", json!(true)),
        ("block_structure", Value::Null),
    ];
    for (key, value) in want {
        if field(key) != value {
            return Err(format!(
                "`{key}: {}`: microllm runs dynamic symmetric 8-bit activations per token (or, \
                 for FP8, per token and group of columns) in a `{}` checkpoint (`{key}: {value}`)",
                field(key),
                format.name()
            ));
        }
    }
    Ok(scheme)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 4-bit symmetric groups of 32, no act-order: the scheme the config tests edit.
    fn w4_g32() -> CtConfig {
        CtConfig {
            bits: 4,
            symmetric: true,
            group_size: Some(32),
            block_rows: None,
            actorder: false,
            format: CtFormat::PackQuantized,
            activations: None,
            code_type: CodeType::Int,
        }
    }

    /// llm-compressor's FP8_BLOCK as it writes it (0.14): FP8 weights with one scale per
    /// 128 x 128 block, FP8 activations per token and group of 128 columns.
    #[test]
    fn fp8_block_checkpoints_are_read_and_written_back_alike() {
        let p = Path::new("config.json");
        let v = json!({
            "quant_method": "compressed-tensors",
            "format": "float-quantized",
            "quantization_status": "compressed",
            "config_groups": {"group_0": {
                "format": "float-quantized",
                "targets": ["Linear"],
                "weights": {"block_structure": [128, 128], "dynamic": false, "group_size": null,
                    "num_bits": 8, "observer": "memoryless_minmax", "strategy": "block",
                    "symmetric": true, "type": "float"},
                "input_activations": {"dynamic": true, "group_size": 128, "num_bits": 8,
                    "strategy": "group", "symmetric": true, "type": "float"},
                "output_activations": null
            }},
            "ignore": ["lm_head"], "kv_cache_scheme": null, "sparsity_config": {},
            "transform_config": {}, "version": "0.20.0"
        });
        let cfg = CtConfig::parse(&v, p).unwrap();
        assert_eq!(cfg.block_rows, Some(128));
        assert_eq!(cfg.group_size, Some(128));
        assert_eq!(cfg.code_type, CodeType::Fp8E4M3);
        assert_eq!(
            cfg.activations,
            Some(ActivationQuant::Fp8PerGroup { group_size: 128 })
        );
        assert_eq!(CtConfig::parse(&cfg.to_json(&[]), p).unwrap(), cfg);
        // A block structure belongs to the block strategy, and the block strategy needs one.
        let mut stray = v.clone();
        stray["config_groups"]["group_0"]["weights"]["strategy"] = json!("channel");
        let err = CtConfig::parse(&stray, p).unwrap_err().to_string();
        assert!(
            err.contains("weights.block_structure") && err.contains("channel"),
            "{err}"
        );
        let mut bare = v.clone();
        bare["config_groups"]["group_0"]["weights"]["block_structure"] = json!([128]);
        let err = CtConfig::parse(&bare, p).unwrap_err().to_string();
        assert!(err.contains("weights.block_structure"), "{err}");
        // Activation groups without a size are not read as per-token ones.
        let mut sizeless = v.clone();
        sizeless["config_groups"]["group_0"]["input_activations"]["group_size"] = Value::Null;
        let err = CtConfig::parse(&sizeless, p).unwrap_err().to_string();
        assert!(
            err.contains("input_activations") && err.contains("strategy"),
            "{err}"
        );
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

    /// FP8 weights are read only in the one-byte formats, and only as 8-bit symmetric E4M3.
    #[test]
    fn float_weights_outside_fp8_are_refused() {
        let p = Path::new("config.json");
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

    /// A mixed-precision checkpoint as llm-compressor writes one: attention at 8 bits
    /// (`int-quantized`, no activations here: naive), the MLP at 4 bits packed, each group
    /// naming its format; targets by regular expression, matched from the start of the name.
    #[test]
    fn mixed_precision_groups_are_read_and_matched_by_target() {
        let p = Path::new("config.json");
        let mut v = w4_g32().to_json(&["lm_head".into()]);
        v["format"] = json!("mixed-precision");
        let mut attn = v["config_groups"]["group_0"].clone();
        attn["targets"] = json!(["re:.*self_attn\\..*_proj$"]);
        attn["format"] = json!("naive-quantized");
        attn["weights"]["num_bits"] = json!(8);
        attn["weights"]["strategy"] = json!("channel");
        attn["weights"]["group_size"] = Value::Null;
        v["config_groups"]["group_0"]["targets"] = json!(["re:.*mlp\\."]);
        v["config_groups"]["group_1"] = attn;
        let groups = CtConfig::parse_groups(&v, p).unwrap();
        assert_eq!(groups.len(), 2);
        let q = group_of(&groups, "model.layers.3.self_attn.q_proj").unwrap();
        assert_eq!((q.name.as_str(), q.config.bits), ("group_1", 8));
        assert_eq!(q.config.format, CtFormat::NaiveQuantized);
        let down = group_of(&groups, "model.layers.3.mlp.down_proj").unwrap();
        assert_eq!((down.config.bits, down.config.group_size), (4, Some(32)));
        assert!(group_of(&groups, "lm_head").is_none());
        // Python's re.match anchors at the start only: `mlp\.` does not match mid-name.
        let t = Targets::new(&["re:mlp\\.".to_string()]).unwrap();
        assert!(!t.matches("model.layers.0.mlp.up_proj") && t.matches("mlp.up_proj"));
        // One group is what `parse` takes.
        let err = CtConfig::parse(&v, p).unwrap_err().to_string();
        assert!(err.contains("2 groups"), "{err}");
        // A mixed-precision group must say its format.
        let mut bare = v.clone();
        bare["config_groups"]["group_1"]
            .as_object_mut()
            .unwrap()
            .remove("format");
        let err = CtConfig::parse_groups(&bare, p).unwrap_err().to_string();
        assert!(err.contains("group_1.format"), "{err}");
    }

    /// What microllm cannot apply is refused by key: rotated weights, a quantized KV cache,
    /// groups that quantize activations differently, a bad target pattern. Empty values of
    /// the same keys (what llm-compressor writes when unused) are read.
    #[test]
    fn unapplied_settings_are_refused_by_key() {
        let p = Path::new("config.json");
        let mut v = w4_g32().to_json(&[]);
        v["transform_config"] = json!({});
        v["kv_cache_scheme"] = Value::Null;
        CtConfig::parse(&v, p).unwrap();
        let mut t = v.clone();
        t["transform_config"] = json!({"config_groups": {"u": {"type": "hadamard"}}});
        let err = CtConfig::parse(&t, p).unwrap_err().to_string();
        assert!(
            err.contains("quantization_config.transform_config"),
            "{err}"
        );
        let mut kv = v.clone();
        kv["kv_cache_scheme"] = json!({"num_bits": 8, "type": "float"});
        let err = CtConfig::parse(&kv, p).unwrap_err().to_string();
        assert!(err.contains("kv_cache_scheme"), "{err}");
        let mut two = v.clone();
        let mut g1 = two["config_groups"]["group_0"].clone();
        g1["input_activations"] = json!({"num_bits": 8, "type": "int", "symmetric": true, "strategy": "token", "dynamic": true});
        two["format"] = json!("mixed-precision");
        g1["format"] = json!("int-quantized");
        two["config_groups"]["group_0"]["format"] = json!("pack-quantized");
        two["config_groups"]["group_1"] = g1;
        let err = CtConfig::parse_groups(&two, p).unwrap_err().to_string();
        assert!(err.contains("activations differently"), "{err}");
        let mut bad = v.clone();
        bad["config_groups"]["group_0"]["targets"] = json!(["re:("]);
        let err = CtConfig::parse_groups(&bad, p).unwrap_err().to_string();
        assert!(err.contains("group_0.targets"), "{err}");
        // Unknown keys, and known ones holding what is not applied, are named.
        for (edit, key) in [
            (
                "/config_groups/group_0/weights/scale_dtype",
                "group_0.weights.scale_dtype",
            ),
            (
                "/config_groups/group_0/weights/rotation",
                "group_0.weights.rotation",
            ),
            (
                "/config_groups/group_0/output_activations",
                "group_0.output_activations",
            ),
            (
                "/moe_sparsity_config",
                "quantization_config.moe_sparsity_config",
            ),
            ("/awq_scales", "quantization_config.awq_scales"),
        ] {
            let mut x = v.clone();
            let (parent, leaf) = edit.rsplit_once('/').unwrap();
            x.pointer_mut(parent).unwrap()[leaf] = json!({"num_bits": 8});
            let err = CtConfig::parse(&x, p).unwrap_err().to_string();
            assert!(err.contains(key), "{edit}: {err}");
        }
        let mut dynamic = v;
        dynamic["config_groups"]["group_0"]["weights"]["dynamic"] = json!("local");
        let err = CtConfig::parse(&dynamic, p).unwrap_err().to_string();
        assert!(err.contains("weights.dynamic"), "{err}");
    }
}
