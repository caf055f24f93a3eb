//! SplitMix64 (Steele, Lea & Flood 2014): the one random source microllm's seeded choices use
//! (calibration windows, data order, learned-projection initialisation, stochastic rounding,
//! test values).
//!
//! A run records its seed in its report, so the numbers a seed gives must not change with a
//! dependency's version, the platform or the thread count; this generator is a few lines,
//! fixed by its definition, and its output function also hashes a counter (`mix`), which is
//! what the parallel passes use: the value for element `i` depends on `i` only.

/// SplitMix64's increment (the golden ratio in 64 bits).
const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

/// A seeded generator.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(GOLDEN);
        mix(self.0)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// SplitMix64's output function: 64 well-mixed bits of `key`, a bijection, so distinct keys
/// give distinct values.
pub fn mix(mut key: u64) -> u64 {
    key = (key ^ (key >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    key = (key ^ (key >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    key ^ (key >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference sequence for seed 1234567 (the values published with the algorithm's
    /// C reference implementation).
    #[test]
    fn matches_the_reference_sequence() {
        let mut g = SplitMix64::new(1234567);
        let got: Vec<u64> = (0..3).map(|_| g.next_u64()).collect();
        assert_eq!(
            got,
            [
                6457827717110365317,
                3203168211198807973,
                9817491932198370423
            ]
        );
    }
}
