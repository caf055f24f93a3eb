//! GPTQ: quantize a layer column by column, pushing each rounding error onto the columns not yet
//! quantized so that the layer's *output* on calibration data stays close (Frantar et al., 2022,
//! "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained Transformers").
//!
//! The steps, with the paper's sections:
//!
//! 1. Dead inputs (`H_jj = 0`, never active in calibration) get `H_jj = 1` and a zero weight:
//!    nothing can be learned about them and a zero diagonal would make `H` singular (as in the
//!    reference implementation).
//! 2. Act-order (the reference repository's later `--act-order` / `desc_act`, not in the paper's
//!    experiments; section 4, step 1 shows any fixed order works): columns are processed by
//!    descending `diag(H)`, so the most salient inputs are quantized first while many columns
//!    are left to absorb their error. The order is recorded.
//! 3. Dampening `lambda = damp_percent * mean(diag H)` on the diagonal (section 4, "Cholesky
//!    reformulation", numerical stability). If a Cholesky factorisation still fails the damping
//!    is multiplied by 10 and retried a few times; the damping used is reported.
//! 4. `U = chol(H^-1)` (upper, `H^-1 = U^T U`): row `p` of `U` holds, scaled, exactly the
//!    inverse-Hessian entries the OBS update needs once columns `< p` are fixed (section 4,
//!    step 3, "Cholesky reformulation"). Computed with `faer` in f64.
//! 5. Lazy batch updates (section 4, step 2): within a block of `block_size` columns the error
//!    `e_p = (w_p - q_p) / U_pp` updates only the block's remaining columns; the rest of the row
//!    gets `-E U[block, rest]` once per block, which keeps the working set in cache.
//! 6. Groups (the grouping of the paper's section 5 experiments): a group's grid is fitted when its first column is reached,
//!    on the current (already error-corrected) weights, as in the reference; with static groups
//!    every grid is fitted up front on the original weights, in original column order.
//!
//! Each output row's problem is independent given `U` (the paper's observation that the
//! column order can be shared across rows), so rows are processed in parallel chunks with rayon.
//! One difference from the reference: a group starting inside a block is fitted on the
//! block's up-to-date values (the reference reads the stale global copy there); columns past
//! the block still lack the block's pending lazy update in both. So ours fits every group on
//! exact current values whenever the group size divides `block_size` (defaults: 128 and 128).
//!
//! Speed (a full model runs this for every linear layer): the work that depends only on the
//! Hessian (dead columns, act-order, damping, `U`) is a [`GptqFactor`], built once and shared by
//! the linears that read the same input (q/k/v, gate/up). `U` comes from one Cholesky
//! factorisation and one triangular inverse: with `J` the order reversal, `J H J = L L^T` gives
//! `H = R R^T` with `R = J L J` upper, so `H^-1 = R^-T R^-1` and `U = R^-1 = J L^-1 J` (the
//! same `U` as `chol(H^-1)` by uniqueness, at a third of the cost of inverting and factoring
//! again). Factorisations are f64; the column sweep runs in f32 like the reference, and the
//! lazy update of step 5 is a real matrix multiply (`faer`), about `out * in^2` of the
//! `out * in * (in + block_size)` flops.
//!
//! Determinism: rows are cut into fixed chunks of [`ROWS_PER_TASK`] (not dependent on the
//! thread count), each chunk runs the whole sweep on its own with sequential kernels, and the
//! chunks' losses are added in order; so the output bytes never depend on thread timing.
//!
//! Memory: the f64 Hessian copy and its factor while building a [`GptqFactor`], then an f32 `U`
//! `[in, in]` and one f32 copy of the weight; fine for the small models microllm targets.


use candle_core::Tensor;
use faer::linalg::matmul::matmul;
use faer::linalg::triangular_inverse::invert_lower_triangular;
use faer::{Accum, Mat, MatMut, MatRef, Par, Side};
use microllm_core::{Error, Result};
use rayon::prelude::*;

use crate::rtn::{check_weight, weight_data};
use crate::scheme::Grid;
use crate::{HessianAccumulator, QuantScheme, QuantizedWeight};

