//! Q4_K and Q5_K blocks fitted as llama.cpp fits them, so that `convert --gguf-type q4_k_m`
//! writes the bytes `llama-quantize` writes.
//!
//! A Q4_K super-block holds 256 weights in 8 sub-blocks of 32: each sub-block has a 6-bit
//! scale and a 6-bit minimum, both multiples of the super-block's f16 `d` and `dmin`, and
//! 4-bit codes (`w = d sc q - dmin m`). Q5_K is the same with 5-bit codes (a fifth bit plane)
//! and its own grids for the unweighted search (`31 - 0.5 + 0.1 k`, k = 0..15). candle's fit follows an older llama.cpp (one grid per
//! sub-block, scales rounded without a search); current llama.cpp searches each sub-block's
//! grid, and two variants of that search exist:
//! - without an importance matrix (`quantize_row_q4_K_ref`): weight `j` counts
//!   `rms(sub-block) + |x_j|`; 21 grids of `15 - 1 + 0.1 k` levels (k = 0..20) around the
//!   range's own; the sub-block scales and minimums are then rounded to 6 bits against the
//!   largest of each (`63 / max`);
//! - with one (`quantize_row_q4_K_impl`): weight `j` counts `imatrix_j sqrt(sigma2 + x_j^2)`
//!   (`sigma2` twice the super-block's mean square); 37 grids of `15 - 0.9 + 0.05 k` levels;
//!   the 6-bit scales and minimums by a weighted search of their own (`make_qp_quants`:
//!   9 grids around `63 / max`, then up to 5 passes moving single codes while the weighted
//!   fit improves), each sub-block weighted by the sum of its weights.
//!
//! Then, in both, every weight is rounded again on the scale and minimum as stored. The
//! arithmetic follows llama.cpp's C: f32 throughout, sums in index order, products grouped
//! left to right, ties rounded to even (`nearest_int`).

use half::f16;

use super::lanes::fit_sub_blocks;
use super::weighted::{ALL_ZERO, OffsetGrid, QK_K, nearest};

/// Values per sub-block.
pub(super) const SUB: usize = 32;
/// Sub-blocks per super-block.
pub(super) const SUBS: usize = QK_K / SUB;

/// The two k-quants with a minimum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Width {
    Q4K,
    Q5K,
}

impl Width {
    /// The largest code.
    fn nmax(self) -> u8 {
        match self {
            Width::Q4K => 15,
            Width::Q5K => 31,
        }
    }

    /// The unweighted search's grids (llama.cpp's `make_qkx2_quants(.., -1, 0.1, 20, ..)`
    /// for Q4_K, `(.., -0.5, 0.1, 15, ..)` for Q5_K).
    pub(super) fn plain_grid(self) -> OffsetGrid {
        match self {
            Width::Q4K => OffsetGrid {
                first: -1.0,
                step: 0.1,
                steps: 20,
            },
            Width::Q5K => OffsetGrid {
                first: -0.5,
                step: 0.1,
                steps: 15,
            },
        }
    }
}
/// The importance-weighted search's grids (`make_qkx3_quants(.., -0.9, 0.05, 36, ..)`).
pub(super) const WEIGHTED_GRID: OffsetGrid = OffsetGrid {
    first: -0.9,
    step: 0.05,
    steps: 36,
};

/// One super-block's 6-bit sub-block scales and minimums with the f32 `d` and `dmin` they
/// multiply.
struct SubScales {
    scales: [u8; SUBS],
    mins: [u8; SUBS],
    d: f32,
    dmin: f32,
}

/// Appends the Q4_K super-blocks of one row (a multiple of 256 values), weighted by
/// `importance` (one value per column of the row) when given. Each super-block is 144 bytes:
/// f16 `d`, f16 `dmin`, 12 bytes of packed 6-bit scales and minimums, 128 bytes of nibbles.
pub fn q4_k_row(row: &[f32], importance: Option<&[f32]>, out: &mut Vec<u8>) {
    k_row(Width::Q4K, row, importance, out);
}

/// Appends the Q5_K super-blocks of one row, as [`q4_k_row`]. Each super-block is 176
/// bytes: Q4_K's header, then 32 bytes of fifth bits, then 128 bytes of nibbles.
pub fn q5_k_row(row: &[f32], importance: Option<&[f32]>, out: &mut Vec<u8>) {
    k_row(Width::Q5K, row, importance, out);
}

