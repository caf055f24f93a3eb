//! Test support: analytic gradients against central finite differences, in f64.
//!
//! `assert_gradients` differentiates `sum(f(inputs) · R)` for a fixed random `R` (so every
//! output element matters, with a different weight) through candle's autograd, then perturbs
//! input entries by ±h and compares. In f64 with h = 1e-5 the finite difference is accurate to
//! about 1e-9 relative, so the tolerance below can only be met by a correct derivative.

use candle_core::{D, DType, Device, Tensor, Var};

/// Step of the central differences.
const STEP: f64 = 1e-5;
/// Allowed |analytic − numeric| relative to max(1, |numeric|).
pub const GRAD_TOLERANCE: f64 = 1e-6;
/// Entries of each input checked (all of them when fewer).
const CHECKED_PER_INPUT: usize = 60;

/// Deterministic standard-normal values (SplitMix64 + Box-Muller), f64.
pub fn randn(shape: &[usize], seed: u64) -> Tensor {
    let n: usize = shape.iter().product();
    let mut rng = microllm_core::rng::SplitMix64::new(
        seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0xd1b5_4a32_d192_ed03,
    );
    let mut next = || rng.next_f64();
    let values: Vec<f64> = (0..n)
        .map(|_| {
            let (u, v) = (next().max(1e-300), next());
            (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
        })
        .collect();
    Tensor::from_vec(values, shape, &Device::Cpu).unwrap()
}

/// Largest absolute difference of two tensors of the same shape.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a.to_dtype(DType::F64).unwrap() - b.to_dtype(DType::F64).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(D::Minus1)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

fn scalar_of(
    f: &dyn Fn(&[Tensor]) -> candle_core::Result<Tensor>,
    xs: &[Tensor],
    r: &Tensor,
) -> f64 {
    (f(xs).unwrap() * r)
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

/// Checks the gradients of `f` with respect to every input (f64 tensors).
pub fn assert_gradients(inputs: &[Tensor], f: impl Fn(&[Tensor]) -> candle_core::Result<Tensor>) {
    let vars: Vec<Var> = inputs
        .iter()
        .map(|t| Var::from_tensor(t).unwrap())
        .collect();
    let tensors: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let out = f(&tensors).unwrap();
    let r = randn(out.dims(), 99);
    let grads = (&out * &r).unwrap().sum_all().unwrap().backward().unwrap();
    for (i, var) in vars.iter().enumerate() {
        let analytic: Vec<f64> = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("no gradient for input {i}"))
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let base: Vec<f64> = inputs[i].flatten_all().unwrap().to_vec1().unwrap();
        let stride = (base.len() / CHECKED_PER_INPUT).max(1);
        for at in (0..base.len()).step_by(stride) {
            let probe = |delta: f64| {
                let mut v = base.clone();
                v[at] += delta;
                let mut xs = inputs.to_vec();
                xs[i] = Tensor::from_vec(v, inputs[i].dims(), &Device::Cpu).unwrap();
                scalar_of(&f, &xs, &r)
            };
            let numeric = (probe(STEP) - probe(-STEP)) / (2.0 * STEP);
            let err = (analytic[at] - numeric).abs() / numeric.abs().max(1.0);
            assert!(
                err < GRAD_TOLERANCE,
                "input {i} entry {at}: analytic {} vs numeric {numeric} (error {err:e})",
                analytic[at]
            );
        }
    }
}
