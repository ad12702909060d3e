//! Upstream connections, opened with hyper's low-level `client::conn`: for HTTP/1.1 (`http1`, `https`)
//! keep-alive connections kept idle in the backend's own small stack and reused most-recent first; for HTTP/2
//! (`h2c`, `h2`) one shared, multiplexed connection per backend and worker runtime.
//!
//! Owning the pool (instead of hyper-util's legacy client) lets the proxy tell "could not connect" (nothing was
//! sent: safe to retry for any method) from "sent, then failed", take a request back when a pooled connection
//! turns out closed, and count every connection it opens.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::Request;
use hyper::body::Incoming;
use hyper::client::conn::{TrySendError, http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use prometheus::IntCounter;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;

pub(crate) mod request_body;

use crate::config::MAX_RESPONSE_HEADER_BYTES;
use crate::config::{Protocol, Timeouts};
use crate::socket::Tcp;
use crate::tls::UpstreamTlsSettings;
pub(crate) use request_body::RequestBody;

/// Idle connections kept per backend; more are closed when their response ends.
const MAX_IDLE: usize = 256;

/// A connection's request handle.
pub(crate) enum Sender {
    H1(http1::SendRequest<RequestBody>),
    H2(http2::SendRequest<RequestBody>),
}

impl Sender {
    fn usable(&self) -> bool {
        match self {
            Self::H1(s) => s.is_ready() && !s.is_closed(),
            Self::H2(s) => s.is_ready() && !s.is_closed(),
        }
    }

    fn is_closed(&self) -> bool {
        match self {
            Self::H1(s) => s.is_closed(),
            Self::H2(s) => s.is_closed(),
        }
    }

    /// Sends a request; a request that was never written comes back with the error.
    pub(crate) async fn try_send(
        &mut self,
        req: Outgoing,
    ) -> Result<http::Response<Incoming>, (hyper::Error, Option<Outgoing>)> {
        let sent = match self {
            Self::H1(s) => s.try_send_request(*req).await,
            Self::H2(s) => s.try_send_request(*req).await,
        };
        sent.map_err(|mut e: TrySendError<Request<RequestBody>>| {
            let back = e.take_message().map(Box::new);
            (e.into_error(), back)
        })
    }
}

/// How a pool reaches its backends: the protocol, and for `https`/`h2` the TLS client settings.
#[derive(Clone)]
pub(crate) struct UpstreamKind {
    pub(crate) protocol: Protocol,
    pub(crate) tls_settings: Option<UpstreamTlsSettings>,
    /// Built once per pool; `None` for plain protocols (or when the CA file could not be read, logged).
    pub(crate) connector: Option<TlsConnector>,
}

impl UpstreamKind {
    /// The kind for a pool's settings; reads the CA file for TLS protocols.
    pub(crate) fn new(protocol: Protocol, tls: Option<&UpstreamTlsSettings>) -> Self {
        let connector = protocol.is_tls().then(|| {
            let alpn: &[&[u8]] = if protocol.is_http2() {
                &[b"h2"]
            } else {
                &[b"http/1.1"]
            };
            let settings = tls.cloned().unwrap_or_default();
            match crate::tls::client_config(&settings, alpn) {
                Ok(c) => Some(TlsConnector::from(c)),
                Err(e) => {
                    tracing::error!(error = %e, "cannot set up TLS to upstreams; connections will fail");
                    None
                }
            }
        });
        Self {
            protocol,
            tls_settings: protocol.is_tls().then(|| tls.cloned().unwrap_or_default()),
            connector: connector.flatten(),
        }
    }

    /// Was this kind built from these settings?
    pub(crate) fn built_from(&self, protocol: Protocol, tls: Option<&UpstreamTlsSettings>) -> bool {
        let tls = protocol.is_tls().then(|| tls.cloned().unwrap_or_default());
        self.protocol == protocol && self.tls_settings == tls
    }
}

struct Idle {
    sender: Sender,
    since: Instant,
    /// How long the backend said it keeps the connection (`Keep-Alive: timeout=N`, less a margin).
    cap: Duration,
}

/// One pool's upstream connections: a [`ConnectionPool`] per backend, in the order of the pool's backends, and
/// the protocol and TLS client they share.
pub(crate) struct PoolConnections {
    pub(crate) kind: UpstreamKind,
    backends: Box<[Arc<ConnectionPool>]>,
}

impl PoolConnections {
    /// The connections for `backends` (address, and the counter of connections opened to it) reached as
    /// `protocol` with `tls`. What `previous` had is kept when the protocol and TLS settings stay: the TLS
    /// client (no CA file or system roots read again), and each address's idle connections.
    pub(crate) fn new<'a>(
        protocol: Protocol,
        tls: Option<&UpstreamTlsSettings>,
        max_response_header_bytes: usize,
        backends: impl Iterator<Item = (&'a str, IntCounter)>,
        previous: Option<&PoolConnections>,
    ) -> Self {
        let previous = previous.filter(|p| p.kind.built_from(protocol, tls));
        let kind = match previous {
            Some(p) => p.kind.clone(),
            None => UpstreamKind::new(protocol, tls),
        };
        let kept: HashMap<&str, &Arc<ConnectionPool>> = previous
            .map(|p| p.backends.iter().map(|c| (c.address.as_str(), c)).collect())
            .unwrap_or_default();
        let backends = backends
            .map(|(address, opened)| {
                let kept = kept.get(address);
                let c = match kept {
                    Some(c) => Arc::clone(c),
                    None => Arc::new(ConnectionPool::new(address, opened, kind.clone())),
                };
                // New connections from now on; open ones keep the buffer they have.
                c.read_buffer.store(
                    read_buffer_for(max_response_header_bytes),
                    Ordering::Relaxed,
                );
                c
            })
            .collect();
        Self { kind, backends }
    }

    /// The connections of the pool's backend number `i`.
    #[inline]
    pub(crate) fn get(&self, i: usize) -> Option<&Arc<ConnectionPool>> {
        self.backends.get(i)
    }
}

/// How many runtimes serve requests (set once at start by the binary; 1 otherwise), and which one this thread
/// belongs to: each keeps its own idle connections, so a connection's I/O stays on the thread that uses it.
static RUNTIMES: AtomicUsize = AtomicUsize::new(1);

thread_local! {
    static RUNTIME_INDEX: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Declares how many runtimes serve requests (before any pool is built).
pub(crate) fn set_runtime_count(n: usize) {
    RUNTIMES.store(n.max(1), Ordering::Relaxed);
}

/// Marks the current thread as the runtime with this index (0: the control runtime).
pub(crate) fn set_runtime_index(i: usize) {
    RUNTIME_INDEX.with(|c| c.set(i));
}

/// One backend's connections.
pub(crate) struct ConnectionPool {
    address: String,
    resolved: Option<SocketAddr>,
    pub(crate) kind: UpstreamKind,
    server_name: Option<ServerName<'static>>,
    /// HTTP/1.1: idle connections. HTTP/2: at most one, the shared connection (never taken out).
    idle: Box<[Mutex<Vec<Idle>>]>,
    /// HTTP/2: one connection attempt at a time per backend, so a burst of requests shares one connection
    /// instead of each opening its own. Taken only when there is no usable shared connection.
    connecting: tokio::sync::Mutex<()>,
    opened: IntCounter,
    /// The most an HTTP/1.1 connection's read buffer may hold: the pool's `max_response_header_bytes` and a
    /// margin. It also bounds each piece of a response body (a piece is what one read brought), and so what a
    /// slow client holds up: hyper keeps a few pieces in flight.
    read_buffer: AtomicUsize,
}

impl ConnectionPool {
    pub(crate) fn new(address: &str, opened: IntCounter, kind: UpstreamKind) -> Self {
        let server_name = kind
            .tls_settings
            .as_ref()
            .and_then(|t| crate::tls::server_name(t.server_name.as_deref(), address));
        Self {
            address: address.to_owned(),
            resolved: address.parse().ok(),
            kind,
            server_name,
            idle: (0..RUNTIMES.load(Ordering::Relaxed))
                .map(|_| Mutex::new(Vec::new()))
                .collect(),
            connecting: tokio::sync::Mutex::new(()),
            opened,
            read_buffer: AtomicUsize::new(read_buffer_for(MAX_RESPONSE_HEADER_BYTES)),
        }
    }

    fn read_buffer(&self) -> usize {
        self.read_buffer.load(Ordering::Relaxed)
    }

    pub(crate) fn protocol(&self) -> Protocol {
        self.kind.protocol
    }

    /// This thread's idle list.
    fn idle(&self) -> &Mutex<Vec<Idle>> {
        let i = RUNTIME_INDEX.with(std::cell::Cell::get);
        &self.idle[i % self.idle.len()]
    }

    /// The most recently used idle connection that is still open and ready, and idle for less than `max_idle`
    /// (and what the backend allows), if any.
    pub(crate) fn checkout(&self, now: Instant, max_idle: Duration) -> Option<Sender> {
        let mut idle = self.idle().lock().unwrap_or_else(|p| p.into_inner());
        if self.kind.protocol.is_http2() {
            while let Some(c) = idle.last() {
                match &c.sender {
                    Sender::H2(s) if c.sender.usable() => return Some(Sender::H2(s.clone())),
                    _ => {
                        idle.pop();
                    }
                }
            }
            return None;
        }
        while let Some(c) = idle.pop() {
            if c.sender.usable() && now.saturating_duration_since(c.since) < max_idle.min(c.cap) {
                return Some(c.sender);
            }
        }
        None
    }

    /// Returns a connection whose response has ended; `cap` is how long the backend keeps it open.
    pub(crate) fn checkin(&self, sender: Sender, now: Instant, cap: Duration) {
        if sender.is_closed() || matches!(sender, Sender::H2(_)) || cap.is_zero() {
            return;
        }
        let mut idle = self.idle().lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < MAX_IDLE {
            idle.push(Idle {
                sender,
                since: now,
                cap,
            });
        }
    }

    /// Opens a new connection within `timeout` (for HTTP/2, it becomes the shared one).
    pub(crate) async fn connect(&self, timeout: Duration) -> io::Result<Sender> {
        let sender = self.open(timeout).await?;
        self.opened.inc();
        if let Sender::H2(s) = &sender {
            let mut idle = self.idle().lock().unwrap_or_else(|p| p.into_inner());
            idle.clear();
            idle.push(Idle {
                sender: Sender::H2(s.clone()),
                since: Instant::now(),
                cap: Duration::MAX,
            });
        }
        Ok(sender)
    }

    /// Opens a connection of its own (health checks), not counted and not shared.
    pub(crate) async fn open(&self, timeout: Duration) -> io::Result<Sender> {
        let connecting = async {
            let tcp = match self.resolved {
                Some(addr) => TcpStream::connect(addr).await?,
                None => TcpStream::connect(self.address.as_str()).await?,
            };
            let _ = tcp.set_nodelay(true);
            if !self.kind.protocol.is_tls() {
                return handshake(Tcp::new(tcp), self.kind.protocol, self.read_buffer()).await;
            }
            let (Some(connector), Some(name)) = (&self.kind.connector, &self.server_name) else {
                return Err(io::Error::other(
                    "no TLS client settings for this pool (see the error logged at load)",
                ));
            };
            let tls = connector.connect(name.clone(), Tcp::new(tcp)).await?;
            handshake(tls, self.kind.protocol, self.read_buffer()).await
        };
        match tokio::time::timeout(timeout, connecting).await {
            Ok(result) => result,
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "connect timed out after {}",
                    humantime::format_duration(timeout)
                ),
            )),
        }
    }
}

