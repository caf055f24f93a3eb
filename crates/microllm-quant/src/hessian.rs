//! The layer Hessian `H = 2 X^T X / n` that GPTQ solves against.
//!
//! GPTQ minimises the layer's output error `||W X^T - Q X^T||^2` row by row; the Hessian of that
//! objective with respect to a row is `H = 2 X^T X` (Frantar et al., 2022, section 3, eq. 1-2,
//! following OBQ). Calibration activations arrive in batches while a block streams through the
//! pipeline, so we keep a running average exactly as the reference implementation's
//! `add_batch` does: with `n` tokens seen and a batch of `m`,
//! `H <- H * n / (n + m) + 2 / (n + m) * X^T X`. Scaling by the token count keeps `H` (and so
//! the absolute damping `damp * mean(diag H)`) independent of how much data was used.
//!
//! `X^T X` is symmetric, so only its lower triangle is computed. On the GEMM path (the tile
//! kernels below have their own layout) the columns of `H` are cut into
//! panels of [`PANEL`] features, and panel `p` is the f32 product `X[:, p..]^T X[:, panel p]`
//! (faer's GEMM, the O(tokens * in^2) part; the panel's diagonal block with faer's lower-triangular
//! product, so almost no flops are spent above the diagonal). Each panel result is folded straight
//! into the f64 running average and mirrored into the upper triangle, so no `[in, in]` f32 product
//! is ever materialised or transposed, and `H` comes out exactly symmetric. Batches are gathered
//! into pending rows until [`FOLD_TOKENS`] tokens are there (a fold reads and writes all of
//! `H`; folding every 512-token window made SmolLM2's Hessian phase 17-19% slower,
//! docs/benchmarks.md), in rows with a
//! padded stride, because the GEMM reads `X^T` down a column of `X` and power-of-two strides
//! (in=2048, 4096, ...) alias in the cache; this alone halved the time at in=4096. Panels write disjoint parts of `H` (split with safe slices) and run in parallel on
//! rayon's pool; every element is produced by one sequential GEMM whose shape depends only on `in`,
//! so the result is bit-identical however the panels are scheduled (a resumed run on the same
//! kind of CPU reproduces the same bytes; [`HessianKernel::chosen`] names the kernel, and the
//! run's fingerprint holds it). The running sum is kept in f64, since it adds many batches of similar magnitude.
//!
//! That GEMM is the path of CPUs without AVX-512. With AVX-512 the product is
//! [`crate::hessian_tiles`]' register-tiled kernel instead (f32 FMAs: 1.1x the GEMM's
//! speed at width 576, 1.3x at 1536; `hessian_bench` in docs/benchmarks.md), and
//! [`HessianAccumulator::with_bf16_products`] takes the products on bf16-rounded inputs where
//! the CPU runs AVX-512 BF16 at twice the f32 rate (AMD's), the running average still in f64;
//! the calibration's `compute: int8` mode uses it. [`HessianKernel`] names the three.
//!
//! Non-finite or overflowing inputs are rejected before `H` is touched: by Cauchy-Schwarz every
//! partial sum of `X^T X` is bounded by the largest column sum of squares, which is checked (in
//! f64) against half of `f32::MAX`, so a failed batch leaves the accumulator unchanged (the
//! cheaper bound `tokens * max|x|^2` is tried first).

use candle_core::{DType, Storage, Tensor};
use faer::linalg::matmul::matmul;
use faer::linalg::matmul::triangular::{self, BlockStructure};
use faer::{Accum, MatMut, MatRef, Par};
use microllm_core::{Error, Result};
use rayon::prelude::*;

use crate::hessian_tiles::{Products, TiledRows};

/// Features per column panel. A panel's right-hand side (`tokens x PANEL` f32) stays in cache
/// while the GEMM streams the rest of `X` past it; wider panels give the GEMM fatter products,
/// narrower ones more parallel work. 192 was fastest for `in` = 576 and 1536 (2-core AVX2).
const PANEL: usize = 192;

/// Rows of the panel result mirrored at once into the upper triangle (keeps the strided reads
/// of the transposed block in L1).
const MIRROR_ROWS: usize = 64;

