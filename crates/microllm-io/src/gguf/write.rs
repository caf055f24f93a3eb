//! A streaming GGUF writer.
//!
//! The GGUF header lists every tensor's name, shape, type and data offset before any data, and
//! all of that follows from the plan (shapes and chosen types), so the header is written first
//! and tensor data is appended one tensor at a time as it is produced: peak memory is one
//! tensor, which is what lets a model larger than RAM be quantized block by block.
//!
//! Layout (GGUF v3, little-endian): magic `GGUF`, version u32, tensor count u64, metadata count
//! u64, metadata (key string, type u32, value), tensor infos (name string, n_dims u32, dims u64
//! innermost first, type u32, offset u64 relative to the data section), padding to
//! `general.alignment` (32), then each tensor's bytes, each starting at an aligned offset.
//! The file is written under a temporary name and renamed into place by [`GgufWriter::finish`].

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::gguf::GgufType;
use candle_core::quantized::gguf_file::Value;
use microllm_core::{Error, Result};

use crate::write::temp_sibling;

/// Alignment of tensor data, the GGUF default (`general.alignment` is written explicitly).
pub const ALIGNMENT: u64 = 32;

/// One tensor the file will hold.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedTensor {
    /// GGUF name (`blk.0.attn_q.weight`).
    pub name: String,
    /// Shape outermost first (`[out, in]`), as in Hugging Face; reversed on disk.
    pub shape: Vec<usize>,
    pub dtype: GgufType,
}

impl PlannedTensor {
    /// Bytes of the tensor's data.
    pub fn byte_len(&self) -> Result<u64> {
        let numel: usize = self.shape.iter().product();
        let block = self.dtype.block_size();
        if !numel.is_multiple_of(block) {
            return Err(Error::Invalid(format!(
                "tensor `{}` {:?}: {} values are not a whole number of {:?} blocks of {block}",
                self.name, self.shape, numel, self.dtype
            )));
        }
        Ok((numel / block * self.dtype.type_size()) as u64)
    }
}

/// Writes a GGUF file: header at creation, then tensors in plan order.
pub struct GgufWriter {
    out: BufWriter<File>,
    tmp: PathBuf,
    dest: PathBuf,
    plan: Vec<PlannedTensor>,
    next: usize,
    finished: bool,
}

impl std::fmt::Debug for GgufWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufWriter")
            .field("dest", &self.dest)
            .field("next", &self.next)
            .finish_non_exhaustive()
    }
}

impl GgufWriter {
    /// Creates the file (under a temporary name) and writes metadata and tensor infos.
    pub fn create(
        dest: &Path,
        metadata: &[(String, Value)],
        plan: Vec<PlannedTensor>,
        overwrite: bool,
    ) -> Result<Self> {
        if dest.exists() && !overwrite {
            return Err(Error::Invalid(format!(
                "output {} already exists (pass --force to replace it)",
                dest.display()
            )));
        }
        let tmp = temp_sibling(dest)?;
        let file = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        let mut writer = Self {
            out: BufWriter::with_capacity(1 << 20, file),
            tmp,
            dest: dest.to_path_buf(),
            plan,
            next: 0,
            finished: false,
        };
        writer.write_header(metadata)?;
        Ok(writer)
    }

    fn write_header(&mut self, metadata: &[(String, Value)]) -> Result<()> {
        let mut header = Vec::new();
        header.extend_from_slice(b"GGUF");
        header.extend_from_slice(&3u32.to_le_bytes());
        header.extend_from_slice(&(self.plan.len() as u64).to_le_bytes());
        header.extend_from_slice(&(metadata.len() as u64 + 1).to_le_bytes());
        push_string(&mut header, "general.alignment");
        push_value(&mut header, &Value::U32(ALIGNMENT as u32))?;
        for (key, value) in metadata {
            if key == "general.alignment" {
                return Err(Error::Invalid(
                    "general.alignment is set by the writer".into(),
                ));
            }
            push_string(&mut header, key);
            push_value(&mut header, value)?;
        }
        let mut offset = 0u64;
        for t in &self.plan {
            push_string(&mut header, &t.name);
            header.extend_from_slice(&(t.shape.len() as u32).to_le_bytes());
            for &d in t.shape.iter().rev() {
                header.extend_from_slice(&(d as u64).to_le_bytes());
            }
            header.extend_from_slice(&t.dtype.id().to_le_bytes());
            header.extend_from_slice(&offset.to_le_bytes());
            offset = (offset + t.byte_len()?).next_multiple_of(ALIGNMENT);
        }
        header.resize(header.len().next_multiple_of(ALIGNMENT as usize), 0);
        self.write_all(&header)
    }

    /// Appends the next tensor's data; `name` must be the next one in the plan and `data`
    /// exactly its size.
    pub fn write_tensor(&mut self, name: &str, data: &[u8]) -> Result<()> {
        let Some(t) = self.plan.get(self.next) else {
            return Err(Error::Invalid(format!(
                "tensor `{name}` is not in the GGUF plan (all {} written)",
                self.plan.len()
            )));
        };
        if t.name != name {
            return Err(Error::Invalid(format!(
                "GGUF tensors must be written in plan order: expected `{}`, got `{name}`",
                t.name
            )));
        }
        let len = t.byte_len()?;
        if data.len() as u64 != len {
            return Err(Error::Invalid(format!(
                "tensor `{name}`: {} bytes of data for a {:?} tensor of {len} bytes",
                data.len(),
                t.dtype
            )));
        }
        self.write_all(data)?;
        let pad = len.next_multiple_of(ALIGNMENT) - len;
        self.write_all(&vec![0u8; pad as usize])?;
        self.next += 1;
        Ok(())
    }

