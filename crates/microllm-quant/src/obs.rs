//! The column sweep shared by GPTQ and SparseGPT: both are Optimal Brain Surgeon solvers that
//! fix one input column at a time (to a grid point, or to zero) and push the error onto the
//! columns not yet fixed (Frantar et al., 2022, section 4; Frantar & Alistarh, 2023, "SparseGPT:
//! Massive Language Models Can Be Accurately Pruned in One-Shot", section 3).
//!
//! A sweep works on rows in processing order and decides, per weight, its *target*:
//!
//! * pruned (by a fixed mask, or by a [`PruneRule`] decided during the sweep): 0, stored as the
//!   grid's zero point when quantizing, so the code dequantizes to exactly 0;
//! * kept and quantized: the nearest point of its group's grid;
//! * kept, not quantized (SparseGPT alone): itself, so it only receives updates.
//!
//! The error `(w - target) / U_pp` then updates the block's later columns at once and the
//! rest of the row lazily, exactly as GPTQ does. SparseGPT's mask choice uses the OBS saliency
//! `w^2 / U_pp^2` on the up-to-date weights: per row within each lazy block for a sparsity
//! fraction (the reference compares across the whole block; per-row selection keeps rows
//! independent, so they stay parallel, and gives every row exactly the asked sparsity), and
//! within every `M` consecutive columns for N:M.

use std::ops::Range;
use std::time::{Duration, Instant};

use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef};
use rayon::prelude::*;

use crate::QuantScheme;
use crate::scheme::{ClipSearch, Grid};

/// Rows handled together by one task within a block, so that each row of `U` is reused from
/// cache.
const ROWS_PER_TASK: usize = 16;

/// Where a sweep's time went (wall clock).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SweepTimings {
    /// Fixing columns within blocks: grid fits (with any clipping search), rounding, and the
    /// in-block updates.
    pub columns: Duration,
    /// The lazy updates of the columns past each block (the matrix products).
    pub update: Duration,
}

/// How the sweep chooses weights to prune as it goes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PruneRule {
    /// In every lazy block, each row prunes this fraction of the block's columns (rounded to
    /// whole columns), those of least saliency.
    Fraction(f64),
    /// In every `m` consecutive columns, each row keeps the `n` of largest saliency.
    NOfM { n: usize, m: usize },
}

/// Which grid quantizes the column at a given processing position.
pub(crate) enum GroupMode {
    /// Grids fitted up front; the group of each processing position.
    Fixed(Vec<u32>),
    /// A new grid every `len` positions, fitted when reached.
    Dynamic(usize),
}

/// How a group's grid is chosen: min/max, or a clipping search weighted by column cost.
pub(crate) struct Fitter {
    pub scheme: QuantScheme,
    pub search: Option<ClipSearch>,
}

impl Fitter {
    pub fn fit(&self, values: &[f32], cost: &[f32]) -> Grid {
        match &self.search {
            None => self.scheme.fit(values.iter().copied()),
            Some(search) => self.scheme.fit_clipped(values, Some(cost), search),
        }
    }
}

/// The quantizing part of a sweep.
pub(crate) struct Quantize {
    pub fitter: Fitter,
    pub mode: GroupMode,
    /// Groups per row.
    pub ng: usize,
}

/// Everything a row chunk needs, shared by all chunks.
pub(crate) struct Sweep<'a> {
    /// `U` (`[n, n]`, upper) in processing order.
    pub u: MatRef<'a, f32>,
    /// `1 / U_pp^2` in processing order.
    pub cost: &'a [f32],
    pub block_size: usize,
    pub quantize: Option<Quantize>,
    pub rule: Option<PruneRule>,
}

/// Rows in processing order: weights (updated in place to their targets),
/// codes and grids (used only when quantizing), and the pruning mask (in: a fixed mask or all
/// false; out: every pruned weight).
pub(crate) struct Rows<'a> {
    pub w: &'a mut [f32],
    pub codes: &'a mut [u8],
    pub grids: &'a mut [Grid],
    pub pruned: &'a mut [bool],
}

