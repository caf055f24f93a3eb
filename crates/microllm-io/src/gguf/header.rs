//! GGUF headers, read and checked before any tensor data is trusted.
//!
//! microllm reads the header itself rather than through candle's reader for two reasons:
//! candle refuses any file that holds a type it does not compute with (the i-quants, which
//! microllm reads, writes and runs: [`GgufType`]); and it trusted values it should check: a
//! file that declares an alignment of 0 panicked inside it ("attempt to divide by zero"), and
//! it placed each tensor where its offset says without checking that the data regions line
//! up, so a changed type or a moved offset read garbage (perplexities in the millions, exit
//! status 0). So every read here is bounds-checked against the mapped bytes, with llama.cpp's
//! loader's rules: a known version, a power-of-two alignment, unique tensor names, tensor data
//! laid end to end. Metadata values come back as candle's [`Value`], which the rest of the
//! reader (and the writer) speak.

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::Value;
use microllm_core::{Error, Result};

use super::GgufType;

/// GGUF value types, as numbered by the format.
const STRING: u32 = 8;
const ARRAY: u32 = 9;
const UINT32: u32 = 4;

/// Bytes of a fixed-size value of `ty`, or `None` for strings, arrays and unknown types.
fn fixed_size(ty: u32) -> Option<usize> {
    match ty {
        0 | 1 | 7 => Some(1), // u8, i8, bool
        2 | 3 => Some(2),     // u16, i16
        4..=6 => Some(4),     // u32, i32, f32
        10..=12 => Some(8),   // u64, i64, f64
        _ => None,
    }
}

/// One tensor's entry in the header.
#[derive(Debug, Clone)]
pub(crate) struct TensorEntry {
    pub dtype: GgufType,
    /// Outermost first (rows, then columns), as Hugging Face shapes are written.
    pub dims: Vec<usize>,
    /// From the start of the tensor data.
    pub offset: u64,
}

/// A parsed GGUF header.
#[derive(Debug)]
pub(crate) struct Header {
    pub metadata: HashMap<String, Value>,
    pub tensors: HashMap<String, TensorEntry>,
    /// Where tensor data starts in the file.
    pub data_offset: u64,
}

/// A cursor over the header bytes whose every read is bounds-checked.
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Cursor<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        let end = self.at.checked_add(n)?;
        let s = self.bytes.get(self.at..end)?;
        self.at = end;
        Some(s)
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }

    fn u32(&mut self) -> Option<u32> {
        self.array().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Option<u64> {
        self.array().map(u64::from_le_bytes)
    }

    fn string(&mut self) -> Option<String> {
        let n = usize::try_from(self.u64()?).ok()?;
        Some(String::from_utf8_lossy(self.take(n)?).into_owned())
    }

    /// One value of type `ty`; `None` when it runs past the end or the type is unknown.
    fn value(&mut self, ty: u32) -> Option<Value> {
        Some(match ty {
            0 => Value::U8(self.array::<1>()?[0]),
            1 => Value::I8(i8::from_le_bytes(self.array()?)),
            2 => Value::U16(u16::from_le_bytes(self.array()?)),
            3 => Value::I16(i16::from_le_bytes(self.array()?)),
            4 => Value::U32(self.u32()?),
            5 => Value::I32(i32::from_le_bytes(self.array()?)),
            6 => Value::F32(f32::from_le_bytes(self.array()?)),
            7 => Value::Bool(self.array::<1>()?[0] != 0),
            STRING => Value::String(self.string()?),
            ARRAY => {
                let item = self.u32()?;
                let n = self.u64()?;
                // Every item takes at least one byte (a string's length, eight): a count the
                // remaining bytes cannot hold is refused before anything is allocated for it.
                let least = fixed_size(item).unwrap_or(8) as u64;
                if n > (self.bytes.len() - self.at) as u64 / least {
                    return None;
                }
                let items = (0..n).map(|_| self.value(item)).collect::<Option<_>>()?;
                Value::Array(items)
            }
            10 => Value::U64(self.u64()?),
            11 => Value::I64(i64::from_le_bytes(self.array()?)),
            12 => Value::F64(f64::from_le_bytes(self.array()?)),
            _ => return None,
        })
    }
}

