//! Checkpoints: everything a killed run needs to finish with the same weights.
//!
//! A checkpoint is a directory in the run's work directory (`OUT.distill-work/checkpoint`),
//! replaced atomically, so a kill at any moment leaves the previous one intact:
//!
//! - `weights.safetensors`: every trained weight, f32, by name (frozen weights come again from
//!   the student's source, which the fingerprint pins);
//! - `optimizer.safetensors`: AdamW's moments, `m.NAME` and `v.NAME`, in the precision the
//!   run keeps them in (bf16 or f32);
//! - `state.json`: the step, AdamW's step count, the data position, the curve and evaluations
//!   so far, and the run's fingerprint (a resume with other settings is refused).
//!
//! Training is a deterministic function of these (the data order is a seeded function of the
//! position, kernels reduce in fixed orders), so resuming reproduces the uninterrupted run bit
//! for bit.

use std::borrow::Cow;
use std::fs::File;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var};
use half::bf16;
use memmap2::Mmap;
use microllm_core::{Error, Result};
use microllm_io::write::AtomicDir;
use safetensors::SafeTensors;
use safetensors::tensor::{Dtype, View};
use serde::{Deserialize, Serialize};

use super::optim::{AdamW, Moments};
use crate::real::with_data;
use crate::report::{EvalPoint, StepRecord};

/// Name of the checkpoint directory inside the work directory.
pub const CHECKPOINT_DIR: &str = "checkpoint";

/// The resumable state besides weights and moments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Optimizer steps completed.
    pub step: u64,
    /// AdamW's own step count.
    pub adam_steps: u64,
    /// Windows consumed (the data position).
    pub windows_consumed: u64,
    pub tokens: u64,
    /// Seconds spent in training steps (not evaluation) so far.
    pub train_seconds: f64,
    pub curve: Vec<StepRecord>,
    pub evals: Vec<EvalPoint>,
    /// Perplexity of the initial student.
    pub eval_before: Option<EvalPoint>,
    /// Identifies the run's settings, student and data.
    pub fingerprint: String,
}

/// One tensor for the safetensors writer, its little-endian bytes made when the writer
/// reaches it (so a checkpoint never holds a second copy of every weight at once).
enum Entry<'a> {
    /// A variable's current value (f32).
    Var(&'a Var),
    F32(&'a [f32], Vec<usize>),
    Bf16(&'a [bf16], Vec<usize>),
}

impl View for Entry<'_> {
    fn dtype(&self) -> Dtype {
        match self {
            Entry::Var(_) | Entry::F32(..) => Dtype::F32,
            Entry::Bf16(..) => Dtype::BF16,
        }
    }
    fn shape(&self) -> &[usize] {
        match self {
            Entry::Var(v) => v.dims(),
            Entry::F32(_, shape) | Entry::Bf16(_, shape) => shape,
        }
    }
    fn data(&self) -> Cow<'_, [u8]> {
        let f32_bytes = |d: &[f32]| d.iter().flat_map(|v| v.to_le_bytes()).collect();
        Cow::Owned(match self {
            Entry::Var(v) => with_data::<f32, _>(v.as_tensor(), "checkpoint", |d| Ok(f32_bytes(d)))
                // `save` has checked that every variable is f32 on the CPU, which is all this
                // needs (a strided one is made contiguous); the trait has no error to return.
                .expect("a checkpointed variable is f32 on the CPU"),
            Entry::F32(d, _) => f32_bytes(d),
            Entry::Bf16(d, _) => d.iter().flat_map(|v| v.to_bits().to_le_bytes()).collect(),
        })
    }
    fn data_len(&self) -> usize {
        self.shape().iter().product::<usize>() * self.dtype().bitsize() / 8
    }
}

