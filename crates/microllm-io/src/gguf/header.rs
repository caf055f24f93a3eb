//! Checks on a GGUF header that candle's reader does not make before it trusts the values.
//!
//! candle divides by `general.alignment` when it places tensor data: a file that declares an
//! alignment of 0 panicked inside the reader ("attempt to divide by zero") instead of being
//! refused; and it places each tensor where its offset says without checking that the data
//! regions line up, so a changed type or a moved offset read garbage (perplexities in the
//! millions, exit status 0). So the whole header is walked here first, every read
//! bounds-checked against the mapped bytes, with llama.cpp's loader's rules: a known version,
//! a power-of-two alignment, unique tensor names, tensor data laid end to end.

use std::path::Path;

use microllm_core::{Error, Result};

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

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }

    fn string(&mut self) -> Option<&[u8]> {
        let n = usize::try_from(self.u64()?).ok()?;
        self.take(n)
    }

    /// Skips one value of type `ty`; `None` when it runs past the end or the type is unknown.
    fn skip(&mut self, ty: u32) -> Option<()> {
        match ty {
            STRING => self.string().map(|_| ()),
            ARRAY => {
                let item = self.u32()?;
                let n = self.u64()?;
                match fixed_size(item) {
                    Some(size) => {
                        let total = usize::try_from(n).ok()?.checked_mul(size)?;
                        self.take(total).map(|_| ())
                    }
                    None => {
                        // Every item takes at least 8 bytes (a string's length): a count the
                        // remaining bytes cannot hold is refused before looping over it.
                        if n > (self.bytes.len() - self.at) as u64 / 8 + 1 {
                            return None;
                        }
                        (0..n).try_for_each(|_| self.skip(item))
                    }
                }
            }
            other => self.take(fixed_size(other)?).map(|_| ()),
        }
    }
}

/// Checks the header of the GGUF bytes `map`: version 2 or 3, `general.alignment` a power of
/// two, tensor names unique, and each tensor's offset exactly where the previous one's padded
/// data ends, as llama.cpp's loader requires. That last rule catches a changed tensor type, overlapping or misaligned
/// data, and gaps, none of which candle's reader notices. A header that cannot be walked is
/// left to candle, whose error names what it found.
pub(crate) fn check(path: &Path, map: &[u8]) -> Result<()> {
    let mut c = Cursor { bytes: map, at: 4 };
    let Some(version) = c.u32() else {
        return Ok(());
    };
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
        return Ok(());
    };
    let mut alignment = DEFAULT_ALIGNMENT;
    for _ in 0..kvs {
        let Some(key) = c.string() else { return Ok(()) };
        let is_alignment = key == b"general.alignment";
        let Some(ty) = c.u32() else { return Ok(()) };
        if is_alignment {
            if ty != UINT32 {
                return Err(Error::format(
                    path,
                    format!("general.alignment has value type {ty}, the format says uint32 (4)"),
                ));
            }
            let Some(value) = c.u32() else {
                return Ok(());
            };
            if !value.is_power_of_two() {
                return Err(Error::format(
                    path,
                    format!("general.alignment = {value}: it must be a power of two"),
                ));
            }
            alignment = u64::from(value);
        } else if c.skip(ty).is_none() {
            return Ok(());
        }
    }
    check_tensor_infos(path, &mut c, tensors, alignment)
}

/// llama.cpp's default when a file does not set `general.alignment`.
const DEFAULT_ALIGNMENT: u64 = 32;

/// Walks the tensor infos: unique names, and offsets laid end to end (each tensor's data
/// padded to `alignment`), the layout every GGUF writer produces.
fn check_tensor_infos(path: &Path, c: &mut Cursor<'_>, count: u64, alignment: u64) -> Result<()> {
    // Every info takes at least 8 + 4 + 4 + 8 bytes: a count the header cannot hold is left
    // to candle's reader.
    if count > (c.bytes.len() - c.at) as u64 / 24 + 1 {
        return Ok(());
    }
    let mut seen = std::collections::HashSet::new();
    let mut expected_offset = 0u64;
    for _ in 0..count {
        let Some(name) = c.string() else {
            return Ok(());
        };
        let name = String::from_utf8_lossy(name).into_owned();
        let Some(n_dims) = c.u32() else { return Ok(()) };
        if n_dims > 4 {
            return Ok(());
        }
        // Dimensions are stored innermost first; the size rule takes them outermost first.
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            let Some(d) = c.u64() else { return Ok(()) };
            let Ok(d) = usize::try_from(d) else {
                return Err(Error::format(
                    path,
                    format!("tensor `{name}`: dimension {d} is too large"),
                ));
            };
            dims.push(d);
        }
        dims.reverse();
        let (Some(ty), Some(offset)) = (c.u32(), c.u64()) else {
            return Ok(());
        };
        if !seen.insert(name.clone()) {
            return Err(Error::format(
                path,
                format!("tensor `{name}` is listed twice in the header"),
            ));
        }
        // Types candle does not know are refused by its reader with the type named.
        let Some(dtype) = super::write::ggml_type_of(ty) else {
            return Ok(());
        };
        let bad = |msg: String| Error::format(path, format!("tensor `{name}`: {msg}"));
        // The same size rule the tensor index applies (whole blocks per row).
        let size = super::source::byte_size(dtype, &dims).map_err(bad)?;
        if offset != expected_offset {
            return Err(bad(format!(
                "its data starts at offset {offset}, but the tensors before it end at \
                 {expected_offset} (a changed tensor type, or overlapping or misplaced data: \
                 the file is corrupt)"
            )));
        }
        let end = size
            .checked_next_multiple_of(alignment)
            .and_then(|b| offset.checked_add(b))
            .ok_or_else(|| bad("its byte size overflows".into()))?;
        expected_offset = end;
    }
    Ok(())
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
            |tensors: &[(&str, &[u64], u32, u64)]| check(path, &with_tensors(&[], tensors));
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
        ] {
            let e = check_offsets(&tensors).unwrap_err().to_string();
            assert!(e.contains(needle), "{tensors:?}: {e}");
        }
        // A larger alignment moves the expected offsets.
        let kv = [("general.alignment", UINT32, 128u32.to_le_bytes().to_vec())];
        check(
            path,
            &with_tensors(&kv, &[("a", &[10], F32, 0), ("b", &[10], F32, 128)]),
        )
        .unwrap();
        assert!(
            check(
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
            let r = check(path, &h);
            assert_eq!(r.is_ok(), ok, "alignment {alignment}: {r:?}");
            if let Err(e) = r {
                assert!(e.to_string().contains("general.alignment"), "{e}");
            }
        }
        // Wrong value type.
        let h = header(&[("general.alignment", 10, 32u64.to_le_bytes().to_vec())]);
        assert!(check(path, &h).is_err());
        // No key, or a header cut short: left to candle's reader.
        assert!(check(path, &header(&[])).is_ok());
        let h = header(&[("general.alignment", UINT32, 0u32.to_le_bytes().to_vec())]);
        assert!(check(path, &h[..h.len() - 2]).is_ok());
    }
}
