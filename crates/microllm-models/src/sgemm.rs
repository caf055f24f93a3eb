//! One f32 matrix product on the calling thread, for kernels that parallelise over their own
//! tasks (attention chunks, weight panels) and so must not have the product split again.
//!
//! A thin wrapper over the gemm crate's 19-argument call: operands as pointers with their
//! row and column strides (in elements), `dst` overwritten.

/// A matrix operand: its first element and the distance between rows and between columns.
#[derive(Clone, Copy)]
pub(crate) struct View<P> {
    pub ptr: P,
    pub row_stride: usize,
    pub col_stride: usize,
}

impl<P> View<P> {
    /// Rows `row_stride` elements apart, each contiguous.
    pub fn row_major(ptr: P, row_stride: usize) -> Self {
        Self {
            ptr,
            row_stride,
            col_stride: 1,
        }
    }

    /// Columns `col_stride` elements apart, each contiguous (a row-major matrix read
    /// transposed).
    pub fn col_major(ptr: P, col_stride: usize) -> Self {
        Self {
            ptr,
            row_stride: 1,
            col_stride,
        }
    }
}

/// `dst[m, n] = lhs[m, k] * rhs[k, n]`, single-threaded.
///
/// # Safety
/// Every view covers the extent its strides describe for its shape (`dst` `[m, n]`, `lhs`
/// `[m, k]`, `rhs` `[k, n]`); `dst` aliases neither input, and nothing else touches it during
/// the call.
pub(crate) unsafe fn sgemm(
    (m, n, k): (usize, usize, usize),
    dst: View<*mut f32>,
    lhs: View<*const f32>,
    rhs: View<*const f32>,
) {
    let s = |v: usize| v as isize;
    // SAFETY: the caller's contract is the gemm crate's.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.ptr,
            s(dst.col_stride),
            s(dst.row_stride),
            false,
            lhs.ptr,
            s(lhs.col_stride),
            s(lhs.row_stride),
            rhs.ptr,
            s(rhs.col_stride),
            s(rhs.row_stride),
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}
