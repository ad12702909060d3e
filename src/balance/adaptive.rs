//! What a backend's recent behaviour says about it, kept in atomics beside its health and breaker: a
//! peak-sensitive latency estimate ([`Latency`], linkerd's and Finagle's peak-EWMA), a slow-start ramp
//! ([`Ramp`]), and its failure rate over a window with the outlier ejection that follows ([`Outlier`]).
//!
//! Times are nanoseconds since a process-wide epoch ([`stamp`]), so each fits one `AtomicU64`; 0 means "never".

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// `now` as nanoseconds since the process's first call, at least 1 (0 means "never").
#[inline]
pub(crate) fn stamp(now: Instant) -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(|| now - Duration::from_secs(1));
    now.saturating_duration_since(epoch).as_nanos() as u64
}

/// The instant a [`stamp`] stands for.
pub(crate) fn instant_of(stamp_ns: u64, now: Instant) -> Instant {
    let now_ns = stamp(now);
    if stamp_ns >= now_ns {
        now + Duration::from_nanos(stamp_ns - now_ns)
    } else {
        now - Duration::from_nanos(now_ns - stamp_ns)
    }
}

/// A number in [0, 1) from a per-thread pseudo-random sequence: cheap, and good enough to spread turns.
#[inline]
pub(crate) fn chance() -> f64 {
    thread_local! {
        static STATE: std::cell::Cell<u64> = const { std::cell::Cell::new(0x2545_F491_4F6C_DD1D) };
    }
    STATE.with(|s| {
        let mut state = s.get();
        let r = crate::balance::select::splitmix64(&mut state);
        s.set(state);
        (r >> 11) as f64 / (1u64 << 53) as f64
    })
}

fn load_f64(a: &AtomicU64) -> f64 {
    f64::from_bits(a.load(Ordering::Relaxed))
}

/// A backend's peak-sensitive moving average of response-head latency. A sample above the estimate replaces
/// it at once; lower ones blend in with a weight that grows with the time since the last sample
/// (`1 - e^(-Δt/decay)`). Between samples the estimate decays toward zero, twice as fast (`e^(-2Δt/decay)`),
/// so a backend that lost its traffic by a slow spell is tried again within about
/// `decay × ln(its latency / the others') / 2`, and one fast answer then brings it back.
#[derive(Debug)]
pub(crate) struct Latency {
    /// Nanoseconds, as f64 bits.
    estimate: AtomicU64,
    /// When the last sample came; 0: none yet.
    updated: AtomicU64,
    decay_ns: AtomicU64,
    default_ns: AtomicU64,
}

impl Latency {
    pub(crate) fn new(decay: Duration, default_rtt: Duration) -> Self {
        let l = Self {
            estimate: AtomicU64::new(0f64.to_bits()),
            updated: AtomicU64::new(0),
            decay_ns: AtomicU64::new(0),
            default_ns: AtomicU64::new(0),
        };
        l.set_settings(decay, default_rtt);
        l
    }

    /// Starts the estimate as of `now_ns` at `default_rtt`, or at `peers` (nanoseconds: what the pool's other
    /// backends show now) when that is lower, decaying from there like any estimate. A backend joining a running
    /// pool is taken to be like its peers, so it gets its share (within its ramp) at once.
    pub(crate) fn start(&self, now_ns: u64, peers: Option<f64>) {
        let default = self.default_ns.load(Ordering::Relaxed) as f64;
        let initial = peers.map_or(default, |p| p.min(default));
        self.estimate.store(initial.to_bits(), Ordering::Relaxed);
        self.updated.store(now_ns.max(1), Ordering::Relaxed);
    }

    pub(crate) fn set_settings(&self, decay: Duration, default_rtt: Duration) {
        self.decay_ns
            .store((decay.as_nanos() as u64).max(1), Ordering::Relaxed);
        self.default_ns
            .store(default_rtt.as_nanos() as u64, Ordering::Relaxed);
    }

    /// The estimate at `now_ns`, in nanoseconds: `default_rtt` before the first sample.
    #[inline]
    pub(crate) fn estimate(&self, now_ns: u64) -> f64 {
        let updated = self.updated.load(Ordering::Relaxed);
        if updated == 0 {
            return self.default_ns.load(Ordering::Relaxed) as f64;
        }
        let elapsed = now_ns.saturating_sub(updated) as f64;
        load_f64(&self.estimate) * idle_decay(elapsed, self.decay_ns.load(Ordering::Relaxed) as f64)
    }

