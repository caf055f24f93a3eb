//! [`GgufSource`]: the tensors of a memory-mapped GGUF file, one at a time, as Hugging Face
//! f32 tensors.
//!
//! The file is mapped, not read: opening costs the header only, and a tensor's blocks are
//! touched when it is loaded, dequantized with candle (every type candle decodes: F32, F16,
//! BF16, Q4_0 ... Q8_0, the k-quants) and handed out. Everything a caller could trip over is
//! settled at open time instead of at load time: every name is translated (an unknown one is an
//! error naming it), every tensor's byte range is checked against the file length (a truncated
//! download names the first tensor it cuts), fused q/k/v tensors are announced as their three
//! parts, and llama-family q/k rows are un-permuted on load (see [`super::names`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::gguf::GgufType;
use candle_core::quantized::QTensor;
use candle_core::quantized::ggml_file::qtensor_from_ggml;
use candle_core::{DType, Device, Tensor};
use memmap2::Mmap;
use microllm_core::names::{self, LinearKind};
use microllm_core::{Error, ModelConfig, PackedMatrix, Result, TensorInfo, TensorSource};

use super::header::Header;
use super::names::{
    Mapped, gguf_to_hf, is_norm_weight, is_rope_permuted, norms_hold_unit_offset, unpermute_rows,
};

/// GGUF tensors that are model metadata rather than weights: llama.cpp's rotary divisors,
/// read into the configuration ([`super::config`]) instead of handed out.
pub(crate) const METADATA_TENSORS: [&str; 1] = ["rope_freqs.weight"];

/// Where one Hugging Face tensor comes from.
struct Entry {
    /// The GGUF tensor holding it (for fused q/k/v: the fused tensor).
    gguf_name: String,
    dtype: GgufType,
    /// Shape of the GGUF tensor, outermost first.
    dims: Vec<usize>,
    /// Absolute byte range of the GGUF tensor inside the mapping.
    start: usize,
    end: usize,
    /// For parts of a fused tensor: `(first_row, rows)` to keep.
    rows: Option<(usize, usize)>,
    /// Heads to un-permute over (llama-family q/k).
    unpermute_heads: Option<usize>,
    /// Subtracted from every value on load (the `1` llama.cpp folds into Gemma's norms).
    minus: f32,
    /// Shape handed out.
    shape: Vec<usize>,
    stored_bytes: u64,
}

/// The tensors of one GGUF file under Hugging Face names.
pub struct GgufSource {
    path: PathBuf,
    map: Mmap,
    entries: HashMap<String, Entry>,
    order: Vec<String>,
}

/// Little-endian f32 bytes into `dest` (`bytes.len() == 4 * dest.len()`): a plain copy on a
/// little-endian machine, a decode loop elsewhere.
fn copy_le_f32(bytes: &[u8], dest: &mut [f32]) {
    if cfg!(target_endian = "little") {
        // SAFETY: `dest` is `4 * dest.len()` initialised bytes, any bit pattern is a valid
        // f32, and on a little-endian machine the file's bytes are the values' own.
        let raw = unsafe {
            std::slice::from_raw_parts_mut(dest.as_mut_ptr().cast::<u8>(), 4 * dest.len())
        };
        raw.copy_from_slice(bytes);
    } else {
        for (v, b) in dest.iter_mut().zip(bytes.chunks_exact(4)) {
            *v = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        }
    }
}

