//! Upstream connections: HTTP/1.1 keep-alive connections per backend, opened with hyper's low-level
//! `client::conn`, kept idle in the backend's own small stack and reused most-recent first.
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
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use prometheus::IntCounter;
use tokio::net::TcpStream;
use tokio::time::Instant;

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

pub type Sender = http1::SendRequest<RequestBody>;

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
    idle: Box<[Mutex<Vec<Idle>>]>,
    opened: IntCounter,
}

impl ConnectionPool {
    pub fn new(address: &str, opened: IntCounter) -> Self {
        Self {
            address: address.to_owned(),
            resolved: address.parse().ok(),
            idle: (0..RUNTIMES.load(Ordering::Relaxed))
                .map(|_| Mutex::new(Vec::new()))
                .collect(),
            opened,
        }
    }

    /// This thread's idle list.
    fn idle(&self) -> &Mutex<Vec<Idle>> {
        let i = RUNTIME_INDEX.with(std::cell::Cell::get);
        &self.idle[i % self.idle.len()]
    }

    /// The most recently used idle connection that is still open and ready, if any.
    pub fn checkout(&self) -> Option<Sender> {
        let mut idle = self.idle().lock().unwrap_or_else(|p| p.into_inner());
        while let Some(c) = idle.pop() {
            if c.sender.is_ready() && !c.sender.is_closed() && c.since.elapsed() < IDLE_TIMEOUT {
                return Some(c.sender);
            }
        }
        None
    }

    /// Returns a connection whose response has ended.
    pub fn checkin(&self, sender: Sender) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle().lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < MAX_IDLE {
            idle.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }

    pub fn idle_count(&self) -> usize {
        self.idle
            .iter()
            .map(|i| i.lock().map_or(0, |i| i.len()))
            .sum()
    }

    /// Opens a new connection within `timeout`.
    pub async fn connect(&self, timeout: Duration) -> io::Result<Sender> {
        let connecting = async {
            let tcp = match self.resolved {
                Some(addr) => TcpStream::connect(addr).await?,
                None => TcpStream::connect(self.address.as_str()).await?,
            };
            let _ = tcp.set_nodelay(true);
            http1::Builder::new()
                .max_buf_size(256 * 1024)
                .handshake::<_, RequestBody>(TokioIo::new(tcp))
                .await
                .map_err(io::Error::other)
        };
        let (sender, conn) = match tokio::time::timeout(timeout, connecting).await {
            Ok(result) => result?,
            Err(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "connect timed out after {}",
                        humantime::format_duration(timeout)
                    ),
                ));
            }
        };
        self.opened.inc();
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }
}

/// Sends `req` on a pooled connection, or on a new one when none is idle (or the idle ones turn out closed).
///
/// Errors: `Err((error, Some(req)))` when the request was never sent (a connect failure), `Err((error, None))`
/// once it was.
pub async fn send(
    pool: &ConnectionPool,
    mut req: Request<RequestBody>,
    connect_timeout: Duration,
) -> Result<(http::Response<Incoming>, Sender), SendError> {
    while let Some(mut sender) = pool.checkout() {
        match sender.try_send_request(req).await {
            Ok(resp) => return Ok((resp, sender)),
            Err(mut e) => match e.take_message() {
                // Closed before the request was written: take it back and try the next connection.
                Some(back) => req = back,
                None => return Err(SendError::Sent(e.into_error())),
            },
        }
    }
    let mut sender = match pool.connect(connect_timeout).await {
        Ok(s) => s,
        Err(e) => return Err(SendError::Connect(e, Box::new(req))),
    };
    match sender.try_send_request(req).await {
        Ok(resp) => Ok((resp, sender)),
        Err(mut e) => match e.take_message() {
            Some(back) => Err(SendError::Connect(
                io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    "connection closed before the request was sent",
                ),
                Box::new(back),
            )),
            None => Err(SendError::Sent(e.into_error())),
        },
    }
}

pub enum SendError {
    /// Nothing was sent; the request comes back.
    Connect(io::Error, Box<Request<RequestBody>>),
    /// The request was (at least partly) sent, then the exchange failed.
    Sent(hyper::Error),
}
