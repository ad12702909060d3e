//! Turns the file format into checked runtime settings, collecting every problem with its field path.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

mod affinity;
mod balancing;
mod rate_limits;
mod route_policy;

use super::diag::{FieldPath, Locator, Problem};
use super::model;
use super::settings::*;

struct Checker<'l, 'a> {
    at: &'l Locator<'a>,
    problems: Vec<Problem>,
}

impl Checker<'_, '_> {
    fn err(&mut self, field: FieldPath, message: impl Into<String>) {
        self.problems.push(self.at.problem(field, false, message));
    }

    fn duration(&mut self, field: FieldPath, value: Option<&str>, default: Duration) -> Duration {
        self.duration_in(field, value, default, false)
    }

    fn duration_in(
        &mut self,
        field: FieldPath,
        value: Option<&str>,
        default: Duration,
        zero_ok: bool,
    ) -> Duration {
        let Some(text) = value else { return default };
        match humantime::parse_duration(text) {
            Ok(d) if d.is_zero() && !zero_ok => {
                self.err(
                    field,
                    format!("{text:?} is zero; a duration must be positive"),
                );
                default
            }
            Ok(d) => d,
            Err(e) => {
                self.err(
                    field,
                    format!("{text:?} is not a duration ({e}); write it like \"250ms\", \"2s\" or \"1m\""),
                );
                default
            }
        }
    }

    fn int(
        &mut self,
        field: FieldPath,
        value: Option<i64>,
        default: u32,
        min: u32,
        max: u32,
    ) -> u32 {
        match value {
            None => default,
            Some(v) if (i64::from(min)..=i64::from(max)).contains(&v) => v as u32,
            Some(v) => {
                self.err(
                    field,
                    format!("{v} is out of range; allowed values: {min} to {max}"),
                );
                default
            }
        }
    }

    fn health_check(&mut self, field: FieldPath, h: &model::HealthCheck) -> HealthCheckSettings {
        let path = h.path.clone().unwrap_or_else(|| "/healthz".to_owned());
        if !path.starts_with('/') {
            self.err(field.key("path"), format!("{path:?} must start with \"/\""));
        }
        let text = h.expected_status.as_deref().unwrap_or("200-399");
        let expected = StatusRanges::parse(text).unwrap_or_else(|| {
            self.err(
                field.key("expected_status"),
                format!("{text:?} is not a status range; write it like \"200-399\", \"200\" or \"200,204\" (codes 100 to 599)"),
            );
            StatusRanges(vec![(200, 399)])
        });
        if let Some(host) = &h.host {
            if host.is_empty() || http::HeaderValue::from_str(host).is_err() {
                self.err(
                    field.key("host"),
                    format!("{host:?} is not a valid Host header value"),
                );
            }
        }
        let kind = match h.kind.as_deref() {
            None | Some("http") => CheckKind::Http {
                path,
                expected,
                host: h.host.clone(),
            },
            Some("tcp") => CheckKind::Tcp,
            Some(other) => {
                self.err(
                    field.key("type"),
                    format!(
                        "unknown health check type {other:?}; allowed values: \"http\", \"tcp\""
                    ),
                );
                CheckKind::Tcp
            }
        };
        let interval = self.duration(
            field.key("interval"),
            h.interval.as_deref(),
            Duration::from_secs(2),
        );
        let timeout = self.duration(
            field.key("timeout"),
            h.timeout.as_deref(),
            Duration::from_secs(1),
        );
        if timeout >= interval {
            self.err(
                field.key("timeout"),
                format!(
                    "timeout {} must be shorter than interval {}",
                    humantime::format_duration(timeout),
                    humantime::format_duration(interval)
                ),
            );
        }
        HealthCheckSettings {
            kind,
            interval,
            timeout,
            healthy_threshold: self.int(
                field.key("healthy_threshold"),
                h.healthy_threshold,
                2,
                1,
                1000,
            ),
            unhealthy_threshold: self.int(
                field.key("unhealthy_threshold"),
                h.unhealthy_threshold,
                3,
                1,
                1000,
            ),
        }
    }

