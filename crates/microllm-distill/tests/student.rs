//! The training forward against the inference decoder on every fixture family, and the
//! gradients of every loss through the whole student against finite differences (f64).

mod common;

use candle_core::{DType, Device, Tensor};
use common::{FAMILIES, max_abs_diff, open, reference_ids};
use microllm_distill::loss::{HiddenKind, HiddenLoss, LogitMix, LogitTargets, Teacher, head_loss};
use microllm_distill::student::{Freeze, Student};
use microllm_models::Decoder;

/// The student and the decoder compute the same function in different orders.
const LOGITS_TOLERANCE: f64 = 1e-4;

#[test]
fn training_forward_matches_the_decoder_on_every_family() {
    for name in FAMILIES {
        let ckpt = open(name);
        let ids = reference_ids(name);
        let decoder = Decoder::load(&ckpt.config, ckpt.tensors.as_ref()).unwrap();
        let want = decoder.forward(&ids).unwrap();
        let (b, s) = ids.dims2().unwrap();
        let student = Student::load(
            &ckpt.config,
            ckpt.tensors.as_ref(),
            DType::F32,
            Freeze::default(),
            s,
        )
        .unwrap();
        let out = student.forward(&ids, &[]).unwrap();
        let got = student
            .logits(&out.hidden)
            .unwrap()
            .reshape((b, s, ckpt.config.vocab_size))
            .unwrap();
        let diff = max_abs_diff(&got, &want);
        assert!(diff < LOGITS_TOLERANCE, "{name}: logits differ by {diff}");
    }
}

/// Deterministic values in [-spread/2, spread/2).
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

/// Top-k of each row of `logits` `[rows, vocab]` at temperature `tau`.
fn top_k(logits: &[f64], vocab: usize, k: usize, tau: f64) -> (Vec<u32>, Vec<f32>, Vec<f32>) {
    let (mut ids, mut logp, mut rest) = (Vec::new(), Vec::new(), Vec::new());
    for row in logits.chunks(vocab) {
        let mut order: Vec<u32> = (0..vocab as u32).collect();
        order.sort_by(|&a, &b| row[b as usize].total_cmp(&row[a as usize]));
        let max = row.iter().copied().fold(f64::NEG_INFINITY, f64::max) / tau;
        let lse = max + row.iter().map(|v| (v / tau - max).exp()).sum::<f64>().ln();
        let kept = &order[..k];
        ids.extend_from_slice(kept);
        logp.extend(kept.iter().map(|&i| (row[i as usize] / tau - lse) as f32));
        let r: f64 = order[k..]
            .iter()
            .map(|&i| (row[i as usize] / tau - lse).exp())
            .sum();
        rest.push(r.ln() as f32);
    }
    (ids, logp, rest)
}

fn mix(kl: f64, reverse_kl: f64, jsd: f64, ce: f64) -> LogitMix {
    LogitMix {
        kl,
        reverse_kl,
        jsd,
        ce,
        temperature: 2.0,
    }
}

/// Analytic gradients of the loss with respect to sampled entries of every kind of weight
/// (embeddings, projections and their biases, norms, the untied head) against central
/// differences, through the whole f64 student.
fn check_gradients(name: &str, mixes: &[LogitMix]) {
    let ckpt = open(name);
    let ids = reference_ids(name);
    let (b, s) = ids.dims2().unwrap();
    let vocab = ckpt.config.vocab_size;
    let rows = b * s;
    let student = Student::load(
        &ckpt.config,
        ckpt.tensors.as_ref(),
        DType::F64,
        Freeze::default(),
        s,
    )
    .unwrap();
    let flat: Vec<u32> = ids.flatten_all().unwrap().to_vec1().unwrap();
    let labels: Vec<Option<u32>> = (0..rows)
        .map(|i| (i % s + 1 < s).then(|| flat[i + 1]))
        .collect();
    let teacher_logits = values(7, rows * vocab, 6.0);
    let dense = Tensor::from_vec(teacher_logits.clone(), (rows, vocab), &Device::Cpu).unwrap();
    for mix in mixes {
        let (tk_ids, tk_logp, tk_rest) = top_k(&teacher_logits, vocab, 12, mix.temperature);
        for teacher in [
            Teacher::Dense(&dense),
            Teacher::TopK {
                k: 12,
                ids: &tk_ids,
                logp: &tk_logp,
                log_rest: &tk_rest,
            },
        ] {
            let targets = LogitTargets {
                labels: &labels,
                teacher,
            };
            let loss_of = |st: &Student| {
                let out = st.forward(&ids, &[]).unwrap();
                head_loss(st, &out.hidden, &targets, mix).unwrap()
            };
            let grads = loss_of(&student).loss.backward().unwrap();
            for (pname, var) in student.trainable() {
                let base: Vec<f64> = var.flatten_all().unwrap().to_vec1().unwrap();
                let analytic: Vec<f64> = grads
                    .get(var.as_tensor())
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1()
                    .unwrap();
                // Three entries per weight, spread over it.
                for at in [0, base.len() / 2, base.len() - 1] {
                    let probe = |d: f64| {
                        let mut v = base.clone();
                        v[at] += d;
                        var.set(&Tensor::from_vec(v, var.shape(), &Device::Cpu).unwrap())
                            .unwrap();
                        let value = loss_of(&student).value;
                        var.set(
                            &Tensor::from_vec(base.clone(), var.shape(), &Device::Cpu).unwrap(),
                        )
                        .unwrap();
                        value
                    };
                    let numeric = (probe(STEP) - probe(-STEP)) / (2.0 * STEP);
                    let err = (analytic[at] - numeric).abs() / numeric.abs().max(1.0);
                    assert!(
                        err < GRAD_TOLERANCE,
                        "{name} {mix:?} {pname}[{at}]: analytic {} vs numeric {numeric} ({err:e})",
                        analytic[at]
                    );
                }
            }
        }
    }
}

