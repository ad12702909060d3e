//! Live figures for the status page and `switchyard status`: request and error rates and latency percentiles per
//! pool and per backend over the last few seconds, and each pool's rate and errors over the last 15 minutes.
//!
//! A control-plane task reads the Prometheus counters of the backends in the snapshot in force once a second (the
//! data path does no extra work for the page) and keeps, per series, two cumulative readings [`SLOT`] apart:
//! figures are the difference between now and the older one, so they move every second over a 5–10 s window.
//! Memory is bounded by the snapshot: a backend that leaves it leaves here at the next reading.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::time::Instant;

use super::metrics::{DURATION_BUCKETS, Metrics, StatusCounts};

/// How far apart the two kept readings of a series are.
const SLOT: Duration = Duration::from_secs(5);
/// One point of a pool's history per `POINT`, `POINTS` of them: 15 minutes.
pub(crate) const POINT: Duration = Duration::from_secs(10);
pub(crate) const POINTS: usize = 90;
const BUCKETS: usize = DURATION_BUCKETS.len() + 1;

/// A series' counters at one moment.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Reading {
    pub(crate) requests: u64,
    pub(crate) errors: u64,
    /// Cumulative per bucket, `+Inf` last.
    buckets: [u64; BUCKETS],
}

impl Reading {
    /// What grew since `earlier` (nothing where a counter went down).
    fn since(&self, earlier: &Reading) -> Reading {
        let mut grown = Reading {
            requests: self.requests.saturating_sub(earlier.requests),
            errors: self.errors.saturating_sub(earlier.errors),
            buckets: [0; BUCKETS],
        };
        for (g, (now, then)) in grown
            .buckets
            .iter_mut()
            .zip(self.buckets.iter().zip(earlier.buckets))
        {
            *g = now.saturating_sub(then);
        }
        grown
    }

    fn add(&mut self, other: &Reading) {
        self.requests += other.requests;
        self.errors += other.errors;
        for (a, b) in self.buckets.iter_mut().zip(other.buckets) {
            *a += b;
        }
    }
}

/// Two readings of a series, [`SLOT`] apart, and the latest.
#[derive(Debug, Clone, Copy)]
struct Window {
    older: (Instant, Reading),
    newer: (Instant, Reading),
    latest: (Instant, Reading),
}

impl Window {
    fn new(now: Instant, reading: Reading) -> Self {
        Self {
            older: (now, reading),
            newer: (now, reading),
            latest: (now, reading),
        }
    }

    fn advance(&mut self, now: Instant, reading: Reading) {
        // A counter that went down belongs to a series that was removed and made again: start afresh.
        if reading.requests < self.latest.1.requests {
            *self = Self::new(now, reading);
            return;
        }
        if now.saturating_duration_since(self.newer.0) >= SLOT {
            self.older = self.newer;
            self.newer = (now, reading);
        }
        self.latest = (now, reading);
    }

    fn figures(&self) -> Figures {
        let (then, old) = &self.older;
        let (now, new) = &self.latest;
        let seconds = now.saturating_duration_since(*then).as_secs_f64();
        if seconds < 0.5 {
            return Figures::default();
        }
        let mut delta = [0u64; BUCKETS];
        for (d, (n, o)) in delta.iter_mut().zip(new.buckets.iter().zip(old.buckets)) {
            *d = n.saturating_sub(o);
        }
        Figures {
            rate: new.requests.saturating_sub(old.requests) as f64 / seconds,
            errors: new.errors.saturating_sub(old.errors) as f64 / seconds,
            p50_ms: quantile(&delta, 0.5),
            p99_ms: quantile(&delta, 0.99),
        }
    }
}

/// Requests and 5xx answers per second, and latency percentiles, over the last 5–10 s.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Figures {
    pub(crate) rate: f64,
    pub(crate) errors: f64,
    /// `None` without requests in the window.
    pub(crate) p50_ms: Option<f64>,
    pub(crate) p99_ms: Option<f64>,
}

