//! What the timing examples share: inputs that are cheap to make and the same on every run.

/// Deterministic pseudo-normal values (sum of uniforms), enough for timing.
pub fn values(n: usize, mut state: u64) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let mut s = 0f32;
            for _ in 0..4 {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                s += (state >> 40) as f32 / (1u64 << 24) as f32;
            }
            s - 2.0
        })
        .collect()
}
