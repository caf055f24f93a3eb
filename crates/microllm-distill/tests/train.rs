//! The trainer on a fixture model: gradient accumulation computes the same update as one
//! batch of the same windows, and a run is a deterministic function of its seed.

mod common;

use candle_core::DType;
use common::open;
use microllm_core::NoProgress;
use microllm_distill::loss::LogitMix;
use microllm_distill::student::{Freeze, Student};
use microllm_distill::train::{AdamWConfig, Targets, TrainJob, TrainSettings, train};

const SEQLEN: usize = 8;

fn settings(batch: usize, accumulation: usize, steps: u64, seed: u64) -> TrainSettings {
    TrainSettings {
        mix: LogitMix {
            kl: 0.0,
            reverse_kl: 0.0,
            jsd: 0.0,
            ce: 1.0,
            temperature: 1.0,
        },
        hidden_weight: 0.0,
        lr: 1e-3,
        warmup_steps: 0,
        min_lr_ratio: 1.0,
        steps,
        batch,
        seqlen: SEQLEN,
        accumulation,
        clip_norm: 1e9,
        // A large epsilon makes the first AdamW step proportional to the gradient instead of
        // its sign, so gradients equal up to rounding give updates equal up to rounding.
        adamw: AdamWConfig {
            eps: 1.0,
            ..AdamWConfig::default()
        },
        seed,
        freeze_embeddings: false,
        freeze_blocks: 0,
        eval_every: 0,
        checkpoint_every: 0,
    }
}

/// Trains llama-tiny on fixed tokens and returns every trained weight, flattened.
fn run(s: &TrainSettings) -> Vec<f32> {
    let ckpt = open("llama-tiny");
    let student = Student::load(
        &ckpt.config,
        ckpt.tensors.as_ref(),
        DType::F32,
        Freeze::default(),
        SEQLEN,
    )
    .unwrap();
    let tokens: Vec<u32> = (0..SEQLEN as u32 * 16)
        .map(|i| (i * 37 + 11) % 384)
        .collect();
    if s.steps == 0 {
        return weights(&student);
    }
    let work = tempfile::tempdir().unwrap();
    let job = TrainJob {
        settings: s,
        student: &student,
        targets: Targets::Labels { tokens: &tokens },
        hidden: None,
        eval: None,
        work_dir: work.path(),
        resume: false,
        fingerprint: "test".into(),
    };
    let outcome = train(&job, &NoProgress).unwrap();
    assert_eq!(outcome.state.step, s.steps);
    weights(&student)
}

fn weights(student: &Student) -> Vec<f32> {
    student
        .trainable()
        .flat_map(|(_, v)| v.flatten_all().unwrap().to_vec1::<f32>().unwrap())
        .collect()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// One step over 4 windows, or over the same 4 windows as 2 micro-batches of 2: the mean
/// gradient is the same (up to f32 rounding), so is the update.
#[test]
fn accumulation_equals_one_larger_batch() {
    let one = run(&settings(4, 1, 1, 5));
    let two = run(&settings(2, 2, 1, 5));
    let before = run(&settings(4, 1, 0, 5));
    assert!(
        max_diff(&one, &before) > 1e-4,
        "the step changed the weights"
    );
    let d = max_diff(&one, &two);
    assert!(d < 1e-6, "accumulated update differs by {d}");
}

#[test]
fn a_run_is_a_function_of_its_seed() {
    let a = run(&settings(2, 1, 3, 1));
    assert_eq!(a, run(&settings(2, 1, 3, 1)), "same seed, same weights");
    assert!(
        max_diff(&a, &run(&settings(2, 1, 3, 2))) > 0.0,
        "another seed visits other windows"
    );
}
