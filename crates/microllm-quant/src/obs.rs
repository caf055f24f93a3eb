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

use crate::QuantScheme;
use crate::scheme::{ClipSearch, Grid};

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
    /// `U` (row-major `[n, n]`, upper) in processing order.
    pub u: &'a [f64],
    /// `1 / U_pp^2` in processing order.
    pub cost: &'a [f32],
    pub block_size: usize,
    pub quantize: Option<Quantize>,
    pub rule: Option<PruneRule>,
}

/// One chunk of rows, in processing order: weights (updated in place to their targets),
/// codes and grids (used only when quantizing), and the pruning mask (in: a fixed mask or all
/// false; out: every pruned weight).
pub(crate) struct Rows<'a> {
    pub w: &'a mut [f64],
    pub codes: &'a mut [u8],
    pub grids: &'a mut [Grid],
    pub pruned: &'a mut [bool],
}

impl Sweep<'_> {
    /// Sweeps a chunk of rows; returns their loss `sum e^2 / 2`.
    pub fn run(&self, rows: Rows<'_>) -> f64 {
        let Rows {
            w,
            codes,
            grids,
            pruned,
        } = rows;
        let n = self.cost.len();
        let nrows = w.len() / n;
        let bs = self.block_size.min(n);
        let mut err = vec![0.0f64; nrows * bs];
        let mut loss = 0.0;
        for i1 in (0..n).step_by(bs) {
            let i2 = (i1 + bs).min(n);
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
                let urow = &self.u[p * n..(p + 1) * n];
                let d = urow[p];
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
                            let c = if mask[p] {
                                grid.zero
                            } else {
                                grid.quantize(x as f32)
                            };
                            codes[r * n + p] = c;
                            grid.dequantize(c) as f64
                        }
                        None if mask[p] => 0.0,
                        None => x,
                    };
                    let e = (x - target) / d;
                    row[p] = target;
                    loss += e * e / 2.0;
                    err[r * bs + (p - i1)] = e;
                    if e != 0.0 {
                        for (x, &h) in row[p + 1..i2].iter_mut().zip(&urow[p + 1..i2]) {
                            *x -= e * h;
                        }
                    }
                }
            }
            if i2 < n {
                for k in 0..i2 - i1 {
                    let urow = &self.u[(i1 + k) * n + i2..(i1 + k + 1) * n];
                    for r in 0..nrows {
                        let e = err[r * bs + k];
                        if e != 0.0 {
                            let row = &mut w[r * n + i2..(r + 1) * n];
                            for (x, &h) in row.iter_mut().zip(urow) {
                                *x -= e * h;
                            }
                        }
                    }
                }
            }
        }
        loss
    }

    /// The grid of position `p` of a row (fitting a dynamic group's grid at its first column).
    fn grid(&self, q: &Quantize, grids: &mut [Grid], row: &[f64], p: usize) -> Grid {
        match &q.mode {
            GroupMode::Fixed(groups) => grids[groups[p] as usize],
            GroupMode::Dynamic(g) => {
                let k = p / g;
                if p.is_multiple_of(*g) {
                    let cols: Vec<f32> = row[p..p + g].iter().map(|&x| x as f32).collect();
                    grids[k] = q.fitter.fit(&cols, &self.cost[p..p + g]);
                }
                grids[k]
            }
        }
    }

    /// Marks the `k` weights of `cols` with the least saliency `w^2 / U_pp^2` as pruned (ties
    /// go to the earlier column, so the choice is deterministic).
    fn prune_least(&self, row: &[f64], mask: &mut [bool], cols: std::ops::Range<usize>, k: usize) {
        if k == 0 {
            return;
        }
        let mut order: Vec<usize> = cols.collect();
        let saliency = |j: usize| row[j] * row[j] * self.cost[j] as f64;
        order.sort_by(|&a, &b| saliency(a).total_cmp(&saliency(b)).then(a.cmp(&b)));
        for &j in order.iter().take(k) {
            mask[j] = true;
        }
    }
}