/// Tokens gathered before their product is folded into the f64 average. A fold reads and
/// writes all of `H` in f64 (19 MB at in = 1536); at 4096 tokens there is one fold where
/// there were eight, and the product runs with a longer inner dimension (SmolLM2's Hessian
/// phase 17-19% faster, docs/benchmarks.md). The price is the pending rows, 4096 x in f32
/// (25 MB at in = 1536).
const FOLD_TOKENS: usize = 4096;

/// Running `H = 2/n * sum_t x_t x_t^T` over all calibration tokens `x_t` of one linear layer.
#[derive(Debug, Clone)]
pub struct HessianAccumulator {
    in_features: usize,
    /// Row-major `[in, in]`: the average over the `folded` tokens. Symmetric on the GEMM
    /// path; the tile kernels keep only the lower triangle current until `finish` mirrors it.
    h: Vec<f64>,
    folded: usize,
    /// Tokens added but not yet folded into `h`, in the layout of the kernel that will.
    pending: Pending,
}

/// Pending tokens: row-major at the padded stride [`HessianAccumulator::stride`] for the
/// GEMM, or in the tile kernels' own layout ([`crate::hessian_tiles`]).
#[derive(Debug, Clone)]
enum Pending {
    Gemm(Vec<f32>),
    Tiled(TiledRows),
}

/// Which product computes `X^T X` (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HessianKernel {
    /// faer's GEMM in f32, the lower triangle by panels: any CPU.
    Gemm,
    /// The AVX-512 register tiles in f32.
    TiledF32,
    /// The AVX-512 BF16 register tiles on bf16-rounded inputs.
    TiledBf16,
}

impl HessianKernel {
    /// The kernel [`HessianAccumulator::new`] (`bf16_products` false) or
    /// [`HessianAccumulator::with_bf16_products`] (true) takes on this CPU. The sums differ
    /// between kernels in rounding, so a resumed run must not change it.
    pub fn chosen(bf16_products: bool) -> Self {
        if bf16_products && crate::bf16_faster_than_f32() {
            Self::TiledBf16
        } else if crate::hessian_tiles::Products::F32.supported() {
            Self::TiledF32
        } else {
            Self::Gemm
        }
    }

    /// Its name in reports: `gemm`, `tiled-f32`, `tiled-bf16`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Gemm => "gemm",
            Self::TiledF32 => "tiled-f32",
            Self::TiledBf16 => "tiled-bf16",
        }
    }
}

impl HessianAccumulator {
    /// An empty accumulator for a layer with `in_features` inputs, with f32 products (the
    /// tile kernel where the CPU has AVX-512, else the GEMM).
    pub fn new(in_features: usize) -> Self {
        Self::with_kernel(in_features, HessianKernel::chosen(false))
            .unwrap_or_else(|| Self::with_pending(in_features, Pending::Gemm(Vec::new())))
    }

    fn with_pending(in_features: usize, pending: Pending) -> Self {
        Self {
            in_features,
            h: vec![0.0; in_features * in_features],
            folded: 0,
            pending,
        }
    }

    /// An accumulator whose products take the inputs rounded to bf16 where the CPU runs
    /// AVX-512 BF16 at twice the f32 rate (AMD's; [`crate::bf16_faster_than_f32`]), else as
    /// [`Self::new`].
    pub fn with_bf16_products(in_features: usize) -> Self {
        Self::with_kernel(in_features, HessianKernel::chosen(true))
            .unwrap_or_else(|| Self::new(in_features))
    }

    /// An accumulator on `kernel` even where another is faster (for benchmarks and tests);
    /// `None` where the CPU lacks its instructions.
    pub fn with_kernel(in_features: usize, kernel: HessianKernel) -> Option<Self> {
        let products = match kernel {
            HessianKernel::Gemm => {
                return Some(Self::with_pending(in_features, Pending::Gemm(Vec::new())));
            }
            HessianKernel::TiledF32 => Products::F32,
            HessianKernel::TiledBf16 => Products::Bf16,
        };
        products.supported().then(|| {
            Self::with_pending(
                in_features,
                Pending::Tiled(TiledRows::new(products, in_features)),
            )
        })
    }

