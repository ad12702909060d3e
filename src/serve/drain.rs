//! Graceful drain of a listener's connections: each connection runs under a [`DrainWatch`]; [`Drain::shutdown`]
//! asks every one to finish the requests it has (hyper's `graceful_shutdown`: HTTP/1 closes after the response
//! in flight, or at once when idle; HTTP/2 sends GOAWAY) and waits until all have ended.
//!
//! hyper-util's `GracefulShutdown` does the same for its own connection types; this one takes any connection
//! with a shutdown call, so HTTP/1 connections can be served by hyper's own builder (with upgrades), without
//! hyper-util's version sniffing in front.

use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Poll, Waker};

use tokio::sync::Notify;

/// What the listener and its connections share.
#[derive(Default)]
struct Shared {
    draining: AtomicBool,
    /// Wakes the connections when the drain starts.
    start: Notify,
    /// Connections being served.
    live: AtomicUsize,
    /// Wakes the drain when the last connection has ended.
    ended: Notify,
}

/// The listener's side: starts the drain and waits for it.
#[doc(hidden)]
#[derive(Default)]
pub struct Drain {
    shared: Arc<Shared>,
}

impl Drain {
    pub fn new() -> Self {
        Self::default()
    }

    /// What one connection holds while it is served.
    pub fn watcher(&self) -> DrainWatch {
        self.shared.live.fetch_add(1, Ordering::AcqRel);
        DrainWatch {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Tells every connection to finish and resolves when the last one has ended.
    pub async fn shutdown(self) {
        let shared = &self.shared;
        shared.draining.store(true, Ordering::SeqCst);
        shared.start.notify_waiters();
        loop {
            // Made before the count is read: the last connection's `notify_one` leaves a permit if it ends
            // in between.
            let ended = shared.ended.notified();
            if shared.live.load(Ordering::Acquire) == 0 {
                return;
            }
            ended.await;
        }
    }
}

/// One connection's part in the drain: the connection counts as open while this lives.
#[doc(hidden)]
pub struct DrainWatch {
    shared: Arc<Shared>,
}

impl Drop for DrainWatch {
    fn drop(&mut self) {
        if self.shared.live.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.shared.ended.notify_one();
        }
    }
}

impl DrainWatch {
    /// Resolves when the drain starts (never, if the listener is gone without one).
    pub(crate) async fn started(&mut self) {
        loop {
            let mut start = pin!(self.shared.start.notified());
            start.as_mut().enable();
            if self.shared.draining.load(Ordering::SeqCst) {
                return;
            }
            start.await;
        }
    }

    /// Runs `conn` to its end; when the drain starts first, calls `shutdown` on it and lets it finish.
    ///
    /// The drain's notification is polled once, and again only when the drain has started or the task's waker
    /// changed: the connection's task wakes two or three times per request, and each poll of a registered
    /// notification takes its lock.
    pub(crate) async fn watch<C, T>(self, conn: C, shutdown: impl FnOnce(Pin<&mut C>)) -> T
    where
        C: Future<Output = T>,
    {
        let mut conn = pin!(conn);
        let shared = &*self.shared;
        let mut start = pin!(shared.start.notified());
        let mut registered: Option<Waker> = None;
        let ended = poll_fn(|cx| {
            if let Poll::Ready(done) = conn.as_mut().poll(cx) {
                return Poll::Ready(Some(done));
            }
            let draining = shared.draining.load(Ordering::SeqCst);
            if draining || !registered.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                registered = Some(cx.waker().clone());
                if start.as_mut().poll(cx).is_ready() || shared.draining.load(Ordering::SeqCst) {
                    return Poll::Ready(None);
                }
            }
            Poll::Pending
        })
        .await;
        if let Some(done) = ended {
            return done;
        }
        shutdown(conn.as_mut());
        conn.await
    }
}
