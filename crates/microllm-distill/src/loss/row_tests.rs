//! The row kernel's gradients against central finite differences of its own loss value, in
//! f64, for every loss alone and mixed, at temperature 1 and 2, with a live and a top-k
//! teacher; and the top-k path with k = vocabulary against the live one.

use super::*;

const V: usize = 37;
const STEP: f64 = 1e-6;
/// |analytic − numeric| / max(1, |numeric|).
const TOLERANCE: f64 = 1e-7;

fn values(seed: u64, n: usize, spread: f64) -> Vec<f64> {
    let mut state = seed;
    (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((state >> 11) as f64 / (1u64 << 53) as f64 - 0.5) * spread
        })
        .collect()
}

const SCALE: RowScale = RowScale {
    divergence: 0.5,
    ce: 0.25,
};

/// The top-k of `t` at temperature `tau`: ids by descending logit, log-probs, log rest.
fn top_k(t: &[f64], k: usize, tau: f64) -> (Vec<u32>, Vec<f32>, f32) {
    let mut ids: Vec<u32> = (0..t.len() as u32).collect();
    ids.sort_by(|&a, &b| t[b as usize].total_cmp(&t[a as usize]));
    ids.truncate(k);
    // log Σ exp(t / τ), shifted by the maximum.
    let max = t.iter().copied().fold(f64::NEG_INFINITY, f64::max) / tau;
    let lse = max + t.iter().map(|v| (v / tau - max).exp()).sum::<f64>().ln();
    let logp: Vec<f32> = ids
        .iter()
        .map(|&i| (t[i as usize] / tau - lse) as f32)
        .collect();
    let rest: f64 = (0..t.len())
        .filter(|j| !ids.contains(&(*j as u32)))
        .map(|j| (t[j] / tau - lse).exp())
        .sum();
    (
        ids,
        logp,
        if rest > 0.0 {
            rest.ln() as f32
        } else {
            f32::NEG_INFINITY
        },
    )
}

fn loss(s: &[f64], teacher: TeacherRow<'_, f64>, label: Option<u32>, mix: &LogitMix) -> f64 {
    let mut row = s.to_vec();
    let terms = row_loss(
        &mut row,
        &mut Scratch::default(),
        teacher,
        label,
        mix,
        SCALE,
    );
    let t2 = mix.temperature * mix.temperature;
    t2 * (mix.kl * terms.kl + mix.reverse_kl * terms.reverse_kl + mix.jsd * terms.jsd)
        * SCALE.divergence
        + mix.ce * terms.ce * SCALE.ce
}

fn check(s: &[f64], teacher: TeacherRow<'_, f64>, label: Option<u32>, mix: &LogitMix) {
    let mut grad = s.to_vec();
    row_loss(
        &mut grad,
        &mut Scratch::default(),
        teacher,
        label,
        mix,
        SCALE,
    );
    for j in 0..s.len() {
        let probe = |d: f64| {
            let mut x = s.to_vec();
            x[j] += d;
            loss(&x, teacher, label, mix)
        };
        let numeric = (probe(STEP) - probe(-STEP)) / (2.0 * STEP);
        let err = (grad[j] - numeric).abs() / numeric.abs().max(1.0);
        assert!(
            err < TOLERANCE,
            "{mix:?} logit {j}: {} vs {numeric} ({err:e})",
            grad[j]
        );
    }
}

fn mixes() -> Vec<LogitMix> {
    let none = LogitMix {
        kl: 0.0,
        reverse_kl: 0.0,
        jsd: 0.0,
        ce: 0.0,
        temperature: 1.0,
    };
    let mut out = Vec::new();
    for temperature in [1.0, 2.0] {
        for mix in [
            LogitMix { kl: 1.0, ..none },
            LogitMix {
                reverse_kl: 1.0,
                ..none
            },
            LogitMix { jsd: 1.0, ..none },
            LogitMix { ce: 1.0, ..none },
            LogitMix {
                kl: 0.7,
                reverse_kl: 0.2,
                jsd: 0.4,
                ce: 0.3,
                ..none
            },
        ] {
            out.push(LogitMix { temperature, ..mix });
        }
    }
    out
}

