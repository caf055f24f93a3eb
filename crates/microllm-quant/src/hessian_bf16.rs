//! `X^T X` with bf16 products (AVX-512 BF16's `vdpbf16ps`), folded into the f64 Hessian.
//!
//! Why: GPTQ's Hessians were the larger half of its calibration cost beside the forward pass
//! once the forward ran on the integer kernel (SmolLM2 at 128 x 512 tokens: 44 s of 104,
//! docs/benchmarks.md), and their f32 product ran at about 60% of the f32 FMA ceiling.
//! `vdpbf16ps` does two multiply-adds per f32 lane where an FMA does one, at the same rate on
//! the AMD EPYC machines here (`cargo run --release -p microllm-models --example fma_peak --
//! 1 100 bf16`: 235 against 117 GFLOP/s per core); Intel's run it at a quarter of the FMA
//! rate, so they keep the f32 product ([`faster_than_f32`]). The inputs are rounded to bf16 (8
//! significant bits, relative error at most 2^-9 per value, round to nearest even); products
//! and sums stay f32 within a fold and f64 across folds. GPTQ damps the Hessian by 1% of its
//! mean diagonal, far above that rounding; the perplexity after GPTQ is measured in
//! docs/benchmarks.md.
//!
//! Layout: tokens are rounded as they arrive ([`PairRows`], half the memory of the f32 rows
//! and no second pass over them) and interleaved in pairs, `z[p][i] = (x[2p][i], x[2p+1][i])`
//! as one 32-bit word, so one `vdpbf16ps` of 16 words of features `i..i + 16` with one
//! broadcast word of feature `j` adds both tokens' `x_i x_j`. The kernel keeps a tile of
//! [`ROWS`] features by [`COLS`] features in 24 registers over blocks of [`PAIR_BLOCK`] token
//! pairs (12 columns measured 1.7x faster than 8; 64 rows by 6 columns slower); tasks own
//! blocks of [`ROWS`] rows and compute the tiles left of and on the diagonal.

use rayon::prelude::*;

/// Features per row block (two 16-lane vectors).
const ROWS: usize = 32;
/// Token pairs per block of the pair loop (see [`fold`]): a row block's words of a block stay
/// in L1 while all its tiles read them.
const PAIR_BLOCK: usize = 256;

/// Features per column tile (broadcasts per token pair): with two row vectors, 24 of the 32
/// vector registers accumulate.
const COLS: usize = 12;

