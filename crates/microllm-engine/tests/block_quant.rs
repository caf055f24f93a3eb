//! True-sequential GPTQ on a real block of the fixture models: it must reproduce the block's
//! output on calibration inputs better than round-to-nearest, and generalise to other inputs.

mod common;

use common::{block1_inputs, model, output_error};
use microllm_core::LinearKind;
use microllm_engine::{BlockMethod, quantize_block};
use microllm_models::NoTap;
use microllm_quant::{GptqOptions, QuantScheme};

#[test]
fn gptq_beats_rtn_on_a_real_block() {
    for (name, linears) in [("llama-tiny", 7), ("phi-tiny", 6), ("qwen2-tiny", 7)] {
        let m = model(name);
        let calib = block1_inputs(&m, 16, 1);
        let held_out = block1_inputs(&m, 8, 2);
        let scheme = QuantScheme::new(3, Some(16), false).unwrap();
        let mut errors = Vec::new();
        for method in [
            BlockMethod::Rtn,
            BlockMethod::gptq(GptqOptions::default(), 1),
        ] {
            let mut block = m.blocks()[1].clone();
            let mut hidden = vec![calib.clone()];
            let (weights, records) =
                quantize_block(&mut block, &mut hidden, m.positions(0), scheme, method).unwrap();
            assert_eq!(records.len(), linears, "{name}");
            assert_eq!(weights.len(), linears, "{name}");
            assert_eq!(records[0].kind, LinearKind::Q);
            assert_eq!(records.last().unwrap().kind, LinearKind::Down);
            assert!(
                records
                    .iter()
                    .all(|r| r.weight_error > 0.0 && r.weight_error < 0.1)
            );
            if let BlockMethod::Gptq { .. } = method {
                assert!(records.iter().all(|r| r.tokens == 16 * 24), "{records:?}");
                // The staged pass leaves exactly the quantized block's full forward output.
                let want = block
                    .forward(&calib, m.positions(0), None, &mut NoTap)
                    .unwrap();
                let diff = (&hidden[0] - &want)
                    .unwrap()
                    .abs()
                    .unwrap()
                    .max_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap();
                assert!(diff < 1e-5, "{name}: staged output differs by {diff}");
            }
            errors.push((
                output_error(&m, &block, &calib),
                output_error(&m, &block, &held_out),
            ));
        }
        let [(rtn_calib, rtn_held), (gptq_calib, gptq_held)] = errors[..] else {
            unreachable!()
        };
        assert!(
            gptq_calib < 0.8 * rtn_calib,
            "{name}: calibration error GPTQ {gptq_calib} vs RTN {rtn_calib}"
        );
        assert!(
            gptq_held < rtn_held,
            "{name}: held-out error GPTQ {gptq_held} vs RTN {rtn_held}"
        );
        eprintln!(
            "{name}: block-1 output MSE, RTN {rtn_calib:.3e} / {rtn_held:.3e}, \
             GPTQ {gptq_calib:.3e} / {gptq_held:.3e} (calibration / held out)"
        );
    }
}