/// The `q` quantile of cumulative bucket counts, interpolated within its bucket (as Prometheus'
/// `histogram_quantile` does), in milliseconds; the largest finite bound when it falls in `+Inf`.
fn quantile(cumulative: &[u64; BUCKETS], q: f64) -> Option<f64> {
    let total = cumulative[BUCKETS - 1];
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let i = cumulative.iter().position(|&c| c as f64 >= rank)?;
    let Some(&upper) = DURATION_BUCKETS.get(i) else {
        return Some(DURATION_BUCKETS[DURATION_BUCKETS.len() - 1] * 1e3);
    };
    let (lower, below) = match i {
        0 => (0.0, 0),
        _ => (DURATION_BUCKETS[i - 1], cumulative[i - 1]),
    };
    let inside = (cumulative[i] - below) as f64;
    let fraction = if inside > 0.0 {
        (rank - below as f64) / inside
    } else {
        1.0
    };
    Some((lower + (upper - lower) * fraction) * 1e3)
}

/// One point of a pool's history: requests and 5xx answers per second over [`POINT`].
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub(crate) struct Point {
    pub(crate) rate: f32,
    pub(crate) errors: f32,
}

struct PoolSeries {
    window: Window,
    history: VecDeque<Point>,
    point_from: (Instant, Reading),
}

/// One handle's counters and their window.
struct Series {
    counts: Arc<StatusCounts>,
    window: Window,
}

/// A handle that left the snapshot (its backend left the config, or was made again) while requests may still
/// be on it: its answers count toward its pool's figures until nothing else holds it.
struct Retiring {
    counts: Arc<StatusCounts>,
    last: Reading,
}

/// The windows behind the figures, owned by the task that reads the counters ([`Live::run`]).
#[derive(Default)]
pub(crate) struct Tracker {
    /// pool → backend (`none` for the proxy's own answers) → series.
    backends: HashMap<String, HashMap<String, Series>>,
    /// pool → handles that left it.
    retiring: HashMap<String, Vec<Retiring>>,
    pools: HashMap<String, PoolSeries>,
}

/// One pool's handles at one moment: each backend's (`none` for the proxy's own answers).
pub(crate) struct PoolReading<'a> {
    pub(crate) pool: &'a str,
    pub(crate) backends: Vec<(&'a str, &'a Arc<StatusCounts>)>,
}

/// The figures as of the last reading, published whole.
#[derive(Default)]
struct Published {
    /// pool → backend → figures.
    backends: HashMap<String, HashMap<String, Figures>>,
    /// pool → figures and history, oldest first.
    pools: HashMap<String, (Figures, Vec<Point>)>,
}

/// The live figures, replaced once a second by [`Live::run`] and read by the admin listener without a lock.
#[derive(Default)]
pub(crate) struct Live {
    published: ArcSwap<Published>,
}

/// What the admin listener reads: every figure of one reading.
pub(crate) struct View {
    published: Arc<Published>,
}

impl View {
    pub(crate) fn backend(&self, pool: &str, backend: &str) -> Figures {
        self.published
            .backends
            .get(pool)
            .and_then(|b| b.get(backend))
            .copied()
            .unwrap_or_default()
    }

    pub(crate) fn pool(&self, pool: &str) -> Figures {
        self.published
            .pools
            .get(pool)
            .map(|p| p.0)
            .unwrap_or_default()
    }

    /// Oldest first.
    pub(crate) fn history(&self, pool: &str) -> &[Point] {
        self.published
            .pools
            .get(pool)
            .map(|p| p.1.as_slice())
            .unwrap_or_default()
    }
}

impl Live {
    pub(crate) fn view(&self) -> View {
        View {
            published: self.published.load_full(),
        }
    }

    /// Reads the counters of the backends in the snapshot in force once a second, until the event feed closes
    /// (shutdown). The reading and the figures are made on the background thread: with 10,000 backends they
    /// take milliseconds of CPU every second, which must not delay requests ([`crate::background`]). Nothing
    /// there holds a lock a worker or the admin listener waits on: the counters are atomics read through the
    /// snapshot's handles, the figures are published with one swap.
    /// `read` takes a snapshot's readings (the routing snapshot lives above this module).
    pub(crate) async fn run<S: Send + Sync + 'static>(
        metrics: Arc<Metrics>,
        snapshots: Arc<ArcSwap<S>>,
        read: for<'a> fn(&'a S) -> Vec<PoolReading<'a>>,
    ) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut tracker = Tracker::default();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = metrics.events.closed() => return,
            }
            let snapshot = snapshots.load_full();
            let (kept, published) = crate::background::run(move || {
                let now = Instant::now();
                tracker.read(&read(&snapshot), now);
                let published = tracker.publish();
                // The snapshot may be a replaced one, now freed here.
                drop(snapshot);
                (tracker, published)
            })
            .await;
            tracker = kept;
            crate::background::drop_later(metrics.status.published.swap(Arc::new(published)));
        }
    }

    /// Publishes `tracker`'s figures (tests; [`Live::run`] publishes its own).
    #[cfg(test)]
    fn publish(&self, tracker: &Tracker) {
        self.published.store(Arc::new(tracker.publish()));
    }
}

