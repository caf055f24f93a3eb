//! `y = x W^T` on [`BlockRows`] with 8-bit activations: integer dot products per block of 32,
//! one float multiply-add per block.
//!
//! For token `t`, row `n` and block `b` the block's contribution is
//! `sx[t,b] * d[n,b] * (sum_k q[n,k] qx[t,k] - z * sum_k qx[t,k]) + m[n,b] * sx[t,b] * sum_k qx[t,k]`,
//! so the inner loop only multiplies unsigned weight codes by signed activation codes, which is
//! exactly AVX-512 VNNI's `vpdpbusd`. The kernel computes a tile of `MR` tokens by 32 rows
//! (two groups): per four columns it loads two weight vectors, broadcasts each token's four
//! activation bytes and issues `2 * MR` `vpdpbusd`; per block it converts the sums and folds in
//! the scales. Tiles are spread over rayon's pool by token chunks and row groups, each task
//! writing its own part of the output.
//!
//! Without VNNI the same arithmetic runs in plain Rust ([`scalar_tile`]), which is also the
//! reference the vector kernel is tested against.

use rayon::prelude::*;

use super::Out;

use super::acts::QuantActs;
use super::legacy::{BLOCK, BlockRows, Codes, GROUP};

/// Tokens per kernel tile.
const MR: usize = 4;
/// Tokens per task.
const TOKEN_CHUNK: usize = 64;

/// Whether this CPU runs the vector kernel.
pub(crate) fn has_vnni() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// `x W^T` as `[tokens, w.rows]`, row-major.
pub(crate) fn matmul(w: &BlockRows, x: &QuantActs, vector: bool) -> Vec<f32> {
    let (t, n) = (x.tokens, w.rows);
    let mut y = vec![0f32; t * n];
    let out = Out(y.as_mut_ptr());
    let pairs = w.groups / 2;
    let tchunks = t.div_ceil(TOKEN_CHUNK);
    // Enough tasks to balance the pool, few enough that each reuses a pair's weights over
    // many tokens.
    let want = 4 * rayon::current_num_threads();
    let pchunk = if tchunks >= want {
        pairs
    } else {
        pairs.div_ceil(want.div_ceil(tchunks)).max(1)
    };
    let pchunks = pairs.div_ceil(pchunk);
    (0..tchunks * pchunks).into_par_iter().for_each(|task| {
        let (tc, pc) = (task / pchunks, task % pchunks);
        let tokens = tc * TOKEN_CHUNK..((tc + 1) * TOKEN_CHUNK).min(t);
        let pair_range = pc * pchunk..((pc + 1) * pchunk).min(pairs);
        for pair in pair_range {
            let mut t0 = tokens.start;
            while t0 < tokens.end {
                let mr = (tokens.end - t0).min(MR);
                // SAFETY: the tile writes rows `t0..t0 + mr` and columns of `pair` only,
                // inside `y`, which no other task writes.
                unsafe { tile(w, x, pair, t0, mr, out.ptr(), n, vector) };
                t0 += mr;
            }
        }
    });
    y
}

/// One tile of `mr <= MR` tokens from `t0` by the 32 rows of `pair`.
///
/// # Safety
/// `out` must point to a `[x.tokens, ldo]` buffer; only its tile is written.
#[allow(clippy::too_many_arguments)]
unsafe fn tile(
    w: &BlockRows,
    x: &QuantActs,
    pair: usize,
    t0: usize,
    mr: usize,
    out: *mut f32,
    ldo: usize,
    vector: bool,
) {
    #[cfg(target_arch = "x86_64")]
    if vector {
        // SAFETY: `vector` is only set when `has_vnni()`; the caller's contract is passed on,
        // and a tail of 2 or 3 tokens runs one token at a time inside the same rows.
        unsafe {
            if mr == MR {
                vector_tile::<MR>(w, x, pair, t0, out, ldo);
            } else {
                for t in t0..t0 + mr {
                    vector_tile::<1>(w, x, pair, t, out, ldo);
                }
            }
        }
        return;
    }
    let _ = vector;
    // SAFETY: passed on from the caller.
    unsafe { scalar_tile(w, x, pair, t0, mr, out, ldo) }
}

