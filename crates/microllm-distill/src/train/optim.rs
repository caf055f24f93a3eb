//! AdamW, the learning-rate schedule and global-norm clipping, on plain buffers.
//!
//! candle-nn's AdamW keeps its moments private, so a checkpoint could not hold them and a
//! resumed run would restart the moments from zero. Here the state is plain vectors (saved and
//! restored exactly), the update runs in place on each variable's storage, element by element
//! in parallel (no reduction, so the result does not depend on the thread count), and sums
//! (the gradient norm) run over fixed chunks in a fixed order.
//!
//! AdamW (Loshchilov & Hutter): `m ← β1·m + (1−β1)·g`, `v ← β2·v + (1−β2)·g²`,
//! `w ← w − lr·(m̂ / (√v̂ + ε) + λ·w)` with bias-corrected `m̂`, `v̂`; weight decay `λ` only on
//! matrices (not on norms and biases).
//!
//! The moments are stored in bf16 by default ([`MomentPrecision`]): training at f32 keeps 16
//! bytes per trained value (weight, gradient sum, two moments); bf16 moments make it 12.
//! Rounding them to the nearest bf16 would stall the second moment: with `β2 = 0.999` one
//! step moves `v` by a thousandth of `g² − v`, and half a bf16 step is 1/512 to 1/256 of `v`,
//! so `v` would stop growing somewhere between a fifth and a third of `g²` and never decay
//! (the unit test below sees it stuck under half). They are rounded stochastically instead
//! (up with probability equal to the fraction cut off), which keeps each moment's expectation
//! exact; the random bits are a hash of (step, variable, element), so a run is reproducible and
//! independent of the thread count. The update itself uses the unrounded moments.

use std::sync::Mutex;

use candle_core::{CpuStorage, InplaceOp1, Layout, Tensor, Var};
use half::bf16;
use microllm_core::rng::mix;
use microllm_core::{Error, Result};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::real::with_data;

/// Elements per parallel unit of the element-wise passes and per partial sum of the norm.
const CHUNK: usize = 1 << 15;

/// How AdamW stores its moments.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MomentPrecision {
    /// Two bytes per moment, stochastically rounded (see the module docs).
    #[default]
    Bf16,
    /// Four bytes per moment.
    F32,
}

/// AdamW's hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    #[serde(default)]
    pub moments: MomentPrecision,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            moments: MomentPrecision::default(),
        }
    }
}

/// Linear warmup to `peak`, then a cosine to `min_ratio · peak` at `total` steps.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    pub peak: f64,
    pub warmup: u64,
    pub total: u64,
    pub min_ratio: f64,
}

impl Schedule {
    /// Learning rate of step `step` (counted from 0).
    pub fn lr(&self, step: u64) -> f64 {
        if step < self.warmup {
            return self.peak * (step + 1) as f64 / self.warmup as f64;
        }
        let span = self.total.saturating_sub(self.warmup).max(1);
        let progress = ((step - self.warmup) as f64 / span as f64).min(1.0);
        let min = self.min_ratio * self.peak;
        min + (self.peak - min) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
    }
}

/// One trained weight's optimizer state: the first and second moments.
#[derive(Debug, Clone, PartialEq)]
pub enum Moments {
    F32 { m: Vec<f32>, v: Vec<f32> },
    Bf16 { m: Vec<bf16>, v: Vec<bf16> },
}

impl Moments {
    /// Zero moments of `len` values.
    pub fn zeros(precision: MomentPrecision, len: usize) -> Self {
        match precision {
            MomentPrecision::F32 => Self::F32 {
                m: vec![0.0; len],
                v: vec![0.0; len],
            },
            MomentPrecision::Bf16 => Self::Bf16 {
                m: vec![bf16::ZERO; len],
                v: vec![bf16::ZERO; len],
            },
        }
    }

    /// Moments from f32 values, in `precision` (rounded to the nearest bf16 there: exact
    /// for values that were bf16, as a checkpoint's are).
    pub fn from_f32(precision: MomentPrecision, m: Vec<f32>, v: Vec<f32>) -> Self {
        match precision {
            MomentPrecision::F32 => Self::F32 { m, v },
            MomentPrecision::Bf16 => {
                let round = |x: Vec<f32>| x.into_iter().map(bf16::from_f32).collect();
                Self::Bf16 {
                    m: round(m),
                    v: round(v),
                }
            }
        }
    }