#[test]
fn live_teacher_gradients_match_finite_differences() {
    let s = values(1, V, 8.0);
    let t = values(2, V, 8.0);
    for mix in mixes() {
        check(&s, TeacherRow::Dense(&t), Some(5), &mix);
    }
}

#[test]
fn top_k_gradients_match_finite_differences() {
    let s = values(3, V, 8.0);
    let t = values(4, V, 8.0);
    for mix in mixes() {
        for k in [1, 6, V] {
            let (ids, logp, log_rest) = top_k(&t, k, mix.temperature);
            let teacher = TeacherRow::TopK {
                ids: &ids,
                logp: &logp,
                log_rest,
            };
            check(&s, teacher, Some(11), &mix);
        }
    }
}

#[test]
fn top_k_of_the_whole_vocabulary_is_the_exact_divergence() {
    let s = values(5, V, 10.0);
    let t = values(6, V, 10.0);
    for mix in mixes() {
        let (ids, logp, log_rest) = top_k(&t, V, mix.temperature);
        assert_eq!(log_rest, f32::NEG_INFINITY);
        let stored = TeacherRow::TopK {
            ids: &ids,
            logp: &logp,
            log_rest,
        };
        let (mut g_top, mut g_live) = (s.clone(), s.clone());
        let top = row_loss(
            &mut g_top,
            &mut Scratch::default(),
            stored,
            Some(2),
            &mix,
            SCALE,
        );
        let live = row_loss(
            &mut g_live,
            &mut Scratch::default(),
            TeacherRow::Dense(&t),
            Some(2),
            &mix,
            SCALE,
        );
        // The stored log-probabilities are f32: agreement to f32 rounding.
        for (a, b) in [
            (top.kl, live.kl),
            (top.reverse_kl, live.reverse_kl),
            (top.jsd, live.jsd),
            (top.ce, live.ce),
        ] {
            assert!(
                (a - b).abs() < 1e-6 * b.abs().max(1.0),
                "{mix:?}: {top:?} vs {live:?}"
            );
        }
        for (a, b) in g_top.iter().zip(&g_live) {
            assert!((a - b).abs() < 1e-6, "{mix:?}: gradient {a} vs {b}");
        }
    }
}

#[test]
fn truncated_divergence_never_exceeds_the_exact_one() {
    let s = values(7, V, 6.0);
    let t = values(8, V, 6.0);
    let mix = mixes()[0];
    let mut exact = s.clone();
    let full = row_loss(
        &mut exact,
        &mut Scratch::default(),
        TeacherRow::Dense(&t),
        None,
        &mix,
        SCALE,
    );
    for k in [1, 4, 16] {
        let (ids, logp, log_rest) = top_k(&t, k, 1.0);
        let mut row = s.clone();
        let part = row_loss(
            &mut row,
            &mut Scratch::default(),
            TeacherRow::TopK {
                ids: &ids,
                logp: &logp,
                log_rest,
            },
            None,
            &mix,
            SCALE,
        );
        assert!(
            part.kl > 0.0 && part.kl <= full.kl + 1e-6,
            "k {k}: {} vs {}",
            part.kl,
            full.kl
        );
    }
}

#[test]
fn f32_kernel_agrees_with_f64() {
    let s = values(9, V, 8.0);
    let t = values(10, V, 8.0);
    for mix in mixes() {
        let mut g64 = s.clone();
        let r64 = row_loss(
            &mut g64,
            &mut Scratch::default(),
            TeacherRow::Dense(&t),
            Some(3),
            &mix,
            SCALE,
        );
        let mut g32: Vec<f32> = s.iter().map(|&v| v as f32).collect();
        let t32: Vec<f32> = t.iter().map(|&v| v as f32).collect();
        let r32 = row_loss(
            &mut g32,
            &mut Scratch::default(),
            TeacherRow::Dense(&t32),
            Some(3),
            &mix,
            SCALE,
        );
        assert!(
            (r32.weighted(&mix) - r64.weighted(&mix)).abs() < 1e-5,
            "{mix:?}"
        );
        for (a, b) in g32.iter().zip(&g64) {
            assert!((*a as f64 - b).abs() < 1e-6, "{mix:?}: {a} vs {b}");
        }
    }
}
