//! Upstream connections, opened with hyper's low-level `client::conn`: for HTTP/1.1 (`http1`, `https`)
//! keep-alive connections kept idle in the backend's own small stack and reused most-recent first; for HTTP/2
//! (`h2c`, `h2`) one shared, multiplexed connection per backend and worker runtime.
//!
//! Owning the pool (instead of hyper-util's legacy client) lets the proxy tell "could not connect" (nothing was
//! sent: safe to retry for any method) from "sent, then failed", take a request back when a pooled connection
//! turns out closed, and count every connection it opens.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::{TrySendError, http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use prometheus::IntCounter;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;

use crate::config::Protocol;
use crate::socket::Tcp;
use crate::tls::UpstreamTlsSettings;

/// Idle connections kept per backend; more are closed when their response ends.
const MAX_IDLE: usize = 256;
/// An idle connection older than this is closed instead of reused (servers commonly time out at 60 s or more).
const IDLE_TIMEOUT: Duration = Duration::from_secs(55);

/// The body of a request on its way to a backend.
pub enum RequestBody {
    Empty,
    Streaming(Incoming),
    /// Streaming, with its bytes counted (for the access log) and/or capped (`limits.max_request_body_bytes`).
    Metered(Box<Metered>),
}

pub struct Metered {
    pub body: Incoming,
    pub count: Option<Arc<AtomicU64>>,
    /// Bytes still allowed; past them the body fails and `exceeded` is set.
    pub remaining: u64,
    pub exceeded: Arc<AtomicBool>,
}

/// The request body was larger than `limits.max_request_body_bytes`.
#[derive(Debug, thiserror::Error)]
#[error("request body larger than limits.max_request_body_bytes")]
pub struct BodyTooLarge;

