//! Rate limits: a token bucket per key (a client's address, a header's value, or the route), checked before a
//! request reaches its pool.
//!
//! Each bucket is one atomic word, its "theoretical arrival time" (GCRA, the form of a token bucket that needs no
//! timer and no lock): a request is allowed when the bucket's time, moved on by one token's worth, is within
//! `burst` tokens of now. The buckets of a limit live in one bounded map (least recently used keys are forgotten
//! beyond `max_keys`) shared by every worker; a known key's check takes no lock and allocates nothing.
//!
//! A `global` limit also counts what it allowed; [`store`] sends the counts to Redis every few tens of
//! milliseconds and brings back how far every instance together has moved each bucket, so instances hold the
//! limit together while no request waits on Redis. Without Redis each instance keeps its own buckets.

pub(crate) mod store;

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use http::HeaderMap;
use tokio::time::Instant;

use crate::config::{RateLimitKey, RateLimitSettings};

/// A named limit and its buckets.
pub(crate) struct RateLimit {
    pub(crate) name: String,
    key: RateLimitKey,
    /// Nanoseconds per token (1 s / rate).
    emission_ns: AtomicU64,
    burst: AtomicU32,
    rate: AtomicU32,
    max_keys: u32,
    pub(crate) response_headers: bool,
    buckets: moka::sync::Cache<Vec<u8>, Arc<Bucket>>,
    /// Where a `global` limit's counts go.
    store: Option<Arc<store::Store>>,
}

/// One key's bucket.
#[derive(Debug, Default)]
pub(crate) struct Bucket {
    /// When the bucket will be full again, in [`clock`] nanoseconds (at or before now: it is full).
    tat: AtomicU64,
    /// Requests allowed since the last sync with the store (`global` limits), and when the first of them was.
    pending: AtomicU32,
    first_pending: AtomicU64,
}

/// What a check says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Allowed; `remaining` tokens are left, and the bucket is full again in `reset` seconds.
    Allowed { remaining: u32, reset: u64 },
    /// Refused; a token comes back in `retry_after` seconds (at least 1).
    Refused { retry_after: u64, reset: u64 },
}

impl RateLimit {
    pub(crate) fn new(
        name: &str,
        settings: &RateLimitSettings,
        store: Option<Arc<store::Store>>,
    ) -> Self {
        let limit = Self {
            name: name.to_owned(),
            key: settings.key.clone(),
            emission_ns: AtomicU64::new(0),
            burst: AtomicU32::new(0),
            rate: AtomicU32::new(0),
            max_keys: settings.max_keys,
            response_headers: settings.response_headers,
            buckets: moka::sync::Cache::builder()
                .max_capacity(u64::from(settings.max_keys))
                .eviction_policy(moka::policy::EvictionPolicy::lru())
                .build(),
            store: store.filter(|_| settings.global),
        };
        limit.set_rate(settings.rate, settings.burst);
        limit
    }

    /// May this limit's buckets be kept for `settings` (on a reload)? The same keys and scope, the same bound
    /// on keys; rate and burst may change (see [`Self::set_rate`]).
    pub(crate) fn keeps_buckets_for(
        &self,
        settings: &RateLimitSettings,
        store: Option<&Arc<store::Store>>,
    ) -> bool {
        let same_store = match (&self.store, store.filter(|_| settings.global)) {
            (None, None) => true,
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        };
        self.key == settings.key
            && self.max_keys == settings.max_keys
            && same_store
            && self.response_headers == settings.response_headers
    }

    /// Applies a new rate and burst at once to every bucket.
    pub(crate) fn set_rate(&self, rate: u32, burst: u32) {
        self.emission_ns
            .store(1_000_000_000 / u64::from(rate.max(1)), Ordering::Relaxed);
        self.rate.store(rate.max(1), Ordering::Relaxed);
        self.burst.store(burst.max(1), Ordering::Relaxed);
    }

    /// Checks and takes a token for the request's key. `client` is the client's address (after trusted
    /// proxies); `route` the route's label.
    #[inline]
    pub(crate) fn check(
        &self,
        headers: &HeaderMap,
        client: impl FnOnce() -> IpAddr,
        route: &str,
        now: Instant,
    ) -> Verdict {
        // 16 bytes a key (an address, or a header value's hash: a client cannot make keys large).
        let octets: [u8; 16];
        let key: &[u8] = match &self.key {
            RateLimitKey::ClientIp => {
                octets = match client() {
                    IpAddr::V4(ip) => ip.to_ipv6_mapped().octets(),
                    IpAddr::V6(ip) => ip.octets(),
                };
                &octets
            }
            RateLimitKey::Header(name) => {
                let value = headers.get(name).map_or(&[][..], |v| v.as_bytes());
                octets = twox_hash::XxHash3_128::oneshot(value).to_be_bytes();
                &octets
            }
            RateLimitKey::Route => route.as_bytes(),
        };
        let bucket = self
            .buckets
            .get_with_by_ref(key, || Arc::new(Bucket::default()));
        let now = clock(now);
        let verdict = self.take(&bucket, now);
        if let (Some(store), Verdict::Allowed { .. }) = (&self.store, verdict) {
            if bucket.pending.fetch_add(1, Ordering::Relaxed) == 0 {
                bucket.first_pending.store(now, Ordering::Relaxed);
                store.touched(self, key, &bucket);
            }
        }
        verdict
    }