/// How many times the damping is multiplied by 10 after a failed Cholesky factorisation.
pub const MAX_DAMP_RETRIES: u32 = 4;

/// Rows swept together by one task: each row of `U` is reused from cache across them, the lazy
/// update is a `[ROWS_PER_TASK, block] x [block, rest]` product, and the split (hence every
/// floating-point operation) is the same whatever the number of threads.
const ROWS_PER_TASK: usize = 32;

/// GPTQ knobs; the defaults are the reference implementation's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GptqOptions {
    /// Dampening as a fraction of `mean(diag H)`.
    pub damp_percent: f64,
    /// Columns per lazy-update block.
    pub block_size: usize,
    /// Process columns by descending `diag(H)`.
    pub act_order: bool,
    /// Fit all group grids up front on the original weights.
    pub static_groups: bool,
}

impl Default for GptqOptions {
    fn default() -> Self {
        Self {
            damp_percent: 0.01,
            block_size: 128,
            act_order: false,
            static_groups: false,
        }
    }
}

impl GptqOptions {
    fn validate(&self) -> Result<()> {
        if !(self.damp_percent.is_finite() && self.damp_percent > 0.0) || self.block_size == 0 {
            return Err(Error::Invalid(format!(
                "GPTQ options: damp_percent must be > 0 and block_size > 0, got {self:?}"
            )));
        }
        Ok(())
    }
}

/// What a GPTQ run measured and decided.
#[derive(Debug, Clone, PartialEq)]
pub struct GptqStats {
    /// The reference's loss, `sum (w - q)^2 / (2 U_pp^2)` over all weights: the increase of the
    /// layer's calibration objective (up to the Hessian's scale).
    pub loss: f64,
    /// Dampening fraction finally used (larger than asked if Cholesky needed retries).
    pub damp_percent: f64,
    /// The absolute value added to the Hessian diagonal.
    pub damp: f64,
    /// Number of retries with a larger dampening.
    pub damp_retries: u32,
    /// Input columns with `H_jj = 0`, whose weights were set to zero.
    pub dead_columns: usize,
}

/// Everything GPTQ derives from a Hessian alone (steps 1-4 of the module docs): dead columns,
/// the processing order, the damping and `U = chol((H + lambda I)^-1)` in processing order.
/// Build it once per Hessian and quantize every linear that shares it with
/// [`gptq_quantize_factored`].
#[derive(Debug, Clone, PartialEq)]
pub struct GptqFactor {
    n: usize,
    /// Per original column: `H_jj = 0`.
    dead: Vec<bool>,
    dead_columns: usize,
    /// `perm[p]` = original column processed `p`-th.
    perm: Vec<usize>,
    act_order: bool,
    /// The damping fraction asked for (options used with this factor must match).
    asked_damp_percent: f64,
    damp_percent: f64,
    damp: f64,
    damp_retries: u32,
    /// Row-major upper `[n, n]`, processing order.
    u: Vec<f32>,
}

impl GptqFactor {
    /// Factors a row-major `[n, n]` Hessian; uses `opts.damp_percent` and `opts.act_order`.
    pub fn new(hessian: &[f64], n: usize, opts: GptqOptions) -> Result<Self> {
        opts.validate()?;
        if n == 0 || hessian.len() != n * n || hessian.iter().any(|h| !h.is_finite()) {
            return Err(Error::Invalid(format!(
                "GPTQ needs a finite [{n}, {n}] Hessian, got {} values",
                hessian.len()
            )));
        }
        // 1. Dead columns: H_jj = 1 (their weights are zeroed when quantizing).
        let dead: Vec<bool> = (0..n).map(|j| hessian[j * n + j] == 0.0).collect();
        let diag = |j: usize| if dead[j] { 1.0 } else { hessian[j * n + j] };
        // 2. Act-order permutation.
        let mut perm: Vec<usize> = (0..n).collect();
        if opts.act_order {
            perm.sort_by(|&a, &b| diag(b).total_cmp(&diag(a)));
        }
        // 3-4. Dampening and U, on the permuted Hessian.
        let mean_diag = (0..n).map(diag).sum::<f64>() / n as f64;
        let mut pct = opts.damp_percent;
        for retry in 0..=MAX_DAMP_RETRIES {
            let lambda = pct * mean_diag;
            if let Some(u) = inverse_cholesky_upper(hessian, n, &perm, &dead, lambda) {
                return Ok(Self {
                    n,
                    dead_columns: dead.iter().filter(|&&d| d).count(),
                    dead,
                    perm,
                    act_order: opts.act_order,
                    asked_damp_percent: opts.damp_percent,
                    damp_percent: pct,
                    damp: lambda,
                    damp_retries: retry,
                    u,
                });
            }
            pct *= 10.0;
        }
        Err(Error::Invalid(format!(
            "GPTQ: the [{n}, {n}] Hessian is not positive definite even with damping {}",
            pct / 10.0
        )))
    }

