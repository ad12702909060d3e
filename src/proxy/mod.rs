//! The data path, top to bottom: route → pick → forward (retrying where it is safe) → record.

pub mod affinity;
mod body;
mod checks;
pub mod headers;
mod limit;
mod mirror;
mod outgoing;
mod record;
mod request_id;
mod tunnel;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use tokio::time::Instant;

#[doc(hidden)]
pub use body::ProxyBody;
pub(crate) use body::{BodyWait, Completion};
pub(crate) use tunnel::OpenTunnels;

use self::affinity::Affinity;
use self::outgoing::{BodySetup, Forwarding, content_length, copy_request, prepare};
use crate::balance::backend::{Backend, InFlight};
use crate::balance::pool::{Pool, Tried, Unavailable};
use crate::balance::queue::QueueRejection;
use crate::balance::retry;
use crate::error::ProxyError;
use crate::observe::access_log::{AccessLog, Pending};
use crate::observe::metrics::{BackendMetrics, Metrics, NONE};
use crate::router::{Snapshot, Target};
use crate::upstream::request_body::{BodyWatch, RequestBody};
use crate::upstream::{self, ConnectionPool, Outgoing, SendError, Sender};

/// What the proxy knows of the client connection a request came on.
#[derive(Debug, Clone)]
#[doc(hidden)]
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
#[doc(hidden)]
pub struct Proxy {
    pub(crate) snapshot: Arc<ArcSwap<Snapshot>>,
    pub(crate) metrics: Arc<Metrics>,
    /// Upgraded connections (WebSocket) open now.
    pub(crate) tunnels: Arc<OpenTunnels>,
}

/// How one attempt ended, when it did not give a response to pass on.
enum Failure {
    /// A response the proxy may retry (502/503/504 to an idempotent, replayable request); passed on if not.
    /// Boxed: the rare case should not make every attempt's result large.
    Response(Box<(Response<Incoming>, Completion)>),
    Error(ProxyError),
}

impl Proxy {
    pub fn new(snapshot: Arc<ArcSwap<Snapshot>>, metrics: Arc<Metrics>) -> Self {
        let tunnels = Arc::new(OpenTunnels::new(metrics.upgraded_connections.clone()));
        Self {
            snapshot,
            metrics,
            tunnels,
        }
    }

    /// Serves one client request, in phases: admit it (checks, route, limits), pick a backend, prepare the
    /// request for the upstream — all at once, before the returned future is first polled — then forward it
    /// (attempts, retries) and answer. The future holds only what forwarding needs, so it stays small, and it
    /// is `forward`'s own: no wrapper stores the request a second time or moves the forwarding future once more.
    pub fn handle(
        self: &Arc<Self>,
        req: Request<Incoming>,
        conn: ConnInfo,
    ) -> impl Future<Output = Response<ProxyBody>> + Send + use<> {
        let started = Instant::now();
        let ready = if conn.redirect_https {
            Err(Box::new(self.redirect_https(&req)))
        } else {
            self.ready(req, &conn, started)
        };
        Arc::clone(self).forward(ready, started)
    }

    /// The phases before the first attempt; `Err` is the proxy's own answer.
    fn ready(
        &self,
        mut req: Request<Incoming>,
        conn: &ConnInfo,
        started: Instant,
    ) -> Result<Ready, Box<Response<ProxyBody>>> {
        let mut admitted = self.admit(&mut req, conn.peer, started)?;
        admitted.tls = conn.https;
        let upgrade = headers::is_upgrade(&req).then(|| hyper::upgrade::on(&mut req));
        let mut tried = Tried::default();
        let first = match admitted.pick_first(upgrade.is_some(), started, &mut tried) {
            Ok((i, claimed)) => Some((i as u32, claimed)),
            // Every usable backend at its request cap: the request waits in the pool's queue (in `forward`).
            Err(ProxyError::NoBackend) if admitted.target.pool.queue.is_some() => None,
            Err(e) => return Err(Box::new(self.refuse(&e, admitted, 0))),
        };
        match admitted.prepare(req, conn, upgrade.is_some(), started) {
            Ok((mut admitted, mut req, watch)) => {
                if let Some(m) = admitted.mirror.take().filter(|_| upgrade.is_none()) {
                    mirror::launch(&m, &mut req);
                }
                Ok(Ready {
                    admitted,
                    first,
                    tried,
                    req,
                    watch,
                    upgrade,
                })
            }
            Err((e, admitted)) => {
                if let Some((_, claimed)) = first {
                    claimed.backend().breaker.cancel_trial();
                }
                Err(Box::new(self.refuse(&e, *admitted, 0)))
            }
        }
    }

