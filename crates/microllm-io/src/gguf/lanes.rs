//! The k-quant sub-block searches with one sub-block per vector lane.
//!
//! llama.cpp fits each sub-block of a super-block on its own: a few dozen candidate grids,
//! each scored by sums over the sub-block's values in index order. Those sums are chains of
//! dependent scalar additions, and summed in another order they would round differently and
//! change the bytes written (microllm writes llama.cpp's). The sub-blocks of a super-block are
//! independent, though, so here they run side by side: element `j` of every sub-block sits in
//! one array of lanes, every step is a loop over lanes that the compiler turns into vector
//! instructions, and each lane still sums its own values in index order. The results are the
//! one-block searches' bit for bit (the tests compare them); `convert --gguf-type q4_k_m` on
//! SmolLM2 went from 1.41 to 1.03 s (docs/benchmarks.md).

use super::q4_k::{SUB, SUBS};
use super::weighted::{ALL_ZERO, OffsetGrid, QK_K, nearest};

/// The eight sub-blocks of a super-block fitted at once, one per vector lane:
/// `weighted::fit_block_with_offset`'s search (the range's grid, then `grid`'s, each later
/// grid laid from the best offset so far, weighted least squares for scale and offset), with
/// each lane's sums in index order, so every lane's result is bit for bit the one-block
/// fit's (a test compares them). The one-block search was 60% of `convert --gguf-type
/// q4_k_m`'s profile (`perf`). Returns each sub-block's scale and offset (`w = d code + m`).
pub(super) fn fit_sub_blocks(
    x: &[f32],
    weights: &[f32; QK_K],
    levels: u8,
    grid: OffsetGrid,
    codes: &mut [u8; QK_K],
) -> ([f32; SUBS], [f32; SUBS]) {
    type Lanes = [f32; SUBS];
    // Element j of every sub-block side by side.
    let (mut xs, mut ws) = ([[0f32; SUBS]; SUB], [[0f32; SUBS]; SUB]);
    for j in 0..SUB {
        for b in 0..SUBS {
            xs[j][b] = x[b * SUB + j];
            ws[j][b] = weights[b * SUB + j];
        }
    }
    let n_levels = f32::from(levels);
    let (mut lo, mut hi) = (xs[0], xs[0]);
    let (mut sum_w, mut sum_x): (Lanes, Lanes) = (ws[0], [0.0; SUBS]);
    for b in 0..SUBS {
        sum_x[b] = ws[0][b] * xs[0][b];
    }
    for j in 1..SUB {
        for b in 0..SUBS {
            lo[b] = lo[b].min(xs[j][b]);
            hi[b] = hi[b].max(xs[j][b]);
            sum_w[b] += ws[j][b];
            sum_x[b] += ws[j][b] * xs[j][b];
        }
    }
    let mut min: Lanes = lo.map(|v| v.min(0.0));
    // Codes of every lane on the grids `iscale`, from offsets `min`.
    let round = |iscale: &Lanes, min: &Lanes, out: &mut [[u8; SUBS]; SUB]| {
        for j in 0..SUB {
            for b in 0..SUBS {
                out[j][b] =
                    nearest(iscale[b] * (xs[j][b] - min[b])).clamp(0, i32::from(levels)) as u8;
            }
        }
    };
    let squared_error = |scale: &Lanes, min: &Lanes, codes: &[[u8; SUBS]; SUB]| {
        let mut acc = [0f32; SUBS];
        for j in 0..SUB {
            for b in 0..SUBS {
                let diff = scale[b] * f32::from(codes[j][b]) + min[b] - xs[j][b];
                acc[b] += ws[j][b] * (diff * diff);
            }
        }
        acc
    };
    let iscale: Lanes = std::array::from_fn(|b| n_levels / (hi[b] - min[b]));
    let mut scale: Lanes = iscale.map(|i| 1.0 / i);
    let mut best_codes = [[0u8; SUBS]; SUB];
    round(&iscale, &min, &mut best_codes);
    let mut best = squared_error(&scale, &min, &best_codes);
    let mut trial = [[0u8; SUBS]; SUB];
    for k in 0..=grid.steps {
        let levels_k = grid.first + grid.step * k as f32 + n_levels;
        // Over the range from the best offset so far (`min` moves with the best fit).
        let iscale: Lanes = std::array::from_fn(|b| levels_k / (hi[b] - min[b]));
        round(&iscale, &min, &mut trial);
        let (mut sum_l, mut sum_l2, mut sum_xl) = ([0f32; SUBS], [0f32; SUBS], [0f32; SUBS]);
        for j in 0..SUB {
            for b in 0..SUBS {
                let (l, w) = (f32::from(trial[j][b]), ws[j][b]);
                sum_l[b] += w * l;
                sum_l2[b] += w * l * l;
                sum_xl[b] += w * l * xs[j][b];
            }
        }
        let (mut this_scale, mut this_min, mut fits) = ([0f32; SUBS], [0f32; SUBS], [false; SUBS]);
        for b in 0..SUBS {
            let det = sum_w[b] * sum_l2[b] - sum_l[b] * sum_l[b];
            fits[b] = det > 0.0;
            this_scale[b] = (sum_w[b] * sum_xl[b] - sum_x[b] * sum_l[b]) / det;
            this_min[b] = (sum_l2[b] * sum_x[b] - sum_l[b] * sum_xl[b]) / det;
            if this_min[b] > 0.0 {
                this_min[b] = 0.0;
                this_scale[b] = sum_xl[b] / sum_l2[b];
            }
        }
        let err = squared_error(&this_scale, &this_min, &trial);
        for b in 0..SUBS {
            if fits[b] && err[b] < best[b] {
                best[b] = err[b];
                scale[b] = this_scale[b];
                min[b] = this_min[b];
                for j in 0..SUB {
                    best_codes[j][b] = trial[j][b];
                }
            }
        }
    }
    for b in 0..SUBS {
        // A sub-block whose range is empty (all values equal and at or above zero): codes 0,
        // offset the minimum, as the one-block fit returns before searching.
        let empty = hi[b] <= lo[b].min(0.0);
        for j in 0..SUB {
            codes[b * SUB + j] = if empty { 0 } else { best_codes[j][b] };
        }
        if empty {
            scale[b] = 0.0;
            min[b] = lo[b].min(0.0);
        }
    }
    (scale, min)
}

