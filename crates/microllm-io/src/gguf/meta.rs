//! Typed access to GGUF metadata with errors that name the file and the key.
//!
//! GGUF stores each value with its own type tag, and writers disagree on which one they use for
//! the same key (a head count may be `u32` in one file and `i32` or `u64` in another; an
//! epsilon `f32` or `f64`). Every reader here therefore accepts any integer or float type that
//! holds the value exactly, and a missing or mistyped required key becomes an
//! [`Error::Config`] naming the file and the key, never a panic or a silent default.

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::Value;
use microllm_core::{Error, Result};

/// The metadata of one GGUF file, plus its path for error messages.
#[derive(Clone, Copy)]
pub(crate) struct Meta<'a> {
    pub path: &'a Path,
    pub map: &'a HashMap<String, Value>,
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::U8(_) => "u8",
        Value::I8(_) => "i8",
        Value::U16(_) => "u16",
        Value::I16(_) => "i16",
        Value::U32(_) => "u32",
        Value::I32(_) => "i32",
        Value::U64(_) => "u64",
        Value::I64(_) => "i64",
        Value::F32(_) => "f32",
        Value::F64(_) => "f64",
        Value::Bool(_) => "bool",
        Value::String(_) => "string",
        Value::Array(_) => "array",
    }
}

/// A non-negative integer of any width.
fn as_u64(v: &Value) -> Option<u64> {
    match *v {
        Value::U8(x) => Some(x.into()),
        Value::U16(x) => Some(x.into()),
        Value::U32(x) => Some(x.into()),
        Value::U64(x) => Some(x),
        Value::I8(x) => u64::try_from(x).ok(),
        Value::I16(x) => u64::try_from(x).ok(),
        Value::I32(x) => u64::try_from(x).ok(),
        Value::I64(x) => u64::try_from(x).ok(),
        _ => None,
    }
}

/// A signed integer of any width.
fn as_i64(v: &Value) -> Option<i64> {
    match *v {
        Value::U8(x) => Some(x.into()),
        Value::U16(x) => Some(x.into()),
        Value::U32(x) => Some(x.into()),
        Value::U64(x) => i64::try_from(x).ok(),
        Value::I8(x) => Some(x.into()),
        Value::I16(x) => Some(x.into()),
        Value::I32(x) => Some(x.into()),
        Value::I64(x) => Some(x),
        _ => None,
    }
}

/// A number. An `f32` is widened through its shortest decimal form, so the `1e-5` that a
/// converter wrote as `f32` reads back as `1e-5` (what config.json says), not
/// `9.999999747378752e-6`.
fn as_f64(v: &Value) -> Option<f64> {
    match *v {
        Value::F32(x) => x.to_string().parse().ok(),
        Value::F64(x) => Some(x),
        _ => as_i64(v).map(|x| x as f64),
    }
}

impl<'a> Meta<'a> {
    pub fn new(path: &'a Path, map: &'a HashMap<String, Value>) -> Self {
        Self { path, map }
    }

    fn mistyped(&self, key: &str, want: &str, v: &Value) -> Error {
        Error::config(
            self.path,
            key,
            format!("expected {want}, found a GGUF {}", type_name(v)),
        )
    }

    fn missing(&self, key: &str) -> Error {
        Error::config(self.path, key, "required GGUF metadata key is missing")
    }

    /// An optional non-negative integer.
    pub fn usize(&self, key: &str) -> Result<Option<usize>> {
        match self.map.get(key) {
            None => Ok(None),
            Some(v) => as_u64(v)
                .and_then(|x| usize::try_from(x).ok())
                .map(Some)
                .ok_or_else(|| self.mistyped(key, "a non-negative integer", v)),
        }
    }

    /// A required non-negative integer.
    pub fn req_usize(&self, key: &str) -> Result<usize> {
        self.usize(key)?.ok_or_else(|| self.missing(key))
    }

