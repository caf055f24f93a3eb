//! YAML in and out, keeping the line of every value.
//!
//! A recipe is read in two steps: saphyr (a maintained YAML 1.2 loader) gives a tree whose
//! nodes carry their position; it is turned into a `serde_json::Value` plus a [`LineIndex`]
//! from YAML paths (`passes[1].quantize.bits`) to lines. Overrides (`--set`, `--matrix`) edit
//! the value, serde builds the typed recipe from it (`serde_path_to_error` names the path of a
//! bad key or type), and validation names paths too; the index turns every path into a line.
//! So all errors, syntactic, typed or semantic, point at the same place a person would.
//!
//! Output ([`to_yaml`]) is the plain block style a person would write, used by
//! `--print-recipe`.

use std::collections::HashMap;

use saphyr::{LoadableYamlNode, MarkedYaml, Scalar, YamlData};
use serde_json::{Map, Number, Value};

use super::error::{Origin, RecipeError, RecipeResult};

/// The line of every key and sequence item of a document, by YAML path.
#[derive(Debug, Clone, Default)]
pub struct LineIndex {
    lines: HashMap<String, usize>,
    overridden: Vec<String>,
}

impl LineIndex {
    /// Where `path` came from: its own line, or that of its nearest located ancestor; an
    /// override when it (or an ancestor) was set on the command line.
    pub fn origin(&self, path: &str) -> Origin {
        let mut p = path;
        loop {
            if self.overridden.iter().any(|o| o == p) {
                return Origin::Override;
            }
            if let Some(&line) = self.lines.get(p) {
                return Origin::Line(line);
            }
            match parent(p) {
                Some(up) => p = up,
                None => return Origin::Unknown,
            }
        }
    }

    /// Records that `path` was replaced by a command-line value.
    pub fn mark_overridden(&mut self, path: &str) {
        self.overridden.push(path.to_string());
    }

    /// Locates `err` (its path) in this document.
    pub fn locate(&self, mut err: RecipeError) -> RecipeError {
        if err.origin == Origin::Unknown {
            err.origin = match (self.lines.contains_key(&err.path), &err.near) {
                (false, Some(near)) => self.origin(near),
                _ => self.origin(&err.path),
            };
        }
        err
    }
}

/// The path one level up: `a.b[2]` -> `a.b`, `a.b` -> `a`, `a` -> `` (the root).
fn parent(path: &str) -> Option<&str> {
    if path.is_empty() {
        return None;
    }
    let cut = path.rfind(['.', '[']).unwrap_or(0);
    Some(&path[..cut])
}

/// A child path: a map key or a sequence index below `base`.
pub fn child(base: &str, key: &str) -> String {
    if base.is_empty() {
        key.to_string()
    } else {
        format!("{base}.{key}")
    }
}

/// `base[i]`.
pub fn item(base: &str, i: usize) -> String {
    format!("{base}[{i}]")
}

/// Parses one YAML document into a value and the lines of its paths.
pub fn parse(text: &str) -> RecipeResult<(Value, LineIndex)> {
    let docs = MarkedYaml::load_from_str(text).map_err(|e| RecipeError {
        file: None,
        path: String::new(),
        origin: Origin::Line(e.marker().line()),
        msg: format!("not valid YAML: {}", e.info()),
        near: None,
    })?;
    let mut docs = docs.into_iter();
    let Some(doc) = docs.next() else {
        return Err(RecipeError::at("", "the file holds no YAML document"));
    };
    if docs.next().is_some() {
        return Err(RecipeError::at(
            "",
            "the file holds more than one YAML document (`---`); a recipe is one",
        ));
    }
    let mut index = LineIndex::default();
    let value = convert(&doc, "", &mut index)?;
    Ok((value, index))
}