/// Sixteen blocks of 16 (a Q6_K super-block) fitted at once, one per vector lane, by
/// `weighted::fit_block`'s search with each lane's sums in index order: bit for bit the
/// one-block fit of every block (a test compares them). The one-block search was 19% of
/// `convert --gguf-type q4_k_m`'s profile (`perf`).
pub(super) fn fit_sixteen_blocks(
    x: &[f32],
    weights: Option<&[f32]>,
    nmax: i32,
    codes: &mut [u8; QK_K],
) -> [f32; 16] {
    const LANES: usize = 16;
    const LEN: usize = 16;
    type Lanes = [f32; LANES];
    // Element j of every block side by side.
    let (mut xs, mut ws) = ([[0f32; LANES]; LEN], [[0f32; LANES]; LEN]);
    for j in 0..LEN {
        for b in 0..LANES {
            let v = x[b * LEN + j];
            xs[j][b] = v;
            ws[j][b] = weights.map_or(v * v, |w| w[b * LEN + j]);
        }
    }
    let (mut max, mut amax) = ([0f32; LANES], [0f32; LANES]);
    for row in &xs {
        for b in 0..LANES {
            if row[b].abs() > amax[b] {
                amax[b] = row[b].abs();
                max[b] = row[b];
            }
        }
    }
    let levels = |iscale: &Lanes, out: &mut [[i32; LANES]; LEN]| {
        for j in 0..LEN {
            for b in 0..LANES {
                out[j][b] = nearest(iscale[b] * xs[j][b]).clamp(-nmax, nmax - 1);
            }
        }
    };
    let sums = |l: &[[i32; LANES]; LEN]| {
        let (mut sumlx, mut suml2) = ([0f32; LANES], [0f32; LANES]);
        for j in 0..LEN {
            for b in 0..LANES {
                let (w, l) = (ws[j][b], l[j][b] as f32);
                sumlx[b] += w * xs[j][b] * l;
                suml2[b] += w * l * l;
            }
        }
        (sumlx, suml2)
    };
    let mut best_levels = [[0i32; LANES]; LEN];
    levels(&max.map(|m| -(nmax as f32) / m), &mut best_levels);
    let (sumlx, suml2) = sums(&best_levels);
    let mut scale: Lanes = std::array::from_fn(|b| {
        if suml2[b] != 0.0 {
            sumlx[b] / suml2[b]
        } else {
            0.0
        }
    });
    let mut best: Lanes = std::array::from_fn(|b| scale[b] * sumlx[b]);
    let mut trial = [[0i32; LANES]; LEN];
    for step in (-9..=9).filter(|&s| s != 0) {
        let grid = nmax as f32 + 0.1 * step as f32;
        levels(&max.map(|m| -grid / m), &mut trial);
        let (sumlx, suml2) = sums(&trial);
        for b in 0..LANES {
            if suml2[b] > 0.0 && sumlx[b] * sumlx[b] > best[b] * suml2[b] {
                scale[b] = sumlx[b] / suml2[b];
                best[b] = scale[b] * sumlx[b];
                for j in 0..LEN {
                    best_levels[j][b] = trial[j][b];
                }
            }
        }
    }
    for b in 0..LANES {
        let zero = amax[b] < ALL_ZERO;
        for j in 0..LEN {
            codes[b * LEN + j] = if zero {
                0
            } else {
                (best_levels[j][b] + nmax) as u8
            };
        }
        if zero {
            scale[b] = 0.0;
        }
    }
    scale
}