    /// Gives the request its ID (with `[request_id]`), checks it and finds its route, under the current
    /// snapshot; `Err` is the proxy's answer.
    fn admit(
        &self,
        req: &mut Request<Incoming>,
        peer: SocketAddr,
        started: Instant,
    ) -> Result<Admitted, Box<Response<ProxyBody>>> {
        let snapshot = self.snapshot.load();
        let peer_ip = headers::canonical(peer.ip());
        let proxies = &snapshot.trusted_proxies;
        let trusted = proxies.iter().any(|net| net.contains(&peer_ip));
        let identity = snapshot
            .request_id
            .as_ref()
            .map(|s| Box::new(request_id::identify(s, req.headers_mut(), trusted)));
        let req = &*req;
        let id = identity.as_deref();
        let log = snapshot
            .access_log
            .as_ref()
            .map(|(_, log)| Box::new(pending(log, req, peer, id)));
        let refused = if req.method() == Method::CONNECT {
            Err(ProxyError::MethodNotAllowed)
        } else {
            checks::check(req)
        };
        let metrics = &snapshot.no_route_metrics;
        if let Err(e) = refused {
            return Err(Box::new(self.answer(&e, metrics, started, log, 0, id)));
        }
        let host = request_host(req);
        let Some(route) = snapshot.routes.route(host, req.uri().path(), req.headers()) else {
            let e = ProxyError::NoRoute;
            return Err(Box::new(self.answer(&e, metrics, started, log, 0, id)));
        };
        if let Some(max) = snapshot.limits.max_request_body_bytes {
            if content_length(req).is_some_and(|n| n > max) {
                let metrics = &route.first_pool().local_metrics;
                let e = ProxyError::BodyTooLarge;
                return Err(Box::new(self.answer(&e, metrics, started, log, 0, id)));
            }
        }
        let client = || affinity::client_ip(req.headers(), peer_ip, trusted, proxies);
        let rate_headers = if route.rate_limits.is_empty() {
            None
        } else {
            match limit::check(route, req.headers(), client, started) {
                Ok(headers) => headers,
                Err(refusal) => {
                    let metrics = &route.first_pool().local_metrics;
                    let e = ProxyError::RateLimited;
                    let mut resp = self.answer(&e, metrics, started, log, 0, id);
                    refusal.add_to(resp.headers_mut());
                    return Err(Box::new(resp));
                }
            }
        };
        let (target, set_split_cookie) = route.choose(req.headers());
        let mirror = route.mirror.as_ref().filter(|m| m.sampled()).cloned();
        let affinity = Affinity::of(&target.pool, req, client);
        Ok(Admitted {
            target: Arc::clone(target),
            log,
            trusted,
            tls: false,
            set_split_cookie,
            mirror,
            affinity,
            rate_headers,
            identity,
            started,
        })
    }