    /// The kernel computing the products.
    pub fn kernel(&self) -> HessianKernel {
        match &self.pending {
            Pending::Gemm(_) => HessianKernel::Gemm,
            Pending::Tiled(rows) => match rows.products() {
                Products::F32 => HessianKernel::TiledF32,
                Products::Bf16 => HessianKernel::TiledBf16,
            },
        }
    }

    /// Input features of the layer.
    pub fn in_features(&self) -> usize {
        self.in_features
    }

    /// Tokens accumulated so far.
    pub fn n_tokens(&self) -> usize {
        self.folded + self.pending_tokens()
    }

    fn pending_tokens(&self) -> usize {
        match &self.pending {
            Pending::Gemm(rows) => rows.len() / self.stride(),
            Pending::Tiled(rows) => rows.tokens(),
        }
    }

    /// The Hessian of every token added so far, row-major `[in, in]`.
    pub fn hessian(&mut self) -> &[f64] {
        self.finish();
        &self.h
    }

    /// The Hessian, row-major `[in, in]`, giving up the accumulator (so a solver can free it
    /// as soon as it has its own copy: on a 5632-wide layer that is 254 MB).
    pub fn into_hessian(mut self) -> Vec<f64> {
        self.finish();
        self.h
    }

    /// Folds the pending tokens and makes `h` whole: the tile kernels' folds write the lower
    /// triangle only (the mirrored writes of every fold were 13% of the Hessian time at
    /// width 1536), so it is mirrored here, once.
    fn finish(&mut self) {
        self.fold();
        if let Pending::Tiled(_) = self.pending {
            crate::hessian_tiles::mirror_lower(&mut self.h, self.in_features);
        }
    }

    /// The padded row stride of the pending tokens: not a large power of two, because the
    /// GEMM walks `X^T` along tokens with that stride, and 4 KiB-aliased strides thrash the
    /// cache.
    fn stride(&self) -> usize {
        self.in_features.next_multiple_of(16) + 16
    }

    /// Adds a batch of layer inputs: any tensor whose last dimension is `in_features`
    /// (`[tokens, in]`, `[batch, seq, in]`, any float dtype).
    pub fn add_batch(&mut self, x: &Tensor) -> Result<()> {
        let dims = x.dims();
        let last = dims.last().copied().unwrap_or(0);
        if last != self.in_features {
            return Err(Error::Invalid(format!(
                "Hessian for {} input features: activation batch has shape {dims:?}",
                self.in_features
            )));
        }
        let m = x.elem_count() / last.max(1);
        if m == 0 {
            return Ok(());
        }
        with_f32_data(x, |data| self.accumulate(data, m, dims))
    }

    /// [`add_batch`](Self::add_batch) on row-major `[tokens, in]` f32 data.
    pub fn add_batch_slice(&mut self, x: &[f32]) -> Result<()> {
        let inp = self.in_features;
        if inp == 0 || !x.len().is_multiple_of(inp) {
            return Err(Error::Invalid(format!(
                "activation data of {} values is not a whole number of rows of {inp}",
                x.len()
            )));
        }
        let m = x.len() / inp;
        if m == 0 {
            return Ok(());
        }
        self.accumulate(x, m, &[m, inp])
    }

    /// Adds `m` row-major tokens `x` (`[m, in]`, `m > 0`) to the pending ones, folding them
    /// into the average once [`FOLD_TOKENS`] are pending; `dims` is only for the error
    /// message.
    fn accumulate(&mut self, x: &[f32], m: usize, dims: &[usize]) -> Result<()> {
        let inp = self.in_features;
        debug_assert_eq!(x.len(), m * inp);
        check_finite_product(x, inp, dims)?;
        let ld = self.stride();
        match &mut self.pending {
            Pending::Tiled(rows) => rows.push(x),
            Pending::Gemm(rows) => {
                let at = rows.len();
                rows.resize(at + m * ld, 0.0);
                for (dst, src) in rows[at..].chunks_exact_mut(ld).zip(x.chunks_exact(inp)) {
                    dst[..inp].copy_from_slice(src);
                }
            }
        }
        if self.pending_tokens() >= FOLD_TOKENS {
            self.fold();
        }
        Ok(())
    }