fn k_row(width: Width, row: &[f32], importance: Option<&[f32]>, out: &mut Vec<u8>) {
    let mut codes = [0u8; QK_K];
    let nmax = width.nmax();
    for (sb, x) in row.chunks_exact(QK_K).enumerate() {
        let sub = match importance {
            None => plain_sub_scales(width, x, &mut codes),
            Some(imp) => {
                weighted_sub_scales(width, x, &imp[sb * QK_K..(sb + 1) * QK_K], &mut codes)
            }
        };
        let d = f16::from_f32(sub.d);
        let dmin = f16::from_f32(sub.dmin);
        let packed = pack_scales(&sub.scales, &sub.mins);
        // Every weight rounded again on its sub-block's scale and minimum as stored.
        for j in 0..SUBS {
            let (sc, m) = unpack_scale(j, &packed);
            let dj = d.to_f32() * f32::from(sc);
            if dj == 0.0 {
                continue;
            }
            let dm = dmin.to_f32() * f32::from(m);
            for i in j * SUB..(j + 1) * SUB {
                codes[i] = nearest((x[i] + dm) / dj).clamp(0, i32::from(nmax)) as u8;
            }
        }
        out.extend_from_slice(&d.to_le_bytes());
        out.extend_from_slice(&dmin.to_le_bytes());
        out.extend_from_slice(&packed);
        if width == Width::Q5K {
            // Bit 2q of byte l: the fifth bit of code 64q + l; bit 2q + 1: of 64q + 32 + l.
            let mut high = [0u8; 32];
            for (i, &c) in codes.iter().enumerate() {
                high[i % 32] |= (c >> 4) << (i / 32);
            }
            out.extend_from_slice(&high);
        }
        for quarter in codes.chunks_exact(64) {
            out.extend((0..32).map(|l| (quarter[l] & 15) | ((quarter[l + 32] & 15) << 4)));
        }
    }
}

/// Without an importance matrix (`quantize_row_q4_K_ref`): each sub-block searched with
/// weights `rms + |x_j|`, its scale and minimum then rounded to 6 bits against the largest.
fn plain_sub_scales(width: Width, x: &[f32], codes: &mut [u8; QK_K]) -> SubScales {
    let mut weights = [0f32; QK_K];
    for (part, w) in x.chunks_exact(SUB).zip(weights.chunks_exact_mut(SUB)) {
        let sum_x2 = part.iter().fold(0f32, |acc, v| acc + v * v);
        let av_x = (sum_x2 / SUB as f32).sqrt();
        for (w, v) in w.iter_mut().zip(part) {
            *w = av_x + v.abs();
        }
    }
    let (scales, offsets) = fit_sub_blocks(x, &weights, width.nmax(), width.plain_grid(), codes);
    let mins = offsets.map(|m| -m);
    let largest = |v: &[f32; SUBS]| v.iter().fold(0f32, |a, &s| if s > a { s } else { a });
    let (max_scale, max_min) = (largest(&scales), largest(&mins));
    let inverse = |max: f32| if max > 0.0 { 63.0 / max } else { 0.0 };
    let (inv_scale, inv_min) = (inverse(max_scale), inverse(max_min));
    let six_bits = |v: f32| (nearest(v) as u8).min(63);
    SubScales {
        scales: scales.map(|s| six_bits(inv_scale * s)),
        mins: mins.map(|m| six_bits(inv_min * m)),
        d: max_scale / 63.0,
        dmin: max_min / 63.0,
    }
}

/// With an importance matrix (`quantize_row_q4_K_impl`): weights `imp_j sqrt(sigma2 +
/// x_j^2)`, and the 6-bit scales and minimums by a weighted search of their own, each
/// sub-block counting the sum of its weights. `imp` is the super-block's 256 importances.
fn weighted_sub_scales(width: Width, x: &[f32], imp: &[f32], codes: &mut [u8; QK_K]) -> SubScales {
    let mut weights = [0f32; QK_K];
    let sum_x2 = x.iter().fold(0f32, |acc, v| acc + v * v);
    let sigma2 = 2.0 * sum_x2 / QK_K as f32;
    let mut sub_weights = [0f32; SUBS];
    for (j, w) in weights.chunks_exact_mut(SUB).enumerate() {
        let (part, qw) = (&x[j * SUB..(j + 1) * SUB], &imp[j * SUB..(j + 1) * SUB]);
        for ((w, v), q) in w.iter_mut().zip(part).zip(qw) {
            *w = q * (sigma2 + v * v).sqrt();
        }
        sub_weights[j] = w.iter().fold(0f32, |acc, w| acc + w);
    }
    let (scales, offsets) = fit_sub_blocks(x, &weights, width.nmax(), WEIGHTED_GRID, codes);
    let mins = offsets.map(|m| -m);
    let (d, scales) = six_bit_fit(&scales, &sub_weights);
    let (dmin, mins) = six_bit_fit(&mins, &sub_weights);
    SubScales {
        scales,
        mins,
        d,
        dmin,
    }
}

