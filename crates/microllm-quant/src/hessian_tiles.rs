//! `X^T X` on AVX-512 register tiles, folded into the f64 Hessian: f32 fused multiply-adds,
//! or bf16 products (AVX-512 BF16's `vdpbf16ps`) on inputs rounded to bf16.
//!
//! Why a kernel of our own: GPTQ's Hessians are the larger half of its calibration cost beside
//! the forward pass (SmolLM2 at 128 x 512 tokens: about 40 s of 108 on the 2-core Intel Xeon,
//! docs/benchmarks.md), and the general GEMM that computed them (faer, lower triangle by
//! panels; [`crate::hessian`]) reached about a third of the f32 FMA ceiling on these shapes.
//! A product of a matrix with itself needs no packing beyond the layout below, and a tile
//! that keeps 24 accumulators in registers while the tokens stream past is bound by the FMA
//! ports: `cargo run --release -p microllm-quant --example hessian_bench -- 128 512 576 1536`
//! ran 1.06 and 5.27 ms per 512-token batch against the GEMM's 1.19 and 6.87 ms (`KERNEL=gemm`).
//!
//! `vdpbf16ps` does two multiply-adds per f32 lane where an FMA does one, at the same rate on
//! the AMD EPYC machines here (`cargo run --release -p microllm-models --example fma_peak --
//! 1 100 bf16`: 235 against 117 GFLOP/s per core); Intel's issue it at a quarter of the FMA
//! rate (half the f32 flop rate), so they keep f32 ([`bf16_faster_than_f32`]). With bf16 the inputs are rounded to 8
//! significant bits (relative error at most 2^-9 per value, round to nearest even); products
//! and sums stay f32 within a fold and f64 across folds. GPTQ damps the Hessian by 1% of its
//! mean diagonal, far above that rounding; the perplexity after GPTQ is measured in
//! docs/benchmarks.md.
//!
//! Layout ([`TiledRows`]): tokens are stored as they arrive, as 32-bit words, an f32 per word
//! or for bf16 two tokens interleaved in pairs, `z[p][i] = (x[2p][i], x[2p+1][i])` (half the
//! memory, and one `vdpbf16ps` of 16 words of features `i..i + 16` with one broadcast word
//! of feature `j` adds both tokens' `x_i x_j`). The words sit in slabs of [`SLAB_ROWS`] word
//! rows, each slab cut into panels of 16 features (one cache line per row), so every read of
//! the kernel walks consecutive lines. A tile is [`ROWS`] features (three vectors) by
//! [`COLS`] features (broadcasts) in 24 registers; row blocks of [`ROWS`] features own their
//! rows of `H` and compute the tiles left of and on the diagonal, and each thread walks the
//! slabs once for all of its row blocks. Folds write the lower triangle only;
//! [`mirror_lower`] completes `H` once, when it is read.

use rayon::prelude::*;

/// 16-lane vectors per row block.
const VECS: usize = 3;

/// Features per row block.
const ROWS: usize = 16 * VECS;

/// Features per column tile (broadcasts per word row): with three row vectors, 24 of the 32
/// vector registers accumulate.
const COLS: usize = 8;

/// Features per panel of the storage, one cache line of words: a tile's reads are
/// [`VECS`] + 1 streams of consecutive lines (see [`TiledRows`]).
const PANEL: usize = 16;

/// Words from one panel of a slab to the next: its rows and one unused line, so that the
/// four panels a tile reads do not start on the same L1 set (5.27 against 5.88 ms per batch
/// at width 1536 without the line, within the noise of one run each).
const PANEL_LEN: usize = SLAB_ROWS * PANEL + PANEL;

/// Word rows per slab (see [`TiledRows`]): a row block's words of a slab (24 KB) stay in L1
/// while all its tiles read them (64 and 256 rows were slower).
const SLAB_ROWS: usize = 128;

/// How the tiles multiply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Products {
    /// f32 fused multiply-adds on the inputs as they are.
    F32,
    /// `vdpbf16ps` on inputs rounded to bf16, two tokens per word.
    Bf16,
}

