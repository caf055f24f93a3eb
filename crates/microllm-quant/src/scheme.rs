//! What a quantized weight looks like: bit width, grouping, symmetry, and the integer grid.
//!
//! A [`QuantScheme`] is the part of a recipe that every quantizer (RTN, GPTQ) and every writer
//! (GGUF, GPTQ, compressed-tensors) must agree on. It is validated against a weight's shape
//! *before* any work starts, because a group size that does not divide the row length is the
//! most common way a quantization run fails late (GPTQ checkpoints, GGUF blocks and
//! compressed-tensors all assume whole groups along the input dimension).
//!
//! [`Grid`] is one group's affine integer grid, `w = scale * (code - zero)`, fitted with the
//! min/max rule of the GPTQ reference implementation's `Quantizer.find_params` (Frantar et al.,
//! 2022, code release) so that RTN and GPTQ results are comparable with published ones:
//!
//! * the fitted range always contains 0 (`min = min(min(w), 0)`, `max = max(max(w), 0)`), so a
//!   weight of exactly 0 is always representable;
//! * asymmetric: `scale = (max - min) / maxq`, `zero = round(-min / scale)` (in `0..=maxq`);
//! * symmetric: `scale = 2 * max|w| / maxq`, `zero = (maxq + 1) / 2` (e.g. 8 at 4 bits). The
//!   reference keeps `min = 0` for a group with no negative weight, which halves its usable
//!   range; we always use the symmetric range `[-max|w|, max|w|]` (the one deliberate deviation);
//! * an all-zero group gets the range `[-1, 1]`, so its scale is never 0 and no NaN appears.
//!
//! With these rules every weight inside the fitted range is reproduced within `scale / 2`.

use microllm_core::fp8::{E4M3_MAX, e4m3_from_f32, e4m3_to_f32};
use microllm_core::{CodeType, Error, Result};

/// Bit width, grouping and symmetry of a quantized weight. Serialized with its field names
/// (reports, block stores, resume checks), `group_size` null for per-channel grids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct QuantScheme {
    /// Bits per code, `2..=8`. Codes take values in `0..2^bits`.
    pub bits: u8,
    /// Number of consecutive input columns that share one scale and zero point; `None` means
    /// one group per output channel (the whole row).
    pub group_size: Option<usize>,
    /// Symmetric grids have the fixed zero point `2^(bits-1)`; asymmetric ones fit it.
    pub symmetric: bool,
    /// Round every scale to the nearest f16 before codes are chosen, so formats that store
    /// scales as f16 (GGUF blocks, GPTQ checkpoints) reproduce the quantizer's output exactly.
    pub f16_scales: bool,
    /// Integer codes on an affine grid, or FP8 E4M3 bytes (8 bits, symmetric, zero point 0:
    /// `w = scale * e4m3(code)` with `scale = max|w| / 448`). Left out of serialized integer
    /// schemes, so records written before FP8 existed read back unchanged.
    #[serde(default, skip_serializing_if = "is_int")]
    pub code_type: CodeType,
}

fn is_int(t: &CodeType) -> bool {
    *t == CodeType::Int
}

impl QuantScheme {
    /// Smallest supported bit width ([`microllm_core::CODE_BITS`]).
    pub const MIN_BITS: u8 = *microllm_core::CODE_BITS.start();
    /// Largest supported bit width (codes are stored one per `u8`).
    pub const MAX_BITS: u8 = *microllm_core::CODE_BITS.end();

    /// Builds a validated scheme.
    pub fn new(bits: u8, group_size: Option<usize>, symmetric: bool) -> Result<Self> {
        let scheme = Self {
            bits,
            group_size,
            symmetric,
            f16_scales: false,
            code_type: CodeType::Int,
        };
        scheme.validate()?;
        Ok(scheme)
    }

    /// FP8 E4M3 codes with one scale per row (`group_size` `None`) or per group of columns.
    pub fn fp8(group_size: Option<usize>) -> Result<Self> {
        let scheme = Self {
            bits: 8,
            group_size,
            symmetric: true,
            f16_scales: false,
            code_type: CodeType::Fp8E4M3,
        };
        scheme.validate()?;
        Ok(scheme)
    }