fn convert(node: &MarkedYaml<'_>, path: &str, index: &mut LineIndex) -> RecipeResult<Value> {
    let line = node.span.start.line();
    let bad = |msg: String| RecipeError {
        file: None,
        path: path.to_string(),
        origin: Origin::Line(line),
        msg,
        near: None,
    };
    Ok(match &node.data {
        YamlData::Value(s) => scalar(s).map_err(bad)?,
        YamlData::Representation(text, ..) => Value::String(text.to_string()),
        YamlData::Sequence(items) => {
            let mut out = Vec::with_capacity(items.len());
            for (i, it) in items.iter().enumerate() {
                let p = item(path, i);
                index.lines.insert(p.clone(), it.span.start.line());
                out.push(convert(it, &p, index)?);
            }
            Value::Array(out)
        }
        YamlData::Mapping(map) => {
            let mut out = Map::new();
            for (k, v) in map {
                let key = match &k.data {
                    YamlData::Value(Scalar::String(s)) => s.to_string(),
                    YamlData::Value(s) => match scalar(s).map_err(bad)? {
                        Value::String(s) => s,
                        other => other.to_string(),
                    },
                    _ => return Err(bad("map keys must be plain names".into())),
                };
                let p = child(path, &key);
                index.lines.insert(p.clone(), k.span.start.line());
                let value = convert(v, &p, index)?;
                out.insert(key, value);
            }
            Value::Object(out)
        }
        YamlData::Tagged(tag, _) => {
            return Err(bad(format!(
                "YAML tags (`!{}`) are not part of the recipe format",
                tag.suffix
            )));
        }
        YamlData::Alias(_) => return Err(bad("unresolved YAML alias".into())),
        YamlData::BadValue => return Err(bad("a value YAML cannot read".into())),
    })
}

fn scalar(s: &Scalar<'_>) -> Result<Value, String> {
    Ok(match s {
        Scalar::Null => Value::Null,
        Scalar::Boolean(b) => Value::Bool(*b),
        Scalar::Integer(i) => Value::Number((*i).into()),
        Scalar::FloatingPoint(f) => Number::from_f64(f.into_inner())
            .map(Value::Number)
            .ok_or_else(|| format!("{} is not a finite number", f.into_inner()))?,
        Scalar::String(s) => Value::String(s.to_string()),
    })
}

/// One scalar written on the command line (`--set bits=3`), read as YAML would read it:
/// `3` is a number, `true` a boolean, `[3, 4]` a list, anything else a string.
pub fn parse_scalar(text: &str) -> Value {
    match parse(text) {
        Ok((v, _)) if !v.is_object() => v,
        _ => Value::String(text.to_string()),
    }
}

/// A value as block-style YAML (what a person would write), ending in a newline.
pub fn to_yaml(value: &Value) -> String {
    let mut out = String::new();
    match value {
        Value::Object(m) if !m.is_empty() => emit_map(m, 0, &mut out),
        Value::Array(a) if !a.is_empty() => emit_seq(a, 0, &mut out),
        other => {
            out.push_str(&inline(other));
            out.push('\n');
        }
    }
    out
}

/// [`to_yaml`] with the top-level keys of a mapping in `order` (the rest after them, sorted):
/// a recipe reads model, data, passes, output, gates, in that order.
pub fn to_yaml_ordered(value: &Value, order: &[&str]) -> String {
    let Some(map) = value.as_object() else {
        return to_yaml(value);
    };
    let mut keys: Vec<&String> = map.keys().collect();
    keys.sort_by_key(|k| order.iter().position(|o| o == k).unwrap_or(order.len()));
    let mut out = String::new();
    for k in keys {
        let one: Map<String, Value> = [(k.clone(), map[k].clone())].into_iter().collect();
        emit_map(&one, 0, &mut out);
    }
    out
}

fn emit_map(map: &Map<String, Value>, indent: usize, out: &mut String) {
    for (k, v) in map {
        out.push_str(&" ".repeat(indent));
        out.push_str(&plain_or_quoted(k));
        out.push(':');
        emit_child(v, indent, out);
    }
}

fn emit_seq(items: &[Value], indent: usize, out: &mut String) {
    for v in items {
        out.push_str(&" ".repeat(indent));
        out.push('-');
        match v {
            Value::Object(m) if !m.is_empty() => {
                // The first key on the dash's line, the rest aligned under it.
                let mut inner = String::new();
                emit_map(m, indent + 2, &mut inner);
                out.push(' ');
                out.push_str(&inner[indent + 2..]);
            }
            other => emit_child(other, indent, out),
        }
    }
}

