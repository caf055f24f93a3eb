//! llama-perplexity's choice of tasks, reproduced so `--protocol llama-cpp` scores the items
//! it scores.
//!
//! llama-perplexity does not take a task file's items in order. `--hellaswag` always draws
//! its tasks at random, even when asked for as many as the file holds (`std::mt19937` seeded
//! with 1; per task an index into the items not yet taken from
//! `std::uniform_int_distribution`, that item then removed, the rest keeping their order), so
//! a whole file is scored in a shuffled order; `--multiple-choice` draws only when asked for
//! fewer tasks than the file holds (`j = (int)(2^-32 * rng() * remaining)` in f32, the chosen
//! index swapped with the last). The engine is the standard Mersenne Twister; the integer distribution is
//! implementation-defined in C++, and this is libstdc++'s (GCC 11 and later: Lemire's
//! multiply-and-reject on 32 bits), the library llama.cpp is built with on Linux.

/// The 32-bit Mersenne Twister (`std::mt19937`).
struct Mt19937 {
    state: [u32; 624],
    next: usize,
}

impl Mt19937 {
    fn new(seed: u32) -> Self {
        let mut state = [0u32; 624];
        state[0] = seed;
        for i in 1..624 {
            let prev = state[i - 1];
            state[i] = 1_812_433_253u32
                .wrapping_mul(prev ^ (prev >> 30))
                .wrapping_add(i as u32);
        }
        Mt19937 { state, next: 624 }
    }

    fn twist(&mut self) {
        for i in 0..624 {
            let x = (self.state[i] & 0x8000_0000) | (self.state[(i + 1) % 624] & 0x7fff_ffff);
            let mut shifted = x >> 1;
            if x & 1 != 0 {
                shifted ^= 0x9908_b0df;
            }
            self.state[i] = self.state[(i + 397) % 624] ^ shifted;
        }
        self.next = 0;
    }

    fn next_u32(&mut self) -> u32 {
        if self.next >= 624 {
            self.twist();
        }
        let mut y = self.state[self.next];
        self.next += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    /// libstdc++'s `uniform_int_distribution` over `0..range` from a 32-bit engine.
    fn below(&mut self, range: u32) -> u32 {
        let mut product = u64::from(self.next_u32()) * u64::from(range);
        if (product as u32) < range {
            let threshold = range.wrapping_neg() % range;
            while (product as u32) < threshold {
                product = u64::from(self.next_u32()) * u64::from(range);
            }
        }
        (product >> 32) as u32
    }
}

/// The item indices `llama-perplexity --hellaswag --hellaswag-tasks count` scores from a file of
/// `n` items, in its order.
pub fn hellaswag(n: usize, count: usize) -> Vec<usize> {
    let mut rng = Mt19937::new(1);
    let mut left: Vec<usize> = (0..n).collect();
    (0..count.min(n))
        .map(|_| left.remove(rng.below(left.len() as u32) as usize))
        .collect()
}

/// The item indices `llama-perplexity --multiple-choice --multiple-choice-tasks count` scores
/// from a file of `n` items: all in order when `count >= n`, else a draw without replacement.
pub fn multiple_choice(n: usize, count: usize) -> Vec<usize> {
    if count >= n {
        return (0..n).collect();
    }
    let mut rng = Mt19937::new(1);
    let scale = 1.0f32 / (1.0f32 + u32::MAX as f32);
    let mut left: Vec<usize> = (0..n).collect();
    (0..count)
        .map(|_| {
            let j =
                ((scale * rng.next_u32() as f32 * left.len() as f32) as usize).min(left.len() - 1);
            left.swap_remove(j)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The C++ standard's check of `std::mt19937`: the 10000th value from the default seed.
    #[test]
    fn the_engine_is_the_standard_mersenne_twister() {
        let mut rng = Mt19937::new(5489);
        let tenth_thousand = (0..10_000).map(|_| rng.next_u32()).last();
        assert_eq!(tenth_thousand, Some(4_123_659_995));
    }

    /// Values printed by a g++ 12 (libstdc++) program doing what llama-perplexity does:
    /// `std::mt19937 rng(1)`, then per draw `std::uniform_int_distribution<size_t> d(0,
    /// left.size() - 1)`, the item at that index printed and erased; from 200 and 10 items.
    const LIBSTDCXX_200: [usize; 8] = [83, 199, 143, 185, 0, 25, 60, 198];
    const LIBSTDCXX_10: [usize; 8] = [4, 9, 6, 8, 0, 1, 3, 7];

    #[test]
    fn draws_match_libstdcxx() {
        assert_eq!(hellaswag(200, 8), LIBSTDCXX_200);
        assert_eq!(hellaswag(10, 8), LIBSTDCXX_10);
        let mut whole = hellaswag(10, 10);
        whole.sort_unstable();
        assert_eq!(
            whole,
            (0..10).collect::<Vec<_>>(),
            "a whole file, reordered"
        );
        assert_eq!(multiple_choice(5, 9), vec![0, 1, 2, 3, 4]);
        let drawn = multiple_choice(50, 50 - 1);
        let mut sorted = drawn.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), 49, "without replacement");
    }
}