/// The eight non-negative sub-block values as 6-bit codes times one scale, by llama.cpp's
/// weighted search (`make_qp_quants(8, 63, ..)`): `(scale, codes)`.
fn six_bit_fit(x: &[f32; SUBS], weights: &[f32; SUBS]) -> (f32, [u8; SUBS]) {
    const NMAX: i32 = 63;
    let max = x.iter().fold(0f32, |a, &v| if v > a { v } else { a });
    if max < ALL_ZERO {
        return (0.0, [0; SUBS]);
    }
    let mse = |iscale: f32, clamp: bool| {
        let scale = 1.0 / iscale;
        x.iter().zip(weights).fold(0f32, |acc, (&v, &w)| {
            let mut l = nearest(iscale * v);
            if clamp {
                l = l.min(NMAX);
            }
            let diff = v - scale * l as f32;
            acc + w * diff * diff
        })
    };
    let mut iscale = NMAX as f32 / max;
    let mut best = mse(iscale, false);
    for is in (-4..=4).filter(|&is| is != 0) {
        let trial = (0.1 * is as f32 + NMAX as f32) / max;
        let err = mse(trial, true);
        if err < best {
            best = err;
            iscale = trial;
        }
    }
    let mut codes = [0i32; SUBS];
    let (mut sumlx, mut suml2) = (0f32, 0f32);
    for ((l, &v), &w) in codes.iter_mut().zip(x).zip(weights) {
        *l = nearest(iscale * v).min(NMAX);
        let lf = *l as f32;
        sumlx += w * v * lf;
        suml2 += w * lf * lf;
    }
    for _ in 0..5 {
        let mut changed = false;
        for ((l, &v), &w) in codes.iter_mut().zip(x).zip(weights) {
            let lf = *l as f32;
            let mut slx = sumlx - w * v * lf;
            let mut sl2 = suml2 - w * lf * lf;
            if slx > 0.0 && sl2 > 0.0 {
                let new_l = nearest(v * sl2 / slx).min(NMAX);
                if new_l != *l {
                    let nf = new_l as f32;
                    slx += w * v * nf;
                    sl2 += w * nf * nf;
                    if slx * slx * suml2 > sumlx * sumlx * sl2 {
                        *l = new_l;
                        sumlx = slx;
                        suml2 = sl2;
                        changed = true;
                    }
                }
            }
        }
        if !changed {
            break;
        }
    }
    let scale = if suml2 > 0.0 { sumlx / suml2 } else { 0.0 };
    (scale, codes.map(|l| l as u8))
}

/// The 12 bytes holding eight 6-bit scales and eight 6-bit minimums: sub-blocks 0-3 in the
/// low 6 bits of bytes 0-3 (scales) and 4-7 (minimums), sub-blocks 4-7 as nibbles in bytes
/// 8-11 with their top two bits in the top bits of bytes 0-7.
fn pack_scales(ls: &[u8; 8], lm: &[u8; 8]) -> [u8; 12] {
    let mut s = [0u8; 12];
    for j in 0..8 {
        if j < 4 {
            s[j] = ls[j];
            s[j + 4] = lm[j];
        } else {
            s[j + 4] = (ls[j] & 0xf) | ((lm[j] & 0xf) << 4);
            s[j - 4] |= (ls[j] >> 4) << 6;
            s[j] |= (lm[j] >> 4) << 6;
        }
    }
    s
}

/// Sub-block `j`'s 6-bit scale and minimum from [`pack_scales`]'s bytes.
fn unpack_scale(j: usize, s: &[u8; 12]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        (
            (s[j + 4] & 0xf) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        )
    }
}