    /// [`GptqFactor::new`] on an accumulated Hessian.
    pub fn from_accumulator(hessian: &HessianAccumulator, opts: GptqOptions) -> Result<Self> {
        Self::new(hessian.hessian(), hessian.in_features(), opts)
    }

    /// Input features (the Hessian's side).
    pub fn in_features(&self) -> usize {
        self.n
    }

    /// Processing order: `perm()[p]` is the original column processed `p`-th.
    pub fn perm(&self) -> &[usize] {
        &self.perm
    }

    /// Input columns with `H_jj = 0`.
    pub fn dead_columns(&self) -> usize {
        self.dead_columns
    }

    /// Dampening fraction used (larger than asked if Cholesky needed retries).
    pub fn damp_percent(&self) -> f64 {
        self.damp_percent
    }

    /// The absolute value added to the Hessian diagonal.
    pub fn damp(&self) -> f64 {
        self.damp
    }

    /// Number of retries with a larger dampening.
    pub fn damp_retries(&self) -> u32 {
        self.damp_retries
    }
}

/// `U` (row-major f32, upper) with `(P^T (H + lambda I) P)^-1 = U^T U` for the permutation
/// `perm` (dead diagonals read as 1), or `None` when the damped matrix is not positive definite
/// enough. One Cholesky factorisation of the order-reversed matrix and one triangular inverse
/// (see the module docs).
fn inverse_cholesky_upper(
    h: &[f64],
    n: usize,
    perm: &[usize],
    dead: &[bool],
    lambda: f64,
) -> Option<Vec<f32>> {
    // Row i of the reversed, permuted matrix is original column perm[n - 1 - i].
    let rev = |i: usize| perm[n - 1 - i];
    let hm = Mat::<f64>::from_fn(n, n, |i, j| {
        let (a, b) = (rev(i), rev(j));
        if a == b {
            (if dead[a] { 1.0 } else { h[a * n + a] }) + lambda
        } else {
            h[a * n + b]
        }
    });
    let llt = hm.llt(Side::Lower).ok()?;
    drop(hm);
    let mut linv = Mat::<f64>::zeros(n, n);
    invert_lower_triangular(linv.as_mut(), llt.L(), faer::get_global_parallelism());
    drop(llt);
    // U = J L^-1 J: U[i][j] = linv[n-1-i][n-1-j], upper.
    let mut u = vec![0.0f32; n * n];
    for i in 0..n {
        let row = &mut u[i * n..(i + 1) * n];
        for (j, x) in row.iter_mut().enumerate().skip(i) {
            *x = linv[(n - 1 - i, n - 1 - j)] as f32;
        }
    }
    let ok = u.iter().all(|x| x.is_finite()) && (0..n).all(|i| u[i * n + i] > 0.0);
    ok.then_some(u)
}

/// Which grid quantizes the column at a given processing position.
enum GroupMode {
    /// Grids fitted up front; the group of each processing position.
    Fixed(Vec<u32>),
    /// A new grid every `len` positions, fitted when reached.
    Dynamic(usize),
}