/// Tensor data of `dtype` and shape `dims` (outermost first) as f32: the i-quants by
/// microllm's decoder ([`iq4`](super::iq4)), the rest by candle's.
pub(crate) fn dequantize(
    dtype: GgufType,
    bytes: &[u8],
    dims: &[usize],
) -> candle_core::Result<Tensor> {
    if matches!(dtype, GgufType::Iq4Nl | GgufType::Iq4Xs) {
        let mut values = vec![0f32; dims.iter().product()];
        if dtype == GgufType::Iq4Nl {
            super::iq4::dequantize_iq4_nl(bytes, &mut values);
        } else {
            super::iq4::dequantize_iq4_xs(bytes, &mut values);
        }
        return Tensor::from_vec(values, dims, &Device::Cpu);
    }
    let Some(candle_type) = dtype.candle() else {
        candle_core::bail!("no decoder for {dtype}");
    };
    // candle reinterprets the bytes as blocks (which hold f16/f32 fields): give it an
    // 8-aligned slice. GGUF aligns tensor data (32 bytes by default), so the copy is for
    // unusual files only.
    let q: QTensor = if bytes.as_ptr().align_offset(8) == 0 {
        qtensor_from_ggml(candle_type, bytes, dims.to_vec(), &Device::Cpu)?
    } else {
        let mut buf = vec![0u8; bytes.len() + 8];
        let pad = buf.as_ptr().align_offset(8);
        buf[pad..pad + bytes.len()].copy_from_slice(bytes);
        qtensor_from_ggml(
            candle_type,
            &buf[pad..pad + bytes.len()],
            dims.to_vec(),
            &Device::Cpu,
        )?
    };
    q.dequantize(&Device::Cpu)?.to_dtype(DType::F32)
}

/// The GGUF row holding Hugging Face row `r` of a llama-family q/k matrix of `rows` rows over
/// `heads` heads: llama.cpp interleaves each head's two rotary halves (see [`unpermute_rows`]).
fn permuted_row(r: usize, rows: usize, heads: usize) -> usize {
    let half = rows / heads / 2;
    let (head, rem) = (r / (2 * half), r % (2 * half));
    head * 2 * half + (rem % half) * 2 + rem / half
}

/// Bytes a tensor of `dims` occupies, or why it cannot be stored as `dtype`.
pub(crate) fn byte_size(dtype: GgufType, dims: &[usize]) -> std::result::Result<u64, String> {
    let elems = dims
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))
        .ok_or("its element count overflows")?;
    let block = dtype.block_size() as u64;
    if !elems.is_multiple_of(block)
        || dims
            .last()
            .is_some_and(|&d| !(d as u64).is_multiple_of(block))
    {
        return Err(format!(
            "shape {dims:?} is not made of whole {} blocks of {block}",
            dtype.name()
        ));
    }
    (elems / block)
        .checked_mul(dtype.type_size() as u64)
        .ok_or_else(|| "its byte size overflows".to_string())
}

impl GgufSource {
    /// Indexes the tensors of a mapped GGUF file whose header is `content`.
    ///
    /// Fails, naming the file and the tensor, on a name the family has no use for, a shape the
    /// storage type cannot hold, a fused q/k/v whose rows do not fit `config`, or data that
    /// extends past the end of the file.
    pub(crate) fn new(
        path: &Path,
        map: Mmap,
        header: &Header,
        config: &ModelConfig,
    ) -> Result<Self> {
        let file_len = map.len() as u64;
        let mut gguf: Vec<_> = header.tensors.iter().collect();
        gguf.sort_by(|a, b| (a.1.offset, a.0).cmp(&(b.1.offset, b.0)));

        let mut entries = HashMap::new();
        let mut order = Vec::new();
        for (gname, info) in gguf {
            if METADATA_TENSORS.contains(&gname.as_str()) {
                continue;
            }
            let bad = |msg: String| Error::format(path, format!("tensor `{gname}`: {msg}"));
            let dims = info.dims.clone();
            let size = byte_size(info.dtype, &dims).map_err(&bad)?;
            let start = header
                .data_offset
                .checked_add(info.offset)
                .ok_or_else(|| bad("data offset overflows".into()))?;
            let end = start
                .checked_add(size)
                .filter(|&e| e <= file_len)
                .ok_or_else(|| {
                    bad(format!(
                        "data needs bytes {start}..{} but the file has only {file_len} bytes \
                     (truncated or corrupt download?)",
                        start.saturating_add(size)
                    ))
                })?;
            let mapped = gguf_to_hf(config.family, gname).ok_or_else(|| {
                bad(format!(
                    "not a tensor a {} model has (no Hugging Face name for it)",
                    config.family
                ))
            })?;
            let base = Entry {
                gguf_name: gname.clone(),
                dtype: info.dtype,
                dims: dims.clone(),
                start: start as usize,
                end: end as usize,
                rows: None,
                unpermute_heads: None,
                minus: 0.0,
                shape: dims.clone(),
                stored_bytes: size,
            };
            let parts: Vec<(String, Entry)> = match mapped {
                Mapped::One(hf) => {
                    let heads = rope_heads(config, gname);
                    let minus = if norms_hold_unit_offset(config.family) && is_norm_weight(&hf) {
                        1.0
                    } else {
                        0.0
                    };
                    vec![(
                        hf,
                        Entry {
                            unpermute_heads: heads,
                            minus,
                            ..base
                        },
                    )]
                }
                Mapped::Fused {
                    layer,
                    suffix,
                    parts,
                } => split_fused(path, config, base, (layer, suffix), parts)?,
            };
            for (hf, entry) in parts {
                if let Some(prev) = entries.get(&hf).map(|e: &Entry| e.gguf_name.clone()) {
                    return Err(Error::format(
                        path,
                        format!("tensors `{prev}` and `{gname}` both provide `{hf}`"),
                    ));
                }
                order.push(hf.clone());
                entries.insert(hf, entry);
            }
        }
        Ok(Self {
            path: path.to_path_buf(),
            map,
            entries,
            order,
        })
    }

