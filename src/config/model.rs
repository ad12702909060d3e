//! The file format, and nothing else: serde structs that mirror the TOML.
//!
//! Values that need checking beyond their TOML type (addresses, durations, algorithm names, weights) are read as
//! plain strings or wide integers, so that one bad value does not stop the reader and `validate` can report every
//! problem at once. Unknown fields are collected by the loader (see [`super::load`]), not rejected here.

use std::collections::BTreeMap;

use serde::Deserialize;

/// The whole configuration file.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct File {
    #[serde(default)]
    pub(crate) listeners: Vec<Listener>,
    pub(crate) admin: Option<Admin>,
    #[serde(default)]
    pub(crate) routes: Vec<Route>,
    #[serde(default)]
    pub(crate) pools: BTreeMap<String, Pool>,
    pub(crate) runtime: Option<Runtime>,
    /// How long requests in flight may take to finish on SIGTERM (and on a removed listener).
    pub(crate) drain_timeout: Option<String>,
    pub(crate) access_log: Option<AccessLog>,
    pub(crate) limits: Option<Limits>,
    /// Peers (CIDR) whose `X-Forwarded-*` and `Forwarded` headers are kept and appended to.
    pub(crate) trusted_proxies: Option<Vec<String>>,
    pub(crate) resolver: Option<Resolver>,
    /// `[rate_limits.NAME]`: limits routes name.
    #[serde(default)]
    pub(crate) rate_limits: BTreeMap<String, RateLimit>,
    pub(crate) rate_limit_store: Option<RateLimitStore>,
    pub(crate) request_id: Option<RequestId>,
}

/// `[request_id]`: an ID for every request, and W3C trace context.
#[derive(Debug, Deserialize)]
pub(crate) struct RequestId {
    pub(crate) header: Option<String>,
    pub(crate) trust_incoming: Option<String>,
    pub(crate) traceparent: Option<String>,
}

/// `[rate_limits.NAME]`: a token bucket per key.
#[derive(Debug, Deserialize)]
pub(crate) struct RateLimit {
    pub(crate) key: Option<String>,
    pub(crate) rate: Option<i64>,
    pub(crate) burst: Option<i64>,
    pub(crate) scope: Option<String>,
    pub(crate) max_keys: Option<i64>,
    pub(crate) response_headers: Option<bool>,
}

/// `[rate_limit_store]`: where `global` limits meet.
#[derive(Debug, Deserialize)]
pub(crate) struct RateLimitStore {
    pub(crate) redis: Option<String>,
    pub(crate) timeout: Option<String>,
}

/// `[resolver]`: the DNS servers discovery asks.
#[derive(Debug, Deserialize)]
pub(crate) struct Resolver {
    pub(crate) nameservers: Option<Vec<String>>,
    pub(crate) timeout: Option<String>,
}

/// `discovery = { type = "dns" | "dns_srv", name, port, refresh }`.
#[derive(Debug, Deserialize)]
pub(crate) struct Discovery {
    #[serde(rename = "type")]
    pub(crate) kind: String,
    pub(crate) name: String,
    pub(crate) port: Option<i64>,
    pub(crate) refresh: Option<String>,
}

/// `[limits]`: what one client may ask of the proxy.
#[derive(Debug, Deserialize)]
pub(crate) struct Limits {
    pub(crate) max_header_bytes: Option<i64>,
    pub(crate) header_read_timeout: Option<String>,
    pub(crate) body_read_timeout: Option<String>,
    pub(crate) idle_timeout: Option<String>,
    pub(crate) max_connections: Option<i64>,
    pub(crate) max_request_body_bytes: Option<i64>,
    pub(crate) max_concurrent_streams: Option<i64>,
}

/// `[access_log]`.
#[derive(Debug, Deserialize)]
pub(crate) struct AccessLog {
    pub(crate) enabled: Option<bool>,
    pub(crate) format: Option<String>,
    pub(crate) path: Option<String>,
}