fn emit_child(v: &Value, indent: usize, out: &mut String) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            out.push('\n');
            emit_map(m, indent + 2, out);
        }
        Value::Array(a) if !a.is_empty() && a.iter().any(|x| x.is_object() || x.is_array()) => {
            out.push('\n');
            emit_seq(a, indent + 2, out);
        }
        other => {
            out.push(' ');
            out.push_str(&inline(other));
            out.push('\n');
        }
    }
}

/// A value on one line (flow style for short scalar lists and empty collections).
fn inline(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => plain_or_quoted(s),
        Value::Array(a) => format!("[{}]", a.iter().map(inline).collect::<Vec<_>>().join(", ")),
        Value::Object(m) => format!(
            "{{{}}}",
            m.iter()
                .map(|(k, v)| format!("{}: {}", plain_or_quoted(k), inline(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// A string as a plain scalar when YAML reads it back as the same string, else JSON-quoted
/// (a JSON string is a valid double-quoted YAML scalar).
fn plain_or_quoted(s: &str) -> String {
    let safe = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-./+~@".contains(c))
        && !s.starts_with(['-', '.', '@', '~'])
        && parse_scalar(s) == Value::String(s.to_string());
    if safe {
        s.to_string()
    } else {
        Value::String(s.to_string()).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "model: m\npasses:\n  - quantize:\n      bits: 4\n      group_size: 32\n  - eval: {}\ngates: [\"size_mb <= 80\"]\n";

    #[test]
    fn every_key_and_item_has_its_line() {
        let (v, index) = parse(DOC).unwrap();
        assert_eq!(v["passes"][0]["quantize"]["bits"], 4);
        assert_eq!(index.origin("model"), Origin::Line(1));
        assert_eq!(index.origin("passes[0]"), Origin::Line(3));
        assert_eq!(
            index.origin("passes[0].quantize.group_size"),
            Origin::Line(5)
        );
        assert_eq!(index.origin("passes[1].eval"), Origin::Line(6));
        // A key that is not in the file takes its nearest ancestor's line.
        assert_eq!(index.origin("passes[1].eval.windows"), Origin::Line(6));
        assert_eq!(index.origin("gates[0]"), Origin::Line(7));
    }

    #[test]
    fn syntax_errors_have_a_line_and_duplicates_are_refused() {
        let err = parse("model: m\npasses:\n  - quantize: {bits: 4\n").unwrap_err();
        assert!(matches!(err.origin, Origin::Line(_)), "{err}");
        let err = parse("model: a\nmodel: b\n").unwrap_err();
        assert_eq!(err.origin, Origin::Line(2), "{err}");
    }

    #[test]
    fn emitted_yaml_reads_back_to_the_same_value() {
        let (v, _) = parse(DOC).unwrap();
        let text = to_yaml(&v);
        let (back, _) = parse(&text).unwrap();
        assert_eq!(v, back, "{text}");
        let tricky = serde_json::json!({
            "a": "yes", "b": "3", "c": "", "d": "x: y", "e": [1.5, "null"], "f": {}, "g": [],
            "h": [{"x": 1, "y": [{"z": true}]}], "i": "../shared/m.gguf",
        });
        let text = to_yaml(&tricky);
        assert_eq!(parse(&text).unwrap().0, tricky, "{text}");
    }

    #[test]
    fn command_line_scalars_read_as_yaml() {
        assert_eq!(parse_scalar("3"), serde_json::json!(3));
        assert_eq!(parse_scalar("0.5"), serde_json::json!(0.5));
        assert_eq!(parse_scalar("true"), serde_json::json!(true));
        assert_eq!(parse_scalar("channel"), serde_json::json!("channel"));
        assert_eq!(parse_scalar("a: b"), serde_json::json!("a: b"));
        assert_eq!(parse_scalar("[3, 4]"), serde_json::json!([3, 4]));
    }
}