impl Products {
    /// Whether this CPU has the instructions ([`fold`] runs).
    pub(crate) fn supported(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            std::arch::is_x86_feature_detected!("avx512f")
                && (self == Self::F32 || std::arch::is_x86_feature_detected!("avx512bf16"))
        }
        #[cfg(not(target_arch = "x86_64"))]
        false
    }

    fn tokens_per_row(self) -> usize {
        match self {
            Self::F32 => 1,
            Self::Bf16 => 2,
        }
    }
}

/// Whether this CPU has AVX-512 BF16 and runs it faster than f32 FMAs.
///
/// Intel's cores with AVX-512 BF16 issue `vdpbf16ps` at a quarter of the FMA instruction
/// rate, half the f32 flop rate, so the bf16 product is slower than the f32 one there (Xeon
/// here: `fma_peak -- 1 100 bf16` 108 against 212 GFLOP/s f32). AMD's (Zen 4 and later)
/// issue it at the FMA rate, twice the f32 flop rate. The choice is by vendor, not by
/// timing, so that one machine always computes the same Hessians.
pub fn bf16_faster_than_f32() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        Products::Bf16.supported() && cpu_vendor_is_amd()
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// CPUID leaf 0's vendor string is "AuthenticAMD".
#[cfg(target_arch = "x86_64")]
fn cpu_vendor_is_amd() -> bool {
    // `__cpuid` is a safe function in current Rust and was an unsafe one before.
    // SAFETY: CPUID leaf 0 exists on every x86_64 CPU.
    #[allow(unused_unsafe)]
    let leaf = unsafe { std::arch::x86_64::__cpuid(0) };
    let vendor: Vec<u8> = [leaf.ebx, leaf.edx, leaf.ecx]
        .iter()
        .flat_map(|r| r.to_le_bytes())
        .collect();
    vendor == b"AuthenticAMD"
}

/// `f32` rounded to bf16 (nearest, ties to even), as its 16 bits. Inputs are finite.
#[inline(always)]
fn bf16_bits(v: f32) -> u32 {
    let bits = v.to_bits();
    (bits + 0x7fff + ((bits >> 16) & 1)) >> 16
}

/// Tokens waiting for a fold, as 32-bit words: with f32 products a word row is one token's
/// values, with bf16 two tokens rounded to bf16 and interleaved (an odd last token is paired
/// with zeros, so it adds nothing but itself). The features are padded with zeros to
/// `width`, a multiple of [`ROWS`], and stored in slabs of [`SLAB_ROWS`] word rows, each
/// slab panel by panel (`[width / PANEL][PANEL_LEN]`, a panel's rows [`PANEL`] words apart):
/// a tile's reads walk whole lines, never a whole row's stride (rows of the layer's width
/// put every token on its own page, and the f32 kernel ran slower than the GEMM: 10.4
/// against 7.5 ms per batch at width 1536).
#[derive(Debug, Clone)]
pub(crate) struct TiledRows {
    products: Products,
    inp: usize,
    width: usize,
    /// The words, in whole cache lines: aligned, so that no vector load of a panel row
    /// straddles two lines.
    lines: Vec<Line>,
    tokens: usize,
}

/// One cache line of words, a panel's row.
#[derive(Debug, Clone, Copy)]
#[repr(C, align(64))]
struct Line([u32; PANEL]);

impl TiledRows {
    pub(crate) fn new(products: Products, inp: usize) -> Self {
        Self {
            products,
            inp,
            width: inp.next_multiple_of(ROWS),
            lines: Vec::new(),
            tokens: 0,
        }
    }

    pub(crate) fn products(&self) -> Products {
        self.products
    }

    /// Tokens held.
    pub(crate) fn tokens(&self) -> usize {
        self.tokens
    }

    /// Word rows in use.
    fn rows(&self) -> usize {
        match self.products {
            Products::F32 => self.tokens,
            Products::Bf16 => self.tokens.div_ceil(2),
        }
    }

