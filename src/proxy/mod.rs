//! The data path, top to bottom: route → pick → forward (retrying where it is safe) → record.

mod body;
pub mod headers;
pub mod retry;
mod tunnel;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use http::header::{self, HeaderValue};
use http::uri::{Authority, Uri};
use http::{Method, Request, Response, StatusCode, Version};
use hyper::body::{Body as _, Incoming};
use tokio::time::Instant;

pub use body::{Completion, ProxyBody};

use crate::access_log::{AccessLog, Pending};
use crate::backend::Backend;
use crate::config::Protocol;
use crate::error::ProxyError;
use crate::metrics::{BackendMetrics, Metrics, NONE};
use crate::pool::{Pool, Tried};
use crate::router::Snapshot;
use crate::upstream::{self, Metered, Outgoing, RequestBody, SendError};

/// What the proxy knows of the client connection a request came on.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// `peer`'s address as a header value (`X-Forwarded-For`), made once per connection.
    pub peer_value: HeaderValue,
    /// The connection is TLS (`X-Forwarded-Proto: https`).
    pub https: bool,
    /// The listener only redirects to https.
    pub redirect_https: bool,
}

/// The proxy service shared by every connection of every listener.
pub struct Proxy {
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    pub metrics: Arc<Metrics>,
}

/// How one attempt ended, when it did not give a response to pass on.
enum Failure {
    /// A response the proxy may retry (502/503/504 to an idempotent, replayable request); passed on if not.
    Response(Response<Incoming>, Completion),
    Error(ProxyError),
}

impl Proxy {
    pub fn new(snapshot: Arc<ArcSwap<Snapshot>>, metrics: Arc<Metrics>) -> Self {
        Self { snapshot, metrics }
    }

