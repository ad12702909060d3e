//! The collectors of route policy: which pool (split arm) each route's requests went to.

use prometheus::{IntCounterVec, Opts, Registry};

use super::metrics::must;

pub(crate) struct RouteMetrics {
    pub(crate) route_requests_total: IntCounterVec,
}

impl RouteMetrics {
    pub(crate) fn register(registry: &Registry) -> Self {
        let m = Self {
            route_requests_total: must(IntCounterVec::new(
                Opts::new(
                    "switchyard_route_requests_total",
                    "Requests a route sent to each of its pools (the split arm that served; route is the route's host, path prefix and header conditions).",
                ),
                &["route", "pool"],
            )),
        };
        must(registry.register(Box::new(m.route_requests_total.clone())));
        m
    }
}
