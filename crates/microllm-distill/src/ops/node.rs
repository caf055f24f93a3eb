//! Autograd nodes whose forward value is computed before the node exists.
//!
//! A candle custom op computes its forward from raw storages. The linear and attention nodes
//! would rather compute it with candle's own (untracked) matrix products on the input tensors,
//! so they do exactly that, then create the node: its `cpu_fwd` only hands over the finished
//! value (one copy of the output, which is small next to the products) and its `bwd` is the
//! node's real content.

use std::sync::Mutex;

use candle_core::{CpuStorage, Shape, Tensor};

use crate::real::{dispatch, storage, with_data};

/// A forward value waiting to become a node's output.
#[derive(Debug)]
pub(crate) struct Precomputed(Mutex<Option<Tensor>>);

impl Precomputed {
    pub fn new(value: Tensor) -> Self {
        Self(Mutex::new(Some(value)))
    }

    /// The value as the node's output storage (taken: the node does not keep a second copy).
    pub fn take(&self, op: &str) -> candle_core::Result<(CpuStorage, Shape)> {
        let value = self
            .0
            .lock()
            .expect("precomputed value lock")
            .take()
            .ok_or_else(|| candle_core::Error::Msg(format!("{op}: forward ran twice")))?;
        let out = dispatch!(value.dtype(), op, |T| {
            with_data::<T, _>(&value, op, |d| Ok(storage(d.to_vec())))?
        });
        Ok((out, value.shape().clone()))
    }
}
