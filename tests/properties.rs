//! Properties of the pure parts, over many generated cases: the selectors never pick an unavailable backend and
//! respect weights over long runs; no sequence of events leaves a circuit breaker stuck open.
#![allow(clippy::disallowed_methods)] // wall-clock time against real processes and sockets

use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use tokio::time::Instant;

use switchyard::balance::backend::Backend;
use switchyard::balance::breaker::{Breaker, BreakerSettings, State};
use switchyard::balance::select::{self, Candidates, RoundRobin, Selector};
use switchyard::config::Algorithm;
use switchyard::observe::metrics::Metrics;

fn backends(weights: &[u32], metrics: &Metrics) -> Vec<Arc<Backend>> {
    weights
        .iter()
        .enumerate()
        .map(|(i, &w)| {
            let addr = format!("10.0.0.{}:80", i + 1);
            Arc::new(Backend::new(
                "p",
                &addr,
                w,
                BreakerSettings::default(),
                metrics.for_backend("p", &addr),
            ))
        })
        .collect()
}

const ALGORITHMS: [Algorithm; 4] = [
    Algorithm::RoundRobin,
    Algorithm::LeastConnections,
    Algorithm::PeakEwma,
    Algorithm::ConsistentHash,
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn never_picks_an_unusable_backend(
        weights in prop::collection::vec(1u32..=20, 1..24),
        usable_mask in prop::collection::vec(any::<bool>(), 24),
        in_flight in prop::collection::vec(0usize..5, 24),
        which in 0usize..4,
        key in any::<u64>(),
        picks in 1usize..50,
    ) {
        let metrics = Metrics::new();
        let bs = backends(&weights, &metrics);
        let _guards: Vec<_> = bs.iter().zip(&in_flight).flat_map(|(b, &n)| (0..n).map(|_| b.begin())).collect();
        let selector = select::build(ALGORITHMS[which], &bs);
        let usable = |i: usize| usable_mask[i];
        let any_usable = (0..bs.len()).any(usable);
        for _ in 0..picks {
            match selector.pick(&Candidates::given(&bs, &usable).with_key(key)) {
                Some(i) => prop_assert!(usable(i), "picked unusable {}", i),
                None => prop_assert!(!any_usable, "found nothing though some were usable"),
            }
        }
    }

    #[test]
    fn large_pools_never_pick_an_unusable_backend(
        n in 33usize..300,
        usable_seed in any::<u64>(),
        usable_share in 0u32..=100,
        which in 0usize..4,
        key in any::<u64>(),
        picks in 1usize..40,
    ) {
        let metrics = Metrics::new();
        let weights: Vec<u32> = (0..n).map(|i| 1 + (i % 5) as u32).collect();
        let bs = backends(&weights, &metrics);
        let usable_mask: Vec<bool> = (0..n)
            .map(|i| (usable_seed.rotate_left(i as u32 % 64) ^ i as u64) % 100 < u64::from(usable_share))
            .collect();
        let selector = select::build(ALGORITHMS[which], &bs);
        let usable = |i: usize| usable_mask[i];
        let any_usable = usable_mask.iter().any(|&u| u);
        for _ in 0..picks {
            match selector.pick(&Candidates::given(&bs, &usable).with_key(key)) {
                Some(i) => prop_assert!(usable(i), "picked unusable {}", i),
                None => prop_assert!(!any_usable, "found nothing though some were usable"),
            }
        }
    }

    #[test]
    fn round_robin_respects_weights_over_whole_periods(
        weights in prop::collection::vec(1u32..=12, 1..12),
        periods in 1usize..4,
    ) {
        let rr = RoundRobin::new(&weights);
        let period = rr.sequence().len();
        let mut counts = vec![0usize; weights.len()];
        for _ in 0..period * periods {
            let i = rr.pick(weights.len(), |_| true).unwrap();
            counts[i] += 1;
        }
        // Over whole periods the shares are exact: proportional to the weights.
        let total: u32 = weights.iter().sum();
        for (i, &w) in weights.iter().enumerate() {
            prop_assert_eq!(counts[i] * total as usize, w as usize * period * periods);
        }
    }

    #[test]
    fn least_connections_picks_a_least_loaded_backend(
        weights in prop::collection::vec(1u32..=5, 1..16),
        in_flight in prop::collection::vec(0usize..6, 16),
    ) {
        let metrics = Metrics::new();
        let bs = backends(&weights, &metrics);
        let _guards: Vec<_> = bs.iter().zip(&in_flight).flat_map(|(b, &n)| (0..n).map(|_| b.begin())).collect();
        let selector = select::build(Algorithm::LeastConnections, &bs);
        let i = selector.pick(&Candidates::given(&bs, &|_| true)).unwrap();
        let load = |b: &Backend| (b.active_requests() as f64 + 1.0) / b.weight() as f64;
        let best = bs.iter().map(|b| load(b)).fold(f64::INFINITY, f64::min);
        // Within the rounding of the reciprocal weights.
        prop_assert!(load(&bs[i]) <= best * (1.0 + 1e-6), "picked {} at {} while {} exists", i, load(&bs[i]), best);
    }

    #[test]
    fn no_sequence_of_events_leaves_a_breaker_stuck_open(
        ops in prop::collection::vec(0u8..6, 0..200),
        threshold in 1u32..6,
    ) {
        let settings = BreakerSettings {
            failure_threshold: threshold,
            open_duration: Duration::from_secs(1),
            max_open_duration: Duration::from_secs(8),
            max_active_requests: 0,
            max_open_percent: 100,
        };
        let mut b = Breaker::new(settings);
        let mut now = Instant::now();
        for op in ops {
            match op {
                0 => { b.on_success(); }
                1 | 2 => { b.on_failure(now, "x"); }
                3 => { b.admit(now); }
                4 => b.cancel_trial(),
                _ => now += Duration::from_millis(700),
            }
        }
        // Whatever happened: once no trial is in flight (its request always ends, and the proxy releases
        // a trial that produced no outcome) and the longest open period has passed, a request gets through.
        b.cancel_trial();
        now += settings.max_open_duration;
        let (admitted, _) = b.admit(now);
        prop_assert!(admitted, "stuck in {:?}", b.state());
        prop_assert!(b.state() == State::Closed || b.state() == State::HalfOpen);
    }
}