    /// The GGUF tensor a Hugging Face tensor is read from.
    pub fn gguf_name(&self, name: &str) -> Option<&str> {
        self.entries.get(name).map(|e| e.gguf_name.as_str())
    }

    /// The storage type of a tensor.
    pub fn ggml_dtype(&self, name: &str) -> Option<GgufType> {
        self.entries.get(name).map(|e| e.dtype)
    }

    fn entry_info(&self, name: &str, e: &Entry) -> TensorInfo {
        TensorInfo {
            name: name.to_string(),
            dtype: e.dtype.name().to_string(),
            shape: e.shape.clone(),
            stored_bytes: e.stored_bytes,
        }
    }

    /// An F32 tensor's values, copied out of the map a slice at a time with each slice's
    /// pages released once copied: at no point are both the mapped bytes and the copy of a
    /// large tensor (SmolLM2's 113 MB embedding) resident.
    fn copy_f32(&self, e: &Entry) -> candle_core::Result<Tensor> {
        const SLICE: usize = 1 << 20;
        let mut values = vec![0f32; (e.end - e.start) / 4];
        for (i, dest) in values.chunks_mut(SLICE / 4).enumerate() {
            let from = e.start + i * SLICE;
            let to = from + 4 * dest.len();
            copy_le_f32(&self.map[from..to], dest);
            crate::mmap::release(&self.map, from, to);
        }
        Tensor::from_vec(values, e.dims.as_slice(), &Device::Cpu)
    }

    fn decode(&self, e: &Entry) -> candle_core::Result<Tensor> {
        let bytes = &self.map[e.start..e.end];
        // F32 is copied out of the map once: through a QTensor it was copied, zeroed and copied
        // again, which made up most of `convert`'s time on F32 files.
        if e.dtype == GgufType::F32 {
            let mut t = self.copy_f32(e)?;
            if let Some((first, n)) = e.rows {
                t = t.narrow(0, first, n)?.contiguous()?;
            }
            if e.minus != 0.0 {
                t = (t - e.minus as f64)?;
            }
            return Ok(t);
        }
        let mut t = dequantize(e.dtype, bytes, &e.dims)?;
        crate::mmap::release(&self.map, e.start, e.end);
        if let Some((first, n)) = e.rows {
            t = t.narrow(0, first, n)?.contiguous()?;
        }
        if e.minus != 0.0 {
            t = (t - e.minus as f64)?;
        }
        Ok(t)
    }
}

/// Heads to un-permute over, if `gname` is a llama-family q or k tensor.
fn rope_heads(config: &ModelConfig, gname: &str) -> Option<usize> {
    if !is_rope_permuted(config.family) {
        return None;
    }
    let stem = gname
        .strip_suffix(".weight")
        .or_else(|| gname.strip_suffix(".bias"))?;
    if stem.ends_with(".attn_q") {
        Some(config.num_heads)
    } else if stem.ends_with(".attn_k") {
        Some(config.num_kv_heads)
    } else {
        None
    }
}

