//! Activations quantized to 8 bits on the fly, per block of 32, as llama.cpp does for its
//! integer dot products: `x ~ scale * q` with `q` in `-127..=127` and `scale = max|x| / 127`.
//! Each block's code sum is kept too: the weights' zero (and minimum) enter the dot product
//! through it, so the inner loop multiplies raw codes only.

use rayon::prelude::*;

use super::legacy::BLOCK;

/// 1.5 * 2^23: adding it to an f32 of magnitude below 2^22 leaves a sum whose unit in the last
/// place is 1, so the addition itself rounds to an integer (ties to even, the FPU's mode).
const ROUNDING_BIAS: f32 = 12_582_912.0;

/// `v` rounded to the nearest integer, ties to even, for `|v| < 2^22` (codes are within
/// ±127). Equal to `round_ties_even`, which the baseline x86-64 target compiles to a libm call
/// per value: that call took a quarter of an eval's time.
#[inline(always)]
fn round_small(v: f32) -> f32 {
    (v + ROUNDING_BIAS) - ROUNDING_BIAS
}

/// One block of 32 values into `codes`; returns its scale and code sum. Written over fixed-size
/// arrays with lane-wise maxima (no order-dependent fold), so every loop vectorises; the
/// reference the AVX-512 version is tested against.
#[inline(always)]
fn quantize_block(xs: &[f32], codes: &mut [i8]) -> (f32, i32) {
    let xs: &[f32; BLOCK] = xs.try_into().expect("a whole block");
    let codes: &mut [i8; BLOCK] = codes.try_into().expect("a whole block");
    let mut lanes = [0f32; 16];
    for half in xs.chunks_exact(16) {
        for (l, v) in lanes.iter_mut().zip(half) {
            let a = v.abs();
            if a > *l {
                *l = a;
            }
        }
    }
    let amax = lanes.iter().fold(0f32, |a, &v| if v > a { v } else { a });
    let d = amax / 127.0;
    let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
    let mut ints = [0i32; BLOCK];
    for (c, &v) in ints.iter_mut().zip(xs) {
        *c = round_small(v * inv) as i32;
    }
    for (q, &c) in codes.iter_mut().zip(&ints) {
        *q = c as i8;
    }
    (d, ints.iter().sum())
}

/// `[tokens, cols]` activations as 8-bit codes with one scale and code sum per block.
pub(crate) struct QuantActs {
    pub(crate) tokens: usize,
    pub(crate) cols: usize,
    pub(crate) codes: Vec<i8>,
    pub(crate) scale: Vec<f32>,
    pub(crate) sum: Vec<i32>,
}

impl QuantActs {
    /// Quantizes `x` (`tokens * cols` values, row-major; `cols` a multiple of 32).
    pub(crate) fn new(x: &[f32], cols: usize) -> Self {
        let tokens = x.len() / cols;
        let blocks = cols / BLOCK;
        let mut codes = vec![0i8; x.len()];
        let mut scale = vec![0f32; tokens * blocks];
        let mut sum = vec![0i32; tokens * blocks];
        let vector = has_avx512();
        codes
            .par_chunks_mut(cols)
            .zip(scale.par_chunks_mut(blocks))
            .zip(sum.par_chunks_mut(blocks))
            .zip(x.par_chunks(cols))
            .for_each(|(((codes, scale), sum), x)| {
                #[cfg(target_arch = "x86_64")]
                if vector {
                    // SAFETY: `vector` is set only when the CPU has AVX-512 F and BW; the
                    // slices are one row: `cols` values and codes, `cols / 32` scales and sums.
                    unsafe { avx512::quantize_row(x, codes, scale, sum) };
                    return;
                }
                for (b, (xs, qs)) in x
                    .chunks_exact(BLOCK)
                    .zip(codes.chunks_exact_mut(BLOCK))
                    .enumerate()
                {
                    (scale[b], sum[b]) = quantize_block(xs, qs);
                }
            });
        Self {
            tokens,
            cols,
            codes,
            scale,
            sum,
        }
    }
}

