//! Importance-weighted Q4_0, Q5_0, Q4_1 and Q5_1 blocks, and Q6_K, as llama.cpp fits them
//! when given an importance matrix.
//!
//! Plain Q4_0 / Q5_0 take each block's scale from its largest weight. With an importance
//! matrix llama.cpp instead searches the scale: it weighs weight `j` of a row by
//! `imatrix[j] * sqrt(sigma2 + x_j^2)` (`sigma2` the row's mean square), rounds the block on
//! the grid its largest weight implies and on 18 grids around it (`nmax + 0.1 k`,
//! `k = -9..9`), and keeps the grid whose least-squares scale explains the most weighted
//! signal (`sum w x l` squared over `sum w l^2`). On SmolLM2, whose 576-wide rows fall back to
//! Q5_0 in the k-quant mixes, that search is most of what an importance matrix buys. candle
//! has no weighted form of these types, so microllm fits them here, following the
//! arithmetic of llama.cpp's `make_qx_quants` (rounding half to even, f32 sums in order).
//!
//! Q4_1 / Q5_1 blocks carry an offset `m` beside the scale, so the search is over both:
//! the block is rounded on the grid its range implies (`levels / (max - min)`), then on 37
//! grids whose level count runs from `levels - 0.9` to `levels + 0.9`; for each, `d` and
//! `m` are the weighted least-squares fit to the rounded codes (`m` held at or below 0, as
//! the range's minimum is), and the grid of least weighted squared error wins (llama.cpp's
//! `make_qkx3_quants` with its Q4_1 / Q5_1 settings).
//!
//! Layouts (per block of 32): Q4_0 (18 bytes) f16 `d`, 16 bytes of nibbles (weight j low,
//! j + 16 high), `w = d (q - 8)`; Q5_0 (22 bytes) f16 `d`, u32 `qh` of fifth bits (bit j for
//! weight j), 16 bytes of low nibbles as Q4_0, `w = d (q - 16)`; Q4_1 (20 bytes) f16 `d`,
//! f16 `m`, nibbles as Q4_0, `w = d q + m`; Q5_1 (24 bytes) f16 `d`, f16 `m`, `qh` and
//! nibbles as Q5_0, `w = d q + m`.

use half::f16;

use super::blocks::QK;

/// Below this a block is all zeros (llama.cpp's `GROUP_MAX_EPS`).
pub(super) const ALL_ZERO: f32 = 1e-15;

/// ggml's `nearest_int`: round half to even.
#[inline]
pub(super) fn nearest(x: f32) -> i32 {
    x.round_ties_even() as i32
}

