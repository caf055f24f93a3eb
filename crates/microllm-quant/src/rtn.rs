//! Round-to-nearest (RTN) quantization: fit each group's grid, round every weight to it.
//!
//! RTN needs no calibration data and is the baseline the GPTQ paper compares against (Frantar et
//! al., 2022, section 5, "RTN"). With an asymmetric scheme it is exact on weights that already
//! lie on a grid: a weight built from codes, scales and integer
//! zero points, whose groups use their full code range `0..=maxq`, re-quantizes to the same
//! codes, scales and zeros. That is what makes re-quantizing an already-quantized checkpoint
//! lossless when its blocks align with our groups and its offsets are whole steps.
//!
//! Symmetric grids do not have this property under the GPTQ reference convention
//! (`scale = 2 max|w| / maxq`, zero `2^(bits-1)`): the fitted extremes sit at
//! `±(2^(bits-1) - 1/2)` steps, half-way between grid points, so no weight set reproduces its own
//! grid. We keep the reference convention anyway so that errors are comparable with published
//! RTN/GPTQ numbers. The grid rule lives in [`QuantScheme::fit`].

use candle_core::Tensor;
use microllm_core::{Error, Result};
use rayon::prelude::*;

use crate::{QuantScheme, QuantizedWeight};

/// Quantizes a row-major `[out, in]` f32 weight with round-to-nearest.
pub fn rtn_quantize(
    weight: &[f32],
    shape: [usize; 2],
    scheme: QuantScheme,
) -> Result<QuantizedWeight> {
    let ng = scheme.check_shape("weight", shape)?;
    let [out, inp] = shape;
    check_weight(weight, shape)?;
    let g = scheme.group_len(inp);
    let mut codes = vec![0u8; out * inp];
    let mut scales = vec![0.0f32; out * ng];
    let mut zeros = vec![0u8; out * ng];
    codes
        .par_chunks_mut(inp)
        .zip(scales.par_chunks_mut(ng))
        .zip(zeros.par_chunks_mut(ng))
        .zip(weight.par_chunks(inp))
        .for_each(|(((codes, scales), zeros), row)| {
            for (k, (cg, wg)) in codes.chunks_mut(g).zip(row.chunks(g)).enumerate() {
                let grid = scheme.fit(wg.iter().copied());
                scales[k] = grid.scale;
                zeros[k] = grid.zero;
                for (c, &w) in cg.iter_mut().zip(wg) {
                    *c = grid.quantize(w);
                }
            }
        });
    Ok(QuantizedWeight {
        shape,
        scheme,
        codes,
        scales,
        zeros,
        g_idx: None,
        perm: None,
    })
}

/// [`rtn_quantize`] on a 2-D tensor of any float dtype.
pub fn rtn_quantize_tensor(weight: &Tensor, scheme: QuantScheme) -> Result<QuantizedWeight> {
    let (shape, data) = weight_data(weight)?;
    rtn_quantize(&data, shape, scheme)
}