    /// Sends the request to `first`, and on to other backends while a retry is allowed; answers the client
    /// (at once with `Err`, the proxy's own answer).
    async fn forward(
        self: Arc<Self>,
        ready: Result<Ready, Box<Response<ProxyBody>>>,
        started: Instant,
    ) -> Response<ProxyBody> {
        let ready = match ready {
            Ok(ready) => ready,
            Err(answer) => return *answer,
        };
        let Ready {
            mut admitted,
            first,
            mut tried,
            mut req,
            watch,
            upgrade,
        } = ready;
        let target = Arc::clone(&admitted.target);
        let pool = &*target.pool;
        let mut attempt_started = started;
        let first = match first {
            Some((i, claimed)) => (i as usize, claimed),
            // Boxed: the rare wait should not make every request's future larger.
            None => {
                match Box::pin(pool.wait_for_backend(&mut tried, admitted.affinity.key())).await {
                    Ok(i) => {
                        // The wait is not the backend's time: its latency and the request timeout start now.
                        attempt_started = Instant::now();
                        i
                    }
                    Err(why) => {
                        let e = match why {
                            Unavailable::NoBackend => ProxyError::NoBackend,
                            Unavailable::Queue(QueueRejection::Full) => ProxyError::QueueFull,
                            Unavailable::Queue(QueueRejection::Timeout) => ProxyError::QueueTimeout,
                        };
                        return self.refuse(&e, admitted, 0);
                    }
                }
            }
        };
        // A body-less idempotent request can be sent again: on a new connection when a reused one turns out
        // closed, and to another backend when the pool's retry policy allows.
        let replayable =
            matches!(req.body(), RequestBody::Empty) && retry::is_idempotent(req.method());
        let ((mut index, mut in_flight), mut retries) = (first, 0u32);
        loop {
            let copy = replayable.then(|| copy_request(&req));
            let (Some(backend), Some(connections)) =
                (pool.backends.get(index), target.connections.get(index))
            else {
                return self.refuse(&ProxyError::NoBackend, admitted, retries);
            };
            let exchange = Exchange {
                pool,
                backend,
                connections,
                watch: watch.as_deref(),
                replay: copy.as_ref(),
                started,
                attempt_started,
                upgrade: upgrade.is_some(),
            };
            let attempts = retries + 1;
            let (failure, back) = match exchange.attempt(req, in_flight).await {
                Ok((mut resp, done)) => {
                    admitted
                        .affinity
                        .stick(pool, index, admitted.tls, &mut resp);
                    return self.respond(resp, done, upgrade, admitted, attempts);
                }
                Err(failed) => failed,
            };
            // The backoff comes before the pick: a backend claimed (its half-open trial) is used at once, never
            // held through a sleep the client may abandon.
            let next = match next_try(pool, &failure, back, copy, retries, Instant::now()) {
                Some(next) => {
                    let pause = retry::backoff(pool.retry.backoff, retries + 1);
                    tokio::time::sleep(pause).await;
                    let key = admitted.affinity.key();
                    pool.pick(Instant::now(), &mut tried, key)
                        .map(|i| (i, next))
                }
                None => None,
            };
            let Some(((next_index, next_in_flight), next_req)) = next else {
                // The client gets what this attempt gave.
                return match failure {
                    Failure::Response(answer) => {
                        let (mut resp, done) = *answer;
                        admitted
                            .affinity
                            .stick(pool, index, admitted.tls, &mut resp);
                        self.respond(resp, done, None, admitted, attempts)
                    }
                    Failure::Error(e) => {
                        if let Some(l) = admitted.log.as_mut() {
                            l.backend.clone_from(&backend.address);
                        }
                        self.refuse(&e, admitted, attempts)
                    }
                };
            };
            drop(failure);
            retries += 1;
            pool.retries.inc();
            attempt_started = Instant::now();
            index = next_index;
            in_flight = next_in_flight;
            req = next_req;
        }
    }