    fn words(&self) -> &[u32] {
        // SAFETY: a `Line` is `PANEL` words without padding (`repr(C)`, 64 bytes).
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr().cast(), self.lines.len() * PANEL) }
    }

    fn words_mut(&mut self) -> &mut [u32] {
        let n = self.lines.len() * PANEL;
        // SAFETY: as in `words`, and the borrow is exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.lines.as_mut_ptr().cast(), n) }
    }

    fn slab_len(&self) -> usize {
        (self.width / PANEL) * PANEL_LEN
    }

    /// Index of word row `r`, feature `f`.
    fn at(&self, r: usize, f: usize) -> usize {
        (r / SLAB_ROWS) * self.slab_len()
            + (f / PANEL) * PANEL_LEN
            + (r % SLAB_ROWS) * PANEL
            + f % PANEL
    }

    /// Adds the row-major tokens `x` (`[m, inp]`, finite).
    pub(crate) fn push(&mut self, x: &[f32]) {
        let inp = self.inp;
        let mut x = x;
        if self.products == Products::Bf16 && self.tokens % 2 == 1 && x.len() >= inp {
            // Complete the open pair's high halves.
            let r = self.rows() - 1;
            for (f, &v) in x[..inp].iter().enumerate() {
                let k = self.at(r, f);
                self.words_mut()[k] |= bf16_bits(v) << 16;
            }
            self.tokens += 1;
            x = &x[inp..];
        }
        let m = x.len() / inp;
        if m == 0 {
            return;
        }
        let per_row = self.products.tokens_per_row();
        let first = self.rows();
        let new_rows = m.div_ceil(per_row);
        let slab_len = self.slab_len();
        let slabs = (first + new_rows).div_ceil(SLAB_ROWS);
        self.lines
            .resize(slabs * slab_len / PANEL, Line([0; PANEL]));
        let products = self.products;
        // Each slab's new rows in parallel (a batch of 512 tokens spans two or three).
        self.words_mut()
            .par_chunks_mut(slab_len)
            .enumerate()
            .skip(first / SLAB_ROWS)
            .for_each(|(s, slab)| {
                let lo = (s * SLAB_ROWS).max(first);
                let hi = ((s + 1) * SLAB_ROWS).min(first + new_rows);
                for r in lo..hi {
                    let k = r - first;
                    let tokens = &x[k * per_row * inp..((k + 1) * per_row * inp).min(x.len())];
                    let (a, b) = tokens.split_at(inp);
                    for (panel, dst) in slab.chunks_exact_mut(PANEL_LEN).enumerate() {
                        let row = &mut dst[(r % SLAB_ROWS) * PANEL..][..PANEL];
                        let f0 = panel * PANEL;
                        let f1 = (f0 + PANEL).min(inp);
                        if f0 >= f1 {
                            break;
                        }
                        let (a, b) = (&a[f0..f1], b.get(f0..f1));
                        match (products, b) {
                            (Products::F32, _) => {
                                for (w, &v) in row.iter_mut().zip(a) {
                                    *w = v.to_bits();
                                }
                            }
                            (Products::Bf16, None) => {
                                for (w, &lo) in row.iter_mut().zip(a) {
                                    *w = bf16_bits(lo);
                                }
                            }
                            (Products::Bf16, Some(b)) => {
                                for ((w, &lo), &hi) in row.iter_mut().zip(a).zip(b) {
                                    *w = bf16_bits(lo) | (bf16_bits(hi) << 16);
                                }
                            }
                        }
                    }
                }
            });
        self.tokens += m;
    }

    /// Forgets every token.
    pub(crate) fn clear(&mut self) {
        self.lines.clear();
        self.tokens = 0;
    }
}

