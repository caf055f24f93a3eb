//! llama.cpp's importance-matrix files, read and written.
//!
//! `llama-imatrix` writes a GGUF file by default (`general.type = "imatrix"`): per matrix, an
//! F32 tensor `NAME.in_sum2` `[n_mat, n_per_row]` of summed squared inputs and `NAME.counts`
//! `[n_mat, 1]` of the rows summed, plus `imatrix.datasets`, `imatrix.chunk_count` and
//! `imatrix.chunk_size`. Its older `.dat` layout (`--output-format dat`, and every file made
//! before mid-2025) is a flat list: entry count, then per entry a name, a call count `ncall`,
//! a value count and the values `mean * ncall`, then the chunk count and the dataset name.
//! Both come down to the same thing microllm measures: the mean square of each input column
//! ([`ImportanceMatrix`]), under GGUF tensor names, which are translated to Hugging Face ones
//! (a fused `attn_qkv` entry serves q, k and v).
//!
//! microllm writes its own measurements in the GGUF layout, so `llama-quantize --imatrix`
//! takes them.

use microllm_core::le::decode_le;
use std::path::Path;

use crate::gguf::GgufType;
use candle_core::quantized::gguf_file::Value;
use microllm_core::names;
use microllm_core::{Error, Family, Result};

use super::ImportanceMatrix;
use super::names::{Mapped, gguf_to_hf, hf_to_gguf};
use super::write::{GgufWriter, PlannedTensor};

const IN_SUM2: &str = ".in_sum2";
const COUNTS: &str = ".counts";

impl ImportanceMatrix {
    /// Reads an importance matrix written by `llama-imatrix` (GGUF or legacy `.dat`) for a
    /// model of `family`, or by [`write_gguf`](Self::write_gguf).
    pub fn read(path: &Path, family: Family) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let entries = if bytes.starts_with(super::GGUF_MAGIC) {
            read_gguf(path, &bytes)?
        } else {
            read_dat(path, &bytes)?
        };
        if entries.matrices.is_empty() {
            return Err(Error::format(
                path,
                "the importance matrix holds no entries",
            ));
        }
        let mut matrix = ImportanceMatrix::new(entries.tokens);
        for (gguf_name, means) in entries.matrices {
            match gguf_to_hf(family, &gguf_name) {
                Some(Mapped::One(hf)) => matrix.insert(hf, means),
                Some(Mapped::Fused { layer, parts, .. }) => {
                    for &kind in parts {
                        matrix.insert(names::linear_weight(family, layer, kind), means.clone());
                    }
                }
                None => {
                    return Err(Error::format(
                        path,
                        format!(
                            "entry `{gguf_name}` is not a tensor of a {family} model: the \
                             importance matrix was made for another architecture"
                        ),
                    ));
                }
            }
        }
        Ok(matrix)
    }

    /// Writes the matrix in `llama-imatrix`'s GGUF layout for a model of `family`; `dataset`
    /// names the calibration data and `chunk_size` the tokens per calibration window.
    pub fn write_gguf(
        &self,
        path: &Path,
        family: Family,
        dataset: &str,
        chunk_size: usize,
        overwrite: bool,
    ) -> Result<()> {
        let mut entries: Vec<(String, &[f32])> = Vec::new();
        for (hf, means) in &self.columns {
            let Some(gguf) = gguf_name_of(family, hf) else {
                return Err(Error::Invalid(format!(
                    "`{hf}` has no GGUF name in a {family} model"
                )));
            };
            // Fused q/k/v (Phi-3) share one entry: their inputs are the same.
            if !entries.iter().any(|(n, _)| *n == gguf) {
                entries.push((gguf, means));
            }
        }
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        let chunks = self.tokens / chunk_size.max(1);
        let metadata = vec![
            ("general.type".to_string(), Value::String("imatrix".into())),
            (
                "imatrix.datasets".to_string(),
                Value::Array(vec![Value::String(dataset.into())]),
            ),
            (
                "imatrix.chunk_count".to_string(),
                Value::U32(u32::try_from(chunks).unwrap_or(u32::MAX)),
            ),
            (
                "imatrix.chunk_size".to_string(),
                Value::U32(u32::try_from(chunk_size).unwrap_or(u32::MAX)),
            ),
        ];
        let mut plan = Vec::new();
        for (name, means) in &entries {
            plan.push(PlannedTensor {
                name: format!("{name}{IN_SUM2}"),
                shape: vec![1, means.len()],
                dtype: GgufType::F32,
            });
            plan.push(PlannedTensor {
                name: format!("{name}{COUNTS}"),
                shape: vec![1, 1],
                dtype: GgufType::F32,
            });
        }
        let mut writer = GgufWriter::create(path, &metadata, plan, overwrite)?;
        let count = self.tokens.max(1) as f32;
        let f32_bytes = |v: &mut dyn Iterator<Item = f32>| -> Vec<u8> {
            v.flat_map(f32::to_le_bytes).collect()
        };
        for (name, means) in &entries {
            // llama.cpp stores sums and divides by the count: sums are the means times it.
            let sums = f32_bytes(&mut means.iter().map(|m| m * count));
            writer.write_tensor(&format!("{name}{IN_SUM2}"), &sums)?;
            writer.write_tensor(&format!("{name}{COUNTS}"), &count.to_le_bytes())?;
        }
        writer.finish()?;
        Ok(())
    }
}

