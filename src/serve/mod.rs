//! Listeners: bind, accept, serve HTTP/1.1 (and HTTP/2 with prior knowledge or by ALPN over TLS) on each client
//! connection with its timeouts and framing checks, count connections, drain.
//!
//! A listener serves whatever handler it is given: the proxy's for proxy listeners, the admin API's for the admin
//! listener. It reads the `[limits]` of the current snapshot once per connection.

pub mod conn;
mod drain;
mod framing;
mod handover;
mod spread;
#[cfg(test)]
mod stop_tests;
mod streams;
mod version;

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use prometheus::IntGauge;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::config::Limits;
use crate::observe::metrics::Metrics;
use crate::proxy::{ConnInfo, Proxy, ProxyBody};
use crate::socket::Tcp;
pub(crate) use crate::tls::ListenerMode;
use crate::tls::ListenerTls;
use conn::{ConnClock, GuardedBody, ReadTimeout, TimedIo, WriteStalled};
pub use drain::{Drain, DrainWatch};
use spread::{Held, Spread};
pub use version::serve_http;
use version::{Unsniffed, sniff};

/// A listener that could not be bound or set up.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {address} ({field}): {source}")]
pub struct BindError {
    pub(crate) address: SocketAddr,
    pub(crate) field: String,
    #[source]
    pub(crate) source: io::Error,
}

/// Binds a listening socket; with `reuse_port`, other processes (a newer switchyard) may bind the same address
/// and the kernel spreads new connections over all of them.
pub(crate) async fn bind(
    address: SocketAddr,
    field: &str,
    reuse_port: bool,
) -> Result<TcpListener, BindError> {
    let error = |source| BindError {
        address,
        field: field.to_owned(),
        source,
    };
    if !reuse_port {
        return TcpListener::bind(address).await.map_err(error);
    }
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(address),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )
    .map_err(error)?;
    socket.set_reuse_address(true).map_err(error)?;
    socket.set_reuse_port(true).map_err(error)?;
    socket.set_nonblocking(true).map_err(error)?;
    socket.bind(&address.into()).map_err(error)?;
    socket.listen(BACKLOG as i32).map_err(error)?;
    TcpListener::from_std(socket.into()).map_err(error)
}

/// One listener's accept loop, and the lever to stop it.
pub(crate) struct ListenerTask {
    /// The address as configured (port 0 stays 0): what reloads compare.
    pub(crate) configured: SocketAddr,
    pub(crate) bound: SocketAddr,
    stop: watch::Sender<Option<Duration>>,
    tasks: Vec<JoinHandle<()>>,
}

impl ListenerTask {
    /// A proxy listener: the proxy's handler, with its snapshot's `[limits]`, on every worker runtime.
    pub(crate) fn proxy(
        configured: SocketAddr,
        tcp: TcpListener,
        proxy: &Arc<Proxy>,
        workers: &[tokio::runtime::Handle],
    ) -> Result<Self, BindError> {
        let limits_from = Arc::clone(proxy);
        let proxy = Arc::clone(proxy);
        let handler = move |req: Request<Incoming>, conn: ConnInfo| proxy.handle(req, conn);
        Self::spawn(
            configured,
            tcp,
            ModeSource::Published(configured),
            Some(limits_from),
            handler,
            "proxy",
            workers,
        )
    }

