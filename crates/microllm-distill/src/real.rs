//! The float types the training kernels run in.
//!
//! Training runs in f32; the gradient checks run the very same kernels in f64, where finite
//! differences are accurate to ~1e-8 and a wrong derivative cannot hide behind rounding. So
//! every kernel is generic over [`Real`], and the custom ops dispatch on the storage's dtype.

use candle_core::{CpuStorage, Layout, Storage, Tensor, WithDType};

/// f32 or f64.
pub trait Real: WithDType + std::ops::Neg<Output = Self> {
    const ZERO: Self;
    const ONE: Self;
    const NEG_INFINITY: Self;
    /// `e^x`: the vectorisable polynomial of `microllm-models` for f32, libm for f64.
    fn exp_fast(self) -> Self;
    fn ln(self) -> Self;
    fn sqrt(self) -> Self;
    fn maximum(self, other: Self) -> Self;
}

macro_rules! real {
    ($t:ty, $exp:path) => {
        impl Real for $t {
            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;
            const NEG_INFINITY: Self = <$t>::NEG_INFINITY;
            #[inline(always)]
            fn exp_fast(self) -> Self {
                $exp(self)
            }
            #[inline(always)]
            fn ln(self) -> Self {
                <$t>::ln(self)
            }
            #[inline(always)]
            fn sqrt(self) -> Self {
                <$t>::sqrt(self)
            }
            #[inline(always)]
            fn maximum(self, other: Self) -> Self {
                <$t>::max(self, other)
            }
        }
    };
}
real!(f32, microllm_models::elementwise::exp);
real!(f64, f64::exp);

/// Owned data as a cpu storage.
pub(crate) fn storage<T: Real>(data: Vec<T>) -> CpuStorage {
    T::to_cpu_storage_owned(data)
}

/// The dtype of a cpu storage.
pub(crate) fn dtype_of(s: &CpuStorage) -> candle_core::DType {
    candle_core::backend::BackendStorage::dtype(s)
}

/// The contiguous data of a cpu storage seen through `layout`.
pub(crate) fn slice<'a, T: Real>(
    storage: &'a CpuStorage,
    layout: &Layout,
    op: &str,
) -> candle_core::Result<&'a [T]> {
    let data = T::cpu_storage_as_slice(storage)?;
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("{op} expects a contiguous input"),
    }
}

/// Runs `f` on the contiguous data of `t` (which must live on the CPU).
pub(crate) fn with_data<T: Real, R>(
    t: &Tensor,
    op: &str,
    f: impl FnOnce(&[T]) -> candle_core::Result<R>,
) -> candle_core::Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        candle_core::bail!("{op} runs on the CPU only")
    };
    f(slice(cpu, layout, op)?)
}

/// A tensor of `shape` from owned data.
pub(crate) fn tensor<T: Real>(
    data: Vec<T>,
    shape: impl Into<candle_core::Shape>,
) -> candle_core::Result<Tensor> {
    Tensor::from_vec(data, shape, &candle_core::Device::Cpu)
}

/// Dispatches a generic kernel call on a tensor's float dtype.
macro_rules! dispatch {
    ($dtype:expr, $op:expr, |$t:ident| $body:expr) => {
        match $dtype {
            candle_core::DType::F32 => {
                type $t = f32;
                $body
            }
            candle_core::DType::F64 => {
                type $t = f64;
                $body
            }
            other => candle_core::bail!("{} supports f32 and f64, not {other:?}", $op),
        }
    };
}
pub(crate) use dispatch;
