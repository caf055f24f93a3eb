//! The loss of one position and its gradient with respect to the student's logits.
//!
//! Every logit loss here is computed per row of logits, in one kernel that writes the
//! gradient over the logits in place (the fused head never keeps logits and gradients both).
//!
//! With temperature `τ`, the student's `q = softmax(s / τ)` and the teacher's `p` (at the same
//! temperature) are compared over *buckets*: with a live teacher every token is its own
//! bucket (the exact divergence); with a stored top-k teacher, each of the `k` tokens is a
//! bucket and everything else is one "rest" bucket holding mass `1 − Σ top-k` on both sides.
//! The bucketed divergence is the divergence of the two distributions coarsened to that
//! partition: never more than the exact one, and equal to it when `k` is the vocabulary (the
//! rest bucket is then empty). For a divergence `D(p, q) = Σ_b d(p_b, q_b)` the gradient with
//! respect to `u = s / τ` is `q_j · (f_b(j) − Σ_b q_b f_b)` with `f_b = ∂d/∂q_b`:
//!
//! | loss | `d(p, q)` | `f_b` |
//! |---|---|---|
//! | forward KL | `p log(p/q)` | `−p/q` |
//! | reverse KL | `q log(q/p)` | `log(q/p) + 1` |
//! | JSD | `½ p log(p/m) + ½ q log(q/m)`, `m = (p+q)/2` | `½ log(q/m)` |
//!
//! Divergences are multiplied by `τ²` (Hinton et al.: the gradient's scale then does not
//! shrink as `1/τ²`), so `∂L/∂s_j = τ · q_j · (f_b(j) − F)`. Cross-entropy on the next token
//! is always at `τ = 1`: `∂/∂s_j = softmax(s)_j − [j = y]`. Sums run in f64.

use crate::real::Real;

/// The teacher's side of one position.
#[derive(Debug, Clone, Copy)]
pub enum TeacherRow<'a, T> {
    /// No teacher (cross-entropy only).
    None,
    /// Every logit of a live teacher (temperature applied here).
    Dense(&'a [T]),
    /// A stored top-k: token ids, their log-probabilities and the log of the remaining mass,
    /// all at the store's temperature (`-inf` when nothing remains).
    TopK {
        ids: &'a [u32],
        logp: &'a [f32],
        log_rest: f32,
    },
}

/// Weights of the logit losses and the temperature.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LogitMix {
    pub kl: f64,
    pub reverse_kl: f64,
    pub jsd: f64,
    pub ce: f64,
    pub temperature: f64,
}

impl LogitMix {
    /// Whether any divergence from the teacher is weighted.
    pub fn uses_teacher(&self) -> bool {
        self.kl != 0.0 || self.reverse_kl != 0.0 || self.jsd != 0.0
    }
}

/// Unweighted loss terms of one position (divergences at temperature, before `τ²`).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RowTerms {
    pub kl: f64,
    pub reverse_kl: f64,
    pub jsd: f64,
    pub ce: f64,
}

/// Per-thread buffers of the vocabulary's width.
#[derive(Debug)]
pub struct Scratch<T> {
    /// `exp((s − max) / τ)`.
    e: Vec<T>,
    /// `exp(s − max)`, for cross-entropy when `τ ≠ 1`.
    e1: Vec<T>,
    /// The live teacher's `exp((t − max) / τ)`.
    t: Vec<T>,
    /// Per-token `f_b` of the dense path.
    f: Vec<f64>,
}

impl<T> Default for Scratch<T> {
    fn default() -> Self {
        Self {
            e: Vec::new(),
            e1: Vec::new(),
            t: Vec::new(),
            f: Vec::new(),
        }
    }
}

/// How a row's gradient is scaled (the means over positions).
#[derive(Debug, Clone, Copy)]
pub struct RowScale {
    /// Applied to the divergence terms (1 / positions with a teacher).
    pub divergence: f64,
    /// Applied to cross-entropy (1 / positions with a label).
    pub ce: f64,
}