    /// Folds the pending tokens into the running average:
    /// `H <- H * n / (n + m) + 2 / (n + m) * X^T X`.
    fn fold(&mut self) {
        let (inp, ld) = (self.in_features, self.stride());
        let m = self.pending_tokens();
        if m == 0 {
            return;
        }
        let (n, mf) = (self.folded as f64, m as f64);
        let keep = n / (n + mf);
        let add = 2.0 / (n + mf);
        match &mut self.pending {
            Pending::Tiled(rows) => {
                crate::hessian_tiles::fold(&mut self.h, rows, keep, add);
                rows.clear();
            }
            Pending::Gemm(rows) => {
                let xm = MatRef::from_row_major_slice_with_stride(rows, m, inp, ld);
                split_panels(&mut self.h, inp)
                    .into_par_iter()
                    .with_max_len(1)
                    .for_each(|panel| panel.update(xm, keep, add));
                rows.clear();
            }
        }
        self.folded += m;
    }
}

/// `sum_t x_tj^2` for every column `j` of row-major `[tokens, inp]` data, in f64.
pub(crate) fn column_sums_of_squares(x: &[f32], inp: usize) -> Vec<f64> {
    let mut sq = vec![0f64; inp];
    for row in x.chunks_exact(inp) {
        for (s, &v) in sq.iter_mut().zip(row) {
            let v = f64::from(v);
            *s += v * v;
        }
    }
    sq
}

/// Runs `f` on the values of `x` as f32: contiguous CPU f32 data borrowed in place, anything
/// else converted and copied out once.
pub(crate) fn with_f32_data<R>(x: &Tensor, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    let x = x.to_dtype(DType::F32)?;
    {
        let (storage, layout) = x.storage_and_layout();
        if let (Storage::Cpu(cpu), Some((lo, hi))) = (&*storage, layout.contiguous_offsets()) {
            return f(&cpu.as_slice::<f32>()?[lo..hi]);
        }
    }
    f(&x.flatten_all()?.to_vec1::<f32>()?)
}

/// Errors unless every entry (and partial sum) of `X^T X` is finite in f32: by Cauchy-Schwarz
/// `|sum_t x_ti x_tj| <= sum_t |x_ti x_tj| <= max_i sum_t x_ti^2`, so bounding the column sums of
/// squares (exactly enough, in f64) by `f32::MAX / 2` leaves ample room for f32 rounding.
fn check_finite_product(x: &[f32], inp: usize, dims: &[usize]) -> Result<()> {
    let limit = f64::from(f32::MAX) * 0.5;
    // The cheap bound first: every column sum of squares is at most `tokens * max|x|^2`. The
    // exact column sums (in f64, one pass on one thread) only when that bound is not enough.
    let largest = max_abs(x);
    let tokens = (x.len() / inp.max(1)) as f64;
    if largest.is_finite() && tokens * f64::from(largest).powi(2) <= limit {
        return Ok(());
    }
    let sq = column_sums_of_squares(x, inp);
    // NaN fails `is_finite`; infinity and huge sums fail the bound.
    if sq.iter().any(|&s| !s.is_finite() || s > limit) {
        return Err(Error::Invalid(format!(
            "activation batch of shape {dims:?} has non-finite values (or overflows f32)"
        )));
    }
    Ok(())
}

/// `max |x|` in eight independent lanes (so it vectorises); NaN anywhere gives NaN.
fn max_abs(x: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let mut nan = false;
    let chunks = x.chunks_exact(8);
    for &v in chunks.remainder() {
        nan |= v.is_nan();
        lanes[0] = lanes[0].max(v.abs());
    }
    for c in chunks {
        for (l, &v) in lanes.iter_mut().zip(c) {
            nan |= v.is_nan();
            let a = v.abs();
            *l = if a > *l { a } else { *l };
        }
    }
    if nan {
        return f32::NAN;
    }
    lanes.iter().fold(0f32, |m, &v| m.max(v))
}