/// GPTQ on a 2-D weight tensor with an accumulated Hessian.
pub fn gptq_quantize_tensor(
    weight: &Tensor,
    hessian: &HessianAccumulator,
    scheme: QuantScheme,
    opts: GptqOptions,
) -> Result<(QuantizedWeight, GptqStats)> {
    let (shape, data) = weight_data(weight)?;
    gptq_quantize(&data, shape, hessian.hessian(), scheme, opts)
}

/// GPTQ on a 2-D weight tensor with a Hessian factored once by [`GptqFactor::new`].
pub fn gptq_quantize_tensor_factored(
    weight: &Tensor,
    factor: &GptqFactor,
    scheme: QuantScheme,
    opts: GptqOptions,
) -> Result<(QuantizedWeight, GptqStats)> {
    let (shape, data) = weight_data(weight)?;
    gptq_quantize_factored(&data, shape, factor, scheme, opts)
}

/// GPTQ on a row-major `[out, in]` weight, with `hessian` row-major `[in, in]`: builds a
/// [`GptqFactor`] and runs [`gptq_quantize_factored`].
pub fn gptq_quantize(
    weight: &[f32],
    shape: [usize; 2],
    hessian: &[f64],
    scheme: QuantScheme,
    opts: GptqOptions,
) -> Result<(QuantizedWeight, GptqStats)> {
    scheme.check_shape("weight", shape)?;
    check_weight(weight, shape)?;
    let [out, n] = shape;
    if hessian.len() != n * n || hessian.iter().any(|h| !h.is_finite()) {
        return Err(Error::Invalid(format!(
            "GPTQ for a weight of shape [{out}, {n}] needs a finite [{n}, {n}] Hessian, got {} \
             values",
            hessian.len()
        )));
    }
    let factor = GptqFactor::new(hessian, n, opts)?;
    gptq_quantize_factored(weight, shape, &factor, scheme, opts)
}

/// GPTQ on a row-major `[out, in]` weight with a factored Hessian. `opts.act_order` and
/// `opts.damp_percent` must be those the factor was built with; `block_size` and
/// `static_groups` are free.
pub fn gptq_quantize_factored(
    weight: &[f32],
    shape: [usize; 2],
    factor: &GptqFactor,
    scheme: QuantScheme,
    opts: GptqOptions,
) -> Result<(QuantizedWeight, GptqStats)> {
    let ng = scheme.check_shape("weight", shape)?;
    check_weight(weight, shape)?;
    opts.validate()?;
    let [out, n] = shape;
    if factor.n != n {
        return Err(Error::Invalid(format!(
            "GPTQ: a weight of shape [{out}, {n}] needs a [{n}, {n}] Hessian factor, got [{0}, {0}]",
            factor.n
        )));
    }
    if factor.act_order != opts.act_order || factor.asked_damp_percent != opts.damp_percent {
        return Err(Error::Invalid(format!(
            "GPTQ: options {opts:?} differ from the factor's (act_order {}, damp_percent {})",
            factor.act_order, factor.asked_damp_percent
        )));
    }
    let g = scheme.group_len(n);
    let (perm, dead) = (&factor.perm, &factor.dead);

    // Grids fitted up front (per-channel, or static groups), on the original column order.
    let precomputed = scheme.group_size.is_none() || opts.static_groups;
    let mut grids = vec![scheme.fit([0.0]); out * ng];
    let mode = if precomputed {
        grids
            .par_chunks_mut(ng)
            .zip(weight.par_chunks(n))
            .for_each(|(grids, row)| {
                for (k, grid) in grids.iter_mut().enumerate() {
                    let cols = k * g..(k + 1) * g;
                    *grid = scheme.fit(cols.map(|c| if dead[c] { 0.0 } else { row[c] }));
                }
            });
        GroupMode::Fixed(perm.iter().map(|&c| (c / g) as u32).collect())
    } else {
        GroupMode::Dynamic(g)
    };

    // 5-6. Row-parallel quantization in processing order, in fixed chunks of rows.
    let chunk = ROWS_PER_TASK;
    let mut codes = vec![0u8; out * n];
    let losses: Vec<f64> = weight
        .par_chunks(chunk * n)
        .zip(codes.par_chunks_mut(chunk * n))
        .zip(grids.par_chunks_mut(chunk * ng))
        .map(|((w, codes), grids)| {
            // Processing order, dead columns zeroed.
            let mut wp = vec![0.0f32; w.len()];
            for (dst, src) in wp.chunks_exact_mut(n).zip(w.chunks_exact(n)) {
                for (x, &c) in dst.iter_mut().zip(perm) {
                    *x = if dead[c] { 0.0 } else { src[c] };
                }
            }
            let sweep = Sweep {
                u: &factor.u,
                perm,
                n,
                ng,
                block_size: opts.block_size,
                mode: &mode,
                scheme,
            };
            sweep.run(&mut wp, codes, grids)
        })
        .collect();
    let loss = losses.iter().sum();

    let g_idx = (opts.act_order && !precomputed).then(|| {
        let mut gi = vec![0u32; n];
        for (p, &c) in perm.iter().enumerate() {
            gi[c] = (p / g) as u32;
        }
        gi
    });
    let q = QuantizedWeight {
        shape,
        scheme,
        codes,
        scales: grids.iter().map(|gr| gr.scale).collect(),
        zeros: grids.iter().map(|gr| gr.zero).collect(),
        g_idx,
        perm: opts
            .act_order
            .then(|| perm.iter().map(|&c| c as u32).collect()),
    };
    let stats = GptqStats {
        loss,
        damp_percent: factor.damp_percent,
        damp: factor.damp,
        damp_retries: factor.damp_retries,
        dead_columns: factor.dead_columns,
    };
    Ok((q, stats))
}