/// Reads the header of the GGUF bytes `map` (which start with the magic): version 2 or 3,
/// `general.alignment` a power of two, tensor names unique, known tensor types, and each
/// tensor's offset exactly where the previous one's padded data ends, as llama.cpp's loader
/// requires. That last rule catches a changed tensor type, overlapping or misaligned data, and
/// gaps. Errors name the file and the key or tensor.
pub(crate) fn read(path: &Path, map: &[u8]) -> Result<Header> {
    let cut = |what: &str| {
        Error::format(
            path,
            format!("the GGUF header is cut short or corrupt in {what} (truncated download?)"),
        )
    };
    let mut c = Cursor { bytes: map, at: 4 };
    let version = c.u32().ok_or_else(|| cut("its version"))?;
    if !(2..=3).contains(&version) {
        return Err(Error::format(
            path,
            format!(
                "GGUF version {version} is not supported (microllm reads versions 2 and 3, \
                 what llama.cpp has written since 2023); re-convert the model with a current \
                 llama.cpp"
            ),
        ));
    }
    let (Some(tensors), Some(kvs)) = (c.u64(), c.u64()) else {
        return Err(cut("its counts"));
    };
    let mut metadata = HashMap::new();
    for i in 0..kvs {
        let key = c
            .string()
            .ok_or_else(|| cut(&format!("metadata key {i}")))?;
        let ty = c
            .u32()
            .ok_or_else(|| cut(&format!("the type of `{key}`")))?;
        let value = c.value(ty).ok_or_else(|| {
            Error::format(
                path,
                format!(
                    "metadata `{key}`: value type {ty} unknown, or its value is cut short or \
                     corrupt"
                ),
            )
        })?;
        metadata.insert(key, value);
    }
    let alignment = alignment(path, &metadata)?;
    let tensors = read_tensor_infos(path, &mut c, tensors, alignment)?;
    let data_offset = (c.at as u64).next_multiple_of(alignment);
    Ok(Header {
        metadata,
        tensors,
        data_offset,
    })
}

/// `general.alignment`: a uint32 power of two, 32 when absent (llama.cpp's default).
fn alignment(path: &Path, metadata: &HashMap<String, Value>) -> Result<u64> {
    match metadata.get("general.alignment") {
        None => Ok(DEFAULT_ALIGNMENT),
        Some(Value::U32(v)) if v.is_power_of_two() => Ok(u64::from(*v)),
        Some(Value::U32(v)) => Err(Error::format(
            path,
            format!("general.alignment = {v}: it must be a power of two"),
        )),
        Some(other) => Err(Error::format(
            path,
            format!(
                "general.alignment has value type {:?}, the format says uint32 ({UINT32})",
                other.value_type()
            ),
        )),
    }
}

/// llama.cpp's default when a file does not set `general.alignment`.
const DEFAULT_ALIGNMENT: u64 = 32;