    /// Serves one client request.
    pub async fn handle(&self, mut req: Request<Incoming>, conn: ConnInfo) -> Response<ProxyBody> {
        let peer = conn.peer;
        let started = Instant::now();
        let (pool, mut log, max_body, trusted) = {
            let snapshot = self.snapshot.load();
            let log = snapshot
                .access_log
                .as_ref()
                .map(|(_, log)| Box::new(pending(log, &req, peer)));
            if req.method() == Method::CONNECT {
                self.metrics.reject("connect_method");
                let e = ProxyError::MethodNotAllowed;
                return local_answer(&e, &snapshot.no_route_metrics, started, log, 0);
            }
            let host = request_host(&req);
            let Some(pool) = snapshot.routes.route(host, req.uri().path()) else {
                let e = ProxyError::NoRoute;
                return local_answer(&e, &snapshot.no_route_metrics, started, log, 0);
            };
            let max_body = snapshot.limits.max_request_body_bytes;
            if let Some(max) = max_body {
                if content_length(&req).is_some_and(|n| n > max) {
                    self.metrics.reject("body_too_large");
                    let e = ProxyError::BodyTooLarge;
                    return local_answer(&e, &pool.local_metrics, started, log, 0);
                }
            }
            let trusted = snapshot
                .trusted_proxies
                .iter()
                .any(|net| net.contains(&headers::canonical(peer.ip())));
            (Arc::clone(pool), log, max_body, trusted)
        };
        let upgrade = headers::is_upgrade(&req).then(|| hyper::upgrade::on(&mut req));
        let protocol = pool.protocol;
        if upgrade.is_some() && protocol.is_http2() {
            let e = ProxyError::UpgradeUnsupported;
            return local_answer(&e, &pool.local_metrics, started, log, 0);
        }
        pool.budget.record_request(started);
        let mut tried = Tried::default();
        let Some(first) = pool
            .pick(started, &mut tried)
            .or_else(|| pool.pick_early_trial(&mut tried))
            .cloned()
        else {
            return local_answer(&ProxyError::NoBackend, &pool.local_metrics, started, log, 0);
        };
        let bytes_in = log.as_ref().map(|l| Arc::clone(&l.bytes_in));
        let meter = (bytes_in.is_some() || max_body.is_some()).then(|| Meter {
            count: bytes_in,
            limit: max_body.unwrap_or(u64::MAX),
            exceeded: Arc::new(AtomicBool::new(false)),
        });
        let body_too_large = meter.as_ref().map(|m| Arc::clone(&m.exceeded));
        let how = Forwarding {
            peer: conn.peer_value,
            trusted,
            proto: if conn.https { "https" } else { "http" },
            upgrade: upgrade.is_some(),
            protocol,
        };
        let mut req = match prepare(req, &how, meter) {
            Ok(r) => r,
            Err(e) => {
                first.breaker.cancel_trial();
                return local_answer(&e, &pool.local_metrics, started, log, 0);
            }
        };
        let replayable =
            matches!(req.body(), RequestBody::Empty) && retry::is_idempotent(req.method());

        let mut backend = first;
        let mut retries = 0u32;
        let mut attempt_started = started;
        loop {
            let may_retry = retries < pool.retry.max_retries;
            // Keep a copy for a retry after sending only when one could happen: another backend to try.
            let copy =
                (may_retry && replayable && pool.backends.len() > 1).then(|| copy_request(&req));
            let attempts = retries + 1;
            let (failure, back) =
                match attempt(&pool, &backend, req, started, attempt_started).await {
                    Ok((resp, done)) => {
                        if let (Some(client), StatusCode::SWITCHING_PROTOCOLS) =
                            (upgrade, resp.status())
                        {
                            let idle = self.snapshot.load().limits.idle_timeout;
                            return tunnel::open(
                                resp,
                                done,
                                client,
                                log,
                                attempts,
                                idle,
                                &self.metrics,
                            );
                        }
                        return pass_on(resp, done, log, attempts, pool.timeouts.request);
                    }
                    Err((Failure::Response(resp, done), _)) if copy.is_none() => {
                        return pass_on(resp, done, log, attempts, pool.timeouts.request);
                    }
                    Err(other) => other,
                };
            // Nothing was sent (connect failure): the request itself comes back, whatever its method, and
            // goes to another backend without touching the budget: the failing backend saw nothing.
            let now = Instant::now();
            let next_req = match (back, copy) {
                (Some(r), _) => Some(r),
                (None, Some(r)) if pool.budget.try_retry(now, pool.retry.budget_percent) => Some(r),
                _ => None,
            };
            let next = match next_req {
                Some(r) if may_retry => pool.pick(now, &mut tried).cloned().map(|b| (b, r)),
                _ => None,
            };
            let Some((next_backend, next_req)) = next else {
                return match failure {
                    Failure::Response(resp, done) => {
                        pass_on(resp, done, log, attempts, pool.timeouts.request)
                    }
                    Failure::Error(_)
                        if body_too_large
                            .as_ref()
                            .is_some_and(|b| b.load(Ordering::Relaxed)) =>
                    {
                        self.metrics.reject("body_too_large");
                        let e = ProxyError::BodyTooLarge;
                        local_answer(&e, &pool.local_metrics, started, log, attempts)
                    }
                    Failure::Error(e) => {
                        if let Some(l) = log.as_mut() {
                            l.backend.clone_from(&backend.address);
                        }
                        local_answer(&e, &pool.local_metrics, started, log, attempts)
                    }
                };
            };
            drop(failure);
            retries += 1;
            pool.retries.inc();
            tokio::time::sleep(retry::backoff(pool.retry.backoff, retries)).await;
            attempt_started = Instant::now();
            backend = next_backend;
            req = next_req;
        }
    }
}

impl Proxy {
    /// The answer of a `redirect_https` listener: 308 to the same host (without its port) and target.
    pub fn redirect_https(&self, req: &Request<Incoming>) -> Response<ProxyBody> {
        let metrics = &self.snapshot.load().no_route_metrics;
        let host = request_host(req).map(crate::router::normalize_host);
        let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let location = host
            .filter(|h| !h.is_empty())
            .and_then(|h| HeaderValue::from_str(&format!("https://{h}{target}")).ok());
        let Some(location) = location else {
            metrics.count_response(StatusCode::BAD_REQUEST);
            return plain(
                StatusCode::BAD_REQUEST,
                "switchyard: a redirect to https needs a Host header\n",
            );
        };
        metrics.count_response(StatusCode::PERMANENT_REDIRECT);
        let mut resp = plain(
            StatusCode::PERMANENT_REDIRECT,
            "switchyard: this site is served over https\n",
        );
        resp.headers_mut().insert(header::LOCATION, location);
        resp
    }
}