    pub fn precision(&self) -> MomentPrecision {
        match self {
            Self::F32 { .. } => MomentPrecision::F32,
            Self::Bf16 { .. } => MomentPrecision::Bf16,
        }
    }
}

/// `x` rounded to bf16, up (away from zero) with probability equal to the fraction of a bf16
/// step that rounding down would cut off, given 16 uniform random bits.
pub fn bf16_stochastic(x: f32, random: u16) -> bf16 {
    if !x.is_finite() {
        return bf16::from_f32(x);
    }
    // The low 16 bits of the magnitude are the fraction cut off; adding uniform bits carries
    // into the kept part with exactly that probability (a carry into the exponent is the
    // correct next value up).
    bf16::from_bits((x.to_bits().wrapping_add(random as u32) >> 16) as u16)
}

/// AdamW over a fixed list of variables.
#[derive(Debug)]
pub struct AdamW {
    pub config: AdamWConfig,
    /// Updates applied so far (AdamW's `t`).
    pub steps: u64,
    pub moments: Vec<Moments>,
    decay: Vec<bool>,
}

/// The in-place update of one variable.
struct Update<'a> {
    grad: &'a [f32],
    moments: Mutex<&'a mut Moments>,
    lr: f32,
    decay: f32,
    c: AdamWConfig,
    /// `1 − β1^t`, `1 − β2^t`.
    bias: (f32, f32),
    /// Seeds the stochastic rounding of this variable at this step.
    seed: u64,
}

impl Update<'_> {
    /// The new moments from the old and the gradient, and the weight's new value.
    #[inline(always)]
    fn one(&self, w: f32, m: f32, v: f32, g: f32) -> (f32, f32, f32) {
        let (b1, b2, eps) = (self.c.beta1 as f32, self.c.beta2 as f32, self.c.eps as f32);
        let (c1, c2) = self.bias;
        let m = b1 * m + (1.0 - b1) * g;
        let v = b2 * v + (1.0 - b2) * g * g;
        let step = (m / c1) / ((v / c2).sqrt() + eps);
        (m, v, w - self.lr * (step + self.decay * w))
    }
}

impl InplaceOp1 for Update<'_> {
    fn name(&self) -> &'static str {
        "adamw"
    }

    fn cpu_fwd(&self, s: &mut CpuStorage, l: &Layout) -> candle_core::Result<()> {
        let CpuStorage::F32(w) = s else {
            candle_core::bail!("adamw updates f32 weights")
        };
        let Some((start, end)) = l.contiguous_offsets() else {
            candle_core::bail!("adamw expects contiguous weights")
        };
        let mut guard = self.moments.lock().expect("moments lock");
        let w = w[start..end].par_chunks_mut(CHUNK);
        let g = self.grad.par_chunks(CHUNK);
        match &mut **guard {
            Moments::F32 { m, v } => w
                .zip(m.par_chunks_mut(CHUNK))
                .zip(v.par_chunks_mut(CHUNK))
                .zip(g)
                .for_each(|(((w, m), v), g)| {
                    for i in 0..w.len() {
                        (m[i], v[i], w[i]) = self.one(w[i], m[i], v[i], g[i]);
                    }
                }),
            Moments::Bf16 { m, v } => w
                .zip(m.par_chunks_mut(CHUNK))
                .zip(v.par_chunks_mut(CHUNK))
                .zip(g)
                .enumerate()
                .for_each(|(chunk, (((w, m), v), g))| {
                    for i in 0..w.len() {
                        let (new_m, new_v, new_w) =
                            self.one(w[i], m[i].to_f32(), v[i].to_f32(), g[i]);
                        let bits = mix(self.seed ^ (chunk * CHUNK + i) as u64);
                        m[i] = bf16_stochastic(new_m, bits as u16);
                        v[i] = bf16_stochastic(new_v, (bits >> 16) as u16);
                        w[i] = new_w;
                    }
                }),
        }
        Ok(())
    }
}

impl AdamW {
    /// Fresh state for `vars` (moments at zero).
    pub fn new(config: AdamWConfig, vars: &[&Var]) -> Self {
        Self {
            config,
            steps: 0,
            moments: vars
                .iter()
                .map(|v| Moments::zeros(config.moments, v.elem_count()))
                .collect(),
            decay: vars.iter().map(|v| v.rank() >= 2).collect(),
        }
    }