    /// Passes the upstream's response on (or opens the tunnel of an accepted upgrade).
    fn respond(
        &self,
        mut resp: Response<Incoming>,
        done: Completion,
        upgrade: Option<OnUpgrade>,
        admitted: Admitted,
        attempts: u32,
    ) -> Response<ProxyBody> {
        let pool = &admitted.target.pool;
        if let Some(h) = &admitted.rate_headers {
            h.add_to(resp.headers_mut());
        }
        if let Some(identity) = &admitted.identity {
            resp.headers_mut()
                .insert(identity.header.clone(), identity.id.clone());
        }
        if let (true, Some(cookie)) = (admitted.set_split_cookie, &admitted.target.set_cookie) {
            resp.headers_mut()
                .append(header::SET_COOKIE, cookie.clone());
        }
        if let (Some(client), StatusCode::SWITCHING_PROTOCOLS) = (upgrade, resp.status()) {
            let idle = admitted.target.limits.idle_timeout;
            return tunnel::open(
                resp,
                done,
                client,
                admitted.log,
                attempts,
                idle,
                &self.tunnels,
            );
        }
        pass_on(resp, done, admitted.log, attempts, pool.timeouts.request)
    }

    /// The proxy's own answer for an admitted request (counted under its pool, `backend="none"`).
    fn refuse(&self, error: &ProxyError, admitted: Admitted, attempts: u32) -> Response<ProxyBody> {
        let metrics = &admitted.target.pool.local_metrics;
        let id = admitted.identity.as_deref();
        self.answer(error, metrics, admitted.started, admitted.log, attempts, id)
    }