/// The vector kernel for `M` tokens, instantiated for the weights' code layout.
///
/// # Safety
/// As [`avx512::tile`].
#[cfg(target_arch = "x86_64")]
unsafe fn vector_tile<const M: usize>(
    w: &BlockRows,
    x: &QuantActs,
    pair: usize,
    t0: usize,
    out: *mut f32,
    ldo: usize,
) {
    // SAFETY: passed on from the caller.
    unsafe {
        match (w.codes_kind, w.asymmetric) {
            (Codes::Byte, _) => avx512::tile::<M, 0, false>(w, x, pair, t0, out, ldo),
            (Codes::Nibble, false) => avx512::tile::<M, 1, false>(w, x, pair, t0, out, ldo),
            (Codes::Nibble, true) => avx512::tile::<M, 1, true>(w, x, pair, t0, out, ldo),
            (Codes::Nibble5, false) => avx512::tile::<M, 2, false>(w, x, pair, t0, out, ldo),
            (Codes::Nibble5, true) => avx512::tile::<M, 2, true>(w, x, pair, t0, out, ldo),
            (Codes::Levels, _) => avx512::tile::<M, 3, false>(w, x, pair, t0, out, ldo),
        }
    }
}

/// The kernel's arithmetic in plain Rust.
///
/// # Safety
/// As [`tile`].
unsafe fn scalar_tile(
    w: &BlockRows,
    x: &QuantActs,
    pair: usize,
    t0: usize,
    mr: usize,
    out: *mut f32,
    ldo: usize,
) {
    let nb = w.blocks;
    let mut codes = [0i32; BLOCK];
    for g in 2 * pair..2 * pair + 2 {
        for lane in 0..GROUP {
            let r = g * GROUP + lane;
            if r >= w.rows {
                return;
            }
            for t in t0..t0 + mr {
                let mut acc = 0f32;
                for b in 0..nb {
                    for (k, c) in codes.iter_mut().enumerate() {
                        *c = w.code_at(g, lane, b, k);
                    }
                    let xq = &x.codes[t * x.cols + b * BLOCK..][..BLOCK];
                    let dot: i32 = codes.iter().zip(xq).map(|(&c, &q)| c * q as i32).sum();
                    let s = (g * nb + b) * GROUP + lane;
                    let (sx, sum) = (x.scale[t * nb + b], x.sum[t * nb + b]);
                    acc += (dot - w.zero * sum) as f32 * (w.d[s] * sx);
                    if w.asymmetric {
                        acc += w.m[s] * (sx * sum as f32);
                    }
                }
                // SAFETY: `t < x.tokens` and `r < w.rows <= ldo`, inside the caller's buffer.
                unsafe { *out.add(t * ldo + r) = acc };
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::super::acts::QuantActs;
    use super::super::legacy::{BLOCK, BlockRows, GROUP, LEVEL_CODES};

    /// Four activation bytes of token row `xq` at column `k`, in every lane.
    #[inline(always)]
    unsafe fn bcast(xq: *const i8, k: usize) -> __m512i {
        // SAFETY: the caller keeps `k + 4` inside the token's row.
        unsafe { _mm512_set1_epi32(xq.add(k).cast::<i32>().read_unaligned()) }
    }

    /// `MR` tokens by the 32 rows of `pair`; `CODES` 0 = bytes, 1 = nibbles, 2 = nibbles and a
    /// bit plane, 3 = nibbles indexing [`LEVEL_CODES`]; `ASYM` adds the per-block minimum.
    ///
    /// # Safety
    /// The CPU has AVX-512 F/BW/VNNI; `out` is a `[x.tokens, ldo]` buffer with `ldo >=
    /// w.rows`; `t0 + MR <= x.tokens`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn tile<const MR: usize, const CODES: u8, const ASYM: bool>(
        w: &BlockRows,
        x: &QuantActs,
        pair: usize,
        t0: usize,
        out: *mut f32,
        ldo: usize,
    ) {
        let nb = w.blocks;
        let tb = w.tile_bytes();
        let g0 = 2 * pair;
        let low4 = _mm512_set1_epi8(0x0f);
        let bit4 = _mm512_set1_epi8(0x10);
        // The 16 level codes in every 128-bit lane, for `vpshufb` to look the nibbles up.
        // SAFETY: LEVEL_CODES is 16 bytes.
        let levels =
            _mm512_broadcast_i32x4(unsafe { _mm_loadu_si128(LEVEL_CODES.as_ptr().cast()) });
        let mut acc = [[_mm512_setzero_ps(); 2]; MR];
        let xrow = |t: usize| -> *const i8 {
            // SAFETY: `t0 + t < x.tokens`.
            unsafe { x.codes.as_ptr().add((t0 + t) * x.cols) }
        };
        for b in 0..nb {
            let tiles = [g0 * nb + b, (g0 + 1) * nb + b];
            // SAFETY (all loads below): tile `g * nb + b` has `tb` code bytes, 8 masks and 16
            // scales inside the buffers `BlockRows::new` sized for `groups * blocks` tiles.
            let code = |i: usize| unsafe { w.codes.as_ptr().add(tiles[i] * tb) };
            let mut isum = [[_mm512_setzero_si512(); 2]; MR];
            let xk = b * BLOCK;
            if CODES == 0 {
                for s in 0..8 {
                    let w0 = unsafe { _mm512_loadu_si512(code(0).add(s * 64).cast()) };
                    let w1 = unsafe { _mm512_loadu_si512(code(1).add(s * 64).cast()) };
                    for (t, sums) in isum.iter_mut().enumerate() {
                        let xb = unsafe { bcast(xrow(t), xk + 4 * s) };
                        sums[0] = _mm512_dpbusd_epi32(sums[0], w0, xb);
                        sums[1] = _mm512_dpbusd_epi32(sums[1], w1, xb);
                    }
                }
            } else {
                for j in 0..4 {
                    let v0 = unsafe { _mm512_loadu_si512(code(0).add(j * 64).cast()) };
                    let v1 = unsafe { _mm512_loadu_si512(code(1).add(j * 64).cast()) };
                    let mut lo0 = _mm512_and_si512(v0, low4);
                    let mut lo1 = _mm512_and_si512(v1, low4);
                    let mut hi0 = _mm512_and_si512(_mm512_srli_epi16(v0, 4), low4);
                    let mut hi1 = _mm512_and_si512(_mm512_srli_epi16(v1, 4), low4);
                    if CODES == 2 {
                        let h = |i: usize, half: usize| unsafe {
                            *w.high.as_ptr().add(tiles[i] * 8 + half * 4 + j)
                        };
                        lo0 = _mm512_mask_add_epi8(lo0, h(0, 0), lo0, bit4);
                        lo1 = _mm512_mask_add_epi8(lo1, h(1, 0), lo1, bit4);
                        hi0 = _mm512_mask_add_epi8(hi0, h(0, 1), hi0, bit4);
                        hi1 = _mm512_mask_add_epi8(hi1, h(1, 1), hi1, bit4);
                    }
                    if CODES == 3 {
                        lo0 = _mm512_shuffle_epi8(levels, lo0);
                        lo1 = _mm512_shuffle_epi8(levels, lo1);
                        hi0 = _mm512_shuffle_epi8(levels, hi0);
                        hi1 = _mm512_shuffle_epi8(levels, hi1);
                    }
                    for (t, sums) in isum.iter_mut().enumerate() {
                        let xl = unsafe { bcast(xrow(t), xk + 4 * j) };
                        let xh = unsafe { bcast(xrow(t), xk + 16 + 4 * j) };
                        sums[0] = _mm512_dpbusd_epi32(sums[0], lo0, xl);
                        sums[1] = _mm512_dpbusd_epi32(sums[1], lo1, xl);
                        sums[0] = _mm512_dpbusd_epi32(sums[0], hi0, xh);
                        sums[1] = _mm512_dpbusd_epi32(sums[1], hi1, xh);
                    }
                }
            }
            let d = [0, 1].map(|i| unsafe { _mm512_loadu_ps(w.d.as_ptr().add(tiles[i] * GROUP)) });
            let m = if ASYM {
                [0, 1].map(|i| unsafe { _mm512_loadu_ps(w.m.as_ptr().add(tiles[i] * GROUP)) })
            } else {
                [_mm512_setzero_ps(); 2]
            };
            for t in 0..MR {
                let at = (t0 + t) * nb + b;
                let (sx, sum) = (x.scale[at], x.sum[at]);
                let sxv = _mm512_set1_ps(sx);
                let zs = _mm512_set1_epi32(w.zero * sum);
                let fs = _mm512_set1_ps(sx * sum as f32);
                for i in 0..2 {
                    let dot = _mm512_cvtepi32_ps(_mm512_sub_epi32(isum[t][i], zs));
                    acc[t][i] = _mm512_fmadd_ps(dot, _mm512_mul_ps(d[i], sxv), acc[t][i]);
                    if ASYM {
                        acc[t][i] = _mm512_fmadd_ps(m[i], fs, acc[t][i]);
                    }
                }
            }
        }
        for (t, accs) in acc.iter().enumerate() {
            for (i, a) in accs.iter().enumerate() {
                let r0 = (g0 + i) * GROUP;
                if r0 >= w.rows {
                    continue;
                }
                let valid = (w.rows - r0).min(GROUP);
                let mask: __mmask16 = if valid == GROUP {
                    0xffff
                } else {
                    (1u16 << valid) - 1
                };
                // SAFETY: lanes past `w.rows` are masked off; row `t0 + t` is inside `out`.
                unsafe { _mm512_mask_storeu_ps(out.add((t0 + t) * ldo + r0), mask, *a) };
            }
        }
    }
}
