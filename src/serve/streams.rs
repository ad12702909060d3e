//! HTTP/2 streams run inside their connection's own task, not a task each.
//!
//! hyper hands every HTTP/2 stream (the request's future and the pipe of its response) to an executor. With
//! tokio's, each stream is a task: spawned, registered with the runtime, scheduled behind every other task when
//! its upstream answers, and its response frames written only when the connection's task runs after it. Here
//! the executor is the connection's: a stream is boxed into a slot of its set, its waker marks the slot ready and
//! wakes the connection's task, and that task polls the ready streams before and after hyper's connection, so a
//! batch of answers goes out in the same write. Each slot keeps its waker for the next stream that takes it.
//!
//! Every stream is polled at most once per poll of the connection (more ready ones wake the task again), so
//! one stream cannot starve the rest; a stream that panics is dropped alone, as a task's panic would be.

use std::future::Future;
use std::mem;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Wake, Waker};

type Stream = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The executor hyper's HTTP/2 server spawns a connection's streams on; [`Streams::run`] drives them.
#[derive(Clone, Default)]
pub(crate) struct Streams {
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    set: Mutex<Set>,
    ready: Arc<Ready>,
}

#[derive(Default)]
struct Set {
    /// A stream per slot; `None` while it is polled, or when the slot is free.
    slots: Vec<Option<Stream>>,
    /// Each slot's waker, made with the slot and kept for the streams that take it after.
    wakers: Vec<Arc<SlotWaker>>,
    free: Vec<usize>,
    live: usize,
}

/// The slots to poll, and the connection's task to wake for them.
#[derive(Default)]
struct Ready {
    slots: Mutex<Vec<usize>>,
    task: Mutex<Option<Waker>>,
    /// The connection's task is in [`Streams::run`]'s poll, which looks at `slots` again before it returns: a
    /// wake then (hyper spawning a stream, h2 waking one as frames come) need not schedule the task once more.
    running: AtomicBool,
}

struct SlotWaker {
    slot: usize,
    /// In `Ready::slots` already: a second wake before the poll adds nothing.
    queued: AtomicBool,
    ready: Arc<Ready>,
}

impl Wake for SlotWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if self.queued.swap(true, Ordering::AcqRel) {
            return;
        }
        lock(&self.ready.slots).push(self.slot);
        if self.ready.running.load(Ordering::SeqCst) {
            return;
        }
        if let Some(task) = lock(&self.ready.task).as_ref() {
            task.wake_by_ref();
        }
    }
}

/// The lock's data even if a panic poisoned it: every holder leaves it whole (no user code runs under it).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<F> hyper::rt::Executor<F> for Streams
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, fut: F) {
        let mut set = lock(&self.shared.set);
        let slot = match set.free.pop() {
            Some(slot) => {
                set.slots[slot] = Some(Box::pin(fut));
                slot
            }
            None => {
                let slot = set.slots.len();
                set.slots.push(Some(Box::pin(fut)));
                set.wakers.push(Arc::new(SlotWaker {
                    slot,
                    queued: AtomicBool::new(false),
                    ready: Arc::clone(&self.shared.ready),
                }));
                slot
            }
        };
        set.live += 1;
        let waker = Arc::clone(&set.wakers[slot]);
        drop(set);
        // Polled in the connection's task when this call returns to it.
        Waker::from(waker).wake();
    }
}

impl Streams {
    /// Drives `conn` (hyper's connection) and the streams it spawns here, until both are done: the ready streams,
    /// the connection, then the streams that became ready while it ran (new ones among them).
    pub(crate) async fn run<F: Future>(&self, conn: F) -> F::Output {
        let mut conn = std::pin::pin!(conn);
        let mut done = None;
        let mut batch = Vec::new();
        let ready = &self.shared.ready;
        std::future::poll_fn(|cx| {
            self.watch(cx);
            ready.running.store(true, Ordering::SeqCst);
            self.poll_ready(&mut batch);
            if done.is_none() {
                if let Poll::Ready(out) = conn.as_mut().poll(cx) {
                    done = Some(out);
                }
                self.poll_ready(&mut batch);
            }
            ready.running.store(false, Ordering::SeqCst);
            if !lock(&ready.slots).is_empty() {
                cx.waker().wake_by_ref();
            }
            if lock(&self.shared.set).live > 0 {
                return Poll::Pending;
            }
            match done.take() {
                Some(out) => Poll::Ready(out),
                None => Poll::Pending,
            }
        })
        .await
    }

    fn watch(&self, cx: &Context<'_>) {
        let mut task = lock(&self.shared.ready.task);
        if !task.as_ref().is_some_and(|t| t.will_wake(cx.waker())) {
            *task = Some(cx.waker().clone());
        }
    }