/// The read buffer for a pool whose response heads may take `max_response_header_bytes`.
pub(crate) fn read_buffer_for(max_response_header_bytes: usize) -> usize {
    max_response_header_bytes + 16 * 1024
}

/// Speaks HTTP/1.1 or HTTP/2 over an open connection; the connection's I/O runs in its own task.
async fn handshake<T>(io: T, protocol: Protocol, read_buffer: usize) -> io::Result<Sender>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(io);
    if protocol.is_http2() {
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake::<_, RequestBody>(io)
            .await
            .map_err(io::Error::other)?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream HTTP/2 connection ended with an error");
            }
        });
        Ok(Sender::H2(sender))
    } else {
        // `max_response_header_bytes` is checked on each response; this bounds the read buffer (at least
        // hyper's minimum of 8 KiB).
        let (sender, conn) = http1::Builder::new()
            .max_buf_size(read_buffer.max(8192))
            .handshake::<_, RequestBody>(io)
            .await
            .map_err(io::Error::other)?;
        tokio::spawn(async move {
            // Upgrades (WebSocket) take the connection over after a 101.
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        });
        Ok(Sender::H1(sender))
    }
}

/// A request on its way to a backend. Boxed: it passes through several nested futures (retries, timeout,
/// pool, connection) and stays one pointer in each instead of a few hundred bytes moved with every one.
pub(crate) type Outgoing = Box<Request<RequestBody>>;