    /// Feeds one response's time to its head.
    pub(crate) fn observe(&self, now_ns: u64, sample: Duration) {
        self.feed(now_ns, sample.as_nanos() as f64);
    }

    /// Feeds a failure: a sample of twice the current estimate (at least `default_rtt`), or the failure's own
    /// time if that is longer, so a backend that fails fast does not look fast.
    pub(crate) fn penalize(&self, now_ns: u64, took: Duration) {
        let current = self.estimate(now_ns);
        let floor = self.default_ns.load(Ordering::Relaxed) as f64;
        self.feed(
            now_ns,
            (2.0 * current).max(floor).max(took.as_nanos() as f64),
        );
    }

    fn feed(&self, now_ns: u64, sample: f64) {
        let updated = self.updated.swap(now_ns.max(1), Ordering::Relaxed);
        let decay = self.decay_ns.load(Ordering::Relaxed) as f64;
        let elapsed = now_ns.saturating_sub(updated) as f64;
        let keep = if updated == 0 {
            0.0
        } else {
            (-elapsed / decay).exp()
        };
        // `idle_decay(elapsed, decay)`, which is `keep²`: one `exp` per sample instead of two.
        let idle = keep * keep;
        let mut current = self.estimate.load(Ordering::Relaxed);
        loop {
            // The estimate as a pick saw it just now.
            let old = f64::from_bits(current) * idle;
            let next = if sample > old || updated == 0 {
                sample
            } else {
                old * keep + sample * (1.0 - keep)
            };
            match self.estimate.compare_exchange_weak(
                current,
                next.to_bits(),
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return,
                Err(seen) => current = seen,
            }
        }
    }
}

/// How much of the estimate is left after `elapsed` without a sample.
#[inline]
fn idle_decay(elapsed: f64, decay: f64) -> f64 {
    (-2.0 * elapsed / decay).exp()
}

/// Slow start: after a backend (re)joins, its share grows linearly from `min_weight_percent` of its weight to
/// all of it over `window`. Fractional inside: a ramping backend never rounds to zero.
#[derive(Debug, Default)]
pub(crate) struct Ramp {
    /// When the ramp began (it may lie ahead: an ejected backend's ramp starts at its return); 0: none.
    started: AtomicU64,
    window_ns: AtomicU64,
    floor_percent: AtomicU32,
}

impl Ramp {
    /// `window` zero: slow start off (a ramp under way ends).
    pub(crate) fn set_settings(&self, window: Duration, min_weight_percent: u32) {
        self.window_ns
            .store(window.as_nanos() as u64, Ordering::Relaxed);
        self.floor_percent
            .store(min_weight_percent.min(100), Ordering::Relaxed);
        if window.is_zero() {
            self.started.store(0, Ordering::Relaxed);
        }
    }

    pub(crate) fn is_configured(&self) -> bool {
        self.window_ns.load(Ordering::Relaxed) > 0
    }

    /// Starts (or restarts) the ramp at `at_ns`; false when slow start is off.
    pub(crate) fn begin(&self, at_ns: u64) -> bool {
        if !self.is_configured() {
            return false;
        }
        self.started.store(at_ns.max(1), Ordering::Relaxed);
        true
    }

    pub(crate) fn cancel(&self) {
        self.started.store(0, Ordering::Relaxed);
    }

    /// The share of its weight the backend has at `now_ns`: from the floor to 1. `None` once the ramp is over
    /// (or there is none).
    #[inline]
    pub(crate) fn factor(&self, now_ns: u64) -> Option<f64> {
        let started = self.started.load(Ordering::Relaxed);
        if started == 0 {
            return None;
        }
        let window = self.window_ns.load(Ordering::Relaxed);
        let floor = f64::from(self.floor_percent.load(Ordering::Relaxed)) / 100.0;
        if now_ns < started {
            return Some(floor.max(f64::MIN_POSITIVE));
        }
        let elapsed = now_ns - started;
        if window == 0 || elapsed >= window {
            return None;
        }
        Some((elapsed as f64 / window as f64).max(floor).max(1e-3))
    }