/// The part of `H` that one column panel (features `start..start + width`) owns.
struct Panel<'a> {
    start: usize,
    width: usize,
    /// `H[i][start..start + width]` for every row `i` below the panel's diagonal block.
    lower: Vec<&'a mut [f64]>,
    /// `H[i][start..]` for the panel's own rows `i` in `start..start + width`: the diagonal
    /// block and everything right of it (the mirror of `lower` of this and later panels).
    tail: Vec<&'a mut [f64]>,
}

/// Cuts row-major `h` (`[inp, inp]`) into the disjoint pieces each panel writes.
fn split_panels(h: &mut [f64], inp: usize) -> Vec<Panel<'_>> {
    let mut panels: Vec<Panel<'_>> = (0..inp.div_ceil(PANEL))
        .map(|p| Panel {
            start: p * PANEL,
            width: PANEL.min(inp - p * PANEL),
            lower: Vec::with_capacity(inp.saturating_sub((p + 1) * PANEL)),
            tail: Vec::with_capacity(PANEL),
        })
        .collect();
    for (i, row) in h.chunks_exact_mut(inp).enumerate() {
        let own = i / PANEL;
        let (head, tail) = row.split_at_mut(own * PANEL);
        panels[own].tail.push(tail);
        for (panel, seg) in panels.iter_mut().zip(head.chunks_exact_mut(PANEL)) {
            panel.lower.push(seg);
        }
    }
    panels
}

