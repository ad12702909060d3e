//! A pool's queue: when every usable backend is at `max_active_requests`, a request waits (first come, first
//! served) for a slot instead of getting 503 at once, as HAProxy's `maxconn` queue does. A finished request on a
//! capped backend wakes one waiter; nothing spins or polls. A waiter that goes away (its client left, or its
//! time ran out) leaves the queue when its future is dropped.

use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Notify;

/// The waiting requests of one pool, shared by the pools that replace it on reloads (same name).
#[derive(Debug, Default)]
pub(crate) struct Queue {
    waiting: AtomicUsize,
    slot_freed: Notify,
}

/// Why a queued request was refused: the `reason` label of `switchyard_queue_rejections_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum QueueRejection {
    Full,
    Timeout,
}

impl Queue {
    pub(crate) fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Takes a place in the queue, unless `max_waiting` requests wait already.
    pub(crate) fn enter(&self, max_waiting: usize) -> Option<Place<'_>> {
        let mut current = self.waiting.load(Ordering::Relaxed);
        loop {
            if current >= max_waiting {
                return None;
            }
            match self.waiting.compare_exchange_weak(
                current,
                current + 1,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Some(Place(self)),
                Err(seen) => current = seen,
            }
        }
    }

    /// A request on a capped backend finished: the first waiter may take its slot.
    #[inline]
    pub(crate) fn slot_freed(&self) {
        if self.waiting.load(Ordering::Acquire) > 0 {
            self.slot_freed.notify_one();
        }
    }
}

/// A request's place in the queue; dropping it leaves.
#[derive(Debug)]
pub(crate) struct Place<'a>(&'a Queue);

impl Place<'_> {
    /// Waits for the next freed slot (or for one freed since [`tokio::sync::futures::Notified::enable`]).
    pub(crate) fn next_slot(&self) -> tokio::sync::futures::Notified<'_> {
        self.0.slot_freed.notified()
    }
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}