impl Tracker {
    /// Takes one reading of every handle in `readings`, and of those that left them while something still
    /// holds them; pools not in `readings` are forgotten.
    pub(crate) fn read(&mut self, readings: &[PoolReading<'_>], now: Instant) {
        for pool in readings {
            // The pool's counters are its own running sum of its handles' growth, so that a backend added or
            // removed (a reload, DNS) does not move them.
            let mut grown = Reading::default();
            let known = self.pools.contains_key(pool.pool);
            let series = match self.backends.get_mut(pool.pool) {
                Some(s) => s,
                None => self.backends.entry(pool.pool.to_owned()).or_default(),
            };
            let retiring = match self.retiring.get_mut(pool.pool) {
                Some(r) => r,
                None => self.retiring.entry(pool.pool.to_owned()).or_default(),
            };
            for &(backend, counts) in &pool.backends {
                let reading = reading(counts);
                match series.get_mut(backend) {
                    Some(s) if Arc::ptr_eq(&s.counts, counts) => {
                        grown.add(&reading.since(&s.window.latest.1));
                        s.window.advance(now, reading);
                    }
                    found => {
                        // A new handle counts from zero: all it counted is new, unless the pool itself is (its
                        // first reading is where its figures start).
                        if known {
                            grown.add(&reading);
                        }
                        let new = Series {
                            counts: Arc::clone(counts),
                            window: Window::new(now, reading),
                        };
                        match found {
                            Some(s) => {
                                let old = std::mem::replace(s, new);
                                retiring.push(Retiring {
                                    counts: old.counts,
                                    last: old.window.latest.1,
                                });
                            }
                            None => {
                                series.insert(backend.to_owned(), new);
                            }
                        }
                    }
                }
            }
            // Backends not read now have left the pool; what they still answer counts toward it.
            series.retain(|_, s| {
                let here = s.window.latest.0 == now;
                if !here {
                    retiring.push(Retiring {
                        counts: Arc::clone(&s.counts),
                        last: s.window.latest.1,
                    });
                }
                here
            });
            retiring.retain_mut(|r| {
                let reading = reading(&r.counts);
                grown.add(&reading.since(&r.last));
                r.last = reading;
                // Nothing else holds it: nothing more can be counted on it.
                Arc::strong_count(&r.counts) > 1
            });
            let p = match self.pools.get_mut(pool.pool) {
                Some(p) => p,
                None => self
                    .pools
                    .entry(pool.pool.to_owned())
                    .or_insert_with(|| PoolSeries {
                        window: Window::new(now, Reading::default()),
                        history: VecDeque::with_capacity(POINTS),
                        point_from: (now, Reading::default()),
                    }),
            };
            let mut total = p.window.latest.1;
            total.add(&grown);
            p.window.advance(now, total);
            let (from, then) = p.point_from;
            let seconds = now.saturating_duration_since(from).as_secs_f64();
            if total.requests < then.requests {
                p.point_from = (now, total);
            } else if seconds >= POINT.as_secs_f64() {
                if p.history.len() == POINTS {
                    p.history.pop_front();
                }
                p.history.push_back(Point {
                    rate: (total.requests - then.requests) as f32 / seconds as f32,
                    errors: total.errors.saturating_sub(then.errors) as f32 / seconds as f32,
                });
                p.point_from = (now, total);
            }
        }
        // Pools not read now have left the config.
        self.pools.retain(|_, p| p.window.latest.0 == now);
        self.backends
            .retain(|pool, _| self.pools.contains_key(pool.as_str()));
        self.retiring
            .retain(|pool, _| self.pools.contains_key(pool.as_str()));
    }

    fn publish(&self) -> Published {
        Published {
            backends: self
                .backends
                .iter()
                .map(|(pool, windows)| {
                    let figures = windows
                        .iter()
                        .map(|(b, s)| (b.clone(), s.window.figures()))
                        .collect();
                    (pool.clone(), figures)
                })
                .collect(),
            pools: self
                .pools
                .iter()
                .map(|(pool, p)| {
                    let history = p.history.iter().copied().collect();
                    (pool.clone(), (p.window.figures(), history))
                })
                .collect(),
        }
    }

    /// Bytes held for `pools` pools of `backends` backends each with full histories (for the docs' figure): the
    /// windows, and two published copies of the figures (the one in force and the next, while it is made).
    #[cfg(test)]
    fn size_for(pools: usize, backends: usize) -> usize {
        use std::mem::size_of;
        let series = pools * (backends + 1);
        // + the address text, + table overhead
        let windows = series * (size_of::<(String, Series)>() + 24)
            + pools
                * (size_of::<(String, PoolSeries)>()
                    + size_of::<(String, HashMap<String, Series>)>()
                    + POINTS * size_of::<Point>()
                    + 48);
        let published = series * (size_of::<(String, Figures)>() + 24)
            + pools
                * (size_of::<(String, (Figures, Vec<Point>))>()
                    + size_of::<(String, HashMap<String, Figures>)>()
                    + POINTS * size_of::<Point>()
                    + 48);
        windows + 2 * published
    }
}

/// A handle's counters now.
fn reading(counts: &StatusCounts) -> Reading {
    let mut reading = Reading {
        requests: counts.answered.load(Ordering::Relaxed),
        errors: counts.answered_5xx.load(Ordering::Relaxed),
        ..Reading::default()
    };
    let mut cumulative = 0;
    for (slot, n) in reading.buckets.iter_mut().zip(&counts.durations) {
        cumulative += n.load(Ordering::Relaxed);
        *slot = cumulative;
    }
    reading
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::metrics::BackendMetrics;

    #[test]
    fn quantiles_interpolate_within_buckets() {
        let mut c = [0u64; BUCKETS];
        // 100 requests: all between 5 ms and 10 ms.
        for (i, b) in DURATION_BUCKETS.iter().enumerate() {
            c[i] = if *b >= 0.01 { 100 } else { 0 };
        }
        c[BUCKETS - 1] = 100;
        let p50 = quantile(&c, 0.5).unwrap();
        assert!((p50 - 7.5).abs() < 1e-9, "{p50}");
        assert_eq!(quantile(&[0; BUCKETS], 0.5), None);
        let mut slow = [0u64; BUCKETS];
        slow[BUCKETS - 1] = 3;
        assert_eq!(quantile(&slow, 0.99), Some(10_000.0));
    }

    /// The readings of `backends`, all in pool `web`.
    fn web<'a>(backends: &[(&'a str, &'a BackendMetrics)]) -> Vec<PoolReading<'a>> {
        vec![PoolReading {
            pool: "web",
            backends: backends.iter().map(|(b, m)| (*b, &m.status)).collect(),
        }]
    }

    #[test]
    fn rates_and_history_follow_the_counters() {
        let metrics = Metrics::new();
        let b = metrics.for_backend("web", "127.0.0.1:1");
        let live = &metrics.status;
        let mut tracker = Tracker::default();
        let start = Instant::now();
        tracker.read(&web(&[("127.0.0.1:1", &b)]), start);
        for second in 1..=20u64 {
            for _ in 0..10 {
                b.count_response(http::StatusCode::OK);
                b.observe_duration(Duration::from_millis(2));
            }
            b.count_response(http::StatusCode::BAD_GATEWAY);
            // A code not cached per backend counts too.
            b.count_response(http::StatusCode::from_u16(599).unwrap());
            tracker.read(
                &web(&[("127.0.0.1:1", &b)]),
                start + Duration::from_secs(second),
            );
        }
        live.publish(&tracker);
        let view = live.view();
        let f = view.backend("web", "127.0.0.1:1");
        assert!((f.rate - 12.0).abs() < 1e-9, "{f:?}");
        assert!((f.errors - 2.0).abs() < 1e-9, "{f:?}");
        let p50 = f.p50_ms.unwrap();
        assert!(p50 > 1.0 && p50 <= 2.5, "{p50}");
        assert_eq!(view.pool("web").rate, f.rate);
        let history = view.history("web");
        assert_eq!(history.len(), 2);
        assert!((history[0].rate - 12.0).abs() < 1e-3, "{history:?}");
        assert!((history[0].errors - 2.0).abs() < 1e-3, "{history:?}");
        assert_eq!(view.backend("web", "missing"), Figures::default());
    }

    #[test]
    fn fifty_pools_of_twenty_backends_take_under_a_megabyte() {
        let bytes = Tracker::size_for(50, 20);
        println!("status history for 50 pools x 20 backends: {bytes} bytes");
        assert!(bytes < 1 << 20, "{bytes}");
    }

    #[test]
    fn a_removed_backend_counts_toward_its_pool_until_it_is_gone() {
        let metrics = Metrics::new();
        let a = metrics.for_backend("web", "127.0.0.1:1");
        let b = metrics.for_backend("web", "127.0.0.1:2");
        let mut tracker = Tracker::default();
        let start = Instant::now();
        tracker.read(&web(&[("127.0.0.1:1", &a), ("127.0.0.1:2", &b)]), start);
        for second in 1..=5u64 {
            for _ in 0..10 {
                a.count_response(http::StatusCode::OK);
                b.count_response(http::StatusCode::OK);
            }
            tracker.read(
                &web(&[("127.0.0.1:1", &a), ("127.0.0.1:2", &b)]),
                start + Duration::from_secs(second),
            );
        }
        // b leaves the config with 5 requests still in flight; they end, with 502s, after it left.
        tracker.read(&web(&[("127.0.0.1:1", &a)]), start + Duration::from_secs(6));
        for _ in 0..5 {
            b.count_response(http::StatusCode::BAD_GATEWAY);
        }
        tracker.read(&web(&[("127.0.0.1:1", &a)]), start + Duration::from_secs(7));
        assert_eq!(tracker.retiring["web"].len(), 1);
        // Nothing holds it any more: it is forgotten at the next reading.
        drop(b);
        tracker.read(&web(&[("127.0.0.1:1", &a)]), start + Duration::from_secs(8));
        assert!(tracker.retiring["web"].is_empty());
        assert_eq!(tracker.backends["web"].len(), 1);
        metrics.status.publish(&tracker);
        let view = metrics.status.view();
        // The window runs from second 0 to 8: 50 answers of a, 50 of b, and b's 5 late ones, all 502.
        let pool = view.pool("web");
        assert!((pool.rate - 105.0 / 8.0).abs() < 1e-9, "{pool:?}");
        assert!((pool.errors - 5.0 / 8.0).abs() < 1e-9, "{pool:?}");
        assert_eq!(view.backend("web", "127.0.0.1:2"), Figures::default());
    }

    #[test]
    fn a_backend_back_before_its_series_were_removed_does_not_jump() {
        let metrics = Metrics::new();
        let first = metrics.for_backend("web", "127.0.0.1:1");
        for _ in 0..1000 {
            first.count_response(http::StatusCode::OK);
        }
        let mut tracker = Tracker::default();
        let start = Instant::now();
        tracker.read(&web(&[("127.0.0.1:1", &first)]), start);
        // It leaves the config and comes back: a new handle on the same series, which still holds 1000. It is
        // read once before it answers anything, then answers 10 a second.
        let again = metrics.for_backend("web", "127.0.0.1:1");
        for second in 1..=4u64 {
            for _ in 0..(if second == 1 { 0 } else { 10 }) {
                again.count_response(http::StatusCode::OK);
            }
            tracker.read(
                &web(&[("127.0.0.1:1", &again)]),
                start + Duration::from_secs(second),
            );
        }
        metrics.status.publish(&tracker);
        // 30 requests over the 4 s since the pool's first reading, not the 1000 the series held.
        let rate = metrics.status.view().pool("web").rate;
        assert!((rate - 7.5).abs() < 1e-9, "{rate}");
    }

    #[test]
    fn a_pool_that_leaves_is_forgotten() {
        let metrics = Metrics::new();
        let a = metrics.for_backend("web", "127.0.0.1:1");
        let mut tracker = Tracker::default();
        let start = Instant::now();
        tracker.read(&web(&[("127.0.0.1:1", &a)]), start);
        tracker.read(&[], start + Duration::from_secs(1));
        assert!(tracker.pools.is_empty() && tracker.backends.is_empty());
    }

    #[test]
    fn history_is_bounded() {
        let metrics = Metrics::new();
        let b = metrics.for_backend("web", "127.0.0.1:1");
        let mut tracker = Tracker::default();
        let start = Instant::now();
        for step in 0..(POINTS as u64 * 2) {
            tracker.read(&web(&[("127.0.0.1:1", &b)]), start + POINT * step as u32);
        }
        metrics.status.publish(&tracker);
        assert_eq!(metrics.status.view().history("web").len(), POINTS);
    }
}
