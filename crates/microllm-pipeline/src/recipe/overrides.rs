//! Command-line edits of a recipe: `--set KEY=VALUE` and sweeps (`--matrix KEY=V1,V2` or the
//! recipe's `matrix:`).
//!
//! A key is a recipe path, dotted (`passes.1.bits`, `output.path`) or bracketed
//! (`passes[1].quantize.bits`); inside a pass the pass's own key may be left out
//! (`passes.1.bits` means `passes[1].quantize.bits` when pass 1 is a quantize pass). A bare
//! option name (`bits`, `group_size`, `sparsity`) means that option of the one pass that takes
//! it; a name that several passes take is an error listing the full paths to use instead.
//! Values are read as YAML scalars (`3` a number, `true` a boolean, `channel` a string).

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::error::{RecipeError, RecipeResult};
use super::yaml::{child, item, parse_scalar};
use super::{RecipeDoc, schema};

/// The recipe's top-level keys, in the order a recipe is written.
pub(super) const TOP_LEVEL: [&str; 10] = [
    "version",
    "name",
    "model",
    "calibration",
    "evaluation",
    "passes",
    "output",
    "report",
    "gates",
    "matrix",
];

/// One variant of a sweep: its settings and its recipe.
#[derive(Debug, Clone)]
pub struct Variant {
    /// `key=value` per swept key, in key order (empty for a run without a sweep).
    pub settings: Vec<(String, Value)>,
    pub doc: RecipeDoc,
}

impl Variant {
    /// A short label: `bits=3,group_size=32`.
    pub fn label(&self) -> String {
        self.settings
            .iter()
            .map(|(k, v)| format!("{k}={}", scalar_text(v)))
            .collect::<Vec<_>>()
            .join(",")
    }
}

fn scalar_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The option names a pass of kind `key` takes, from the recipe's JSON Schema.
fn stage_options(pass_key: &str) -> Vec<String> {
    let schema = match pass_key {
        "prune" => schemars::schema_for!(schema::PruneStage),
        "quantize" => schemars::schema_for!(schema::QuantizeStage),
        "structured_prune" => schemars::schema_for!(schema::StructuredStage),
        "eval" => schemars::schema_for!(schema::EvalStage),
        _ => return Vec::new(),
    };
    schema
        .as_value()
        .get("properties")
        .and_then(Value::as_object)
        .map(|p| p.keys().cloned().collect())
        .unwrap_or_default()
}

/// The single key of a pass mapping (`quantize` for `{quantize: {...}}`).
fn pass_key(pass: &Value) -> Option<&str> {
    match pass.as_object() {
        Some(m) if m.len() == 1 => m.keys().next().map(String::as_str),
        _ => None,
    }
}

impl RecipeDoc {
    /// The full path a command-line key means, as path segments.
    fn resolve_key(&self, key: &str) -> RecipeResult<Vec<Segment>> {
        let bad = |msg: String| RecipeError::at(key.to_string(), msg);
        let raw: Vec<&str> = key
            .split(['.', '[', ']'])
            .filter(|s| !s.is_empty())
            .collect();
        let Some(&first) = raw.first() else {
            return Err(bad("an empty key".into()));
        };
        if !TOP_LEVEL.contains(&first) {
            return self.resolve_bare(key);
        }
        let mut out = Vec::new();
        let mut i = 0;
        while i < raw.len() {
            let seg = raw[i];
            out.push(match seg.parse::<usize>() {
                Ok(n) => Segment::Index(n),
                Err(_) => Segment::Key(seg.to_string()),
            });
            // Inside passes[N], insert the pass's own key when it was left out.
            if out.len() == 2
                && out[0] == Segment::Key("passes".into())
                && let Segment::Index(n) = out[1]
            {
                let passes = self.value.get("passes").and_then(Value::as_array);
                let Some(pass) = passes.and_then(|p| p.get(n)) else {
                    return Err(bad(format!(
                        "the recipe has {} passes; there is no pass {n} (passes count from 0)",
                        passes.map_or(0, Vec::len)
                    )));
                };
                if let Some(k) = pass_key(pass)
                    && raw.get(i + 1).is_some_and(|next| *next != k)
                {
                    out.push(Segment::Key(k.to_string()));
                }
            }
            i += 1;
        }
        Ok(out)
    }

