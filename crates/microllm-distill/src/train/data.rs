//! The order in which training windows are visited.
//!
//! The data is a list of windows (a store's, or the text cut into consecutive windows of
//! `seqlen` tokens). Each epoch visits all of them in a fresh seeded permutation, so the whole
//! data position is one number: windows consumed since the start. A checkpoint records it and
//! a resumed run continues with exactly the windows the uninterrupted run would have used.

use microllm_core::rng::SplitMix64;

/// Seeded per-epoch permutations of `windows` windows.
#[derive(Debug, Clone)]
pub struct DataOrder {
    windows: usize,
    seed: u64,
    /// The permutation of the epoch last asked for.
    cached: Option<(u64, Vec<usize>)>,
}

impl DataOrder {
    pub fn new(windows: usize, seed: u64) -> Self {
        Self {
            windows,
            seed,
            cached: None,
        }
    }

    fn permutation(&self, epoch: u64) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.windows).collect();
        let mut rng = SplitMix64::new(self.seed ^ epoch.wrapping_mul(0xa076_1d64_78bd_642f));
        for i in (1..order.len()).rev() {
            let j = (rng.next_u64() % (i as u64 + 1)) as usize;
            order.swap(i, j);
        }
        order
    }

    /// The window visited at `position` (windows consumed before it).
    pub fn window_at(&mut self, position: u64) -> usize {
        let n = self.windows as u64;
        let epoch = position / n;
        if self.cached.as_ref().is_none_or(|(e, _)| *e != epoch) {
            self.cached = Some((epoch, self.permutation(epoch)));
        }
        self.cached.as_ref().expect("cached above").1[(position % n) as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_epoch_visits_every_window_once_in_a_seeded_order() {
        let mut a = DataOrder::new(10, 3);
        let mut b = DataOrder::new(10, 3);
        let first: Vec<usize> = (0..10).map(|p| a.window_at(p)).collect();
        let second: Vec<usize> = (10..20).map(|p| a.window_at(p)).collect();
        let mut sorted = first.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..10).collect::<Vec<_>>());
        assert_ne!(first, second, "a new permutation each epoch");
        // Random access (a resumed run) sees the same windows.
        assert_eq!(b.window_at(13), second[3]);
        assert_eq!(b.window_at(2), first[2]);
        let mut c = DataOrder::new(10, 4);
        assert_ne!(
            (0..10).map(|p| c.window_at(p)).collect::<Vec<_>>(),
            first,
            "another seed"
        );
    }
}