fn write_tensors(path: &Path, tensors: Vec<(String, Entry<'_>)>) -> Result<()> {
    microllm_io::write::serialize_safetensors_file(tensors, None, path)
}

/// Writes a checkpoint of `vars` (named), `optimizer` and `state` into `work`.
pub fn save(
    work: &Path,
    vars: &[(&str, &Var)],
    optimizer: &AdamW,
    state: &TrainState,
) -> Result<PathBuf> {
    let dir = AtomicDir::create(&work.join(CHECKPOINT_DIR), true)?;
    for (name, v) in vars {
        if v.dtype() != DType::F32 || !v.device().is_cpu() {
            return Err(Error::Invalid(format!(
                "checkpoints hold f32 weights on the CPU; {name} is {:?} on {:?}",
                v.dtype(),
                v.device()
            )));
        }
    }
    write_tensors(
        &dir.path().join("weights.safetensors"),
        vars.iter()
            .map(|(name, v)| (name.to_string(), Entry::Var(v)))
            .collect(),
    )?;
    let mut moments = Vec::new();
    for ((name, var), held) in vars.iter().zip(&optimizer.moments) {
        let shape = var.dims().to_vec();
        let (m, v) = match held {
            Moments::F32 { m, v } => (Entry::F32(m, shape.clone()), Entry::F32(v, shape)),
            Moments::Bf16 { m, v } => (Entry::Bf16(m, shape.clone()), Entry::Bf16(v, shape)),
        };
        moments.push((format!("m.{name}"), m));
        moments.push((format!("v.{name}"), v));
    }
    write_tensors(&dir.path().join("optimizer.safetensors"), moments)?;
    let json = serde_json::to_string_pretty(state)
        .map_err(|e| Error::Invalid(format!("serialising the training state: {e}")))?;
    let state_path = dir.path().join("state.json");
    std::fs::write(&state_path, json + "\n").map_err(|e| Error::io(&state_path, e))?;
    dir.commit()
}

/// The tensor `name` of `st` (read from `path`), which must have `shape` and one of `dtypes`.
fn checked<'a>(
    st: &'a SafeTensors<'_>,
    path: &Path,
    name: &str,
    shape: &[usize],
    dtypes: &[Dtype],
) -> Result<safetensors::tensor::TensorView<'a>> {
    let view = st.tensor(name).map_err(|_| Error::MissingTensor {
        name: name.into(),
        origin: path.display().to_string(),
    })?;
    if view.shape() != shape {
        return Err(Error::Shape {
            name: name.into(),
            origin: path.display().to_string(),
            expected: shape.to_vec(),
            actual: view.shape().to_vec(),
        });
    }
    if !dtypes.contains(&view.dtype()) {
        return Err(Error::format(
            path,
            format!("{name} is {:?}, expected one of {dtypes:?}", view.dtype()),
        ));
    }
    Ok(view)
}

fn read_f32(st: &SafeTensors<'_>, path: &Path, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
    let view = checked(st, path, name, shape, &[Dtype::F32])?;
    Ok(microllm_core::le::decode_le(view.data()))
}

/// A moment stored as f32 or bf16, as f32 (exact either way).
fn read_moment(st: &SafeTensors<'_>, path: &Path, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
    let view = checked(st, path, name, shape, &[Dtype::F32, Dtype::BF16])?;
    Ok(match view.dtype() {
        Dtype::BF16 => microllm_core::le::decode_le::<u16>(view.data())
            .into_iter()
            .map(|b| bf16::from_bits(b).to_f32())
            .collect(),
        _ => microllm_core::le::decode_le(view.data()),
    })
}

fn map(path: &Path) -> Result<Mmap> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    // SAFETY: read-only mapping of a file this run wrote and no other process writes.
    unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))
}

/// The checkpoint's state, if `work` holds one.
pub fn read_state(work: &Path) -> Result<Option<TrainState>> {
    let path = work.join(CHECKPOINT_DIR).join("state.json");
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| Error::format(&path, format!("not a training state: {e}")))
}

/// Restores weights into `vars` and moments into `optimizer` from the checkpoint in `work`.
pub fn restore(
    work: &Path,
    vars: &[(&str, &Var)],
    optimizer: &mut AdamW,
    state: &TrainState,
) -> Result<()> {
    let dir = work.join(CHECKPOINT_DIR);
    let weights_path = dir.join("weights.safetensors");
    let weights = map(&weights_path)?;
    let st = SafeTensors::deserialize(&weights)
        .map_err(|e| Error::format(&weights_path, format!("invalid safetensors file: {e}")))?;
    for (name, var) in vars {
        let data = read_f32(&st, &weights_path, name, var.dims())?;
        var.set(&Tensor::from_vec(data, var.shape(), &Device::Cpu)?)?;
    }
    let opt_path = dir.join("optimizer.safetensors");
    let opt = map(&opt_path)?;
    let st = SafeTensors::deserialize(&opt)
        .map_err(|e| Error::format(&opt_path, format!("invalid safetensors file: {e}")))?;
    for ((name, var), moments) in vars.iter().zip(optimizer.moments.iter_mut()) {
        let m = read_moment(&st, &opt_path, &format!("m.{name}"), var.dims())?;
        let v = read_moment(&st, &opt_path, &format!("v.{name}"), var.dims())?;
        *moments = Moments::from_f32(moments.precision(), m, v);
    }
    optimizer.steps = state.adam_steps;
    Ok(())
}