    /// Starts accepting on `tcp` with `handler` (on each of `workers`, or on the current runtime), under the
    /// limits and connection count of `limits_from`'s snapshot and metrics (none for the admin listener).
    pub(crate) fn spawn<H, F>(
        configured: SocketAddr,
        tcp: TcpListener,
        mode: ModeSource,
        limits_from: Option<Arc<Proxy>>,
        handler: H,
        kind: &'static str,
        workers: &[tokio::runtime::Handle],
    ) -> Result<Self, BindError>
    where
        H: Fn(Request<Incoming>, ConnInfo) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = Response<ProxyBody>> + Send + 'static,
    {
        let bound = tcp.local_addr().map_err(|source| BindError {
            address: configured,
            field: format!("{kind} listener"),
            source,
        })?;
        tracing::info!(addr = %bound, "{kind} listener ready");
        let (stop, stopped) = watch::channel(None);
        let bind_error = |source| BindError {
            address: configured,
            field: format!("{kind} listener"),
            source,
        };
        let tasks = if workers.is_empty() {
            let accept = Acceptor {
                mode,
                limits_from,
                handler,
                spread: None,
                last_mode: None,
            };
            vec![tokio::spawn(accept.run(tcp, stopped))]
        } else {
            // One socket, one accept loop on each worker runtime: the kernel hands each connection to one, and
            // the spread keeps their counts even.
            let socket = tcp.into_std().map_err(bind_error)?;
            let spread = (workers.len() > 1).then(|| Spread::new(workers.len()));
            let mut tasks = Vec::new();
            for (me, worker) in workers.iter().enumerate() {
                let socket = socket.try_clone().map_err(bind_error)?;
                let stopped = stopped.clone();
                let accept = Acceptor {
                    mode: mode.clone(),
                    limits_from: limits_from.clone(),
                    handler: handler.clone(),
                    spread: spread.clone().map(|s| (s, me)),
                    last_mode: None,
                };
                tasks.push(worker.spawn(async move {
                    match TcpListener::from_std(socket) {
                        Ok(listener) => accept.run(listener, stopped).await,
                        Err(e) => {
                            if let Some((spread, me)) = &accept.spread {
                                spread.leave(*me);
                            }
                            tracing::error!(error = %e, "a worker cannot accept on {bound}");
                        }
                    }
                }));
            }
            tasks
        };
        Ok(Self {
            configured,
            bound,
            stop,
            tasks,
        })
    }

    /// Stops accepting and drains the connections (idle ones close at once) for up to `drain`.
    pub(crate) fn stop(self, drain: Duration) -> JoinHandle<()> {
        let _ = self.stop.send(Some(drain));
        let tasks = self.tasks;
        tokio::spawn(async move {
            for t in tasks {
                let _ = t.await;
            }
        })
    }
}

/// Decrements the open-connections gauge when a connection task ends, however it ends.
struct ConnectionCount(Option<IntGauge>);

impl Drop for ConnectionCount {
    fn drop(&mut self) {
        if let Some(g) = &self.0 {
            g.dec();
        }
    }
}

/// Which HTTP versions a connection may speak.
#[derive(Clone, Copy)]
#[doc(hidden)]
pub enum Versions {
    /// Plain TCP: HTTP/1.1, or HTTP/2 with prior knowledge (told apart by the preface).
    Any,
    Http1,
    Http2,
}

/// Where a listener finds what it speaks.
#[derive(Clone)]
pub(crate) enum ModeSource {
    /// Always the same (the admin listener).
    Fixed(Arc<ListenerMode>),
    /// The mode published for this configured address in the current snapshot (proxy listeners): a reload
    /// changes it in the same store as everything else.
    Published(SocketAddr),
}

/// A listener's accept loop: what it serves and with which limits.
struct Acceptor<H> {
    mode: ModeSource,
    /// The proxy whose snapshot's `[limits]` and connection count apply (proxy listeners); `None` for the admin
    /// listener.
    limits_from: Option<Arc<Proxy>>,
    handler: H,
    /// With several workers: this worker's place among them.
    spread: Option<(Arc<Spread>, usize)>,
    /// The mode this listener last served with (published modes): what a connection accepted after a reload
    /// removed the listener, before its accept loop stopped, is served with.
    last_mode: Option<Arc<ListenerMode>>,
}

