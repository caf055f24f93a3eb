//! ggml's legacy block formats, written directly from f32 rows.
//!
//! Q8_0, Q4_0 and Q4_1 are the formats GPTQ results map onto exactly (groups of 32, one
//! scale, and for Q4_1 a minimum), and the ones llama.cpp's own quantizer writes fastest, so
//! microllm packs them itself instead of going through candle's generic scalar path. The
//! rounding reproduces ggml's reference quantizers bit for bit (`quantize_row_q8_0_ref` and
//! friends): round half away from zero for Q8_0, `(int)(x + 8.5)` / `(int)(x + 0.5)`
//! truncation for the 4-bit types, scales stored as f16. The oracle test checks the bytes
//! against candle's ggml port.
//!
//! Layouts (bytes per block of 32 weights):
//! - Q8_0 (34): f16 `d`, 32 x i8 `q`; w = d * q.
//! - Q4_0 (18): f16 `d`, 16 bytes holding weight j in the low nibble of byte j and weight
//!   j + 16 in the high nibble; w = d * (q - 8).
//! - Q4_1 (20): f16 `d`, f16 `m`, nibbles as Q4_0; w = d * q + m.

use half::f16;

/// A packer: appends the blocks of a slice of whole blocks to a byte buffer.
pub type Packer = fn(&[f32], &mut Vec<u8>);

/// Weights per block.
pub const QK: usize = 32;
/// Bytes of one Q8_0 block.
pub const Q8_0_BYTES: usize = 2 + QK;
/// Bytes of one Q4_0 block.
pub const Q4_0_BYTES: usize = 2 + QK / 2;
/// Bytes of one Q4_1 block.
pub const Q4_1_BYTES: usize = 4 + QK / 2;

const _: () = assert!(Q8_0_BYTES == 34 && Q4_0_BYTES == 18 && Q4_1_BYTES == 20);

/// Rounds half away from zero, like C's `roundf`, without a libm call (`x as i32` is a plain
/// truncating conversion; `x - trunc(x)` is exact for the |x| <= 127.5 seen here).
#[inline]
fn round_away(x: f32) -> i32 {
    let t = x as i32;
    let frac = x - t as f32;
    t + i32::from(frac >= 0.5) - i32::from(frac <= -0.5)
}

/// The largest magnitude in a block, in eight independent lanes so the loop vectorises (a
/// sequential fold does not).
#[inline]
fn abs_max(block: &[f32; QK]) -> f32 {
    let mut lanes = [0f32; 8];
    for part in block.chunks_exact(8) {
        for (l, x) in lanes.iter_mut().zip(part) {
            let a = x.abs();
            if a > *l {
                *l = a;
            }
        }
    }
    lanes.iter().fold(0f32, |m, &l| if l > m { l } else { m })
}

/// Appends the Q8_0 blocks of `xs` (a multiple of 32 values) to `out`.
pub fn q8_0(xs: &[f32], out: &mut Vec<u8>) {
    out.reserve(xs.len() / QK * Q8_0_BYTES);
    for block in xs.chunks_exact(QK) {
        let block: &[f32; QK] = block.try_into().expect("a whole block");
        let d = abs_max(block) / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let mut codes = [0u8; QK];
        for (c, &x) in codes.iter_mut().zip(block) {
            *c = round_away(x * id) as i8 as u8;
        }
        out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
        out.extend_from_slice(&codes);
    }
}

/// Appends the Q4_0 blocks of `xs` to `out`.
pub fn q4_0(xs: &[f32], out: &mut Vec<u8>) {
    out.reserve(xs.len() / QK * Q4_0_BYTES);
    for block in xs.chunks_exact(QK) {
        let block: &[f32; QK] = block.try_into().expect("a whole block");
        // The first value of largest magnitude, sign kept: it maps to -8 exactly. An all-zero
        // block keeps +0 (so `d` is -0, as ggml writes it).
        let amax = abs_max(block);
        let max = if amax > 0.0 {
            block
                .iter()
                .copied()
                .find(|x| x.abs() == amax)
                .unwrap_or(0.0)
        } else {
            0.0
        };
        let d = max / -8.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let code = |x: f32| ((x * id + 8.5) as u8).min(15);
        let mut packed = [0u8; QK / 2];
        for (j, p) in packed.iter_mut().enumerate() {
            *p = code(block[j]) | (code(block[j + QK / 2]) << 4);
        }
        out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
        out.extend_from_slice(&packed);
    }
}

/// Appends the Q4_1 blocks of `xs` to `out`.
pub fn q4_1(xs: &[f32], out: &mut Vec<u8>) {
    for block in xs.chunks_exact(QK) {
        let min = block.iter().copied().fold(f32::INFINITY, f32::min);
        let max = block.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let d = (max - min) / 15.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
        out.extend_from_slice(&f16::from_f32(min).to_le_bytes());
        let code = |x: f32| (((x - min) * id + 0.5) as u8).min(15);
        out.extend((0..QK / 2).map(|j| code(block[j]) | (code(block[j + QK / 2]) << 4)));
    }
}

/// Integer codes with one scale (and zero point) per group of 32 consecutive weights of a row:
/// the form a quantizer such as GPTQ produces, `w = scale * (code - zero)`.
#[derive(Debug, Clone, Copy)]
pub struct GroupCodes<'a> {
    /// Row-major `[rows, cols]`, one code per weight.
    pub codes: &'a [u8],
    /// `[rows, cols / 32]`.
    pub scales: &'a [f32],
    /// `[rows, cols / 32]`.
    pub zeros: &'a [u8],
    pub cols: usize,
}

