//! Weighted least-connections: the backend with the fewest requests in flight relative to its weight.
//!
//! Load is compared as `(active + 1) / weight` (as Envoy does), so weights matter even when the pool is idle;
//! ties go to the first candidate after a rotating start, which makes them round-robin. The division is a
//! multiplication by a reciprocal each backend keeps.
//!
//! Pools of up to [`EXACT_UP_TO`] backends are scanned whole: the pick is exactly a least-loaded backend. Larger
//! pools take the less loaded of two backends chosen at random ("power of two choices", Envoy's default for
//! least-request): a pick stays constant-time however large the pool, and the load spread stays within a small
//! factor of the exact one. When random draws keep hitting unavailable backends, the whole pool is scanned.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::balance::backend::Backend;

#[derive(Debug, Default)]
pub struct LeastConnections {
    next: AtomicUsize,
}

impl LeastConnections {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    #[inline]
    pub(crate) fn pick(
        &self,
        backends: &[Arc<Backend>],
        usable: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        let n = backends.len();
        if n == 0 {
            return None;
        }
        let ticket = self.next.fetch_add(1, Ordering::Relaxed);
        if n > EXACT_UP_TO {
            if let Some(i) = two_choices(backends, ticket, &usable) {
                return Some(i);
            }
        }
        let start = ticket % n;
        let (mut best, mut best_score) = (usize::MAX, u64::MAX);
        let (tail, head) = backends.split_at(start);
        for (i, b) in head
            .iter()
            .enumerate()
            .map(|(k, b)| (start + k, b))
            .chain(tail.iter().enumerate())
        {
            if !usable(i) {
                continue;
            }
            let score = b.load_score();
            // Strictly lower: the first of equals after the rotating start wins, so ties go round-robin.
            if score < best_score || best == usize::MAX {
                (best, best_score) = (i, score);
            }
        }
        (best != usize::MAX).then_some(best)
    }
}

/// Pools larger than this pick by two random choices instead of a full scan.
pub(crate) const EXACT_UP_TO: usize = 32;

/// The less loaded of two distinct usable backends drawn at random; `None` when a few draws find fewer than two.
#[inline]
fn two_choices(
    backends: &[Arc<Backend>],
    ticket: usize,
    usable: &impl Fn(usize) -> bool,
) -> Option<usize> {
    let n = backends.len() as u64;
    let mut state = ticket as u64;
    let mut found: [usize; 2] = [usize::MAX; 2];
    let mut count = 0;
    for _ in 0..8 {
        let i = (splitmix64(&mut state) % n) as usize;
        if usable(i) && found[0] != i {
            found[count] = i;
            count += 1;
            if count == 2 {
                let (a, b) = (found[0], found[1]);
                return Some(if backends[b].load_score() < backends[a].load_score() {
                    b
                } else {
                    a
                });
            }
        }
    }
    None
}

/// A fast, well-mixed pseudo-random sequence from a counter (SplitMix64).
#[inline]
pub(crate) fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::metrics::Metrics;

    fn backends(weights: &[u32]) -> Vec<Arc<Backend>> {
        let m = Metrics::new();
        weights
            .iter()
            .enumerate()
            .map(|(i, &w)| {
                let addr = format!("127.0.0.1:{}", 9000 + i);
                Arc::new(Backend::new(
                    "p",
                    &addr,
                    w,
                    Default::default(),
                    m.for_backend("p", &addr),
                ))
            })
            .collect()
    }

    #[test]
    fn prefers_the_least_loaded() {
        let bs = backends(&[1, 1, 1]);
        let _a = bs[0].begin();
        let _b = bs[1].begin();
        let lc = LeastConnections::new();
        for _ in 0..5 {
            assert_eq!(lc.pick(&bs, |_| true), Some(2));
        }
    }

    #[test]
    fn large_pools_avoid_the_loaded_and_spread_the_rest() {
        let bs = backends(&vec![1; 100]);
        let _busy: Vec<_> = (0..5).map(|_| bs[7].begin()).collect();
        let lc = LeastConnections::new();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..2000 {
            let i = lc.pick(&bs, |_| true).unwrap();
            assert_ne!(i, 7, "the loaded backend won a two-way choice");
            seen.insert(i);
        }
        assert!(seen.len() >= 95, "only {} backends ever picked", seen.len());
        // Mostly unavailable: the random draws fall back to a scan and still find the one usable backend.
        assert_eq!(lc.pick(&bs, |i| i == 42), Some(42));
    }

    #[test]
    fn ties_rotate() {
        let bs = backends(&[1, 1, 1]);
        let lc = LeastConnections::new();
        let picks: Vec<_> = (0..6).map(|_| lc.pick(&bs, |_| true).unwrap()).collect();
        assert_eq!(picks, vec![0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn weight_scales_load() {
        let bs = backends(&[1, 3]);
        let lc = LeastConnections::new();
        // (0+1)/1 vs (2+1)/3: a tie; with three in flight on the heavy one it must lose.
        let _g: Vec<_> = (0..3).map(|_| bs[1].begin()).collect();
        assert_eq!(lc.pick(&bs, |_| true), Some(0));
        let _h = bs[0].begin();
        // (1+1)/1 = 2 vs (3+1)/3 = 1.33: the heavy one.
        assert_eq!(lc.pick(&bs, |_| true), Some(1));
    }

    #[test]
    fn skips_unusable() {
        let bs = backends(&[1, 1]);
        let lc = LeastConnections::new();
        let _g = bs[1].begin();
        assert_eq!(lc.pick(&bs, |i| i == 1), Some(1));
        assert_eq!(lc.pick(&bs, |_| false), None);
    }
}