    /// The proxy's own answer to a request it cannot pass on, counted (and logged) with `backend="none"` unless
    /// an attempt named one; refusals because of the client are also counted in
    /// `switchyard_rejected_requests_total` (and logged at debug level only).
    /// With a request ID, the body names it and the response carries it.
    fn answer(
        &self,
        error: &ProxyError,
        metrics: &BackendMetrics,
        started: Instant,
        mut log: Option<Box<Pending>>,
        attempts: u32,
        id: Option<&request_id::Identity>,
    ) -> Response<ProxyBody> {
        if let Some(reason) = error.rejection() {
            self.metrics.reject(reason);
            tracing::debug!(%error, reason, "request refused");
        }
        let status = error.status();
        if let Some(l) = log.as_deref_mut() {
            l.reason = error.code();
        }
        record::answered(metrics, status, log.as_deref_mut(), None, attempts);
        let elapsed = started.elapsed();
        let mut resp = plain(status, error.reason());
        let mut body = error.reason().len() as u64;
        if let Some(id) = id {
            let text = format!(
                "{}request id: {}\n",
                error.reason(),
                String::from_utf8_lossy(id.id.as_bytes())
            );
            body = text.len() as u64;
            *resp.body_mut() = ProxyBody::owned(text.into_bytes());
            resp.headers_mut().insert(id.header.clone(), id.id.clone());
        }
        record::ended(metrics, record::Ending::Request, elapsed, log, body);
        if error.closes_connection() {
            // The rest of what the client sent (a body, a next request) cannot be trusted or was not read.
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}

impl Proxy {
    /// The answer of a `redirect_https` listener: 308 to the same host (without its port) and target.
    pub(crate) fn redirect_https(&self, req: &Request<Incoming>) -> Response<ProxyBody> {
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

/// A request ready for its first attempt.
struct Ready {
    admitted: Admitted,
    /// The backend picked for the first attempt, and the request's count in flight there; `None`: to wait for
    /// one in the pool's queue. (`u32`: the request's future stays small.)
    first: Option<(u32, InFlight)>,
    /// The backends tried (or refused by their breaker) so far.
    tried: Tried,
    req: Outgoing,
    watch: Option<Arc<BodyWatch>>,
    /// The client's side of an upgrade (WebSocket), if it asked for one.
    upgrade: Option<OnUpgrade>,
}

/// A request that passed the checks and found its route.
struct Admitted {
    target: Arc<Target>,
    log: Option<Box<Pending>>,
    /// The peer is in `trusted_proxies`.
    trusted: bool,
    /// The client came over TLS.
    tls: bool,
    /// The response sets the sticky split's cookie (the target's `set_cookie`).
    set_split_cookie: bool,
    /// The route's mirror, when this request is to be mirrored (taken once the request is prepared).
    mirror: Option<Arc<crate::router::Mirror>>,
    affinity: Affinity,
    /// `RateLimit-Policy` and `RateLimit` for the response, when a limit of the route asks for them.
    rate_headers: Option<Box<limit::Headers>>,
    /// The request's ID and trace (`[request_id]`).
    identity: Option<Box<request_id::Identity>>,
    started: Instant,
}

impl Admitted {
    /// The first backend: a usable one, or an early trial when every usable backend's circuit is open.
    /// `tried` notes it (and any refused by their breaker), so retries go elsewhere.
    fn pick_first(
        &self,
        upgrade: bool,
        started: Instant,
        tried: &mut Tried,
    ) -> Result<(usize, InFlight), ProxyError> {
        let pool = &self.target.pool;
        if upgrade && pool.protocol.is_http2() {
            return Err(ProxyError::UpgradeUnsupported);
        }
        pool.budget.record_request(started);
        if let Some(picked) = self.affinity.follow_cookie(pool, started, tried) {
            return Ok(picked);
        }
        if pool.queue_ahead() {
            // Others wait for a slot already: this request gets in line behind them.
            return Err(ProxyError::NoBackend);
        }
        let key = self.affinity.key();
        pool.pick(started, tried, key)
            .or_else(|| pool.pick_early_trial(tried, key))
            .ok_or(ProxyError::NoBackend)
    }

    /// The request as the upstream gets it; its body watched. `Err` gives the admitted request back.
    #[allow(clippy::type_complexity)]
    fn prepare(
        self,
        req: Request<Incoming>,
        conn: &ConnInfo,
        upgrade: bool,
        started: Instant,
    ) -> Result<(Self, Outgoing, Option<Arc<BodyWatch>>), (ProxyError, Box<Self>)> {
        let how = Forwarding {
            peer: conn.peer_value.clone(),
            trusted: self.trusted,
            proto: if conn.https {
                headers::Scheme::Https
            } else {
                headers::Scheme::Http
            },
            upgrade,
            protocol: self.target.pool.protocol,
        };
        let body = BodySetup {
            count: self.log.as_ref().map(|l| Arc::clone(&l.bytes_in)),
            limit: self.target.limits.max_request_body_bytes,
            stall_timeout: self.target.limits.body_read_timeout,
            started,
        };
        match prepare(req, &how, body) {
            Ok((req, watch)) => Ok((self, req, watch)),
            Err(e) => Err((e, Box::new(self))),
        }
    }
}

/// The one retry decision, after a failed attempt: the request to send to another backend, or `None` when the
/// client gets this attempt's answer. A request that was never sent (a connect failure) goes again whatever its
/// method, outside the budget: the failing backend saw nothing. A replayable request (body-less, idempotent)
/// goes again after a 502/503/504, a timeout or a broken exchange, within the budget. A client's fault never
/// does.
fn next_try(
    pool: &Pool,
    failure: &Failure,
    unsent: Option<Outgoing>,
    copy: Option<Outgoing>,
    retries: u32,
    now: Instant,
) -> Option<Outgoing> {
    if retries >= pool.retry.max_retries {
        return None;
    }
    if unsent.is_some() {
        return unsent;
    }
    let retryable = match failure {
        Failure::Response(_) => pool.backends.len() > 1,
        Failure::Error(e) => e.may_retry(),
    };
    copy.filter(|_| retryable && pool.budget.try_retry(now, pool.retry.budget_percent))
}

/// One attempt on one backend, and what it needs to know.
struct Exchange<'a> {
    pool: &'a Pool,
    backend: &'a Arc<Backend>,
    /// The backend's connections.
    connections: &'a Arc<ConnectionPool>,
    /// The client's request body, when it has one.
    watch: Option<&'a BodyWatch>,
    /// A copy of a replayable request, for a reused connection that turns out closed.
    replay: Option<&'a Outgoing>,
    started: Instant,
    attempt_started: Instant,
    /// An upgrade (WebSocket): its exchange says nothing of the backend's latency.
    upgrade: bool,
}

impl Exchange<'_> {
    /// Sends the request. `Err` carries the failure and, when nothing was sent, the request. Only what the
    /// backend did counts against it: a failure the client caused (its body) comes back as
    /// [`ProxyError::Client`] with the backend's breaker and error counts untouched.
    async fn attempt(
        &self,
        req: Outgoing,
        in_flight: InFlight,
    ) -> Result<(Response<Incoming>, Completion), (Failure, Option<Outgoing>)> {
        let (pool, backend) = (self.pool, self.backend);
        let mut outcome = OutcomeGuard::new(pool, backend, &self.attempt_started, !self.upgrade);
        let error = match self.send(req).await {
            Some(Ok((resp, sender))) if head_size(&resp) <= pool.max_response_header_bytes => {
                let status = resp.status();
                let now = Instant::now();
                outcome.record(!status.is_server_error(), &status, now);
                let done = Completion {
                    started: self.started,
                    in_flight,
                    connection: Some(sender),
                    connections: Arc::clone(self.connections),
                    idle_cap: upstream::keep_alive_cap(resp.headers()),
                    log: None,
                    wait_left: self.wait_left(now),
                };
                if matches!(status.as_u16(), 502..=504) {
                    return Err((Failure::Response(Box::new((resp, done))), None));
                }
                return Ok((resp, done));
            }
            // Its connection goes with it: the body was not read.
            Some(Ok(_)) => ProxyError::ResponseHeadTooLarge,
            Some(Err(SendError::Connect(e, back))) => {
                let error = ProxyError::Connect(e);
                backend.metrics.count_error("connect");
                outcome.record(false, &error, Instant::now());
                log_failure(backend, &error);
                return Err((Failure::Error(error), Some(back)));
            }
            Some(Err(SendError::Sent(e) | SendError::Stale(e))) => ProxyError::Protocol(e),
            None => ProxyError::Timeout,
        };
        if let Some(fault) = self.watch.and_then(BodyWatch::fault) {
            // The client broke its body: the exchange is abandoned (the upstream connection closes), and the
            // guard releases a half-open trial without an outcome.
            drop(outcome);
            return Err((Failure::Error(ProxyError::Client(fault)), None));
        }
        if let Some(kind) = error.upstream_kind() {
            backend.metrics.count_error(kind);
        }
        outcome.record(false, &error, Instant::now());
        log_failure(backend, &error);
        Err((Failure::Error(error), None))
    }

    /// What is left of the pool's request timeout once the response head has come: the body may keep the
    /// proxy waiting that much longer in all (`timeouts.request` bounds the backend's whole exchange).
    fn wait_left(&self, now: Instant) -> Duration {
        let timeout = self.pool.timeouts.request;
        let due = self.watch.map_or(self.attempt_started + timeout, |w| {
            w.answer_due(timeout, now)
        });
        due.saturating_duration_since(now)
    }

    /// Sends on a pooled connection (once more, on a new one, when the pooled one turns out closed and the
    /// request can be replayed), within the pool's request timeout: `None` when it ran out. While the client is
    /// still sending its body, the timeout waits for it.
    async fn send(&self, req: Outgoing) -> Option<Result<(Response<Incoming>, Sender), SendError>> {
        let backend = self.backend;
        let timeouts = self.pool.timeouts;
        let connections = self.connections;
        let sending = async {
            let first =
                upstream::send(connections, req, self.attempt_started, &timeouts, false).await;
            match (first, self.replay) {
                (Err(SendError::Stale(_)), Some(copy)) => {
                    // The backend closed a kept-alive connection as the request went out: nothing was
                    // answered, so the same backend gets it again on a new connection (not a retry).
                    backend.metrics.reused_connection_retries.inc();
                    let again = copy_request(copy);
                    upstream::send(connections, again, self.attempt_started, &timeouts, true).await
                }
                (first, _) => first,
            }
        };
        let mut sending = std::pin::pin!(sending);
        let mut due = self.attempt_started + timeouts.request;
        loop {
            match tokio::time::timeout_at(due, sending.as_mut()).await {
                Ok(result) => return Some(result),
                Err(_) => {
                    let now = Instant::now();
                    match self.watch.map(|w| w.answer_due(timeouts.request, now)) {
                        Some(later) if later > now => due = later,
                        _ => return None,
                    }
                }
            }
        }
    }
}

/// The size of a response head as it came (status line, `name: value` lines, blank line), for
/// `max_response_header_bytes`: hyper checks its own limit only between reads, not within one.
fn head_size(resp: &Response<Incoming>) -> usize {
    let lines: usize = resp
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    lines + 17 + resp.status().canonical_reason().map_or(0, str::len)
}

fn log_failure(backend: &Backend, error: &ProxyError) {
    tracing::debug!(pool = %backend.pool, backend = %backend.address, error = %error,
        cause = ?std::error::Error::source(error), "upstream attempt failed");
}

/// Feeds an attempt's result to the backend's breaker exactly once; if the attempt is abandoned (the client
/// went away, or broke its body), releases the half-open trial it holds so the breaker cannot stay stuck.
struct OutcomeGuard<'a> {
    attempt: Option<(&'a Pool, &'a Arc<Backend>)>,
    /// When the attempt began, and whether its time to the response head is a latency sample (not for upgrades).
    started: &'a Instant,
    sample: bool,
    /// The attempt began with the circuit half-open, so it is the one trial the breaker let through (it was
    /// admitted just before). An attempt admitted while closed holds no trial and must not release another's.
    trial: bool,
}

impl<'a> OutcomeGuard<'a> {
    fn new(pool: &'a Pool, backend: &'a Arc<Backend>, started: &'a Instant, sample: bool) -> Self {
        Self {
            attempt: Some((pool, backend)),
            started,
            sample,
            trial: backend.breaker.state() == crate::balance::breaker::State::HalfOpen,
        }
    }

