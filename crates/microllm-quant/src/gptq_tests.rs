//! GPTQ oracle tests on synthetic layers: GPTQ must beat RTN on the layer-output error when the
//! inputs are correlated, match RTN when they are not, and keep its bookkeeping consistent.

use crate::testutil::Rng;
use crate::{
    GptqOptions, GptqStats, HessianAccumulator, ObsTarget, QuantScheme, QuantizedWeight,
    gptq_quantize, gptq_quantize_tensor, obs_compress, obs_compress_factored, rtn_quantize,
};

pub(crate) const OUT: usize = 48;
pub(crate) const IN: usize = 128;
const TOKENS: usize = 2048;
/// GPTQ's output error must be below this fraction of RTN's on correlated inputs.
const GPTQ_VS_RTN_MAX_RATIO: f64 = 0.8;

/// `X = Z A` with Gaussian `Z` and a dense mixing `A` with uneven column scales, so `H = 2 X^T X
/// / n` is far from diagonal and its diagonal varies (which act-order exploits).
pub(crate) fn correlated_inputs(rng: &mut Rng, mix: bool) -> Vec<f32> {
    let z = rng.normal_vec(TOKENS * IN);
    if !mix {
        return z;
    }
    let col_scale: Vec<f32> = (0..IN).map(|_| 0.2 + 2.0 * rng.uniform() as f32).collect();
    let a: Vec<f32> = (0..IN * IN)
        .map(|k| {
            let diag = if k / IN == k % IN { 0.3 } else { 0.0 };
            (diag + rng.normal() / (IN as f32).sqrt()) * col_scale[k % IN]
        })
        .collect();
    let mut x = vec![0.0f32; TOKENS * IN];
    for t in 0..TOKENS {
        for k in 0..IN {
            let zk = z[t * IN + k];
            for j in 0..IN {
                x[t * IN + j] += zk * a[k * IN + j];
            }
        }
    }
    x
}

pub(crate) fn hessian_of(x: &[f32]) -> Vec<f64> {
    let mut acc = HessianAccumulator::new(IN);
    // Two batches, as a calibration loop would feed them.
    acc.add_batch_slice(&x[..TOKENS / 2 * IN]).unwrap();
    acc.add_batch_slice(&x[TOKENS / 2 * IN..]).unwrap();
    acc.hessian().to_vec()
}

/// `sum_r d_r^T H d_r` with `d = W - dequant(Q)`: proportional to `||W X^T - Q X^T||^2`.
fn output_error(w: &[f32], q: &QuantizedWeight, h: &[f64]) -> f64 {
    let dq = q.dequantize_vec();
    let n = q.in_features();
    let mut total = 0.0;
    for r in 0..q.out_features() {
        let d: Vec<f64> = (0..n)
            .map(|j| (w[r * n + j] - dq[r * n + j]) as f64)
            .collect();
        for i in 0..n {
            let hd: f64 = (0..n).map(|j| h[i * n + j] * d[j]).sum();
            total += d[i] * hd;
        }
    }
    total
}

fn opts(act_order: bool, static_groups: bool) -> GptqOptions {
    GptqOptions {
        block_size: 32, // several blocks per row, to exercise the lazy updates
        act_order,
        static_groups,
        // Min/max grids, so that GPTQ on a diagonal Hessian is exactly RTN.
        clip_search: None,
        ..GptqOptions::default()
    }
}

#[test]
fn gptq_beats_rtn_on_correlated_inputs() {
    let mut rng = Rng::new(10);
    let w = rng.normal_vec(OUT * IN);
    let h = hessian_of(&correlated_inputs(&mut rng, true));
    let cases = [
        (None, false, false),
        (None, true, false),
        (Some(32), false, false),
        (Some(32), true, false),
        (Some(32), true, true),
    ];
    for bits in [3, 4] {
        for sym in [false, true] {
            for (group, act, stat) in cases {
                let s = QuantScheme::new(bits, group, sym).unwrap();
                let rtn = output_error(&w, &rtn_quantize(&w, [OUT, IN], s).unwrap(), &h);
                let (q, stats) = gptq_quantize(&w, [OUT, IN], &h, s, opts(act, stat)).unwrap();
                q.validate("w").unwrap();
                let gptq = output_error(&w, &q, &h);
                let ratio = gptq / rtn;
                eprintln!(
                    "bits {bits} sym {sym:5} group {group:?} act_order {act:5} static {stat:5}: \
                     GPTQ/RTN output error {ratio:.3} (loss {:.3e})",
                    stats.loss
                );
                assert!(ratio < GPTQ_VS_RTN_MAX_RATIO, "ratio {ratio}");
                assert_eq!(stats.damp_retries, 0);
            }
        }
    }
}

