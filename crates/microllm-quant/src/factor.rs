//! The part of an OBS solve (GPTQ, SparseGPT) that depends only on a layer's inputs: dead
//! columns, the processing order, the damped Hessian's inverse Cholesky factor `U` and each
//! column's cost `1 / U_pp^2`. Linears that read the same input (q, k and v; gate and up)
//! have the same Hessian, so they share one [`ObsFactor`]: on LLaMA-2-7B's shapes a
//! factorisation of a 4096-wide Hessian is about 0.65 s of a 2 s solve. Building the factor
//! also lets the Hessian go before the first sweep, so at most the factor's `[n, n]` f32
//! matrix is alive while the group's weights are solved.

use std::borrow::Cow;
use std::time::{Duration, Instant};

use faer::linalg::triangular_inverse::invert_lower_triangular;
use faer::{Mat, Side};
use microllm_core::{Error, Result};

use crate::GptqOptions;
use crate::gptq::check_options;

/// How many times the damping is multiplied by 10 after a failed Cholesky factorisation.
pub const MAX_DAMP_RETRIES: u32 = 4;

/// Smallest accepted `L_ii^2 / A_ii` in the f32 Cholesky factorisation `A = L L^T`: well above
/// what f32 rounding leaves of an exactly singular pivot (a few times 1e-7 of `A_ii`), well
/// below a damped pivot's `lambda / A_ii` unless a channel's `H_ii` exceeds `10^4` times the
/// mean diagonal (such a layer is retried with more damping, which its stats report).
const PIVOT_MIN: f64 = 1e-6;

/// A factorised input Hessian, ready for any number of sweeps over weights of `n` inputs.
#[derive(Debug, Clone)]
pub struct ObsFactor {
    pub(crate) n: usize,
    /// `perm[p]` = original column processed `p`-th.
    pub(crate) perm: Vec<usize>,
    /// `U` (row-major `[n, n]`, upper) in processing order.
    pub(crate) u: Vec<f32>,
    /// `1 / U_pp^2` in processing order.
    pub(crate) cost: Vec<f32>,
    pub(crate) damp_percent: f64,
    pub(crate) damp: f64,
    pub(crate) damp_retries: u32,
    /// The Hessian's diagonal as accumulated (dead inputs 0), for Wanda scores.
    diagonal: Vec<f64>,
    act_order: bool,
    asked_damp_percent: f64,
    seconds: Duration,
}

impl ObsFactor {
    /// Factorises `hessian` (row-major `[n, n]`, finite) with the damping and order of `opts`;
    /// an owned Hessian is freed as soon as its damped copy exists.
    pub fn new<'h>(
        hessian: impl Into<Cow<'h, [f64]>>,
        n: usize,
        opts: GptqOptions,
    ) -> Result<Self> {
        let start = Instant::now();
        let hessian: Cow<'h, [f64]> = hessian.into();
        check_options(opts)?;
        if hessian.len() != n * n || hessian.iter().any(|h| !h.is_finite()) {
            return Err(Error::Invalid(format!(
                "GPTQ for a layer of {n} inputs needs a finite [{n}, {n}] Hessian, got {} \
                 values",
                hessian.len()
            )));
        }
        // Dead columns: their diagonal reads as 1, their weights become 0 in the sweep.
        let diagonal: Vec<f64> = (0..n).map(|j| hessian[j * n + j]).collect();
        let diag: Vec<f64> = diagonal
            .iter()
            .map(|&d| if d == 0.0 { 1.0 } else { d })
            .collect();
        let mut perm: Vec<usize> = (0..n).collect();
        if opts.act_order {
            perm.sort_by(|&a, &b| diag[b].total_cmp(&diag[a]));
        }
        let (u, damp_percent, damp, damp_retries) =
            inverse_cholesky_damped(hessian, n, &perm, &diag, opts.damp_percent)?;
        // What the objective pays per unit of squared error in each column, in processing
        // order.
        let cost = (0..n)
            .map(|p| (1.0 / f64::from(u[p * n + p]).powi(2)) as f32)
            .collect();
        Ok(Self {
            n,
            perm,
            u,
            cost,
            damp_percent,
            damp,
            damp_retries,
            diagonal,
            act_order: opts.act_order,
            asked_damp_percent: opts.damp_percent,
            seconds: start.elapsed(),
        })
    }

    /// Inputs of the layers this factor serves.
    pub fn in_features(&self) -> usize {
        self.n
    }

    /// The Hessian's diagonal as accumulated (0 for inputs never active).
    pub fn hessian_diagonal(&self) -> &[f64] {
        &self.diagonal
    }

    /// Inputs with `H_jj = 0` (never active in calibration), whose weights become 0.
    pub(crate) fn dead_columns(&self) -> impl Iterator<Item = usize> + Clone + '_ {
        (0..self.n).filter(|&j| self.diagonal[j] == 0.0)
    }

    /// Wall time of the factorisation.
    pub fn seconds(&self) -> Duration {
        self.seconds
    }

    /// Errors unless a weight of `shape` solved with `opts` can use this factor.
    pub(crate) fn check_fits(&self, shape: [usize; 2], opts: GptqOptions) -> Result<()> {
        if shape[1] != self.n {
            return Err(Error::Invalid(format!(
                "a weight of shape {shape:?} cannot use the factor of a {}-input Hessian",
                self.n
            )));
        }
        if opts.act_order != self.act_order || opts.damp_percent != self.asked_damp_percent {
            return Err(Error::Invalid(format!(
                "GPTQ options {opts:?} differ from the ones the shared factor was built with \
                 (act_order {}, damp_percent {})",
                self.act_order, self.asked_damp_percent
            )));
        }
        Ok(())
    }
}