    /// When the ramp ends, if one is under way at `now_ns`.
    pub(crate) fn ends_at(&self, now_ns: u64) -> Option<u64> {
        self.factor(now_ns)?;
        Some(self.started.load(Ordering::Relaxed) + self.window_ns.load(Ordering::Relaxed))
    }
}

/// A backend's requests and failures over the current `interval` of outlier detection, and its ejection.
#[derive(Debug, Default)]
pub(crate) struct Outlier {
    /// The window's index (24 bits: the number of `interval`s since the epoch, wrapping), failures (20 bits)
    /// and requests (20 bits), in one word so a count and the window's turn cannot tear apart.
    window: AtomicU64,
    /// Ejected until then; 0: not ejected.
    ejected_until: AtomicU64,
    /// Ejections so far (each doubles the next one's time), reset after a long good spell.
    ejections: AtomicU32,
    returned: AtomicU64,
}

/// Requests counted per window at most (the count stops there; the ratio stays meaningful).
const MAX_COUNT: u64 = (1 << 20) - 1;

fn pack(index: u64, requests: u64, failures: u64) -> u64 {
    (index << 40) | (failures << 20) | requests
}

/// `(index, requests, failures)`.
fn unpack(word: u64) -> (u64, u64, u64) {
    (word >> 40, word & MAX_COUNT, (word >> 20) & MAX_COUNT)
}

impl Outlier {
    /// Counts one request (and whether it failed) in the current window of `interval_ns` (windows follow each
    /// other from the epoch); returns the window's `(requests, failures)` after it.
    #[inline]
    pub(crate) fn count(&self, now_ns: u64, failed: bool, interval_ns: u64) -> (u32, u32) {
        let index = (now_ns / interval_ns.max(1)) & 0xFF_FFFF;
        let mut current = self.window.load(Ordering::Relaxed);
        loop {
            let (seen, mut requests, mut failures) = unpack(current);
            if seen != index {
                (requests, failures) = (0, 0);
            }
            if requests >= MAX_COUNT {
                return (requests as u32, failures as u32);
            }
            requests += 1;
            failures += u64::from(failed);
            match self.window.compare_exchange_weak(
                current,
                pack(index, requests, failures),
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return (requests as u32, failures as u32),
                Err(now) => current = now,
            }
        }
    }

    /// Is the backend ejected at `now_ns`?
    #[inline]
    pub(crate) fn is_ejected(&self, now_ns: u64) -> bool {
        now_ns < self.ejected_until.load(Ordering::Relaxed)
    }

    /// When the current ejection ends, if there is one.
    pub(crate) fn ejected_until(&self) -> Option<u64> {
        Some(self.ejected_until.load(Ordering::Relaxed)).filter(|&t| t > 0)
    }

    /// Ejects the backend from `now_ns`: for `base` doubled per earlier ejection, at most `max`. The count of
    /// earlier ejections is forgotten after `max` without one. Returns when the ejection ends.
    pub(crate) fn eject(&self, now_ns: u64, base: Duration, max: Duration) -> u64 {
        let returned = self.returned.load(Ordering::Relaxed);
        if returned > 0 && now_ns.saturating_sub(returned) >= max.as_nanos() as u64 {
            self.ejections.store(0, Ordering::Relaxed);
        }
        let earlier = self.ejections.fetch_add(1, Ordering::Relaxed).min(30);
        let time = base.saturating_mul(1u32 << earlier.min(20)).min(max);
        let until = now_ns + time.as_nanos() as u64;
        self.ejected_until.store(until, Ordering::Relaxed);
        self.window.store(0, Ordering::Relaxed);
        until
    }

