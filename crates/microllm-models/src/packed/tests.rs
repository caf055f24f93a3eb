use candle_core::quantized::QTensor;
use candle_core::{Device, Tensor};
use microllm_core::{BlockType, PackedMatrix};

use super::acts::QuantActs;
use super::legacy::BlockRows;
use super::panel::{DecodeRows, ggml_dtype};

use super::{Activations, PackedWeight, int8};

/// Deterministic values in about -1..1 with a few larger ones, as real activations have.
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|i| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let v = ((s >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0;
            if i % 97 == 0 { v * 6.0 } else { v }
        })
        .collect()
}

/// `rows x cols` random weights stored as `kind` by candle's quantizer, and their values.
fn packed(kind: BlockType, rows: usize, cols: usize) -> (PackedMatrix, Tensor) {
    let w = Tensor::from_vec(values(rows * cols, 7), (rows, cols), &Device::Cpu).unwrap();
    let q = QTensor::quantize(&w, ggml_dtype(kind).unwrap()).unwrap();
    let dense = q.dequantize(&Device::Cpu).unwrap();
    let m = PackedMatrix::new("w", kind, rows, cols, q.data().unwrap().to_vec()).unwrap();
    (m, dense)
}

const LEGACY: [BlockType; 5] = [
    BlockType::Q4_0,
    BlockType::Q4_1,
    BlockType::Q5_0,
    BlockType::Q5_1,
    BlockType::Q8_0,
];

#[test]
fn the_regrouped_blocks_decode_to_candles_values() {
    for kind in LEGACY {
        // 40 rows: one full pair of groups and a padded one.
        let (m, dense) = packed(kind, 40, 96);
        let rows = BlockRows::new(&m).unwrap();
        let mut out = vec![0f32; 40 * 96];
        rows.decode_rows(0, 40, &mut out);
        assert_eq!(
            out,
            dense.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            "{kind:?}"
        );
    }
}

/// `x W^T` in f64 from the activations' codes and scales and the weights' values: what the
/// integer kernel must compute up to f32 rounding.
fn reference(acts: &QuantActs, w: &Tensor) -> Vec<f64> {
    let w = w.to_vec2::<f32>().unwrap();
    let (t, k) = (acts.tokens, acts.cols);
    let mut y = Vec::with_capacity(t * w.len());
    for ti in 0..t {
        for row in &w {
            let dot: f64 = (0..k)
                .map(|c| {
                    let s = acts.scale[ti * (k / 32) + c / 32] as f64;
                    acts.codes[ti * k + c] as f64 * s * row[c] as f64
                })
                .sum();
            y.push(dot);
        }
    }
    y
}

fn assert_close(got: &[f32], want: &[f64], what: &str) {
    let scale = want.iter().fold(0f64, |a, v| a.max(v.abs()));
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g as f64 - w).abs() <= 1e-5 * scale,
            "{what}: element {i}: {g} vs {w}"
        );
    }
}

#[test]
fn the_integer_kernels_compute_the_quantized_product() {
    for kind in LEGACY {
        let (m, dense) = packed(kind, 40, 128);
        let rows = BlockRows::new(&m).unwrap();
        // 7 tokens: one full tile of 4 and a tail of 3.
        let acts = QuantActs::new(&values(7 * 128, 3), 128);
        let want = reference(&acts, &dense);
        assert_close(&int8::matmul(&rows, &acts, false), &want, "scalar");
        if int8::has_vnni() {
            assert_close(&int8::matmul(&rows, &acts, true), &want, "vector");
        }
    }
}

/// `rows x cols` random weights stored as IQ4_NL or IQ4_XS by microllm's (llama.cpp's) fit,
/// and their values by the file reader's decoder.
fn packed_iq4(kind: BlockType, rows: usize, cols: usize) -> (PackedMatrix, Tensor) {
    use microllm_io::gguf::iq4;
    let x = values(rows * cols, 11);
    let mut bytes = Vec::new();
    for row in x.chunks_exact(cols) {
        match kind {
            BlockType::Iq4Nl => iq4::iq4_nl_row(row, None, &mut bytes),
            _ => iq4::iq4_xs_row(row, None, &mut bytes),
        }
    }
    let mut dense = vec![0f32; rows * cols];
    match kind {
        BlockType::Iq4Nl => iq4::dequantize_iq4_nl(&bytes, &mut dense),
        _ => iq4::dequantize_iq4_xs(&bytes, &mut dense),
    }
    let m = PackedMatrix::new("w", kind, rows, cols, bytes).unwrap();
    (
        m,
        Tensor::from_vec(dense, (rows, cols), &Device::Cpu).unwrap(),
    )
}

