//! The body of a request on its way to a backend, read from the client as the upstream connection asks for it.
//!
//! Whatever goes wrong on the client's side of a body — framing hyper refuses, a client that closes before its
//! `Content-Length` is done, one that stops sending for longer than `limits.body_read_timeout`, a body over
//! `limits.max_request_body_bytes` — is noted in the request's [`BodyWatch`] as a [`ClientFault`]: the proxy then
//! answers the client (400, 408, 413) and never counts the broken exchange against the backend. The watch also
//! tells the request timeout when the body was last read, so a long upload is not taken for a slow backend.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

/// The body of a request on its way to a backend.
pub(crate) enum RequestBody {
    Empty,
    Client(Box<ClientBody>),
    /// A body read whole beforehand (a mirror's copy).
    Full(Option<Bytes>),
}

/// A copy of a client's body as it streams to the backend, for a mirror: the whole body once it has ended, or
/// `None` when it grew past the limit. Dropped before the end (the client broke it), it sends nothing.
pub(crate) struct BodyCopy {
    parts: Vec<Bytes>,
    len: u64,
    limit: u64,
    done: Option<tokio::sync::oneshot::Sender<Option<Vec<Bytes>>>>,
}

impl BodyCopy {
    /// The copy, and where its parts arrive (joined by the receiver, off the request's path).
    pub(crate) fn new(limit: u64) -> (Self, tokio::sync::oneshot::Receiver<Option<Vec<Bytes>>>) {
        let (done, copied) = tokio::sync::oneshot::channel();
        let copy = Self {
            parts: Vec::new(),
            len: 0,
            limit,
            done: Some(done),
        };
        (copy, copied)
    }

    fn add(&mut self, data: &Bytes) {
        if self.done.is_none() {
            return;
        }
        self.len += data.len() as u64;
        if self.len > self.limit {
            self.parts.clear();
            if let Some(done) = self.done.take() {
                let _ = done.send(None);
            }
        } else {
            self.parts.push(data.clone());
        }
    }

    fn end(&mut self) {
        if let Some(done) = self.done.take() {
            let _ = done.send(Some(std::mem::take(&mut self.parts)));
        }
    }
}

/// What the client did wrong with its request body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ClientFault {
    #[error("the request body's framing is malformed")]
    Malformed,
    #[error("the client closed the connection before its request body ended")]
    Aborted,
    #[error("the client stopped sending its request body for longer than limits.body_read_timeout")]
    Stalled,
    #[error("the request body is larger than limits.max_request_body_bytes")]
    TooLarge,
}

impl ClientFault {
    /// The `reason` label of `switchyard_rejected_requests_total`.
    pub(crate) fn reason(self) -> &'static str {
        match self {
            Self::Malformed => "body_malformed",
            Self::Aborted => "client_aborted",
            Self::Stalled => "body_timeout",
            Self::TooLarge => "body_too_large",
        }
    }

    fn code(self) -> u8 {
        match self {
            Self::Malformed => 1,
            Self::Aborted => 2,
            Self::Stalled => 3,
            Self::TooLarge => 4,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(Self::Malformed),
            2 => Some(Self::Aborted),
            3 => Some(Self::Stalled),
            4 => Some(Self::TooLarge),
            _ => None,
        }
    }
}

/// One request body's progress, shared by the body (which the upstream connection polls) and the proxy.
#[derive(Debug)]
pub(crate) struct BodyWatch {
    epoch: Instant,
    fault: AtomicU8,
    /// Milliseconds after `epoch` when the body last gave bytes (or ended).
    last_read_ms: AtomicU64,
    /// The last poll found the client had nothing to give yet.
    waiting_on_client: AtomicBool,
    ended: AtomicBool,
}

impl BodyWatch {
    pub(crate) fn new(epoch: Instant) -> Arc<Self> {
        Arc::new(Self {
            epoch,
            fault: AtomicU8::new(0),
            last_read_ms: AtomicU64::new(0),
            waiting_on_client: AtomicBool::new(false),
            ended: AtomicBool::new(false),
        })
    }

    /// The client's fault, if the body failed because of the client.
    pub(crate) fn fault(&self) -> Option<ClientFault> {
        ClientFault::from_code(self.fault.load(Ordering::Acquire))
    }

    fn set_fault(&self, fault: ClientFault) -> ClientFault {
        let _ = self
            .fault
            .compare_exchange(0, fault.code(), Ordering::AcqRel, Ordering::Acquire);
        fault
    }

    fn last_read(&self) -> Instant {
        self.epoch + Duration::from_millis(self.last_read_ms.load(Ordering::Relaxed))
    }

    fn read_now(&self, now: Instant) {
        let ms = u64::try_from(now.saturating_duration_since(self.epoch).as_millis())
            .unwrap_or(u64::MAX);
        self.last_read_ms.store(ms, Ordering::Relaxed);
    }

    /// When the upstream's answer is due, `timeout` after the request was sent: while the client is still
    /// sending, the clock waits for it (its own stall timeout applies); once the body has ended, or while the
    /// backend is not reading it, it runs from the body's last bytes.
    pub(crate) fn answer_due(&self, timeout: Duration, now: Instant) -> Instant {
        if !self.ended.load(Ordering::Relaxed) && self.waiting_on_client.load(Ordering::Relaxed) {
            return now + timeout;
        }
        self.last_read() + timeout
    }
}