    /// Ends the ejection that was to end at `until` (not a later one); true if it was still on.
    pub(crate) fn end(&self, until: u64) -> bool {
        let ended = self
            .ejected_until
            .compare_exchange(until, 0, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok();
        if ended {
            self.returned.store(until, Ordering::Relaxed);
        }
        ended
    }

    /// Forgets any ejection (outlier detection removed from the pool).
    pub(crate) fn clear(&self) {
        self.ejected_until.store(0, Ordering::Relaxed);
        self.window.store(0, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn latency_takes_peaks_at_once_and_forgets_them_over_decay() {
        let l = Latency::new(Duration::from_secs(10), Duration::from_millis(30));
        assert_eq!(l.estimate(1), 30.0 * MS as f64);
        l.observe(MS, Duration::from_millis(2));
        assert!((l.estimate(MS) - 2.0 * MS as f64).abs() < 1.0);
        l.observe(2 * MS, Duration::from_millis(50));
        assert!(
            (l.estimate(2 * MS) - 50.0 * MS as f64).abs() < 1.0,
            "a peak replaces the estimate"
        );
        // A lower sample 10 ms later barely moves it: decay is 10 s.
        l.observe(12 * MS, Duration::from_millis(2));
        assert!(l.estimate(12 * MS) > 49.0 * MS as f64);
        // Ten seconds on, the estimate has decayed to 50·e^-2 and a low sample weighs 1 - e^-1 against that.
        let later = 12 * MS + 10_000 * MS;
        l.observe(later, Duration::from_millis(2));
        let e = l.estimate(later) / MS as f64;
        assert!(
            (e - (50.0 * (-3f64).exp() + 2.0 * (1.0 - (-1f64).exp()))).abs() < 0.5,
            "{e}"
        );
    }

    #[test]
    fn an_idle_estimate_decays_toward_zero_and_failures_count_high() {
        let l = Latency::new(Duration::from_secs(1), Duration::from_millis(30));
        l.observe(MS, Duration::from_millis(100));
        assert!(l.estimate(MS + 1000 * MS) < 37.0 * MS as f64);
        let l = Latency::new(Duration::from_secs(1), Duration::from_millis(30));
        l.observe(MS, Duration::from_millis(1));
        l.penalize(2 * MS, Duration::from_micros(100));
        assert!(
            l.estimate(2 * MS) >= 30.0 * MS as f64,
            "a fast failure counts as default_rtt at least"
        );
    }

    #[test]
    fn the_ramp_grows_linearly_from_its_floor_and_ends() {
        let r = Ramp::default();
        assert!(!r.begin(5), "off without a window");
        r.set_settings(Duration::from_secs(10), 10);
        assert!(r.begin(1000 * MS));
        assert_eq!(r.factor(1000 * MS), Some(0.1));
        assert_eq!(r.factor(1500 * MS), Some(0.1));
        assert!((r.factor(6000 * MS).unwrap() - 0.5).abs() < 1e-9);
        assert_eq!(r.factor(11_000 * MS), None);
        assert_eq!(r.ends_at(2000 * MS), Some(11_000 * MS));
        // A floor of 0 still never gives zero weight.
        r.set_settings(Duration::from_secs(10), 0);
        r.begin(1);
        assert!(r.factor(1).unwrap() > 0.0);
    }

    #[test]
    fn outlier_windows_count_and_ejections_double_up_to_the_max() {
        let o = Outlier::default();
        let interval = 1000 * MS;
        assert_eq!(o.count(5, false, interval), (1, 0));
        assert_eq!(o.count(6, true, interval), (2, 1));
        // The next window starts over.
        assert_eq!(o.count(5 + interval, true, interval), (1, 1));
        assert_eq!(o.count(6 + interval, false, interval), (2, 1));
        let (base, max) = (Duration::from_secs(1), Duration::from_secs(3));
        let until = o.eject(10 * MS, base, max);
        assert_eq!(until, 1010 * MS);
        assert!(o.is_ejected(500 * MS) && !o.is_ejected(1010 * MS));
        assert!(o.end(until));
        assert!(!o.end(until), "ends once");
        assert_eq!(o.eject(2000 * MS, base, max), 4000 * MS, "doubled");
        o.end(4000 * MS);
        assert_eq!(o.eject(4100 * MS, base, max), 7100 * MS, "capped at max");
        o.end(7100 * MS);
        // After max without an ejection, the doubling starts over.
        assert_eq!(o.eject(20_000 * MS, base, max), 21_000 * MS);
    }

    #[test]
    fn concurrent_counts_are_never_lost() {
        let o = std::sync::Arc::new(Outlier::default());
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let o = o.clone();
                std::thread::spawn(move || {
                    for n in 0..10_000u64 {
                        o.count(5, (n + t) % 4 == 0, 1000 * MS);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(o.count(5, false, 1000 * MS), (40_001, 10_000));
    }
}