#[test]
fn i_quants_run_on_the_integer_kernel_as_their_levels() {
    for kind in [BlockType::Iq4Nl, BlockType::Iq4Xs] {
        // 40 rows: one full pair of groups and a padded one; two IQ4_XS super-blocks.
        let (m, dense) = packed_iq4(kind, 40, 512);
        let rows = BlockRows::new(&m).unwrap();
        let mut out = vec![0f32; 40 * 512];
        rows.decode_rows(0, 40, &mut out);
        assert_eq!(
            out,
            dense.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            "{kind:?}"
        );
        let acts = QuantActs::new(&values(7 * 512, 3), 512);
        let want = reference(&acts, &dense);
        assert_close(&int8::matmul(&rows, &acts, false), &want, "scalar");
        if int8::has_vnni() {
            assert_close(&int8::matmul(&rows, &acts, true), &want, "vector");
        }
        let w = PackedWeight::new(&m, Activations::F32).unwrap();
        let x = Tensor::from_vec(values(3 * 512, 5), (3, 512), &Device::Cpu).unwrap();
        let got = w.matmul(&x).unwrap().to_vec2::<f32>().unwrap();
        let want = x
            .matmul(&dense.t().unwrap())
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        for (g, w) in got.iter().flatten().zip(want.iter().flatten()) {
            assert!(
                (g - w).abs() <= 1e-4 * w.abs().max(1.0),
                "{kind:?}: {g} vs {w}"
            );
        }
    }
}

#[test]
fn activations_are_quantized_per_block_of_32() {
    let x: Vec<f32> = (0..64).map(|i| i as f32 - 20.0).collect();
    let q = QuantActs::new(&x, 64);
    assert_eq!(q.scale, vec![20.0 / 127.0, 43.0 / 127.0]);
    assert_eq!(q.codes[0], -127);
    assert_eq!(q.codes[63], 127);
    let sum: i32 = q.codes[..32].iter().map(|&c| c as i32).sum();
    assert_eq!(q.sum[0], sum);
}

#[test]
fn f32_products_equal_the_dense_ones_for_every_type() {
    let kinds = [
        BlockType::F16,
        BlockType::BF16,
        BlockType::Q4_0,
        BlockType::Q5_1,
        BlockType::Q8_0,
        BlockType::Q4K,
        BlockType::Q6K,
    ];
    let x = Tensor::from_vec(values(5 * 256, 11), (5, 256), &Device::Cpu).unwrap();
    for kind in kinds {
        let (m, dense) = packed(kind, 48, 256);
        let w = PackedWeight::new(&m, Activations::F32).unwrap();
        assert_eq!(w.path(), "f32 panels");
        let got = w.matmul(&x).unwrap().flatten_all().unwrap();
        let want = x
            .matmul(&dense.t().unwrap())
            .unwrap()
            .flatten_all()
            .unwrap();
        let diff = (got - &want).unwrap().abs().unwrap().max(0).unwrap();
        let diff = diff.to_scalar::<f32>().unwrap();
        assert!(diff < 1e-4, "{kind:?}: {diff}");
        assert_eq!(
            w.dequantize().unwrap().to_vec2::<f32>().unwrap(),
            dense.to_vec2::<f32>().unwrap()
        );
        let rows = w.gather_rows(&[3, 0]).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(rows[0], dense.get(3).unwrap().to_vec1::<f32>().unwrap());
    }
}

#[test]
fn int8_products_stay_near_the_dense_ones() {
    let x = Tensor::from_vec(values(9 * 256, 5), (9, 256), &Device::Cpu).unwrap();
    for kind in [
        BlockType::Q4_0,
        BlockType::Q8_0,
        BlockType::Q2K,
        BlockType::Q3K,
        BlockType::Q4K,
        BlockType::Q6K,
    ] {
        let (m, dense) = packed(kind, 64, 256);
        let w = PackedWeight::new(&m, Activations::Int8).unwrap();
        assert_ne!(w.path(), "f32 panels", "{kind:?}");
        let got = w.matmul(&x).unwrap();
        let want = x.matmul(&dense.t().unwrap()).unwrap();
        let err = (&got - &want).unwrap().sqr().unwrap().mean_all().unwrap();
        let power = want.sqr().unwrap().mean_all().unwrap();
        let rel = (err.to_scalar::<f32>().unwrap() / power.to_scalar::<f32>().unwrap()).sqrt();
        // 8-bit activations: about 0.5% relative error on such data.
        assert!(rel < 0.02, "{kind:?}: relative error {rel}");
    }
}
