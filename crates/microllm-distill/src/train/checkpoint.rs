//! Checkpoints: everything a killed run needs to finish with the same weights.
//!
//! A checkpoint is a directory in the run's work directory (`OUT.distill-work/checkpoint`),
//! replaced atomically, so a kill at any moment leaves the previous one intact:
//!
//! - `weights.safetensors`: every trained weight, f32, by name (frozen weights come again from
//!   the student's source, which the fingerprint pins);
//! - `optimizer.safetensors`: AdamW's moments, `m.NAME` and `v.NAME`;
//! - `state.json`: the step, AdamW's step count, the data position, the curve and evaluations
//!   so far, and the run's fingerprint (a resume with other settings is refused).
//!
//! Training is a deterministic function of these (the data order is a seeded function of the
//! position, kernels reduce in fixed orders), so resuming reproduces the uninterrupted run bit
//! for bit.

use std::borrow::Cow;
use std::fs::File;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor, Var};
use memmap2::Mmap;
use microllm_core::{Error, Result};
use microllm_io::write::AtomicDir;
use safetensors::SafeTensors;
use safetensors::tensor::{Dtype, View};
use serde::{Deserialize, Serialize};

use super::optim::{AdamW, Moments};
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

/// f32 data borrowed as little-endian bytes for the safetensors writer.
struct F32View<'a> {
    data: &'a [f32],
    shape: Vec<usize>,
}

impl View for F32View<'_> {
    fn dtype(&self) -> Dtype {
        Dtype::F32
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Owned(self.data.iter().flat_map(|v| v.to_le_bytes()).collect())
    }
    fn data_len(&self) -> usize {
        self.data.len() * 4
    }
}

fn write_tensors(path: &Path, tensors: Vec<(String, F32View<'_>)>) -> Result<()> {
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
    let weights: Vec<Vec<f32>> = vars
        .iter()
        .map(|(_, v)| Ok(v.flatten_all()?.to_vec1::<f32>()?))
        .collect::<Result<_>>()?;
    write_tensors(
        &dir.path().join("weights.safetensors"),
        vars.iter()
            .zip(&weights)
            .map(|((name, v), data)| {
                (
                    name.to_string(),
                    F32View {
                        data,
                        shape: v.dims().to_vec(),
                    },
                )
            })
            .collect(),
    )?;
    drop(weights);
    let mut moments = Vec::new();
    for ((name, v), Moments { m, v: second }) in vars.iter().zip(&optimizer.moments) {
        moments.push((
            format!("m.{name}"),
            F32View {
                data: m,
                shape: v.dims().to_vec(),
            },
        ));
        moments.push((
            format!("v.{name}"),
            F32View {
                data: second,
                shape: v.dims().to_vec(),
            },
        ));
    }
    write_tensors(&dir.path().join("optimizer.safetensors"), moments)?;
    let json = serde_json::to_string_pretty(state)
        .map_err(|e| Error::Invalid(format!("serialising the training state: {e}")))?;
    let state_path = dir.path().join("state.json");
    std::fs::write(&state_path, json + "\n").map_err(|e| Error::io(&state_path, e))?;
    dir.commit()
}

fn read_f32(st: &SafeTensors<'_>, path: &Path, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
    let view = st.tensor(name).map_err(|_| Error::MissingTensor {
        name: name.into(),
        origin: path.display().to_string(),
    })?;
    if view.dtype() != Dtype::F32 || view.shape() != shape {
        return Err(Error::Shape {
            name: name.into(),
            origin: path.display().to_string(),
            expected: shape.to_vec(),
            actual: view.shape().to_vec(),
        });
    }
    Ok(microllm_core::le::decode_le(view.data()))
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
        moments.m = read_f32(&st, &opt_path, &format!("m.{name}"), var.dims())?;
        moments.v = read_f32(&st, &opt_path, &format!("v.{name}"), var.dims())?;
    }
    optimizer.steps = state.adam_steps;
    Ok(())
}
