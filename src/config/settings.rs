//! The runtime settings a valid config file turns into: what every part of switchyard is configured with.
//! Plain data: [`super::validate`] makes them from the file, the rest of the crate only reads them.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use http::StatusCode;

pub(crate) use super::certs::{CertPaths, ListenerTlsSettings, TlsVersion, UpstreamTlsSettings};

/// The highest accepted backend weight (HAProxy's is 256; a little more room, still cheap to expand).
#[doc(hidden)]
pub const MAX_WEIGHT: u32 = 1000;
/// Where the admin listener binds when the file has no `[admin]` address.
pub(crate) const DEFAULT_ADMIN_ADDRESS: &str = "127.0.0.1:9901";
pub(crate) const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
pub(crate) const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
pub(crate) const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// A validated configuration, ready to run.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub(crate) listeners: Vec<ListenerSettings>,
    pub(crate) admin: AdminSettings,
    pub(crate) routes: Vec<RouteSettings>,
    pub(crate) pools: BTreeMap<String, PoolSettings>,
    pub(crate) runtime: RuntimeSettings,
    pub(crate) drain_timeout: Duration,
    /// `None`: no access log.
    pub(crate) access_log: Option<AccessLogSettings>,
    pub(crate) limits: Limits,
    pub(crate) trusted_proxies: Vec<ipnet::IpNet>,
    /// Things worth telling the operator that do not stop the config (an expired certificate).
    pub warnings: Vec<String>,
    pub(crate) resolver: ResolverSettings,
    /// `[rate_limits.NAME]`.
    pub(crate) rate_limits: BTreeMap<String, RateLimitSettings>,
    pub(crate) rate_limit_store: Option<RateLimitStoreSettings>,
    /// `[request_id]`; `None`: requests get no ID.
    pub(crate) request_id: Option<RequestIdSettings>,
}

/// `[resolver]`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct ResolverSettings {
    /// Empty: the system's (`/etc/resolv.conf`).
    pub(crate) nameservers: Vec<SocketAddr>,
    pub(crate) timeout: Duration,
}

/// A pool's `discovery`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DiscoverySettings {
    pub(crate) name: String,
    /// `Some(port)`: A/AAAA records with this port; `None`: SRV records give ports and weights.
    pub(crate) port: Option<u16>,
    pub(crate) refresh: Duration,
}

/// Where a backend came from: the config file, or DNS discovery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum BackendSource {
    #[default]
    Static,
    Dns,
}

impl BackendSource {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Static => "static",
            Self::Dns => "dns",
        }
    }
}

/// `[limits]`.
#[derive(Debug, Clone, Copy, PartialEq)]
#[doc(hidden)]
pub struct Limits {
    /// Request line and headers; over it the client gets 431.
    pub(crate) max_header_bytes: usize,
    /// From a request head's first byte (or a new connection) until the head is complete (slowloris).
    pub(crate) header_read_timeout: Duration,
    /// The longest a request body may keep the proxy waiting for its next bytes; over it the client gets 408.
    pub(crate) body_read_timeout: Duration,
    /// How long a keep-alive connection may wait for its next request.
    pub(crate) idle_timeout: Duration,
    /// Open client connections; over it new ones are closed at once.
    pub(crate) max_connections: usize,
    /// Over it the client gets 413; `None`: no limit.
    pub(crate) max_request_body_bytes: Option<u64>,
    /// Concurrent streams one HTTP/2 client connection may open.
    pub(crate) max_concurrent_streams: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_header_bytes: 64 * 1024,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(60),
            max_connections: 10_000,
            max_request_body_bytes: None,
            max_concurrent_streams: 128,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ListenerSettings {
    pub(crate) address: SocketAddr,
    pub(crate) tls: Option<ListenerTlsSettings>,
    pub(crate) redirect_https: bool,
    pub(crate) reuse_port: bool,
}

/// How a pool talks to its backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Protocol {
    #[default]
    Http1,
    /// HTTP/2 over plain TCP (prior knowledge).
    H2c,
    /// HTTP/1.1 over TLS.
    Https,
    /// HTTP/2 over TLS.
    H2,
}

