//! The file format, and nothing else: serde structs that mirror the TOML.
//!
//! Values that need checking beyond their TOML type (addresses, durations, algorithm names, weights) are read as
//! plain strings or wide integers, so that one bad value does not stop the reader and `validate` can report every
//! problem at once. Unknown fields are collected by the loader (see [`super::load`]), not rejected here.

use std::collections::BTreeMap;

use serde::Deserialize;

/// The whole configuration file.
#[derive(Debug, Default, Deserialize)]
pub struct File {
    #[serde(default)]
    pub listeners: Vec<Listener>,
    pub admin: Option<Admin>,
    #[serde(default)]
    pub routes: Vec<Route>,
    #[serde(default)]
    pub pools: BTreeMap<String, Pool>,
    pub runtime: Option<Runtime>,
    /// How long requests in flight may take to finish on SIGTERM (and on a removed listener).
    pub drain_timeout: Option<String>,
    pub access_log: Option<AccessLog>,
    pub limits: Option<Limits>,
    /// Peers (CIDR) whose `X-Forwarded-*` and `Forwarded` headers are kept and appended to.
    pub trusted_proxies: Option<Vec<String>>,
    pub resolver: Option<Resolver>,
}

/// `[resolver]`: the DNS servers discovery asks.
#[derive(Debug, Deserialize)]
pub struct Resolver {
    pub nameservers: Option<Vec<String>>,
    pub timeout: Option<String>,
}

/// `discovery = { type = "dns" | "dns_srv", name, port, refresh }`.
#[derive(Debug, Deserialize)]
pub struct Discovery {
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
    pub port: Option<i64>,
    pub refresh: Option<String>,
}

/// `[limits]`: what one client may ask of the proxy.
#[derive(Debug, Deserialize)]
pub struct Limits {
    pub max_header_bytes: Option<i64>,
    pub header_read_timeout: Option<String>,
    pub body_read_timeout: Option<String>,
    pub idle_timeout: Option<String>,
    pub max_connections: Option<i64>,
    pub max_request_body_bytes: Option<i64>,
    pub max_concurrent_streams: Option<i64>,
}

/// `[access_log]`.
#[derive(Debug, Deserialize)]
pub struct AccessLog {
    pub enabled: Option<bool>,
    pub format: Option<String>,
    pub path: Option<String>,
}

/// `[[listeners]]`: an address the proxy accepts client connections on.
#[derive(Debug, Deserialize)]
pub struct Listener {
    pub address: String,
    /// TLS termination; without it the listener speaks plain HTTP/1.1 and HTTP/2 with prior knowledge.
    pub tls: Option<ListenerTls>,
    /// Every request gets a 308 to the same host and path over `https`.
    pub redirect_https: Option<bool>,
    /// SO_REUSEPORT: other processes may bind the same address.
    pub reuse_port: Option<bool>,
}

/// `[listeners.tls]`.
#[derive(Debug, Deserialize)]
pub struct ListenerTls {
    #[serde(default)]
    pub certificates: Vec<CertificatePair>,
    pub min_version: Option<String>,
    pub alpn: Option<Vec<String>>,
}

/// One certificate chain and its private key, both PEM files.
#[derive(Debug, Deserialize)]
pub struct CertificatePair {
    pub cert: String,
    pub key: String,
}

/// `[pools.NAME.tls]`: how to reach `https` and `h2` upstreams.
#[derive(Debug, Deserialize)]
pub struct UpstreamTls {
    pub ca_file: Option<String>,
    pub server_name: Option<String>,
}

/// `[admin]`: the admin listener (`/healthz`, `/metrics`, `/api/...`).
#[derive(Debug, Deserialize)]
pub struct Admin {
    pub address: Option<String>,
    /// A file holding the bearer token every admin request must carry.
    pub token_file: Option<String>,
}

/// `[[routes]]`: which requests go to which pool.
#[derive(Debug, Deserialize)]
pub struct Route {
    pub host: Option<String>,
    pub path_prefix: Option<String>,
    pub pool: String,
}

/// `[pools.NAME]`: a set of interchangeable backends and how to balance over them.
#[derive(Debug, Deserialize)]
pub struct Pool {
    pub algorithm: Option<String>,
    #[serde(default)]
    pub backends: Vec<Backend>,
    pub timeouts: Option<Timeouts>,
    pub health_check: Option<HealthCheck>,
    pub circuit_breaker: Option<CircuitBreaker>,
    pub retry: Option<Retry>,
    pub panic_threshold: Option<Number>,
    pub max_response_header_bytes: Option<i64>,
    pub protocol: Option<String>,
    pub tls: Option<UpstreamTls>,
    pub discovery: Option<Discovery>,
}

/// A number written either way in TOML (`0`, `0.5`).
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(untagged)]
pub enum Number {
    Integer(i64),
    Float(f64),
}

impl Number {
    pub fn as_f64(self) -> f64 {
        match self {
            Number::Integer(i) => i as f64,
            Number::Float(f) => f,
        }
    }
}

/// `[pools.NAME.health_check]`.
#[derive(Debug, Deserialize)]
pub struct HealthCheck {
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub path: Option<String>,
    pub expected_status: Option<String>,
    pub interval: Option<String>,
    pub timeout: Option<String>,
    pub healthy_threshold: Option<i64>,
    pub unhealthy_threshold: Option<i64>,
    pub host: Option<String>,
}

/// `[pools.NAME.circuit_breaker]`.
#[derive(Debug, Deserialize)]
pub struct CircuitBreaker {
    pub failure_threshold: Option<i64>,
    pub open_duration: Option<String>,
    pub max_open_duration: Option<String>,
    pub max_active_requests: Option<i64>,
    pub max_open_percent: Option<i64>,
}

/// `[pools.NAME.retry]`.
#[derive(Debug, Deserialize)]
pub struct Retry {
    pub max_retries: Option<i64>,
    pub backoff: Option<String>,
    pub budget_percent: Option<i64>,
}

/// One entry of a pool's `backends` list.
#[derive(Debug, Deserialize)]
pub struct Backend {
    pub address: String,
    pub weight: Option<i64>,
}

/// `[pools.NAME.timeouts]`.
#[derive(Debug, Deserialize)]
pub struct Timeouts {
    pub connect: Option<String>,
    pub request: Option<String>,
    pub idle: Option<String>,
}

/// `[runtime]`: process-wide settings.
#[derive(Debug, Deserialize)]
pub struct Runtime {
    pub workers: Option<i64>,
}