    /// A bare option name: the one pass that takes it.
    fn resolve_bare(&self, key: &str) -> RecipeResult<Vec<Segment>> {
        let passes = self
            .value
            .get("passes")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let takers: Vec<(usize, String)> = passes
            .iter()
            .enumerate()
            .filter_map(|(i, p)| pass_key(p).map(|k| (i, k.to_string())))
            .filter(|(_, k)| stage_options(k).iter().any(|o| o == key))
            .collect();
        match &takers[..] {
            [(i, k)] => Ok(vec![
                Segment::Key("passes".into()),
                Segment::Index(*i),
                Segment::Key(k.clone()),
                Segment::Key(key.to_string()),
            ]),
            [] => Err(RecipeError::at(
                key,
                format!(
                    "no pass of this recipe takes `{key}`, and it is not a top-level key ({})",
                    TOP_LEVEL.join(", ")
                ),
            )),
            many => Err(RecipeError::at(
                key,
                format!(
                    "`{key}` is taken by several passes ({}); name one: {}",
                    many.iter()
                        .map(|(i, k)| format!("passes[{i}].{k}"))
                        .collect::<Vec<_>>()
                        .join(", "),
                    many.iter()
                        .map(|(i, _)| format!("passes.{i}.{key}"))
                        .collect::<Vec<_>>()
                        .join(" or ")
                ),
            )),
        }
    }

    /// `--set KEY=VALUE`.
    pub fn set(&mut self, assignment: &str) -> RecipeResult<()> {
        let Some((key, value)) = assignment.split_once('=') else {
            return Err(RecipeError::at(
                "",
                format!("`{assignment}` is not KEY=VALUE (e.g. passes.1.bits=3)"),
            ));
        };
        self.set_value(key.trim(), parse_scalar(value.trim()))
    }

    /// Sets the value at a command-line key.
    pub fn set_value(&mut self, key: &str, value: Value) -> RecipeResult<()> {
        let segments = self.resolve_key(key).map_err(|e| self.locate(e))?;
        let path = render(&segments);
        insert(&mut self.value, &segments, value).map_err(|msg| RecipeError::at(&path, msg))?;
        self.lines.mark_overridden(&path);
        Ok(())
    }

    /// The variants of a sweep: the recipe's `matrix:` and the command line's `--matrix
    /// KEY=V1,V2` (which replace a recipe entry of the same key), every combination in key
    /// order. Each variant's output path (and report path) gets the settings as a suffix, and
    /// its `matrix` key is removed. Without a sweep: one variant, the recipe itself.
    pub fn variants(&self, cli: &[String]) -> RecipeResult<Vec<Variant>> {
        let mut axes: BTreeMap<String, Vec<Value>> = BTreeMap::new();
        if let Some(m) = self.value.get("matrix") {
            let Some(m) = m.as_object() else {
                return Err(self.locate(RecipeError::at(
                    "matrix",
                    "a mapping from keys to lists of values",
                )));
            };
            for (k, v) in m {
                let Some(values) = v.as_array() else {
                    return Err(self.locate(RecipeError::at(
                        child("matrix", k),
                        "a list of values, e.g. [3, 4]",
                    )));
                };
                axes.insert(k.clone(), values.clone());
            }
        }
        for spec in cli {
            let Some((k, vs)) = spec.split_once('=') else {
                return Err(RecipeError::at(
                    "",
                    format!("--matrix `{spec}` is not KEY=V1,V2 (e.g. bits=3,4)"),
                ));
            };
            let values = vs.split(',').map(|v| parse_scalar(v.trim())).collect();
            axes.insert(k.trim().to_string(), values);
        }
        for (k, values) in &axes {
            if values.is_empty() {
                return Err(self.locate(RecipeError::at(child("matrix", k), "no values")));
            }
        }
        let mut base = self.clone();
        if let Some(m) = base.value.as_object_mut() {
            m.remove("matrix");
        }
        if axes.is_empty() {
            return Ok(vec![Variant {
                settings: Vec::new(),
                doc: base,
            }]);
        }
        let mut combos: Vec<Vec<(String, Value)>> = vec![Vec::new()];
        for (k, values) in &axes {
            combos = combos
                .into_iter()
                .flat_map(|c| {
                    values.iter().map(move |v| {
                        let mut c = c.clone();
                        c.push((k.clone(), v.clone()));
                        c
                    })
                })
                .collect();
        }
        combos
            .into_iter()
            .map(|settings| {
                let mut doc = base.clone();
                for (k, v) in &settings {
                    doc.set_value(k, v.clone())?;
                }
                let suffix = settings
                    .iter()
                    .map(|(k, v)| {
                        let name = k.rsplit(['.', ']']).next().unwrap_or(k);
                        format!("{name}{}", scalar_text(v))
                    })
                    .collect::<Vec<_>>()
                    .join("-");
                doc.suffix_paths(&suffix);
                Ok(Variant { settings, doc })
            })
            .collect()
    }