#[cfg(test)]
pub(super) mod tests {
    use candle_core::quantized::{GgmlDType, QTensor};
    use candle_core::{Device, Tensor};

    use super::*;

    /// `n` weight-like values of seed `seed`.
    pub(in crate::gguf) fn row(n: usize, seed: u32) -> Vec<f32> {
        (0..n as u32)
            .map(|i| {
                let h = i.wrapping_add(seed).wrapping_mul(2_654_435_761) >> 7;
                let v = (h % 20_001) as f32 / 10_000.0 - 1.0;
                // Heavier tails than uniform, as real weights have.
                v * v * v * 0.08 + v * 0.01
            })
            .collect()
    }

    fn decode(bytes: &[u8], n: usize) -> Vec<f32> {
        decode_as(GgmlDType::Q4K, bytes, n)
    }

    fn decode_as(dtype: GgmlDType, bytes: &[u8], n: usize) -> Vec<f32> {
        let q = candle_core::quantized::ggml_file::qtensor_from_ggml(
            dtype,
            bytes,
            vec![n],
            &Device::Cpu,
        )
        .unwrap();
        q.dequantize(&Device::Cpu)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    }

    fn squared_error(a: &[f32], b: &[f32]) -> f64 {
        a.iter().zip(b).map(|(x, y)| f64::from(x - y).powi(2)).sum()
    }

    /// The layout is candle's (its decoder reads what is written) and the search fits at
    /// least as well as candle's older one-grid fit, for both widths.
    #[test]
    fn blocks_decode_in_candle_and_fit_at_least_as_well() {
        let x = row(4 * QK_K, 3);
        for (dtype, pack, bytes, bound) in [
            (
                GgmlDType::Q4K,
                q4_k_row as fn(&[f32], Option<&[f32]>, &mut Vec<u8>),
                144,
                0.01,
            ),
            (GgmlDType::Q5K, q5_k_row, 176, 0.003),
        ] {
            let mut ours = Vec::new();
            pack(&x, None, &mut ours);
            assert_eq!(ours.len(), 4 * bytes);
            let t = Tensor::from_slice(&x, (1, x.len()), &Device::Cpu).unwrap();
            let theirs = QTensor::quantize(&t, dtype).unwrap();
            let (ours_err, theirs_err) = (
                squared_error(&x, &decode_as(dtype, &ours, x.len())),
                squared_error(&x, &decode_as(dtype, &theirs.data().unwrap(), x.len())),
            );
            assert!(
                ours_err <= theirs_err * 1.0001,
                "{dtype:?}: error {ours_err} against candle's {theirs_err}"
            );
            let power = squared_error(&x, &vec![0.0; x.len()]);
            assert!(
                ours_err < bound * power,
                "{dtype:?}: relative error {}",
                ours_err / power
            );
        }
    }

    /// With an importance matrix the weighted error of the columns that matter falls.
    #[test]
    fn importance_moves_the_error_to_columns_that_matter_less() {
        let x = row(2 * QK_K, 9);
        let imp: Vec<f32> = (0..x.len())
            .map(|j| if j % 7 == 0 { 50.0 } else { 0.1 })
            .collect();
        let (mut plain, mut weighted) = (Vec::new(), Vec::new());
        q4_k_row(&x, None, &mut plain);
        q4_k_row(&x, Some(&imp), &mut weighted);
        let weighted_error = |bytes: &[u8]| -> f64 {
            let y = decode(bytes, x.len());
            (0..x.len())
                .map(|j| f64::from(imp[j]) * f64::from(x[j] - y[j]).powi(2))
                .sum()
        };
        assert!(weighted_error(&weighted) < weighted_error(&plain));
    }

    #[test]
    fn scales_pack_and_unpack() {
        let ls = [0, 63, 17, 42, 63, 1, 32, 15];
        let lm = [5, 0, 63, 31, 48, 63, 16, 2];
        let s = pack_scales(&ls, &lm);
        for j in 0..8 {
            assert_eq!(unpack_scale(j, &s), (ls[j], lm[j]), "sub-block {j}");
        }
    }

    #[test]
    fn an_all_zero_super_block_stays_zero() {
        let mut out = Vec::new();
        q4_k_row(&[0.0; QK_K], None, &mut out);
        assert!(decode(&out, QK_K).iter().all(|&v| v == 0.0));
    }
}
