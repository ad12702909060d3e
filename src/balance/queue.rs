//! A pool's queue: when every usable backend is at `max_active_requests`, a request waits, first come first
//! served, for a slot instead of getting 503 at once, as HAProxy's `maxconn` queue does. A finished request on a
//! capped backend wakes the waiter at the head of the line (a backend coming back wakes them all); nothing
//! spins or polls. A waiter that goes away (its client left, or its time ran out) leaves the line when its
//! future is dropped, and a wake-up it received but did not use passes to the next one.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::oneshot;

/// The waiting requests of one pool, shared by the pools that replace it on reloads (same name).
#[derive(Debug, Default)]
pub(crate) struct Queue {
    waiting: AtomicUsize,
    /// The line: one sender per waiter, woken from the front. Held only to push or pop, never across an await.
    line: Mutex<VecDeque<oneshot::Sender<()>>>,
}

/// Why a queued request was refused: the `reason` label of `switchyard_queue_rejections_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum QueueRejection {
    Full,
    Timeout,
}

impl Queue {
    pub(crate) fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }

    /// Takes a place in the queue, unless `max_waiting` requests wait already.
    pub(crate) fn enter(&self, max_waiting: usize) -> Option<Place<'_>> {
        let mut current = self.waiting.load(Ordering::SeqCst);
        loop {
            if current >= max_waiting {
                return None;
            }
            match self.waiting.compare_exchange_weak(
                current,
                current + 1,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => {
                    return Some(Place {
                        queue: self,
                        wake: None,
                        woken: false,
                    });
                }
                Err(seen) => current = seen,
            }
        }
    }

    /// A slot came free (a request on a capped backend finished): the first waiter still there may take it.
    #[inline]
    pub(crate) fn slot_freed(&self) {
        if self.waiting.load(Ordering::SeqCst) > 0 {
            self.wake_first();
        }
    }

    #[cold]
    fn wake_first(&self) {
        let mut line = self.line.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(waiter) = line.pop_front() {
            if waiter.send(()).is_ok() {
                return;
            }
        }
    }

    /// Something other than a finished request may have made room (a backend came back, was re-enabled, was
    /// added): every waiter tries again, in order.
    pub(crate) fn wake_all(&self) {
        if self.waiting.load(Ordering::SeqCst) == 0 {
            return;
        }
        let woken: Vec<_> = {
            let mut line = self.line.lock().unwrap_or_else(|p| p.into_inner());
            line.drain(..).collect()
        };
        for waiter in woken {
            let _ = waiter.send(());
        }
    }
}

/// A request's place in the queue; dropping it leaves.
#[derive(Debug)]
pub(crate) struct Place<'a> {
    queue: &'a Queue,
    /// What wakes it, while it is in line.
    wake: Option<oneshot::Receiver<()>>,
    /// Woken and not yet done with the wake-up: if it leaves now, the next waiter gets it.
    woken: bool,
}

impl Place<'_> {
    /// Gets in line (at the front after a wake-up that found no slot after all, so it keeps its turn).
    pub(crate) fn line_up(&mut self, front: bool) {
        let (tx, rx) = oneshot::channel();
        {
            let mut line = self.queue.line.lock().unwrap_or_else(|p| p.into_inner());
            if front {
                line.push_front(tx);
            } else {
                line.push_back(tx);
            }
        }
        self.wake = Some(rx);
        self.woken = false;
        // Order the line-up before the waiter's next look at the backends' counts (a request ending now then
        // sees this waiter, or this waiter sees its slot).
        std::sync::atomic::fence(Ordering::SeqCst);
    }

    /// Waits for its wake-up.
    pub(crate) async fn woken(&mut self) {
        if let Some(wake) = self.wake.as_mut() {
            let _ = wake.await;
        }
        self.wake = None;
        self.woken = true;
    }
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        self.queue.waiting.fetch_sub(1, Ordering::SeqCst);
        let unused = self.woken || self.wake.as_mut().is_some_and(|w| w.try_recv().is_ok());
        if unused {
            self.queue.wake_first();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waiters_are_woken_first_come_first_served_and_pass_on_unused_wakeups() {
        let q = Queue::default();
        let mut a = q.enter(3).unwrap();
        let mut b = q.enter(3).unwrap();
        let mut c = q.enter(3).unwrap();
        assert!(q.enter(3).is_none(), "full");
        for p in [&mut a, &mut b, &mut c] {
            p.line_up(false);
        }
        q.slot_freed();
        let now = |p: &mut Place<'_>| p.wake.as_mut().is_some_and(|w| w.try_recv().is_ok());
        assert!(now(&mut a), "the first in line is woken");
        assert!(!now(&mut b));
        // a was woken but leaves without using it: b gets the wake-up.
        a.woken = true;
        drop(a);
        assert!(now(&mut b));
        // b found no slot after all: back at the front, ahead of c.
        b.line_up(true);
        q.slot_freed();
        assert!(now(&mut b));
        assert!(!now(&mut c));
        // A waiter whose wake-up arrived as it left passes it on.
        c.line_up(false);
        b.line_up(false);
        q.slot_freed();
        drop(c);
        assert!(now(&mut b), "c's wake-up went to b");
        b.line_up(false);
        q.wake_all();
        b.woken().await;
        drop(b);
        assert_eq!(q.waiting(), 0);
    }
}
