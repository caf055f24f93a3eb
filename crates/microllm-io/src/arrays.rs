//! Small array files exchanged with other tools: token ids in, logits out.
//!
//! `microllm logits` reads an int64 `input_ids` tensor `[batch, seq]` from a safetensors file
//! (what `torch`/`numpy` users produce in one line) and writes f32 `logits`
//! `[batch, seq, vocab]`, so results can be compared with any other implementation.

use microllm_core::le::decode_le;
use std::path::Path;

use candle_core::Tensor;
use microllm_core::{Error, MemorySource, Result, TensorSource};
use safetensors::{Dtype, SafeTensors};

use crate::write::{OutDtype, write_file_atomic, write_safetensors};

/// Token ids `[batch][seq]` read from the integer tensor `name` of a safetensors file.
pub fn read_token_ids(path: &Path, name: &str) -> Result<Vec<Vec<u32>>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| Error::format(path, format!("invalid safetensors file: {e}")))?;
    let view = st.tensor(name).map_err(|_| Error::MissingTensor {
        name: name.into(),
        origin: path.display().to_string(),
    })?;
    let shape = view.shape().to_vec();
    let bad = |msg: String| Error::TensorData {
        name: name.into(),
        origin: path.display().to_string(),
        msg,
    };
    let [batch, seq] = shape[..] else {
        return Err(bad(format!(
            "expected 2 dimensions [batch, seq], found {shape:?}"
        )));
    };
    let values: Vec<i64> = match view.dtype() {
        Dtype::I64 => decode_le(view.data()),
        Dtype::I32 => decode_le::<i32>(view.data())
            .into_iter()
            .map(i64::from)
            .collect(),
        other => return Err(bad(format!("expected int64 token ids, found {other:?}"))),
    };
    let ids = values
        .iter()
        .map(|&v| {
            u32::try_from(v).map_err(|_| bad(format!("token id {v} is negative or too large")))
        })
        .collect::<Result<Vec<u32>>>()?;
    if seq == 0 {
        return Err(bad("sequence length is 0".into()));
    }
    Ok(ids.chunks(seq).take(batch).map(<[u32]>::to_vec).collect())
}

/// Writes f32 tensors to a safetensors file, atomically.
pub fn write_f32_tensors(path: &Path, tensors: Vec<(String, Tensor)>) -> Result<()> {
    let mut src = MemorySource::new(path.display().to_string());
    for (name, t) in tensors {
        src.insert(name, t);
    }
    let infos = src.infos();
    write_file_atomic(path, |tmp| {
        write_safetensors(tmp, &src, &infos, OutDtype::F32, |_| {}).map(|_| ())
    })
}
