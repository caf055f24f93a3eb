//! Oracle tests of the OBS sweep's pruning (SparseGPT): exact sparsity patterns, zeros where
//! pruned, the loss bookkeeping, and compensation that beats plain zeroing.

use crate::gptq_tests::{IN, OUT, correlated_inputs, hessian_of};
use crate::testutil::Rng;
use crate::{GptqOptions, ObsTarget, PruneRule, QuantScheme, obs_compress};

/// `sum_r d_r^T H d_r` with `d = W - V`.
fn output_error(w: &[f32], v: &[f32], h: &[f64]) -> f64 {
    let mut total = 0.0;
    for r in 0..OUT {
        let d: Vec<f64> = (0..IN)
            .map(|j| (w[r * IN + j] - v[r * IN + j]) as f64)
            .collect();
        for i in 0..IN {
            total += d[i] * (0..IN).map(|j| h[i * IN + j] * d[j]).sum::<f64>();
        }
    }
    total
}

fn layer(seed: u64) -> (Vec<f32>, Vec<f64>) {
    let mut rng = Rng::new(seed);
    let w = rng.normal_vec(OUT * IN);
    (w, hessian_of(&correlated_inputs(&mut rng, true)))
}

fn opts() -> GptqOptions {
    GptqOptions {
        block_size: 32,
        ..GptqOptions::default()
    }
}

fn prune(rule: PruneRule, scheme: Option<QuantScheme>) -> (Vec<f32>, Vec<f64>, crate::ObsResult) {
    let (w, h) = layer(31);
    let target = ObsTarget {
        scheme,
        mask: None,
        rule: Some(rule),
    };
    let r = obs_compress(&w, [OUT, IN], &h, target, opts()).unwrap();
    (w, h, r)
}

#[test]
fn fraction_prunes_exactly_that_share_of_every_row_block() {
    let (_, _, r) = prune(PruneRule::Fraction(0.5), None);
    for row in r.pruned.chunks(IN) {
        for block in row.chunks(32) {
            assert_eq!(block.iter().filter(|&&p| p).count(), 16);
        }
    }
    for (v, &p) in r.weight.iter().zip(&r.pruned) {
        assert!(!p || *v == 0.0);
    }
}

#[test]
fn n_of_m_keeps_n_in_every_m() {
    for (n, m) in [(2, 4), (4, 8)] {
        let (_, _, r) = prune(PruneRule::NOfM { n, m }, None);
        for (vals, mask) in r.weight.chunks(m).zip(r.pruned.chunks(m)) {
            assert_eq!(mask.iter().filter(|&&p| !p).count(), n);
            assert!(vals.iter().filter(|&&v| v != 0.0).count() <= n);
        }
    }
}

#[test]
fn sparsegpt_beats_zeroing_by_the_same_mask_and_magnitude() {
    let (w, h, r) = prune(PruneRule::Fraction(0.5), None);
    let zeroed: Vec<f32> = w
        .iter()
        .zip(&r.pruned)
        .map(|(&x, &p)| if p { 0.0 } else { x })
        .collect();
    // Magnitude: the smallest half of each row, no update.
    let mut magnitude = w.clone();
    for row in magnitude.chunks_mut(IN) {
        let mut order: Vec<usize> = (0..IN).collect();
        order.sort_by(|&a, &b| row[a].abs().total_cmp(&row[b].abs()));
        for &j in &order[..IN / 2] {
            row[j] = 0.0;
        }
    }
    let e = output_error(&w, &r.weight, &h);
    let e_zeroed = output_error(&w, &zeroed, &h);
    let e_magnitude = output_error(&w, &magnitude, &h);
    assert!(e < 0.7 * e_zeroed, "{e} vs zeroing {e_zeroed}");
    assert!(e < 0.7 * e_magnitude, "{e} vs magnitude {e_magnitude}");
}

#[test]
fn loss_is_half_the_damped_quadratic_error_when_pruning() {
    let (w, h, r) = prune(PruneRule::NOfM { n: 2, m: 4 }, None);
    let mut hd = h.clone();
    for j in 0..IN {
        hd[j * IN + j] += r.stats.damp;
    }
    let want = output_error(&w, &r.weight, &hd) / 2.0;
    assert!(
        (r.stats.loss - want).abs() <= 1e-6 * want,
        "{} vs {want}",
        r.stats.loss
    );
}

#[test]
fn joint_prune_and_quantize_stores_pruned_weights_as_zero_points() {
    for sym in [true, false] {
        let scheme = QuantScheme::new(4, Some(32), sym).unwrap();
        let (_, _, r) = prune(PruneRule::NOfM { n: 2, m: 4 }, Some(scheme));
        let q = r.quantized.as_ref().unwrap();
        q.validate("w").unwrap();
        let dq = q.dequantize_vec();
        assert_eq!(dq, r.weight, "the dense result is the dequantized codes");
        for (k, &p) in r.pruned.iter().enumerate() {
            if p {
                assert_eq!(dq[k], 0.0);
                assert_eq!(q.codes[k], q.zeros[(k / IN) * 4 + (k % IN) / 32]);
            }
        }
    }
}

#[test]
fn a_fixed_mask_is_honoured_and_compensated() {
    let (w, h) = layer(32);
    let mask: Vec<bool> = (0..OUT * IN).map(|k| (k * 7) % 3 == 0).collect();
    let target = ObsTarget {
        scheme: None,
        mask: Some(&mask),
        rule: None,
    };
    let r = obs_compress(&w, [OUT, IN], &h, target, opts()).unwrap();
    assert_eq!(r.pruned, mask);
    let zeroed: Vec<f32> = w
        .iter()
        .zip(&mask)
        .map(|(&x, &p)| if p { 0.0 } else { x })
        .collect();
    assert!(output_error(&w, &r.weight, &h) < output_error(&w, &zeroed, &h));
}

#[test]
fn bad_targets_are_errors() {
    let (w, h) = layer(33);
    let run = |rule, act_order| {
        let target = ObsTarget {
            scheme: None,
            mask: None,
            rule: Some(rule),
        };
        let o = GptqOptions {
            act_order,
            ..opts()
        };
        obs_compress(&w, [OUT, IN], &h, target, o)
            .unwrap_err()
            .to_string()
    };
    assert!(run(PruneRule::Fraction(1.0), false).contains("[0, 1)"));
    assert!(run(PruneRule::NOfM { n: 4, m: 4 }, false).contains("0 < N < M"));
    assert!(run(PruneRule::NOfM { n: 2, m: 3 }, false).contains("multiple of 3"));
    assert!(run(PruneRule::NOfM { n: 2, m: 4 }, true).contains("act-order"));
}