impl Panel<'_> {
    /// `H <- H * keep + add * C` on this panel's part of `H`, with
    /// `C = X[:, start..]^T X[:, start..start + width]` (row-major `[inp - start, width]`; only
    /// the lower triangle of its leading `width x width` block is computed and read).
    fn update(self, xm: MatRef<'_, f32>, keep: f64, add: f64) {
        let (start, width) = (self.start, self.width);
        let rows = xm.ncols() - start;
        let mut c = vec![0f32; rows * width];
        let (diag, below) = c.split_at_mut(width * width);
        let rhs = xm.subcols(start, width);
        triangular::matmul(
            MatMut::from_row_major_slice_mut(diag, width, width),
            BlockStructure::TriangularLower,
            Accum::Replace,
            rhs.transpose(),
            BlockStructure::Rectangular,
            rhs,
            BlockStructure::Rectangular,
            1.0,
            Par::Seq,
        );
        if rows > width {
            matmul(
                MatMut::from_row_major_slice_mut(below, rows - width, width),
                Accum::Replace,
                xm.transpose().subrows(start + width, rows - width),
                rhs,
                1.0,
                Par::Seq,
            );
        }
        let fold = |h: &mut f64, v: f32| *h = *h * keep + add * f64::from(v);

        // Below the diagonal block: rows of C as they are.
        for (h_row, c_row) in self
            .lower
            .into_iter()
            .zip(c[width * width..].chunks_exact(width))
        {
            for (h, &v) in h_row.iter_mut().zip(c_row) {
                fold(h, v);
            }
        }
        // The panel's own rows: lower half of the diagonal block from C's row, everything
        // right of the diagonal from C's column (the mirror), in cache-sized row blocks of C.
        let mut tail = self.tail;
        for (a, h_row) in tail.iter_mut().enumerate() {
            for (h, &v) in h_row[..=a].iter_mut().zip(&c[a * width..]) {
                fold(h, v);
            }
        }
        for b0 in (0..rows).step_by(MIRROR_ROWS) {
            let b1 = (b0 + MIRROR_ROWS).min(rows);
            for (a, h_row) in tail.iter_mut().enumerate() {
                let lo = b0.max(a + 1);
                for b in lo..b1 {
                    fold(&mut h_row[b], c[b * width + a]);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_average_matches_hand_computation() {
        for kernel in f32_kernels() {
            running_average_matches_hand_computation_on(kernel);
        }
    }

    fn running_average_matches_hand_computation_on(kernel: HessianKernel) {
        // Batch 1: x = [1, 2]; batch 2: x = [3, 0], [0, 1].
        let mut acc = HessianAccumulator::with_kernel(2, kernel).unwrap();
        acc.add_batch_slice(&[1.0, 2.0]).unwrap();
        assert_eq!(acc.hessian(), &[2.0, 4.0, 4.0, 8.0]);
        acc.add_batch_slice(&[3.0, 0.0, 0.0, 1.0]).unwrap();
        // H = 2/3 * (x1 x1^T + x2 x2^T + x3 x3^T) = 2/3 * [[10, 2], [2, 5]].
        let want = [20.0 / 3.0, 4.0 / 3.0, 4.0 / 3.0, 10.0 / 3.0];
        for (a, b) in acc.hessian().iter().zip(want) {
            assert!((a - b).abs() < 1e-12, "{a} vs {b}");
        }
        assert_eq!(acc.n_tokens(), 3);
    }

    #[test]
    fn batch_split_does_not_matter() {
        let x: Vec<f32> = (0..24).map(|i| ((i * 7 % 11) as f32) - 5.0).collect();
        let mut one = HessianAccumulator::new(3);
        one.add_batch_slice(&x).unwrap();
        let mut two = HessianAccumulator::new(3);
        let t = Tensor::from_slice(&x[..9], (1, 3, 3), &candle_core::Device::Cpu).unwrap();
        two.add_batch(&t).unwrap();
        two.add_batch_slice(&x[9..]).unwrap();
        for (a, b) in one.hessian().iter().zip(two.hessian()) {
            assert!((a - b).abs() < 1e-9 * a.abs().max(1.0), "{a} vs {b}");
        }
    }

    /// On the bf16 kernel (where the CPU has it): the batch split does not matter (tokens
    /// pair up across batches), and the result is the f32 one to bf16's rounding.
    #[test]
    fn bf16_products_match_f32_and_ignore_the_split() {
        // Three row blocks with padding, and word rows (token pairs) over two slabs.
        let (inp, m) = (100, 301);
        let x = values(m * inp, 7);
        let bf16 = || HessianAccumulator::with_kernel(inp, HessianKernel::TiledBf16);
        let Some(mut one) = bf16() else {
            return; // no AVX-512 BF16: nothing to compare
        };
        one.add_batch_slice(&x).unwrap();
        let mut split = bf16().unwrap();
        for (a, b) in [(0, 5), (5, 6), (6, 190), (190, m)] {
            split.add_batch_slice(&x[a * inp..b * inp]).unwrap();
        }
        assert_eq!(split.n_tokens(), m);
        let mut exact = HessianAccumulator::new(inp);
        exact.add_batch_slice(&x).unwrap();
        let (one, split, exact) = (one.hessian().to_vec(), split.hessian(), exact.hessian());
        assert_eq!(one.as_slice(), split);
        let scale = exact.iter().fold(0f64, |m, v| m.max(v.abs()));
        for (a, b) in one.iter().zip(exact) {
            assert!((a - b).abs() <= 1e-2 * scale, "{a} vs {b}");
        }
    }

    /// Every kernel this CPU has agrees with the GEMM across several folds (more than
    /// [`FOLD_TOKENS`] tokens, in uneven batches), and reports them all.
    #[test]
    fn kernels_agree_across_folds() {
        let inp = 52;
        let m = 2 * FOLD_TOKENS + 300;
        let x = values(m * inp, 11);
        let run = |kernel| {
            let mut acc = HessianAccumulator::with_kernel(inp, kernel)?;
            for chunk in x.chunks(777 * inp) {
                acc.add_batch_slice(chunk).unwrap();
            }
            assert_eq!(acc.n_tokens(), m);
            Some(acc.into_hessian())
        };
        let gemm = run(HessianKernel::Gemm).unwrap();
        let scale = gemm.iter().fold(0f64, |a, v| a.max(v.abs()));
        for (kernel, tolerance) in [
            (HessianKernel::TiledF32, 1e-5),
            (HessianKernel::TiledBf16, 1e-2),
        ] {
            let Some(h) = run(kernel) else { continue };
            for (i, (a, b)) in h.iter().zip(&gemm).enumerate() {
                assert!(
                    (a - b).abs() <= tolerance * scale,
                    "{kernel:?} [{i}]: {a} vs {b}"
                );
                let (r, c) = (i / inp, i % inp);
                assert_eq!(
                    a.to_bits(),
                    h[c * inp + r].to_bits(),
                    "{kernel:?}: asymmetric"
                );
            }
        }
    }

    /// Pseudo-random values in [-2, 2) from a fixed seed.
    fn values(n: usize, mut state: u64) -> Vec<f32> {
        (0..n)
            .map(|_| {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                (state >> 40) as f32 / (1u64 << 22) as f32 - 2.0
            })
            .collect()
    }

    /// Every f32 kernel this CPU has, the GEMM always.
    fn f32_kernels() -> Vec<HessianKernel> {
        [HessianKernel::Gemm, HessianKernel::TiledF32]
            .into_iter()
            .filter(|&k| HessianAccumulator::with_kernel(1, k).is_some())
            .collect()
    }

    #[test]
    fn deterministic_symmetric_and_matches_f64_reference() {
        for kernel in f32_kernels() {
            deterministic_symmetric_and_matches_f64_reference_on(kernel);
        }
    }

    fn deterministic_symmetric_and_matches_f64_reference_on(kernel: HessianKernel) {
        // Several panels plus a ragged last one, and unequal batch sizes.
        let inp = 2 * PANEL + 37;
        let batches = [
            values(70 * inp, 1),
            values(33 * inp, 2),
            values(101 * inp, 3),
        ];
        let new = || HessianAccumulator::with_kernel(inp, kernel).unwrap();
        let run = || {
            let mut acc = new();
            for b in &batches {
                acc.add_batch_slice(b).unwrap();
            }
            acc
        };
        let (mut a, mut b) = (run(), run());
        assert_eq!(a.kernel(), kernel);
        assert!(
            a.hessian()
                .iter()
                .zip(b.hessian())
                .all(|(x, y)| x.to_bits() == y.to_bits()),
            "{kernel:?}: two identical accumulations differ"
        );
        // The same data as a 3-d tensor goes through the same arithmetic.
        let mut c = new();
        for bt in &batches {
            let t = Tensor::from_slice(bt, (1, bt.len() / inp, inp), &candle_core::Device::Cpu);
            c.add_batch(&t.unwrap()).unwrap();
        }
        assert!(
            a.hessian()
                .iter()
                .zip(c.hessian())
                .all(|(x, y)| x.to_bits() == y.to_bits())
        );

        let n: usize = batches.iter().map(|b| b.len() / inp).sum();
        assert_eq!(a.n_tokens(), n);
        let h = a.hessian();
        let mut want = vec![0f64; inp * inp];
        for row in batches.iter().flat_map(|b| b.chunks_exact(inp)) {
            for i in 0..inp {
                for j in 0..inp {
                    want[i * inp + j] += 2.0 * f64::from(row[i]) * f64::from(row[j]);
                }
            }
        }
        let scale = want.iter().fold(0f64, |m, v| m.max(v.abs())) / n as f64;
        for i in 0..inp {
            for j in 0..inp {
                let (got, w) = (h[i * inp + j], want[i * inp + j] / n as f64);
                assert_eq!(
                    got.to_bits(),
                    h[j * inp + i].to_bits(),
                    "{kernel:?}: asymmetric at {i},{j}"
                );
                assert!(
                    (got - w).abs() <= 1e-4 * w.abs().max(1e-3 * scale),
                    "{kernel:?}: H[{i},{j}] = {got}, reference {w}"
                );
            }
        }
    }

    #[test]
    fn non_finite_batch_is_rejected_and_leaves_h_unchanged() {
        let mut acc = HessianAccumulator::new(3);
        acc.add_batch_slice(&[1.0, 2.0, 3.0]).unwrap();
        let before = acc.hessian().to_vec();
        for bad in [f32::NAN, f32::INFINITY, 1e30] {
            let err = acc.add_batch_slice(&[0.5, bad, 1.0]).unwrap_err();
            assert!(err.to_string().contains("non-finite"), "{err}");
        }
        assert_eq!(acc.hessian(), &before[..]);
        assert_eq!(acc.n_tokens(), 1);
    }

    #[test]
    fn wrong_width_is_an_error() {
        let mut acc = HessianAccumulator::new(4);
        assert!(acc.add_batch_slice(&[1.0; 6]).is_err());
        let t = Tensor::zeros((2, 3), DType::F32, &candle_core::Device::Cpu).unwrap();
        assert!(acc.add_batch(&t).is_err());
    }
}