/// Hidden-state losses (with and without a learned projection) through the whole f64 student
/// against central differences, for every weight kind and the projection.
#[test]
fn hidden_state_loss_gradients_match_finite_differences() {
    let ckpt = open("llama-tiny");
    let ids = reference_ids("llama-tiny");
    let (b, s) = ids.dims2().unwrap();
    let h = ckpt.config.hidden_size;
    let student = Student::load(
        &ckpt.config,
        ckpt.tensors.as_ref(),
        DType::F64,
        Freeze::default(),
        s,
    )
    .unwrap();
    let target_width = h + 8;
    for (kind, project, width) in [
        (HiddenKind::Mse, false, h),
        (HiddenKind::Cosine, false, h),
        (HiddenKind::Mse, true, target_width),
        (HiddenKind::Cosine, true, target_width),
    ] {
        let hidden = HiddenLoss::new(
            kind,
            vec![(0, 1), (2, 2)],
            (h, width),
            project,
            3,
            DType::F64,
        )
        .unwrap();
        let teacher: Vec<Tensor> = (0..2)
            .map(|i| {
                Tensor::from_vec(
                    values(20 + i, b * s * width, 2.0),
                    (b * s, width),
                    &Device::Cpu,
                )
                .unwrap()
            })
            .collect();
        let loss_of = || {
            let out = student.forward(&ids, &hidden.student_blocks()).unwrap();
            hidden.loss(&out.blocks, &teacher).unwrap()
        };
        let grads = loss_of().backward().unwrap();
        let mut vars: Vec<(String, &candle_core::Var)> = student
            .trainable()
            .map(|(n, v)| (n.to_string(), v))
            .collect();
        vars.extend(hidden.named_projections());
        for (pname, var) in vars {
            let base: Vec<f64> = var.flatten_all().unwrap().to_vec1().unwrap();
            let Some(g) = grads.get(var.as_tensor()) else {
                // Only the final norm lies beyond the last mapped block.
                assert!(
                    pname.starts_with("model.norm"),
                    "{kind:?}: no gradient for {pname}"
                );
                continue;
            };
            let analytic: Vec<f64> = g.flatten_all().unwrap().to_vec1().unwrap();
            for at in [0, base.len() / 3, base.len() - 1] {
                let probe = |d: f64| {
                    let mut v = base.clone();
                    v[at] += d;
                    var.set(&Tensor::from_vec(v, var.shape(), &Device::Cpu).unwrap())
                        .unwrap();
                    let value = loss_of().to_scalar::<f64>().unwrap();
                    var.set(&Tensor::from_vec(base.clone(), var.shape(), &Device::Cpu).unwrap())
                        .unwrap();
                    value
                };
                let numeric = (probe(STEP) - probe(-STEP)) / (2.0 * STEP);
                let err = (analytic[at] - numeric).abs() / numeric.abs().max(1.0);
                assert!(
                    err < GRAD_TOLERANCE,
                    "{kind:?} {pname}[{at}]: {} vs {numeric} ({err:e})",
                    analytic[at]
                );
            }
        }
    }
}

const STEP: f64 = 1e-5;
const GRAD_TOLERANCE: f64 = 1e-6;

#[test]
fn every_logit_loss_has_the_gradient_of_finite_differences() {
    check_gradients(
        "llama-tiny",
        &[
            mix(1.0, 0.0, 0.0, 0.0),
            mix(0.0, 1.0, 0.0, 0.0),
            mix(0.0, 0.0, 1.0, 0.0),
            mix(0.0, 0.0, 0.0, 1.0),
        ],
    );
}

#[test]
fn mixed_loss_gradients_hold_on_every_family() {
    for name in FAMILIES {
        check_gradients(name, &[mix(0.6, 0.2, 0.3, 0.4)]);
    }
}
