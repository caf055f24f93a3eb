//! IQ4_NL and IQ4_XS, fitted as llama.cpp fits them.
//!
//! Both store 4-bit indices into one fixed table of 16 non-uniform levels (denser near zero,
//! where most weights are), so a 4-bit code buys more precision than Q4_0's even grid at the
//! same 4.5 bits per weight. IQ4_NL keeps one f16 scale per 32 values (18 bytes); IQ4_XS puts
//! eight such blocks in a super-block of 256 under one f16 scale with 6-bit signed sub-scales
//! (136 bytes, 4.25 bits per weight) and is the most used GGUF type under 5 bits.
//!
//! The fit is llama.cpp's `quantize_row_iq4_nl_impl`, reproduced operation for operation in
//! f32 so that the bytes equal llama-quantize's (`scripts/interop/imatrix.sh` checks it):
//! per block of 32, a first scale from the largest magnitude, refined by a weighted least
//! squares over the indices it gives, then 15 trial scales around it, keeping the best;
//! IQ4_XS then rounds every block's scale to a 6-bit multiple of the super-block's and picks
//! the indices again. Weights are `x²`, or with an importance matrix `imatrix_j *
//! sqrt(σ² + x²)` where `σ²` is twice the block's mean square.

use half::f16;
// The 16 levels every index points at.
use microllm_core::IQ4_LEVELS as LEVELS;
use microllm_core::iq4_xs_sub_scale;

use super::weighted::nearest;

/// Values per block (one scale) and per IQ4_XS super-block.
const BLOCK: usize = 32;
const SUPER: usize = 256;
/// Bytes per IQ4_NL block and per IQ4_XS super-block.
pub const NL_BYTES: usize = microllm_core::BlockType::Iq4Nl.block_bytes();
pub const XS_BYTES: usize = microllm_core::BlockType::Iq4Xs.block_bytes();
/// Trial scales on either side of the first one.
const TRIES: i32 = 7;
/// Blocks whose largest magnitude is below this are stored as zero.
const GROUP_MAX_EPS: f32 = 1e-15;

