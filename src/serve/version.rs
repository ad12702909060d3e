//! HTTP on one client connection: which version it speaks (by ALPN, or by a plain connection's first bytes),
//! and hyper's server for it with the listener's limits.

use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use super::conn::TimedIo;
use super::streams::Streams;
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
        // The connection's streams run in its own task (`streams`).
        Versions::Http2 => {
            let streams = Streams::default();
            let mut http2 = hyper::server::conn::http2::Builder::new(streams.clone());
            http2_settings!(http2);
            let conn = http2.serve_connection(io, service);
            Ok(streams
                .run(watcher.watch(conn, |c| c.graceful_shutdown()))
                .await?)
        }
        // TLS without ALPN: hyper-util reads the first bytes to tell.
        Versions::Any => {
            let streams = Streams::default();
            let mut builder = auto::Builder::new(streams.clone());
            http1_settings!(builder.http1());
            http2_settings!(builder.http2());
            let conn = builder.serve_connection_with_upgrades(io, service);
            streams
                .run(watcher.watch(conn, |c| c.graceful_shutdown()))
                .await
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

/// The most a plain connection's first read takes (hyper's own first read is as large).
const FIRST_READ: usize = 8 * 1024;

/// Tells HTTP/2 with prior knowledge from HTTP/1.1 on a plain connection by its first bytes, and returns them
/// for hyper to read first (`socket::Tcp::with_first`): one read, where a peek and hyper's read took two.
///
/// hyper-util's auto builder also reads the first bytes and hands them back in front of the socket, but hyper's
/// read buffer then grows to twice its size to hold them, for the connection's whole life; here they are
/// copied into hyper's buffer and freed. A connection waiting for its first bytes holds no buffer.
pub(super) async fn sniff(
    tcp: &mut TcpStream,
    limits: &Limits,
    watcher: &mut DrainWatch,
) -> Result<(Versions, Vec<u8>), Unsniffed> {
    let read = async {
        let mut first = Vec::new();
        let mut wait = limits.idle_timeout;
        let mut partial_since = None;
        loop {
            let more = async {
                tcp.readable().await?;
                if first.capacity() == 0 {
                    first.reserve_exact(FIRST_READ);
                }
                // Through `AsyncRead`: a short read tells the reactor the socket is drained, so hyper's next
                // read waits instead of trying the socket.
                tcp.read_buf(&mut first).await
            };
            match tokio::time::timeout(wait, more).await {
                Ok(Ok(0)) | Ok(Err(_)) => return Err(Unsniffed::Closed),
                Ok(Ok(_)) => {}
                Err(_) if first.is_empty() => return Err(Unsniffed::Closed),
                Err(_) => return Err(Unsniffed::HeaderTimeout),
            }
            if let Some(versions) = version_of(&first) {
                return Ok((versions, first));
            }
            // Part of the preface: the rest must come within the header deadline.
            let since = *partial_since.get_or_insert_with(tokio::time::Instant::now);
            wait = limits
                .header_read_timeout
                .checked_sub(since.elapsed())
                .ok_or(Unsniffed::HeaderTimeout)?;
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
        versions = read => versions,
        () = grace => Err(Unsniffed::Closed),
    }
}

/// The version the first bytes tell, or `None` while they are all a part of HTTP/2's preface.
fn version_of(first: &[u8]) -> Option<Versions> {
    let n = first.len().min(H2_PREFACE.len());
    if n == 0 {
        None
    } else if H2_PREFACE.get(..n) != first.get(..n) {
        Some(Versions::Http1)
    } else if n == H2_PREFACE.len() {
        Some(Versions::Http2)
    } else {
        None
    }
}