    /// Applies one update with learning rate `lr` and gradients `grads` (one per variable, in
    /// the order given at construction).
    pub fn step(&mut self, vars: &[&Var], grads: &[Vec<f32>], lr: f64) -> Result<()> {
        if vars.len() != self.moments.len() || grads.len() != vars.len() {
            return Err(Error::Invalid(
                "optimizer state does not match the variables".into(),
            ));
        }
        self.steps += 1;
        let t = self.steps as i32;
        let bias = (
            (1.0 - self.config.beta1.powi(t)) as f32,
            (1.0 - self.config.beta2.powi(t)) as f32,
        );
        for (index, ((var, grad), (moments, &decay))) in vars
            .iter()
            .zip(grads)
            .zip(self.moments.iter_mut().zip(&self.decay))
            .enumerate()
        {
            let update = Update {
                grad,
                moments: Mutex::new(moments),
                lr: lr as f32,
                decay: if decay {
                    self.config.weight_decay as f32
                } else {
                    0.0
                },
                c: self.config,
                bias,
                seed: mix((self.steps << 24) ^ index as u64) << 32,
            };
            var.as_tensor().inplace_op1(&update)?;
        }
        Ok(())
    }
}

/// Gradients summed over micro-batches, one f32 buffer per variable.
#[derive(Debug)]
pub struct GradAccumulator {
    pub sums: Vec<Vec<f32>>,
}

impl GradAccumulator {
    pub fn new(vars: &[&Var]) -> Self {
        Self {
            sums: vars.iter().map(|v| vec![0.0; v.elem_count()]).collect(),
        }
    }

    /// The sum of `var` (one of `vars`, the list given at construction), to add into
    /// directly.
    pub fn sum_of(&mut self, vars: &[&Var], var: &Var) -> Option<&mut [f32]> {
        let i = vars
            .iter()
            .position(|v| v.as_tensor().id() == var.as_tensor().id())?;
        Some(&mut self.sums[i])
    }

    /// Zeroes every buffer.
    pub fn clear(&mut self) {
        for s in &mut self.sums {
            s.par_chunks_mut(CHUNK).for_each(|c| c.fill(0.0));
        }
    }

    /// Adds `scale ×` each variable's gradient (a variable the loss did not reach adds 0).
    pub fn add(
        &mut self,
        vars: &[&Var],
        grads: &candle_core::backprop::GradStore,
        scale: f32,
    ) -> Result<()> {
        for (var, sum) in vars.iter().zip(&mut self.sums) {
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            let g: &Tensor = g;
            with_data::<f32, _>(&g.to_dtype(candle_core::DType::F32)?, "gradient", |g| {
                sum.par_chunks_mut(CHUNK)
                    .zip(g.par_chunks(CHUNK))
                    .for_each(|(s, g)| s.iter_mut().zip(g).for_each(|(s, g)| *s += scale * g));
                Ok(())
            })?;
        }
        Ok(())
    }

    /// The global L2 norm of all gradients, summed in f64 over fixed chunks, in order.
    pub fn norm(&self) -> f64 {
        let mut total = 0f64;
        for s in &self.sums {
            let parts: Vec<f64> = s
                .par_chunks(CHUNK)
                .map(|c| c.iter().map(|&v| v as f64 * v as f64).sum())
                .collect();
            total += parts.iter().sum::<f64>();
        }
        total.sqrt()
    }

