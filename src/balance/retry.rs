//! Retry policy: which failures may be retried, the backoff before a retry, and the budget that stops a failing
//! backend from turning every request into several (a retry storm).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::Method;
use tokio::time::Instant;

pub(crate) use crate::config::RetrySettings;

pub(crate) const MAX_BACKOFF: Duration = Duration::from_secs(1);
pub(crate) const WINDOW_SECS: u64 = 10;
/// Retries always allowed per window, so that a quiet pool can still retry its rare failure (as Envoy's
/// `min_retry_concurrency` and Finagle's `minRetriesPerSec` do).
pub(crate) const MIN_RETRIES_PER_WINDOW: u64 = 10;

/// Methods whose repetition has the same effect as one request (RFC 9110 §9.2.2), minus those we never retry.
pub(crate) fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// The delay before retry number `retry` (1-based): uniform in `[0, min(MAX_BACKOFF, base * 2^(retry-1))]`.
pub(crate) fn backoff(base: Duration, retry: u32) -> Duration {
    let ceiling = base
        .saturating_mul(1u32 << retry.saturating_sub(1).min(20))
        .min(MAX_BACKOFF);
    let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
    if nanos == 0 {
        return Duration::ZERO;
    }
    Duration::from_nanos(rand::random_range(0..=nanos))
}

/// A sliding window of per-second counts, lock-free: each slot packs `second << 32 | count`.
#[derive(Debug)]
struct Window {
    slots: [AtomicU64; WINDOW_SECS as usize],
}

impl Window {
    fn new() -> Self {
        Self {
            slots: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    fn add(&self, second: u64) {
        let slot = &self.slots[(second % WINDOW_SECS) as usize];
        let tag = (second & 0xffff_ffff) << 32;
        let mut current = slot.load(Ordering::Relaxed);
        loop {
            let next = if current >> 32 == second & 0xffff_ffff {
                current.saturating_add(1).min(tag | 0xffff_ffff)
            } else {
                tag | 1
            };
            match slot.compare_exchange_weak(current, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return,
                Err(seen) => current = seen,
            }
        }
    }

    fn sum(&self, second: u64) -> u64 {
        let oldest = second.saturating_sub(WINDOW_SECS - 1);
        self.slots
            .iter()
            .map(|s| s.load(Ordering::Relaxed))
            .filter(|v| {
                let s = v >> 32;
                s >= (oldest & 0xffff_ffff) && s <= (second & 0xffff_ffff)
            })
            .map(|v| v & 0xffff_ffff)
            .sum()
    }
}

/// A pool's retry budget over the last [`WINDOW_SECS`] seconds.
#[derive(Debug)]
pub(crate) struct RetryBudget {
    epoch: Instant,
    requests: Window,
    retries: Window,
}

impl Default for RetryBudget {
    fn default() -> Self {
        Self::new()
    }
}

impl RetryBudget {
    pub(crate) fn new() -> Self {
        Self {
            epoch: Instant::now(),
            requests: Window::new(),
            retries: Window::new(),
        }
    }

    fn second(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_secs()
    }

    /// Counts one client request.
    pub(crate) fn record_request(&self, now: Instant) {
        self.requests.add(self.second(now));
    }

    /// Takes one retry from the budget, if the budget has one.
    pub(crate) fn try_retry(&self, now: Instant, percent: u32) -> bool {
        let second = self.second(now);
        let allowed =
            (self.requests.sum(second) * u64::from(percent) / 100).max(MIN_RETRIES_PER_WINDOW);
        if self.retries.sum(second) >= allowed {
            return false;
        }
        self.retries.add(second);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idempotent_methods() {
        for m in [
            Method::GET,
            Method::HEAD,
            Method::OPTIONS,
            Method::PUT,
            Method::DELETE,
            Method::TRACE,
        ] {
            assert!(is_idempotent(&m), "{m}");
        }
        for m in [Method::POST, Method::PATCH, Method::CONNECT] {
            assert!(!is_idempotent(&m), "{m}");
        }
    }

    #[test]
    fn backoff_is_jittered_exponential_and_capped() {
        let base = Duration::from_millis(25);
        for _ in 0..200 {
            assert!(backoff(base, 1) <= Duration::from_millis(25));
            assert!(backoff(base, 3) <= Duration::from_millis(100));
            assert!(backoff(base, 30) <= MAX_BACKOFF);
        }
        // Full jitter: over many draws the delays spread, they are not all the ceiling.
        let draws: Vec<Duration> = (0..200).map(|_| backoff(base, 3)).collect();
        assert!(draws.iter().any(|d| *d < Duration::from_millis(50)));
        assert!(draws.iter().any(|d| *d > Duration::from_millis(50)));
        assert_eq!(backoff(Duration::ZERO, 2), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn budget_allows_a_share_of_recent_requests() {
        let budget = RetryBudget::new();
        let now = Instant::now();
        for _ in 0..100 {
            budget.record_request(now);
        }
        let granted = (0..100).filter(|_| budget.try_retry(now, 20)).count();
        assert_eq!(granted, 20);
    }

    #[tokio::test(start_paused = true)]
    async fn a_quiet_pool_still_gets_a_few_retries() {
        let budget = RetryBudget::new();
        let now = Instant::now();
        budget.record_request(now);
        let granted = (0..50).filter(|_| budget.try_retry(now, 20)).count();
        assert_eq!(granted as u64, MIN_RETRIES_PER_WINDOW);
    }

    #[tokio::test(start_paused = true)]
    async fn the_window_slides() {
        let budget = RetryBudget::new();
        for _ in 0..200 {
            budget.record_request(Instant::now());
        }
        let granted = (0..100)
            .filter(|_| budget.try_retry(Instant::now(), 20))
            .count();
        assert_eq!(granted, 40);
        tokio::time::advance(Duration::from_secs(5)).await;
        // Same window: nothing new.
        assert!(!budget.try_retry(Instant::now(), 20));
        tokio::time::advance(Duration::from_secs(6)).await;
        // The old requests and retries have left the window; only the floor remains.
        let granted = (0..100)
            .filter(|_| budget.try_retry(Instant::now(), 20))
            .count();
        assert_eq!(granted as u64, MIN_RETRIES_PER_WINDOW);
    }
}
