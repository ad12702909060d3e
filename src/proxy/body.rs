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

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[doc(hidden)]
pub enum ProxyBody {
    Upstream(UpstreamBody),
    Local(Option<Bytes>),
    /// A stream the admin listener writes as it goes (server-sent events); ends when the sender is dropped.
    Feed(tokio::sync::mpsc::Receiver<Bytes>),
}

#[doc(hidden)]
pub struct UpstreamBody {
    body: Incoming,
    ended: bool,
    bytes_out: u64,
    wait: BodyWait,
    /// Since when the body has kept us waiting on the backend (not on the client, which stops polling).
    waiting_since: Option<Instant>,
    /// Armed only when the upstream keeps us waiting, so a body that flows costs no timer.
    timer: Option<Pin<Box<Sleep>>>,
    done: Completion,
}

/// How long a response body may keep the proxy waiting on its backend.
#[derive(Debug, Clone, Copy)]
pub(crate) enum BodyWait {
    /// In all, over the whole body: what is left of `timeouts.request` after the head. A body trickling in
    /// byte by byte is cut when its pauses add up to that; time spent waiting for a slow client is not counted.
    InAll(Duration),
    /// Each silence between two pieces (a stream: gRPC, server-sent events).
    EachSilence(Duration),
}

/// The backend kept the proxy waiting on the response body past the pool's request timeout.
#[derive(Debug, thiserror::Error)]
#[error("the backend did not finish the response body within timeouts.request")]
pub(crate) struct BodyTimedOut;

impl ProxyBody {
    pub(crate) fn local(text: &'static str) -> Self {
        Self::Local(Some(Bytes::from_static(text.as_bytes())))
    }

    pub(crate) fn owned(bytes: Vec<u8>) -> Self {
        Self::Local(Some(Bytes::from(bytes)))
    }

    pub(crate) fn upstream(body: Incoming, done: Completion, wait: BodyWait) -> Self {
        Self::Upstream(UpstreamBody {
            body,
            ended: false,
            bytes_out: 0,
            wait,
            waiting_since: None,
            timer: None,
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
    /// What is left of the pool's request timeout for the body, once the head has come.
    pub(crate) wait_left: Duration,
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

impl UpstreamBody {
    fn poll_body(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match Pin::new(&mut self.body).poll_frame(cx) {
            Poll::Ready(polled) => {
                match &polled {
                    None => self.ended = true,
                    Some(Ok(frame)) => {
                        self.bytes_out += frame.data_ref().map_or(0, |d| d.len() as u64)
                    }
                    Some(Err(_)) => {}
                }
                if let Some(since) = self.waiting_since.take() {
                    if let BodyWait::InAll(left) = &mut self.wait {
                        *left = left.saturating_sub(since.elapsed());
                    }
                }
                Poll::Ready(polled.map(|r| r.map_err(Into::into)))
            }
            Poll::Pending => {
                if self.waiting_since.is_none() {
                    let now = Instant::now();
                    self.waiting_since = Some(now);
                    let due = now
                        + match self.wait {
                            BodyWait::InAll(left) | BodyWait::EachSilence(left) => left,
                        };
                    match self.timer.as_mut() {
                        Some(timer) => timer.as_mut().reset(due),
                        None => self.timer = Some(Box::pin(tokio::time::sleep_until(due))),
                    }
                }
                let Some(timer) = self.timer.as_mut() else {
                    return Poll::Pending;
                };
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        let backend = self.done.in_flight.backend();
                        backend.metrics.count_error("timeout");
                        if let Some(log) = self.done.log.as_deref_mut() {
                            log.reason = "timeout";
                        }
                        tracing::debug!(pool = %backend.pool, backend = %backend.address,
                            "response body cut: {BodyTimedOut}");
                        Poll::Ready(Some(Err(Box::new(BodyTimedOut))))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            Self::Upstream(up) => up.poll_body(cx),
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