/// `H <- H * keep + add * X^T X` on the lower triangle (`j <= i`) of `H`, row-major
/// `[inp, inp]`, for the tokens of `x`; the upper triangle is left as it was (see
/// [`mirror_lower`]). Call only when the products are [`Products::supported`].
pub(crate) fn fold(h: &mut [f64], x: &TiledRows, keep: f64, add: f64) {
    let products = x.products;
    assert!(
        products.supported(),
        "the Hessian tile kernel needs AVX-512 (and AVX-512 BF16 for bf16): {products:?}"
    );
    let inp = x.inp;
    assert_eq!(h.len(), inp * inp);
    if inp == 0 {
        return;
    }
    let rows = x.rows();
    // Row block `r` owns rows `r * ROWS..` of `H`, of which it writes the lower part. Each
    // thread takes a share of the row blocks (in a snake order, so that the long rows near
    // the bottom are dealt out evenly) and walks the slabs once for all of them: a slab is
    // read from memory once per thread, not once per row block (read per row block, the
    // slabs of a 1536-wide layer came from memory 32 times per fold: about 400 MB).
    let threads = rayon::current_num_threads().max(1);
    let mut shares: Vec<Vec<RowBlock<'_>>> = (0..threads).map(|_| Vec::new()).collect();
    for (r, h_rows) in h.chunks_mut(ROWS * inp).enumerate() {
        let k = r % (2 * threads);
        let share = if k < threads { k } else { 2 * threads - 1 - k };
        shares[share].push(RowBlock::new(r * ROWS, h_rows, inp));
    }
    shares.into_par_iter().for_each(|mut blocks| {
        for (s, slab) in x.words().chunks_exact(x.slab_len()).enumerate() {
            let used = (rows - s * SLAB_ROWS).min(SLAB_ROWS);
            for block in &mut blocks {
                block.add_slab(slab, used, products);
            }
        }
        for block in blocks {
            block.write(inp, keep, add);
        }
    });
}

/// One row block's part of a fold: its rows of `H` and the f32 sums of its tiles.
struct RowBlock<'h> {
    i0: usize,
    h_rows: &'h mut [f64],
    /// First features of the tiles left of and on the diagonal.
    tiles: Vec<usize>,
    /// Every tile's sums, in the kernel's layout: `[VECS][COLS][16]` (vector, column, lane).
    sums: Vec<f32>,
}

impl<'h> RowBlock<'h> {
    fn new(i0: usize, h_rows: &'h mut [f64], inp: usize) -> Self {
        let tiles: Vec<usize> = (0..(i0 + ROWS).min(inp)).step_by(COLS).collect();
        let sums = vec![0f32; tiles.len() * ROWS * COLS];
        Self {
            i0,
            h_rows,
            tiles,
            sums,
        }
    }

    /// Adds the products of the `used` word rows of `slab`.
    fn add_slab(&mut self, slab: &[u32], used: usize, products: Products) {
        let panel = |f: usize| &slab[(f / PANEL) * PANEL_LEN + f % PANEL..];
        let a: [&[u32]; VECS] = std::array::from_fn(|v| panel(self.i0 + PANEL * v));
        for (&j0, tile) in self
            .tiles
            .iter()
            .zip(self.sums.chunks_exact_mut(ROWS * COLS))
        {
            let b = panel(j0);
            // SAFETY: `fold` asserted the CPU has the features; each of `a` starts a panel
            // of the slab and `b` inside one (`j0` is a multiple of `COLS`, which divides
            // `PANEL`), each holding `used` rows `PANEL` words apart.
            #[cfg(target_arch = "x86_64")]
            unsafe {
                match products {
                    Products::F32 => kernel::tile_f32(a, b, used, tile),
                    Products::Bf16 => kernel::tile_bf16(a, b, used, tile),
                }
            };
            #[cfg(not(target_arch = "x86_64"))]
            {
                let _ = (a, b, used, tile, products);
                unreachable!("`fold` asserts AVX-512");
            }
        }
    }

    /// `H <- H * keep + add * sums` on the block's lower part, row by row.
    fn write(self, inp: usize, keep: f64, add: f64) {
        for (k, h_row) in self.h_rows.chunks_exact_mut(inp).enumerate() {
            let lower = &mut h_row[..=self.i0 + k];
            for (&j0, tile) in self.tiles.iter().zip(self.sums.chunks_exact(ROWS * COLS)) {
                let from = &tile[(k / 16) * COLS * 16 + k % 16..];
                for (b, h) in lower.iter_mut().skip(j0).take(COLS).enumerate() {
                    *h = *h * keep + add * f64::from(from[b * 16]);
                }
            }
        }
    }
}

