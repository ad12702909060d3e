//! Weighted least-connections: the backend with the fewest requests in flight relative to its weight.
//!
//! Load is compared as `(active + 1) / weight` (as Envoy does), so weights matter even when the pool is idle;
//! ties go to the first candidate after a rotating start, which makes them round-robin. The division is a
//! multiplication by a reciprocal each backend keeps, so a pick over 256 backends stays a few hundred ns.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::backend::Backend;

#[derive(Debug, Default)]
pub struct LeastConnections {
    next: AtomicUsize,
}

impl LeastConnections {
    pub fn new() -> Self {
        Self::default()
    }

    #[inline]
    pub fn pick(&self, backends: &[Arc<Backend>], usable: impl Fn(usize) -> bool) -> Option<usize> {
        let n = backends.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

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
                    crate::upstream::UpstreamKind::plain(),
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