    /// Feeds the outcome, as of `now` (the caller's clock reading: it may need the same one).
    fn record(&mut self, ok: bool, what: &dyn std::fmt::Display, now: Instant) {
        if let Some((pool, backend)) = self.attempt.take() {
            let took = now.saturating_duration_since(*self.started);
            if ok {
                pool.record_success(backend, now, self.sample.then_some(took));
            } else {
                pool.record_failure(backend, what, now, took);
            }
        }
    }
}

impl Drop for OutcomeGuard<'_> {
    fn drop(&mut self) {
        if let Some((_, backend)) = self.attempt.take() {
            if self.trial {
                backend.breaker.cancel_trial();
            }
        }
    }
}

/// Passes an upstream response on to the client.
fn pass_on(
    resp: Response<Incoming>,
    mut done: Completion,
    log: Option<Box<Pending>>,
    attempts: u32,
    request_timeout: Duration,
) -> Response<ProxyBody> {
    let (mut parts, body) = resp.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers);
    record::upstream_answered(&mut done, parts.status, log, attempts);
    let wait = if is_stream(&parts.headers) {
        BodyWait::EachSilence(request_timeout)
    } else {
        BodyWait::InAll(done.wait_left)
    };
    Response::from_parts(parts, ProxyBody::upstream(body, done, wait))
}