/// Whether this CPU runs the vector quantizer.
fn has_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// [`quantize_block`] sixteen lanes at a time: the scalar loops, even vectorised by the
/// compiler, cost about a tenth of an eval (a block's forward quantizes 2.5 million values).
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::BLOCK;

    /// One row: `x.len()` values (whole blocks) into `codes`, `scale` and `sum`.
    ///
    /// # Safety
    /// The CPU has AVX-512 F and BW; `codes.len() == x.len()` and `scale`, `sum` hold
    /// `x.len() / 32` entries.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) unsafe fn quantize_row(
        x: &[f32],
        codes: &mut [i8],
        scale: &mut [f32],
        sum: &mut [i32],
    ) {
        let abs_mask = _mm512_set1_epi32(0x7fff_ffff);
        for (b, (xs, qs)) in x
            .chunks_exact(BLOCK)
            .zip(codes.chunks_exact_mut(BLOCK))
            .enumerate()
        {
            // SAFETY: `xs` holds 32 values, `qs` 32 codes.
            let (v0, v1) = unsafe {
                (
                    _mm512_loadu_ps(xs.as_ptr()),
                    _mm512_loadu_ps(xs.as_ptr().add(16)),
                )
            };
            let abs =
                |v: __m512| _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(v), abs_mask));
            let amax = _mm512_reduce_max_ps(_mm512_max_ps(abs(v0), abs(v1)));
            let d = amax / 127.0;
            let inv = _mm512_set1_ps(if d > 0.0 { 1.0 / d } else { 0.0 });
            // The default rounding mode: to nearest, ties to even, as `round_small`.
            let q0 = _mm512_cvtps_epi32(_mm512_mul_ps(v0, inv));
            let q1 = _mm512_cvtps_epi32(_mm512_mul_ps(v1, inv));
            sum[b] = _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
            scale[b] = d;
            // SAFETY: 16 bytes each, inside `qs`.
            unsafe {
                _mm_storeu_si128(qs.as_mut_ptr().cast(), _mm512_cvtepi32_epi8(q0));
                _mm_storeu_si128(qs.as_mut_ptr().add(16).cast(), _mm512_cvtepi32_epi8(q1));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::round_small;

    #[test]
    fn the_vector_quantizer_equals_the_scalar_one() {
        if !super::has_avx512() {
            return;
        }
        let x: Vec<f32> = (0..4 * 96)
            .map(|i| {
                ((i * 7919) % 1000) as f32 * 0.013 - 6.5 + if i % 37 == 0 { 40.0 } else { 0.0 }
            })
            .collect();
        let mut codes = vec![0i8; x.len()];
        let mut scale = vec![0f32; x.len() / 32];
        let mut sum = vec![0i32; x.len() / 32];
        // SAFETY: checked above; sizes as the function wants.
        unsafe { super::avx512::quantize_row(&x, &mut codes, &mut scale, &mut sum) };
        for b in 0..x.len() / 32 {
            let mut want = [0i8; 32];
            let (d, s) = super::quantize_block(&x[b * 32..(b + 1) * 32], &mut want);
            assert_eq!((scale[b], sum[b]), (d, s), "block {b}");
            assert_eq!(&codes[b * 32..(b + 1) * 32], &want, "block {b}");
        }
    }

    #[test]
    fn the_rounding_trick_rounds_half_to_even_like_the_library() {
        let mut v = -130.0f32;
        while v <= 130.0 {
            assert_eq!(round_small(v), v.round_ties_even(), "{v}");
            v += 0.125;
        }
        for v in [0.49999997f32, -0.5, 2.5, 126.5, 1e-30, -0.0] {
            assert_eq!(round_small(v), v.round_ties_even(), "{v}");
        }
    }
}