/// Sends `req` on a pooled connection (unless `fresh`), or on a new one when none is idle (or the idle ones
/// turn out closed).
///
/// Errors: [`SendError::Connect`] when the request was never sent, [`SendError::Stale`] when a reused HTTP/1.1
/// connection closed before any answer (the backend's keep-alive race: safe to send a replayable request again
/// on a new connection), [`SendError::Sent`] otherwise.
pub(crate) async fn send(
    pool: &ConnectionPool,
    mut req: Outgoing,
    now: Instant,
    timeouts: &Timeouts,
    fresh: bool,
) -> Result<(http::Response<Incoming>, Sender), SendError> {
    while let Some(mut sender) = (!fresh)
        .then(|| pool.checkout(now, timeouts.idle))
        .flatten()
    {
        match sender.try_send(req).await {
            Ok(resp) => return Ok((resp, sender)),
            // Closed before the request was written: take it back and try the next connection.
            Err((_, Some(back))) => req = back,
            Err((e, None)) if matches!(sender, Sender::H1(_)) && closed_unanswered(&e) => {
                return Err(SendError::Stale(e));
            }
            Err((e, None)) => return Err(SendError::Sent(e)),
        }
    }
    // Connecting is the rare path and its future is large (TCP, TLS, HTTP/1 or HTTP/2 handshakes): boxed, so
    // that every request's future stays small and cheap to move.
    let connect_timeout = timeouts.connect;
    let connected = Box::pin(async {
        if !pool.kind.protocol.is_http2() {
            return pool.connect(connect_timeout).await;
        }
        let _one_at_a_time = pool.connecting.lock().await;
        match pool.checkout(now, Duration::MAX) {
            Some(shared) => Ok(shared),
            None => pool.connect(connect_timeout).await,
        }
    })
    .await;
    let mut sender = match connected {
        Ok(s) => s,
        Err(e) => return Err(SendError::Connect(e, req)),
    };
    match sender.try_send(req).await {
        Ok(resp) => Ok((resp, sender)),
        Err((_, Some(back))) => Err(SendError::Connect(
            io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "connection closed before the request was sent",
            ),
            back,
        )),
        Err((e, None)) => Err(SendError::Sent(e)),
    }
}