    /// `out/model.gguf` -> `out/model-SUFFIX.gguf` for the output and report paths.
    fn suffix_paths(&mut self, suffix: &str) {
        for (section, key) in [("output", "path"), ("report", "path")] {
            if let Some(Value::String(p)) = self.value.get_mut(section).and_then(|s| s.get_mut(key))
            {
                let path = std::path::Path::new(p.as_str());
                let ext = path.extension().map(|e| e.to_string_lossy().into_owned());
                let stem = path.with_extension("");
                let name = match ext {
                    Some(ext) if ext.eq_ignore_ascii_case("gguf") => {
                        format!("{}-{suffix}.{ext}", stem.display())
                    }
                    _ => format!("{}-{suffix}", path.display()),
                };
                *p = name;
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Key(String),
    Index(usize),
}

fn render(segments: &[Segment]) -> String {
    let mut path = String::new();
    for s in segments {
        path = match s {
            Segment::Key(k) => child(&path, k),
            Segment::Index(i) => item(&path, *i),
        };
    }
    path
}

fn insert(root: &mut Value, segments: &[Segment], value: Value) -> Result<(), String> {
    let Some((last, parents)) = segments.split_last() else {
        return Err("an empty key".into());
    };
    let mut at = root;
    for s in parents {
        at = match s {
            Segment::Key(k) => {
                if at.is_null() {
                    *at = Value::Object(Map::new());
                }
                let Some(m) = at.as_object_mut() else {
                    return Err(format!("`{k}` is below a value that is not a mapping"));
                };
                m.entry(k.clone()).or_insert(Value::Null)
            }
            Segment::Index(i) => {
                let Some(a) = at.as_array_mut() else {
                    return Err(format!("[{i}] is below a value that is not a list"));
                };
                let len = a.len();
                a.get_mut(*i)
                    .ok_or_else(|| format!("index {i} is past the end of a list of {len}"))?
            }
        };
    }
    match last {
        Segment::Key(k) => {
            if at.is_null() {
                *at = Value::Object(Map::new());
            }
            let m = at
                .as_object_mut()
                .ok_or_else(|| format!("`{k}` is below a value that is not a mapping"))?;
            m.insert(k.clone(), value);
        }
        Segment::Index(i) => {
            let a = at
                .as_array_mut()
                .ok_or_else(|| format!("[{i}] is below a value that is not a list"))?;
            let len = a.len();
            *a.get_mut(*i)
                .ok_or_else(|| format!("index {i} is past the end of a list of {len}"))? = value;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "model: m\npasses:\n  - prune: {method: wanda}\n  - quantize:\n      bits: 4\n  - eval: {}\noutput: {path: out/q.gguf}\n";

    #[test]
    fn keys_resolve_with_and_without_the_pass_name() {
        let mut doc = RecipeDoc::from_text(DOC).unwrap();
        doc.set("passes.1.bits=3").unwrap();
        doc.set("passes[1].quantize.group_size=channel").unwrap();
        doc.set("sparsity=0.25").unwrap();
        doc.set("output.overwrite=true").unwrap();
        let v = &doc.value;
        assert_eq!(v["passes"][1]["quantize"]["bits"], 3);
        assert_eq!(v["passes"][1]["quantize"]["group_size"], "channel");
        assert_eq!(v["passes"][0]["prune"]["sparsity"], 0.25);
        assert_eq!(v["output"]["overwrite"], true);
        let r = doc.parse().unwrap();
        assert_eq!(r.passes.len(), 3);
        let err = doc.set("passes.7.bits=3").unwrap_err();
        assert!(err.msg.contains("no pass 7"), "{err}");
        let err = doc.set("nonsense=3").unwrap_err();
        assert!(err.msg.contains("no pass"), "{err}");
    }

    #[test]
    fn a_sweep_is_every_combination_with_its_own_output() {
        let doc = RecipeDoc::from_text(DOC).unwrap();
        let vs = doc
            .variants(&["bits=3,4".into(), "group_size=32,64".into()])
            .unwrap();
        assert_eq!(vs.len(), 4);
        assert_eq!(vs[0].label(), "bits=3,group_size=32");
        assert_eq!(vs[3].doc.value["passes"][1]["quantize"]["group_size"], 64);
        assert_eq!(
            vs[1].doc.value["output"]["path"],
            "out/q-bits3-group_size64.gguf"
        );
        let single = doc.variants(&[]).unwrap();
        assert_eq!(single.len(), 1);
        assert_eq!(single[0].doc.value["output"]["path"], "out/q.gguf");
    }

    #[test]
    fn overridden_values_say_so_in_errors() {
        let mut doc = RecipeDoc::from_text(DOC).unwrap();
        doc.set("passes.1.bits=four").unwrap();
        let err = doc.parse().unwrap_err();
        assert_eq!(err.path, "passes[1].quantize.bits");
        assert_eq!(err.origin, super::super::Origin::Override, "{err}");
    }
}
