//! Client connection timeouts that hyper does not tell apart: `limits.header_read_timeout` bounds how long a
//! request head may take once it has started (and how long a new connection may stay silent), and
//! `limits.idle_timeout` how long a keep-alive connection may wait between requests.
//!
//! [`TimedIo`] wraps the socket and fails a read whose deadline has passed; the connection's [`ConnClock`]
//! knows which deadline applies because the service marks each request's start and end ([`RequestGuard`]).
//! While a request is in flight there is no deadline here (the pool's timeouts apply upstream).

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// The error a timed-out read reports; `header` tells a slow request head from an idle connection.
#[derive(Debug, thiserror::Error)]
#[error("{}", if *.header { "request head not received in time" } else { "idle keep-alive connection closed" })]
pub struct ReadTimeout {
    pub header: bool,
}

/// One client connection's timing state.
pub struct ConnClock {
    epoch: Instant,
    header_timeout: Duration,
    idle_timeout: Duration,
    active: AtomicUsize,
    /// Milliseconds after `epoch` + 1 when the current request head started; 0: none started.
    head_started: AtomicU64,
    /// Milliseconds after `epoch` when the connection last became idle.
    idle_since: AtomicU64,
    /// The read waiting on the socket: woken when the last request ends, so the idle deadline is armed even
    /// when hyper does not poll the socket again by itself.
    reader: Mutex<Option<Waker>>,
    /// The connection was upgraded (WebSocket): the tunnel keeps its own idle timeout.
    upgraded: std::sync::atomic::AtomicBool,
}

impl ConnClock {
    pub fn new(header_timeout: Duration, idle_timeout: Duration) -> Arc<Self> {
        Arc::new(Self {
            epoch: Instant::now(),
            header_timeout,
            idle_timeout,
            active: AtomicUsize::new(0),
            // A new connection must send its first request head within the header timeout.
            head_started: AtomicU64::new(1),
            idle_since: AtomicU64::new(0),
            reader: Mutex::new(None),
            upgraded: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// The connection now carries an upgraded protocol: no more HTTP deadlines.
    pub fn upgraded(&self) {
        self.upgraded.store(true, Ordering::Relaxed);
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// A request head is complete and its handling starts.
    pub fn request_started(self: &Arc<Self>) -> RequestGuard {
        self.active.fetch_add(1, Ordering::Relaxed);
        self.head_started.store(0, Ordering::Relaxed);
        RequestGuard(Arc::clone(self))
    }

    fn bytes_read(&self) {
        if self.active.load(Ordering::Relaxed) == 0
            && self.head_started.load(Ordering::Relaxed) == 0
        {
            self.head_started
                .store(self.now_ms() + 1, Ordering::Relaxed);
        }
    }

    /// The read deadline now, and whether it is the header timeout.
    fn deadline(&self) -> Option<(Instant, bool)> {
        if self.active.load(Ordering::Relaxed) > 0 || self.upgraded.load(Ordering::Relaxed) {
            return None;
        }
        let head = self.head_started.load(Ordering::Relaxed);
        if head != 0 {
            let at = self.epoch + Duration::from_millis(head - 1) + self.header_timeout;
            return Some((at, true));
        }
        let idle = self.idle_since.load(Ordering::Relaxed);
        Some((
            self.epoch + Duration::from_millis(idle) + self.idle_timeout,
            false,
        ))
    }
}

/// Marks a request in flight on its connection until dropped (with its response body).
pub struct RequestGuard(Arc<ConnClock>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let clock = &self.0;
        clock.idle_since.store(clock.now_ms(), Ordering::Relaxed);
        if clock.active.fetch_sub(1, Ordering::Relaxed) == 1 {
            let waiting = clock.reader.lock().ok().and_then(|mut w| w.take());
            if let Some(waker) = waiting {
                waker.wake();
            }
        }
    }
}

/// A response body that holds its request's [`RequestGuard`] until it is done.
pub struct GuardedBody<B> {
    pub inner: B,
    pub guard: RequestGuard,
}

impl<B: Body + Unpin> Body for GuardedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The client socket, with the read deadlines of its [`ConnClock`].
pub struct TimedIo<T> {
    inner: T,
    clock: Arc<ConnClock>,
    /// Armed only while a read waits.
    sleep: Option<Pin<Box<Sleep>>>,
}

impl<T> TimedIo<T> {
    pub fn new(inner: T, clock: Arc<ConnClock>) -> Self {
        Self {
            inner,
            clock,
            sleep: None,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for TimedIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.clock.bytes_read();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                if let Ok(mut reader) = this.clock.reader.lock() {
                    if !reader.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                        *reader = Some(cx.waker().clone());
                    }
                }
                let Some((deadline, header)) = this.clock.deadline() else {
                    return Poll::Pending;
                };
                let sleep = this
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if sleep.deadline() != deadline {
                    sleep.as_mut().reset(deadline);
                }
                match sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        ReadTimeout { header },
                    ))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for TimedIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
