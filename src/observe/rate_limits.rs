//! The collectors of rate limiting: requests refused, and syncs with the shared store that failed.

use prometheus::{IntCounter, IntCounterVec, Opts, Registry};

use super::metrics::Register;

pub(crate) struct RateLimitMetrics {
    pub(crate) rate_limited_total: IntCounterVec,
    pub(crate) store_errors_total: IntCounter,
}

impl RateLimitMetrics {
    pub(crate) fn register(registry: &Registry) -> Self {
        let reg = Register(registry);
        Self {
            rate_limited_total: reg.add(IntCounterVec::new(
                Opts::new(
                    "switchyard_rate_limited_total",
                    "Requests refused 429 by a rate limit (route is the route's host and path prefix).",
                ),
                &["route", "limit"],
            )),
            store_errors_total: reg.add(IntCounter::with_opts(Opts::new(
                "switchyard_rate_limit_store_errors_total",
                "Syncs with the rate limit store (Redis) that failed or timed out; global limits use each instance's own buckets meanwhile.",
            ))),
        }
    }
}