/// Adds damping to the Hessian and returns `U` (row-major, upper) with
/// `(P^T (H + lambda I) P)^-1 = U^T U` for the processing order `perm` (`diag`: the diagonal
/// with dead columns read as 1), retrying with ten times the damping when a factorisation
/// fails.
///
/// With `J` the order reversal and `A = P^T (H + lambda I) P`: if `J A J = L L^T` then
/// `A^-1 = J L^-T L^-1 J = U^T U` with `U = J L^-1 J`, which is upper triangular. So one
/// Cholesky factorisation and one triangular inverse give `U`, instead of a factorisation, a
/// full inverse and a second factorisation. At most two `[n, n]` f32 matrices are alive at
/// once (the damped matrix and its factor, the factor and its inverse, the inverse and `U`),
/// plus the f64 Hessian while it is borrowed: that is what bounds GPTQ's memory on wide
/// layers (485 MB each for LLaMA-2-7B's 11008-wide down projection, its Hessian 969 MB).
fn inverse_cholesky_damped(
    h: Cow<'_, [f64]>,
    n: usize,
    perm: &[usize],
    diag: &[f64],
    damp_percent: f64,
) -> Result<(Vec<f32>, f64, f64, u32)> {
    let mean_diag = diag.iter().sum::<f64>() / n as f64;
    // Row i of J A J is original column perm[n - 1 - i].
    let rev = |i: usize| perm[n - 1 - i];
    let mut a = Mat::<f32>::from_fn(n, n, |i, j| {
        let (r, c) = (rev(i), rev(j));
        if r == c {
            diag[r] as f32
        } else {
            h[r * n + c] as f32
        }
    });
    drop(h);
    let mut pct = damp_percent;
    for retry in 0..=MAX_DAMP_RETRIES {
        let lambda = pct * mean_diag;
        // The damped diagonal is rounded to f32 once, from the f64 sum.
        for i in 0..n {
            a[(i, i)] = (diag[rev(i)] + lambda) as f32;
        }
        if let Ok(llt) = a.llt(Side::Lower) {
            // A pivot that only rounding kept positive (a damped matrix singular up to
            // rounding) would blow `U` up; with `H` positive semi-definite every pivot is at
            // least `lambda`, far above this threshold.
            let l = llt.L();
            if (0..n).all(|i| f64::from(l[(i, i)]).powi(2) > PIVOT_MIN * f64::from(a[(i, i)])) {
                drop(a);
                let u = upper_from_factor(llt, n).ok_or_else(|| {
                    Error::Invalid(format!(
                        "GPTQ: the inverse Cholesky factor of the [{n}, {n}] Hessian is not \
                         finite (damping {pct})"
                    ))
                })?;
                return Ok((u, pct, lambda, retry));
            }
        }
        pct *= 10.0;
    }
    Err(Error::Invalid(format!(
        "GPTQ: the [{n}, {n}] Hessian is not positive definite even with damping {}",
        pct / 10.0
    )))
}

/// `U = J L^-1 J` (row-major) from the factor `J A J = L L^T`; `None` if it is not finite.
fn upper_from_factor(llt: faer::linalg::solvers::Llt<f32>, n: usize) -> Option<Vec<f32>> {
    let mut l_inv = Mat::<f32>::zeros(n, n);
    invert_lower_triangular(l_inv.as_mut(), llt.L(), faer::get_global_parallelism());
    drop(llt);
    let mut u = vec![0.0f32; n * n];
    for (i, row) in u.chunks_exact_mut(n).enumerate() {
        for (j, x) in row.iter_mut().enumerate().skip(i) {
            *x = l_inv[(n - 1 - i, n - 1 - j)];
        }
    }
    let ok = u.iter().all(|x| x.is_finite()) && (0..n).all(|i| u[i * n + i] > 0.0);
    ok.then_some(u)
}