/// The parts of a fused tensor (`attn_qkv`: q, k, v; Phi-3's `ffn_up`: gate, up).
fn split_fused(
    path: &Path,
    config: &ModelConfig,
    fused: Entry,
    (layer, suffix): (usize, &str),
    parts: &[LinearKind],
) -> Result<Vec<(String, Entry)>> {
    let rows: Vec<usize> = parts
        .iter()
        .map(|&k| crate::fused::part_rows(config, k))
        .collect();
    let total: usize = rows.iter().sum();
    if fused.dims.first() != Some(&total) {
        let mut expected = fused.dims.clone();
        if let Some(first) = expected.first_mut() {
            *first = total;
        }
        return Err(Error::Shape {
            name: fused.gguf_name.clone(),
            origin: path.display().to_string(),
            expected,
            actual: fused.dims.clone(),
        });
    }
    let permuted = is_rope_permuted(config.family);
    let mut first = 0;
    Ok(parts
        .iter()
        .zip(rows)
        .map(|(&kind, n)| {
            let name = match suffix {
                "bias" => names::linear_bias(config.family, layer, kind),
                _ => names::linear_weight(config.family, layer, kind),
            };
            let heads = match kind {
                LinearKind::Q => config.num_heads,
                LinearKind::K => config.num_kv_heads,
                _ => 0,
            };
            let mut shape = fused.dims.clone();
            shape[0] = n;
            let entry = Entry {
                gguf_name: fused.gguf_name.clone(),
                dtype: fused.dtype,
                dims: fused.dims.clone(),
                start: fused.start,
                end: fused.end,
                rows: Some((first, n)),
                unpermute_heads: (permuted && heads > 0).then_some(heads),
                minus: 0.0,
                shape,
                stored_bytes: fused.stored_bytes * n as u64 / total as u64,
            };
            first += n;
            (name, entry)
        })
        .collect())
}

impl TensorSource for GgufSource {
    fn origin(&self) -> String {
        self.path.display().to_string()
    }

    fn infos(&self) -> Vec<TensorInfo> {
        self.order
            .iter()
            .map(|n| self.entry_info(n, &self.entries[n]))
            .collect()
    }

    fn info(&self, name: &str) -> Option<TensorInfo> {
        self.entries.get(name).map(|e| self.entry_info(name, e))
    }

    fn load_packed(&self, name: &str) -> Result<Option<PackedMatrix>> {
        let e = self.entries.get(name).ok_or_else(|| Error::MissingTensor {
            name: name.to_string(),
            origin: self.origin(),
        })?;
        let Some(kind) = e.dtype.block_type() else {
            return Ok(None);
        };
        let &[rows, cols] = e.shape.as_slice() else {
            return Ok(None);
        };
        if e.minus != 0.0 {
            return Ok(None);
        }
        let row_bytes = kind.row_bytes(cols).expect("checked at open");
        let first = e.rows.map_or(0, |(first, _)| first);
        if let Some(heads) = e.unpermute_heads
            && (heads == 0 || !rows.is_multiple_of(2 * heads))
        {
            return Err(Error::TensorData {
                name: name.to_string(),
                origin: self.origin(),
                msg: format!("{rows} rows cannot be split into {heads} heads of an even size"),
            });
        }
        let bytes = &self.map[e.start..e.end];
        let mut data = Vec::with_capacity(rows * row_bytes);
        for r in 0..rows {
            let src = first
                + match e.unpermute_heads {
                    Some(heads) => permuted_row(r, rows, heads),
                    None => r,
                };
            data.extend_from_slice(&bytes[src * row_bytes..(src + 1) * row_bytes]);
        }
        crate::mmap::release(&self.map, e.start, e.end);
        Ok(Some(PackedMatrix::new(name, kind, rows, cols, data)?))
    }

    fn load(&self, name: &str) -> Result<Tensor> {
        let e = self.entries.get(name).ok_or_else(|| Error::MissingTensor {
            name: name.to_string(),
            origin: self.origin(),
        })?;
        let data_err = |msg: String| Error::TensorData {
            name: name.to_string(),
            origin: self.origin(),
            msg: format!("GGUF tensor `{}` ({}): {msg}", e.gguf_name, e.dtype.name()),
        };
        let t = self.decode(e).map_err(|err| data_err(err.to_string()))?;
        match e.unpermute_heads {
            Some(heads) => unpermute_rows(&t, heads).map_err(|err| data_err(err.to_string())),
            None => Ok(t),
        }
    }
}