    /// The scheme of a linear stored in a checkpoint (GPTQ, compressed-tensors, AWQ): scales
    /// are f16 there, and a group as long as the row (or longer) is one group per row.
    /// Validated like any scheme; a group that does not divide the row is kept (a ragged last
    /// group, which other tools write) and is the caller's to accept or refuse.
    pub fn stored(
        bits: u8,
        group_len: usize,
        in_features: usize,
        symmetric: bool,
        code_type: CodeType,
    ) -> Result<Self> {
        let scheme = Self {
            bits,
            group_size: (group_len < in_features).then_some(group_len),
            symmetric,
            f16_scales: true,
            code_type,
        };
        scheme.validate()?;
        Ok(scheme)
    }

    /// Whether codes are FP8 bytes rather than integers.
    pub fn is_fp8(&self) -> bool {
        self.code_type == CodeType::Fp8E4M3
    }

    /// Checks the parts of the scheme that do not depend on a weight: the bit range, and that a
    /// group size is not zero.
    pub fn validate(&self) -> Result<()> {
        if !(Self::MIN_BITS..=Self::MAX_BITS).contains(&self.bits) {
            return Err(Error::Invalid(format!(
                "quantization bits must be in {}..={}, got {}",
                Self::MIN_BITS,
                Self::MAX_BITS,
                self.bits
            )));
        }
        if self.group_size == Some(0) {
            return Err(Error::Invalid("quantization group size must be > 0".into()));
        }
        if self.is_fp8() && (self.bits != 8 || !self.symmetric) {
            return Err(Error::Invalid(
                "FP8 E4M3 codes are 8 bits and symmetric".into(),
            ));
        }
        Ok(())
    }

    /// Largest code, `2^bits - 1`.
    pub fn maxq(&self) -> u32 {
        (1u32 << self.bits) - 1
    }

    /// The zero point of a symmetric grid, `2^(bits-1)` (the GPTQ reference's `(maxq + 1) / 2`);
    /// 0 for FP8, whose codes are signed floats.
    pub fn symmetric_zero(&self) -> u8 {
        if self.is_fp8() {
            return 0;
        }
        // bits <= 8, so 2^(bits-1) <= 128 fits.
        (1u32 << (self.bits - 1)) as u8
    }

    /// Columns per group for a row of `in_features` columns.
    pub fn group_len(&self, in_features: usize) -> usize {
        self.group_size.unwrap_or(in_features)
    }

    /// Groups per row of `in_features` columns, a shorter last group counted (the quantizers
    /// never make one; checkpoints of other tools may hold one).
    pub fn groups(&self, in_features: usize) -> usize {
        in_features.div_ceil(self.group_len(in_features).max(1))
    }

    /// Validates the scheme against a weight of shape `[out, in]` and returns the number of
    /// groups per row. `name` is only used in the error message.
    ///
    /// A group size must divide the row length: every packed format stores whole groups along
    /// the input dimension (GPTQ's `scales` has `in / group` rows; GGUF blocks have fixed
    /// lengths), and a ragged last group would need a scale that none of them can express.
    pub fn check_shape(&self, name: &str, shape: [usize; 2]) -> Result<usize> {
        self.validate()?;
        let [out, inp] = shape;
        if out == 0 || inp == 0 {
            return Err(Error::Invalid(format!(
                "cannot quantize `{name}`: empty weight of shape [{out}, {inp}]"
            )));
        }
        let g = self.group_len(inp);
        if !inp.is_multiple_of(g) {
            return Err(Error::Invalid(format!(
                "cannot quantize `{name}` of shape [{out}, {inp}]: group size {g} does not divide \
                 the row length {inp}"
            )));
        }
        Ok(inp / g)
    }