#[test]
fn loss_is_half_the_damped_quadratic_error() {
    // OBS bookkeeping: the per-column losses add up to 1/2 d^T (H + lambda I) d exactly.
    let mut rng = Rng::new(11);
    let w = rng.normal_vec(OUT * IN);
    let h = hessian_of(&correlated_inputs(&mut rng, true));
    for act in [false, true] {
        let s = QuantScheme::new(4, Some(32), false).unwrap();
        let (q, stats) = gptq_quantize(&w, [OUT, IN], &h, s, opts(act, false)).unwrap();
        let mut hd = h.clone();
        for j in 0..IN {
            hd[j * IN + j] += stats.damp;
        }
        let want = output_error(&w, &q, &hd) / 2.0;
        assert!(
            (stats.loss - want).abs() <= 1e-6 * want,
            "{} vs {want}",
            stats.loss
        );
    }
}

#[test]
fn diagonal_hessian_gives_rtn() {
    // With no correlation there is no error to propagate: GPTQ rounds like RTN exactly.
    let mut rng = Rng::new(12);
    let w = rng.normal_vec(OUT * IN);
    let h: Vec<f64> = (0..IN * IN)
        .map(|k| {
            if k / IN == k % IN {
                1.0 + (k % 7) as f64
            } else {
                0.0
            }
        })
        .collect();
    for (group, act) in [(None, false), (Some(16), false), (Some(16), true)] {
        let s = QuantScheme::new(3, group, true).unwrap();
        let rtn = rtn_quantize(&w, [OUT, IN], s).unwrap();
        let (q, _) = gptq_quantize(&w, [OUT, IN], &h, s, opts(act, false)).unwrap();
        if act {
            // Groups follow the processing order, so only the error level is comparable.
            let ratio = output_error(&w, &q, &h) / output_error(&w, &rtn, &h);
            assert!((0.5..1.5).contains(&ratio), "{ratio}");
        } else {
            assert_eq!(q.codes, rtn.codes);
            assert_eq!(q.scales, rtn.scales);
        }
    }
}

#[test]
fn uncorrelated_inputs_give_close_to_rtn() {
    let mut rng = Rng::new(13);
    let w = rng.normal_vec(OUT * IN);
    let h = hessian_of(&correlated_inputs(&mut rng, false));
    for bits in [3, 4] {
        let s = QuantScheme::new(bits, None, false).unwrap();
        let rtn = output_error(&w, &rtn_quantize(&w, [OUT, IN], s).unwrap(), &h);
        let (q, _) = gptq_quantize(&w, [OUT, IN], &h, s, opts(false, false)).unwrap();
        let ratio = output_error(&w, &q, &h) / rtn;
        eprintln!("bits {bits} uncorrelated: GPTQ/RTN output error {ratio:.3}");
        assert!((0.85..=1.02).contains(&ratio), "{ratio}");
    }
}

#[test]
fn act_order_bookkeeping_and_dequant_rule() {
    let mut rng = Rng::new(14);
    let w = rng.normal_vec(OUT * IN);
    let h = hessian_of(&correlated_inputs(&mut rng, true));
    let s = QuantScheme::new(4, Some(32), false).unwrap();
    let (q, _) = gptq_quantize(&w, [OUT, IN], &h, s, opts(true, false)).unwrap();
    q.validate("w").unwrap();
    let perm = q.perm.clone().unwrap();
    let g_idx = q.g_idx.clone().unwrap();
    // perm is by descending diag(H); g_idx follows the processing order and is non-monotonic.
    for p in 1..IN {
        let (a, b) = (perm[p - 1] as usize, perm[p] as usize);
        assert!(h[a * IN + a] >= h[b * IN + b]);
    }
    for (p, &c) in perm.iter().enumerate() {
        assert_eq!(g_idx[c as usize] as usize, p / 32);
    }
    assert!(g_idx.windows(2).any(|x| x[1] < x[0]));
    let dq = q.dequantize_vec();
    for r in 0..OUT {
        for j in 0..IN {
            let k = r * 4 + g_idx[j] as usize;
            let code = q.codes[r * IN + j];
            assert!(code <= 15);
            assert_eq!(
                dq[r * IN + j],
                q.scales[k] * (code as f32 - q.zeros[k] as f32)
            );
        }
    }
    // Static groups keep contiguous groups even with act-order.
    let (q, _) = gptq_quantize(&w, [OUT, IN], &h, s, opts(true, true)).unwrap();
    assert!(q.g_idx.is_none() && q.perm.is_some());
    assert_eq!(q.group_of(33), 1);
}

