//! The body of every response the proxy sends: an upstream's body streamed through, or a short local answer.
//!
//! An upstream body carries the request's [`Completion`]: the backend's in-flight count and the request's
//! duration end when the body ends (or the client goes away), not when the headers pass; and a connection whose
//! response was read to the end goes back to the backend's idle pool.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use std::future::Future;
use std::time::Duration;

use tokio::time::{Instant, Sleep};

use super::record::Ending;
use crate::balance::backend::InFlight;
use crate::observe::access_log::Pending;
use crate::upstream::{ConnectionPool, Sender};

pub(crate) enum ProxyBody {
    Upstream(UpstreamBody),
    Local(Option<Bytes>),
    /// A stream the admin listener writes as it goes (server-sent events); ends when the sender is dropped.
    Feed(tokio::sync::mpsc::Receiver<Bytes>),
}

pub(crate) struct UpstreamBody {
    body: Incoming,
    ended: bool,
    bytes_out: u64,
    /// The longest silence allowed between two pieces of the body (the pool's request timeout).
    idle_timeout: Duration,
    /// Armed only when the upstream keeps us waiting, so a body that flows costs no timer.
    idle: Option<Pin<Box<Sleep>>>,
    done: Completion,
}

/// The upstream went silent in the middle of a response body for longer than the pool's request timeout.
#[derive(Debug, thiserror::Error)]
#[error("the backend stopped sending the response body")]
pub(crate) struct BodyStalled;

impl ProxyBody {
    pub(crate) fn local(text: &'static str) -> Self {
        Self::Local(Some(Bytes::from_static(text.as_bytes())))
    }

    pub(crate) fn owned(bytes: Vec<u8>) -> Self {
        Self::Local(Some(Bytes::from(bytes)))
    }

    pub(crate) fn upstream(body: Incoming, done: Completion, idle_timeout: Duration) -> Self {
        Self::Upstream(UpstreamBody {
            body,
            ended: false,
            bytes_out: 0,
            idle_timeout,
            idle: None,
            done,
        })
    }
}

/// Ends a forwarded request's bookkeeping when dropped.
pub(crate) struct Completion {
    pub(crate) started: Instant,
    pub(crate) in_flight: InFlight,
    pub(crate) connection: Option<Sender>,
    /// Where the connection goes back when the response has been read to its end.
    pub(crate) connections: Arc<ConnectionPool>,
    /// How long the backend keeps the connection open for reuse (its `Keep-Alive: timeout`).
    pub(crate) idle_cap: Duration,
    /// The access log line, sent when the body ends.
    pub(crate) log: Option<Box<Pending>>,
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        let backend = self.done.in_flight.backend();
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(self.done.started);
        let log = self.done.log.take();
        let metrics = &backend.metrics;
        super::record::ended(metrics, Ending::Request, elapsed, log, self.bytes_out);
        if self.ended || self.body.is_end_stream() {
            if let Some(sender) = self.done.connection.take() {
                self.done
                    .connections
                    .checkin(sender, now, self.done.idle_cap);
            }
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            Self::Upstream(up) => match Pin::new(&mut up.body).poll_frame(cx) {
                Poll::Ready(polled) => {
                    match &polled {
                        None => up.ended = true,
                        Some(Ok(frame)) => {
                            up.bytes_out += frame.data_ref().map_or(0, |d| d.len() as u64)
                        }
                        Some(Err(_)) => {}
                    }
                    if let Some(idle) = up.idle.as_mut() {
                        idle.as_mut().reset(Instant::now() + up.idle_timeout);
                    }
                    Poll::Ready(polled.map(|r| r.map_err(Into::into)))
                }
                Poll::Pending => {
                    let timeout = up.idle_timeout;
                    let idle = up
                        .idle
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                    match idle.as_mut().poll(cx) {
                        Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyStalled)))),
                        Poll::Pending => Poll::Pending,
                    }
                }
            },
            Self::Local(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Self::Feed(rx) => rx.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Upstream(up) => up.ended || up.body.is_end_stream(),
            Self::Local(bytes) => bytes.is_none(),
            Self::Feed(_) => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Upstream(up) => up.body.size_hint(),
            Self::Local(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            Self::Feed(_) => SizeHint::default(),
        }
    }
}
