//! The collectors of route policy: which pool (split arm) each route's requests went to, and their mirrors.

use prometheus::{IntCounterVec, Opts, Registry};

use super::metrics::Register;

pub(crate) struct RouteMetrics {
    pub(crate) route_requests_total: IntCounterVec,
    pub(crate) mirror_requests_total: IntCounterVec,
}

impl RouteMetrics {
    pub(crate) fn register(registry: &Registry) -> Self {
        let reg = Register(registry);
        Self {
            route_requests_total: reg.add(IntCounterVec::new(
                Opts::new(
                    "switchyard_route_requests_total",
                    "Requests a route sent to each of its pools (the split arm that served; route is the route's host, path prefix and header conditions).",
                ),
                &["route", "pool"],
            )),
            mirror_requests_total: reg.add(IntCounterVec::new(
                Opts::new(
                    "switchyard_mirror_requests_total",
                    "Requests a route mirrored: sent (answered, whatever the status), skipped_body (body over max_body_bytes), dropped (max_in_flight mirrors already in flight), failed (no backend, connect error, timeout).",
                ),
                &["route", "result"],
            )),
        }
    }
}
