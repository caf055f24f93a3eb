//! The part of an OBS solve (GPTQ, SparseGPT) that depends only on a layer's inputs: dead
//! columns, the processing order, the damped Hessian's inverse Cholesky factor `U` and each
//! column's cost `1 / U_pp^2`. Linears that read the same input (q, k and v; gate and up)
//! have the same Hessian, so they share one [`ObsFactor`]: on LLaMA-2-7B's shapes a
//! factorisation of a 4096-wide Hessian takes about 0.3 s, a third of the time of the
//! 4096 x 4096 solve that uses it (`gptq_block`, 2 cores). Building the factor also lets the
//! Hessian go before the first sweep, so only the factor's `[n, n]` f32 matrix is alive
//! while the group's weights are solved.

use std::borrow::Cow;
use std::time::{Duration, Instant};

use faer::dyn_stack::{MemBuffer, MemStack};
use faer::linalg::cholesky::llt::factor::{cholesky_in_place, cholesky_in_place_scratch};
use faer::linalg::triangular_inverse::invert_lower_triangular;
use faer::linalg::triangular_solve::{
    solve_lower_triangular_in_place, solve_upper_triangular_in_place,
};
use faer::{Mat, MatMut, MatRef, Par};
use microllm_core::{Error, Result};
use rayon::prelude::*;

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
    /// `L^-1` (column-major `[n, n]`, lower; upper triangle 0), whose reversal in both
    /// dimensions is `U`: see [`Self::u`].
    l_inv: Vec<f32>,
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
    /// an owned Hessian is freed as soon as a factorisation succeeds.
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
        let (l_inv, damp_percent, damp, damp_retries) =
            inverse_cholesky_damped(hessian, n, &perm, &diag, opts.damp_percent)?;
        // What the objective pays per unit of squared error in each column, in processing
        // order.
        let cost = (0..n)
            .map(|p| (1.0 / f64::from(l_inv[(n - 1 - p) * (n + 1)]).powi(2)) as f32)
            .collect();
        Ok(Self {
            n,
            perm,
            l_inv,
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

    /// `U` (upper, `[n, n]`) in processing order, with `(P^T (H + lambda I) P)^-1 = U^T U`:
    /// `U[i][j] = L^-1[n - 1 - i][n - 1 - j]`, a view of `L^-1` with both strides negated, so
    /// it is never copied.
    pub(crate) fn u(&self) -> MatRef<'_, f32> {
        MatRef::from_column_major_slice(&self.l_inv, self.n, self.n).reverse_rows_and_cols()
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

/// Adds damping to the Hessian and returns `L^-1` (column-major `[n, n]`, lower) with
/// `J (P^T (H + lambda I) P) J = L L^T` for the processing order `perm` (`diag`: the diagonal
/// with dead columns read as 1), retrying with ten times the damping when a factorisation
/// fails; `U = J L^-1 J` (see [`ObsFactor::u`]).
///
/// With `J` the order reversal and `A = P^T (H + lambda I) P`: if `J A J = L L^T` then
/// `A^-1 = J L^-T L^-1 J = U^T U` with `U = J L^-1 J`, which is upper triangular. So one
/// Cholesky factorisation and one triangular inverse give `U`, instead of a factorisation, a
/// full inverse and a second factorisation. Both run in place in one `[n, n]` f32 buffer
/// (485 MB for LLaMA-2-7B's 11008-wide down projection), and the f64 Hessian (969 MB) is
/// kept only until a factorisation succeeds, so a retry can start again from it: at most the
/// Hessian and one f32 matrix are alive, then the factor alone.
fn inverse_cholesky_damped(
    h: Cow<'_, [f64]>,
    n: usize,
    perm: &[usize],
    diag: &[f64],
    damp_percent: f64,
) -> Result<(Vec<f32>, f64, f64, u32)> {
    let mean_diag = diag.iter().sum::<f64>() / n as f64;
    // Row i of J A J is original column perm[n - 1 - i]; by symmetry its column j is a gather
    // from one row of `H`, so it is filled column by column (contiguous on both sides).
    let rev = |i: usize| perm[n - 1 - i];
    let gather = |buf: &mut [f32]| {
        buf.par_chunks_mut(n).enumerate().for_each(|(j, col)| {
            let h_row = &h[rev(j) * n..(rev(j) + 1) * n];
            for (i, a) in col.iter_mut().enumerate() {
                *a = h_row[rev(i)] as f32;
            }
        })
    };
    let mut buf = vec![0f32; n * n];
    let par = faer::get_global_parallelism();
    let mut scratch = MemBuffer::new(cholesky_in_place_scratch::<f32>(n, par, Default::default()));
    let mut pct = damp_percent;
    for retry in 0..=MAX_DAMP_RETRIES {
        // A failed factorisation leaves the buffer half overwritten (faer also uses the
        // upper triangle), so every attempt starts from the Hessian.
        gather(&mut buf);
        let lambda = pct * mean_diag;
        // The damped diagonal is rounded to f32 once, from the f64 sum.
        let damped: Vec<f32> = (0..n).map(|i| (diag[rev(i)] + lambda) as f32).collect();
        let mut a = MatMut::from_column_major_slice_mut(&mut buf, n, n);
        for (i, &d) in damped.iter().enumerate() {
            a[(i, i)] = d;
        }
        let factored = cholesky_in_place(
            a.as_mut(),
            Default::default(),
            par,
            MemStack::new(&mut scratch),
            Default::default(),
        )
        .is_ok();
        // A pivot that only rounding kept positive (a damped matrix singular up to rounding)
        // would blow `U` up; with `H` positive semi-definite every pivot is at least
        // `lambda`, far above this threshold.
        if factored
            && (0..n).all(|i| f64::from(a[(i, i)]).powi(2) > PIVOT_MIN * f64::from(damped[i]))
        {
            drop(h);
            invert_lower_in_place(a, par);
            clear_strict_upper(&mut buf, n);
            let finite = buf.par_iter().all(|x| x.is_finite());
            if !(finite && (0..n).all(|i| buf[i * n + i] > 0.0)) {
                return Err(Error::Invalid(format!(
                    "GPTQ: the inverse Cholesky factor of the [{n}, {n}] Hessian is not finite \
                     (damping {pct})"
                )));
            }
            return Ok((buf, pct, lambda, retry));
        }
        pct *= 10.0;
    }
    Err(Error::Invalid(format!(
        "GPTQ: the [{n}, {n}] Hessian is not positive definite even with damping {}",
        pct / 10.0
    )))
}

/// Below this size a diagonal block is inverted through a small copy.
const INVERT_BASE: usize = 64;

/// Overwrites the lower triangle of `m` (its diagonal included) with that of its inverse;
/// the strict upper triangle is neither read nor written. With
/// `m = [[A, 0], [B, C]]`, `m^-1 = [[A^-1, 0], [-C^-1 B A^-1, C^-1]]`: `B` is solved against
/// `C` and `A` while they are still the factors, then both are inverted the same way. The
/// work is that of a triangular inverse (`n^3 / 3`), all of it in faer's blocked,
/// multi-threaded triangular solves.
fn invert_lower_in_place(mut m: MatMut<'_, f32>, par: Par) {
    let n = m.nrows();
    if n <= INVERT_BASE {
        let mut inv = Mat::<f32>::zeros(n, n);
        invert_lower_triangular(inv.as_mut(), m.as_ref(), Par::Seq);
        for j in 0..n {
            for i in j..n {
                m[(i, j)] = inv[(i, j)];
            }
        }
        return;
    }
    let half = n / 2;
    let (a, _, mut b, c) = m.split_at_mut(half, half);
    solve_lower_triangular_in_place(c.as_ref(), b.as_mut(), par);
    // Then `A^-1` from the right: `X A = B` is `A^T X^T = B^T`, with `A^T` upper.
    solve_upper_triangular_in_place(a.as_ref().transpose(), b.as_mut().transpose_mut(), par);
    for j in 0..b.ncols() {
        for i in 0..b.nrows() {
            b[(i, j)] = -b[(i, j)];
        }
    }
    match par {
        Par::Rayon(threads) if threads.get() > 1 => {
            let half_par = Par::rayon(threads.get() - threads.get() / 2);
            rayon::join(
                || invert_lower_in_place(a, half_par),
                || invert_lower_in_place(c, half_par),
            );
        }
        _ => {
            invert_lower_in_place(a, par);
            invert_lower_in_place(c, par);
        }
    }
}

/// Zeroes the strict upper triangle of column-major `buf` (`[n, n]`).
fn clear_strict_upper(buf: &mut [f32], n: usize) {
    buf.par_chunks_mut(n)
        .enumerate()
        .for_each(|(j, col)| col[..j].fill(0.0));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::HessianAccumulator;
    use crate::testutil::Rng;

    /// `2/t X^T X` (row-major f64) of `t` random tokens of `n` features; column `dup` (if
    /// any) repeats column 0, so the Hessian is singular.
    fn hessian(n: usize, t: usize, dup: Option<usize>, seed: u64) -> Vec<f64> {
        let mut x = Rng::new(seed).normal_vec(t * n);
        if let Some(d) = dup {
            for r in 0..t {
                x[r * n + d] = x[r * n];
            }
        }
        hessian_of(&x, n)
    }

    /// The accumulated Hessian of row-major tokens `x` (`[t, n]`).
    fn hessian_of(x: &[f32], n: usize) -> Vec<f64> {
        let mut acc = HessianAccumulator::new(n);
        acc.add_batch_slice(x).unwrap();
        acc.into_hessian()
    }

    #[test]
    fn u_is_the_upper_cholesky_factor_of_the_damped_inverse() {
        // Wider than two base blocks, so the in-place inverse recurses; a shuffled order.
        let n = 150;
        let h = hessian(n, 600, None, 7);
        let mut perm: Vec<usize> = (0..n).collect();
        let mut rng = Rng::new(3);
        for i in (1..n).rev() {
            perm.swap(i, rng.below(i as u32 + 1) as usize);
        }
        let diag: Vec<f64> = (0..n).map(|j| h[j * n + j]).collect();
        let (l_inv, _, lambda, retries) =
            inverse_cholesky_damped(Cow::Borrowed(&h), n, &perm, &diag, 0.01).unwrap();
        assert_eq!(retries, 0);
        let u = MatRef::from_column_major_slice(&l_inv, n, n).reverse_rows_and_cols();
        for i in 0..n {
            for j in 0..i {
                assert_eq!(u[(i, j)], 0.0, "U[{i}][{j}] below the diagonal");
            }
        }
        // A few rows of U^T U A = I, with A = P^T (H + lambda I) P.
        let a = |i: usize, j: usize| h[perm[i] * n + perm[j]] + if i == j { lambda } else { 0.0 };
        let mut worst = 0f64;
        for i in [0, 1, 75, n - 1] {
            let row: Vec<f64> = (0..n)
                .map(|k| {
                    (0..=i.min(k))
                        .map(|m| f64::from(u[(m, i)]) * f64::from(u[(m, k)]))
                        .sum()
                })
                .collect();
            for j in 0..n {
                let e: f64 = (0..n).map(|k| row[k] * a(k, j)).sum();
                let want = if i == j { 1.0 } else { 0.0 };
                worst = worst.max((e - want).abs());
            }
        }
        assert!(worst < 1e-4, "U^T U A - I reaches {worst}");
    }

    #[test]
    fn a_retry_starts_again_from_the_damped_matrix() {
        // Singular (two equal columns): tiny damping fails the pivot check until it has been
        // raised enough; the retried result must be what that damping gives directly.
        let n = 130;
        let h = hessian(n, 400, Some(77), 11);
        let perm: Vec<usize> = (0..n).collect();
        let diag: Vec<f64> = (0..n).map(|j| h[j * n + j]).collect();
        let (retried, pct, _, retries) =
            inverse_cholesky_damped(Cow::Borrowed(&h), n, &perm, &diag, 1e-9).unwrap();
        assert!(retries > 0, "the pivot check should have failed at 1e-9");
        let (direct, _, _, again) =
            inverse_cholesky_damped(Cow::Borrowed(&h), n, &perm, &diag, pct).unwrap();
        assert_eq!(again, 0);
        assert!(
            retried == direct,
            "the retry did not restore the damped matrix"
        );
    }

    #[test]
    fn the_in_place_inverse_is_as_accurate_as_faers() {
        // SmolLM2's width, strongly correlated inputs (x_j += 0.95 x_(j-1)), 1% damping.
        let (n, t) = (576, 800);
        let mut x = Rng::new(5).normal_vec(t * n);
        for r in 0..t {
            for j in 1..n {
                x[r * n + j] += 0.95 * x[r * n + j - 1];
            }
        }
        let h = hessian_of(&x, n);
        let lambda = 0.01 * (0..n).map(|i| h[i * n + i]).sum::<f64>() / n as f64;
        let mut l = Mat::<f32>::from_fn(n, n, |i, j| {
            (h[i * n + j] + if i == j { lambda } else { 0.0 }) as f32
        });
        let par = faer::get_global_parallelism();
        let mut scratch =
            MemBuffer::new(cholesky_in_place_scratch::<f32>(n, par, Default::default()));
        cholesky_in_place(
            l.as_mut(),
            Default::default(),
            par,
            MemStack::new(&mut scratch),
            Default::default(),
        )
        .unwrap();
        let mut reference = Mat::<f32>::zeros(n, n);
        invert_lower_triangular(reference.as_mut(), l.as_ref(), par);
        let mut ours = l.clone();
        invert_lower_in_place(ours.as_mut(), par);
        // max |L^-1 L - I| over the lower triangle, in f64.
        let residual = |inv: &Mat<f32>| {
            let mut worst = 0f64;
            for i in 0..n {
                for j in 0..=i {
                    let s: f64 = (j..=i)
                        .map(|k| f64::from(inv[(i, k)]) * f64::from(l[(k, j)]))
                        .sum();
                    worst = worst.max((s - if i == j { 1.0 } else { 0.0 }).abs());
                }
            }
            worst
        };
        let (ours, reference) = (residual(&ours), residual(&reference));
        assert!(
            ours <= 2.0 * reference.max(1e-7),
            "in-place inverse residual {ours:e}, faer's {reference:e}"
        );
    }
}
