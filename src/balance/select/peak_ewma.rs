//! Peak-EWMA (linkerd's and Finagle's balancer): the cheaper of two usable backends drawn at random, where a
//! backend's cost is its peak-sensitive latency estimate × (requests in flight + 1) / its weight.
//!
//! A slow backend's estimate jumps at its first slow answer, so it loses traffic within a few requests; with
//! little traffic its estimate decays toward zero between samples, so it is tried again and wins its share back
//! once it answers fast. Two choices rather than a full scan keep the pick constant-time, and keep a freshly
//! cheap backend from taking every request at once (the "herd" a full scan would send it).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::time::Instant;

use super::least_connections::splitmix64;
use crate::balance::adaptive::stamp;
use crate::balance::backend::Backend;

#[derive(Debug, Default)]
pub struct PeakEwma {
    next: AtomicUsize,
}

impl PeakEwma {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    #[inline]
    pub(crate) fn pick(
        &self,
        backends: &[Arc<Backend>],
        now: Instant,
        usable: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        let n = backends.len();
        let now_ns = stamp(now);
        match n {
            0 => return None,
            1 => return usable(0).then_some(0),
            2 => {
                return match (usable(0), usable(1)) {
                    (true, true) => Some(usize::from(
                        backends[1].ewma_cost(now_ns) < backends[0].ewma_cost(now_ns),
                    )),
                    (true, false) => Some(0),
                    (false, true) => Some(1),
                    (false, false) => None,
                };
            }
            _ => {}
        }
        let mut state = self.next.fetch_add(1, Ordering::Relaxed) as u64;
        let mut found = [usize::MAX; 2];
        let mut count = 0;
        for _ in 0..8 {
            let i = (splitmix64(&mut state) % n as u64) as usize;
            if found[0] != i && usable(i) {
                found[count] = i;
                count += 1;
                if count == 2 {
                    let (a, b) = (found[0], found[1]);
                    let cheaper_b = backends[b].ewma_cost(now_ns) < backends[a].ewma_cost(now_ns);
                    return Some(if cheaper_b { b } else { a });
                }
            }
        }
        // Few usable backends: the cheapest of those there are, by a scan.
        let mut best: Option<(usize, f64)> = None;
        for i in (0..n).filter(|&i| usable(i)) {
            let cost = backends[i].ewma_cost(now_ns);
            if best.is_none_or(|(_, c)| cost < c) {
                best = Some((i, cost));
            }
        }
        best.map(|(i, _)| i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::metrics::Metrics;
    use std::time::Duration;

    fn backends(n: usize) -> Vec<Arc<Backend>> {
        let m = Metrics::new();
        (0..n)
            .map(|i| {
                let addr = format!("127.0.0.1:{}", 9100 + i);
                Arc::new(Backend::new(
                    "p",
                    &addr,
                    1,
                    Default::default(),
                    m.for_backend("p", &addr),
                ))
            })
            .collect()
    }

    #[test]
    fn a_slow_backend_loses_its_share() {
        let bs = backends(4);
        let now = Instant::now();
        let ns = stamp(now);
        for (i, b) in bs.iter().enumerate() {
            b.latency
                .observe(ns, Duration::from_millis(if i == 3 { 50 } else { 2 }));
        }
        let p = PeakEwma::new();
        let mut counts = [0; 4];
        for _ in 0..4000 {
            counts[p.pick(&bs, now, |_| true).unwrap()] += 1;
        }
        assert_eq!(counts[3], 0, "{counts:?}");
        assert!(counts[..3].iter().all(|&c| c > 1000), "{counts:?}");
    }

    #[test]
    fn in_flight_requests_raise_the_cost() {
        let bs = backends(2);
        let now = Instant::now();
        let _busy: Vec<_> = (0..10).map(|_| bs[0].begin()).collect();
        let p = PeakEwma::new();
        for _ in 0..100 {
            assert_eq!(p.pick(&bs, now, |_| true), Some(1));
        }
        assert_eq!(p.pick(&bs, now, |i| i == 0), Some(0));
        assert_eq!(p.pick(&bs, now, |_| false), None);
    }
}