/// A response that is a stream by its nature (gRPC, server-sent events) may run for as long as it keeps
/// talking: for it, `timeouts.request` bounds each silence, not the whole exchange.
fn is_stream(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .map(HeaderValue::as_bytes)
        .is_some_and(|t| {
            let t = t.trim_ascii_start();
            starts_with_ignore_case(t, b"application/grpc")
                || starts_with_ignore_case(t, b"text/event-stream")
        })
}

fn starts_with_ignore_case(value: &[u8], prefix: &[u8]) -> bool {
    value.len() >= prefix.len() && value[..prefix.len()].eq_ignore_ascii_case(prefix)
}

/// The start of a request's access log line.
fn pending(
    log: &Arc<AccessLog>,
    req: &Request<Incoming>,
    peer: SocketAddr,
    id: Option<&request_id::Identity>,
) -> Pending {
    Pending {
        request_id: id
            .map(|i| String::from_utf8_lossy(i.id.as_bytes()).into_owned())
            .unwrap_or_default(),
        trace_id: id.and_then(|i| i.trace_id.clone()).unwrap_or_default(),
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
        reason: "",
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

/// A short plain-text response.
pub(crate) fn plain(status: StatusCode, text: &'static str) -> Response<ProxyBody> {
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
    //! TLS and HTTP/2 handshakes) and the outgoing request are boxed for that reason, the phases before the
    //! first attempt run before the future is made (1.8 KiB in all, 3.2 KiB once), and the future is
    //! `forward`'s own, with no wrapper around it (the listener's handler added 360 bytes and a copy);
    //! these bounds catch them coming back inline.
    use super::*;

    fn size<'a, F: std::future::Future>(
        _: impl Fn(&'a Arc<Proxy>, Request<Incoming>, ConnInfo) -> F,
    ) -> usize {
        std::mem::size_of::<F>()
    }

    fn size5<A, B, C, D, E, F: std::future::Future>(_: impl Fn(A, B, C, D, E) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    #[test]
    fn request_futures_stay_small() {
        let (handle, send) = (size(Proxy::handle), size5(upstream::send));
        eprintln!("handle {handle}");
        assert!(handle <= 1920, "Proxy::handle's future is {handle} bytes");
        assert!(send <= 640, "upstream::send's future is {send} bytes");
    }
}

#[cfg(test)]
mod outcome_guard {
    use super::*;
    use crate::config::{BackendSettings, PoolSettings};

    #[tokio::test(start_paused = true)]
    async fn an_attempt_admitted_while_closed_never_releases_anothers_trial() {
        let settings = PoolSettings {
            algorithm: crate::config::Algorithm::RoundRobin,
            backends: vec![BackendSettings {
                address: "127.0.0.1:9".to_owned(),
                weight: 1,
                source: Default::default(),
            }],
            timeouts: crate::config::Timeouts {
                connect: Duration::from_secs(1),
                request: Duration::from_secs(1),
                idle: Duration::from_secs(1),
            },
            health_check: None,
            breaker: Default::default(),
            retry: Default::default(),
            panic_threshold: 0.0,
            max_response_header_bytes: 8192,
            protocol: Default::default(),
            tls: None,
            discovery: None,
            peak_ewma: Default::default(),
            slow_start: None,
            hash: Default::default(),
            sticky: None,
            outlier_detection: None,
            queue: None,
        };
        let pool = Pool::new("p", &settings, &Metrics::new(), None);
        let backend = &pool.backends[0];
        let started = Instant::now();
        // Admitted while closed: holds no trial.
        let guard = OutcomeGuard::new(&pool, backend, &started, true);
        for _ in 0..5 {
            backend.breaker.on_failure(Instant::now(), "500");
        }
        tokio::time::advance(Duration::from_secs(31)).await;
        assert!(
            backend.admit(Instant::now()),
            "another request takes the half-open trial"
        );
        drop(guard);
        assert!(
            !backend.breaker.would_admit(Instant::now()),
            "the other request's trial is still in flight"
        );
        // The trial holder abandoning its attempt does release it.
        let trial = OutcomeGuard::new(&pool, backend, &started, true);
        drop(trial);
        assert!(backend.breaker.would_admit(Instant::now()));
    }
}