/// Did the connection close (or reset) before any of the response arrived?
fn closed_unanswered(e: &hyper::Error) -> bool {
    if e.is_incomplete_message() || e.is_canceled() || e.is_closed() {
        return true;
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<io::Error>() {
            use io::ErrorKind as K;
            return matches!(
                io.kind(),
                K::ConnectionReset | K::BrokenPipe | K::ConnectionAborted | K::UnexpectedEof
            );
        }
        source = s.source();
    }
    false
}

/// How long a backend keeps a connection open after this response, from its `Keep-Alive` header: `timeout=N`
/// less a margin (half of it, at most a second), so the proxy lets go first; zero when `max` says this was
/// the last request. `Duration::MAX` when it says nothing.
pub(crate) fn keep_alive_cap(headers: &http::HeaderMap) -> Duration {
    // A ready name: looking up by `&str` parses and checks the name on every response.
    static KEEP_ALIVE: http::HeaderName = http::HeaderName::from_static("keep-alive");
    let Some(value) = headers.get(&KEEP_ALIVE).and_then(|v| v.to_str().ok()) else {
        return Duration::MAX;
    };
    let mut cap = Duration::MAX;
    for param in value.split(',') {
        let (name, number) = match param.split_once('=') {
            Some((n, v)) => (n.trim(), v.trim().trim_matches('"').parse::<u64>().ok()),
            None => continue,
        };
        match (name, number) {
            (n, Some(secs)) if n.eq_ignore_ascii_case("timeout") => {
                let full = Duration::from_secs(secs);
                cap = cap.min(full.saturating_sub((full / 2).min(Duration::from_secs(1))));
            }
            (n, Some(max)) if n.eq_ignore_ascii_case("max") && max <= 1 => return Duration::ZERO,
            _ => {}
        }
    }
    cap
}