/// The index of the level nearest `x` (the lower one on a tie), by bisection as llama.cpp's
/// `best_index_int8` finds it.
fn nearest_level(x: f32) -> u8 {
    let level = |i: usize| f32::from(LEVELS[i]);
    if x <= level(0) {
        return 0;
    }
    if x >= level(15) {
        return 15;
    }
    let (mut lo, mut hi) = (0, 15);
    while hi - lo > 1 {
        let mid = (lo + hi) / 2;
        if x < level(mid) {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    if x - level(hi - 1) < level(hi) - x {
        hi as u8 - 1
    } else {
        hi as u8
    }
}

/// The scale of one block of 32 (0 for a block of zeros) under the fit's `weights`.
fn fit_block(x: &[f32], weights: &[f32]) -> f32 {
    let (mut amax, mut max) = (0f32, 0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        return 0.0;
    }
    // The weighted sums of `q·x` and `q²` over the levels `inv · x` rounds to.
    let sums = |inv: f32| {
        let (mut sumqx, mut sumq2) = (0f32, 0f32);
        for (&v, &w) in x.iter().zip(weights) {
            let q = f32::from(LEVELS[usize::from(nearest_level(inv * v))]);
            sumqx += w * q * v;
            sumq2 += w * q * q;
        }
        (sumqx, sumq2)
    };
    let first = -max / f32::from(LEVELS[0]);
    let (sumqx, sumq2) = sums(1.0 / first);
    let mut d = if sumq2 > 0.0 { sumqx / sumq2 } else { 0.0 };
    let mut best = d * sumqx;
    for t in -TRIES..=TRIES {
        let (sumqx, sumq2) = sums((t + i32::from(LEVELS[0])) as f32 / max);
        if sumq2 > 0.0 && sumqx * sumqx > best * sumq2 {
            d = sumqx / sumq2;
            best = d * sumqx;
        }
    }
    d
}

/// The fit's weights for one block: `x²`, or `imatrix * sqrt(σ² + x²)`.
fn block_weights(x: &[f32], importance: Option<&[f32]>, sigma2: f32, out: &mut [f32; BLOCK]) {
    match importance {
        Some(qw) => {
            for ((o, &v), &q) in out.iter_mut().zip(x).zip(qw) {
                *o = q * (sigma2 + v * v).sqrt();
            }
        }
        None => {
            for (o, &v) in out.iter_mut().zip(x) {
                *o = v * v;
            }
        }
    }
}

/// Twice the mean square of `x`, summed in order.
fn sigma2(x: &[f32]) -> f32 {
    let mut s = 0f32;
    for &v in x {
        s += v * v;
    }
    s * (2.0 / x.len() as f32)
}

/// Packs 32 indices as ggml does: byte `j` holds index `j` low and index `16 + j` high.
fn pack_codes(codes: &[u8], out: &mut Vec<u8>) {
    out.extend((0..16).map(|j| codes[j] | (codes[16 + j] << 4)));
}

/// Appends one row of IQ4_NL blocks (`row.len()` a multiple of 32), with per-column
/// `importance` when given.
pub fn iq4_nl_row(row: &[f32], importance: Option<&[f32]>, out: &mut Vec<u8>) {
    let mut weights = [0f32; BLOCK];
    let mut codes = [0u8; BLOCK];
    for (b, x) in row.chunks_exact(BLOCK).enumerate() {
        let qw = importance.map(|w| &w[b * BLOCK..(b + 1) * BLOCK]);
        block_weights(x, qw, sigma2(x), &mut weights);
        let d = fit_block(x, &weights);
        // The fitted scale (before f16 rounding) picks the indices.
        let inv = if d != 0.0 { 1.0 / d } else { 0.0 };
        for (c, &v) in codes.iter_mut().zip(x) {
            *c = nearest_level(inv * v);
        }
        out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
        pack_codes(&codes, out);
    }
}

/// Appends one row of IQ4_XS super-blocks (`row.len()` a multiple of 256), with per-column
/// `importance` when given.
pub fn iq4_xs_row(row: &[f32], importance: Option<&[f32]>, out: &mut Vec<u8>) {
    let mut weights = [0f32; BLOCK];
    let mut codes = [0u8; SUPER];
    let mut scales = [0f32; SUPER / BLOCK];
    for (s, x) in row.chunks_exact(SUPER).enumerate() {
        let s2 = sigma2(x);
        let (mut max_scale, mut amax_scale) = (0f32, 0f32);
        for (ib, xb) in x.chunks_exact(BLOCK).enumerate() {
            let at = s * SUPER + ib * BLOCK;
            let qw = importance.map(|w| &w[at..at + BLOCK]);
            block_weights(xb, qw, s2, &mut weights);
            let d = fit_block(xb, &weights);
            scales[ib] = d;
            if d.abs() > amax_scale {
                amax_scale = d.abs();
                max_scale = d;
            }
        }
        let d = -max_scale / 32.0;
        let inv = if d != 0.0 { 1.0 / d } else { 0.0 };
        let (mut high, mut low) = (0u16, [0u8; 4]);
        for (ib, xb) in x.chunks_exact(BLOCK).enumerate() {
            let l = nearest(inv * scales[ib]).clamp(-32, 31);
            let dl = d * l as f32;
            let idl = if dl != 0.0 { 1.0 / dl } else { 0.0 };
            for (c, &v) in codes[ib * BLOCK..(ib + 1) * BLOCK].iter_mut().zip(xb) {
                *c = nearest_level(idl * v);
            }
            let l = (l + 32) as u8;
            low[ib / 2] |= (l & 0xf) << (4 * (ib % 2));
            high |= u16::from(l >> 4) << (2 * ib);
        }
        out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
        out.extend_from_slice(&high.to_le_bytes());
        out.extend_from_slice(&low);
        for block in codes.chunks_exact(BLOCK) {
            pack_codes(block, out);
        }
    }
}

/// Decodes IQ4_NL blocks into `out` (32 values per 18 bytes).
pub fn dequantize_iq4_nl(bytes: &[u8], out: &mut [f32]) {
    for (block, y) in bytes
        .chunks_exact(NL_BYTES)
        .zip(out.chunks_exact_mut(BLOCK))
    {
        let d = f16::from_le_bytes([block[0], block[1]]).to_f32();
        unpack_block(d, &block[2..], y);
    }
}

/// Decodes IQ4_XS super-blocks into `out` (256 values per 136 bytes).
pub fn dequantize_iq4_xs(bytes: &[u8], out: &mut [f32]) {
    for (block, y) in bytes
        .chunks_exact(XS_BYTES)
        .zip(out.chunks_exact_mut(SUPER))
    {
        let d = f16::from_le_bytes([block[0], block[1]]).to_f32();
        for (ib, y) in y.chunks_exact_mut(BLOCK).enumerate() {
            unpack_block(
                d * iq4_xs_sub_scale(block, ib) as f32,
                &block[8 + 16 * ib..],
                y,
            );
        }
    }
}

fn unpack_block(d: f32, qs: &[u8], y: &mut [f32]) {
    for j in 0..16 {
        y[j] = d * f32::from(LEVELS[usize::from(qs[j] & 0xf)]);
        y[j + 16] = d * f32::from(LEVELS[usize::from(qs[j] >> 4)]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                ((s >> 8) as f32 / (1 << 24) as f32 - 0.5) * 0.1
            })
            .collect()
    }

    fn rel_error(a: &[f32], b: &[f32]) -> f32 {
        let e: f32 = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum();
        let n: f32 = a.iter().map(|x| x * x).sum();
        (e / n).sqrt()
    }

    #[test]
    fn nearest_level_bisects_to_the_closer_level() {
        assert_eq!(nearest_level(-500.0), 0);
        assert_eq!(nearest_level(500.0), 15);
        assert_eq!(nearest_level(0.0), 8, "0 is nearer 1 than -10");
        assert_eq!(nearest_level(-4.5), 8, "a tie goes up");
        assert_eq!(nearest_level(-4.6), 7);
        for (i, &l) in LEVELS.iter().enumerate() {
            assert_eq!(nearest_level(f32::from(l)), i as u8);
        }
    }

    #[test]
    fn rows_round_trip_within_four_bit_error() {
        let x = row(512, 7);
        let (mut nl, mut xs) = (Vec::new(), Vec::new());
        iq4_nl_row(&x, None, &mut nl);
        iq4_xs_row(&x, None, &mut xs);
        assert_eq!((nl.len(), xs.len()), (16 * NL_BYTES, 2 * XS_BYTES));
        let (mut a, mut b) = (vec![0f32; 512], vec![0f32; 512]);
        dequantize_iq4_nl(&nl, &mut a);
        dequantize_iq4_xs(&xs, &mut b);
        // Uniform values: about 8% relative RMS error for a 16-level grid.
        assert!(rel_error(&x, &a) < 0.1, "{}", rel_error(&x, &a));
        assert!(rel_error(&x, &b) < 0.1, "{}", rel_error(&x, &b));
    }

    #[test]
    fn importance_moves_error_to_unimportant_columns() {
        let x = row(256, 3);
        let mut w = vec![1e-3f32; 256];
        for v in w.iter_mut().step_by(4) {
            *v = 1e3;
        }
        let (mut plain, mut weighted) = (Vec::new(), Vec::new());
        iq4_xs_row(&x, None, &mut plain);
        iq4_xs_row(&x, Some(&w), &mut weighted);
        let (mut a, mut b) = (vec![0f32; 256], vec![0f32; 256]);
        dequantize_iq4_xs(&plain, &mut a);
        dequantize_iq4_xs(&weighted, &mut b);
        let err = |y: &[f32]| -> f32 {
            x.iter()
                .zip(y)
                .step_by(4)
                .map(|(p, q)| (p - q) * (p - q))
                .sum()
        };
        assert!(err(&b) < err(&a), "{} !< {}", err(&b), err(&a));
    }

    #[test]
    fn zeros_are_stored_as_zero_scales() {
        let (mut nl, mut xs) = (Vec::new(), Vec::new());
        iq4_nl_row(&[0.0; 32], None, &mut nl);
        iq4_xs_row(&[0.0; 256], None, &mut xs);
        assert_eq!(&nl[..2], &[0, 0]);
        assert!(
            nl[2..].iter().all(|&b| b == 0x88),
            "index 8 (level 1) for zeros"
        );
        // llama.cpp stores -0.0 (0x8000) as the super-block scale of zeros, sub-scales 0.
        assert_eq!(&xs[..2], &[0, 0x80]);
        let mut y = [1f32; 256];
        dequantize_iq4_xs(&xs, &mut y);
        assert!(y.iter().all(|&v| v == 0.0));
    }
}