/// Adds the weighted divergences of one bucket (log-probabilities `lp`, `lq`) to `terms` and
/// returns its weighted `f_b`.
#[inline]
fn bucket(mix: &LogitMix, lp: f64, lq: f64, terms: &mut RowTerms) -> f64 {
    let (p, q) = (lp.exp(), lq.exp());
    let mut f = 0.0;
    if mix.kl != 0.0 {
        if p > 0.0 {
            terms.kl += p * (lp - lq);
        }
        f -= mix.kl * (lp - lq).exp();
    }
    if mix.reverse_kl != 0.0 {
        if q > 0.0 {
            terms.reverse_kl += q * (lq - lp);
        }
        f += mix.reverse_kl * (lq - lp + 1.0);
    }
    if mix.jsd != 0.0 {
        let lm = (0.5 * (p + q)).ln();
        if p > 0.0 {
            terms.jsd += 0.5 * p * (lp - lm);
        }
        if q > 0.0 {
            terms.jsd += 0.5 * q * (lq - lm);
        }
        f += mix.jsd * 0.5 * (lq - lm);
    }
    f
}

/// `Σ xs` in f64, over eight independent lanes so the additions vectorise (a single running
/// sum is a chain of dependent adds, 49152 long for SmolLM2's vocabulary).
pub(crate) fn sum_f64<T: Real>(xs: &[T]) -> f64 {
    let mut lanes = [0f64; 8];
    let chunks = xs.chunks_exact(8);
    let tail: f64 = chunks.remainder().iter().map(|v| v.to_f64()).sum();
    for c in chunks {
        for (l, v) in lanes.iter_mut().zip(c) {
            *l += v.to_f64();
        }
    }
    lanes.iter().sum::<f64>() + tail
}

/// `exp((x − max) · scale)` into `out`; returns `(max, Σ out)`.
fn exp_shifted<T: Real>(x: &[T], scale: f64, out: &mut Vec<T>) -> (f64, f64) {
    let max = x.iter().copied().fold(T::NEG_INFINITY, T::maximum);
    let scale_t = T::from_f64(scale);
    out.clear();
    out.extend(x.iter().map(|&v| ((v - max) * scale_t).exp_fast()));
    (max.to_f64(), sum_f64(out))
}