impl GroupCodes<'_> {
    fn check(&self, format: &str, zero: Option<u8>, max_code: u8) -> Result<(), String> {
        let groups = self.codes.len() / QK;
        if self.cols == 0
            || !self.cols.is_multiple_of(QK)
            || !self.codes.len().is_multiple_of(self.cols)
        {
            return Err(format!("{format} needs rows of whole 32-weight groups"));
        }
        if self.scales.len() != groups || self.zeros.len() != groups {
            return Err(format!("{format} needs one scale and zero per group of 32"));
        }
        if let Some(z) = zero
            && self.zeros.iter().any(|&x| x != z)
        {
            return Err(format!("{format} needs every zero point to be {z}"));
        }
        if self.codes.iter().any(|&c| c > max_code) {
            return Err(format!("{format} codes must be at most {max_code}"));
        }
        Ok(())
    }

    fn group(&self, g: usize) -> (&[u8], f32, u8) {
        (
            &self.codes[g * QK..(g + 1) * QK],
            self.scales[g],
            self.zeros[g],
        )
    }
}

/// Q4_0 blocks holding exactly `scale * (code - 8)`: symmetric 4-bit codes (zero 8), groups of
/// 32, scales representable in f16. Errors name the mismatch.
pub fn q4_0_from_codes(q: &GroupCodes<'_>) -> Result<Vec<u8>, String> {
    q.check("Q4_0", Some(8), 15)?;
    let mut out = Vec::with_capacity(q.scales.len() * Q4_0_BYTES);
    for g in 0..q.scales.len() {
        let (codes, scale, _) = q.group(g);
        out.extend_from_slice(&f16_exact(scale)?.to_le_bytes());
        out.extend((0..QK / 2).map(|j| codes[j] | (codes[j + QK / 2] << 4)));
    }
    Ok(out)
}

/// Q4_1 blocks for asymmetric 4-bit codes: `d = scale`, `m = -scale * zero` (rounded to f16,
/// the one rounding this mapping adds).
pub fn q4_1_from_codes(q: &GroupCodes<'_>) -> Result<Vec<u8>, String> {
    q.check("Q4_1", None, 15)?;
    let mut out = Vec::with_capacity(q.scales.len() * Q4_1_BYTES);
    for g in 0..q.scales.len() {
        let (codes, scale, zero) = q.group(g);
        out.extend_from_slice(&f16_exact(scale)?.to_le_bytes());
        out.extend_from_slice(&f16::from_f32(-scale * zero as f32).to_le_bytes());
        out.extend((0..QK / 2).map(|j| codes[j] | (codes[j + QK / 2] << 4)));
    }
    Ok(out)
}

/// Q8_0 blocks holding exactly `scale * (code - 128)`: symmetric 8-bit codes (zero 128).
pub fn q8_0_from_codes(q: &GroupCodes<'_>) -> Result<Vec<u8>, String> {
    q.check("Q8_0", Some(128), 255)?;
    let mut out = Vec::with_capacity(q.scales.len() * Q8_0_BYTES);
    for g in 0..q.scales.len() {
        let (codes, scale, _) = q.group(g);
        out.extend_from_slice(&f16_exact(scale)?.to_le_bytes());
        out.extend(codes.iter().map(|&c| (c as i16 - 128) as i8 as u8));
    }
    Ok(out)
}

/// `x` as f16, refusing a value f16 cannot hold exactly (the quantizer must round its scales
/// to f16 first, or the file would not reproduce its output).
fn f16_exact(x: f32) -> Result<f16, String> {
    let h = f16::from_f32(x);
    if h.to_f32() == x {
        Ok(h)
    } else {
        Err(format!(
            "scale {x} is not representable in f16: quantize with f16 scales"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::GgufType;
    use candle_core::quantized::QTensor;
    use candle_core::{Device, Tensor};

    fn candle_bytes(xs: &[f32], dtype: GgufType) -> Vec<u8> {
        let t = Tensor::from_slice(xs, (xs.len() / QK, QK), &Device::Cpu).unwrap();
        QTensor::quantize(&t, dtype.candle().unwrap())
            .unwrap()
            .data()
            .unwrap()
            .into_owned()
    }

    /// Random values plus the awkward cases: an all-zero block, exact ties at .5 after
    /// scaling, and a block whose extreme value is negative.
    fn samples() -> Vec<f32> {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut xs: Vec<f32> = (0..QK * 64)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 3.0
            })
            .collect();
        xs[..QK].fill(0.0);
        for (j, x) in xs[QK..2 * QK].iter_mut().enumerate() {
            *x = j as f32 - 15.5;
        }
        xs[2 * QK] = -9.0;
        xs
    }

    #[test]
    fn bytes_equal_ggml_reference() {
        let xs = samples();
        for (dtype, pack) in [
            (GgufType::Q8_0, q8_0 as Packer),
            (GgufType::Q4_0, q4_0),
            (GgufType::Q4_1, q4_1),
        ] {
            let mut ours = Vec::new();
            pack(&xs, &mut ours);
            assert_eq!(ours, candle_bytes(&xs, dtype), "{dtype:?}");
        }
    }

    #[test]
    fn rounding_is_half_away_from_zero() {
        for (x, r) in [
            (0.5, 1),
            (-0.5, -1),
            (1.49, 1),
            (-2.5, -3),
            (126.5, 127),
            (0.0, 0),
        ] {
            assert_eq!(round_away(x), r, "{x}");
            assert_eq!(round_away(x), x.round() as i32);
        }
    }
}
