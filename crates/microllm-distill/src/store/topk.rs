//! One position's teacher distribution reduced to its top-k and the remaining mass.
//!
//! At temperature `τ`, `log p_i = z_i / τ − log Σ_j exp(z_j / τ)`. The `k` largest logits are
//! kept (ties broken by the smaller id, so the choice is deterministic), in descending order,
//! with their log-probabilities; the tokens left out are summed directly (in f64, after the
//! maximum is subtracted) into `log_rest`, which is `-inf` when nothing is left out. Storing
//! `log_rest` instead of deriving `1 − Σ top-k` keeps small remainders exact.

/// The top-k of one row of logits at temperature `tau`: ids, log-probabilities, log of the
/// remaining mass. `k` must not exceed the row's length.
pub fn top_k_row(logits: &[f32], k: usize, tau: f64) -> (Vec<u32>, Vec<f32>, f32) {
    let mut order: Vec<u32> = (0..logits.len() as u32).collect();
    let by_logit = |a: &u32, b: &u32| {
        logits[*b as usize]
            .total_cmp(&logits[*a as usize])
            .then(a.cmp(b))
    };
    if k < order.len() {
        order.select_nth_unstable_by(k, by_logit);
    }
    let (top, rest) = order.split_at_mut(k.min(logits.len()));
    top.sort_unstable_by(by_logit);
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64 / tau;
    let scaled = |i: u32| logits[i as usize] as f64 / tau - max;
    let sum_top: f64 = top.iter().map(|&i| scaled(i).exp()).sum();
    let sum_rest: f64 = rest.iter().map(|&i| scaled(i).exp()).sum();
    let log_total = (sum_top + sum_rest).ln();
    let logp = top
        .iter()
        .map(|&i| (scaled(i) - log_total) as f32)
        .collect();
    let log_rest = if rest.is_empty() {
        f32::NEG_INFINITY
    } else {
        (sum_rest.ln() - log_total) as f32
    };
    (top.to_vec(), logp, log_rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_largest_in_order_with_exact_masses() {
        let logits = [0.0f32, 3.0, 1.0, 3.0, -2.0];
        let (ids, logp, log_rest) = top_k_row(&logits, 3, 1.0);
        assert_eq!(ids, vec![1, 3, 2], "descending, ties by smaller id");
        let z: f64 = logits.iter().map(|&v| (v as f64).exp()).sum();
        for (&i, &lp) in ids.iter().zip(&logp) {
            assert!((lp as f64 - ((logits[i as usize] as f64).exp() / z).ln()).abs() < 1e-6);
        }
        let rest = (0f64.exp() + (-2f64).exp()) / z;
        assert!((log_rest as f64 - rest.ln()).abs() < 1e-6);
    }

    #[test]
    fn temperature_flattens_and_full_k_leaves_nothing() {
        let logits = [2.0f32, 0.0, -1.0];
        let (ids, logp, log_rest) = top_k_row(&logits, 3, 2.0);
        assert_eq!(ids, vec![0, 1, 2]);
        assert_eq!(log_rest, f32::NEG_INFINITY);
        let z: f64 = logits.iter().map(|&v| (v as f64 / 2.0).exp()).sum();
        assert!((logp[0] as f64 - (1f64.exp() / z).ln()).abs() < 1e-6);
        let total: f64 = logp.iter().map(|&v| (v as f64).exp()).sum();
        assert!((total - 1.0).abs() < 1e-6);
    }
}