impl Sweep<'_> {
    /// Sweeps all rows (row-major `[out, n]`, processing order); returns their loss
    /// `sum e^2 / 2` and the time spent in the two halves of the work.
    ///
    /// Per block of `block_size` columns: row chunks in parallel fix each column and update
    /// the block's later columns ([`Self::block`]); then the rest of every row receives the
    /// block's errors at once, `W[:, i2..] -= E U[i1..i2, i2..]`, as one matrix product (the
    /// paper's lazy batch update; `out * n^2 / 2` multiply-adds, the bulk of GPTQ's work on
    /// wide layers, done by faer's blocked, multi-threaded GEMM).
    pub fn run(&self, rows: Rows<'_>) -> (f64, SweepTimings) {
        let Rows {
            w,
            codes,
            grids,
            pruned,
        } = rows;
        let n = self.cost.len();
        let out = w.len() / n;
        let ng = grids.len() / out.max(1);
        let bs = self.block_size.min(n);
        let mut err = vec![0.0f32; out * bs];
        let mut tile = vec![0.0f32; bs * bs];
        let (mut loss, mut timings) = (0.0, SweepTimings::default());
        for i1 in (0..n).step_by(bs) {
            let i2 = (i1 + bs).min(n);
            let t0 = Instant::now();
            // The block's diagonal tile of `U`, row-major, for the in-block updates.
            for a in 0..i2 - i1 {
                for b in a..i2 - i1 {
                    tile[a * bs + b] = self.u[(i1 + a, i1 + b)];
                }
            }
            let tile = &tile;
            loss += w
                .par_chunks_mut(ROWS_PER_TASK * n)
                .zip(codes.par_chunks_mut(ROWS_PER_TASK * n))
                .zip(grids.par_chunks_mut(ROWS_PER_TASK * ng))
                .zip(pruned.par_chunks_mut(ROWS_PER_TASK * n))
                .zip(err.par_chunks_mut(ROWS_PER_TASK * bs))
                .map(|((((w, codes), grids), pruned), err)| {
                    let rows = Rows {
                        w,
                        codes,
                        grids,
                        pruned,
                    };
                    self.block(rows, err, tile, i1..i2)
                })
                .sum::<f64>();
            let t1 = Instant::now();
            timings.columns += t1 - t0;
            if i2 < n {
                // Row-major `[out, n - i2]` with stride `n`, built as the transpose of its
                // column-major view: faer 0.24.4's `from_row_major_slice_with_stride_mut`
                // swaps the strides (it builds a column-major matrix) and writes out of bounds.
                let dst =
                    MatMut::from_column_major_slice_with_stride_mut(&mut w[i2..], n - i2, out, n)
                        .transpose_mut();
                let e = MatRef::from_row_major_slice_with_stride(&err, out, i2 - i1, bs);
                let u = self.u.submatrix(i1, i2, i2 - i1, n - i2);
                matmul(dst, Accum::Add, e, u, -1.0, faer::get_global_parallelism());
                timings.update += t1.elapsed();
            }
        }
        (loss, timings)
    }

    /// Fixes columns `cols` of a chunk of rows one by one and applies each error to the
    /// block's later columns; `err` (`[rows, block_size]`) receives the scaled errors for the
    /// lazy update of the rest, `tile` (`[block_size, block_size]`, row-major) is `U` on the
    /// block's diagonal. Returns the chunk's loss.
    fn block(&self, rows: Rows<'_>, err: &mut [f32], tile: &[f32], cols: Range<usize>) -> f64 {
        let Rows {
            w,
            codes,
            grids,
            pruned,
        } = rows;
        let n = self.cost.len();
        let nrows = w.len() / n;
        let bs = self.block_size.min(n);
        let (i1, i2) = (cols.start, cols.end);
        let mut loss = 0.0;
        if let Some(PruneRule::Fraction(f)) = self.rule {
            let k = (f * (i2 - i1) as f64).round() as usize;
            for r in 0..nrows {
                self.prune_least(
                    &w[r * n..(r + 1) * n],
                    &mut pruned[r * n..(r + 1) * n],
                    i1..i2,
                    k,
                );
            }
        }
        for p in i1..i2 {
            // Row `p` of `U` over the block: `urow[k]` is `U[p][i1 + k]`.
            let urow = &tile[(p - i1) * bs..(p - i1 + 1) * bs];
            let d = urow[p - i1];
            for r in 0..nrows {
                let row = &mut w[r * n..(r + 1) * n];
                let mask = &mut pruned[r * n..(r + 1) * n];
                if let Some(PruneRule::NOfM { n: keep, m }) = self.rule
                    && p % m == 0
                {
                    self.prune_least(row, mask, p..(p + m).min(n), m - keep);
                }
                let x = row[p];
                let target = match &self.quantize {
                    Some(q) => {
                        let grid = self.grid(q, &mut grids[r * q.ng..(r + 1) * q.ng], row, p);
                        let c = if mask[p] { grid.zero } else { grid.quantize(x) };
                        codes[r * n + p] = c;
                        grid.dequantize(c)
                    }
                    None if mask[p] => 0.0,
                    None => x,
                };
                let e = (x - target) / d;
                row[p] = target;
                loss += f64::from(e) * f64::from(e) / 2.0;
                err[r * bs + (p - i1)] = e;
                if e != 0.0 {
                    for (x, &h) in row[p + 1..i2].iter_mut().zip(&urow[p + 1 - i1..i2 - i1]) {
                        *x -= e * h;
                    }
                }
            }
        }
        loss
    }

    /// The grid of position `p` of a row (fitting a dynamic group's grid at its first column).
    fn grid(&self, q: &Quantize, grids: &mut [Grid], row: &[f32], p: usize) -> Grid {
        match &q.mode {
            GroupMode::Fixed(groups) => grids[groups[p] as usize],
            GroupMode::Dynamic(g) => {
                let k = p / g;
                if p.is_multiple_of(*g) {
                    grids[k] = q.fitter.fit(&row[p..p + g], &self.cost[p..p + g]);
                }
                grids[k]
            }
        }
    }

    /// Marks the `k` weights of `cols` with the least saliency `w^2 / U_pp^2` as pruned (ties
    /// go to the earlier column, so the choice is deterministic).
    fn prune_least(&self, row: &[f32], mask: &mut [bool], cols: std::ops::Range<usize>, k: usize) {
        if k == 0 {
            return;
        }
        let mut order: Vec<usize> = cols.collect();
        let saliency = |j: usize| f64::from(row[j]).powi(2) * f64::from(self.cost[j]);
        order.sort_by(|&a, &b| saliency(a).total_cmp(&saliency(b)).then(a.cmp(&b)));
        for &j in order.iter().take(k) {
            mask[j] = true;
        }
    }
}
