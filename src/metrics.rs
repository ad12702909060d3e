//! Every Prometheus collector, registered once in the proxy's own registry.
//!
//! The data path never formats label values: each [`crate::backend::Backend`] holds [`BackendMetrics`], the
//! label handles for its `pool` and `backend` labels, made when the backend is built.

use std::sync::OnceLock;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Latency buckets from 0.5 ms to 10 s.
pub const DURATION_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The label value for "no backend answered" (and "no pool" when no route matched).
pub const NONE: &str = "none";

pub struct Metrics {
    pub registry: Registry,
    pub requests_total: IntCounterVec,
    pub request_duration_seconds: HistogramVec,
    pub backend_active_requests: IntGaugeVec,
    pub upstream_errors_total: IntCounterVec,
    pub open_connections: IntGauge,
}

fn must<T>(result: prometheus::Result<T>) -> T {
    match result {
        Ok(v) => v,
        // Only reachable with a malformed metric name or a name registered twice: a programming error.
        Err(e) => panic!("metric definition: {e}"),
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let requests_total = must(IntCounterVec::new(
            Opts::new(
                "switchyard_requests_total",
                "Requests answered, by pool, backend and status code.",
            ),
            &["pool", "backend", "code"],
        ));
        let request_duration_seconds = must(HistogramVec::new(
            HistogramOpts::new(
                "switchyard_request_duration_seconds",
                "Time from receiving a request to the end of its response body.",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
            &["pool", "backend"],
        ));
        let backend_active_requests = must(IntGaugeVec::new(
            Opts::new(
                "switchyard_backend_active_requests",
                "Requests in flight to a backend.",
            ),
            &["pool", "backend"],
        ));
        let upstream_errors_total = must(IntCounterVec::new(
            Opts::new(
                "switchyard_upstream_errors_total",
                "Failed attempts to a backend, by kind: connect, timeout, protocol.",
            ),
            &["pool", "backend", "kind"],
        ));
        let open_connections = must(IntGauge::new(
            "switchyard_open_connections",
            "Client connections currently open on the proxy listeners.",
        ));
        for c in [
            Box::new(requests_total.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(request_duration_seconds.clone()),
            Box::new(backend_active_requests.clone()),
            Box::new(upstream_errors_total.clone()),
            Box::new(open_connections.clone()),
        ] {
            must(registry.register(c));
        }
        #[cfg(target_os = "linux")]
        must(registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        )));
        Self {
            registry,
            requests_total,
            request_duration_seconds,
            backend_active_requests,
            upstream_errors_total,
            open_connections,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 * 1024);
        // Encoding into a Vec cannot fail for well-formed families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }

    /// Label handles for one backend of one pool.
    pub fn for_backend(&self, pool: &str, backend: &str) -> BackendMetrics {
        BackendMetrics {
            pool: pool.to_owned(),
            backend: backend.to_owned(),
            duration: self
                .request_duration_seconds
                .with_label_values(&[pool, backend]),
            active: Some(
                self.backend_active_requests
                    .with_label_values(&[pool, backend]),
            ),
            requests: self.requests_total.clone(),
            common_codes: Default::default(),
            errors: self.upstream_errors_total.clone(),
        }
    }

    /// Label handles for answers the proxy gives itself in `pool` (`none` when no route matched).
    pub fn for_local(&self, pool: &str) -> BackendMetrics {
        BackendMetrics {
            pool: pool.to_owned(),
            backend: NONE.to_owned(),
            duration: self
                .request_duration_seconds
                .with_label_values(&[pool, NONE]),
            active: None,
            requests: self.requests_total.clone(),
            common_codes: Default::default(),
            errors: self.upstream_errors_total.clone(),
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Status codes whose counters are cached per backend; others are looked up by label.
const COMMON_CODES: [u16; 12] = [200, 201, 204, 301, 302, 304, 400, 404, 500, 502, 503, 504];

/// A backend's label handles, so the request path never formats or hashes labels for common cases.
pub struct BackendMetrics {
    pool: String,
    backend: String,
    pub duration: Histogram,
    /// `None` for the proxy's own answers.
    pub active: Option<IntGauge>,
    requests: IntCounterVec,
    common_codes: [OnceLock<IntCounter>; COMMON_CODES.len()],
    errors: IntCounterVec,
}

impl BackendMetrics {
    /// Counts one answered request with its status code.
    pub fn count_response(&self, status: http::StatusCode) {
        let code = status.as_u16();
        match COMMON_CODES.iter().position(|&c| c == code) {
            Some(i) => self.common_codes[i]
                .get_or_init(|| {
                    self.requests
                        .with_label_values(&[&self.pool, &self.backend, status.as_str()])
                })
                .inc(),
            None => self
                .requests
                .with_label_values(&[&self.pool, &self.backend, status.as_str()])
                .inc(),
        }
    }

    /// Counts one failed attempt: `connect`, `timeout` or `protocol`.
    pub fn count_error(&self, kind: &str) {
        self.errors
            .with_label_values(&[&self.pool, &self.backend, kind])
            .inc();
    }
}