/// `[[listeners]]`: an address the proxy accepts client connections on.
#[derive(Debug, Deserialize)]
pub(crate) struct Listener {
    pub(crate) address: String,
    /// TLS termination; without it the listener speaks plain HTTP/1.1 and HTTP/2 with prior knowledge.
    pub(crate) tls: Option<ListenerTls>,
    /// Every request gets a 308 to the same host and path over `https`.
    pub(crate) redirect_https: Option<bool>,
    /// SO_REUSEPORT: other processes may bind the same address.
    pub(crate) reuse_port: Option<bool>,
}

/// `[listeners.tls]`.
#[derive(Debug, Deserialize)]
pub(crate) struct ListenerTls {
    #[serde(default)]
    pub(crate) certificates: Vec<CertificatePair>,
    pub(crate) min_version: Option<String>,
    pub(crate) alpn: Option<Vec<String>>,
}

/// One certificate chain and its private key, both PEM files.
#[derive(Debug, Deserialize)]
pub(crate) struct CertificatePair {
    pub(crate) cert: String,
    pub(crate) key: String,
}

/// `[pools.NAME.tls]`: how to reach `https` and `h2` upstreams.
#[derive(Debug, Deserialize)]
pub(crate) struct UpstreamTls {
    pub(crate) ca_file: Option<String>,
    pub(crate) server_name: Option<String>,
}

/// `[admin]`: the admin listener (`/healthz`, `/metrics`, `/api/...`).
#[derive(Debug, Deserialize)]
pub(crate) struct Admin {
    pub(crate) address: Option<String>,
    /// A file holding the bearer token every admin request must carry.
    pub(crate) token_file: Option<String>,
}

/// `[[routes]]`: which requests go to which pool.
#[derive(Debug, Deserialize)]
pub(crate) struct Route {
    pub(crate) host: Option<String>,
    pub(crate) path_prefix: Option<String>,
    /// Header conditions, all of which must match (`"*"`: present).
    pub(crate) headers: Option<BTreeMap<String, String>>,
    pub(crate) pool: Option<String>,
    /// Instead of `pool`: pools by weight.
    pub(crate) split: Option<Vec<SplitArm>>,
    /// `"cookie:NAME"`: a client stays on the pool of the split it first got.
    pub(crate) sticky_split: Option<String>,
    pub(crate) mirror: Option<Mirror>,
    /// Names of `[rate_limits.NAME]` sections; all apply.
    pub(crate) rate_limits: Option<Vec<String>>,
}

/// `mirror = { pool, percent, max_body_bytes, max_in_flight }`.
#[derive(Debug, Deserialize)]
pub(crate) struct Mirror {
    pub(crate) pool: String,
    pub(crate) percent: Option<Number>,
    pub(crate) max_body_bytes: Option<i64>,
    pub(crate) max_in_flight: Option<i64>,
}

/// `split = [{ pool, weight }]`.
#[derive(Debug, Deserialize)]
pub(crate) struct SplitArm {
    pub(crate) pool: String,
    pub(crate) weight: Option<i64>,
}

/// `[pools.NAME]`: a set of interchangeable backends and how to balance over them.
#[derive(Debug, Deserialize)]
pub(crate) struct Pool {
    pub(crate) algorithm: Option<String>,
    #[serde(default)]
    pub(crate) backends: Vec<Backend>,
    pub(crate) timeouts: Option<Timeouts>,
    pub(crate) health_check: Option<HealthCheck>,
    pub(crate) circuit_breaker: Option<CircuitBreaker>,
    pub(crate) retry: Option<Retry>,
    pub(crate) panic_threshold: Option<Number>,
    pub(crate) max_response_header_bytes: Option<i64>,
    pub(crate) protocol: Option<String>,
    pub(crate) tls: Option<UpstreamTls>,
    pub(crate) discovery: Option<Discovery>,
    pub(crate) peak_ewma: Option<PeakEwma>,
    pub(crate) slow_start: Option<SlowStart>,
    pub(crate) outlier_detection: Option<OutlierDetection>,
    pub(crate) queue: Option<Queue>,
    pub(crate) hash: Option<Hash>,
    pub(crate) sticky: Option<Sticky>,
}