/// Flattens a 2-D tensor into f32 row-major data.
pub(crate) fn weight_data(weight: &Tensor) -> Result<([usize; 2], Vec<f32>)> {
    let (out, inp) = weight.dims2()?;
    let data = weight
        .to_dtype(candle_core::DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    Ok(([out, inp], data))
}

/// Length and finiteness check: a NaN weight would silently poison a whole group's scale.
pub(crate) fn check_weight(weight: &[f32], shape: [usize; 2]) -> Result<()> {
    let [out, inp] = shape;
    if weight.len() != out * inp {
        return Err(Error::Invalid(format!(
            "weight data has {} values, shape [{out}, {inp}] needs {}",
            weight.len(),
            out * inp
        )));
    }
    if let Some(i) = weight.iter().position(|w| !w.is_finite()) {
        return Err(Error::Invalid(format!(
            "weight of shape [{out}, {inp}] has a non-finite value at [{}, {}]",
            i / inp,
            i % inp
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::Rng;

    /// Relative slack for float rounding in the `scale / 2` bound.
    const BOUND_SLACK: f32 = 1e-5;

    fn schemes() -> Vec<QuantScheme> {
        let mut v = Vec::new();
        for bits in [2, 3, 4, 8] {
            for group in [None, Some(16)] {
                for sym in [false, true] {
                    v.push(QuantScheme::new(bits, group, sym).unwrap());
                }
            }
        }
        v
    }

    /// FP8: each weight lands on the E4M3 value nearest `w / scale` (relative error at most
    /// 2^-4 above the subnormals), a row's largest magnitude exactly, zeros stay zero.
    #[test]
    fn fp8_rounds_each_weight_to_the_nearest_e4m3_value() {
        use microllm_core::fp8::{E4M3_MAX, round_to_e4m3};
        let mut rng = Rng::new(9);
        let shape = [6, 64];
        let mut w = rng.normal_vec(6 * 64);
        w[3] = 0.0;
        w[64..128].fill(0.0);
        for group in [None, Some(32)] {
            let s = QuantScheme::fp8(group).unwrap();
            let q = rtn_quantize(&w, shape, s).unwrap();
            q.validate("w").unwrap();
            assert!(q.zeros.iter().all(|&z| z == 0));
            let dq = q.dequantize_vec();
            assert_eq!(dq[3], 0.0);
            assert!(dq[64..128].iter().all(|&v| v == 0.0));
            for (j, (&a, &b)) in w.iter().zip(&dq).enumerate() {
                let scale = q.scales[(j / 64) * q.n_groups() + q.group_of(j % 64)];
                assert_eq!(b, round_to_e4m3(a / scale) * scale, "{group:?} at {j}");
            }
            let g = s.group_len(64);
            for (k, chunk) in w.chunks(g).enumerate() {
                let amax = chunk.iter().fold(0f32, |m, v| m.max(v.abs()));
                if amax > 0.0 {
                    assert_eq!(q.scales[k], amax / E4M3_MAX);
                }
            }
        }
        assert!(QuantScheme::fp8(Some(0)).is_err());
    }

    #[test]
    fn error_is_at_most_half_a_step() {
        let mut rng = Rng::new(1);
        let shape = [8, 64];
        let mut w = rng.normal_vec(8 * 64);
        w[5] = 0.0; // exact zeros stay exact
        w[64..80].fill(0.0); // an all-zero group
        for s in schemes() {
            let q = rtn_quantize(&w, shape, s).unwrap();
            q.validate("w").unwrap();
            let dq = q.dequantize_vec();
            assert_eq!(dq[5], 0.0);
            for (j, (&a, &b)) in w.iter().zip(&dq).enumerate() {
                let (r, c) = (j / 64, j % 64);
                let scale = q.scales[r * q.n_groups() + q.group_of(c)];
                assert!(scale.is_finite() && scale > 0.0);
                assert!(
                    (a - b).abs() <= scale * (0.5 + BOUND_SLACK),
                    "{s:?} [{r},{c}]: {a} -> {b}, scale {scale}"
                );
            }
        }
    }

    #[test]
    fn weights_on_the_grid_round_trip_exactly() {
        let mut rng = Rng::new(2);
        for s in schemes().into_iter().filter(|s| !s.symmetric) {
            let shape = [4, 32];
            let ng = s.check_shape("w", shape).unwrap();
            let g = s.group_len(32);
            let maxq = s.maxq() as u8;
            let mut codes: Vec<u8> = (0..128).map(|_| rng.below(maxq as u32 + 1) as u8).collect();
            let mut scales = Vec::new();
            let mut zeros = Vec::new();
            for r in 0..4 {
                for k in 0..ng {
                    // Use the full code range in each group so min/max fit the same grid.
                    let group = &mut codes[r * 32 + k * g..r * 32 + (k + 1) * g];
                    group[0] = 0;
                    group[1] = maxq;
                    // Powers of two keep the products exact in f32.
                    scales.push(2f32.powi(-(rng.below(6) as i32)));
                    zeros.push(1 + rng.below(maxq as u32 - 1) as u8);
                }
            }
            let built = QuantizedWeight {
                shape,
                scheme: s,
                codes,
                scales,
                zeros,
                g_idx: None,
                perm: None,
            };
            built.validate("w").unwrap();
            let w = built.dequantize_vec();
            let again = rtn_quantize(&w, shape, s).unwrap();
            assert_eq!(again.codes, built.codes, "{s:?}");
            assert_eq!(again.zeros, built.zeros, "{s:?}");
            assert_eq!(again.scales, built.scales, "{s:?}");
        }
    }

    #[test]
    fn tensor_entry_point_and_dequantize_agree() {
        let mut rng = Rng::new(3);
        let w = rng.normal_vec(6 * 32);
        let t = Tensor::from_vec(w.clone(), (6, 32), &candle_core::Device::Cpu).unwrap();
        let s = QuantScheme::new(4, Some(8), false).unwrap();
        let q = rtn_quantize_tensor(&t, s).unwrap();
        assert_eq!(q, rtn_quantize(&w, [6, 32], s).unwrap());
        let dq = q.dequantize(&candle_core::Device::Cpu).unwrap();
        assert_eq!(dq.dims(), &[6, 32]);
        let flat = dq.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(flat, q.dequantize_vec());
    }

    #[test]
    fn bad_inputs_are_errors() {
        let s = QuantScheme::new(4, Some(128), true).unwrap();
        let msg = rtn_quantize(&vec![0.0; 2 * 576], [2, 576], s)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("[2, 576]") && msg.contains("128"), "{msg}");
        let s = QuantScheme::new(4, None, true).unwrap();
        assert!(rtn_quantize(&[0.0, f32::NAN], [1, 2], s).is_err());
        assert!(rtn_quantize(&[0.0; 3], [1, 2], s).is_err());
    }
}
