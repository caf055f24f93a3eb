//! FP8 E4M3 ("e4m3fn"), the 8-bit float of FP8 checkpoints, and what a quantized code means.
//!
//! FP8 weights and activations (compressed-tensors' `float-quantized`, what vLLM runs on
//! Hopper and Ada GPUs) store one byte per value: 1 sign bit, 4 exponent bits (bias 7), 3
//! mantissa bits, no infinities, and NaN only as `S.1111.111`. So the largest finite value is
//! `1.75 * 2^8 = 448`, the smallest normal `2^-6`, and subnormals are multiples of `2^-9`.
//! A code is then a *float*, not an index on a uniform grid, and quantizers, readers and
//! writers must agree on which a byte is: [`CodeType`].
//!
//! [`e4m3_from_f32`] rounds to nearest, ties to even, as PyTorch's cast to
//! `torch.float8_e4m3fn` does for values in range; callers clamp to `±448` first, as
//! compressed-tensors does (beyond it the cast gives NaN). [`e4m3_to_f32`] is exact.

use serde::{Deserialize, Serialize};

/// The largest finite E4M3 value.
pub const E4M3_MAX: f32 = 448.0;

/// What a stored code stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CodeType {
    /// An unsigned integer on an affine grid: `scale * (code - zero)`.
    #[default]
    Int,
    /// An FP8 E4M3 byte: `scale * e4m3_to_f32(code)` (zero point unused, 0).
    #[serde(rename = "fp8-e4m3")]
    Fp8E4M3,
}

impl CodeType {
    /// The value of `code` in group units before the scale is applied (`zero` unused for
    /// floats).
    #[inline]
    pub fn unscaled(self, code: u8, zero: u8) -> f32 {
        match self {
            CodeType::Int => code as f32 - zero as f32,
            CodeType::Fp8E4M3 => e4m3_to_f32(code),
        }
    }

    /// Whether `code` is a value of this type (every byte is an integer code; E4M3's two NaN
    /// bytes are not values).
    #[inline]
    pub fn is_value(self, code: u8) -> bool {
        self == CodeType::Int || code & 0x7F != 0x7F
    }
}

/// Every E4M3 byte's value (NaN for `0x7F` and `0xFF`).
static E4M3_VALUES: [f32; 256] = e4m3_table();

const fn e4m3_table() -> [f32; 256] {
    let mut t = [0f32; 256];
    let mut b = 0;
    while b < 256 {
        let exp = ((b >> 3) & 0xF) as i32;
        let mant = (b & 7) as u32;
        let magnitude = if exp == 0xF && mant == 7 {
            f32::NAN
        } else if exp == 0 {
            // Subnormal: mant / 8 * 2^-6 = mant * 2^-9, exact.
            mant as f32 / 512.0
        } else {
            // (8 + mant) / 8 * 2^(exp - 7): the f32 with that exponent and mantissa bits.
            f32::from_bits((((exp - 7 + 127) as u32) << 23) | (mant << 20))
        };
        t[b] = if b & 0x80 != 0 { -magnitude } else { magnitude };
        b += 1;
    }
    t
}

/// The value of an E4M3 byte (NaN for the two NaN bytes).
#[inline]
pub fn e4m3_to_f32(code: u8) -> f32 {
    E4M3_VALUES[code as usize]
}

/// The E4M3 byte nearest `x` (ties to even), for `|x| <= 448`; larger magnitudes saturate to
/// `±448` and NaN gives the NaN byte `0x7F`.
#[inline]
pub fn e4m3_from_f32(x: f32) -> u8 {
    if x.is_nan() {
        return 0x7F;
    }
    let sign = if x.is_sign_negative() { 0x80u8 } else { 0 };
    let a = x.abs().min(E4M3_MAX);
    const MIN_NORMAL: f32 = 1.0 / 64.0; // 2^-6
    let magnitude = if a < MIN_NORMAL {
        // Subnormal steps of 2^-9: the byte is the step count, and 8 steps is exactly the
        // smallest normal's byte (exponent 1, mantissa 0), so rounding up carries correctly.
        (a * 512.0).round_ties_even() as u8
    } else {
        // a = 2^e * (1 + m/8): e from the f32 exponent, m rounded from the top mantissa bits.
        let e = ((a.to_bits() >> 23) as i32) - 127;
        let frac = a / f32::from_bits(((e + 127) as u32) << 23) - 1.0;
        let m = (frac * 8.0).round_ties_even() as i32;
        // m == 8 carries into the exponent, which `(e + 7) << 3 | m` does by itself.
        (((e + 7) << 3) + m) as u8
    };
    sign | magnitude
}

/// `x` rounded to the nearest E4M3 value (after saturating to `±448`).
#[inline]
pub fn round_to_e4m3(x: f32) -> f32 {
    e4m3_to_f32(e4m3_from_f32(x))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_round_trips_and_the_edges_are_the_format_s() {
        for b in 0..=255u8 {
            let v = e4m3_to_f32(b);
            if b & 0x7F == 0x7F {
                assert!(v.is_nan());
                continue;
            }
            // -0.0 (0x80) comes back as 0x80, not 0x00.
            assert_eq!(e4m3_from_f32(v), b, "{b:#04x} = {v}");
        }
        assert_eq!(e4m3_to_f32(0x7E), 448.0);
        assert_eq!(e4m3_to_f32(0x08), 1.0 / 64.0);
        assert_eq!(e4m3_to_f32(0x01), 1.0 / 512.0);
        assert_eq!(e4m3_to_f32(0x38), 1.0);
        assert_eq!(e4m3_from_f32(1e6), 0x7E);
        assert_eq!(e4m3_from_f32(-1e6), 0xFE);
        assert_eq!(e4m3_from_f32(f32::NAN), 0x7F);
    }

    /// Between two neighbouring values every input goes to the nearer, and exactly half way to
    /// the one with an even mantissa.
    #[test]
    fn rounding_is_to_nearest_ties_to_even() {
        let finite: Vec<f32> = (0..0x7Fu8).map(e4m3_to_f32).collect();
        for pair in finite.windows(2) {
            let (lo, hi) = (pair[0], pair[1]);
            let mid = (lo + hi) / 2.0; // exact: both are short binary fractions
            let (blo, bhi) = (e4m3_from_f32(lo), e4m3_from_f32(hi));
            let even = if blo & 1 == 0 { blo } else { bhi };
            assert_eq!(e4m3_from_f32(mid), even, "tie between {lo} and {hi}");
            let below = f32::from_bits(mid.to_bits() - 1);
            let above = f32::from_bits(mid.to_bits() + 1);
            assert_eq!(e4m3_from_f32(below), blo, "just below {mid}");
            assert_eq!(e4m3_from_f32(above), bhi, "just above {mid}");
            assert_eq!(e4m3_from_f32(-above), bhi | 0x80);
        }
        // Below half the smallest subnormal: zero; the tie at 2^-10 goes to even (zero).
        assert_eq!(e4m3_from_f32(1.0 / 1024.0), 0);
        assert_eq!(e4m3_from_f32(1.5 / 1024.0), 1);
    }

    #[test]
    fn code_types_read_codes_as_their_values() {
        assert_eq!(CodeType::Int.unscaled(10, 8), 2.0);
        assert_eq!(CodeType::Fp8E4M3.unscaled(0xB8, 0), -1.0);
        assert!(!CodeType::Fp8E4M3.is_value(0xFF));
        assert!(CodeType::Int.is_value(0xFF));
    }
}