/// The GGUF entry name of Hugging Face weight `hf`: its own, or its fused module's.
fn gguf_name_of(family: Family, hf: &str) -> Option<String> {
    if let Some((layer, kind)) = names::parse_linear_weight(family, hf)
        && let Some(fused) = family
            .fused_linears()
            .iter()
            .find(|f| f.parts.contains(&kind))
    {
        return hf_to_gguf(family, &names::fused_weight(layer, fused.module));
    }
    hf_to_gguf(family, hf)
}

/// Entries of a file, under GGUF names, as mean squares; and the rows they were taken over.
struct Entries {
    matrices: Vec<(String, Vec<f32>)>,
    tokens: usize,
}

fn read_gguf(path: &Path, bytes: &[u8]) -> Result<Entries> {
    let header = super::header::read(path, bytes)?;
    let bad = |msg: String| Error::format(path, msg);
    match header.metadata.get("general.type") {
        Some(Value::String(t)) if t == "imatrix" => {}
        _ => {
            return Err(bad(
                "not an importance matrix (general.type is not \"imatrix\"): a model file?".into(),
            ));
        }
    }
    let load = |name: &str| -> Result<Vec<f32>> {
        let info = header
            .tensors
            .get(name)
            .ok_or_else(|| bad(format!("tensor `{name}` is missing")))?;
        if info.dtype != GgufType::F32 {
            return Err(bad(format!("tensor `{name}` is not F32")));
        }
        let n: usize = info.dims.iter().product();
        let start = (header.data_offset + info.offset) as usize;
        let data = start
            .checked_add(4 * n)
            .and_then(|end| bytes.get(start..end))
            .ok_or_else(|| {
                bad(format!(
                    "tensor `{name}`: its data lies beyond the end of the file"
                ))
            })?;
        Ok(microllm_core::le::decode_le::<f32>(data))
    };
    let mut names: Vec<&String> = header.tensors.keys().collect();
    names.sort();
    let mut matrices = Vec::new();
    let mut tokens = 0usize;
    for sum_name in names {
        let Some(name) = sum_name.strip_suffix(IN_SUM2) else {
            continue;
        };
        let counts = load(&format!("{name}{COUNTS}"))?;
        let [count] = counts[..] else {
            return Err(bad(format!(
                "entry `{name}` has {} matrices (an expert model's): microllm's families have one",
                counts.len()
            )));
        };
        if !(count.is_finite() && count > 0.0) {
            // llama.cpp writes entries no input reached with a count of 0: nothing measured.
            continue;
        }
        let sums = load(sum_name)?;
        if sums.iter().any(|v| !(v.is_finite() && *v >= 0.0)) {
            return Err(bad(format!(
                "entry `{name}` holds a sum of squares that is negative or not finite"
            )));
        }
        tokens = tokens.max(count as usize);
        matrices.push((name.to_string(), sums.iter().map(|s| s / count).collect()));
    }
    Ok(Entries { matrices, tokens })
}