impl Protocol {
    pub(crate) const ALLOWED: [&'static str; 4] = ["http1", "h2c", "https", "h2"];

    pub(crate) fn parse(text: &str) -> Option<Self> {
        match text {
            "http1" => Some(Self::Http1),
            "h2c" => Some(Self::H2c),
            "https" => Some(Self::Https),
            "h2" => Some(Self::H2),
            _ => None,
        }
    }

    pub(crate) fn is_tls(self) -> bool {
        matches!(self, Self::Https | Self::H2)
    }

    pub(crate) fn is_http2(self) -> bool {
        matches!(self, Self::H2c | Self::H2)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct AdminSettings {
    pub(crate) address: SocketAddr,
    /// The bearer token every admin request must carry, read from `token_file`.
    pub(crate) token: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RouteSettings {
    /// Lower-cased, without a port.
    pub(crate) host: Option<String>,
    pub(crate) path_prefix: String,
    /// Header conditions, all of which must match.
    pub(crate) headers: Vec<HeaderCondition>,
    /// The pools the route sends to, with their weights (one, of weight 1, without a split).
    pub(crate) split: Vec<(String, u32)>,
    /// With a split: the cookie that keeps a client on its pool.
    pub(crate) sticky_split: Option<String>,
    pub(crate) mirror: Option<MirrorSettings>,
    /// Names of limits in [`Config::rate_limits`].
    pub(crate) rate_limits: Vec<String>,
}

/// A route's `mirror`: a share of its requests copied to another pool, answers discarded.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct MirrorSettings {
    pub(crate) pool: String,
    /// Of the route's requests, 0 to 100.
    pub(crate) percent: f64,
    /// A larger body is not mirrored (counted `skipped_body`).
    pub(crate) max_body_bytes: u64,
    /// Mirrors in flight for the route at most; more are dropped (counted).
    pub(crate) max_in_flight: u32,
}

/// One of a route's header conditions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HeaderCondition {
    pub(crate) name: http::HeaderName,
    /// `None`: the header need only be present (`"*"`).
    pub(crate) value: Option<String>,
}

impl RouteSettings {
    /// How the route is named in metrics and logs: its host (if any) and path prefix, `api.example.com/api`,
    /// then its header conditions, `api.example.com/api[x-canary=1]`.
    pub(crate) fn label(&self) -> String {
        let mut label = format!("{}{}", self.host.as_deref().unwrap_or(""), self.path_prefix);
        if !self.headers.is_empty() {
            let conditions: Vec<String> = self
                .headers
                .iter()
                .map(|c| format!("{}={}", c.name, c.value.as_deref().unwrap_or("*")))
                .collect();
            label.push('[');
            label.push_str(&conditions.join(","));
            label.push(']');
        }
        label
    }
}

/// `[rate_limits.NAME]`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RateLimitSettings {
    pub(crate) key: RateLimitKey,
    /// Tokens per second.
    pub(crate) rate: u32,
    /// The bucket's size.
    pub(crate) burst: u32,
    /// Shared across instances through `[rate_limit_store]`.
    pub(crate) global: bool,
    pub(crate) max_keys: u32,
    /// Allowed requests carry the `RateLimit` header too.
    pub(crate) response_headers: bool,
}

/// What a rate limit's buckets are keyed by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RateLimitKey {
    /// The client's address after `trusted_proxies`.
    ClientIp,
    /// A header's value; without the header, the empty key.
    Header(http::HeaderName),
    /// One bucket for each route the limit is attached to.
    Route,
}

/// `[request_id]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RequestIdSettings {
    pub(crate) header: http::HeaderName,
    pub(crate) trust_incoming: TrustIncoming,
    /// Give a request without a valid `traceparent` a new one.
    pub(crate) generate_traceparent: bool,
}

/// Whose incoming request ID is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TrustIncoming {
    /// From peers in `trusted_proxies` only.
    TrustedProxies,
    Always,
    Never,
}

/// `[rate_limit_store]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RateLimitStoreSettings {
    pub(crate) redis: String,
    /// The longest a sync with the store may take before the instance counts it as unreachable.
    pub(crate) timeout: Duration,
}

/// How a pool picks among its backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    RoundRobin,
    LeastConnections,
    PeakEwma,
    ConsistentHash,
}

impl Algorithm {
    pub(crate) const ALLOWED: [&'static str; 4] = [
        "round_robin",
        "least_connections",
        "peak_ewma",
        "consistent_hash",
    ];