/// Computes the loss terms of one row of student logits `s` and overwrites `s` with the
/// gradient of `τ²·(w_kl·KL + w_rkl·RKL + w_jsd·JSD)·scale.divergence + w_ce·CE·scale.ce`.
pub fn row_loss<T: Real>(
    s: &mut [T],
    scratch: &mut Scratch<T>,
    teacher: TeacherRow<'_, T>,
    label: Option<u32>,
    mix: &LogitMix,
    scale: RowScale,
) -> RowTerms {
    let tau = mix.temperature;
    let mut terms = RowTerms::default();
    let (max, z) = exp_shifted(s, 1.0 / tau, &mut scratch.e);
    let log_z = z.ln();
    // log q_j = (s_j − max) / τ − ln z.
    let lq = |sj: T| (sj.to_f64() - max) / tau - log_z;

    // Cross-entropy at τ = 1: its softmax is the tempered one when τ = 1.
    let ce = label.filter(|_| mix.ce != 0.0).map(|y| {
        let z1 = if tau == 1.0 {
            z
        } else {
            exp_shifted(s, 1.0, &mut scratch.e1).1
        };
        terms.ce = max + z1.ln() - s[y as usize].to_f64();
        (y, z1)
    });
    // Its gradient's softmax part, `w · scale · e1_j / z1`, as a coefficient on `e1`.
    let ce_coef = ce.map_or(0.0, |(_, z1)| mix.ce * scale.ce / z1);
    let inv_z = 1.0 / z;

    // Divergence: f of every bucket, F = Σ_b q_b f_b, gradient g · q_j · (f_b(j) − F).
    let g = tau * scale.divergence;
    let with_teacher = mix.uses_teacher();
    match teacher {
        TeacherRow::Dense(t) if with_teacher => {
            let (tmax, tz) = exp_shifted(t, 1.0 / tau, &mut scratch.t);
            let tlog_z = tz.ln();
            scratch.f.clear();
            let mut big_f = 0.0;
            for (&sj, &tj) in s.iter().zip(t) {
                let lp = (tj.to_f64() - tmax) / tau - tlog_z;
                let lqj = lq(sj);
                let f = bucket(mix, lp, lqj, &mut terms);
                big_f += lqj.exp() * f;
                scratch.f.push(f);
            }
            let e1 = if tau == 1.0 { &scratch.e } else { &scratch.e1 };
            for (j, v) in s.iter_mut().enumerate() {
                let q = scratch.e[j].to_f64() * inv_z;
                let ce = if ce.is_some() {
                    ce_coef * e1[j].to_f64()
                } else {
                    0.0
                };
                *v = T::from_f64(g * q * (scratch.f[j] - big_f) + ce);
            }
        }
        TeacherRow::TopK {
            ids,
            logp,
            log_rest,
        } if with_teacher => {
            // The rest bucket's student mass, summed over the tokens outside the top-k (not
            // 1 − Σ top-k, which cancels when the top-k hold nearly everything).
            let saved: Vec<T> = ids.iter().map(|&i| scratch.e[i as usize]).collect();
            for &i in ids {
                scratch.e[i as usize] = T::ZERO;
            }
            let rest = sum_f64(&scratch.e);
            for (&i, &v) in ids.iter().zip(&saved) {
                scratch.e[i as usize] = v;
            }
            let mut big_f = 0.0;
            let mut f_top = Vec::with_capacity(ids.len());
            for (&i, &lp) in ids.iter().zip(logp) {
                let lqi = lq(s[i as usize]);
                let f = bucket(mix, lp as f64, lqi, &mut terms);
                big_f += lqi.exp() * f;
                f_top.push(f);
            }
            // An empty rest bucket (k = vocabulary) contributes nothing.
            let f_rest = if rest > 0.0 {
                let lq_rest = rest.ln() - log_z;
                let f = bucket(mix, log_rest as f64, lq_rest, &mut terms);
                big_f += lq_rest.exp() * f;
                f
            } else {
                0.0
            };
            let e1 = if tau == 1.0 { &scratch.e } else { &scratch.e1 };
            let base = g * (f_rest - big_f) * inv_z;
            for (j, v) in s.iter_mut().enumerate() {
                let ce = if ce.is_some() {
                    ce_coef * e1[j].to_f64()
                } else {
                    0.0
                };
                *v = T::from_f64(base * scratch.e[j].to_f64() + ce);
            }
            for (&i, f) in ids.iter().zip(f_top) {
                let i = i as usize;
                let ce = if ce.is_some() {
                    ce_coef * e1[i].to_f64()
                } else {
                    0.0
                };
                s[i] = T::from_f64(g * (f - big_f) * inv_z * scratch.e[i].to_f64() + ce);
            }
        }
        _ if ce.is_none() => s.fill(T::ZERO),
        _ => {
            let e1 = if tau == 1.0 { &scratch.e } else { &scratch.e1 };
            for (v, e) in s.iter_mut().zip(e1) {
                *v = T::from_f64(ce_coef * e.to_f64());
            }
        }
    }
    if let Some((y, _)) = ce {
        let y = y as usize;
        s[y] = T::from_f64(s[y].to_f64() - mix.ce * scale.ce);
    }
    terms
}

impl RowTerms {
    /// The weighted loss these terms make (divergences times `τ²`).
    pub fn weighted(&self, mix: &LogitMix) -> f64 {
        let t2 = mix.temperature * mix.temperature;
        t2 * (mix.kl * self.kl + mix.reverse_kl * self.reverse_kl + mix.jsd * self.jsd)
            + mix.ce * self.ce
    }

    /// Adds `other` to `self`.
    pub fn add(&mut self, other: &RowTerms) {
        self.kl += other.kl;
        self.reverse_kl += other.reverse_kl;
        self.jsd += other.jsd;
        self.ce += other.ce;
    }
}

#[cfg(test)]
#[path = "row_tests.rs"]
mod tests;