/// Whether this CPU has the instructions ([`fold`] runs).
pub(crate) fn supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Whether this CPU has the instructions and runs them faster than f32 FMAs.
///
/// Intel's cores with AVX-512 BF16 issue `vdpbf16ps` at a quarter of the FMA rate, so the
/// bf16 product is slower than the f32 one there (Xeon here: `fma_peak -- 1 100 bf16` 108
/// against 212 GFLOP/s f32; `BF16=1 hessian_bench 64 512 576 1536` 9.0 against 7.9 ms at
/// width 1536). Only AMD's (Zen 4 and later) run it at twice the f32 rate. The choice is
/// by vendor, not by timing, so that one machine always computes the same Hessians.
pub fn faster_than_f32() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        supported() && cpu_vendor_is_amd()
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// CPUID leaf 0's vendor string is "AuthenticAMD".
#[cfg(target_arch = "x86_64")]
fn cpu_vendor_is_amd() -> bool {
    let leaf = std::arch::x86_64::__cpuid(0);
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

/// Tokens waiting for a fold, rounded to bf16 as they arrive and interleaved in pairs:
/// `[pairs, width]` words, `width` the features padded with zeros to a multiple of [`ROWS`]
/// and [`COLS`]; an odd last token is paired with zeros (it adds nothing but itself).
#[derive(Debug, Clone)]
pub(crate) struct PairRows {
    inp: usize,
    width: usize,
    words: Vec<u32>,
    tokens: usize,
}

impl PairRows {
    pub(crate) fn new(inp: usize) -> Self {
        Self {
            inp,
            width: inp.next_multiple_of(ROWS * COLS / gcd(ROWS, COLS)),
            words: Vec::new(),
            tokens: 0,
        }
    }

    /// Tokens held.
    pub(crate) fn tokens(&self) -> usize {
        self.tokens
    }

    /// Adds the row-major tokens `x` (`[m, inp]`, finite).
    pub(crate) fn push(&mut self, x: &[f32]) {
        let (inp, width) = (self.inp, self.width);
        let mut rows = x.chunks_exact(inp);
        if self.tokens % 2 == 1 {
            // Complete the open pair's high halves.
            if let Some(row) = rows.next() {
                let at = self.words.len() - width;
                for (w, &v) in self.words[at..].iter_mut().zip(row) {
                    *w |= bf16_bits(v) << 16;
                }
                self.tokens += 1;
            }
        }
        let rest = rows.len();
        if rest == 0 {
            return;
        }
        let rest_x = &x[x.len() - rest * inp..];
        let at = self.words.len();
        self.words.resize(at + rest.div_ceil(2) * width, 0);
        self.words[at..]
            .par_chunks_mut(width)
            .zip(rest_x.par_chunks(2 * inp))
            .for_each(|(row, pair)| {
                let (a, b) = pair.split_at(inp.min(pair.len()));
                if b.is_empty() {
                    for (w, &lo) in row.iter_mut().zip(a) {
                        *w = bf16_bits(lo);
                    }
                } else {
                    for ((w, &lo), &hi) in row.iter_mut().zip(a).zip(b) {
                        *w = bf16_bits(lo) | (bf16_bits(hi) << 16);
                    }
                }
            });
        self.tokens += rest;
    }

    /// Forgets every token (keeping the buffer).
    pub(crate) fn clear(&mut self) {
        self.words.clear();
        self.tokens = 0;
    }
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// The Hessian's pointer, shared by the row-block tasks (see [`fold`] for who writes what).
#[derive(Clone, Copy)]
struct Target(*mut f64);
// SAFETY: tasks write disjoint entries (see `fold`); the buffer outlives the parallel loop.
unsafe impl Send for Target {}
unsafe impl Sync for Target {}

impl Target {
    fn ptr(self) -> *mut f64 {
        self.0
    }
}

/// `H <- H * keep + add * X^T X` for the tokens of `x`, `H` row-major `[inp, inp]` and
/// symmetric. Call only when [`supported`].
pub(crate) fn fold(h: &mut [f64], x: &PairRows, keep: f64, add: f64) {
    assert!(supported(), "the bf16 Hessian kernel needs AVX-512 BF16");
    let (inp, width) = (x.inp, x.width);
    assert_eq!(h.len(), inp * inp);
    let z = &x.words;
    let pairs = z.len() / width;
    let target = Target(h.as_mut_ptr());
    // Row block `r` owns the lower entries `(i, j <= i)` of its rows and the upper entries
    // `(j < i, i)` of its columns: every entry of `H` has exactly one owner.
    (0..width / ROWS).into_par_iter().rev().for_each(|r| {
        let i0 = r * ROWS;
        let tiles: Vec<usize> = (0..(i0 + ROWS).min(inp)).step_by(COLS).collect();
        // Every tile's sums, in the kernel's layout: `[2][COLS][16]` (vector, column, lane).
        let mut sums = vec![0f32; tiles.len() * ROWS * COLS];
        // Token pairs in blocks, so that the row block's words of a block (and a tile's
        // broadcast words) stay in L1 while every tile of the row reads them.
        for p0 in (0..pairs).step_by(PAIR_BLOCK) {
            let p1 = (p0 + PAIR_BLOCK).min(pairs);
            for (&j0, tile) in tiles.iter().zip(sums.chunks_exact_mut(ROWS * COLS)) {
                // SAFETY: the CPU has the features (asserted above); `z` holds `pairs` rows
                // of `width` words; `i0 + ROWS <= width` and `j0 + COLS <= width` (`width` is
                // a multiple of both, and `j0 < i0 + ROWS`).
                #[cfg(target_arch = "x86_64")]
                unsafe {
                    kernel::tile(z, width, p0..p1, i0, j0, tile)
                };
            }
        }
        for (&j0, tile) in tiles.iter().zip(sums.chunks_exact(ROWS * COLS)) {
            for a in 0..ROWS {
                let i = i0 + a;
                if i >= inp {
                    break;
                }
                for b in 0..COLS {
                    let j = j0 + b;
                    if j > i || j >= inp {
                        break;
                    }
                    let c = tile[((a / 16) * COLS + b) * 16 + a % 16];
                    let p = target.ptr();
                    // SAFETY: `(i, j)` with `j <= i` and its mirror `(j, i)` are owned by this
                    // row block (`i` in its rows); both are inside `H`.
                    unsafe {
                        let v = *p.add(i * inp + j) * keep + add * f64::from(c);
                        *p.add(i * inp + j) = v;
                        *p.add(j * inp + i) = v;
                    }
                }
            }
        }
    });
}

#[cfg(target_arch = "x86_64")]
mod kernel {
    use std::arch::x86_64::*;

    use super::{COLS, ROWS};

    /// Adds `sum_p z[p][i0 + a] . z[p][j0 + b]` (pairwise bf16 dot products in f32) over the
    /// pairs `p` in `pairs` to `tile`, laid out `[2][COLS][16]`: vector `a / 16`, column `b`,
    /// lane `a % 16`.
    ///
    /// # Safety
    /// The CPU has AVX-512 F and BF16; `z` holds rows of `width` words up to `pairs.end`;
    /// `i0 + ROWS <= width` and `j0 + COLS <= width`.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn tile(
        z: &[u32],
        width: usize,
        pairs: std::ops::Range<usize>,
        i0: usize,
        j0: usize,
        tile: &mut [f32],
    ) {
        debug_assert_eq!(tile.len(), ROWS * COLS);
        let out = tile.as_mut_ptr();
        // SAFETY: `tile` holds 2 * COLS vectors of 16 floats.
        let mut acc: [[__m512; COLS]; 2] = std::array::from_fn(|h| {
            std::array::from_fn(|c| unsafe { _mm512_loadu_ps(out.add((h * COLS + c) * 16)) })
        });
        let base = z.as_ptr();
        for p in pairs {
            // SAFETY: inside row `p` of `z` by the caller's bounds.
            let row = unsafe { base.add(p * width) };
            let a: [__m512bh; 2] = [0, 1].map(|h| unsafe {
                std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(
                    row.add(i0 + 16 * h).cast(),
                ))
            });
            let [low, high] = &mut acc;
            for (c, (low, high)) in low.iter_mut().zip(high.iter_mut()).enumerate() {
                let b = unsafe {
                    std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(
                        row.add(j0 + c).read() as i32,
                    ))
                };
                *low = _mm512_dpbf16_ps(*low, a[0], b);
                *high = _mm512_dpbf16_ps(*high, a[1], b);
            }
        }
        for (h, cols) in acc.iter().enumerate() {
            for (c, v) in cols.iter().enumerate() {
                // SAFETY: as above.
                unsafe { _mm512_storeu_ps(out.add((h * COLS + c) * 16), *v) };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bf16_value(v: f32) -> f64 {
        f64::from(f32::from_bits(bf16_bits(v) << 16))
    }

    /// The kernel's fold equals `X^T X` computed in f64 on the bf16-rounded inputs, up to
    /// the f32 sums' rounding, on a width and token count that exercise every edge (padding
    /// features, an odd token, pairs split across batches, a partial tile on the diagonal).
    #[test]
    fn fold_matches_f64_on_rounded_inputs() {
        if !supported() {
            return;
        }
        let (inp, m, ld) = (45, 37, 48);
        let x: Vec<f32> = (0..m * ld)
            .map(|k| ((k * 7919 % 1013) as f32 / 1013.0 - 0.5) * 3.0)
            .collect();
        // In batches of 3, 6 and the rest: pairs straddle the batches.
        let mut rows = PairRows::new(inp);
        let packed: Vec<f32> = (0..m)
            .flat_map(|t| x[t * ld..t * ld + inp].to_vec())
            .collect();
        for (a, b) in [(0, 3), (3, 9), (9, m)] {
            rows.push(&packed[a * inp..b * inp]);
        }
        assert_eq!(rows.tokens(), m);
        let mut h = vec![1.0f64; inp * inp];
        fold(&mut h, &rows, 0.5, 2.0);
        for i in 0..inp {
            for j in 0..inp {
                let dot: f64 = (0..m)
                    .map(|t| bf16_value(x[t * ld + i]) * bf16_value(x[t * ld + j]))
                    .sum();
                let want = 0.5 + 2.0 * dot;
                let got = h[i * inp + j];
                assert!(
                    (got - want).abs() <= 1e-5 * want.abs().max(1.0),
                    "({i}, {j}): {got} vs {want}"
                );
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