    /// With f16 scales, refuses a weight (`name`, row-major `[out, in]`) whose largest group
    /// needs a scale beyond f16's range: it would be stored as inf and dequantize to NaN.
    /// Real weights sit many orders of magnitude below the limit; a value of 1e6 does not.
    pub fn check_scale_range(
        &self,
        name: &str,
        weight: &[f32],
        [_, inp]: [usize; 2],
    ) -> Result<()> {
        if !self.f16_scales || inp == 0 {
            return Ok(());
        }
        let g = self.group_len(inp);
        let maxq = self.maxq() as f32;
        let largest = weight
            .chunks(g)
            .map(|group| {
                let (lo, hi) = group
                    .iter()
                    .fold((0f32, 0f32), |(lo, hi), &v| (lo.min(v), hi.max(v)));
                if self.is_fp8() {
                    hi.max(-lo) / E4M3_MAX
                } else if self.symmetric {
                    2.0 * hi.max(-lo) / maxq
                } else {
                    (hi - lo) / maxq
                }
            })
            .fold(0f32, f32::max);
        let limit = f32::from(half::f16::MAX);
        if largest > limit {
            return Err(Error::Invalid(format!(
                "cannot quantize `{name}` at {} bits: a group needs a scale of {largest:e}, \
                 beyond the f16 range ({limit}) scales are stored in; its weights are far \
                 larger than any trained model's",
                self.bits
            )));
        }
        Ok(())
    }

    /// The same scheme with scales rounded to f16 (see [`QuantScheme::f16_scales`]).
    pub fn with_f16_scales(self) -> Self {
        Self {
            f16_scales: true,
            ..self
        }
    }

    /// `scale`, rounded to f16 when the scheme asks for it (never to zero).
    #[inline]
    fn store_scale(&self, scale: f32) -> f32 {
        if !self.f16_scales {
            return scale;
        }
        let rounded = round_to_f16(scale);
        if rounded > 0.0 {
            rounded
        } else {
            half::f16::from_bits(1).to_f32()
        }
    }

    /// Fits one group's grid to its weights (see the module docs for the rule).
    pub fn fit(&self, values: impl IntoIterator<Item = f32>) -> Grid {
        let (mut lo, mut hi) = (0.0f32, 0.0f32);
        for v in values {
            lo = lo.min(v);
            hi = hi.max(v);
        }
        let maxq = self.maxq() as f32;
        if self.is_fp8() {
            let amax = hi.max(-lo);
            let amax = if amax > 0.0 { amax } else { 1.0 };
            Grid {
                scale: self.store_scale(amax / E4M3_MAX),
                zero: 0,
                maxq: u8::MAX,
                code_type: CodeType::Fp8E4M3,
            }
        } else if self.symmetric {
            let amax = hi.max(-lo);
            let amax = if amax > 0.0 { amax } else { 1.0 };
            Grid {
                scale: self.store_scale(2.0 * amax / maxq),
                zero: self.symmetric_zero(),
                maxq: self.maxq() as u8,
                code_type: CodeType::Int,
            }
        } else {
            if lo == 0.0 && hi == 0.0 {
                (lo, hi) = (-1.0, 1.0);
            }
            let scale = self.store_scale((hi - lo) / maxq);
            let zero = (-lo / scale).round().clamp(0.0, maxq);
            Grid {
                scale,
                zero: zero as u8,
                maxq: self.maxq() as u8,
                code_type: CodeType::Int,
            }
        }
    }
}

/// A search for each group's clipping range, instead of taking its min/max (the GPTQ reference
/// implementation's `mse` option of `Quantizer.find_params`).
///
/// Min/max grids spend their range on the one or two largest weights of a group; shrinking the
/// range by a few percent rounds those a little worse and every other weight of the group
/// better. The search tries the ranges `p * [min, max]` for `p = 1, 1 - 1/steps, ...` down to
/// `1 - max_shrink` and keeps the grid with the least error `sum_j h_j |w_j - q(w_j)|^norm`,
/// where `h_j` is the importance of column `j` (the Hessian diagonal when GPTQ knows it, else
/// 1). Each candidate's scale is rounded as it will be stored, so the error compared is the
/// error written.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClipSearch {
    /// Candidates per unit of shrink (the reference's `grid`, 100).
    pub steps: u32,
    /// Largest fraction of the range removed (the reference's `maxshrink` is 0.8; we default
    /// to 0.2, which keeps the search cheap).
    pub max_shrink: f32,
    /// Exponent of the error (the reference's `norm` is 2.4; we default to 2, the squared
    /// error GPTQ's objective weighs, which measured better on SmolLM2: see
    /// docs/benchmarks.md).
    pub norm: f32,
}