#[cfg(test)]
mod tests {
    use super::super::q4_k::tests::row;
    use super::super::q4_k::{WEIGHTED_GRID, Width};
    use super::super::weighted::{fit_block, fit_block_with_offset};
    use super::*;

    /// The eight-lane fit returns, bit for bit, what the one-block fit returns for each
    /// sub-block: both grids, both code widths, sub-blocks that are constant, zero,
    /// positive only or carry one outlier.
    #[test]
    fn lanes_fit_as_the_one_block_search_does() {
        for seed in 0..40u32 {
            let mut x = row(QK_K, seed * 977);
            match seed % 5 {
                1 => x[..SUB].fill(0.0),
                2 => x[SUB..2 * SUB].fill(0.25),
                3 => x[2 * SUB..3 * SUB].iter_mut().for_each(|v| *v = v.abs()),
                4 => x[100] = 3.0,
                _ => {}
            }
            let weights: [f32; QK_K] =
                std::array::from_fn(|j| 0.5 + row(QK_K, seed + 7)[j].abs() * 10.0);
            for (levels, grid) in [
                (15, Width::Q4K.plain_grid()),
                (31, Width::Q5K.plain_grid()),
                (15, WEIGHTED_GRID),
                (31, WEIGHTED_GRID),
            ] {
                let mut lanes = [0u8; QK_K];
                let (scales, mins) = fit_sub_blocks(&x, &weights, levels, grid, &mut lanes);
                for b in 0..SUBS {
                    let part = b * SUB..(b + 1) * SUB;
                    let mut one = [0u8; SUB];
                    let (d, m) = fit_block_with_offset(
                        &x[part.clone()],
                        &weights[part.clone()],
                        levels,
                        grid,
                        &mut one,
                    );
                    assert_eq!(
                        lanes[part], one,
                        "seed {seed}, levels {levels}, sub-block {b}"
                    );
                    assert_eq!(
                        (scales[b].to_bits(), mins[b].to_bits()),
                        (d.to_bits(), m.to_bits()),
                        "seed {seed}, levels {levels}, sub-block {b}"
                    );
                }
            }
        }
    }

    /// The sixteen-lane fit returns, bit for bit, what the one-block fit returns for each
    /// block, with and without weights, for blocks that are zero, constant or ordinary.
    #[test]
    fn sixteen_lanes_fit_as_the_one_block_search_does() {
        let (x, w) = (
            row(4 * QK_K, 3),
            row(QK_K, 11)
                .iter()
                .map(|v| v.abs() * 40.0 + 0.01)
                .collect::<Vec<f32>>(),
        );
        for sb in 0..x.len() / QK_K {
            let mut xs: Vec<f32> = x[sb * QK_K..(sb + 1) * QK_K].to_vec();
            match sb % 4 {
                1 => xs[..16].fill(0.0),
                2 => xs[16..32].fill(-0.125),
                3 => xs[40] = 2.5,
                _ => {}
            }
            let ws = &w[..QK_K];
            for weights in [None, Some(ws)] {
                let mut lanes = [0u8; QK_K];
                let scales = fit_sixteen_blocks(&xs, weights, 32, &mut lanes);
                for (b, scale) in scales.iter().enumerate() {
                    let part = b * 16..(b + 1) * 16;
                    let mut one = [0u8; 16];
                    let d = fit_block(
                        &xs[part.clone()],
                        weights.map(|w| &w[part.clone()]),
                        32,
                        &mut one,
                    );
                    assert_eq!(lanes[part], one, "super-block {sb}, block {b}");
                    assert_eq!(scale.to_bits(), d.to_bits(), "super-block {sb}, block {b}");
                }
            }
        }
    }
}