    /// Multiplies every gradient by `factor`.
    pub fn scale(&mut self, factor: f32) {
        for s in &mut self.sums {
            s.par_chunks_mut(CHUNK)
                .for_each(|c| c.iter_mut().for_each(|v| *v *= factor));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn schedule_warms_up_then_follows_a_cosine() {
        let s = Schedule {
            peak: 1e-3,
            warmup: 10,
            total: 110,
            min_ratio: 0.1,
        };
        assert!((s.lr(0) - 1e-4).abs() < 1e-12);
        assert!((s.lr(9) - 1e-3).abs() < 1e-12);
        assert!((s.lr(10) - 1e-3).abs() < 1e-12);
        assert!(
            (s.lr(60) - 0.55e-3).abs() < 1e-9,
            "half-way: mean of peak and floor"
        );
        assert!((s.lr(110) - 1e-4).abs() < 1e-12);
        assert!((s.lr(500) - 1e-4).abs() < 1e-12, "stays at the floor");
    }

    /// Two updates by hand for one weight, against the formula.
    #[test]
    fn adamw_update_by_hand() {
        let var = Var::from_tensor(&Tensor::new(&[[1.0f32, -2.0]], &Device::Cpu).unwrap()).unwrap();
        let config = AdamWConfig {
            weight_decay: 0.1,
            moments: MomentPrecision::F32,
            ..AdamWConfig::default()
        };
        let mut opt = AdamW::new(config, &[&var]);
        let (lr, g) = (0.01f64, [0.5f32, -0.25]);
        let mut want = [1.0f64, -2.0];
        let (mut m, mut v) = ([0f64; 2], [0f64; 2]);
        for t in 1..=2 {
            opt.step(&[&var], &[g.to_vec()], lr).unwrap();
            for i in 0..2 {
                m[i] = 0.9 * m[i] + 0.1 * g[i] as f64;
                v[i] = 0.999 * v[i] + 0.001 * (g[i] as f64).powi(2);
                let mh = m[i] / (1.0 - 0.9f64.powi(t));
                let vh = v[i] / (1.0 - 0.999f64.powi(t));
                want[i] -= lr * (mh / (vh.sqrt() + 1e-8) + 0.1 * want[i]);
            }
        }
        let got: Vec<f32> = var.flatten_all().unwrap().to_vec1().unwrap();
        for (a, b) in got.iter().zip(want) {
            assert!((*a as f64 - b).abs() < 1e-6, "{got:?} vs {want:?}");
        }
        assert_eq!(opt.steps, 2);
    }

    /// Over every possible 16 random bits, the rounded values average to the input exactly.
    #[test]
    fn stochastic_rounding_is_unbiased() {
        for x in [1.0f32 + 1.0 / 512.0, -5.123_457, 1.234e-20, 0.1] {
            let sum: f64 = (0..=u16::MAX).map(|r| bf16_stochastic(x, r).to_f64()).sum();
            let mean = sum / 65536.0;
            let below = bf16::from_bits((x.to_bits() >> 16) as u16).to_f64();
            assert!(
                (mean - x as f64).abs() <= 1e-6 * x.abs() as f64,
                "{x}: mean {mean}, truncated {below}"
            );
        }
        assert!(bf16_stochastic(f32::NAN, 7).is_nan());
        assert_eq!(bf16_stochastic(f32::INFINITY, 7).to_f32(), f32::INFINITY);
    }

    /// Under a constant gradient `g`, `v` must approach `g²` (`1 − β2^t` of it). Rounded to
    /// the nearest bf16 it would stall far below (the module docs say why); stochastic
    /// rounding follows the f32 moments.
    #[test]
    fn bf16_second_moment_follows_a_constant_gradient() {
        let n = 256;
        let var =
            Var::from_tensor(&Tensor::zeros(n, candle_core::DType::F32, &Device::Cpu).unwrap())
                .unwrap();
        let mut opt = AdamW::new(AdamWConfig::default(), &[&var]);
        let g = vec![0.5f32; n];
        let steps = 3000;
        for _ in 0..steps {
            opt.step(&[&var], std::slice::from_ref(&g), 1e-6).unwrap();
        }
        let Moments::Bf16 { m, v } = &opt.moments[0] else {
            panic!("bf16 moments by default")
        };
        let mean = |x: &[bf16]| x.iter().map(|v| v.to_f64()).sum::<f64>() / n as f64;
        let want_v = (1.0 - 0.999f64.powi(steps)) * 0.25;
        assert!(
            (mean(v) - want_v).abs() < 0.01 * want_v,
            "v {} vs {want_v}",
            mean(v)
        );
        assert!((mean(m) - 0.5).abs() < 0.005, "m {}", mean(m));

        // The same recurrence rounded to the nearest bf16 stalls.
        let mut nearest = bf16::ZERO;
        for _ in 0..steps {
            nearest = bf16::from_f32(0.999 * nearest.to_f32() + 0.001 * 0.25);
        }
        assert!(
            nearest.to_f64() < 0.5 * want_v,
            "nearest rounding reached {nearest}"
        );
    }
}
