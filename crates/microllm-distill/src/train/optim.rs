//! AdamW, the learning-rate schedule and global-norm clipping, on plain f32 buffers.
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

use std::sync::Mutex;

use candle_core::{CpuStorage, InplaceOp1, Layout, Tensor, Var};
use microllm_core::{Error, Result};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::real::with_data;

/// Elements per parallel unit of the element-wise passes and per partial sum of the norm.
const CHUNK: usize = 1 << 15;

/// AdamW's hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
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

/// One trained weight's optimizer state.
#[derive(Debug, Clone, PartialEq)]
pub struct Moments {
    pub m: Vec<f32>,
    pub v: Vec<f32>,
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
        let Moments { m, v } = &mut **guard;
        let (b1, b2, eps) = (self.c.beta1 as f32, self.c.beta2 as f32, self.c.eps as f32);
        let (lr, decay, (c1, c2)) = (self.lr, self.decay, self.bias);
        w[start..end]
            .par_chunks_mut(CHUNK)
            .zip(m.par_chunks_mut(CHUNK))
            .zip(v.par_chunks_mut(CHUNK))
            .zip(self.grad.par_chunks(CHUNK))
            .for_each(|(((w, m), v), g)| {
                for i in 0..w.len() {
                    m[i] = b1 * m[i] + (1.0 - b1) * g[i];
                    v[i] = b2 * v[i] + (1.0 - b2) * g[i] * g[i];
                    let step = (m[i] / c1) / ((v[i] / c2).sqrt() + eps);
                    w[i] -= lr * (step + decay * w[i]);
                }
            });
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
                .map(|v| Moments {
                    m: vec![0.0; v.elem_count()],
                    v: vec![0.0; v.elem_count()],
                })
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
        for ((var, grad), (moments, &decay)) in vars
            .iter()
            .zip(grads)
            .zip(self.moments.iter_mut().zip(&self.decay))
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
}