impl<H, F> Acceptor<H>
where
    H: Fn(Request<Incoming>, ConnInfo) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<ProxyBody>> + Send + 'static,
{
    /// Accepts and serves connections until stopped, then drains them.
    async fn run(mut self, listener: TcpListener, mut stop: watch::Receiver<Option<Duration>>) {
        let graceful = Drain::new();
        if let (ModeSource::Published(configured), Some(proxy)) = (&self.mode, &self.limits_from) {
            self.last_mode = proxy.snapshot.load().listener(*configured).cloned();
        }
        // A descriptor held in reserve: out of descriptors, it is given up for a moment to take a waiting
        // connection and close it, so the client sees a close instead of hanging in the backlog.
        let mut spare = open_spare();
        let mut warned: Option<tokio::time::Instant> = None;
        let drain = loop {
            let accepted = tokio::select! {
                biased;
                stopped = stop.wait_for(Option::is_some) => {
                    break stopped.ok().and_then(|d| *d).unwrap_or(Duration::ZERO);
                }
                accepted = self.accept(&listener) => accepted,
            };
            match accepted {
                Ok((tcp, peer)) => self.serve(tcp, peer, &graceful),
                Err(e) => {
                    let out_of_files =
                        matches!(e.raw_os_error(), Some(code) if code == EMFILE || code == ENFILE);
                    let shed = if out_of_files {
                        shed_waiting(&listener, &mut spare)
                    } else {
                        0
                    };
                    if shed > 0 {
                        if let Some(p) = &self.limits_from {
                            for _ in 0..shed {
                                p.metrics.reject("out_of_file_descriptors");
                            }
                        }
                    }
                    // Once a second at most: a flood must not become a flood of log lines.
                    let now = tokio::time::Instant::now();
                    if warned.is_none_or(|at| now.duration_since(at) >= Duration::from_secs(1)) {
                        warned = Some(now);
                        if out_of_files {
                            tracing::warn!(error = %e, closed = shed,
                                "accept failed: out of file descriptors; closing waiting connections until some are free");
                        } else {
                            tracing::warn!(error = %e, "accept failed");
                        }
                    }
                    // Back off a little instead of spinning.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        };
        self.serve_the_queued(listener, &graceful).await;
        if let Some((spread, me)) = &self.spread {
            spread.leave(*me);
        }
        if tokio::time::timeout(drain, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!(?drain, "drain time over with connections still open");
        }
    }

    /// Serves the connections the kernel has already queued on the socket, then lets it go. Closing a socket with
    /// connections in its queue resets them; with `reuse_port` these are the last ones the kernel gave this
    /// process before a newer one took over, and new ones are handed over first (see `handover`). Without it,
    /// handshakes go on completing while the socket is open, so the sweep takes at most a backlog's worth.
    async fn serve_the_queued(&mut self, listener: TcpListener, graceful: &Drain) {
        if let Err(e) = handover::stop_taking_handshakes(&listener) {
            tracing::warn!(error = %e, "cannot hand new connections over to the other sockets on this address");
        }
        // Taken straight from the socket: the reactor's readiness may not have seen them yet.
        let Ok(listener) = listener.into_std() else {
            return;
        };
        for taken in 1..=BACKLOG {
            match listener.accept() {
                Ok((tcp, peer)) => {
                    let tcp = tcp
                        .set_nonblocking(true)
                        .and_then(|()| TcpStream::from_std(tcp));
                    if let Ok(tcp) = tcp {
                        self.serve(tcp, peer, graceful);
                    }
                }
                // One connection that failed before it was taken: the next may be fine.
                Err(e) if accept_skips(&e) => {}
                Err(_) => break,
            }
            if taken % 64 == 0 {
                tokio::task::yield_now().await;
            }
        }
    }

    /// The next connection, once it is this worker's turn.
    async fn accept(&self, listener: &TcpListener) -> io::Result<(TcpStream, SocketAddr)> {
        if let Some((spread, me)) = &self.spread {
            spread.my_turn(*me).await;
        }
        listener.accept().await
    }

    fn serve(&mut self, mut tcp: TcpStream, peer: SocketAddr, graceful: &Drain) {
        // One snapshot load for the connection's limits and mode.
        let snapshot = self.limits_from.as_ref().map(|p| p.snapshot.load_full());
        let mode = match &self.mode {
            ModeSource::Fixed(mode) => Arc::clone(mode),
            ModeSource::Published(configured) => {
                match snapshot.as_ref().and_then(|s| s.listener(*configured)) {
                    Some(mode) => {
                        if !self
                            .last_mode
                            .as_ref()
                            .is_some_and(|m| Arc::ptr_eq(m, mode))
                        {
                            self.last_mode = Some(Arc::clone(mode));
                        }
                        Arc::clone(mode)
                    }
                    // The listener left the config and is about to stop accepting: a connection the kernel
                    // already gave it arrived while it was configured, and is served as it would have been.
                    None => match &self.last_mode {
                        Some(mode) => Arc::clone(mode),
                        None => return,
                    },
                }
            }
        };
        let limits = self
            .limits_from
            .as_ref()
            .zip(snapshot.as_ref())
            .map(|(p, s)| (s.limits, &p.metrics));
        let gauge = match limits {
            Some((limits, metrics)) => {
                let open = &metrics.open_connections;
                if open.get() >= limits.max_connections as i64 {
                    // Over the cap: closed at once; the connections already open are not touched.
                    metrics.reject("max_connections");
                    drop(tcp);
                    return;
                }
                open.inc();
                Some(open.clone())
            }
            None => None,
        };
        let _ = tcp.set_nodelay(true);
        let count = ConnectionCount(gauge);
        let held: Option<Held> = self.spread.as_ref().map(|(s, me)| s.hold(*me));
        let info = ConnInfo {
            peer,
            peer_value: crate::proxy::headers::peer_value(peer.ip()),
            https: matches!(*mode, ListenerMode::Tls(_)),
            redirect_https: matches!(*mode, ListenerMode::Redirect),
        };
        let handler = self.handler.clone();
        let metrics = limits.map(|(_, m)| Arc::clone(m));
        let limits = limits.map(|(l, _)| l);
        let mut watcher = graceful.watcher();
        let timing = limits.unwrap_or_default();
        let clock = ConnClock::new(timing.header_read_timeout, timing.idle_timeout);
        let driving = Arc::clone(&clock);
        // Boxed, and the task a bare `poll_fn`: an `async` task pinning it would store it twice (once captured,
        // once pinned), ~3 KiB more per idle connection (`benches/e2e.sh`: 15.5 -> 20.5 KiB).
        let mut served = Box::pin(async move {
            let requests = Arc::clone(&clock);
            let counted = metrics.clone();
            let service = service_fn(move |req| {
                let guard = requests.request_started();
                let fut = if guard.ambiguous_framing() {
                    if let Some(metrics) = &counted {
                        metrics.reject("malformed");
                    }
                    drop(req);
                    None
                } else {
                    // Boxed once here: the request's future is a few KiB, and hyper moves it several times.
                    Some(Box::pin(handler(req, info.clone())))
                };
                let clock = Arc::clone(&requests);
                async move {
                    let resp = match fut {
                        Some(fut) => fut.await,
                        None => ambiguous_framing(),
                    };
                    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
                        // The socket now carries a tunnel, with its own idle timeout.
                        clock.upgraded();
                    }
                    Ok::<_, Infallible>(resp.map(|inner| GuardedBody::new(inner, guard)))
                }
            });
            let served = match mode.tls() {
                None => match sniff(&mut tcp, &timing, &mut watcher).await {
                    Ok((versions, first)) => {
                        let io = TimedIo::new(Tcp::with_first(tcp, first), clock);
                        serve_http(io, versions, service, limits.as_ref(), watcher).await
                    }
                    Err(Unsniffed::HeaderTimeout) => Err(ReadTimeout { header: true }.into()),
                    Err(Unsniffed::Closed) => Ok(()),
                },
                // Boxed: a TLS stream is large, and a plain connection's task should not carry its space.
                Some(tls) => {
                    Box::pin(serve_tls(
                        tcp,
                        Arc::clone(tls),
                        clock,
                        service,
                        limits,
                        watcher,
                        metrics.as_ref(),
                        peer,
                    ))
                    .await
                }
            };
            finish(served, peer, metrics, count);
            drop(held);
        });
        let mut idle = None;
        tokio::spawn(std::future::poll_fn(move |cx| {
            driving.drive(served.as_mut(), &mut idle, cx)
        }));
    }
}

/// Completes a client's TLS handshake (within `limits.header_read_timeout`), then serves HTTP over it. A failed
/// handshake is counted by reason, not logged above debug.
#[allow(clippy::too_many_arguments)]
async fn serve_tls<S>(
    tcp: TcpStream,
    tls: Arc<ListenerTls>,
    clock: Arc<ConnClock>,
    service: S,
    limits: Option<Limits>,
    watcher: DrainWatch,
    metrics: Option<&Arc<Metrics>>,
    peer: SocketAddr,
) -> Result<(), BoxError>
where
    S: ClientService,
{
    let timeout = limits.unwrap_or_default().header_read_timeout;
    let acceptor = TlsAcceptor::from(Arc::clone(&tls.server_config));
    let failure = match tokio::time::timeout(timeout, acceptor.accept(Tcp::new(tcp))).await {
        Ok(Ok(stream)) => {
            let versions = match stream.get_ref().1.alpn_protocol() {
                Some(b"h2") => Versions::Http2,
                Some(_) => Versions::Http1,
                None => Versions::Any,
            };
            let io = TimedIo::new(stream, clock);
            return serve_http(io, versions, service, limits.as_ref(), watcher).await;
        }
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            crate::tls::handshake_error_reason(&e)
        }
        Err(_) => "timeout",
    };
    if let Some(metrics) = metrics {
        metrics
            .tls_handshake_errors_total
            .with_label_values(&[failure])
            .inc();
    }
    Ok(())
}

fn finish(
    served: Result<(), BoxError>,
    peer: SocketAddr,
    metrics: Option<Arc<Metrics>>,
    count: ConnectionCount,
) {
    if let Err(e) = served {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
        if let (Some(metrics), Some(reason)) = (metrics, rejection(&*e)) {
            metrics.reject(reason);
        }
    }
    drop(count);
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The answer to a request whose framing other hops could read differently; the connection closes after it.
fn ambiguous_framing() -> Response<ProxyBody> {
    let mut resp = crate::proxy::plain(
        StatusCode::BAD_REQUEST,
        "switchyard: ambiguous request framing (Content-Length with Transfer-Encoding, or Content-Length twice)\n",
    );
    resp.headers_mut().insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("close"),
    );
    resp
}

/// The service one client connection runs: each request to a guarded response.
#[doc(hidden)]
pub trait ClientService:
    hyper::service::Service<
        Request<Incoming>,
        Response = Response<GuardedBody<ProxyBody>>,
        Error = Infallible,
        Future: Send + 'static,
    > + Send
    + 'static
{
}

impl<S> ClientService for S where
    S: hyper::service::Service<
            Request<Incoming>,
            Response = Response<GuardedBody<ProxyBody>>,
            Error = Infallible,
            Future: Send + 'static,
        > + Send
        + 'static
{
}

/// The `reason` label for a connection that hyper ended because of the client.
fn rejection(error: &(dyn std::error::Error + 'static)) -> Option<&'static str> {
    let mut source = Some(error);
    while let Some(e) = source {
        if let Some(timeout) = e.downcast_ref::<ReadTimeout>() {
            // An idle keep-alive connection closing is routine, not a refusal.
            return timeout.header.then_some("header_timeout");
        }
        if e.is::<WriteStalled>() {
            return Some("client_stalled");
        }
        if let Some(io) = e.downcast_ref::<io::Error>() {
            if let Some(timeout) = io.get_ref().and_then(|i| i.downcast_ref::<ReadTimeout>()) {
                return timeout.header.then_some("header_timeout");
            }
            // h2 keeps only an I/O error's kind and text, so over HTTP/2 the type is gone: the text tells.
            if io.get_ref().is_some_and(|i| i.is::<WriteStalled>())
                || (io.kind() == io::ErrorKind::TimedOut
                    && io.to_string() == WriteStalled.to_string())
            {
                return Some("client_stalled");
            }
        }
        source = e.source();
    }
    let e = error.downcast_ref::<hyper::Error>()?;
    if e.is_parse_too_large() {
        Some("header_too_large")
    } else if e.is_timeout() {
        Some("header_timeout")
    } else if e.is_parse() {
        Some("malformed")
    } else {
        None
    }
}

/// The length of a listening socket's queue of connections not yet accepted.
const BACKLOG: u32 = 4096;

/// Errors `accept` reports for one connection that failed before it was taken (Linux passes pending network
/// errors this way), after which the next `accept` may succeed.
fn accept_skips(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    ) || matches!(
        e.raw_os_error(),
        Some(EPROTO | ENETDOWN | EHOSTUNREACH | ENETUNREACH)
    )
}

/// Linux's numbers for the network errors `accept` may pass on from a connection.
const EPROTO: i32 = 71;
const ENETDOWN: i32 = 100;
const ENETUNREACH: i32 = 101;
const EHOSTUNREACH: i32 = 113;

/// `EMFILE` and `ENFILE` on Linux (and the BSDs): the process's or the system's descriptors are all in use.
const EMFILE: i32 = 24;
const ENFILE: i32 = 23;

fn open_spare() -> Option<std::fs::File> {
    std::fs::File::open("/dev/null").ok()
}

/// Out of descriptors: frees the spare, takes the connections already waiting in the backlog and closes each at
/// once, then takes the spare back. Returns how many were closed (at most 64 per call).
fn shed_waiting(listener: &TcpListener, spare: &mut Option<std::fs::File>) -> usize {
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    let mut closed = 0;
    *spare = None;
    while closed < 64 {
        match listener.poll_accept(&mut cx) {
            std::task::Poll::Ready(Ok((tcp, _))) => {
                drop(tcp);
                closed += 1;
            }
            _ => break,
        }
    }
    *spare = open_spare();
    closed
}