    /// Checks every tensor was written, syncs, and renames the file into place.
    pub fn finish(mut self) -> Result<PathBuf> {
        if self.next != self.plan.len() {
            return Err(Error::Invalid(format!(
                "GGUF output incomplete: {} of {} tensors written",
                self.next,
                self.plan.len()
            )));
        }
        self.out.flush().map_err(|e| Error::io(&self.tmp, e))?;
        self.out
            .get_ref()
            .sync_all()
            .map_err(|e| Error::io(&self.tmp, e))?;
        if self.dest.is_dir() {
            return Err(Error::Invalid(format!(
                "output {} is a directory",
                self.dest.display()
            )));
        }
        std::fs::rename(&self.tmp, &self.dest).map_err(|e| Error::io(&self.dest, e))?;
        self.finished = true;
        Ok(self.dest.clone())
    }

    fn write_all(&mut self, bytes: &[u8]) -> Result<()> {
        self.out
            .write_all(bytes)
            .map_err(|e| Error::io(&self.tmp, e))
    }
}

impl Drop for GgufWriter {
    fn drop(&mut self) {
        if !self.finished {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

fn push_string(buf: &mut Vec<u8>, s: &str) {
    buf.extend_from_slice(&(s.len() as u64).to_le_bytes());
    buf.extend_from_slice(s.as_bytes());
}

/// GGUF metadata value type ids.
fn value_type_id(v: &Value) -> u32 {
    match v {
        Value::U8(_) => 0,
        Value::I8(_) => 1,
        Value::U16(_) => 2,
        Value::I16(_) => 3,
        Value::U32(_) => 4,
        Value::I32(_) => 5,
        Value::F32(_) => 6,
        Value::Bool(_) => 7,
        Value::String(_) => 8,
        Value::Array(_) => 9,
        Value::U64(_) => 10,
        Value::I64(_) => 11,
        Value::F64(_) => 12,
    }
}

fn push_value(buf: &mut Vec<u8>, v: &Value) -> Result<()> {
    buf.extend_from_slice(&value_type_id(v).to_le_bytes());
    push_payload(buf, v)
}

fn push_payload(buf: &mut Vec<u8>, v: &Value) -> Result<()> {
    match v {
        Value::U8(x) => buf.push(*x),
        Value::I8(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::U16(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::U64(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => buf.push(u8::from(*x)),
        Value::String(s) => push_string(buf, s),
        Value::Array(items) => {
            let first = items.first().map_or(8, value_type_id);
            if items.iter().any(|i| value_type_id(i) != first) {
                return Err(Error::Invalid(
                    "GGUF arrays must hold values of one type".into(),
                ));
            }
            buf.extend_from_slice(&first.to_le_bytes());
            buf.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for item in items {
                push_payload(buf, item)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::gguf_file::Content;
    use candle_core::{Device, Tensor};

    #[test]
    fn candle_reads_what_we_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.gguf");
        let w = Tensor::arange(0f32, 64.0, &Device::Cpu)
            .unwrap()
            .reshape((2, 32))
            .unwrap();
        let q = candle_core::quantized::QTensor::quantize(&w, GgufType::Q8_0.candle().unwrap())
            .unwrap();
        let plan = vec![
            PlannedTensor {
                name: "a.weight".into(),
                shape: vec![2, 32],
                dtype: GgufType::Q8_0,
            },
            PlannedTensor {
                name: "b.weight".into(),
                shape: vec![3],
                dtype: GgufType::F32,
            },
        ];
        let meta = vec![
            (
                "general.architecture".to_string(),
                Value::String("llama".into()),
            ),
            (
                "x.list".to_string(),
                Value::Array(vec![Value::I32(1), Value::I32(-2)]),
            ),
        ];
        let mut writer = GgufWriter::create(&path, &meta, plan, false).unwrap();
        writer.write_tensor("a.weight", &q.data().unwrap()).unwrap();
        assert!(
            writer.write_tensor("a.weight", &[0; 12]).is_err(),
            "order is enforced"
        );
        let b: Vec<u8> = [1f32, 2.0, 3.0]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        writer.write_tensor("b.weight", &b).unwrap();
        writer.finish().unwrap();

        let mut f = std::fs::File::open(&path).unwrap();
        let content = Content::read(&mut f).unwrap();
        assert_eq!(
            content.metadata["general.architecture"]
                .to_string()
                .unwrap(),
            "llama"
        );
        let a = content.tensor(&mut f, "a.weight", &Device::Cpu).unwrap();
        assert_eq!(a.shape().dims(), &[2, 32]);
        let back = a.dequantize(&Device::Cpu).unwrap();
        let err = (back - &w).unwrap().abs().unwrap().max_all().unwrap();
        assert!(err.to_scalar::<f32>().unwrap() < 0.3);
        let b = content.tensor(&mut f, "b.weight", &Device::Cpu).unwrap();
        let b = b
            .dequantize(&Device::Cpu)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(b, vec![1.0, 2.0, 3.0]);
    }

    #[test]
    fn unfinished_output_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.gguf");
        let plan = vec![PlannedTensor {
            name: "a".into(),
            shape: vec![4],
            dtype: GgufType::F32,
        }];
        let writer = GgufWriter::create(&path, &[], plan, false).unwrap();
        assert!(writer.finish().is_err());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