/// Reads the tensor infos: unique names, known types, whole blocks per row, and offsets laid
/// end to end (each tensor's data padded to `alignment`), the layout every GGUF writer
/// produces.
fn read_tensor_infos(
    path: &Path,
    c: &mut Cursor<'_>,
    count: u64,
    alignment: u64,
) -> Result<HashMap<String, TensorEntry>> {
    let cut = |what: String| {
        Error::format(
            path,
            format!("the GGUF header is cut short or corrupt in {what} (truncated download?)"),
        )
    };
    // Every info takes at least 8 + 4 + 4 + 8 bytes.
    if count > (c.bytes.len() - c.at) as u64 / 24 {
        return Err(cut(format!("its tensor list ({count} tensors declared)")));
    }
    let mut tensors = HashMap::new();
    let mut expected_offset = 0u64;
    for i in 0..count {
        let name = c.string().ok_or_else(|| cut(format!("tensor info {i}")))?;
        let bad = |msg: String| Error::format(path, format!("tensor `{name}`: {msg}"));
        let n_dims = c.u32().ok_or_else(|| cut(format!("tensor `{name}`")))?;
        if n_dims > 4 {
            return Err(bad(format!("{n_dims} dimensions (GGUF allows at most 4)")));
        }
        // Dimensions are stored innermost first; the size rule takes them outermost first.
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            let d = c.u64().ok_or_else(|| cut(format!("tensor `{name}`")))?;
            let d = usize::try_from(d).map_err(|_| bad(format!("dimension {d} is too large")))?;
            dims.push(d);
        }
        dims.reverse();
        let (Some(ty), Some(offset)) = (c.u32(), c.u64()) else {
            return Err(cut(format!("tensor `{name}`")));
        };
        if tensors.contains_key(&name) {
            return Err(bad("listed twice in the header".into()));
        }
        let dtype = GgufType::from_id(ty).ok_or_else(|| {
            bad(format!(
                "stored as ggml type {ty}, which microllm does not read (it reads F32, F16, \
                 BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K..Q6_K, IQ4_NL and IQ4_XS)"
            ))
        })?;
        // The same size rule the tensor index applies (whole blocks per row).
        let size = super::source::byte_size(dtype, &dims).map_err(bad)?;
        if offset != expected_offset {
            return Err(bad(format!(
                "its data starts at offset {offset}, but the tensors before it end at \
                 {expected_offset} (a changed tensor type, or overlapping or misplaced data: \
                 the file is corrupt)"
            )));
        }
        expected_offset = size
            .checked_next_multiple_of(alignment)
            .and_then(|b| offset.checked_add(b))
            .ok_or_else(|| bad("its byte size overflows".into()))?;
        tensors.insert(
            name,
            TensorEntry {
                dtype,
                dims,
                offset,
            },
        );
    }
    Ok(tensors)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(kvs: &[(&str, u32, Vec<u8>)]) -> Vec<u8> {
        with_tensors(kvs, &[])
    }

    /// A header with tensor infos `(name, dims innermost first, ggml type, offset)`.
    fn with_tensors(kvs: &[(&str, u32, Vec<u8>)], tensors: &[(&str, &[u64], u32, u64)]) -> Vec<u8> {
        let mut h = b"GGUF".to_vec();
        h.extend_from_slice(&3u32.to_le_bytes());
        h.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
        h.extend_from_slice(&(kvs.len() as u64).to_le_bytes());
        for (key, ty, value) in kvs {
            h.extend_from_slice(&(key.len() as u64).to_le_bytes());
            h.extend_from_slice(key.as_bytes());
            h.extend_from_slice(&ty.to_le_bytes());
            h.extend_from_slice(value);
        }
        for (name, dims, ty, offset) in tensors {
            h.extend(string(name));
            h.extend_from_slice(&(dims.len() as u32).to_le_bytes());
            for d in *dims {
                h.extend_from_slice(&d.to_le_bytes());
            }
            h.extend_from_slice(&ty.to_le_bytes());
            h.extend_from_slice(&offset.to_le_bytes());
        }
        h
    }

    #[test]
    fn tensor_offsets_must_lie_end_to_end() {
        const F32: u32 = 0;
        const Q8_0: u32 = 8;
        let path = Path::new("m.gguf");
        let check_offsets =
            |tensors: &[(&str, &[u64], u32, u64)]| read(path, &with_tensors(&[], tensors));
        // 10 f32 values take 40 bytes, padded to 64; 64 Q8_0 values take 2 x 34 = 68, padded to 96.
        check_offsets(&[
            ("a", &[10], F32, 0),
            ("b", &[64], Q8_0, 64),
            ("c", &[1], F32, 160),
        ])
        .unwrap();
        for (tensors, needle) in [
            (
                vec![("a", &[10u64][..], F32, 0), ("b", &[64][..], Q8_0, 32)],
                "end at 64",
            ),
            (
                vec![("a", &[10][..], F32, 0), ("b", &[64][..], Q8_0, 96)],
                "end at 64",
            ),
            (vec![("a", &[10][..], F32, 8)], "end at 0"),
            (
                vec![("a", &[10][..], F32, 0), ("a", &[10][..], F32, 64)],
                "listed twice",
            ),
            (vec![("a", &[33][..], Q8_0, 0)], "whole Q8_0 blocks"),
            (vec![("a", &[32][..], 19, 0)], "ggml type 19"),
            (vec![("a", &[32][..], 23, 0)], "whole IQ4_XS blocks"),
        ] {
            let e = check_offsets(&tensors).unwrap_err().to_string();
            assert!(e.contains(needle), "{tensors:?}: {e}");
        }
        // The i-quants are read: 256 IQ4_XS values take 136 bytes, 32 IQ4_NL ones 18.
        let h = read(
            path,
            &with_tensors(&[], &[("x", &[256, 2], 23, 0), ("n", &[32], 20, 288)]),
        )
        .unwrap();
        assert_eq!(h.tensors["x"].dtype, GgufType::Iq4Xs);
        assert_eq!(h.tensors["x"].dims, [2, 256]);
        assert_eq!(h.tensors["n"].dtype, GgufType::Iq4Nl);
        // A larger alignment moves the expected offsets.
        let kv = [("general.alignment", UINT32, 128u32.to_le_bytes().to_vec())];
        read(
            path,
            &with_tensors(&kv, &[("a", &[10], F32, 0), ("b", &[10], F32, 128)]),
        )
        .unwrap();
        assert!(
            read(
                path,
                &with_tensors(&kv, &[("a", &[10], F32, 0), ("b", &[10], F32, 64)])
            )
            .is_err()
        );
    }

    fn string(s: &str) -> Vec<u8> {
        let mut v = (s.len() as u64).to_le_bytes().to_vec();
        v.extend_from_slice(s.as_bytes());
        v
    }

    #[test]
    fn alignment_must_be_a_power_of_two() {
        let path = Path::new("m.gguf");
        // A string array before the key is walked over.
        let mut tokens = STRING.to_le_bytes().to_vec();
        tokens.extend_from_slice(&2u64.to_le_bytes());
        tokens.extend(string("a"));
        tokens.extend(string("bc"));
        for (alignment, ok) in [
            (32u32, true),
            (1, true),
            (0, false),
            (3, false),
            (48, false),
        ] {
            let h = header(&[
                ("general.architecture", STRING, string("llama")),
                ("tokenizer.ggml.tokens", ARRAY, tokens.clone()),
                (
                    "general.alignment",
                    UINT32,
                    alignment.to_le_bytes().to_vec(),
                ),
            ]);
            let r = read(path, &h);
            assert_eq!(r.is_ok(), ok, "alignment {alignment}: {r:?}");
            if let Err(e) = r {
                assert!(e.to_string().contains("general.alignment"), "{e}");
            }
        }
        // Wrong value type.
        let h = header(&[("general.alignment", 10, 32u64.to_le_bytes().to_vec())]);
        assert!(read(path, &h).is_err());
        // No key: the default. A header cut short: named.
        assert!(read(path, &header(&[])).is_ok());
        let h = header(&[("general.alignment", UINT32, 32u32.to_le_bytes().to_vec())]);
        let e = read(path, &h[..h.len() - 2]).unwrap_err().to_string();
        assert!(
            e.contains("general.alignment") && e.contains("cut short"),
            "{e}"
        );
    }
}
