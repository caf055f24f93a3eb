//! Calibration sets: windows of tokens drawn reproducibly from a text.
//!
//! GPTQ, Wanda and SparseGPT see the model only through these windows, so what was used must
//! be on record: the text is cut into consecutive non-overlapping windows of `seqlen` tokens,
//! the windows are shuffled with a seeded generator and the first `samples` are taken. No
//! window repeats and none overlaps, so the figure "128 x 512 tokens" means 65,536 distinct
//! positions. A text too short for the request is not padded or silently resampled: the set
//! records its shortfall, and callers decide whether that is an error. The text's SHA-256 goes
//! into reports so a run can be matched to its data.

use microllm_core::rng::SplitMix64;
use sha2::{Digest, Sha256};

/// Windows drawn from one text, with what is needed to report them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CalibrationSet {
    /// The windows, `seqlen` tokens each.
    pub windows: Vec<Vec<u32>>,
    pub seqlen: usize,
    /// Windows asked for.
    pub requested: usize,
    /// Complete windows the text holds.
    pub available: usize,
    /// Tokens in the whole text.
    pub text_tokens: usize,
    pub seed: u64,
    /// Hex SHA-256 of the text's bytes.
    pub text_sha256: String,
}

impl CalibrationSet {
    /// Draws `samples` windows of `seqlen` tokens from `tokens` (the tokenization of `text`).
    pub fn draw(text: &str, tokens: &[u32], samples: usize, seqlen: usize, seed: u64) -> Self {
        Self::draw_from(text.as_bytes(), tokens, samples, seqlen, seed)
    }

    /// [`draw`](Self::draw) for tokens read from any file: `data` is the file's bytes, hashed
    /// for the record (pre-tokenized calibration sets).
    pub fn draw_from(
        data: &[u8],
        tokens: &[u32],
        samples: usize,
        seqlen: usize,
        seed: u64,
    ) -> Self {
        let available = tokens.len().checked_div(seqlen).unwrap_or(0);
        let mut order: Vec<usize> = (0..available).collect();
        let mut rng = SplitMix64::new(seed);
        for i in (1..order.len()).rev() {
            let j = (rng.next_u64() % (i as u64 + 1)) as usize;
            order.swap(i, j);
        }
        let windows = order
            .into_iter()
            .take(samples)
            .map(|w| tokens[w * seqlen..(w + 1) * seqlen].to_vec())
            .collect();
        let digest = Sha256::digest(data);
        Self {
            windows,
            seqlen,
            requested: samples,
            available,
            text_tokens: tokens.len(),
            seed,
            text_sha256: digest.iter().map(|b| format!("{b:02x}")).collect(),
        }
    }

    /// Tokens actually in the set.
    pub fn tokens_used(&self) -> usize {
        self.windows.len() * self.seqlen
    }

    /// Windows asked for but not available.
    pub fn shortfall(&self) -> usize {
        self.requested - self.windows.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_distinct_reproducible_and_recorded() {
        let tokens: Vec<u32> = (0..1000).collect();
        let a = CalibrationSet::draw("text", &tokens, 8, 100, 7);
        let b = CalibrationSet::draw("text", &tokens, 8, 100, 7);
        let c = CalibrationSet::draw("text", &tokens, 8, 100, 8);
        assert_eq!(a, b, "same seed, same windows");
        assert_ne!(a.windows, c.windows, "another seed, another draw");
        assert_eq!((a.available, a.tokens_used(), a.shortfall()), (10, 800, 0));
        let mut starts: Vec<u32> = a.windows.iter().map(|w| w[0]).collect();
        starts.sort_unstable();
        starts.dedup();
        assert_eq!(starts.len(), 8, "no window twice");
        assert!(a.windows.iter().all(|w| w[0] % 100 == 0 && w.len() == 100));
        assert_eq!(
            a.text_sha256,
            "982d9e3eb996f559e633f4d194def3761d909f5a3b647d1a851fead67c32c9d1"
        );
    }

    #[test]
    fn a_short_text_records_its_shortfall() {
        let tokens: Vec<u32> = (0..250).collect();
        let set = CalibrationSet::draw("t", &tokens, 5, 100, 0);
        assert_eq!(
            (set.windows.len(), set.shortfall(), set.tokens_used()),
            (2, 3, 200)
        );
        let none = CalibrationSet::draw("t", &tokens[..50], 5, 100, 0);
        assert_eq!((none.available, none.shortfall()), (0, 5));
    }
}