    pub(crate) fn parse(name: &str) -> Option<Self> {
        match name {
            "round_robin" => Some(Self::RoundRobin),
            "least_connections" => Some(Self::LeastConnections),
            "peak_ewma" => Some(Self::PeakEwma),
            "consistent_hash" => Some(Self::ConsistentHash),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::RoundRobin => "round_robin",
            Self::LeastConnections => "least_connections",
            Self::PeakEwma => "peak_ewma",
            Self::ConsistentHash => "consistent_hash",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct PoolSettings {
    pub(crate) algorithm: Algorithm,
    pub(crate) backends: Vec<BackendSettings>,
    pub(crate) timeouts: Timeouts,
    /// `None`: no active checks.
    pub(crate) health_check: Option<HealthCheckSettings>,
    pub(crate) breaker: BreakerSettings,
    pub(crate) retry: RetrySettings,
    /// Below this healthy share the pool ignores health checks (Envoy's panic mode); 0 = never.
    pub(crate) panic_threshold: f64,
    /// A response head larger than this is refused (502).
    pub(crate) max_response_header_bytes: usize,
    pub(crate) protocol: Protocol,
    /// For `https` and `h2`.
    pub(crate) tls: Option<UpstreamTlsSettings>,
    pub(crate) discovery: Option<DiscoverySettings>,
    /// `[pools.NAME.peak_ewma]`: the latency estimate every backend keeps (shown for every algorithm).
    pub(crate) peak_ewma: PeakEwmaSettings,
    /// `None`: no ramp.
    pub(crate) slow_start: Option<SlowStartSettings>,
    /// `None`: no passive ejection beyond the circuit breaker.
    pub(crate) outlier_detection: Option<OutlierSettings>,
    /// `None`: a request finding every backend at `max_active_requests` gets 503 at once.
    pub(crate) queue: Option<QueueSettings>,
    /// `[pools.NAME.hash]`, for `consistent_hash` (defaults when the section is absent).
    pub(crate) hash: HashSettings,
    /// `[pools.NAME.sticky]`; `None`: no cookie.
    pub(crate) sticky: Option<StickySettings>,
}

/// `[pools.NAME.hash]`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct HashSettings {
    pub(crate) key: HashKey,
    /// Bounded loads: no backend takes more than `ceil(factor × average in flight)`; 0 = off.
    pub(crate) balance_factor: f64,
    /// The lookup table's size, a prime.
    pub(crate) table_size: u32,
}

impl Default for HashSettings {
    fn default() -> Self {
        Self {
            key: HashKey::ClientIp,
            balance_factor: 1.25,
            table_size: 65537,
        }
    }
}

/// What a request is hashed by.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum HashKey {
    /// The client's address: the peer's, or from `X-Forwarded-For` when the peer is a trusted proxy.
    ClientIp,
    Header(http::HeaderName),
    Cookie(String),
    Path,
    PathAndQuery,
}

impl HashKey {
    pub(crate) const ALLOWED: &'static str =
        "\"client_ip\", \"header:NAME\", \"cookie:NAME\", \"path\", \"path_and_query\"";

    /// As written in the config.
    pub(crate) fn describe(&self) -> String {
        match self {
            Self::ClientIp => "client_ip".to_owned(),
            Self::Header(name) => format!("header:{name}"),
            Self::Cookie(name) => format!("cookie:{name}"),
            Self::Path => "path".to_owned(),
            Self::PathAndQuery => "path_and_query".to_owned(),
        }
    }
}

/// `[pools.NAME.sticky]`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct StickySettings {
    pub(crate) cookie: String,
    /// `None`: a session cookie.
    pub(crate) max_age: Option<Duration>,
    /// `None`: on TLS listeners only.
    pub(crate) secure: Option<bool>,
    pub(crate) http_only: bool,
    pub(crate) same_site: SameSite,
    /// The HMAC key from `secret_file`; `None`: a fixed one (values stable across instances, not unforgeable).
    pub(crate) secret: Option<Vec<u8>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SameSite {
    Lax,
    Strict,
    None,
}

impl SameSite {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Lax => "Lax",
            Self::Strict => "Strict",
            Self::None => "None",
        }
    }
}

/// `[pools.NAME.peak_ewma]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct PeakEwmaSettings {
    /// How fast the latency estimate forgets.
    pub(crate) decay: Duration,
    /// The estimate of a backend with no samples yet.
    pub(crate) default_rtt: Duration,
}

impl Default for PeakEwmaSettings {
    fn default() -> Self {
        Self {
            decay: Duration::from_secs(10),
            default_rtt: Duration::from_millis(30),
        }
    }
}

/// `[pools.NAME.slow_start]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct SlowStartSettings {
    pub(crate) window: Duration,
    /// The ramp's floor, in percent of the backend's weight.
    pub(crate) min_weight_percent: u32,
}

/// `[pools.NAME.outlier_detection]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct OutlierSettings {
    pub(crate) interval: Duration,
    pub(crate) failure_percentage: u32,
    pub(crate) min_requests: u32,
    pub(crate) max_ejection_percent: u32,
    pub(crate) base_ejection_time: Duration,
    pub(crate) max_ejection_time: Duration,
}