    fn breaker(&mut self, field: FieldPath, b: Option<&model::CircuitBreaker>) -> BreakerSettings {
        let d = BreakerSettings::default();
        let Some(b) = b else { return d };
        let open_duration = self.duration(
            field.key("open_duration"),
            b.open_duration.as_deref(),
            d.open_duration,
        );
        let max_open_duration = self.duration(
            field.key("max_open_duration"),
            b.max_open_duration.as_deref(),
            d.max_open_duration.max(open_duration),
        );
        if max_open_duration < open_duration {
            self.err(
                field.key("max_open_duration"),
                format!(
                    "{} is shorter than open_duration {}",
                    humantime::format_duration(max_open_duration),
                    humantime::format_duration(open_duration)
                ),
            );
        }
        BreakerSettings {
            failure_threshold: self.int(
                field.key("failure_threshold"),
                b.failure_threshold,
                d.failure_threshold,
                1,
                1_000_000,
            ),
            open_duration,
            max_open_duration,
            max_active_requests: self.int(
                field.key("max_active_requests"),
                b.max_active_requests,
                0,
                0,
                1_000_000,
            ),
            max_open_percent: self.int(
                field.key("max_open_percent"),
                b.max_open_percent,
                d.max_open_percent,
                0,
                100,
            ),
        }
    }

    fn retry(&mut self, field: FieldPath, r: Option<&model::Retry>) -> RetrySettings {
        let d = RetrySettings::default();
        let Some(r) = r else { return d };
        RetrySettings {
            max_retries: self.int(
                field.key("max_retries"),
                r.max_retries,
                d.max_retries,
                0,
                10,
            ),
            backoff: self.duration_in(field.key("backoff"), r.backoff.as_deref(), d.backoff, true),
            budget_percent: self.int(
                field.key("budget_percent"),
                r.budget_percent,
                d.budget_percent,
                0,
                100,
            ),
        }
    }

    fn listener_tls(
        &mut self,
        field: FieldPath,
        t: &model::ListenerTls,
        folder: &std::path::Path,
        warnings: &mut Vec<String>,
    ) -> ListenerTlsSettings {
        if t.certificates.is_empty() {
            self.err(
                field.key("certificates"),
                "no certificate; add one, like certificates = [{ cert = \"certs/site.pem\", key = \"certs/site.key\" }]",
            );
        }
        let mut certificates = Vec::new();
        for (i, pair) in t.certificates.iter().enumerate() {
            let paths = CertPaths {
                cert: folder.join(&pair.cert),
                key: folder.join(&pair.key),
            };
            match super::certs::load_pair(&paths) {
                Ok(loaded) => {
                    if loaded.is_expired() {
                        warnings.push(format!(
                            "{}: the certificate in {} expired at {}",
                            field.key("certificates").index(i),
                            paths.cert.display(),
                            humantime::format_rfc3339_seconds(loaded.not_after)
                        ));
                    }
                }
                Err(e) => self.err(field.key("certificates").index(i), e),
            }
            certificates.push(paths);
        }
        let min_version = match t.min_version.as_deref() {
            None => TlsVersion::Tls12,
            Some(v) => TlsVersion::parse(v).unwrap_or_else(|| {
                self.err(
                    field.key("min_version"),
                    format!("unknown TLS version {v:?}; allowed values: \"1.2\", \"1.3\""),
                );
                TlsVersion::Tls12
            }),
        };
        let alpn = match &t.alpn {
            None => vec!["h2".to_owned(), "http/1.1".to_owned()],
            Some(list) => {
                for (i, p) in list.iter().enumerate() {
                    if p != "h2" && p != "http/1.1" {
                        self.err(
                            field.key("alpn").index(i),
                            format!("unknown protocol {p:?}; allowed values: \"h2\", \"http/1.1\""),
                        );
                    }
                }
                if list.is_empty() {
                    self.err(
                        field.key("alpn"),
                        "empty; leave it out for [\"h2\", \"http/1.1\"]",
                    );
                }
                list.clone()
            }
        };
        ListenerTlsSettings {
            certificates,
            min_version,
            alpn,
        }
    }