/// The column sweep's shared, read-only inputs.
struct Sweep<'a> {
    u: &'a [f32],
    perm: &'a [usize],
    n: usize,
    ng: usize,
    block_size: usize,
    mode: &'a GroupMode,
    scheme: QuantScheme,
}

impl Sweep<'_> {
    /// Quantizes a chunk of rows `w` (processing order) in place, writing `codes` in original
    /// column order; returns their loss.
    fn run(&self, w: &mut [f32], codes: &mut [u8], grids: &mut [Grid]) -> f64 {
        let (n, ng, u) = (self.n, self.ng, self.u);
        let rows = w.len() / n;
        let bs = self.block_size.min(n);
        let mut err = vec![0.0f32; rows * bs];
        let mut loss = 0.0f64;
        for i1 in (0..n).step_by(bs) {
            let i2 = (i1 + bs).min(n);
            let b = i2 - i1;
            // The block, column by column: quantize, then update the block's remaining columns.
            for p in i1..i2 {
                let urow = &u[p * n..(p + 1) * n];
                let d = urow[p];
                let utail = &urow[p + 1..i2];
                let col = self.perm[p];
                for r in 0..rows {
                    let row = &mut w[r * n..(r + 1) * n];
                    let grid = match self.mode {
                        GroupMode::Fixed(groups) => grids[r * ng + groups[p] as usize],
                        GroupMode::Dynamic(g) => {
                            let k = r * ng + p / g;
                            if p.is_multiple_of(*g) {
                                grids[k] = self.scheme.fit(row[p..p + g].iter().copied());
                            }
                            grids[k]
                        }
                    };
                    let x = row[p];
                    let c = grid.quantize(x);
                    codes[r * n + col] = c;
                    let e = (x - grid.dequantize(c)) / d;
                    loss += f64::from(e) * f64::from(e) / 2.0;
                    err[r * b + (p - i1)] = e;
                    for (x, &h) in row[p + 1..i2].iter_mut().zip(utail) {
                        *x -= e * h;
                    }
                }
            }
            // Lazy update of the columns past the block: W[:, i2..] -= E U[i1..i2, i2..].
            if i2 < n {
                let rest = n - i2;
                let dst = MatMut::from_row_major_slice_with_stride_mut(&mut w[i2..], rows, rest, n);
                let lhs = MatRef::from_row_major_slice(&err[..rows * b], rows, b);
                let rhs = MatRef::from_row_major_slice_with_stride(&u[i1 * n + i2..], b, rest, n);
                matmul(dst, Accum::Add, lhs, rhs, -1.0f32, Par::Seq);
            }
        }
        loss
    }
}