impl Default for ClipSearch {
    fn default() -> Self {
        Self {
            steps: 100,
            max_shrink: 0.2,
            norm: 2.0,
        }
    }
}

impl QuantScheme {
    /// The grid of `values` chosen by `search`: of the clipped ranges tried, the one whose
    /// rounding error, weighted by `importance` (one entry per value, or `None` for equal
    /// weights), is least. The unclipped min/max grid ([`QuantScheme::fit`]) is always a
    /// candidate, so the result is never worse than it on that measure.
    pub fn fit_clipped(
        &self,
        values: &[f32],
        importance: Option<&[f32]>,
        search: &ClipSearch,
    ) -> Grid {
        let full = self.fit(values.iter().copied());
        let error = |grid: &Grid| -> f32 {
            if search.norm == 2.0 {
                return grid.squared_error(values, importance);
            }
            let mut total = 0.0f32;
            for (j, &w) in values.iter().enumerate() {
                let e = (w - grid.round_trip(w)).abs().powf(search.norm);
                total += importance.map_or(e, |h| h[j] * e);
            }
            total
        };
        let (lo, hi) = values
            .iter()
            .fold((0.0f32, 0.0f32), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        if lo == 0.0 && hi == 0.0 {
            return full;
        }
        let (mut best, mut best_err) = (full, error(&full));
        let candidates = (search.max_shrink * search.steps as f32) as u32;
        for i in 1..=candidates {
            let p = 1.0 - i as f32 / search.steps as f32;
            if p <= 0.0 {
                break;
            }
            let grid = self.fit([lo * p, hi * p]);
            let err = error(&grid);
            if err < best_err {
                (best, best_err) = (grid, err);
            }
        }
        best
    }
}

/// One group's grid: integer, `w = scale * (code - zero)` with codes in `0..=maxq`; or FP8,
/// `w = scale * e4m3(code)`.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Grid {
    pub scale: f32,
    pub zero: u8,
    pub maxq: u8,
    pub code_type: CodeType,
}

impl Grid {
    /// Nearest code (integers: round half away from zero, then clamp into `0..=maxq`; FP8:
    /// the nearest E4M3 value of `w / scale`, ties to even, saturating at ±448).
    #[inline]
    pub fn quantize(&self, w: f32) -> u8 {
        if self.code_type == CodeType::Fp8E4M3 {
            return e4m3_from_f32(w / self.scale);
        }
        let q = round_half_away(w / self.scale) + self.zero as f32;
        q.clamp(0.0, self.maxq as f32) as u8
    }

    /// The weight a code stands for.
    #[inline]
    pub fn dequantize(&self, code: u8) -> f32 {
        if self.code_type == CodeType::Fp8E4M3 {
            return self.scale * e4m3_to_f32(code);
        }
        self.scale * (code as f32 - self.zero as f32)
    }

    /// `dequantize(quantize(w))`.
    #[inline]
    pub fn round_trip(&self, w: f32) -> f32 {
        self.dequantize(self.quantize(w))
    }