    /// GCRA: with one token every `T` and room for `B`, a request is allowed when the bucket's time moved on by
    /// `T` stays within `B × T` of now.
    fn take(&self, bucket: &Bucket, now: u64) -> Verdict {
        let t = self.emission_ns.load(Ordering::Relaxed);
        let capacity = t * u64::from(self.burst.load(Ordering::Relaxed));
        let mut tat = bucket.tat.load(Ordering::Relaxed);
        loop {
            let next = tat.max(now) + t;
            let ahead = next - now;
            if ahead > capacity {
                let wait = ahead - capacity;
                return Verdict::Refused {
                    retry_after: wait.div_ceil(1_000_000_000).max(1),
                    reset: (tat.max(now) - now).div_ceil(1_000_000_000),
                };
            }
            match bucket
                .tat
                .compare_exchange_weak(tat, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => {
                    return Verdict::Allowed {
                        remaining: ((capacity - ahead) / t.max(1)) as u32,
                        reset: ahead.div_ceil(1_000_000_000),
                    };
                }
                Err(seen) => tat = seen,
            }
        }
    }

    /// Moves a bucket's time on to at least `until` (what every instance together has used, from the store).
    pub(crate) fn catch_up(bucket: &Bucket, until: u64) {
        bucket.tat.fetch_max(until, Ordering::Relaxed);
    }

    /// `RateLimit-Policy`: the bucket as a quota of `burst` over the seconds it takes to refill.
    pub(crate) fn policy_header(&self) -> String {
        let burst = self.burst.load(Ordering::Relaxed);
        let rate = self.rate.load(Ordering::Relaxed);
        format!(
            "\"{}\";q={burst};w={}",
            self.name,
            burst.div_ceil(rate).max(1)
        )
    }

    /// Nanoseconds per token, and the bucket's size in nanoseconds (for the store).
    pub(crate) fn shape(&self) -> (u64, u64) {
        let t = self.emission_ns.load(Ordering::Relaxed);
        (t, t * u64::from(self.burst.load(Ordering::Relaxed)))
    }

    /// Buckets held now.
    #[cfg(test)]
    pub(crate) fn keys(&self) -> u64 {
        self.buckets.run_pending_tasks();
        self.buckets.entry_count()
    }
}

/// `RateLimit: "name";r=REMAINING;t=RESET`.
pub(crate) fn rate_limit_header(name: &str, remaining: u32, reset: u64) -> String {
    format!("\"{name}\";r={remaining};t={reset}")
}

/// The buckets' clock: nanoseconds since the process's first look at it.
pub(crate) fn clock(now: Instant) -> u64 {
    crate::balance::adaptive::stamp(now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn limit(rate: u32, burst: u32) -> RateLimit {
        let settings = RateLimitSettings {
            key: RateLimitKey::Route,
            rate,
            burst,
            global: false,
            max_keys: 10,
            response_headers: false,
        };
        RateLimit::new("t", &settings, None)
    }

    fn allowed(v: Verdict) -> bool {
        matches!(v, Verdict::Allowed { .. })
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_then_a_steady_refill() {
        let l = limit(10, 5);
        let h = HeaderMap::new();
        let ip = || IpAddr::from([127, 0, 0, 1]);
        let now = Instant::now();
        for i in 0..5 {
            let v = l.check(&h, ip, "/", now);
            assert_eq!(
                v,
                Verdict::Allowed {
                    remaining: 4 - i,
                    reset: 1
                }
            );
        }
        assert_eq!(
            l.check(&h, ip, "/", now),
            Verdict::Refused {
                retry_after: 1,
                reset: 1
            }
        );
        // 100 ms: one token back.
        tokio::time::advance(Duration::from_millis(100)).await;
        let now = Instant::now();
        assert!(allowed(l.check(&h, ip, "/", now)));
        assert!(!allowed(l.check(&h, ip, "/", now)));
        // Over 10 s at 20 requests a second, 10 a second get through.
        let mut passed = 0;
        for _ in 0..200 {
            tokio::time::advance(Duration::from_millis(50)).await;
            passed += usize::from(allowed(l.check(&h, ip, "/", Instant::now())));
        }
        assert_eq!(passed, 100);
        // Another route is another bucket.
        assert!(allowed(l.check(&h, ip, "/other", Instant::now())));
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_rate_applies_at_once_and_retry_after_rounds_up() {
        let l = limit(1, 1);
        let h = HeaderMap::new();
        let ip = || IpAddr::from([127, 0, 0, 1]);
        assert!(allowed(l.check(&h, ip, "/", Instant::now())));
        assert_eq!(
            l.check(&h, ip, "/", Instant::now()),
            Verdict::Refused {
                retry_after: 1,
                reset: 1
            }
        );
        l.set_rate(1000, 1);
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(
            !allowed(l.check(&h, ip, "/", Instant::now())),
            "the bucket's debt stands"
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(allowed(l.check(&h, ip, "/", Instant::now())));
        let slow = limit(1, 3);
        for _ in 0..3 {
            assert!(allowed(slow.check(&h, ip, "/", Instant::now())));
        }
        assert_eq!(
            slow.check(&h, ip, "/", Instant::now()),
            Verdict::Refused {
                retry_after: 1,
                reset: 3
            }
        );
    }

    #[test]
    fn keys_beyond_max_keys_are_forgotten() {
        let l = limit(1, 1);
        let h = HeaderMap::new();
        let now = Instant::now();
        for i in 0..100u32 {
            l.check(&h, || IpAddr::from([127, 0, 0, 1]), &format!("/{i}"), now);
        }
        assert!(l.keys() <= 10, "{} keys held", l.keys());
    }
}