/// Codes `0..2 nmax` of one block of any length and its scale `d` (`w = d (code - nmax)`),
/// the grid chosen by the search described in the module docs; without `weights`, weight `j`
/// counts as `x_j^2` (llama.cpp's unweighted Q6_K fit).
pub(super) fn fit_block(x: &[f32], weights: Option<&[f32]>, nmax: i32, codes: &mut [u8]) -> f32 {
    let (mut max, mut amax) = (0f32, 0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax < ALL_ZERO {
        codes.fill(0);
        return 0.0;
    }
    let weight = |j: usize| weights.map_or(x[j] * x[j], |w| w[j]);
    let level = |iscale: f32, v: f32| nearest(iscale * v).clamp(-nmax, nmax - 1);
    let sums = |iscale: f32| {
        let (mut sumlx, mut suml2) = (0f32, 0f32);
        for (j, &v) in x.iter().enumerate() {
            let (w, l) = (weight(j), level(iscale, v) as f32);
            sumlx += w * v * l;
            suml2 += w * l * l;
        }
        (sumlx, suml2)
    };
    let set_codes = |iscale: f32, codes: &mut [u8]| {
        for (c, &v) in codes.iter_mut().zip(x) {
            *c = (level(iscale, v) + nmax) as u8;
        }
    };
    let iscale = -(nmax as f32) / max;
    set_codes(iscale, codes);
    let (sumlx, suml2) = sums(iscale);
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for step in (-9..=9).filter(|&s| s != 0) {
        let iscale = -(nmax as f32 + 0.1 * step as f32) / max;
        let (sumlx, suml2) = sums(iscale);
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            set_codes(iscale, codes);
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// The grids a scale-and-offset search tries after the range's own: `levels + first + step
/// k` levels for `k = 0..=steps`.
#[derive(Debug, Clone, Copy)]
pub(super) struct OffsetGrid {
    pub first: f32,
    pub step: f32,
    pub steps: u32,
}

/// llama.cpp's Q4_1 / Q5_1 search (`make_qkx3_quants(.., -0.9, 0.05, 36, ..)`).
const LEGACY_OFFSET_GRID: OffsetGrid = OffsetGrid {
    first: -0.9,
    step: 0.05,
    steps: 36,
};

/// Codes `0..=levels` of one block and its `(d, m)` (`w = d code + m`, `m <= 0`), by the
/// scale-and-offset search described in the module docs, over `grid`.
pub(super) fn fit_block_with_offset(
    x: &[f32],
    weights: &[f32],
    levels: u8,
    grid: OffsetGrid,
    codes: &mut [u8],
) -> (f32, f32) {
    let n_levels = f32::from(levels);
    let (mut lo, mut hi) = (x[0], x[0]);
    let (mut sum_w, mut sum_x) = (weights[0], weights[0] * x[0]);
    for (&v, &w) in x.iter().zip(weights).skip(1) {
        lo = lo.min(v);
        hi = hi.max(v);
        sum_w += w;
        sum_x += w * v;
    }
    let mut min = lo.min(0.0);
    if hi <= min {
        codes.fill(0);
        return (0.0, min);
    }
    let round_on = |iscale: f32, v: f32, min: f32| {
        nearest(iscale * (v - min)).clamp(0, i32::from(levels)) as u8
    };
    let squared_error = |scale: f32, min: f32, codes: &[u8]| {
        x.iter()
            .zip(weights)
            .zip(codes)
            .fold(0f32, |acc, ((&v, &w), &c)| {
                let diff = scale * f32::from(c) + min - v;
                acc + w * (diff * diff)
            })
    };
    let iscale = n_levels / (hi - min);
    let mut scale = 1.0 / iscale;
    for (c, &v) in codes.iter_mut().zip(x) {
        *c = round_on(iscale, v, min);
    }
    let mut best = squared_error(scale, min, codes);
    // As in llama.cpp, later grids are laid from the offset of the best fit so far.
    let mut trial = [0u8; QK];
    let trial = &mut trial[..x.len()];
    for k in 0..=grid.steps {
        let iscale = (grid.first + grid.step * k as f32 + n_levels) / (hi - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0f32, 0f32, 0f32);
        for ((c, &v), &w) in trial.iter_mut().zip(x).zip(weights) {
            *c = round_on(iscale, v, min);
            let l = f32::from(*c);
            sum_l += w * l;
            sum_l2 += w * l * l;
            sum_xl += w * l * v;
        }
        let det = sum_w * sum_l2 - sum_l * sum_l;
        if det > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let err = squared_error(this_scale, this_min, trial);
            if err < best {
                codes.copy_from_slice(trial);
                best = err;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, min)
}

/// The per-weight weights of a row: `importance[j] * sqrt(sigma2 + x_j^2)`.
fn row_weights(row: &[f32], importance: &[f32]) -> Vec<f32> {
    let sigma2 = row.iter().map(|v| v * v).sum::<f32>() / row.len() as f32;
    row.iter()
        .zip(importance)
        .map(|(&v, &q)| q * (sigma2 + v * v).sqrt())
        .collect()
}

/// Runs `pack` on each 32-value block of a row with its weights and a code buffer.
fn each_block(
    row: &[f32],
    importance: &[f32],
    mut pack: impl FnMut(&[f32], &[f32], &mut [u8; QK]),
) {
    let weights = row_weights(row, importance);
    let mut codes = [0u8; QK];
    for (x, w) in row.chunks_exact(QK).zip(weights.chunks_exact(QK)) {
        pack(x, w, &mut codes);
    }
}

/// The 16 bytes of low nibbles of a 32-value block: code `j` low, code `j + 16` high.
fn nibbles(codes: &[u8; QK]) -> impl Iterator<Item = u8> + '_ {
    (0..QK / 2).map(|j| (codes[j] & 0x0f) | ((codes[j + QK / 2] & 0x0f) << 4))
}

/// Bit `j` set when code `j` of a 32-value block has its fifth bit (Q5_0 / Q5_1 `qh`).
fn fifth_bits(codes: &[u8; QK]) -> u32 {
    codes
        .iter()
        .enumerate()
        .fold(0u32, |qh, (j, &c)| qh | (u32::from(c >> 4 & 1) << j))
}

/// Appends the importance-weighted Q4_0 blocks of one row (a multiple of 32 values).
pub fn q4_0_row(row: &[f32], importance: &[f32], out: &mut Vec<u8>) {
    each_block(row, importance, |x, w, codes| {
        let d = fit_block(x, Some(w), 8, codes);
        out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
        out.extend(nibbles(codes));
    });
}

/// Appends the importance-weighted Q5_0 blocks of one row (a multiple of 32 values).
pub fn q5_0_row(row: &[f32], importance: &[f32], out: &mut Vec<u8>) {
    each_block(row, importance, |x, w, codes| {
        let d = fit_block(x, Some(w), 16, codes);
        out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
        out.extend_from_slice(&fifth_bits(codes).to_le_bytes());
        out.extend(nibbles(codes));
    });
}

/// Appends the importance-weighted Q4_1 blocks of one row (a multiple of 32 values).
pub fn q4_1_row(row: &[f32], importance: &[f32], out: &mut Vec<u8>) {
    each_block(row, importance, |x, w, codes| {
        let (d, m) = fit_block_with_offset(x, w, 15, LEGACY_OFFSET_GRID, codes);
        out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
        out.extend_from_slice(&f16::from_f32(m).to_le_bytes());
        out.extend(nibbles(codes));
    });
}

/// Appends the importance-weighted Q5_1 blocks of one row (a multiple of 32 values).
pub fn q5_1_row(row: &[f32], importance: &[f32], out: &mut Vec<u8>) {
    each_block(row, importance, |x, w, codes| {
        let (d, m) = fit_block_with_offset(x, w, 31, LEGACY_OFFSET_GRID, codes);
        out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
        out.extend_from_slice(&f16::from_f32(m).to_le_bytes());
        out.extend_from_slice(&fifth_bits(codes).to_le_bytes());
        out.extend(nibbles(codes));
    });
}

/// Values per Q6_K super-block.
pub const QK_K: usize = 256;
/// Bytes of one Q6_K super-block: 128 bytes of low nibbles, 64 of high bit pairs, 16 i8
/// sub-block scales, f16 `d`.
pub const Q6_K_BYTES: usize = QK_K / 2 + QK_K / 4 + QK_K / 16 + 2;

/// Appends the Q6_K blocks of one row (a multiple of 256 values), fitted as llama.cpp fits
/// them: each 16-value sub-block by the search above (weighted by `importance` when given),
/// the sub-block scales then quantized to i8 against the largest, and the values rounded
/// again on the scales as stored.
pub fn q6_k_row(row: &[f32], importance: Option<&[f32]>, out: &mut Vec<u8>) {
    let mut codes = [0u8; QK_K];
    for (sb, x) in row.chunks_exact(QK_K).enumerate() {
        let w = importance.map(|imp| &imp[sb * QK_K..(sb + 1) * QK_K]);
        let scales = super::lanes::fit_sixteen_blocks(x, w, 32, &mut codes);
        let (mut max_scale, mut max_abs) = (0f32, 0f32);
        for scale in &scales {
            if scale.abs() > max_abs {
                max_abs = scale.abs();
                max_scale = *scale;
            }
        }
        if max_abs < ALL_ZERO {
            out.extend(std::iter::repeat_n(0u8, Q6_K_BYTES));
            continue;
        }
        let iscale = -128.0 / max_scale;
        let d = f16::from_f32(1.0 / iscale);
        let q_scales: [i8; QK_K / 16] = scales.map(|s| nearest(iscale * s).min(127) as i8);
        for (ib, &qs) in q_scales.iter().enumerate() {
            let dj = d.to_f32() * f32::from(qs);
            if dj == 0.0 {
                continue;
            }
            for j in ib * 16..ib * 16 + 16 {
                codes[j] = (nearest(x[j] / dj).clamp(-32, 31) + 32) as u8;
            }
        }
        let (mut ql, mut qh) = ([0u8; QK_K / 2], [0u8; QK_K / 4]);
        for half in 0..2 {
            let (c, l, h) = (
                &codes[128 * half..],
                &mut ql[64 * half..],
                &mut qh[32 * half..],
            );
            for i in 0..32 {
                l[i] = (c[i] & 0xf) | ((c[i + 64] & 0xf) << 4);
                l[i + 32] = (c[i + 32] & 0xf) | ((c[i + 96] & 0xf) << 4);
                h[i] = (c[i] >> 4)
                    | ((c[i + 32] >> 4) << 2)
                    | ((c[i + 64] >> 4) << 4)
                    | ((c[i + 96] >> 4) << 6);
            }
        }
        out.extend_from_slice(&ql);
        out.extend_from_slice(&qh);
        out.extend(q_scales.iter().map(|&s| s as u8));
        out.extend_from_slice(&d.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use crate::gguf::GgufType;
    use candle_core::quantized::QTensor;
    use candle_core::{Device, Tensor};

    use super::*;

    fn rows() -> (Vec<f32>, Vec<f32>) {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        };
        let x: Vec<f32> = (0..4 * 256).map(|_| next()).collect();
        // Column importance spanning three orders of magnitude.
        let imp: Vec<f32> = (0..256)
            .map(|j| 10f32.powf(3.0 * (j % 7) as f32 / 6.0))
            .collect();
        (x, imp)
    }

    /// Decodes blocks through candle's ggml port, so the layout is checked independently.
    fn decode(dtype: GgufType, bytes: &[u8], n: usize) -> Vec<f32> {
        let q = candle_core::quantized::ggml_file::qtensor_from_ggml(
            dtype.candle().unwrap(),
            bytes,
            vec![n / 256, 256],
            &Device::Cpu,
        )
        .unwrap();
        q.dequantize(&Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    fn weighted_error(x: &[f32], y: &[f32], imp: &[f32]) -> f64 {
        x.iter()
            .zip(y)
            .enumerate()
            .map(|(i, (a, b))| imp[i % 256] as f64 * ((a - b) as f64).powi(2))
            .sum()
    }

    /// The weighted fit lowers the importance-weighted error below plain rounding's, and its
    /// bytes decode (through candle) to values on the block grid.
    #[test]
    fn weighted_blocks_lose_less_where_it_matters() {
        let (x, imp) = rows();
        for (dtype, pack) in [
            (GgufType::Q4_0, q4_0_row as fn(&[f32], &[f32], &mut Vec<u8>)),
            (GgufType::Q5_0, q5_0_row),
            (GgufType::Q4_1, q4_1_row),
            (GgufType::Q5_1, q5_1_row),
        ] {
            let mut bytes = Vec::new();
            for row in x.chunks_exact(256) {
                pack(row, &imp, &mut bytes);
            }
            let ours = decode(dtype, &bytes, x.len());
            let t = Tensor::from_slice(&x, (4, 256), &Device::Cpu).unwrap();
            let plain = QTensor::quantize(&t, dtype.candle().unwrap()).unwrap();
            let plain = plain
                .dequantize(&Device::Cpu)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let (w_ours, w_plain) = (
                weighted_error(&x, &ours, &imp),
                weighted_error(&x, &plain, &imp),
            );
            assert!(w_ours < 0.9 * w_plain, "{dtype:?}: {w_ours} vs {w_plain}");
        }
    }

    #[test]
    fn an_all_zero_block_stays_zero() {
        type Pack = fn(&[f32], &[f32], &mut Vec<u8>);
        let sizes: [(Pack, usize); 4] = [
            (q4_0_row, 18),
            (q5_0_row, 22),
            (q4_1_row, 20),
            (q5_1_row, 24),
        ];
        for (pack, bytes) in sizes {
            let mut out = Vec::new();
            pack(&[0.0; 32], &[1.0; 32], &mut out);
            assert_eq!(out.len(), bytes);
            assert!(out.iter().all(|&b| b == 0), "{out:?}");
        }
    }
}