    /// `sum_j h_j (w_j - round_trip(w_j))^2` (`h_j = 1` without importances), for finite `w`:
    /// the clipping search's inner loop, written branch-free over [`LANES`] partial sums so
    /// that it vectorises. Codes are the ones [`Self::quantize`] picks: clamping `w / scale`
    /// to `±256` first changes no code, since every code is clamped into `0..=255` after the
    /// zero point (itself in `0..=255`) is added.
    pub fn squared_error(&self, values: &[f32], importance: Option<&[f32]>) -> f32 {
        if self.code_type == CodeType::Fp8E4M3 {
            let mut total = 0.0f32;
            for (j, &w) in values.iter().enumerate() {
                let d = w - self.round_trip(w);
                total += importance.map_or(1.0, |h| h[j]) * d * d;
            }
            return total;
        }
        let (zero, maxq) = (self.zero as f32, self.maxq as f32);
        let err = |w: f32| {
            let x = (w / self.scale).clamp(-256.0, 256.0);
            let q = (round_half_away_small(x) + zero).clamp(0.0, maxq);
            let d = w - self.scale * (q - zero);
            d * d
        };
        let mut acc = [0.0f32; LANES];
        let (head, tail) = values.split_at(values.len() - values.len() % LANES);
        match importance {
            Some(h) => {
                for (w, h) in head.chunks_exact(LANES).zip(h.chunks_exact(LANES)) {
                    for k in 0..LANES {
                        acc[k] += h[k] * err(w[k]);
                    }
                }
                for (j, &w) in tail.iter().enumerate() {
                    acc[j] += h[head.len() + j] * err(w);
                }
            }
            None => {
                for w in head.chunks_exact(LANES) {
                    for k in 0..LANES {
                        acc[k] += err(w[k]);
                    }
                }
                for (j, &w) in tail.iter().enumerate() {
                    acc[j] += err(w);
                }
            }
        }
        acc.iter().sum()
    }
}

/// Partial sums of [`Grid::squared_error`]: one AVX-512 register of f32 (two AVX2 ones).
const LANES: usize = 16;

/// `x` rounded to the nearest f16 (ties to even) and back, as `half::f16::from_f32(x).to_f32()`
/// gives. The clipping search rounds every candidate scale, about 20 per group; for values in
/// f16's normal range this is five integer operations the compiler inlines, where `half`'s
/// conversion is two calls (8% of a 7B-sized GPTQ block under `perf`). Anything else
/// (subnormal or beyond f16's range, infinities, NaN) goes through `half`.
#[inline]
pub(crate) fn round_to_f16(x: f32) -> f32 {
    const MIN_NORMAL: f32 = 6.103_515_6e-5; // 2^-14
    const MAX_FINITE: f32 = 65_504.0;
    if (MIN_NORMAL..MAX_FINITE).contains(&x.abs()) {
        // Keep 10 of the 23 mantissa bits, rounding to nearest, ties to even; a carry into the
        // exponent is the correct rounding up to the next power of two, and nothing below
        // MAX_FINITE (itself an f16) rounds past it.
        let bits = x.to_bits();
        return f32::from_bits((bits + 0x0FFF + ((bits >> 13) & 1)) & !0x1FFF);
    }
    half::f16::from_f32(x).to_f32()
}

/// `x.round()` (half away from zero) without libm's `roundf` call, which x86-64's baseline
/// instruction set cannot inline: this form vectorises, and the clipping search calls it
/// for every weight of every candidate grid. Exact: below 2^23, `trunc` through an integer
/// is exact and so is `|x| - trunc(|x|)` (Sterbenz); at or above it (and for NaN) `x` is
/// returned as `round` would.
#[inline]
fn round_half_away(x: f32) -> f32 {
    if x.is_nan() || x.abs() >= 8_388_608.0 {
        return x;
    }
    round_half_away_small(x)
}

