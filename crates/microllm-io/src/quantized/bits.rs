//! Bit packing of small unsigned codes into 32-bit words, the two ways checkpoints do it.
//!
//! * [`pack_stream`]: one little-endian bit stream, code `i` at bits `i*bits ..`; a code may
//!   straddle two words. This is GPTQ's layout for every width: for 2/4/8 bits it is the plain
//!   "k codes per word, lowest bits first" packing, and for 3 bits it is exactly AutoGPTQ's
//!   10 + 2|1 + 10 + 1|2 + 10 scheme (32 codes in 3 words) that lets a code cross a word.
//! * [`pack_fixed`]: `32 / bits` whole codes per word, lowest bits first, the rest of the word
//!   zero (compressed-tensors' `pack_to_int32`: 3-bit codes go 10 per word, 2 bits unused).
//!
//! Both pack along a run of `n` codes and pad the last word with zeros; the caller decides
//! which tensor dimension a run follows.

/// Words needed to hold `n` codes of `bits` bits as one bit stream.
pub fn stream_words(n: usize, bits: u8) -> usize {
    (n * bits as usize).div_ceil(32)
}

/// Words needed to hold `n` codes of `bits` bits, `32 / bits` per word.
pub fn fixed_words(n: usize, bits: u8) -> usize {
    n.div_ceil(32 / bits as usize)
}

fn mask(bits: u8) -> u64 {
    (1u64 << bits) - 1
}

/// Packs `codes` (each below `2^bits`) as one little-endian bit stream into `out`, which must
/// hold [`stream_words`] words and be zeroed.
pub fn pack_stream_into(codes: impl IntoIterator<Item = u8>, bits: u8, out: &mut [u32]) {
    let mut bit = 0usize;
    for c in codes {
        let v = (c as u64) & mask(bits);
        let (word, shift) = (bit / 32, bit % 32);
        out[word] |= (v << shift) as u32;
        if shift + bits as usize > 32 {
            out[word + 1] |= (v >> (32 - shift)) as u32;
        }
        bit += bits as usize;
    }
}

/// `codes` as one bit stream of [`stream_words`] words.
pub fn pack_stream(codes: &[u8], bits: u8) -> Vec<u32> {
    let mut out = vec![0u32; stream_words(codes.len(), bits)];
    pack_stream_into(codes.iter().copied(), bits, &mut out);
    out
}

/// Code `i` of a bit stream.
pub fn stream_get(words: &[u32], bits: u8, i: usize) -> u8 {
    let bit = i * bits as usize;
    let (word, shift) = (bit / 32, bit % 32);
    let mut v = (words[word] as u64) >> shift;
    if shift + bits as usize > 32 {
        v |= (words[word + 1] as u64) << (32 - shift);
    }
    (v & mask(bits)) as u8
}

/// The first `n` codes of a bit stream.
pub fn unpack_stream(words: &[u32], bits: u8, n: usize) -> Vec<u8> {
    (0..n).map(|i| stream_get(words, bits, i)).collect()
}

/// `codes`, `32 / bits` per word.
pub fn pack_fixed(codes: &[u8], bits: u8) -> Vec<u32> {
    let per = 32 / bits as usize;
    codes
        .chunks(per)
        .map(|chunk| {
            chunk.iter().enumerate().fold(0u32, |w, (k, &c)| {
                w | (((c as u64 & mask(bits)) as u32) << (k * bits as usize))
            })
        })
        .collect()
}

/// Code `i` of a fixed-width packing.
pub fn fixed_get(words: &[u32], bits: u8, i: usize) -> u8 {
    let per = 32 / bits as usize;
    ((words[i / per] as u64 >> ((i % per) * bits as usize)) & mask(bits)) as u8
}

/// The first `n` codes of a fixed-width packing.
pub fn unpack_fixed(words: &[u32], bits: u8, n: usize) -> Vec<u8> {
    (0..n).map(|i| fixed_get(words, bits, i)).collect()
}

/// A small deterministic generator for the property tests of the packers.
#[cfg(test)]
pub(crate) struct Rng(pub u64);

#[cfg(test)]
impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn four_bit_stream_is_eight_nibbles_lowest_first() {
        let codes = [1, 2, 3, 4, 5, 6, 7, 8, 15];
        let words = pack_stream(&codes, 4);
        assert_eq!(words, vec![0x8765_4321, 0xF]);
        assert_eq!(pack_fixed(&codes, 4), words);
        assert_eq!(unpack_stream(&words, 4, 9), codes);
    }

    /// AutoGPTQ's 3-bit layout, spelled out: codes 0-9 in bits 0-29 of word 0, code 10's low
    /// two bits in bits 30-31 and its high bit in bit 0 of word 1, codes 11-20 from bit 1,
    /// code 21 split 1|2, codes 22-31 from bit 2 of word 2.
    #[test]
    #[allow(clippy::needless_range_loop)] // spelled out as the reference writes it
    fn three_bit_stream_matches_autogptq() {
        let codes: Vec<u8> = (0..32).map(|i| ((i * 5 + 3) % 8) as u8).collect();
        let words = pack_stream(&codes, 3);
        assert_eq!(words.len(), 3);
        let mut expect = [0u32; 3];
        for j in 0..10 {
            expect[0] |= (codes[j] as u32) << (3 * j);
        }
        expect[0] |= (codes[10] as u32) << 30;
        expect[1] |= (codes[10] as u32 >> 2) & 1;
        for j in 0..10 {
            expect[1] |= (codes[11 + j] as u32) << (3 * j + 1);
        }
        expect[1] |= (codes[21] as u32) << 31;
        expect[2] |= (codes[21] as u32 >> 1) & 3;
        for j in 0..10 {
            expect[2] |= (codes[22 + j] as u32) << (3 * j + 2);
        }
        assert_eq!(words, expect);
    }

    #[test]
    fn three_bit_fixed_is_ten_per_word() {
        let codes = [7u8; 11];
        let words = pack_fixed(&codes, 3);
        assert_eq!(words, vec![0x3FFF_FFFF, 7]);
        assert_eq!(fixed_words(11, 3), 2);
    }

    #[test]
    fn random_round_trips() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        for _ in 0..300 {
            let bits = [2u8, 3, 4, 5, 6, 7, 8][rng.below(7)];
            let n = rng.below(200) + 1;
            let codes: Vec<u8> = (0..n).map(|_| rng.below(1 << bits) as u8).collect();
            let s = pack_stream(&codes, bits);
            assert_eq!(s.len(), stream_words(n, bits));
            assert_eq!(unpack_stream(&s, bits, n), codes, "stream {bits} {n}");
            let f = pack_fixed(&codes, bits);
            assert_eq!(f.len(), fixed_words(n, bits));
            assert_eq!(unpack_fixed(&f, bits, n), codes, "fixed {bits} {n}");
        }
    }
}
