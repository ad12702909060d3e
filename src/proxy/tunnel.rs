//! Upgraded connections (WebSocket and any other HTTP/1.1 `Upgrade`): after the backend's `101`, the client's
//! connection and the backend's are joined and bytes flow both ways until either side closes or neither sends
//! anything for `limits.idle_timeout`.
//!
//! The tunnel keeps the request's in-flight count on its backend (least-connections sees long-lived sockets)
//! and writes the access log line when it closes. Its lifetime is not a request duration, so it stays out of
//! `switchyard_request_duration_seconds`.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http::Response;
use http::header::{self, HeaderValue};
use hyper::body::Incoming;
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use super::headers;
use super::record::{self, Ending};
use super::{Completion, ProxyBody};
use crate::observe::access_log::Pending;

/// The upgraded connections open now: what shutdown waits for (and what `switchyard_upgraded_connections`
/// shows).
pub(crate) struct OpenTunnels {
    count: std::sync::atomic::AtomicUsize,
    all_closed: tokio::sync::Notify,
    gauge: prometheus::IntGauge,
}

impl OpenTunnels {
    pub(crate) fn new(gauge: prometheus::IntGauge) -> Self {
        Self {
            count: std::sync::atomic::AtomicUsize::new(0),
            all_closed: tokio::sync::Notify::new(),
            gauge,
        }
    }

    fn enter(self: &Arc<Self>) -> TunnelGuard {
        self.count.fetch_add(1, Ordering::AcqRel);
        self.gauge.inc();
        TunnelGuard(Arc::clone(self))
    }

    /// Returns once no tunnel is open.
    pub(crate) async fn all_closed(&self) {
        loop {
            let closed = self.all_closed.notified();
            if self.count.load(Ordering::Acquire) == 0 {
                return;
            }
            closed.await;
        }
    }
}

/// One open tunnel, counted until dropped.
struct TunnelGuard(Arc<OpenTunnels>);

impl Drop for TunnelGuard {
    fn drop(&mut self) {
        self.0.gauge.dec();
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.all_closed.notify_waiters();
        }
    }
}

/// Answers the client's upgrade with the backend's `101` and joins the two connections once both are handed
/// over.
pub(super) fn open(
    mut resp: Response<Incoming>,
    mut done: Completion,
    client: OnUpgrade,
    log: Option<Box<Pending>>,
    attempts: u32,
    idle_timeout: Duration,
    tunnels: &Arc<OpenTunnels>,
) -> Response<ProxyBody> {
    let upstream = hyper::upgrade::on(&mut resp);
    let (mut parts, _) = resp.into_parts();
    let token = parts.headers.get(header::UPGRADE).cloned();
    headers::strip_hop_by_hop(&mut parts.headers);
    parts
        .headers
        .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    if let Some(token) = token {
        parts.headers.insert(header::UPGRADE, token);
    }
    // The upstream connection now belongs to the tunnel; it never goes back to the pool.
    done.connection = None;
    record::upstream_answered(&mut done, parts.status, log, attempts);
    let tunnels = Arc::clone(tunnels);
    tokio::spawn(async move {
        let (client, upstream) = match tokio::join!(client, upstream) {
            (Ok(c), Ok(u)) => (c, u),
            (c, u) => {
                tracing::debug!(client = ?c.err(), upstream = ?u.err(), "upgrade did not complete");
                finish(done, 0);
                return;
            }
        };
        let open = (tunnels.enter(), done.in_flight.backend().open_tunnel());
        let to_client = relay(client, upstream, idle_timeout).await;
        drop(open);
        finish(done, to_client);
    });
    Response::from_parts(parts, ProxyBody::Local(None))
}

fn finish(mut done: Completion, bytes_out: u64) {
    let metrics = &done.in_flight.backend().metrics;
    let log = done.log.take();
    record::ended(
        metrics,
        Ending::Tunnel,
        done.started.elapsed(),
        log,
        bytes_out,
    );
    // Dropping `done.in_flight` ends the backend's in-flight count.
}

/// Copies both ways until one side closes or both are silent for `idle_timeout`; returns the bytes sent to
/// the client.
async fn relay(client: Upgraded, upstream: Upgraded, idle_timeout: Duration) -> u64 {
    let epoch = Instant::now();
    let activity = Arc::new(Activity::default());
    let mut client = Stamped {
        io: TokioIo::new(client),
        epoch,
        activity: Arc::clone(&activity),
        to_client: true,
    };
    let mut upstream = Stamped {
        io: TokioIo::new(upstream),
        epoch,
        activity: Arc::clone(&activity),
        to_client: false,
    };
    let copy = tokio::io::copy_bidirectional(&mut client, &mut upstream);
    tokio::pin!(copy);
    loop {
        let deadline = epoch + activity.last() + idle_timeout;
        tokio::select! {
            result = &mut copy => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "upgraded connection ended with an error");
                }
                break;
            }
            () = tokio::time::sleep_until(deadline) => {
                if epoch + activity.last() + idle_timeout <= Instant::now() {
                    tracing::debug!(?idle_timeout, "upgraded connection idle; closed");
                    break;
                }
            }
        }
    }
    activity.to_client.load(Ordering::Relaxed)
}

#[derive(Default)]
struct Activity {
    /// Milliseconds after the tunnel opened when a byte last moved.
    last_ms: AtomicU64,
    to_client: AtomicU64,
}

impl Activity {
    fn last(&self) -> Duration {
        Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}

/// One side of a tunnel, noting when bytes move.
struct Stamped {
    io: TokioIo<Upgraded>,
    epoch: Instant,
    activity: Arc<Activity>,
    to_client: bool,
}

impl Stamped {
    fn stamp(&self) {
        let ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.activity.last_ms.store(ms, Ordering::Relaxed);
    }
}

impl AsyncRead for Stamped {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.stamp();
        }
        polled
    }
}

impl AsyncWrite for Stamped {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_write(cx, data);
        if let Poll::Ready(Ok(n)) = polled {
            if n > 0 {
                this.stamp();
                if this.to_client {
                    this.activity
                        .to_client
                        .fetch_add(n as u64, Ordering::Relaxed);
                }
            }
        }
        polled
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