pub(crate) enum SendError {
    /// Nothing was sent; the request comes back.
    Connect(io::Error, Outgoing),
    /// A reused connection closed before any answer: the backend had let it go as the request went out.
    Stale(hyper::Error),
    /// The request was (at least partly) sent, then the exchange failed.
    Sent(hyper::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connections(protocol: Protocol, previous: Option<&PoolConnections>) -> PoolConnections {
        let opened = IntCounter::new("opened", "test").unwrap();
        let tls = UpstreamTlsSettings::default();
        PoolConnections::new(
            protocol,
            Some(&tls),
            64 * 1024,
            [("127.0.0.1:9", opened)].into_iter(),
            previous,
        )
    }

    fn client_config(c: &PoolConnections) -> &Arc<rustls::ClientConfig> {
        c.kind.connector.as_ref().map(|c| c.config()).unwrap()
    }

    #[test]
    fn rebuilt_connections_keep_their_tls_client_while_the_settings_stay() {
        let first = connections(Protocol::Https, None);
        let again = connections(Protocol::Https, Some(&first));
        assert!(Arc::ptr_eq(client_config(&first), client_config(&again)));
        assert!(Arc::ptr_eq(first.get(0).unwrap(), again.get(0).unwrap()));
        let h2 = connections(Protocol::H2, Some(&again));
        assert!(!Arc::ptr_eq(client_config(&again), client_config(&h2)));
        assert!(
            !Arc::ptr_eq(again.get(0).unwrap(), h2.get(0).unwrap()),
            "connections made another way do not fit"
        );
    }

    fn cap(value: &str) -> Duration {
        let mut headers = http::HeaderMap::new();
        headers.insert("keep-alive", value.parse().unwrap());
        keep_alive_cap(&headers)
    }

    #[test]
    fn keep_alive_timeouts_are_honoured_with_a_margin() {
        assert_eq!(keep_alive_cap(&http::HeaderMap::new()), Duration::MAX);
        assert_eq!(cap("timeout=5"), Duration::from_secs(4));
        assert_eq!(cap("timeout=1"), Duration::from_millis(500));
        assert_eq!(cap("timeout=5, max=100"), Duration::from_secs(4));
        assert_eq!(cap("Timeout=60"), Duration::from_secs(59));
        assert_eq!(cap("timeout=0"), Duration::ZERO);
        assert_eq!(cap("timeout=5, max=1"), Duration::ZERO);
        assert_eq!(cap("max=10"), Duration::MAX);
        assert_eq!(cap("timeout=soon"), Duration::MAX);
    }
}