/// A client's request body, counted (access log), capped and watched.
pub(crate) struct ClientBody {
    body: Incoming,
    /// Body bytes read so far, for the access log.
    pub(crate) count: Option<Arc<AtomicU64>>,
    /// Bytes still allowed by `limits.max_request_body_bytes`.
    remaining: u64,
    stall_timeout: Duration,
    /// Armed only when the client keeps us waiting.
    stall: Option<Pin<Box<Sleep>>>,
    /// The client speaks HTTP/2: a failing body is a reset stream, not malformed framing.
    http2: bool,
    /// The upstream connection has asked for the body at least once: the stall clock runs from then (a slow
    /// connect, or a client waiting for `100 Continue`, is no stall).
    polled: bool,
    watch: Arc<BodyWatch>,
    /// For a mirror.
    pub(crate) copy: Option<BodyCopy>,
}

impl ClientBody {
    pub(crate) fn new(
        body: Incoming,
        count: Option<Arc<AtomicU64>>,
        limit: Option<u64>,
        stall_timeout: Duration,
        http2: bool,
        watch: Arc<BodyWatch>,
    ) -> Self {
        Self {
            body,
            count,
            remaining: limit.unwrap_or(u64::MAX),
            stall_timeout,
            stall: None,
            http2,
            polled: false,
            watch,
            copy: None,
        }
    }

    fn fail(&self, fault: ClientFault) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Poll::Ready(Some(Err(Box::new(self.watch.set_fault(fault)))))
    }

    /// What a body error from hyper says the client did.
    fn classify(&self, error: &hyper::Error) -> ClientFault {
        if self.http2 {
            return ClientFault::Aborted;
        }
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
        while let Some(e) = source {
            if let Some(io) = e.downcast_ref::<std::io::Error>() {
                use std::io::ErrorKind as K;
                return match io.kind() {
                    K::UnexpectedEof
                    | K::ConnectionReset
                    | K::ConnectionAborted
                    | K::BrokenPipe => ClientFault::Aborted,
                    _ => ClientFault::Malformed,
                };
            }
            source = e.source();
        }
        if error.is_incomplete_message() || error.is_closed() || error.is_canceled() {
            ClientFault::Aborted
        } else {
            ClientFault::Malformed
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            Self::Empty => Poll::Ready(None),
            Self::Client(c) => c.poll_client(cx),
            Self::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Empty => true,
            Self::Client(c) => c.body.is_end_stream(),
            Self::Full(data) => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Empty => SizeHint::with_exact(0),
            Self::Client(c) => c.body.size_hint(),
            Self::Full(data) => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
        }
    }
}

impl ClientBody {
    fn poll_client(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if !self.polled {
            self.polled = true;
            self.watch.read_now(Instant::now());
        }
        let polled = match Pin::new(&mut self.body).poll_frame(cx) {
            Poll::Ready(polled) => polled,
            Poll::Pending => return self.wait_for_client(cx),
        };
        let watch = &self.watch;
        watch.waiting_on_client.store(false, Ordering::Relaxed);
        match polled {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    let n = data.len() as u64;
                    if let Some(count) = &self.count {
                        count.fetch_add(n, Ordering::Relaxed);
                    }
                    if n > self.remaining {
                        return self.fail(ClientFault::TooLarge);
                    }
                    self.remaining -= n;
                    if let Some(copy) = &mut self.copy {
                        copy.add(data);
                        // The client (hyper) may never be asked past the last byte of a sized body.
                        if self.body.is_end_stream() || self.body.size_hint().exact() == Some(0) {
                            copy.end();
                        }
                    }
                }
                watch.read_now(Instant::now());
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(e)) => {
                let fault = self.classify(&e);
                self.fail(fault)
            }
            None => {
                watch.read_now(Instant::now());
                watch.ended.store(true, Ordering::Relaxed);
                if let Some(copy) = &mut self.copy {
                    copy.end();
                }
                Poll::Ready(None)
            }
        }
    }

    /// The client has nothing to give yet: fail once it has been silent for the stall timeout.
    fn wait_for_client(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.watch.waiting_on_client.store(true, Ordering::Relaxed);
        let deadline = self.watch.last_read() + self.stall_timeout;
        let stall = self
            .stall
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        // Bytes that came since the timer was set move the deadline later: re-armed only when it fires early.
        loop {
            if stall.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let deadline = self.watch.last_read() + self.stall_timeout;
            if Instant::now() >= deadline {
                return self.fail(ClientFault::Stalled);
            }
            stall.as_mut().reset(deadline);
        }
    }
}

use std::future::Future as _;

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_answer_waits_for_a_client_still_sending_and_runs_from_the_bodys_end() {
        let start = Instant::now();
        let watch = BodyWatch::new(start);
        let timeout = Duration::from_secs(30);
        assert_eq!(watch.answer_due(timeout, start), start + timeout);
        // The client is slow: the clock waits for it.
        watch.waiting_on_client.store(true, Ordering::Relaxed);
        let later = start + Duration::from_secs(40);
        assert_eq!(watch.answer_due(timeout, later), later + timeout);
        // The body ended at 50 s: the answer is due 30 s after.
        watch.waiting_on_client.store(false, Ordering::Relaxed);
        watch.read_now(start + Duration::from_secs(50));
        watch.ended.store(true, Ordering::Relaxed);
        assert_eq!(
            watch.answer_due(timeout, start + Duration::from_secs(60)),
            start + Duration::from_secs(80)
        );
    }

    #[test]
    fn the_first_fault_sticks() {
        let watch = BodyWatch::new(Instant::now());
        assert_eq!(watch.fault(), None);
        watch.set_fault(ClientFault::Stalled);
        watch.set_fault(ClientFault::Malformed);
        assert_eq!(watch.fault(), Some(ClientFault::Stalled));
    }
}
