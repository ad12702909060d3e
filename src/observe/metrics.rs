//! Every Prometheus collector, registered once in the proxy's own registry.
//!
//! The data path never formats label values: each backend (`balance::backend::Backend`) holds [`BackendMetrics`], the
//! label handles for its `pool` and `backend` labels, made when the backend is built.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use prometheus::core::Collector;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Latency buckets from 0.5 ms to 10 s.
pub(crate) const DURATION_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The label value for "no backend answered" (and "no pool" when no route matched).
pub(crate) const NONE: &str = "none";

pub struct Metrics {
    pub(crate) registry: Registry,
    pub(crate) requests_total: IntCounterVec,
    pub(crate) request_duration_seconds: HistogramVec,
    pub(crate) backend_active_requests: IntGaugeVec,
    pub(crate) upstream_errors_total: IntCounterVec,
    pub(crate) open_connections: IntGauge,
    pub(crate) backend_up: IntGaugeVec,
    pub(crate) health_checks_total: IntCounterVec,
    pub(crate) circuit_breaker_state: IntGaugeVec,
    pub(crate) circuit_breaker_transitions_total: IntCounterVec,
    pub(crate) retries_total: IntCounterVec,
    pub(crate) circuit_breaker_capped_total: IntCounterVec,
    pub(crate) upstream_reused_connection_retries_total: IntCounterVec,
    pub(crate) upstream_connections_opened_total: IntCounterVec,
    pub(crate) config_reloads_total: IntCounterVec,
    pub(crate) config_last_reload_successful: IntGauge,
    pub(crate) config_last_reload_success_timestamp_seconds: prometheus::Gauge,
    pub(crate) access_log_dropped_total: IntCounter,
    pub(crate) rejected_requests_total: IntCounterVec,
    pub(crate) tls_certificate_reloads_total: IntCounterVec,
    pub(crate) tls_handshake_errors_total: IntCounterVec,
    pub(crate) tls_certificate_expiry: prometheus::GaugeVec,
    pub(crate) upgraded_connections: IntGauge,
    pub(crate) discovery_lookups_total: IntCounterVec,
    pub(crate) discovery_backends: IntGaugeVec,
    pub(crate) balancing: super::balancing::BalancingMetrics,
    pub(crate) rate_limits: super::rate_limits::RateLimitMetrics,
    pub(crate) routes: super::routes::RouteMetrics,
    /// The event feed (`/api/events`): state changes, not counters.
    pub(crate) events: std::sync::Arc<super::events::Events>,
    /// Rates and latency for the status page, read from the collectors above once a second.
    pub(crate) status: super::status::Live,
}

pub(crate) fn must<T>(result: prometheus::Result<T>) -> T {
    match result {
        Ok(v) => v,
        // Only reachable with a malformed metric name or a name registered twice: a programming error.
        Err(e) => panic!("metric definition: {e}"),
    }
}

pub(crate) const BACKEND: &[&str] = &["pool", "backend"];

/// Makes a labelled collector and registers it in one step.
pub(crate) struct Register<'a>(pub(crate) &'a Registry);