/// One attempt on one backend. `Err` carries the failure and, when nothing was sent, the request.
async fn attempt(
    pool: &Pool,
    backend: &Arc<Backend>,
    req: Outgoing,
    started: Instant,
    attempt_started: Instant,
) -> Result<(Response<Incoming>, Completion), (Failure, Option<Outgoing>)> {
    let in_flight = backend.begin();
    let mut outcome = OutcomeGuard(Some((pool, backend)));
    let sent = tokio::time::timeout_at(
        attempt_started + pool.timeouts.request,
        upstream::send(
            &backend.connections,
            req,
            attempt_started,
            pool.timeouts.connect,
        ),
    )
    .await;
    let error = match sent {
        Ok(Ok((resp, sender))) => {
            let status = resp.status();
            outcome.record(!status.is_server_error(), &status);
            let done = Completion {
                started,
                in_flight,
                connection: Some(sender),
                log: None,
            };
            if matches!(status.as_u16(), 502..=504) {
                return Err((Failure::Response(resp, done), None));
            }
            return Ok((resp, done));
        }
        Ok(Err(SendError::Connect(e, back))) => {
            let error = ProxyError::Connect(e);
            backend.metrics.count_error("connect");
            outcome.record(false, &error);
            log_failure(backend, &error);
            return Err((Failure::Error(error), Some(back)));
        }
        Ok(Err(SendError::Sent(e))) => ProxyError::Protocol(e),
        Err(_) => ProxyError::Timeout,
    };
    if let Some(kind) = error.upstream_kind() {
        backend.metrics.count_error(kind);
    }
    outcome.record(false, &error);
    log_failure(backend, &error);
    Err((Failure::Error(error), None))
}

fn log_failure(backend: &Backend, error: &ProxyError) {
    tracing::debug!(pool = %backend.pool, backend = %backend.address, error = %error,
        cause = ?std::error::Error::source(error), "upstream attempt failed");
}

/// Feeds an attempt's result to the backend's breaker exactly once; if the attempt is abandoned (the client
/// went away), releases a half-open trial so the breaker cannot stay stuck.
struct OutcomeGuard<'a>(Option<(&'a Pool, &'a Arc<Backend>)>);

impl OutcomeGuard<'_> {
    fn record(&mut self, ok: bool, what: &dyn std::fmt::Display) {
        if let Some((pool, backend)) = self.0.take() {
            if ok {
                pool.record_success(backend);
            } else {
                pool.record_failure(backend, what);
            }
        }
    }
}

impl Drop for OutcomeGuard<'_> {
    fn drop(&mut self) {
        if let Some((_, backend)) = self.0.take() {
            backend.breaker.cancel_trial();
        }
    }
}

/// How a request is passed on.
struct Forwarding {
    /// The client's address as an `X-Forwarded-For` value.
    peer: HeaderValue,
    /// The peer is in `trusted_proxies`.
    trusted: bool,
    /// `X-Forwarded-Proto` for this hop.
    proto: &'static str,
    /// An upgrade request: `Connection: upgrade` and `Upgrade` stay.
    upgrade: bool,
    protocol: Protocol,
}

/// Rewrites a client request for the upstream: hop-by-hop headers out, forwarding headers in; for HTTP/1.1
/// upstreams an origin-form target and `Host`, for HTTP/2 ones an absolute target (`:scheme`, `:authority`).
fn prepare(
    req: Request<Incoming>,
    how: &Forwarding,
    meter: Option<Meter>,
) -> Result<Outgoing, ProxyError> {
    let (mut parts, body) = req.into_parts();
    let original_host = parts.headers.get(header::HOST).cloned().or_else(|| {
        parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });
    let upgrade = if how.upgrade {
        parts.headers.get(header::UPGRADE).cloned()
    } else {
        None
    };
    headers::strip_hop_by_hop(&mut parts.headers);
    if let Some(token) = upgrade {
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        parts.headers.insert(header::UPGRADE, token);
    }
    headers::add_forwarded(
        &mut parts.headers,
        &how.peer,
        how.proto,
        original_host.clone(),
        how.trusted,
    );
    if how.protocol.is_http2() {
        parts.headers.remove(header::HOST);
        let authority = original_host
            .as_ref()
            .and_then(|h| Authority::try_from(h.as_bytes()).ok())
            .ok_or(ProxyError::BadRequest)?;
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        parts.uri = Uri::builder()
            .scheme(if how.protocol.is_tls() {
                "https"
            } else {
                "http"
            })
            .authority(authority)
            .path_and_query(path)
            .build()
            .map_err(|_| ProxyError::BadRequest)?;
        parts.version = Version::HTTP_2;
    } else {
        if !parts.headers.contains_key(header::HOST) {
            if let Some(host) = original_host {
                parts.headers.insert(header::HOST, host);
            }
        }
        parts.version = Version::HTTP_11;
        if parts.uri.scheme().is_some() || parts.uri.authority().is_some() {
            let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
            parts.uri = Uri::try_from(path).map_err(|_| ProxyError::BadRequest)?;
        }
    }
    let body = match meter {
        _ if body.is_end_stream() => RequestBody::Empty,
        Some(m) => RequestBody::Metered(Box::new(Metered {
            body,
            count: m.count,
            remaining: m.limit,
            exceeded: m.exceeded,
        })),
        None => RequestBody::Streaming(body),
    };
    Ok(Box::new(Request::from_parts(parts, body)))
}