    /// Polls each stream that was ready when called, once.
    fn poll_ready(&self, batch: &mut Vec<usize>) {
        mem::swap(batch, &mut *lock(&self.shared.ready.slots));
        for slot in batch.drain(..) {
            let (stream, waker) = {
                let mut set = lock(&self.shared.set);
                let Some(waker) = set.wakers.get(slot).map(Arc::clone) else {
                    continue;
                };
                // Cleared before the poll: a wake while it runs queues the slot again. Cleared also when the
                // stream has finished since the wake, or the slot's next stream could never be queued.
                waker.queued.store(false, Ordering::Release);
                let Some(stream) = set.slots[slot].take() else {
                    continue;
                };
                (stream, waker)
            };
            let waker = Waker::from(waker);
            let mut stream = stream;
            let polled = catch_unwind(AssertUnwindSafe(|| {
                stream.as_mut().poll(&mut Context::from_waker(&waker))
            }));
            let mut set = lock(&self.shared.set);
            match polled {
                Ok(Poll::Pending) => set.slots[slot] = Some(stream),
                Ok(Poll::Ready(())) | Err(_) => {
                    // A panic was reported by the panic hook, as a task's would be; the stream is dropped.
                    set.free.push(slot);
                    set.live -= 1;
                    drop(set);
                    drop(stream);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::rt::Executor;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    /// Streams that finish in another order than they started, each woken from another task, all complete; the
    /// run ends only when the connection's future and every stream are done; slots are reused.
    #[tokio::test]
    async fn streams_woken_from_other_tasks_all_finish_and_slots_are_reused() {
        let streams = Streams::default();
        let finished = Arc::new(AtomicUsize::new(0));
        let spawner = streams.clone();
        let count = Arc::clone(&finished);
        let conn = async move {
            for round in 0..3u64 {
                let mut senders = Vec::new();
                for i in 0..10u64 {
                    let (tx, rx) = tokio::sync::oneshot::channel::<u64>();
                    senders.push(tx);
                    let count = Arc::clone(&count);
                    spawner.execute(async move {
                        assert_eq!(rx.await.ok(), Some(round * 100 + i));
                        count.fetch_add(1, Ordering::SeqCst);
                    });
                }
                let answers = tokio::spawn(async move {
                    for (i, tx) in senders.into_iter().enumerate().rev() {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        let _ = tx.send(round * 100 + i as u64);
                    }
                });
                let _ = answers.await;
                tokio::task::yield_now().await;
            }
            "conn done"
        };
        let out = tokio::time::timeout(Duration::from_secs(10), streams.run(conn))
            .await
            .expect("the run ends");
        assert_eq!(out, "conn done");
        assert_eq!(finished.load(Ordering::SeqCst), 30);
        let set = lock(&streams.shared.set);
        assert_eq!(set.live, 0);
        assert!(set.slots.len() <= 20, "slots reused: {}", set.slots.len());
    }

    /// A stream that outlives the connection's future keeps the run going until it finishes; a stream that
    /// panics is dropped alone.
    #[tokio::test]
    async fn the_run_waits_for_streams_and_survives_a_panicking_one() {
        let streams = Streams::default();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let late = Arc::new(AtomicBool::new(false));
        let spawner = streams.clone();
        let flag = Arc::clone(&late);
        let conn = async move {
            spawner.execute(async move {
                let _ = rx.await;
                flag.store(true, Ordering::SeqCst);
            });
            spawner.execute(async {
                tokio::task::yield_now().await;
                panic!("a stream's panic (expected in this test)");
            });
        };
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let _ = tx.send(());
        });
        tokio::time::timeout(Duration::from_secs(10), streams.run(conn))
            .await
            .expect("the run ends");
        assert!(
            late.load(Ordering::SeqCst),
            "the late stream finished first"
        );
        assert_eq!(lock(&streams.shared.set).live, 0);
    }

    /// A stream that wakes itself as it finishes leaves its slot queued; the next stream in that slot must
    /// still be polled (it hung every connection before the flag was cleared for finished slots too).
    #[tokio::test]
    async fn a_slot_freed_with_a_wake_pending_runs_its_next_stream() {
        let streams = Streams::default();
        let spawner = streams.clone();
        let ran = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&ran);
        let conn = async move {
            spawner.execute(std::future::poll_fn(|cx| {
                cx.waker().wake_by_ref();
                Poll::Ready(())
            }));
            tokio::task::yield_now().await;
            tokio::task::yield_now().await;
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            spawner.execute(async move {
                if rx.await.is_ok() {
                    flag.store(true, Ordering::SeqCst);
                }
            });
            let _ = tx.send(());
        };
        tokio::time::timeout(Duration::from_secs(5), streams.run(conn))
            .await
            .expect("the second stream ran and the run ended");
        assert!(ran.load(Ordering::SeqCst));
        assert_eq!(lock(&streams.shared.set).slots.len(), 1);
    }
}