/// Copies the lower triangle of row-major `[n, n]` `h` onto its upper triangle, in square
/// blocks (so that the column reads stay in cache).
pub(crate) fn mirror_lower(h: &mut [f64], n: usize) {
    const B: usize = 64;
    assert_eq!(h.len(), n * n);
    for i0 in (0..n).step_by(B) {
        for j0 in (0..=i0).step_by(B) {
            for i in i0..(i0 + B).min(n) {
                for j in j0..(j0 + B).min(i) {
                    h[j * n + i] = h[i * n + j];
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod kernel {
    use std::arch::x86_64::*;

    use super::{COLS, PANEL, ROWS, VECS};

    /// The tile's accumulators from `tile` (`[VECS][COLS][16]`: vector `k / 16`, column `c`,
    /// lane `k % 16`). A macro, not a function, so that the accumulators are the kernel's own
    /// locals: returned from a call the binary's build did not inline, they lived in memory.
    macro_rules! load_tile {
        ($tile:ident) => {{
            assert_eq!($tile.len(), ROWS * COLS);
            let at = $tile.as_ptr();
            // SAFETY: `tile` holds `VECS * COLS` vectors of 16 floats.
            let acc: [[__m512; COLS]; VECS] = std::array::from_fn(|v| {
                std::array::from_fn(|c| unsafe { _mm512_loadu_ps(at.add((v * COLS + c) * 16)) })
            });
            acc
        }};
    }

    macro_rules! store_tile {
        ($acc:ident, $tile:ident) => {{
            let at = $tile.as_mut_ptr();
            for (v, cols) in $acc.iter().enumerate() {
                for (c, x) in cols.iter().enumerate() {
                    // SAFETY: as in `load_tile`.
                    unsafe { _mm512_storeu_ps(at.add((v * COLS + c) * 16), *x) };
                }
            }
        }};
    }

    /// One word row's multiply-adds into every accumulator, spelled out column by column:
    /// with constant indices the accumulators stay in registers in every build (a loop over
    /// the columns left them in memory, stored after each multiply-add, in the binary's
    /// build though not in the examples': 2.3x slower).
    macro_rules! row_step {
        ($acc:ident, $x:ident, $y:expr, $madd:expr, [$($c:literal),*]) => {
            $(
                let y = $y($c);
                $acc[0][$c] = $madd($acc[0][$c], $x[0], y);
                $acc[1][$c] = $madd($acc[1][$c], $x[1], y);
                $acc[2][$c] = $madd($acc[2][$c], $x[2], y);
            )*
        };
    }

    /// Adds `sum_t a[k / 16][t][k % 16] * b[t][c]` (f32 words, fused multiply-adds) over the
    /// `rows` word rows `t` (`PANEL` words apart in every slice) to `tile`, for `k < ROWS`
    /// and `c < COLS`.
    ///
    /// # Safety
    /// The CPU has AVX-512 F; each of `a` holds `rows * PANEL` words, `b` holds
    /// `(rows - 1) * PANEL + COLS`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn tile_f32(a: [&[u32]; VECS], b: &[u32], rows: usize, tile: &mut [f32]) {
        const { assert!(VECS == 3 && COLS == 8) };
        assert!(a.iter().all(|a| a.len() >= rows * PANEL));
        assert!(rows == 0 || b.len() >= (rows - 1) * PANEL + COLS);
        let mut acc = load_tile!(tile);
        let a = a.map(|a| a.as_ptr().cast::<f32>());
        let b = b.as_ptr().cast::<f32>();
        for t in 0..rows {
            // SAFETY: inside the slices by the bounds asserted above.
            let x: [__m512; VECS] = a.map(|a| unsafe { _mm512_loadu_ps(a.add(t * PANEL)) });
            let b = unsafe { b.add(t * PANEL) };
            let y = |c: usize| _mm512_set1_ps(unsafe { b.add(c).read() });
            let madd = |acc, x, y| _mm512_fmadd_ps(x, y, acc);
            row_step!(acc, x, y, madd, [0, 1, 2, 3, 4, 5, 6, 7]);
        }
        store_tile!(acc, tile);
    }

    /// [`tile_f32`] on bf16 pair words: each word's two products (`vdpbf16ps`).
    ///
    /// # Safety
    /// As [`tile_f32`], and the CPU has AVX-512 BF16.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn tile_bf16(a: [&[u32]; VECS], b: &[u32], rows: usize, tile: &mut [f32]) {
        const { assert!(VECS == 3 && COLS == 8) };
        assert!(a.iter().all(|a| a.len() >= rows * PANEL));
        assert!(rows == 0 || b.len() >= (rows - 1) * PANEL + COLS);
        let mut acc = load_tile!(tile);
        let a = a.map(|a| a.as_ptr());
        let b = b.as_ptr();
        // SAFETY (both transmutes): 512 bits of plain data either way.
        let bf16 = |v: __m512i| unsafe { std::mem::transmute::<__m512i, __m512bh>(v) };
        for t in 0..rows {
            // SAFETY: inside the slices by the bounds asserted above.
            let x: [__m512bh; VECS] =
                a.map(|a| bf16(unsafe { _mm512_loadu_si512(a.add(t * PANEL).cast()) }));
            let b = unsafe { b.add(t * PANEL) };
            let y = |c: usize| bf16(_mm512_set1_epi32(unsafe { b.add(c).read() } as i32));
            let madd = |acc, x, y| _mm512_dpbf16_ps(acc, x, y);
            row_step!(acc, x, y, madd, [0, 1, 2, 3, 4, 5, 6, 7]);
        }
        store_tile!(acc, tile);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bf16_value(v: f32) -> f64 {
        f64::from(f32::from_bits(bf16_bits(v) << 16))
    }

    /// Both kernels' folds equal `X^T X` computed in f64 on their inputs (bf16-rounded for
    /// bf16), up to the f32 sums' rounding, on a width and token count that exercise every
    /// edge (padding features, an odd token, pairs split across batches, a partial tile on
    /// the diagonal).
    #[test]
    fn fold_matches_f64_on_its_inputs() {
        let (inp, m, ld) = (45, 37, 48);
        let x: Vec<f32> = (0..m * ld)
            .map(|k| ((k * 7919 % 1013) as f32 / 1013.0 - 0.5) * 3.0)
            .collect();
        let packed: Vec<f32> = (0..m)
            .flat_map(|t| x[t * ld..t * ld + inp].to_vec())
            .collect();
        for products in [Products::F32, Products::Bf16] {
            if !products.supported() {
                continue;
            }
            let value = |v: f32| match products {
                Products::F32 => f64::from(v),
                Products::Bf16 => bf16_value(v),
            };
            // In batches of 3, 6 and the rest: pairs straddle the batches.
            let mut rows = TiledRows::new(products, inp);
            for (a, b) in [(0, 3), (3, 9), (9, m)] {
                rows.push(&packed[a * inp..b * inp]);
            }
            assert_eq!(rows.tokens(), m);
            let mut h = vec![1.0f64; inp * inp];
            fold(&mut h, &rows, 0.5, 2.0);
            mirror_lower(&mut h, inp);
            for i in 0..inp {
                for j in 0..inp {
                    let dot: f64 = (0..m)
                        .map(|t| value(x[t * ld + i]) * value(x[t * ld + j]))
                        .sum();
                    let want = 0.5 + 2.0 * dot;
                    let got = h[i * inp + j];
                    assert!(
                        (got - want).abs() <= 1e-5 * want.abs().max(1.0),
                        "{products:?} ({i}, {j}): {got} vs {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn rounding_is_to_nearest_even() {
        // 1 + 2^-8 lies halfway between bf16's 1 and 1 + 2^-7: ties to the even 1.
        assert_eq!(bf16_bits(1.0 + 1.0 / 256.0), 0x3f80);
        // Just above halfway rounds up.
        assert_eq!(bf16_bits(1.0 + 1.0 / 256.0 + 1.0 / 4096.0), 0x3f81);
        assert_eq!(bf16_bits(-2.0), 0xc000);
    }
}
