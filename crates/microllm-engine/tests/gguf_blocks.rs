//! GPTQ results with groups of 32 go into GGUF blocks exactly: Q4_0 for symmetric 4-bit, Q8_0
//! for symmetric 8-bit (bit-identical dequantized weights), Q4_1 for asymmetric 4-bit (up to
//! the f16 rounding of the block minimum). Decoded by candle's ggml reader, not ours.

use candle_core::Device;
use candle_core::quantized::ggml_file::qtensor_from_ggml;
use microllm_io::gguf::GgufType;
use microllm_io::gguf::blocks::{GroupCodes, q4_0_from_codes, q4_1_from_codes, q8_0_from_codes};
use microllm_quant::{
    GptqOptions, HessianAccumulator, QuantScheme, QuantizedWeight, gptq_quantize,
};

const OUT: usize = 48;
const IN: usize = 128;

fn values(n: usize, mut state: u64) -> Vec<f32> {
    (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
        })
        .collect()
}

fn gptq(bits: u8, symmetric: bool) -> QuantizedWeight {
    let w = values(OUT * IN, 1);
    let mut h = HessianAccumulator::new(IN);
    h.add_batch_slice(&values(512 * IN, 2)).unwrap();
    let scheme = QuantScheme::new(bits, Some(32), symmetric)
        .unwrap()
        .with_f16_scales();
    gptq_quantize(&w, [OUT, IN], h.hessian(), scheme, GptqOptions::default())
        .unwrap()
        .0
}

fn decode(dtype: GgufType, bytes: &[u8]) -> Vec<f32> {
    qtensor_from_ggml(dtype.candle().unwrap(), bytes, vec![OUT, IN], &Device::Cpu)
        .unwrap()
        .dequantize(&Device::Cpu)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn codes(q: &QuantizedWeight) -> GroupCodes<'_> {
    GroupCodes {
        codes: &q.codes,
        scales: &q.scales,
        zeros: &q.zeros,
        cols: IN,
    }
}

#[test]
fn symmetric_gptq_is_exact_in_q4_0_and_q8_0() {
    let q4 = gptq(4, true);
    let bytes = q4_0_from_codes(&codes(&q4)).unwrap();
    assert_eq!(decode(GgufType::Q4_0, &bytes), q4.dequantize_vec());

    let q8 = gptq(8, true);
    let bytes = q8_0_from_codes(&codes(&q8)).unwrap();
    assert_eq!(decode(GgufType::Q8_0, &bytes), q8.dequantize_vec());
}

#[test]
fn asymmetric_gptq_in_q4_1_up_to_the_f16_minimum() {
    let q = gptq(4, false);
    let bytes = q4_1_from_codes(&codes(&q)).unwrap();
    let ours = q.dequantize_vec();
    let diff = decode(GgufType::Q4_1, &bytes)
        .iter()
        .zip(&ours)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    // |m| <= 1 here; f16 keeps 11 significant bits.
    assert!(diff <= 1.0 / 1024.0, "max difference {diff}");
}

#[test]
fn mismatched_schemes_are_refused() {
    let asym = gptq(4, false);
    assert!(
        q4_0_from_codes(&codes(&asym))
            .unwrap_err()
            .contains("zero point")
    );
    let unrounded = {
        let w = values(OUT * IN, 3);
        let mut h = HessianAccumulator::new(IN);
        h.add_batch_slice(&values(256 * IN, 4)).unwrap();
        let scheme = QuantScheme::new(4, Some(32), true).unwrap();
        gptq_quantize(&w, [OUT, IN], h.hessian(), scheme, GptqOptions::default())
            .unwrap()
            .0
    };
    assert!(
        q4_0_from_codes(&codes(&unrounded))
            .unwrap_err()
            .contains("f16")
    );
}
