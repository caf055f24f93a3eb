//! A streaming safetensors writer.
//!
//! The header (names, dtypes, shapes, offsets) is fully known from tensor metadata before any
//! data is read, so it is written first and tensors follow one at a time: peak memory is one
//! tensor, not one shard, which is what keeps `convert` of a large model inside a small RAM.

use std::io::{BufWriter, Write};
use std::path::Path;

use candle_core::{DType, Tensor};
use microllm_core::{Error, Result, TensorInfo, TensorSource};

/// Floating-point dtype of written weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutDtype {
    F32,
    F16,
    BF16,
}

impl OutDtype {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            OutDtype::F32 => 4,
            OutDtype::F16 | OutDtype::BF16 => 2,
        }
    }

    /// The safetensors header name.
    pub fn safetensors_name(self) -> &'static str {
        match self {
            OutDtype::F32 => "F32",
            OutDtype::F16 => "F16",
            OutDtype::BF16 => "BF16",
        }
    }

    /// The safetensors header dtype.
    pub(crate) fn safetensors_dtype(self) -> safetensors::Dtype {
        match self {
            OutDtype::F32 => safetensors::Dtype::F32,
            OutDtype::F16 => safetensors::Dtype::F16,
            OutDtype::BF16 => safetensors::Dtype::BF16,
        }
    }

    /// The `torch_dtype` written into config.json.
    pub fn torch_name(self) -> &'static str {
        match self {
            OutDtype::F32 => "float32",
            OutDtype::F16 => "float16",
            OutDtype::BF16 => "bfloat16",
        }
    }

    fn candle(self) -> DType {
        match self {
            OutDtype::F32 => DType::F32,
            OutDtype::F16 => DType::F16,
            OutDtype::BF16 => DType::BF16,
        }
    }
}

/// Writes `tensors` (read from `src`) to one safetensors file at `path`, converting to `dtype`.
/// Returns the number of bytes of tensor data written. Non-finite values (NaN, or overflow in
/// the narrower type) are an error naming the tensor.
pub fn write_safetensors(
    path: &Path,
    src: &dyn TensorSource,
    tensors: &[TensorInfo],
    dtype: OutDtype,
    mut on_tensor: impl FnMut(&TensorInfo),
) -> Result<u64> {
    let (header, data_bytes) = header_bytes(tensors.iter().map(|t| {
        let len = (t.numel() * dtype.size()) as u64;
        (
            t.name.as_str(),
            dtype.safetensors_dtype(),
            t.shape.as_slice(),
            len,
        )
    }));
    let file = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let io = |e| Error::io(path, e);
    out.write_all(&header).map_err(io)?;
    for t in tensors {
        let tensor = src.load(&t.name)?;
        let bytes = tensor_bytes(&tensor, dtype, &t.name, &src.origin())?;
        debug_assert_eq!(bytes.len(), t.numel() * dtype.size());
        out.write_all(&bytes).map_err(io)?;
        on_tensor(t);
    }
    let file = out
        .into_inner()
        .map_err(|e| Error::io(path, e.into_error()))?;
    file.sync_all().map_err(io)?;
    Ok(data_bytes)
}

/// A safetensors file's first bytes: the header's length (u64, little-endian), then its JSON
/// (`__metadata__` `{"format": "pt"}`, then every tensor's dtype, shape and offsets, in the
/// order given, data laid end to end), padded with spaces so the data starts 8-byte aligned;
/// and the length of the data that follows.
pub(crate) fn header_bytes<'a>(
    tensors: impl IntoIterator<Item = (&'a str, safetensors::Dtype, &'a [usize], u64)>,
) -> (Vec<u8>, u64) {
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), serde_json::json!({ "format": "pt" }));
    let mut offset = 0u64;
    for (name, dtype, shape, len) in tensors {
        header.insert(
            name.to_string(),
            serde_json::json!({
                "dtype": format!("{dtype:?}"),
                "shape": shape,
                "data_offsets": [offset, offset + len],
            }),
        );
        offset += len;
    }
    let mut json = serde_json::to_vec(&header).expect("JSON of plain values");
    json.resize(json.len().next_multiple_of(8), b' ');
    let mut bytes = (json.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(&json);
    (bytes, offset)
}

/// Little-endian bytes of tensor `name` (of `origin`, for errors) in `dtype`, refusing
/// non-finite values: NaN or inf in the source, or finite values beyond the range of `dtype`
/// (an f16 output holds at most 65504).
pub(crate) fn tensor_bytes(
    tensor: &Tensor,
    dtype: OutDtype,
    name: &str,
    origin: &str,
) -> Result<Vec<u8>> {
    let flat = tensor.flatten_all()?.to_dtype(dtype.candle())?;
    let check = |ok: bool| -> Result<()> {
        if ok {
            return Ok(());
        }
        let source = tensor
            .flatten_all()?
            .to_dtype(candle_core::DType::F32)?
            .to_vec1::<f32>()?;
        let msg = if source.iter().all(|x| x.is_finite()) {
            let largest = source.iter().fold(0f32, |m, x| m.max(x.abs()));
            format!(
                "holds values up to {largest:e}, beyond the range of {}: write it as f32 or bf16",
                dtype.safetensors_name()
            )
        } else {
            "contains NaN or infinite values".to_string()
        };
        Err(Error::NonFinite {
            name: name.to_string(),
            origin: origin.to_string(),
            msg,
        })
    };
    let bytes = match dtype {
        OutDtype::F32 => {
            let v = flat.to_vec1::<f32>()?;
            check(v.iter().all(|x| x.is_finite()))?;
            v.iter().flat_map(|x| x.to_le_bytes()).collect()
        }
        OutDtype::F16 => {
            let v = flat.to_vec1::<half::f16>()?;
            check(v.iter().all(|x| x.is_finite()))?;
            v.iter().flat_map(|x| x.to_le_bytes()).collect()
        }
        OutDtype::BF16 => {
            let v = flat.to_vec1::<half::bf16>()?;
            check(v.iter().all(|x| x.is_finite()))?;
            v.iter().flat_map(|x| x.to_le_bytes()).collect()
        }
    };
    Ok(bytes)
}

/// safetensors' `serialize_to_file`, leaving the file with the permissions every other output
/// gets. That function writes through a private temporary file (mode 0600) renamed into place,
/// so its files alone came out unreadable to other users; here the mode is set afterwards to
/// what creating a file gives under the process's umask (0644 usually).
pub fn serialize_safetensors_file<S, V, I>(
    data: I,
    metadata: Option<std::collections::HashMap<String, String>>,
    path: &Path,
) -> Result<()>
where
    S: AsRef<str> + Ord + std::fmt::Display,
    V: ::safetensors::View,
    I: IntoIterator<Item = (S, V)>,
{
    ::safetensors::serialize_to_file(data, metadata, path)
        .map_err(|e| Error::Invalid(format!("writing {}: {e}", path.display())))?;
    let mut probe = super::temp_sibling(path)?.into_os_string();
    probe.push(".mode-probe");
    let probe = std::path::PathBuf::from(probe);
    let created = std::fs::File::create(&probe).and_then(|f| f.metadata());
    let _ = std::fs::remove_file(&probe);
    let permissions = created.map_err(|e| Error::io(&probe, e))?.permissions();
    std::fs::set_permissions(path, permissions).map_err(|e| Error::io(path, e))
}
