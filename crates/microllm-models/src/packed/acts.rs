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
        codes
            .par_chunks_mut(cols)
            .zip(scale.par_chunks_mut(blocks))
            .zip(sum.par_chunks_mut(blocks))
            .zip(x.par_chunks(cols))
            .for_each(|(((codes, scale), sum), x)| {
                for (b, xs) in x.chunks_exact(BLOCK).enumerate() {
                    let amax = xs.iter().fold(0f32, |a, v| a.max(v.abs()));
                    let d = amax / 127.0;
                    let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
                    let mut s = 0i32;
                    for (q, &v) in codes[b * BLOCK..(b + 1) * BLOCK].iter_mut().zip(xs) {
                        let c = round_small(v * inv) as i32;
                        *q = c as i8;
                        s += c;
                    }
                    scale[b] = d;
                    sum[b] = s;
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

#[cfg(test)]
mod tests {
    use super::round_small;

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