    fn upstream_tls(
        &mut self,
        field: FieldPath,
        t: Option<&model::UpstreamTls>,
        folder: &std::path::Path,
    ) -> UpstreamTlsSettings {
        let Some(t) = t else {
            return UpstreamTlsSettings::default();
        };
        let ca_file = t.ca_file.as_ref().map(|f| folder.join(f));
        if let Some(path) = &ca_file {
            if let Err(e) = super::certs::load_roots(Some(path)) {
                self.err(field.key("ca_file"), e);
            }
        }
        if let Some(name) = &t.server_name {
            if rustls::pki_types::ServerName::try_from(name.as_str()).is_err() {
                self.err(
                    field.key("server_name"),
                    format!("{name:?} is not a DNS name or an IP address"),
                );
            }
        }
        UpstreamTlsSettings {
            ca_file,
            server_name: t.server_name.clone(),
        }
    }

    fn discovery(&mut self, field: FieldPath, d: &model::Discovery) -> Option<DiscoverySettings> {
        let name = d.name.trim_end_matches('.');
        if !is_host_name(name) {
            self.err(
                field.key("name"),
                format!(
                    "{:?} is not a DNS name; write it like \"api.service.consul\"",
                    d.name
                ),
            );
        }
        let refresh = self.duration(
            field.key("refresh"),
            d.refresh.as_deref(),
            Duration::from_secs(10),
        );
        let port = match (d.kind.as_str(), d.port) {
            ("dns", Some(p)) if (1..=65535).contains(&p) => Some(p as u16),
            ("dns", Some(p)) => {
                self.err(
                    field.key("port"),
                    format!("{p} is out of range; allowed values: 1 to 65535"),
                );
                None
            }
            ("dns", None) => {
                self.err(
                    field.key("port"),
                    "type \"dns\" (A/AAAA records) needs the backends' port, like port = 8080",
                );
                None
            }
            ("dns_srv", Some(_)) => {
                self.err(
                    field.key("port"),
                    "type \"dns_srv\" takes ports (and weights) from the SRV records; leave port out",
                );
                None
            }
            ("dns_srv", None) => None,
            (other, _) => {
                self.err(
                    field.key("type"),
                    format!("unknown discovery type {other:?}; allowed values: \"dns\" (A/AAAA), \"dns_srv\" (SRV)"),
                );
                return None;
            }
        };
        if d.kind == "dns" && port.is_none() {
            return None;
        }
        Some(DiscoverySettings {
            name: name.to_owned(),
            port,
            refresh,
        })
    }

    fn socket_addr(&mut self, field: FieldPath, text: &str) -> Option<SocketAddr> {
        match text.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                self.err(
                    field,
                    format!("{text:?} is not an address to listen on; expected IP:port, like \"127.0.0.1:8080\""),
                );
                None
            }
        }
    }
}

/// `text` in ASCII lower case, copied only when it has an upper-case letter (addresses seldom do).
fn lowercase(text: &str) -> std::borrow::Cow<'_, str> {
    if text.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(text.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(text)
    }
}

/// Is `text` a `host:port` we can connect to (an IP address, or a DNS name, and a non-zero port)?
pub(crate) fn is_backend_address(text: &str) -> bool {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return addr.port() != 0;
    }
    let Some((host, port)) = text.rsplit_once(':') else {
        return false;
    };
    let port_ok = port.parse::<u16>().is_ok_and(|p| p != 0);
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    port_ok && host_ok
}