/// `[pools.NAME.queue]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct QueueSettings {
    pub(crate) max_waiting: u32,
    pub(crate) timeout: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct BackendSettings {
    /// `host:port` as the operator wrote it; also the `backend` label of every metric.
    pub(crate) address: String,
    pub(crate) weight: u32,
    pub(crate) source: BackendSource,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Timeouts {
    pub(crate) connect: Duration,
    /// Until the upstream's response headers arrive, counted from the end of the request body.
    pub(crate) request: Duration,
    /// The longest an upstream connection stays idle for reuse (shorter when the backend's `Keep-Alive:
    /// timeout=N` says so).
    pub(crate) idle: Duration,
}

/// How long an upstream connection may stay idle for reuse by default: below the 5 s after which Node.js closes
/// idle keep-alive connections, the shortest common server default.
pub(crate) const DEFAULT_UPSTREAM_IDLE: Duration = Duration::from_secs(4);
/// The largest response head an upstream may send by default.
pub(crate) const DEFAULT_MAX_RESPONSE_HEADER_BYTES: usize = 256 * 1024;
/// The largest `max_response_header_bytes` allowed (the upstream connections' read buffer is sized for it).
pub(crate) const MAX_RESPONSE_HEADER_BYTES: usize = 1024 * 1024;

#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct RuntimeSettings {
    pub(crate) workers: Option<usize>,
}

impl Config {
    /// The settings of the pool named `name`.
    pub fn pool(&self, name: &str) -> Option<&PoolSettings> {
        self.pools.get(name)
    }

    pub(crate) fn backend_count(&self) -> usize {
        self.pools.values().map(|p| p.backends.len()).sum()
    }

    /// `1 listener, 3 routes, 2 pools, 5 backends`.
    pub fn summary(&self) -> String {
        fn n(count: usize, what: &str) -> String {
            format!("{count} {what}{}", if count == 1 { "" } else { "s" })
        }
        format!(
            "{}, {}, {}, {}",
            n(self.listeners.len(), "listener"),
            n(self.routes.len(), "route"),
            n(self.pools.len(), "pool"),
            n(self.backend_count(), "backend")
        )
    }
}

/// Breaker settings for one pool (`[pools.NAME.circuit_breaker]`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerSettings {
    /// Consecutive failures (connect error, timeout, 5xx) that open the circuit.
    pub failure_threshold: u32,
    pub open_duration: Duration,
    pub max_open_duration: Duration,
    /// Requests in flight above which the backend is skipped; 0 = unlimited.
    pub max_active_requests: u32,
    /// At most this share of a pool's backends may have their circuit open or half-open at once.
    pub max_open_percent: u32,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        Self {
            failure_threshold: 5,
            open_duration: Duration::from_secs(30),
            max_open_duration: Duration::from_secs(300),
            max_active_requests: 0,
            max_open_percent: 50,
        }
    }
}

/// `[pools.NAME.retry]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct RetrySettings {
    /// Extra attempts after the first, each to a backend not yet tried.
    pub(crate) max_retries: u32,
    /// Base of the exponential backoff (full jitter, capped at [`MAX_BACKOFF`]).
    pub(crate) backoff: Duration,
    /// Retries may add at most this share of the requests of the last [`WINDOW_SECS`] seconds (requests that
    /// never reached a backend, after a connect failure, are rerouted outside the budget).
    pub(crate) budget_percent: u32,
}

impl Default for RetrySettings {
    fn default() -> Self {
        Self {
            max_retries: 2,
            backoff: Duration::from_millis(25),
            budget_percent: 20,
        }
    }
}

/// `[pools.NAME.health_check]`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct HealthCheckSettings {
    pub(crate) kind: CheckKind,
    pub(crate) interval: Duration,
    pub(crate) timeout: Duration,
    pub(crate) healthy_threshold: u32,
    pub(crate) unhealthy_threshold: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum CheckKind {
    /// GET `path`; healthy when the status is in `expected`.
    Http {
        path: String,
        expected: StatusRanges,
        host: Option<String>,
    },
    /// Healthy when a TCP connection opens.
    Tcp,
}

/// Status codes as written in `expected_status`: `"200-399"`, `"200"`, `"200,204,300-399"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StatusRanges(pub Vec<(u16, u16)>);

impl StatusRanges {
    pub(crate) fn parse(text: &str) -> Option<Self> {
        let mut ranges = Vec::new();
        for item in text.split(',') {
            let item = item.trim();
            let (lo, hi) = match item.split_once('-') {
                Some((lo, hi)) => (
                    lo.trim().parse::<u16>().ok()?,
                    hi.trim().parse::<u16>().ok()?,
                ),
                None => {
                    let code = item.parse::<u16>().ok()?;
                    (code, code)
                }
            };
            if !(100..=599).contains(&lo) || !(100..=599).contains(&hi) || lo > hi {
                return None;
            }
            ranges.push((lo, hi));
        }
        Some(Self(ranges))
    }

    pub(crate) fn contains(&self, status: StatusCode) -> bool {
        let code = status.as_u16();
        self.0.iter().any(|&(lo, hi)| (lo..=hi).contains(&code))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[doc(hidden)]
pub enum Format {
    Json,
    Text,
}

/// `[access_log]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AccessLogSettings {
    pub(crate) format: Format,
    /// `None`: standard output.
    pub(crate) path: Option<PathBuf>,
}