#[test]
fn dead_columns_are_zeroed() {
    let mut rng = Rng::new(15);
    let w = rng.normal_vec(OUT * IN);
    let mut x = correlated_inputs(&mut rng, true);
    for t in 0..TOKENS {
        x[t * IN + 5] = 0.0;
        x[t * IN + 70] = 0.0;
    }
    let h = hessian_of(&x);
    let s = QuantScheme::new(4, Some(32), true).unwrap();
    let (q, stats) = gptq_quantize(&w, [OUT, IN], &h, s, opts(true, false)).unwrap();
    assert_eq!(stats.dead_columns, 2);
    let dq = q.dequantize_vec();
    for r in 0..OUT {
        assert_eq!(dq[r * IN + 5], 0.0);
        assert_eq!(dq[r * IN + 70], 0.0);
    }
}

#[test]
fn damping_is_retried_on_indefinite_hessians() {
    // [[1, 2], [2, 1]] has eigenvalues 3 and -1: Cholesky succeeds once lambda > 1.
    let h = [1.0, 2.0, 2.0, 1.0];
    let s = QuantScheme::new(4, None, false).unwrap();
    let (q, stats) = gptq_quantize(&[0.5, -0.25], [1, 2], &h, s, GptqOptions::default()).unwrap();
    q.validate("w").unwrap();
    assert_eq!(stats.damp_retries, 3);
    assert!((stats.damp_percent - 10.0).abs() < 1e-9);
    let h = [-1.0, 0.0, 0.0, -1.0];
    assert!(gptq_quantize(&[0.5, -0.25], [1, 2], &h, s, GptqOptions::default()).is_err());
}

#[test]
fn bad_inputs_are_errors() {
    let h = vec![0.0; 576 * 576];
    let s = QuantScheme::new(4, Some(128), true).unwrap();
    let msg = gptq_quantize(&vec![0.0; 576], [1, 576], &h, s, GptqOptions::default())
        .unwrap_err()
        .to_string();
    assert!(msg.contains("[1, 576]") && msg.contains("128"), "{msg}");
    let s = QuantScheme::new(4, None, true).unwrap();
    assert!(gptq_quantize(&[0.0; 2], [1, 2], &[1.0; 3], s, GptqOptions::default()).is_err());
}

#[test]
fn tensor_entry_point_matches_slices() {
    let mut rng = Rng::new(16);
    let w = rng.normal_vec(8 * 16);
    let x = rng.normal_vec(64 * 16);
    let mut acc = HessianAccumulator::new(16);
    acc.add_batch_slice(&x).unwrap();
    let t = candle_core::Tensor::from_vec(w.clone(), (8, 16), &candle_core::Device::Cpu).unwrap();
    let s = QuantScheme::new(4, Some(8), false).unwrap();
    let o = GptqOptions::default();
    let a = gptq_quantize_tensor(&t, &mut acc, s, o).unwrap();
    let b = gptq_quantize(&w, [8, 16], acc.hessian(), s, o).unwrap();
    assert_eq!(a.0, b.0);
    // Everything but the wall-clock timings.
    let untimed = |s: GptqStats| GptqStats {
        timings: Default::default(),
        ..s
    };
    assert_eq!(untimed(a.1), untimed(b.1));
}

/// GPTQ on the FP8 grid: the same solve, each column rounded to its nearest E4M3 value at the
/// group's scale, beats FP8 round-to-nearest on correlated inputs.
#[test]
fn fp8_codes_are_values_and_beat_rtn() {
    let mut rng = Rng::new(19);
    let w = rng.normal_vec(OUT * IN);
    let h = hessian_of(&correlated_inputs(&mut rng, true));
    for (group, act) in [(None, false), (Some(64), true)] {
        let s = QuantScheme::fp8(group).unwrap();
        let (q, _) = gptq_quantize(&w, [OUT, IN], &h, s, opts(act, false)).unwrap();
        q.validate("w").unwrap();
        assert!(q.zeros.iter().all(|&z| z == 0));
        let rtn = output_error(&w, &rtn_quantize(&w, [OUT, IN], s).unwrap(), &h);
        let ratio = output_error(&w, &q, &h) / rtn;
        eprintln!("fp8 group {group:?}: GPTQ/RTN output error {ratio:.3}");
        assert!(ratio < 1.0, "fp8 group {group:?}: {ratio}");
    }
}

