//! HTTP on one client connection: which version it speaks (by ALPN, or by peeking at a plain connection's first
//! bytes), and hyper's server for it with the listener's limits.

use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpStream;

use super::conn::TimedIo;
use super::{BoxError, ClientService, DrainWatch, Versions};
use crate::config::Limits;

/// HTTP/2 flow-control windows for client connections: enough for a fast stream, bounded per connection.
const H2_STREAM_WINDOW: u32 = 256 * 1024;
const H2_CONNECTION_WINDOW: u32 = 1024 * 1024;

/// Serves HTTP on one client connection until it closes (or hands its socket to an upgrade).
#[doc(hidden)]
pub async fn serve_http<T, S>(
    io: TimedIo<T>,
    versions: Versions,
    service: S,
    limits: Option<&Limits>,
    watcher: DrainWatch,
) -> Result<(), BoxError>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: ClientService,
{
    let io = TokioIo::new(io);
    // Header and idle deadlines are kept by `TimedIo`, which can tell them apart.
    macro_rules! http1_settings {
        ($http1:expr) => {{
            $http1
                .timer(TokioTimer::new())
                .keep_alive(true)
                .header_read_timeout(None);
            if let Some(limits) = limits {
                $http1.max_buf_size(limits.max_header_bytes);
            }
        }};
    }
    macro_rules! http2_settings {
        ($http2:expr) => {{
            $http2.timer(TokioTimer::new());
            if let Some(limits) = limits {
                $http2
                    .max_header_list_size(
                        u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX),
                    )
                    .max_concurrent_streams(limits.max_concurrent_streams)
                    .initial_stream_window_size(H2_STREAM_WINDOW)
                    .initial_connection_window_size(H2_CONNECTION_WINDOW);
            }
        }};
    }
    match versions {
        Versions::Http1 => {
            let mut http1 = hyper::server::conn::http1::Builder::new();
            http1_settings!(http1);
            let conn = http1.serve_connection(io, service).with_upgrades();
            Ok(watcher.watch(conn, |c| c.graceful_shutdown()).await?)
        }
        Versions::Http2 => {
            let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
            http2_settings!(http2);
            let conn = http2.serve_connection(io, service);
            Ok(watcher.watch(conn, |c| c.graceful_shutdown()).await?)
        }
        // TLS without ALPN: hyper-util reads the first bytes to tell.
        Versions::Any => {
            let mut builder = auto::Builder::new(TokioExecutor::new());
            http1_settings!(builder.http1());
            http2_settings!(builder.http2());
            let conn = builder.serve_connection_with_upgrades(io, service);
            watcher.watch(conn, |c| c.graceful_shutdown()).await
        }
    }
}

/// HTTP/2's connection preface: a client with prior knowledge starts with it.
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How long a drain waits for a new connection's first bytes.
pub(super) const FIRST_BYTES_GRACE: Duration = Duration::from_secs(1);

/// Why a plain connection closes before its version is known.
pub(super) enum Unsniffed {
    /// The client closed, or sent nothing within `limits.idle_timeout` (or within the grace a drain gives).
    Closed,
    /// Part of the preface, and not the rest within `limits.header_read_timeout`.
    HeaderTimeout,
}

/// Tells HTTP/2 with prior knowledge from HTTP/1.1 on a plain connection by peeking at its first bytes (they stay
/// in the socket for hyper to read).
///
/// hyper-util's auto builder does the same by reading the bytes and handing them back in front of the socket;
/// hyper's read buffer then grows to twice its size to hold them, for the connection's whole life.
pub(super) async fn sniff(
    tcp: &TcpStream,
    limits: &Limits,
    watcher: &mut DrainWatch,
) -> Result<Versions, Unsniffed> {
    let mut first = [0u8; 24];
    let peek = async {
        let mut wait = limits.idle_timeout;
        let mut partial_since = None;
        loop {
            let timed_out = match partial_since {
                None => Unsniffed::Closed,
                Some(_) => Unsniffed::HeaderTimeout,
            };
            let n = match tokio::time::timeout(wait, tcp.peek(&mut first)).await {
                Ok(Ok(n)) => n,
                Ok(Err(_)) => return Err(Unsniffed::Closed),
                Err(_) => return Err(timed_out),
            };
            let seen = first.get(..n).ok_or(Unsniffed::Closed)?;
            if n == 0 {
                return Err(Unsniffed::Closed);
            }
            if H2_PREFACE.get(..n) != Some(seen) {
                return Ok(Versions::Http1);
            }
            if n == H2_PREFACE.len() {
                return Ok(Versions::Http2);
            }
            // Part of the preface: peeking again returns at once, so wait a little for the rest, within the
            // header deadline.
            let since = *partial_since.get_or_insert_with(tokio::time::Instant::now);
            wait = limits
                .header_read_timeout
                .checked_sub(since.elapsed())
                .ok_or(Unsniffed::HeaderTimeout)?;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    // A connection the drain finds before its first bytes may have its request on the way: accepted a moment
    // before the signal, or taken from the accept queue as the listener closed. It gets a short grace to send
    // them; its first request is then served, and the connection closes after the response.
    let grace = async {
        watcher.started().await;
        tokio::time::sleep(FIRST_BYTES_GRACE).await;
    };
    tokio::select! {
        versions = peek => versions,
        () = grace => Err(Unsniffed::Closed),
    }
}