pub(super) fn is_host_name(text: &str) -> bool {
    !text.is_empty()
        && text.split('.').all(|l| {
            !l.is_empty()
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// Checks a parsed file; `folder` is the config file's folder, which relative paths in it start from. Returns
/// the runtime config, or every problem found (each section is checked whatever the others hold).
pub(crate) fn validate(
    file: &model::File,
    at: &Locator<'_>,
    folder: &std::path::Path,
) -> Result<Config, Vec<Problem>> {
    let mut c = Checker {
        at,
        problems: Vec::new(),
    };
    let mut warnings = Vec::new();
    let listeners = c.listeners(file, folder, &mut warnings);
    let admin = c.admin(file, folder, &listeners);
    let pools = file
        .pools
        .iter()
        .map(|(name, pool)| (name.clone(), c.pool(name, pool, folder)))
        .collect();
    let routes = c.routes(file);
    let workers = c.workers(file);
    let limits = c.limits(file);
    let trusted_proxies = c.trusted_proxies(file);
    let resolver = c.resolver(file);
    let drain_timeout = c.duration(
        FieldPath::root().key("drain_timeout"),
        file.drain_timeout.as_deref(),
        DEFAULT_DRAIN_TIMEOUT,
    );
    let access_log = c.access_log(file, folder);
    let (rate_limits, rate_limit_store) = c.rate_limits(file);
    let request_id = c.request_id(file);
    if !c.problems.is_empty() {
        return Err(c.problems);
    }
    Ok(Config {
        listeners,
        admin,
        routes,
        pools,
        runtime: RuntimeSettings { workers },
        drain_timeout,
        access_log,
        limits,
        trusted_proxies,
        warnings,
        resolver,
        rate_limits,
        rate_limit_store,
        request_id,
    })
}

/// One function per section of the file.
impl Checker<'_, '_> {
    /// `[[listeners]]`.
    fn listeners(
        &mut self,
        file: &model::File,
        folder: &std::path::Path,
        warnings: &mut Vec<String>,
    ) -> Vec<ListenerSettings> {
        let root = FieldPath::root();
        let mut listeners = Vec::new();
        let mut seen_listeners = HashSet::new();
        if file.listeners.is_empty() {
            self.err(
                root.key("listeners"),
                "no listener; add one, like [[listeners]] address = \"127.0.0.1:8080\"",
            );
        }
        for (i, l) in file.listeners.iter().enumerate() {
            let lfield = root.key("listeners").index(i);
            let field = lfield.key("address");
            let redirect_https = l.redirect_https.unwrap_or(false);
            let tls = l.tls.as_ref().map(|t| {
                if redirect_https {
                    self.err(
                        lfield.key("redirect_https"),
                        "a TLS listener cannot redirect to https; set redirect_https on a plain listener",
                    );
                }
                self.listener_tls(lfield.key("tls"), t, folder, warnings)
            });
            if let Some(address) = self.socket_addr(field.clone(), &l.address) {
                if !seen_listeners.insert(address) {
                    self.err(field, format!("{:?} is listed twice", l.address));
                } else {
                    listeners.push(ListenerSettings {
                        address,
                        tls,
                        redirect_https,
                        reuse_port: l.reuse_port.unwrap_or(false),
                    });
                }
            }
        }
        listeners
    }

    /// `[admin]`: its address may not be a proxy listener's, and off loopback it needs a token file (read here).
    fn admin(
        &mut self,
        file: &model::File,
        folder: &std::path::Path,
        listeners: &[ListenerSettings],
    ) -> AdminSettings {
        let root = FieldPath::root();
        let admin_text = file
            .admin
            .as_ref()
            .and_then(|a| a.address.as_deref())
            .unwrap_or(DEFAULT_ADMIN_ADDRESS);
        let admin_field = root.key("admin").key("address");
        let admin_address = self
            .socket_addr(admin_field.clone(), admin_text)
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 9901)));
        let admin_token = file
            .admin
            .as_ref()
            .and_then(|a| a.token_file.as_deref())
            .and_then(|path| {
                let field = root.key("admin").key("token_file");
                match std::fs::read_to_string(folder.join(path)) {
                    Ok(text) if !text.trim().is_empty() => Some(text.trim().to_owned()),
                    Ok(_) => {
                        self.err(
                            field,
                            format!("{path:?} is empty; put the admin token in it"),
                        );
                        None
                    }
                    Err(e) => {
                        self.err(field, format!("cannot read {path:?}: {e}"));
                        None
                    }
                }
            });
        if !admin_address.ip().is_loopback() && admin_token.is_none() {
            self.err(
                admin_field.clone(),
                format!(
                    "{admin_text:?} is not a loopback address: an admin listener reachable from other hosts needs \
                     admin.token_file (every request then carries Authorization: Bearer <token>)"
                ),
            );
        }
        if admin_address.port() != 0 && listeners.iter().any(|l| l.address == admin_address) {
            self.err(
                admin_field,
                format!(
                    "{admin_text:?} is also a proxy listener; give the admin listener its own address"
                ),
            );
        }
        AdminSettings {
            address: admin_address,
            token: admin_token,
        }
    }

    /// `[pools.NAME]`.
    fn pool(&mut self, name: &str, pool: &model::Pool, folder: &std::path::Path) -> PoolSettings {
        let field = FieldPath::root().key("pools").key(name);
        let (algorithm, protocol, tls) = self.pool_kind(&field, name, pool, folder);
        let discovery = pool
            .discovery
            .as_ref()
            .and_then(|d| self.discovery(field.key("discovery"), d));
        let backends = self.backends(&field, name, pool);
        let t = pool.timeouts.as_ref();
        let timeouts = Timeouts {
            connect: self.duration(
                field.key("timeouts").key("connect"),
                t.and_then(|t| t.connect.as_deref()),
                DEFAULT_CONNECT_TIMEOUT,
            ),
            request: self.duration(
                field.key("timeouts").key("request"),
                t.and_then(|t| t.request.as_deref()),
                DEFAULT_REQUEST_TIMEOUT,
            ),
            idle: self.duration(
                field.key("timeouts").key("idle"),
                t.and_then(|t| t.idle.as_deref()),
                DEFAULT_UPSTREAM_IDLE,
            ),
        };
        let max_response_header_bytes = self.int(
            field.key("max_response_header_bytes"),
            pool.max_response_header_bytes,
            DEFAULT_MAX_RESPONSE_HEADER_BYTES as u32,
            8192,
            MAX_RESPONSE_HEADER_BYTES as u32,
        ) as usize;
        let health_check = pool
            .health_check
            .as_ref()
            .map(|h| self.health_check(field.key("health_check"), h));
        let breaker = self.breaker(field.key("circuit_breaker"), pool.circuit_breaker.as_ref());
        let retry = self.retry(field.key("retry"), pool.retry.as_ref());
        let panic_threshold = match pool.panic_threshold.map(model::Number::as_f64) {
            None => 0.0,
            Some(v) if (0.0..=1.0).contains(&v) => v,
            Some(v) => {
                self.err(
                    field.key("panic_threshold"),
                    format!("{v} is out of range; allowed values: 0.0 to 1.0 (a share of the pool's backends)"),
                );
                0.0
            }
        };
        let peak_ewma = self.peak_ewma(field.key("peak_ewma"), pool.peak_ewma.as_ref());
        let slow_start = pool
            .slow_start
            .as_ref()
            .map(|s| self.slow_start(field.key("slow_start"), s));
        let outlier_detection = pool
            .outlier_detection
            .as_ref()
            .map(|o| self.outlier_detection(field.key("outlier_detection"), o));
        let queue = pool
            .queue
            .as_ref()
            .map(|q| self.queue(field.key("queue"), q, &breaker));
        let hash = self.hash(field.key("hash"), pool.hash.as_ref(), algorithm);
        let sticky = pool
            .sticky
            .as_ref()
            .map(|s| self.sticky(field.key("sticky"), name, s, folder));
        PoolSettings {
            hash,
            sticky,
            peak_ewma,
            slow_start,
            outlier_detection,
            queue,
            algorithm,
            backends,
            timeouts,
            health_check,
            breaker,
            retry,
            panic_threshold,
            max_response_header_bytes,
            protocol,
            tls,
            discovery,
        }
    }

    /// A pool's algorithm, protocol and upstream TLS.
    fn pool_kind(
        &mut self,
        field: &FieldPath,
        name: &str,
        pool: &model::Pool,
        folder: &std::path::Path,
    ) -> (Algorithm, Protocol, Option<UpstreamTlsSettings>) {
        let algorithm = match pool.algorithm.as_deref() {
            None => Algorithm::RoundRobin,
            Some(text) => Algorithm::parse(text).unwrap_or_else(|| {
                self.err(
                    field.key("algorithm"),
                    format!(
                        "unknown algorithm {text:?}; allowed values: {}",
                        Algorithm::ALLOWED.map(|a| format!("{a:?}")).join(", ")
                    ),
                );
                Algorithm::RoundRobin
            }),
        };
        let protocol = match pool.protocol.as_deref() {
            None => Protocol::Http1,
            Some(text) => Protocol::parse(text).unwrap_or_else(|| {
                self.err(
                    field.key("protocol"),
                    format!(
                        "unknown protocol {text:?}; allowed values: {}",
                        Protocol::ALLOWED.map(|a| format!("{a:?}")).join(", ")
                    ),
                );
                Protocol::Http1
            }),
        };
        let upstream_tls = match (&pool.tls, protocol.is_tls()) {
            (Some(_), false) => {
                self.err(
                    field.key("tls"),
                    format!(
                        "[pools.{name}.tls] applies to protocol \"https\" or \"h2\"; this pool's protocol is {:?}",
                        pool.protocol.as_deref().unwrap_or("http1")
                    ),
                );
                None
            }
            (t, true) => Some(self.upstream_tls(field.key("tls"), t.as_ref(), folder)),
            (None, false) => None,
        };
        (algorithm, protocol, upstream_tls)
    }

    /// A pool's static backends.
    fn backends(
        &mut self,
        field: &FieldPath,
        name: &str,
        pool: &model::Pool,
    ) -> Vec<BackendSettings> {
        if pool.backends.is_empty() && pool.discovery.is_none() {
            self.err(
                field.key("backends"),
                "pool has no backends; add at least one, like { address = \"127.0.0.1:9001\" }, or a discovery",
            );
        }
        let mut backends = Vec::new();
        let mut seen = HashSet::new();
        for (i, b) in pool.backends.iter().enumerate() {
            // Made only for a message: a pool of thousands of backends is checked on every reload.
            let bfield = || field.key("backends").index(i);
            let address = b.address.trim();
            if !is_backend_address(address) {
                self.err(
                    bfield().key("address"),
                    format!("{:?} is not a backend address; expected host:port, like \"127.0.0.1:9001\"", b.address),
                );
            } else if !seen.insert(lowercase(address)) {
                self.err(
                    bfield().key("address"),
                    format!("{address:?} appears twice in pool {name:?}"),
                );
            }
            let weight = match b.weight {
                None => 1,
                Some(w) if (1..=i64::from(MAX_WEIGHT)).contains(&w) => w as u32,
                Some(w) => {
                    self.err(
                        bfield().key("weight"),
                        format!("weight {w} is out of range; allowed values: 1 to {MAX_WEIGHT}"),
                    );
                    1
                }
            };
            backends.push(BackendSettings {
                address: address.to_owned(),
                weight,
                source: BackendSource::Static,
            });
        }
        backends
    }

    /// `[runtime] workers`.
    fn workers(&mut self, file: &model::File) -> Option<usize> {
        let root = FieldPath::root();

        match file.runtime.as_ref().and_then(|r| r.workers) {
            None => None,
            Some(w) if (1..=1024).contains(&w) => Some(w as usize),
            Some(w) => {
                self.err(
                    root.key("runtime").key("workers"),
                    format!("{w} is out of range; allowed values: 1 to 1024"),
                );
                None
            }
        }
    }

    /// `[limits]`.
    fn limits(&mut self, file: &model::File) -> Limits {
        let root = FieldPath::root();

        match &file.limits {
            None => Limits::default(),
            Some(l) => {
                let d = Limits::default();
                let field = root.key("limits");
                Limits {
                    max_header_bytes: self.int(
                        field.key("max_header_bytes"),
                        l.max_header_bytes,
                        d.max_header_bytes as u32,
                        8192,
                        16 * 1024 * 1024,
                    ) as usize,
                    header_read_timeout: self.duration(
                        field.key("header_read_timeout"),
                        l.header_read_timeout.as_deref(),
                        d.header_read_timeout,
                    ),
                    body_read_timeout: self.duration(
                        field.key("body_read_timeout"),
                        l.body_read_timeout.as_deref(),
                        d.body_read_timeout,
                    ),
                    idle_timeout: self.duration(
                        field.key("idle_timeout"),
                        l.idle_timeout.as_deref(),
                        d.idle_timeout,
                    ),
                    max_connections: self.int(
                        field.key("max_connections"),
                        l.max_connections,
                        d.max_connections as u32,
                        1,
                        10_000_000,
                    ) as usize,
                    max_concurrent_streams: self.int(
                        field.key("max_concurrent_streams"),
                        l.max_concurrent_streams,
                        d.max_concurrent_streams,
                        1,
                        10_000,
                    ),
                    max_request_body_bytes: match l.max_request_body_bytes {
                        None => None,
                        Some(v) if v >= 0 => Some(v as u64),
                        Some(v) => {
                            self.err(
                                field.key("max_request_body_bytes"),
                                format!("{v} is out of range; allowed values: 0 and up (leave it out for no limit)"),
                            );
                            None
                        }
                    },
                }
            }
        }
    }

    /// `trusted_proxies`.
    fn trusted_proxies(&mut self, file: &model::File) -> Vec<ipnet::IpNet> {
        let root = FieldPath::root();
        let mut trusted_proxies = Vec::new();
        for (i, cidr) in file.trusted_proxies.iter().flatten().enumerate() {
            let parsed = cidr
                .parse::<ipnet::IpNet>()
                .or_else(|_| cidr.parse::<std::net::IpAddr>().map(ipnet::IpNet::from));
            match parsed {
                Ok(net) => trusted_proxies.push(net.trunc()),
                Err(_) => self.err(
                    root.key("trusted_proxies").index(i),
                    format!("{cidr:?} is not a CIDR range or an IP address; write it like \"10.0.0.0/8\" or \"192.0.2.7\""),
                ),
            }
        }
        trusted_proxies
    }

    /// `[resolver]`.
    fn resolver(&mut self, file: &model::File) -> ResolverSettings {
        let root = FieldPath::root();

        {
            let field = root.key("resolver");
            let r = file.resolver.as_ref();
            let mut nameservers = Vec::new();
            for (i, text) in r
                .and_then(|r| r.nameservers.as_ref())
                .into_iter()
                .flatten()
                .enumerate()
            {
                let parsed = text.parse::<SocketAddr>().or_else(|_| {
                    text.parse::<std::net::IpAddr>()
                        .map(|ip| SocketAddr::new(ip, 53))
                });
                match parsed {
                    Ok(a) => nameservers.push(a),
                    Err(_) => self.err(
                        field.key("nameservers").index(i),
                        format!("{text:?} is not a DNS server address; write it like \"127.0.0.1:8600\" or \"10.0.0.2\" (port 53)"),
                    ),
                }
            }
            ResolverSettings {
                nameservers,
                timeout: self.duration(
                    field.key("timeout"),
                    r.and_then(|r| r.timeout.as_deref()),
                    Duration::from_secs(2),
                ),
            }
        }
    }

    /// `[access_log]`.
    fn access_log(
        &mut self,
        file: &model::File,
        folder: &std::path::Path,
    ) -> Option<AccessLogSettings> {
        let root = FieldPath::root();

        file.access_log.as_ref().and_then(|a| {
            let field = root.key("access_log");
            let format = match a.format.as_deref() {
                None | Some("json") => Format::Json,
                Some("text") => Format::Text,
                Some(other) => {
                    self.err(
                        field.key("format"),
                        format!(
                            "unknown access log format {other:?}; allowed values: \"json\", \"text\""
                        ),
                    );
                    Format::Json
                }
            };
            if a.path.as_deref() == Some("") {
                self.err(
                    field.key("path"),
                    "the path is empty; leave it out to log to standard output",
                );
            }
            a.enabled.unwrap_or(false).then(|| AccessLogSettings {
                format,
                path: a.path.as_ref().map(|p| folder.join(p)),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn backend_addresses_are_compared_without_case() {
        let text = "[[listeners]]\naddress = \"127.0.0.1:0\"\n[[routes]]\npool = \"p\"\n[pools.p]\n\
            backends = [{ address = \"API.internal:80\" }, { address = \"api.internal:80\" }, { address = \"10.0.0.1:80\" }]\n";
        let err = crate::config::parse(text, "t.toml")
            .err()
            .map(|e| e.to_string());
        let err = err.unwrap_or_default();
        assert!(
            err.contains("t.toml:6:58: pools.p.backends[1].address: \"api.internal:80\" appears twice in pool \"p\""),
            "{err}"
        );
        assert!(!err.contains("10.0.0.1"), "{err}");
    }
}