/// `[pools.NAME.hash]`.
#[derive(Debug, Deserialize)]
pub(crate) struct Hash {
    pub(crate) key: Option<String>,
    pub(crate) balance_factor: Option<Number>,
    pub(crate) table_size: Option<i64>,
}

/// `[pools.NAME.sticky]`.
#[derive(Debug, Deserialize)]
pub(crate) struct Sticky {
    pub(crate) cookie: Option<String>,
    pub(crate) max_age: Option<String>,
    pub(crate) secure: Option<bool>,
    pub(crate) http_only: Option<bool>,
    pub(crate) same_site: Option<String>,
    pub(crate) secret_file: Option<String>,
}

/// `[pools.NAME.peak_ewma]`.
#[derive(Debug, Deserialize)]
pub(crate) struct PeakEwma {
    pub(crate) decay: Option<String>,
    pub(crate) default_rtt: Option<String>,
}

/// `[pools.NAME.slow_start]`.
#[derive(Debug, Deserialize)]
pub(crate) struct SlowStart {
    pub(crate) window: Option<String>,
    pub(crate) min_weight_percent: Option<i64>,
}

/// `[pools.NAME.outlier_detection]`.
#[derive(Debug, Deserialize)]
pub(crate) struct OutlierDetection {
    pub(crate) interval: Option<String>,
    pub(crate) failure_percentage: Option<i64>,
    pub(crate) min_requests: Option<i64>,
    pub(crate) max_ejection_percent: Option<i64>,
    pub(crate) base_ejection_time: Option<String>,
    pub(crate) max_ejection_time: Option<String>,
}

/// `[pools.NAME.queue]`.
#[derive(Debug, Deserialize)]
pub(crate) struct Queue {
    pub(crate) max_waiting: Option<i64>,
    pub(crate) timeout: Option<String>,
}

/// A number written either way in TOML (`0`, `0.5`).
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(untagged)]
pub(crate) enum Number {
    Integer(i64),
    Float(f64),
}

impl Number {
    pub(crate) fn as_f64(self) -> f64 {
        match self {
            Number::Integer(i) => i as f64,
            Number::Float(f) => f,
        }
    }
}

/// `[pools.NAME.health_check]`.
#[derive(Debug, Deserialize)]
pub(crate) struct HealthCheck {
    #[serde(rename = "type")]
    pub(crate) kind: Option<String>,
    pub(crate) path: Option<String>,
    pub(crate) expected_status: Option<String>,
    pub(crate) interval: Option<String>,
    pub(crate) timeout: Option<String>,
    pub(crate) healthy_threshold: Option<i64>,
    pub(crate) unhealthy_threshold: Option<i64>,
    pub(crate) host: Option<String>,
}

/// `[pools.NAME.circuit_breaker]`.
#[derive(Debug, Deserialize)]
pub(crate) struct CircuitBreaker {
    pub(crate) failure_threshold: Option<i64>,
    pub(crate) open_duration: Option<String>,
    pub(crate) max_open_duration: Option<String>,
    pub(crate) max_active_requests: Option<i64>,
    pub(crate) max_open_percent: Option<i64>,
}

/// `[pools.NAME.retry]`.
#[derive(Debug, Deserialize)]
pub(crate) struct Retry {
    pub(crate) max_retries: Option<i64>,
    pub(crate) backoff: Option<String>,
    pub(crate) budget_percent: Option<i64>,
}

/// One entry of a pool's `backends` list.
#[derive(Debug, Deserialize)]
pub(crate) struct Backend {
    pub(crate) address: String,
    pub(crate) weight: Option<i64>,
}

/// `[pools.NAME.timeouts]`.
#[derive(Debug, Deserialize)]
pub(crate) struct Timeouts {
    pub(crate) connect: Option<String>,
    pub(crate) request: Option<String>,
    pub(crate) idle: Option<String>,
}

/// `[runtime]`: process-wide settings.
#[derive(Debug, Deserialize)]
pub(crate) struct Runtime {
    pub(crate) workers: Option<i64>,
}
