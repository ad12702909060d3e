//! Client connection timeouts that hyper does not tell apart: `limits.header_read_timeout` bounds how long a
//! request head may take once it has started (and how long a new connection may stay silent), and
//! `limits.idle_timeout` how long a keep-alive connection may wait between requests.
//!
//! [`TimedIo`] wraps the socket and fails a read whose deadline has passed; the connection's [`ConnClock`]
//! knows which deadline applies because the service marks each request's start and end ([`RequestGuard`]).
//! While a request is in flight there is no read deadline here (the pool's timeouts apply upstream); a write
//! the client leaves waiting (it does not read the response) fails after `limits.idle_timeout`.
//!
//! It also looks at each HTTP/1 request head as it arrives (`framing`, with httparse, the parser hyper uses) for
//! the framing hyper accepts but a careful proxy refuses: `Content-Length` together with `Transfer-Encoding`,
//! and `Content-Length` given twice. hyper reads such a request safely (as chunked, closing the connection), but
//! the request is ambiguous to other hops, so the service answers it 400 ([`RequestGuard::ambiguous_framing`]).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::framing::{BodyFraming, Framing, framing, plain_head};

/// The error a timed-out read reports; `header` tells a slow request head from an idle connection.
#[derive(Debug, thiserror::Error)]
#[error("{}", if *.header { "request head not received in time" } else { "idle keep-alive connection closed" })]
pub(crate) struct ReadTimeout {
    pub(crate) header: bool,
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
    upgraded: AtomicBool,
    /// The next bytes read start a request head (set whenever the last request in flight ends).
    awaiting_head: AtomicBool,
    /// Request heads handed to the service so far.
    heads_served: AtomicU64,
    /// The number (from 1) of the first request head with ambiguous framing; 0: none.
    ambiguous_head: AtomicU64,
    /// Response bodies whose next move is the client's: they handed out a frame (or are not polled yet).
    awaiting_client: AtomicUsize,
    /// Bumped by every poll of a response body, and its end: a stall shows as no change.
    body_moves: AtomicU64,
    /// The connection's own task is being polled ([`ConnClock::drive`]).
    polling: AtomicBool,
    /// The last request in flight ended; whoever takes this arms the idle deadline (the connection's poll as it
    /// returns, or a wake of the waiting read).
    went_idle: AtomicBool,
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
            upgraded: AtomicBool::new(false),
            awaiting_head: AtomicBool::new(false),
            heads_served: AtomicU64::new(0),
            ambiguous_head: AtomicU64::new(0),
            awaiting_client: AtomicUsize::new(0),
            body_moves: AtomicU64::new(0),
            polling: AtomicBool::new(false),
            went_idle: AtomicBool::new(false),
        })
    }

    /// Polls the connection's future `served` (its whole task), and arms the idle deadline when a request ended
    /// during the poll.
    ///
    /// The deadline is armed by [`TimedIo`] when a read waits, and hyper's HTTP/1.1 server often polls its read
    /// before the response's end drops the request's guard. A guard that ends the last request from another task
    /// (an HTTP/2 stream's) wakes the waiting read, which then arms it. One that ends it inside this task's own
    /// poll leaves it to this function, which registers `idle` for the deadline as the poll returns: a wake would
    /// poll hyper's whole connection again, once per request, to do the same.
    pub fn drive<F: Future>(
        &self,
        served: Pin<&mut F>,
        idle: &mut Option<Pin<Box<Sleep>>>,
        cx: &mut Context<'_>,
    ) -> Poll<F::Output> {
        self.polling.store(true, Ordering::SeqCst);
        let polled = served.poll(cx);
        self.polling.store(false, Ordering::SeqCst);
        if polled.is_pending() && self.went_idle.swap(false, Ordering::SeqCst) {
            if let Some((deadline, _)) = self.deadline() {
                let timer =
                    idle.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                // Early is harmless (the read checks the deadline in force when it wakes), late is not.
                if timer.is_elapsed() || deadline < timer.deadline() {
                    timer.as_mut().reset(deadline);
                }
                if timer.as_mut().poll(cx).is_ready() {
                    cx.waker().wake_by_ref();
                }
            }
        }
        polled
    }

    /// The connection now carries an upgraded protocol: no more HTTP deadlines.
    pub(crate) fn upgraded(&self) {
        self.upgraded.store(true, Ordering::Relaxed);
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// A request head is complete and its handling starts. The guard tells whether the head's framing was
    /// ambiguous.
    pub fn request_started(self: &Arc<Self>) -> RequestGuard {
        self.active.fetch_add(1, Ordering::Relaxed);
        self.head_started.store(0, Ordering::Relaxed);
        let n = self.heads_served.fetch_add(1, Ordering::Relaxed) + 1;
        let ambiguous = self.ambiguous_head.load(Ordering::Relaxed) == n;
        RequestGuard(Arc::clone(self), ambiguous)
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
pub struct RequestGuard(Arc<ConnClock>, bool);

impl RequestGuard {
    /// Was this request's framing ambiguous (`Content-Length` with `Transfer-Encoding`, or twice)?
    pub(crate) fn ambiguous_framing(&self) -> bool {
        self.1
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let clock = &self.0;
        clock.idle_since.store(clock.now_ms(), Ordering::Relaxed);
        if clock.active.fetch_sub(1, Ordering::Relaxed) == 1 {
            clock.awaiting_head.store(true, Ordering::Relaxed);
            // Left to the connection's poll when it is running (it checks `went_idle` after setting `polling`
            // back), else taken here: one of the two arms the deadline.
            clock.went_idle.store(true, Ordering::SeqCst);
            if clock.polling.load(Ordering::SeqCst)
                || !clock.went_idle.swap(false, Ordering::SeqCst)
            {
                return;
            }
            let waiting = clock.reader.lock().ok().and_then(|mut w| w.take());
            if let Some(waker) = waiting {
                waker.wake();
            }
        }
    }
}

/// A response body that holds its request's [`RequestGuard`] until it is done, and tells its connection's
/// clock whether it waits on the client (it handed out a frame the client has not made room for).
#[doc(hidden)]
pub struct GuardedBody<B> {
    inner: B,
    guard: RequestGuard,
    awaiting_client: bool,
}

impl<B> GuardedBody<B> {
    pub fn new(inner: B, guard: RequestGuard) -> Self {
        guard.0.awaiting_client.fetch_add(1, Ordering::Relaxed);
        Self {
            inner,
            guard,
            awaiting_client: true,
        }
    }
}

impl<B> Drop for GuardedBody<B> {
    fn drop(&mut self) {
        let clock = &self.guard.0;
        clock.body_moves.fetch_add(1, Ordering::Relaxed);
        if self.awaiting_client {
            clock.awaiting_client.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl<B: Body + Unpin> Body for GuardedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        let clock = &this.guard.0;
        clock.body_moves.fetch_add(1, Ordering::Relaxed);
        let awaiting = matches!(polled, Poll::Ready(Some(Ok(_))));
        if awaiting != this.awaiting_client {
            this.awaiting_client = awaiting;
            if awaiting {
                clock.awaiting_client.fetch_add(1, Ordering::Relaxed);
            } else {
                clock.awaiting_client.fetch_sub(1, Ordering::Relaxed);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A client took nothing of what the proxy had to send for `limits.idle_timeout` (it stopped reading, or over
/// HTTP/2 opened no window for the answers).
#[derive(Debug, thiserror::Error)]
#[error("the client stopped reading")]
pub(crate) struct WriteStalled;

/// The client socket, with the read deadlines of its [`ConnClock`], and a bound on how long a write may wait
/// for a client that does not read (`limits.idle_timeout`).
pub struct TimedIo<T> {
    inner: T,
    clock: Arc<ConnClock>,
    /// Armed only while a read waits.
    sleep: Option<Pin<Box<Sleep>>>,
    /// Armed only while a write waits; `write_blocked` says it is counting.
    write_stall: Option<Pin<Box<Sleep>>>,
    write_blocked: bool,
    /// Not HTTP/1 (HTTP/2): while requests are in flight, a timer that checks every `limits.idle_timeout`
    /// whether the responses all wait on the client and none moved (its flow-control windows hold them back),
    /// and `body_moves` when it was armed.
    window_stall: Option<WindowStall>,
    head: HeadCheck,
    /// Request heads seen so far on this connection.
    heads_checked: u64,
}

/// The timer of [`TimedIo::window_stalled`], and `body_moves` when it was armed.
struct WindowStall {
    timer: Pin<Box<Sleep>>,
    moves: u64,
    /// Counting for the requests now in flight (not left over from earlier ones).
    armed: bool,
}

/// Where the framing check stands in the bytes the client sends.
enum HeadCheck {
    /// At the start of a request head (or inside one that arrived in pieces: the bytes so far).
    Head(Vec<u8>),
    /// Inside a body of known length: this many bytes to skip.
    Body(u64),
    /// Inside a chunked body: wait until the requests in flight end.
    Unknown,
    /// Not HTTP/1 (HTTP/2, an upgraded tunnel, garbage hyper refuses anyway): no more checks.
    Off,
}

/// Longest head the check keeps in pieces; hyper refuses longer ones itself (`limits.max_header_bytes`).
const MAX_CHECKED_HEAD: usize = 64 * 1024;

impl<T> TimedIo<T> {
    pub fn new(inner: T, clock: Arc<ConnClock>) -> Self {
        Self {
            inner,
            clock,
            sleep: None,
            write_stall: None,
            write_blocked: false,
            window_stall: None,
            head: HeadCheck::Head(Vec::new()),
            heads_checked: 0,
        }
    }

    /// What a write that polled `polled` returns: a write the client has left waiting for the idle timeout
    /// fails (an upgraded tunnel keeps its own timeout).
    fn write_outcome<R>(
        &mut self,
        polled: Poll<io::Result<R>>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<R>> {
        if polled.is_ready() {
            self.write_blocked = false;
            return polled;
        }
        if self.clock.upgraded.load(Ordering::Relaxed) {
            return Poll::Pending;
        }
        let due = || Instant::now() + self.clock.idle_timeout;
        if !self.write_blocked {
            self.write_blocked = true;
            match self.write_stall.as_mut() {
                Some(timer) => timer.as_mut().reset(due()),
                None => self.write_stall = Some(Box::pin(tokio::time::sleep_until(due()))),
            }
        }
        match self.write_stall.as_mut().map(|t| t.as_mut().poll(cx)) {
            Some(Poll::Ready(())) => {
                Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, WriteStalled)))
            }
            _ => Poll::Pending,
        }
    }

    /// Over HTTP/2: has every response in flight waited on the client, none moving, for a whole
    /// `limits.idle_timeout`? (A client that opens no window takes every byte the socket is given, so no write
    /// waits; h2 holds the answers back.) Checked while a read waits; armed only while requests are in flight.
    fn window_stalled(&mut self, cx: &mut Context<'_>) -> bool {
        let clock = &self.clock;
        if !matches!(self.head, HeadCheck::Off) || clock.upgraded.load(Ordering::Relaxed) {
            return false;
        }
        let due = || Instant::now() + clock.idle_timeout;
        let moves = clock.body_moves.load(Ordering::Relaxed);
        if clock.active.load(Ordering::Relaxed) == 0 {
            // Nothing in flight: the next request starts counting afresh.
            if let Some(stall) = self.window_stall.as_mut() {
                stall.armed = false;
            }
            return false;
        }
        let stall = self.window_stall.get_or_insert_with(|| WindowStall {
            timer: Box::pin(tokio::time::sleep_until(due())),
            moves,
            armed: true,
        });
        if !stall.armed {
            stall.timer.as_mut().reset(due());
            stall.moves = moves;
            stall.armed = true;
        }
        loop {
            if stall.timer.as_mut().poll(cx).is_pending() {
                return false;
            }
            let active = clock.active.load(Ordering::Relaxed);
            let moves = clock.body_moves.load(Ordering::Relaxed);
            if moves == stall.moves
                && active > 0
                && clock.awaiting_client.load(Ordering::Relaxed) >= active
            {
                return true;
            }
            stall.moves = moves;
            stall.timer.as_mut().reset(due());
        }
    }

    /// Feeds bytes read from the client to the framing check, as a read does (for the fuzz target).
    #[doc(hidden)]
    pub fn observe(&mut self, bytes: &[u8]) {
        self.check_heads(bytes);
    }

    /// Follows the request stream through `new` bytes: each complete head is checked, known-length bodies
    /// are skipped, so pipelined requests are checked too.
    fn check_heads(&mut self, mut new: &[u8]) {
        if self.clock.upgraded.load(Ordering::Relaxed) {
            // Tunnel bytes from here on.
            self.head = HeadCheck::Off;
            return;
        }
        if matches!(self.head, HeadCheck::Unknown)
            && self.clock.awaiting_head.swap(false, Ordering::Relaxed)
        {
            self.heads_checked = self.clock.heads_served.load(Ordering::Relaxed);
            self.head = HeadCheck::Head(Vec::new());
        }
        while !new.is_empty() {
            match &mut self.head {
                HeadCheck::Off | HeadCheck::Unknown => return,
                HeadCheck::Body(left) => {
                    let skip = new.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
                    *left -= skip as u64;
                    new = &new[skip..];
                    if *left == 0 {
                        self.head = HeadCheck::Head(Vec::new());
                    }
                }
                HeadCheck::Head(so_far) => {
                    // The common case, a whole head in one read, parses in place without copying.
                    let joined;
                    let bytes = if so_far.is_empty() {
                        new
                    } else {
                        so_far.extend_from_slice(new);
                        joined = std::mem::take(so_far);
                        &joined[..]
                    };
                    // After a first head that parsed as HTTP/1, most heads have no framing header at all: a
                    // scan for line starts finds that without a full parse.
                    let quick = if self.heads_checked > 0 {
                        plain_head(bytes)
                    } else {
                        None
                    };
                    let found = match quick {
                        Some(len) => Framing::Complete {
                            len,
                            body: BodyFraming::Length(0),
                        },
                        None => framing(bytes),
                    };
                    match found {
                        Framing::Partial if bytes.len() < MAX_CHECKED_HEAD => {
                            self.head = HeadCheck::Head(bytes.to_vec());
                            return;
                        }
                        Framing::Partial | Framing::NotHttp1 => {
                            self.head = HeadCheck::Off;
                            return;
                        }
                        Framing::Complete { len, body } => {
                            self.heads_checked += 1;
                            // The head ends inside `new`: what follows it there is body or the next head.
                            let after = bytes.len() - len;
                            let rest = &new[new.len().saturating_sub(after)..];
                            self.head = match body {
                                BodyFraming::Length(0) => HeadCheck::Head(Vec::new()),
                                BodyFraming::Length(n) => HeadCheck::Body(n),
                                BodyFraming::Chunked => {
                                    // Its end is seen when the requests in flight end.
                                    self.clock.awaiting_head.store(false, Ordering::Relaxed);
                                    HeadCheck::Unknown
                                }
                                BodyFraming::Ambiguous => {
                                    let n = self.heads_checked;
                                    let _ = self.clock.ambiguous_head.compare_exchange(
                                        0,
                                        n,
                                        Ordering::Relaxed,
                                        Ordering::Relaxed,
                                    );
                                    HeadCheck::Off
                                }
                            };
                            new = rest;
                        }
                    }
                }
            }
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
                    let new = &buf.filled()[before..];
                    this.check_heads(new);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                if this.window_stalled(cx) {
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, WriteStalled)));
                }
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
                // On a busy connection the idle deadline moves later with every request: the timer is only
                // moved earlier here, and when it fires before the current deadline it is re-armed then.
                if deadline < sleep.deadline() {
                    sleep.as_mut().reset(deadline);
                }
                loop {
                    if sleep.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    if Instant::now() >= deadline {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            ReadTimeout { header },
                        )));
                    }
                    sleep.as_mut().reset(deadline);
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
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.write_outcome(polled, cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.write_outcome(polled, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_flush(cx);
        this.write_outcome(polled, cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod idle_tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::task::Wake;

    struct Wakes(AtomicUsize);

    impl Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn counted() -> (Arc<Wakes>, Waker) {
        let wakes = Arc::new(Wakes(AtomicUsize::new(0)));
        (Arc::clone(&wakes), Waker::from(Arc::clone(&wakes)))
    }

    /// A request whose end drops its guard inside the connection's own poll (hyper's HTTP/1.1 server, writing
    /// the response's end) costs no wake: the poll arms the idle deadline as it returns, and the deadline wakes
    /// the connection when it comes.
    #[tokio::test(start_paused = true)]
    async fn a_request_ending_inside_the_connections_poll_arms_the_idle_deadline_without_a_wake() {
        let clock = ConnClock::new(Duration::from_millis(300), Duration::from_secs(1));
        let (wakes, waker) = counted();
        *clock.reader.lock().unwrap() = Some(waker.clone());
        let mut guard = Some(clock.request_started());
        let mut served = std::pin::pin!(std::future::poll_fn(|_| {
            drop(guard.take());
            Poll::<()>::Pending
        }));
        let mut idle = None;
        let mut cx = Context::from_waker(&waker);
        assert!(
            clock
                .drive(served.as_mut(), &mut idle, &mut cx)
                .is_pending()
        );
        assert_eq!(
            wakes.0.load(Ordering::SeqCst),
            0,
            "no wake for the poll's own request"
        );
        let armed = idle.as_ref().map(|t| t.deadline());
        assert_eq!(armed, clock.deadline().map(|(at, _)| at));
        tokio::time::advance(Duration::from_millis(900)).await;
        assert_eq!(wakes.0.load(Ordering::SeqCst), 0);
        tokio::time::advance(Duration::from_millis(200)).await;
        tokio::task::yield_now().await;
        assert_eq!(
            wakes.0.load(Ordering::SeqCst),
            1,
            "the idle deadline wakes the connection"
        );
    }

    /// A request that ends elsewhere (an HTTP/2 stream's task) wakes the read the connection waits in, which
    /// arms the deadline.
    #[tokio::test]
    async fn a_request_ending_outside_the_connections_poll_wakes_its_read() {
        let clock = ConnClock::new(Duration::from_millis(300), Duration::from_secs(1));
        let (wakes, waker) = counted();
        *clock.reader.lock().unwrap() = Some(waker);
        let first = clock.request_started();
        let second = clock.request_started();
        drop(first);
        assert_eq!(
            wakes.0.load(Ordering::SeqCst),
            0,
            "a request is still in flight"
        );
        drop(second);
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1);
        assert!(!clock.went_idle.load(Ordering::SeqCst), "taken by the wake");
    }
}
