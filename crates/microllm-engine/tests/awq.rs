//! AWQ on real blocks of the fixture models: folding scales into norms and producing linears
//! leaves every family's block computing what it did, and the AWQ pass records what it chose
//! and the tensors it changed.

mod common;

use candle_core::Tensor;
use common::{block1_inputs, model, output_error};
use microllm_core::LinearKind;
use microllm_engine::{
    BlockMethod, BlockSpec, Producer, compress_block, fold_scales, scale_groups,
};
use microllm_models::NoTap;
use microllm_quant::{AwqOptions, QuantScheme};

const FAMILIES: [&str; 9] = [
    "llama-tiny",
    "llama3-tiny",
    "mistral-tiny",
    "qwen2-tiny",
    "qwen3-tiny",
    "phi-tiny",
    "phi3-tiny",
    "gemma3-tiny",
    "mistral-tiny-bf16",
];

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

#[test]
fn folded_scales_leave_every_family_block_unchanged() {
    for name in FAMILIES {
        let m = model(name);
        let x = block1_inputs(&m, 2, 3);
        let original = &m.blocks()[1];
        let want = original
            .forward(&x, m.positions(0), None, &mut NoTap)
            .unwrap();
        let scale = want
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let mut block = original.clone();
        let groups = scale_groups(&block);
        for group in groups.iter().filter(|g| g.foldable) {
            let width = block.linear(group.kinds[0]).unwrap().in_features();
            let s: Vec<f32> = (0..width)
                .map(|j| 0.5 + (j * 7 % 13) as f32 / 8.0)
                .collect();
            fold_scales(&mut block, group, &s).unwrap();
        }
        let got = block.forward(&x, m.positions(0), None, &mut NoTap).unwrap();
        let diff = max_abs_diff(&got, &want);
        assert!(
            diff <= 1e-4 * scale.max(1.0),
            "{name}: folded block differs by {diff} (outputs up to {scale})"
        );
        // The folds actually moved weights (a no-op would pass the check above).
        assert!(max_abs_diff(&block.q.weight().unwrap(), &original.q.weight().unwrap()) > 0.0);
        let producers: Vec<Producer> = groups
            .iter()
            .filter(|g| g.foldable)
            .map(|g| g.producer)
            .collect();
        let cfg = m.config();
        assert_eq!(
            producers.contains(&Producer::ValueRows),
            cfg.num_kv_heads == cfg.num_heads,
            "{name}: {producers:?}"
        );
        assert_eq!(
            producers.contains(&Producer::UpRows),
            original.mlp.gate.is_some(),
            "{name}"
        );
    }
}

#[test]
fn awq_pass_records_its_choices_and_the_tensors_it_changed() {
    for name in ["llama-tiny", "phi-tiny", "gemma3-tiny"] {
        let m = model(name);
        let calib = block1_inputs(&m, 16, 1);
        let scheme = QuantScheme::new(3, Some(16), false).unwrap();
        let mut mse = Vec::new();
        for awq in [None, Some(AwqOptions::default())] {
            let mut block = m.blocks()[1].clone();
            let mut hidden = vec![calib.clone()];
            let spec = BlockSpec {
                scheme: Some(scheme),
                method: BlockMethod::Rtn,
                prune: None,
                awq,
                smooth: None,
            };
            let out = compress_block(&mut block, &mut hidden, m.positions(0), &spec).unwrap();
            if awq.is_none() {
                assert!(out.replaced.is_empty());
                assert!(out.records.iter().all(|r| r.awq.is_none()));
                mse.push(output_error(&m, &block, &calib));
                continue;
            }
            // Alone, AWQ passes the block's full-precision outputs on.
            let want = m.blocks()[1]
                .forward(&calib, m.positions(0), None, &mut NoTap)
                .unwrap();
            assert!(max_abs_diff(&hidden[0], &want) < 1e-4, "{name}");
            for r in &out.records {
                let a = r.awq.as_ref().unwrap_or_else(|| panic!("{name}: {r:?}"));
                assert!(a.relative_error <= 1.0, "{name}: {a:?}");
                let clipped = !matches!(r.kind, LinearKind::Q | LinearKind::K);
                assert_eq!(a.clip.is_some(), clipped, "{name}: {r:?}");
            }
            // A chosen scale on the attention input changes the attention norm.
            let q = out
                .records
                .iter()
                .find(|r| r.kind == LinearKind::Q)
                .unwrap();
            let norm = "model.layers.1.input_layernorm.weight";
            assert_eq!(
                out.replaced.contains_key(norm),
                q.awq.as_ref().unwrap().ratio.is_some(),
                "{name}: {:?}",
                out.replaced.keys().collect::<Vec<_>>()
            );
            for (tensor, value) in &out.replaced {
                assert!(tensor.starts_with("model.layers.1."), "{tensor}");
                assert_eq!(value.dims().len(), 1, "{tensor}");
            }
            mse.push(output_error(&m, &block, &calib));
        }
        eprintln!(
            "{name}: block-1 output MSE, RTN {:.3e}, AWQ {:.3e}",
            mse[0], mse[1]
        );
        assert!(mse[1] < mse[0], "{name}: AWQ {} vs RTN {}", mse[1], mse[0]);
    }
}