impl Register<'_> {
    pub(crate) fn add<C: Collector + Clone + 'static>(&self, made: prometheus::Result<C>) -> C {
        let collector = must(made);
        must(self.0.register(Box::new(collector.clone())));
        collector
    }

    pub(crate) fn counter_vec(&self, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        self.add(IntCounterVec::new(Opts::new(name, help), labels))
    }

    pub(crate) fn gauge_vec(&self, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
        self.add(IntGaugeVec::new(Opts::new(name, help), labels))
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let reg = Register(&registry);
        let requests_total = reg.counter_vec(
            "switchyard_requests_total",
            "Requests answered, by pool, backend and status code.",
            &["pool", "backend", "code"],
        );
        let request_duration_seconds = reg.add(HistogramVec::new(
            HistogramOpts::new(
                "switchyard_request_duration_seconds",
                "Time from receiving a request to the end of its response body.",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
            BACKEND,
        ));
        let config_reloads_total = reg.counter_vec(
            "switchyard_config_reloads_total",
            "Config reloads, by result: success, failure.",
            &["result"],
        );
        for result in ["success", "failure"] {
            config_reloads_total.with_label_values(&[result]);
        }
        let config_last_reload_successful = reg.add(IntGauge::new(
            "switchyard_config_last_reload_successful",
            "1 if the last config reload (or the start) succeeded, 0 if it failed.",
        ));
        config_last_reload_successful.set(1);
        let config_last_reload_success_timestamp_seconds = reg.add(prometheus::Gauge::new(
            "switchyard_config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful config load.",
        ));
        config_last_reload_success_timestamp_seconds.set(unix_now());
        let open_connections = reg.add(IntGauge::new(
            "switchyard_open_connections",
            "Client connections currently open on the proxy listeners.",
        ));
        let access_log_dropped_total = reg.add(IntCounter::new(
            "switchyard_access_log_dropped_total",
            "Access log lines dropped because the writer fell behind.",
        ));
        let upgraded_connections = reg.add(IntGauge::new(
            "switchyard_upgraded_connections",
            "Upgraded connections (WebSocket and other upgrades) currently open.",
        ));
        let tls_certificate_expiry = reg.add(prometheus::GaugeVec::new(
            Opts::new(
                "switchyard_tls_certificate_expiry_timestamp_seconds",
                "Unix time when a listener's certificate expires (its notAfter).",
            ),
            &["listener", "name"],
        ));
        #[cfg(target_os = "linux")]
        must(registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        )));
        Self {
            requests_total,
            request_duration_seconds,
            backend_active_requests: reg.gauge_vec(
                "switchyard_backend_active_requests",
                "Requests in flight to a backend.",
                BACKEND,
            ),
            upstream_errors_total: reg.counter_vec(
                "switchyard_upstream_errors_total",
                "Failed attempts to a backend, by kind: connect, timeout, protocol.",
                &["pool", "backend", "kind"],
            ),
            open_connections,
            backend_up: reg.gauge_vec(
                "switchyard_backend_up",
                "1 while the backend passes its health checks (or has none), else 0.",
                BACKEND,
            ),
            health_checks_total: reg.counter_vec(
                "switchyard_health_checks_total",
                "Active health checks, by result: success, failure.",
                &["pool", "backend", "result"],
            ),
            circuit_breaker_state: reg.gauge_vec(
                "switchyard_circuit_breaker_state",
                "1 for the breaker's current state (closed, open, half_open), 0 for the others.",
                &["pool", "backend", "state"],
            ),
            circuit_breaker_transitions_total: reg.counter_vec(
                "switchyard_circuit_breaker_transitions_total",
                "Circuit breaker state changes, by the state entered.",
                &["pool", "backend", "to"],
            ),
            retries_total: reg.counter_vec(
                "switchyard_retries_total",
                "Retries sent (attempts after the first).",
                &["pool"],
            ),
            circuit_breaker_capped_total: reg.counter_vec(
                "switchyard_circuit_breaker_capped_total",
                "Times a backend's circuit would have opened but was held closed by circuit_breaker.max_open_percent \
                 (or because it was the pool's last usable backend).",
                &["pool"],
            ),
            upstream_reused_connection_retries_total: reg.counter_vec(
                "switchyard_upstream_reused_connection_retries_total",
                "Requests sent again on a new connection because the reused one closed before any response came \
                 (not counted as retries or upstream errors).",
                BACKEND,
            ),
            upstream_connections_opened_total: reg.counter_vec(
                "switchyard_upstream_connections_opened_total",
                "Connections opened to a backend (requests on reused connections do not count).",
                BACKEND,
            ),
            config_reloads_total,
            config_last_reload_successful,
            config_last_reload_success_timestamp_seconds,
            access_log_dropped_total,
            rejected_requests_total: reg.counter_vec(
                "switchyard_rejected_requests_total",
                "Requests and connections refused by a limit or as malformed, by reason.",
                &["reason"],
            ),
            tls_certificate_reloads_total: reg.counter_vec(
                "switchyard_tls_certificate_reloads_total",
                "Certificate re-reads that changed something, by result: success, error (the old ones stay).",
                &["result"],
            ),
            tls_handshake_errors_total: reg.counter_vec(
                "switchyard_tls_handshake_errors_total",
                "Client TLS handshakes that failed, by reason.",
                &["reason"],
            ),
            tls_certificate_expiry,
            upgraded_connections,
            discovery_lookups_total: reg.counter_vec(
                "switchyard_discovery_lookups_total",
                "DNS discovery lookups, by result: success, empty (NXDOMAIN or no records), failure.",
                &["pool", "result"],
            ),
            discovery_backends: reg.gauge_vec(
                "switchyard_discovery_backends",
                "Backends a pool currently has from DNS discovery.",
                &["pool"],
            ),
            balancing: super::balancing::BalancingMetrics::register(&registry),
            rate_limits: super::rate_limits::RateLimitMetrics::register(&registry),
            routes: super::routes::RouteMetrics::register(&registry),
            events: Default::default(),
            status: Default::default(),
            registry,
        }
    }

    /// Counts one refusal: `header_too_large`, `header_timeout`, `max_connections`, `body_too_large`,
    /// `malformed`, `connect_method`, `out_of_file_descriptors`, ….
    pub(crate) fn reject(&self, reason: &str) {
        self.rejected_requests_total
            .with_label_values(&[reason])
            .inc();
    }

    /// Records the result of a reload.
    pub(crate) fn reload_result(&self, ok: bool) {
        self.config_reloads_total
            .with_label_values(&[if ok { "success" } else { "failure" }])
            .inc();
        self.config_last_reload_successful.set(i64::from(ok));
        if ok {
            self.config_last_reload_success_timestamp_seconds
                .set(unix_now());
        }
    }

    /// The Prometheus text exposition of every metric.
    pub(crate) fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 * 1024);
        // Encoding into a Vec cannot fail for well-formed families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }

    /// Label handles for one backend of one pool.
    pub fn for_backend(&self, pool: &str, backend: &str) -> BackendMetrics {
        let labels = [pool, backend];
        let up = self.backend_up.with_label_values(&labels);
        up.set(1);
        let breaker_state = [
            self.circuit_breaker_state
                .with_label_values(&[pool, backend, "closed"]),
            self.circuit_breaker_state
                .with_label_values(&[pool, backend, "open"]),
            self.circuit_breaker_state
                .with_label_values(&[pool, backend, "half_open"]),
        ];
        breaker_state[0].set(1);
        BackendMetrics {
            pool: pool.to_owned(),
            backend: backend.to_owned(),
            duration: self.request_duration_seconds.with_label_values(&labels),
            active: Some(self.backend_active_requests.with_label_values(&labels)),
            requests: self.requests_total.clone(),
            common_codes: Default::default(),
            errors: self.upstream_errors_total.clone(),
            up: Some(up),
            health_checks: Some([
                self.health_checks_total
                    .with_label_values(&[pool, backend, "success"]),
                self.health_checks_total
                    .with_label_values(&[pool, backend, "failure"]),
            ]),
            breaker_state: Some(breaker_state),
            transitions: self.circuit_breaker_transitions_total.clone(),
            connections_opened: self
                .upstream_connections_opened_total
                .with_label_values(&labels),
            reused_connection_retries: self
                .upstream_reused_connection_retries_total
                .with_label_values(&labels),
            other_codes: Default::default(),
            status: Default::default(),
            ejected: Some({
                let g = self.balancing.ejected.with_label_values(&labels);
                g.set(0);
                g
            }),
            ejections: self
                .balancing
                .outlier_ejections_total
                .with_label_values(&labels),
            events: std::sync::Arc::clone(&self.events),
        }
    }

    /// Label handles for answers the proxy gives itself in `pool` (`none` when no route matched).
    pub(crate) fn for_local(&self, pool: &str) -> BackendMetrics {
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
            up: None,
            health_checks: None,
            breaker_state: None,
            transitions: self.circuit_breaker_transitions_total.clone(),
            connections_opened: unregistered(),
            reused_connection_retries: unregistered(),
            other_codes: Default::default(),
            status: Default::default(),
            ejected: None,
            ejections: unregistered(),
            events: std::sync::Arc::clone(&self.events),
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// A counter that belongs to no registry (for label handles that never count).
fn unregistered() -> IntCounter {
    must(IntCounter::with_opts(Opts::new(
        "unregistered",
        "never exported",
    )))
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Status codes whose counters are cached per backend; others are looked up by label (and remembered, so a
/// removed backend's series can all be deleted).
const COMMON_CODES: [u16; 28] = [
    200, 201, 202, 204, 206, 301, 302, 303, 304, 307, 308, 400, 401, 403, 404, 405, 408, 409, 410,
    413, 415, 422, 429, 500, 501, 502, 503, 504,
];

/// What the status page reads of one label handle: its answers, the 5xx among them and its durations by bucket.
/// Atomics only, so the page's reading (on a thread that may wait for a CPU) holds no lock anyone waits on; a
/// handle made again for a series that still holds counts starts from zero, so the page sees a series start
/// afresh, never a jump.
#[derive(Debug, Default)]
pub(crate) struct StatusCounts {
    pub(crate) answered: AtomicU64,
    pub(crate) answered_5xx: AtomicU64,
    /// Per bucket of [`DURATION_BUCKETS`], then above the last (not cumulative).
    pub(crate) durations: [AtomicU64; DURATION_BUCKETS.len() + 1],
}

/// A backend's label handles, so the request path never formats or hashes labels for common cases.
pub struct BackendMetrics {
    pool: String,
    backend: String,
    pub(crate) duration: Histogram,
    /// `None` for the proxy's own answers.
    pub(crate) active: Option<IntGauge>,
    requests: IntCounterVec,
    common_codes: [OnceLock<IntCounter>; COMMON_CODES.len()],
    errors: IntCounterVec,
    up: Option<IntGauge>,
    health_checks: Option<[IntCounter; 2]>,
    breaker_state: Option<[IntGauge; 3]>,
    transitions: IntCounterVec,
    pub(crate) connections_opened: IntCounter,
    pub(crate) reused_connection_retries: IntCounter,
    other_codes: std::sync::Mutex<Vec<u16>>,
    /// What the status page reads of this handle.
    pub(crate) status: Arc<StatusCounts>,
    /// `None` for the proxy's own answers.
    ejected: Option<IntGauge>,
    pub(crate) ejections: IntCounter,
    pub(crate) events: std::sync::Arc<super::events::Events>,
}

impl BackendMetrics {
    /// Counts one answered request with its status code.
    pub(crate) fn count_response(&self, status: http::StatusCode) {
        self.status.answered.fetch_add(1, Ordering::Relaxed);
        if status.is_server_error() {
            self.status.answered_5xx.fetch_add(1, Ordering::Relaxed);
        }
        let code = status.as_u16();
        match COMMON_CODES.iter().position(|&c| c == code) {
            Some(i) => self.common_codes[i]
                .get_or_init(|| {
                    self.requests
                        .with_label_values(&[&self.pool, &self.backend, status.as_str()])
                })
                .inc(),
            None => {
                let mut other = self.other_codes.lock().unwrap_or_else(|p| p.into_inner());
                if !other.contains(&code) {
                    other.push(code);
                }
                drop(other);
                self.requests
                    .with_label_values(&[&self.pool, &self.backend, status.as_str()])
                    .inc()
            }
        }
    }

    /// Observes one request's duration, from receiving it to the end of its response body.
    pub(crate) fn observe_duration(&self, elapsed: std::time::Duration) {
        let seconds = elapsed.as_secs_f64();
        self.duration.observe(seconds);
        let slot = DURATION_BUCKETS
            .iter()
            .position(|&upper| seconds <= upper)
            .unwrap_or(DURATION_BUCKETS.len());
        self.status.durations[slot].fetch_add(1, Ordering::Relaxed);
    }

    /// The `pool` label value.
    pub(crate) fn pool(&self) -> &String {
        &self.pool
    }

    /// Deletes every series of this backend (after it was removed from the config and has drained).
    pub(crate) fn remove_series(&self, metrics: &Metrics) {
        let (pool, backend) = (self.pool.as_str(), self.backend.as_str());
        let labels = [pool, backend];
        metrics.balancing.remove_backend(pool, backend);
        let _ = metrics
            .request_duration_seconds
            .remove_label_values(&labels);
        let _ = metrics.backend_active_requests.remove_label_values(&labels);
        let _ = metrics.backend_up.remove_label_values(&labels);
        let _ = metrics
            .upstream_connections_opened_total
            .remove_label_values(&labels);
        let _ = metrics
            .upstream_reused_connection_retries_total
            .remove_label_values(&labels);
        for result in ["success", "failure"] {
            let _ = metrics
                .health_checks_total
                .remove_label_values(&[pool, backend, result]);
        }
        for state in ["closed", "open", "half_open"] {
            let _ = metrics
                .circuit_breaker_state
                .remove_label_values(&[pool, backend, state]);
            let _ = metrics
                .circuit_breaker_transitions_total
                .remove_label_values(&[pool, backend, state]);
        }
        for kind in ["connect", "timeout", "protocol"] {
            let _ = metrics
                .upstream_errors_total
                .remove_label_values(&[pool, backend, kind]);
        }
        let other = self
            .other_codes
            .lock()
            .map(|o| o.clone())
            .unwrap_or_default();
        for code in COMMON_CODES.iter().chain(other.iter()) {
            let _ = metrics
                .requests_total
                .remove_label_values(&[pool, backend, &code.to_string()]);
        }
    }

    /// Counts one failed attempt: `connect`, `timeout` or `protocol`.
    pub(crate) fn count_error(&self, kind: &str) {
        self.errors
            .with_label_values(&[&self.pool, &self.backend, kind])
            .inc();
    }

    pub(crate) fn set_ejected(&self, ejected: bool) {
        if let Some(g) = &self.ejected {
            g.set(i64::from(ejected));
        }
    }

    pub(crate) fn set_up(&self, up: bool) {
        if let Some(g) = &self.up {
            g.set(i64::from(up));
        }
    }

    pub(crate) fn count_health_check(&self, ok: bool) {
        if let Some([success, failure]) = &self.health_checks {
            if ok { success.inc() } else { failure.inc() }
        }
    }

    /// Records a breaker transition into `state` (index into closed, open, half_open).
    pub(crate) fn breaker_transition(&self, state: usize, name: &str) {
        if let Some(gauges) = &self.breaker_state {
            for (i, g) in gauges.iter().enumerate() {
                g.set(i64::from(i == state));
            }
        }
        self.transitions
            .with_label_values(&[&self.pool, &self.backend, name])
            .inc();
    }
}