/// [`round_half_away`] for `|x| < 2^23` (not NaN), without the guard, so that a loop over
/// values already clamped into that range stays branch-free.
#[inline]
fn round_half_away_small(x: f32) -> f32 {
    let a = x.abs();
    let t = (a as i32) as f32;
    let r = if a - t >= 0.5 { t + 1.0 } else { t };
    r.copysign(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_rounding_matches_half_everywhere() {
        let check = |x: f32| {
            let (ours, theirs) = (round_to_f16(x), half::f16::from_f32(x).to_f32());
            assert!(
                ours.to_bits() == theirs.to_bits() || (ours.is_nan() && theirs.is_nan()),
                "{x:e} ({:#010x}): {ours:e} vs half's {theirs:e}",
                x.to_bits()
            );
        };
        // A sparse walk over every bit pattern (both signs, every exponent, NaN and infinity).
        for bits in (0..=u32::MAX).step_by(4099) {
            check(f32::from_bits(bits));
        }
        // Ties (the 13 dropped bits exactly half way) on even and odd kept mantissas, carries
        // into the exponent, and the edges of f16's normal range.
        for e in [103u32, 113, 127, 140, 142] {
            for m in [
                0u32, 0x1000, 0x2000, 0x3000, 0x7F_F000, 0x7F_EFFF, 0x7F_FFFF, 0x1FFF,
            ] {
                check(f32::from_bits((e << 23) | m));
                check(-f32::from_bits((e << 23) | m));
            }
        }
        for x in [
            6.103_515_6e-5,
            6.1e-5,
            65_504.0,
            65_519.0,
            65_520.0,
            65_536.0,
        ] {
            check(x);
        }
    }

    #[test]
    fn inline_rounding_is_libms_round() {
        let mut cases = vec![
            0.0f32,
            -0.0,
            0.5,
            -0.5,
            1.5,
            -1.5,
            2.5,
            0.49999997,
            -0.49999997,
            1e-30,
            8_388_607.5,
            8_388_608.0,
            -8_388_609.0,
            1e20,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::MIN_POSITIVE,
            7.499_999_5,
        ];
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        for _ in 0..200_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let bits = (state >> 32) as u32;
            let x = f32::from_bits(bits);
            cases.push(x);
            // Values near code boundaries, where rounding matters.
            cases.push((bits % 64_000) as f32 / 1000.0 - 32.0);
        }
        for x in cases {
            let (got, want) = (round_half_away(x), x.round());
            assert!(
                got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
                "{x:e}: {got:e} vs {want:e}"
            );
        }
    }

    #[test]
    fn bits_are_validated() {
        assert!(QuantScheme::new(1, None, true).is_err());
        assert!(QuantScheme::new(9, None, true).is_err());
        assert!(QuantScheme::new(4, Some(0), true).is_err());
        for b in 2..=8 {
            assert!(QuantScheme::new(b, Some(32), false).is_ok());
        }
    }

    #[test]
    fn group_must_divide_row_and_error_names_shape() {
        let s = QuantScheme::new(4, Some(128), true).unwrap();
        let err = s
            .check_shape("model.layers.0.mlp.down_proj.weight", [576, 1536])
            .unwrap();
        assert_eq!(err, 12);
        let msg = s
            .check_shape("model.layers.0.mlp.up_proj.weight", [1536, 576])
            .unwrap_err()
            .to_string();
        assert!(msg.contains("up_proj"), "{msg}");
        assert!(msg.contains("[1536, 576]"), "{msg}");
        assert!(msg.contains("128"), "{msg}");
        let per_channel = QuantScheme::new(4, None, true).unwrap();
        assert_eq!(per_channel.check_shape("w", [3, 576]).unwrap(), 1);
    }

    #[test]
    fn hand_checked_grids() {
        // Asymmetric 2-bit on [-1, 2]: scale = 3/3 = 1, zero = 1.
        let s = QuantScheme::new(2, None, false).unwrap();
        let g = s.fit([-1.0, 0.5, 2.0]);
        assert_eq!((g.scale, g.zero), (1.0, 1));
        assert_eq!(g.quantize(-1.0), 0);
        assert_eq!(g.quantize(2.0), 3);
        assert_eq!(g.round_trip(0.4), 0.0);
        // Symmetric 4-bit, max|w| = 7.5: scale = 15/15 = 1, zero = 8.
        let s = QuantScheme::new(4, None, true).unwrap();
        let g = s.fit([-7.5, 3.0]);
        assert_eq!((g.scale, g.zero), (1.0, 8));
        assert_eq!(g.quantize(-7.5), 0);
        assert_eq!(g.quantize(3.0), 11);
        // Positive-only groups keep the full symmetric range.
        let g = s.fit([7.5, 1.0]);
        assert_eq!((g.scale, g.zero), (1.0, 8));
        assert_eq!(g.round_trip(7.0), 7.0);
    }

    #[test]
    fn all_zero_group_has_finite_scale() {
        for sym in [false, true] {
            let s = QuantScheme::new(3, None, sym).unwrap();
            let g = s.fit([0.0; 4]);
            assert!(g.scale.is_finite() && g.scale > 0.0);
            assert_eq!(g.round_trip(0.0), 0.0);
        }
    }

    #[test]
    fn squared_error_is_the_round_trip_error() {
        let mut rng = crate::testutil::Rng::new(5);
        for (bits, sym) in [(2, true), (4, false), (8, true), (3, false)] {
            let s = QuantScheme::new(bits, None, sym).unwrap();
            // Ragged lengths exercise the tail; the grid of a narrower range clips.
            for len in [1, 15, 16, 37, 128] {
                let v: Vec<f32> = rng.normal_vec(len).iter().map(|x| 3.0 * x).collect();
                let h: Vec<f32> = (0..len).map(|_| 0.1 + rng.uniform() as f32).collect();
                let grid = s.fit(v.iter().map(|x| 0.7 * x));
                let scalar = |imp: bool| -> f32 {
                    let sq = |(j, &w): (usize, &f32)| {
                        let d = w - grid.round_trip(w);
                        if imp { h[j] * d * d } else { d * d }
                    };
                    v.iter().enumerate().map(sq).sum()
                };
                for (got, want) in [
                    (grid.squared_error(&v, Some(&h)), scalar(true)),
                    (grid.squared_error(&v, None), scalar(false)),
                ] {
                    assert!(
                        (got - want).abs() <= 1e-5 * want.max(1e-6),
                        "bits {bits} sym {sym} len {len}: {got} vs {want}"
                    );
                }
            }
        }
        // Far outside the grid (|w / scale| > 256) the code clamps as quantize does.
        let g = Grid {
            scale: 1e-3,
            zero: 8,
            maxq: 15,
            code_type: CodeType::Int,
        };
        let far = [10.0f32, -10.0];
        let want: f32 = far.iter().map(|&w| (w - g.round_trip(w)).powi(2)).sum();
        assert_eq!(g.squared_error(&far, None), want);
    }

    #[test]
    fn clip_search_never_loses_to_min_max_and_usually_clips() {
        let search = ClipSearch::default();
        let error = |g: &Grid, v: &[f32], h: &[f32]| -> f32 {
            v.iter()
                .zip(h)
                .map(|(&w, &h)| h * (w - g.round_trip(w)).abs().powf(search.norm))
                .sum()
        };
        let mut rng = crate::testutil::Rng::new(3);
        for sym in [false, true] {
            let s = QuantScheme::new(4, Some(32), sym)
                .unwrap()
                .with_f16_scales();
            let (mut clipped_groups, mut total_full, mut total_clipped) = (0, 0.0, 0.0);
            for _ in 0..64 {
                let v = rng.normal_vec(32);
                let h: Vec<f32> = (0..32).map(|_| 0.1 + rng.uniform() as f32).collect();
                let full = s.fit(v.iter().copied());
                let clipped = s.fit_clipped(&v, Some(&h), &search);
                let (ef, ec) = (error(&full, &v, &h), error(&clipped, &v, &h));
                assert!(ec <= ef, "sym {sym}: {ec} > {ef}");
                clipped_groups += usize::from(clipped.scale < full.scale);
                (total_full, total_clipped) = (total_full + ef, total_clipped + ec);
            }
            // Gaussian groups of 32 almost always gain from a slightly narrower range.
            assert!(
                clipped_groups > 32,
                "sym {sym}: {clipped_groups} of 64 clipped"
            );
            assert!(
                total_clipped < 0.95 * total_full,
                "{total_clipped} vs {total_full}"
            );
        }
        let zeros = QuantScheme::new(3, None, true).unwrap();
        let g = zeros.fit_clipped(&[0.0; 8], None, &search);
        assert!(g.scale.is_finite() && g.scale > 0.0);
    }
}