/// What to count and cap of a request body.
struct Meter {
    count: Option<Arc<AtomicU64>>,
    limit: u64,
    exceeded: Arc<AtomicBool>,
}

/// The request's declared body length, if it declares one.
fn content_length<B>(req: &Request<B>) -> Option<u64> {
    req.headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

/// A copy of a body-less request, for a retry after it was sent.
fn copy_request(req: &Request<RequestBody>) -> Outgoing {
    let mut copy = Request::new(RequestBody::Empty);
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    Box::new(copy)
}

/// Passes an upstream response on to the client.
fn pass_on(
    resp: Response<Incoming>,
    mut done: Completion,
    log: Option<Box<Pending>>,
    attempts: u32,
    idle_timeout: Duration,
) -> Response<ProxyBody> {
    let (mut parts, body) = resp.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers);
    let backend = done.in_flight.backend();
    backend.metrics.count_response(parts.status);
    done.log = log.map(|mut l| {
        l.status = parts.status.as_u16();
        l.pool.clone_from(&backend.pool);
        l.backend.clone_from(&backend.address);
        l.attempts = attempts;
        l
    });
    Response::from_parts(parts, ProxyBody::upstream(body, done, idle_timeout))
}

/// The start of a request's access log line.
fn pending(log: &Arc<AccessLog>, req: &Request<Incoming>, peer: SocketAddr) -> Pending {
    Pending {
        log: Arc::clone(log),
        time: SystemTime::now(),
        client: headers::canonical(peer.ip()),
        method: req.method().clone(),
        host: request_host(req).unwrap_or("").to_owned(),
        path: req
            .uri()
            .path_and_query()
            .map_or_else(|| req.uri().path().to_owned(), |p| p.as_str().to_owned()),
        bytes_in: Arc::new(AtomicU64::new(0)),
        pool: NONE.to_owned(),
        backend: NONE.to_owned(),
        attempts: 0,
        status: 0,
    }
}

/// The host a request is for: the authority of an absolute-form target (and HTTP/2's `:authority`), else `Host`.
fn request_host<B>(req: &Request<B>) -> Option<&str> {
    req.uri().host().or_else(|| {
        req.headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
    })
}

/// An answer the proxy gives itself, counted (and logged) with `backend="none"` unless an attempt named one.
fn local_answer(
    error: &ProxyError,
    metrics: &BackendMetrics,
    started: Instant,
    log: Option<Box<Pending>>,
    attempts: u32,
) -> Response<ProxyBody> {
    let status = error.status();
    metrics.count_response(status);
    let elapsed = started.elapsed();
    metrics.duration.observe(elapsed.as_secs_f64());
    if let Some(mut l) = log {
        l.status = status.as_u16();
        l.pool.clone_from(metrics.pool());
        l.attempts = attempts;
        l.finish(elapsed, error.reason().len() as u64);
    }
    plain(status, error.reason())
}

/// A short plain-text response.
pub fn plain(status: StatusCode, text: &'static str) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::local(text));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

#[cfg(test)]
mod future_size {
    //! Every request's future is moved a few times on its way into hyper: keep it small. The connect path (TCP,
    //! TLS and HTTP/2 handshakes) and the outgoing request are boxed for that reason (1.7 KiB instead of 3.2);
    //! these bounds catch them coming back inline.
    use super::*;

    fn size<'a, F: std::future::Future>(
        _: impl Fn(&'a Proxy, Request<Incoming>, ConnInfo) -> F,
    ) -> usize {
        std::mem::size_of::<F>()
    }

    fn size4<A, B, C, D, F: std::future::Future>(_: impl Fn(A, B, C, D) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    #[test]
    fn request_futures_stay_small() {
        let (handle, send) = (size(Proxy::handle), size4(upstream::send));
        assert!(handle <= 2048, "Proxy::handle's future is {handle} bytes");
        assert!(send <= 640, "upstream::send's future is {send} bytes");
    }
}