#[test]
fn every_bit_width_stays_in_range_and_beats_rtn() {
    let mut rng = Rng::new(18);
    let w = rng.normal_vec(OUT * IN);
    let h = hessian_of(&correlated_inputs(&mut rng, true));
    for bits in 2..=8 {
        let s = QuantScheme::new(bits, Some(64), bits % 2 == 0).unwrap();
        let (q, _) = gptq_quantize(&w, [OUT, IN], &h, s, opts(bits > 4, false)).unwrap();
        q.validate("w").unwrap();
        assert!(q.codes.iter().all(|&c| u32::from(c) <= s.maxq()));
        let rtn = output_error(&w, &rtn_quantize(&w, [OUT, IN], s).unwrap(), &h);
        let ratio = output_error(&w, &q, &h) / rtn;
        eprintln!("bits {bits}: GPTQ/RTN output error {ratio:.3}");
        assert!(ratio < 1.0, "bits {bits}: {ratio}");
    }
}

#[test]
fn clip_search_lowers_the_output_error() {
    let mut rng = Rng::new(21);
    let w = rng.normal_vec(OUT * IN);
    let h = hessian_of(&correlated_inputs(&mut rng, true));
    for (bits, sym, act) in [(4, true, true), (3, false, false), (4, false, true)] {
        let s = QuantScheme::new(bits, Some(32), sym).unwrap();
        let plain = opts(act, act);
        let searched = GptqOptions {
            clip_search: Some(crate::ClipSearch::default()),
            ..plain
        };
        let (q0, _) = gptq_quantize(&w, [OUT, IN], &h, s, plain).unwrap();
        let (q1, _) = gptq_quantize(&w, [OUT, IN], &h, s, searched).unwrap();
        let (e0, e1) = (output_error(&w, &q0, &h), output_error(&w, &q1, &h));
        eprintln!("bits {bits} sym {sym} act {act}: min/max {e0:.4}, searched {e1:.4}");
        assert!(e1 < e0, "bits {bits} sym {sym} act {act}: {e1} >= {e0}");
    }
}

#[test]
fn a_shared_factor_gives_the_same_solve_as_a_private_one() {
    let mut rng = Rng::new(17);
    let h = hessian_of(&correlated_inputs(&mut rng, true));
    let s = QuantScheme::new(4, Some(32), true).unwrap();
    for act in [false, true] {
        let o = opts(act, false);
        let factor = crate::ObsFactor::new(&h[..], IN, o).unwrap();
        assert_eq!(factor.in_features(), IN);
        assert_eq!(factor.hessian_diagonal()[3], h[3 * IN + 3]);
        for seed in [1, 2] {
            let w = Rng::new(seed).normal_vec(OUT * IN);
            let target = ObsTarget {
                scheme: Some(s),
                mask: None,
                rule: None,
            };
            let private = obs_compress(&w, [OUT, IN], &h[..], target, o).unwrap();
            let shared = obs_compress_factored(&w, [OUT, IN], &factor, target, o).unwrap();
            assert_eq!(private.weight, shared.weight);
            assert_eq!(private.quantized, shared.quantized);
            assert_eq!(private.stats.loss, shared.stats.loss);
        }
        // A weight of another width, or other options, cannot use it.
        let narrow = vec![0.5f32; OUT * (IN / 2)];
        let target = ObsTarget {
            scheme: Some(s),
            mask: None,
            rule: None,
        };
        let err = obs_compress_factored(&narrow, [OUT, IN / 2], &factor, target, o).unwrap_err();
        assert!(err.to_string().contains("cannot use the factor"), "{err}");
        let w = vec![0.5f32; OUT * IN];
        let err =
            obs_compress_factored(&w, [OUT, IN], &factor, target, opts(!act, false)).unwrap_err();
        assert!(err.to_string().contains("differ"), "{err}");
    }
}