impl Body for RequestBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            Self::Empty => Poll::Ready(None),
            Self::Streaming(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            Self::Metered(m) => {
                let polled = ready!(Pin::new(&mut m.body).poll_frame(cx));
                if let Some(Ok(frame)) = &polled {
                    if let Some(data) = frame.data_ref() {
                        let n = data.len() as u64;
                        if let Some(count) = &m.count {
                            count.fetch_add(n, Ordering::Relaxed);
                        }
                        if n > m.remaining {
                            m.exceeded.store(true, Ordering::Relaxed);
                            return Poll::Ready(Some(Err(Box::new(BodyTooLarge))));
                        }
                        m.remaining -= n;
                    }
                }
                Poll::Ready(polled.map(|r| r.map_err(Into::into)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Empty => true,
            Self::Streaming(b) => b.is_end_stream(),
            Self::Metered(m) => m.body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Empty => SizeHint::with_exact(0),
            Self::Streaming(b) => b.size_hint(),
            Self::Metered(m) => m.body.size_hint(),
        }
    }
}

/// A connection's request handle.
pub enum Sender {
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
    pub async fn try_send(
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
pub struct UpstreamKind {
    pub protocol: Protocol,
    pub tls_settings: Option<UpstreamTlsSettings>,
    /// Built once per pool; `None` for plain protocols (or when the CA file could not be read, logged).
    pub connector: Option<TlsConnector>,
}

impl UpstreamKind {
    pub fn plain() -> Self {
        Self {
            protocol: Protocol::Http1,
            tls_settings: None,
            connector: None,
        }
    }

    /// The kind for a pool's settings; reads the CA file for TLS protocols.
    pub fn new(protocol: Protocol, tls: Option<&UpstreamTlsSettings>) -> Self {
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
    pub fn built_from(&self, protocol: Protocol, tls: Option<&UpstreamTlsSettings>) -> bool {
        let tls = protocol.is_tls().then(|| tls.cloned().unwrap_or_default());
        self.protocol == protocol && self.tls_settings == tls
    }

    /// Same protocol and TLS settings: connections made for one serve the other.
    pub fn same_as(&self, other: &Self) -> bool {
        self.protocol == other.protocol && self.tls_settings == other.tls_settings
    }
}

struct Idle {
    sender: Sender,
    since: Instant,
}

/// How many runtimes serve requests (set once at start by the binary; 1 otherwise), and which one this thread
/// belongs to: each keeps its own idle connections, so a connection's I/O stays on the thread that uses it.
static RUNTIMES: AtomicUsize = AtomicUsize::new(1);

thread_local! {
    static RUNTIME_INDEX: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Declares how many runtimes serve requests (before any pool is built).
pub fn set_runtime_count(n: usize) {
    RUNTIMES.store(n.max(1), Ordering::Relaxed);
}

/// Marks the current thread as the runtime with this index (0: the control runtime).
pub fn set_runtime_index(i: usize) {
    RUNTIME_INDEX.with(|c| c.set(i));
}

/// One backend's connections.
pub struct ConnectionPool {
    address: String,
    resolved: Option<SocketAddr>,
    pub kind: UpstreamKind,
    server_name: Option<ServerName<'static>>,
    /// HTTP/1.1: idle connections. HTTP/2: at most one, the shared connection (never taken out).
    idle: Box<[Mutex<Vec<Idle>>]>,
    /// HTTP/2: one connection attempt at a time per backend, so a burst of requests shares one connection
    /// instead of each opening its own. Taken only when there is no usable shared connection.
    connecting: tokio::sync::Mutex<()>,
    opened: IntCounter,
}

impl ConnectionPool {
    pub fn new(address: &str, opened: IntCounter, kind: UpstreamKind) -> Self {
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
        }
    }

    pub fn protocol(&self) -> Protocol {
        self.kind.protocol
    }

    /// This thread's idle list.
    fn idle(&self) -> &Mutex<Vec<Idle>> {
        let i = RUNTIME_INDEX.with(std::cell::Cell::get);
        &self.idle[i % self.idle.len()]
    }

    /// The most recently used idle connection that is still open and ready, if any.
    pub fn checkout(&self, now: Instant) -> Option<Sender> {
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
            if c.sender.usable() && now.saturating_duration_since(c.since) < IDLE_TIMEOUT {
                return Some(c.sender);
            }
        }
        None
    }

    /// Returns a connection whose response has ended.
    pub fn checkin(&self, sender: Sender, now: Instant) {
        if sender.is_closed() || matches!(sender, Sender::H2(_)) {
            return;
        }
        let mut idle = self.idle().lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < MAX_IDLE {
            idle.push(Idle { sender, since: now });
        }
    }

    pub fn idle_count(&self) -> usize {
        self.idle
            .iter()
            .map(|i| i.lock().map_or(0, |i| i.len()))
            .sum()
    }

    /// Opens a new connection within `timeout` (for HTTP/2, it becomes the shared one).
    pub async fn connect(&self, timeout: Duration) -> io::Result<Sender> {
        let sender = self.open(timeout).await?;
        self.opened.inc();
        if let Sender::H2(s) = &sender {
            let mut idle = self.idle().lock().unwrap_or_else(|p| p.into_inner());
            idle.clear();
            idle.push(Idle {
                sender: Sender::H2(s.clone()),
                since: Instant::now(),
            });
        }
        Ok(sender)
    }

    /// Opens a connection of its own (health checks), not counted and not shared.
    pub async fn open(&self, timeout: Duration) -> io::Result<Sender> {
        let connecting = async {
            let tcp = match self.resolved {
                Some(addr) => TcpStream::connect(addr).await?,
                None => TcpStream::connect(self.address.as_str()).await?,
            };
            let _ = tcp.set_nodelay(true);
            if !self.kind.protocol.is_tls() {
                return handshake(Tcp::new(tcp), self.kind.protocol).await;
            }
            let (Some(connector), Some(name)) = (&self.kind.connector, &self.server_name) else {
                return Err(io::Error::other(
                    "no TLS client settings for this pool (see the error logged at load)",
                ));
            };
            let tls = connector.connect(name.clone(), Tcp::new(tcp)).await?;
            handshake(tls, self.kind.protocol).await
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

/// Speaks HTTP/1.1 or HTTP/2 over an open connection; the connection's I/O runs in its own task.
async fn handshake<T>(io: T, protocol: Protocol) -> io::Result<Sender>
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
        let (sender, conn) = http1::Builder::new()
            .max_buf_size(256 * 1024)
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
pub type Outgoing = Box<Request<RequestBody>>;

/// Sends `req` on a pooled connection, or on a new one when none is idle (or the idle ones turn out closed).
///
/// Errors: `Err((error, Some(req)))` when the request was never sent (a connect failure), `Err((error, None))`
/// once it was.
pub async fn send(
    pool: &ConnectionPool,
    mut req: Outgoing,
    now: Instant,
    connect_timeout: Duration,
) -> Result<(http::Response<Incoming>, Sender), SendError> {
    while let Some(mut sender) = pool.checkout(now) {
        match sender.try_send(req).await {
            Ok(resp) => return Ok((resp, sender)),
            // Closed before the request was written: take it back and try the next connection.
            Err((_, Some(back))) => req = back,
            Err((e, None)) => return Err(SendError::Sent(e)),
        }
    }
    // Connecting is the rare path and its future is large (TCP, TLS, HTTP/1 or HTTP/2 handshakes): boxed, so
    // that every request's future stays small and cheap to move.
    let connected = Box::pin(async {
        if !pool.kind.protocol.is_http2() {
            return pool.connect(connect_timeout).await;
        }
        let _one_at_a_time = pool.connecting.lock().await;
        match pool.checkout(now) {
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

pub enum SendError {
    /// Nothing was sent; the request comes back.
    Connect(io::Error, Outgoing),
    /// The request was (at least partly) sent, then the exchange failed.
    Sent(hyper::Error),
}