/// A bounds-checked reader over a legacy `.dat` file.
struct DatReader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> DatReader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.bytes.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(s)
    }

    fn i32(&mut self) -> Option<i32> {
        Some(i32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
}

fn read_dat(path: &Path, bytes: &[u8]) -> Result<Entries> {
    let bad = |msg: String| Error::format(path, format!("legacy imatrix (.dat): {msg}"));
    let short = |what: &str| bad(format!("cut short reading {what}"));
    let mut r = DatReader { bytes, at: 0 };
    let n = r.i32().ok_or_else(|| short("the entry count"))?;
    let n = usize::try_from(n)
        .ok()
        .filter(|&n| n >= 1 && n <= bytes.len() / 12)
        .ok_or_else(|| bad(format!("{n} entries: not a legacy imatrix file")))?;
    let mut matrices = Vec::with_capacity(n);
    for e in 0..n {
        let len = r.i32().ok_or_else(|| short("a name length"))?;
        let len = usize::try_from(len).map_err(|_| bad(format!("entry {e}: name length {len}")))?;
        let name = r
            .take(len)
            .and_then(|b| std::str::from_utf8(b).ok())
            .ok_or_else(|| bad(format!("entry {e}: name cut short or not UTF-8")))?
            .to_string();
        let ncall = r.i32().ok_or_else(|| short("a call count"))?;
        let nval = r.i32().ok_or_else(|| short("a value count"))?;
        let nval = usize::try_from(nval)
            .ok()
            .filter(|&v| v >= 1)
            .ok_or_else(|| bad(format!("entry `{name}`: {nval} values")))?;
        let values = nval
            .checked_mul(4)
            .and_then(|n| r.take(n))
            .ok_or_else(|| short(&format!("the values of `{name}`")))?;
        // Values are stored as `mean * ncall`.
        let scale = if ncall > 0 { 1.0 / ncall as f32 } else { 1.0 };
        let means: Vec<f32> = decode_le::<f32>(values)
            .into_iter()
            .map(|v| v * scale)
            .collect();
        if means.iter().any(|v| !(v.is_finite() && *v >= 0.0)) {
            return Err(bad(format!(
                "entry `{name}` holds a value that is negative or not finite"
            )));
        }
        matrices.push((name, means));
    }
    // The chunk count and dataset name that follow carry nothing the quantizer uses.
    Ok(Entries {
        matrices,
        tokens: 0,
    })
}

#[cfg(test)]
mod tests {
    use microllm_core::LinearKind;

    use super::*;

    fn dat(entries: &[(&str, i32, &[f32])]) -> Vec<u8> {
        let mut b = (entries.len() as i32).to_le_bytes().to_vec();
        for (name, ncall, values) in entries {
            b.extend_from_slice(&(name.len() as i32).to_le_bytes());
            b.extend_from_slice(name.as_bytes());
            b.extend_from_slice(&ncall.to_le_bytes());
            b.extend_from_slice(&(values.len() as i32).to_le_bytes());
            for v in *values {
                b.extend_from_slice(&v.to_le_bytes());
            }
        }
        b.extend_from_slice(&7i32.to_le_bytes());
        b.extend_from_slice(&4i32.to_le_bytes());
        b.extend_from_slice(b"data");
        b
    }

    #[test]
    fn legacy_dat_entries_become_means_under_hf_names() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("imatrix.dat");
        std::fs::write(
            &path,
            dat(&[
                ("blk.0.attn_q.weight", 4, &[4.0, 8.0]),
                ("blk.1.ffn_down.weight", 2, &[1.0, 3.0, 5.0]),
            ]),
        )
        .unwrap();
        let m = ImportanceMatrix::read(&path, Family::Llama).unwrap();
        assert_eq!(
            m.columns("model.layers.0.self_attn.q_proj.weight"),
            Some(&[1.0, 2.0][..])
        );
        assert_eq!(
            m.columns("model.layers.1.mlp.down_proj.weight"),
            Some(&[0.5, 1.5, 2.5][..])
        );
        // Cut short, or made for a family without such a tensor.
        let whole = std::fs::read(&path).unwrap();
        std::fs::write(&path, &whole[..30]).unwrap();
        let e = ImportanceMatrix::read(&path, Family::Llama)
            .unwrap_err()
            .to_string();
        assert!(e.contains("cut short"), "{e}");
        std::fs::write(&path, dat(&[("blk.0.mystery.weight", 1, &[1.0])])).unwrap();
        let e = ImportanceMatrix::read(&path, Family::Llama)
            .unwrap_err()
            .to_string();
        assert!(e.contains("blk.0.mystery.weight"), "{e}");
    }

    #[test]
    fn gguf_round_trip_and_fused_entries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("imatrix.gguf");
        let mut m = ImportanceMatrix::new(64);
        for kind in [LinearKind::Q, LinearKind::K, LinearKind::V] {
            m.insert(names::linear_weight(Family::Phi3, 0, kind), vec![1.0, 2.0]);
        }
        m.insert(
            names::linear_weight(Family::Phi3, 0, LinearKind::Down),
            vec![0.25; 4],
        );
        m.write_gguf(&path, Family::Phi3, "calib.txt", 32, false)
            .unwrap();
        let back = ImportanceMatrix::read(&path, Family::Phi3).unwrap();
        assert_eq!(back, m);
        // Read for a family without fused q/k/v, the fused entry is refused by name.
        let e = ImportanceMatrix::read(&path, Family::Llama)
            .unwrap_err()
            .to_string();
        assert!(e.contains("attn_qkv"), "{e}");
    }
}