    /// An optional token id.
    pub fn u32(&self, key: &str) -> Result<Option<u32>> {
        match self.usize(key)? {
            None => Ok(None),
            Some(x) => u32::try_from(x)
                .map(Some)
                .map_err(|_| Error::config(self.path, key, format!("{x} does not fit in u32"))),
        }
    }

    /// An optional number.
    pub fn f64(&self, key: &str) -> Result<Option<f64>> {
        match self.map.get(key) {
            None => Ok(None),
            Some(v) => as_f64(v)
                .map(Some)
                .ok_or_else(|| self.mistyped(key, "a number", v)),
        }
    }

    /// An optional boolean.
    pub fn bool(&self, key: &str) -> Result<Option<bool>> {
        match self.map.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(self.mistyped(key, "a boolean", v)),
        }
    }

    /// An optional string.
    pub fn str(&self, key: &str) -> Result<Option<&'a str>> {
        match self.map.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(v) => Err(self.mistyped(key, "a string", v)),
        }
    }

    /// A required string.
    pub fn req_str(&self, key: &str) -> Result<&'a str> {
        self.str(key)?.ok_or_else(|| self.missing(key))
    }

    fn array(&self, key: &str) -> Result<Option<&'a [Value]>> {
        match self.map.get(key) {
            None => Ok(None),
            Some(Value::Array(items)) => Ok(Some(items.as_slice())),
            Some(v) => Err(self.mistyped(key, "an array", v)),
        }
    }

    /// Whether `key` holds an array.
    pub fn is_array(&self, key: &str) -> bool {
        matches!(self.map.get(key), Some(Value::Array(_)))
    }

    /// A list of booleans (llama.cpp writes per-layer flags as a bool array).
    pub fn bool_array(&self, key: &str) -> Result<Option<Vec<bool>>> {
        let Some(items) = self.array(key)? else {
            return Ok(None);
        };
        items
            .iter()
            .map(|v| match v {
                Value::Bool(b) => Ok(*b),
                other => Err(self.mistyped(key, "a list of booleans", other)),
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    /// An optional array of strings.
    pub fn str_array(&self, key: &str) -> Result<Option<Vec<&'a str>>> {
        let Some(items) = self.array(key)? else {
            return Ok(None);
        };
        items
            .iter()
            .map(|v| match v {
                Value::String(s) => Ok(s.as_str()),
                other => Err(self.mistyped(key, "an array of strings", other)),
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    /// An optional array of integers.
    pub fn i64_array(&self, key: &str) -> Result<Option<Vec<i64>>> {
        let Some(items) = self.array(key)? else {
            return Ok(None);
        };
        items
            .iter()
            .map(|v| as_i64(v).ok_or_else(|| self.mistyped(key, "an array of integers", v)))
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    /// An optional array of numbers.
    pub fn f64_array(&self, key: &str) -> Result<Option<Vec<f64>>> {
        let Some(items) = self.array(key)? else {
            return Ok(None);
        };
        items
            .iter()
            .map(|v| match *v {
                // Scores only need their order; skip the decimal round trip for speed.
                Value::F32(x) => Ok(f64::from(x)),
                _ => as_f64(v).ok_or_else(|| self.mistyped(key, "an array of numbers", v)),
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_of_any_width_are_accepted() {
        let mut map = HashMap::new();
        map.insert("a".to_string(), Value::I32(9));
        map.insert("b".to_string(), Value::F32(1e-5));
        map.insert("c".to_string(), Value::String("x".into()));
        map.insert("d".to_string(), Value::I32(-1));
        let meta = Meta::new(Path::new("m.gguf"), &map);
        assert_eq!(meta.req_usize("a").unwrap(), 9);
        assert_eq!(meta.f64("b").unwrap(), Some(1e-5));
        assert_eq!(meta.f64("a").unwrap(), Some(9.0));
        let err = meta.req_usize("c").unwrap_err().to_string();
        assert!(err.contains("m.gguf") && err.contains("`c`"), "{err}");
        assert!(meta.usize("d").is_err());
        let err = meta.req_usize("zz").unwrap_err().to_string();
        assert!(err.contains("m.gguf") && err.contains("`zz`"), "{err}");
    }
}
