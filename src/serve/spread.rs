//! Connections spread evenly over the worker runtimes.
//!
//! Every worker accepts on the same socket, and the kernel wakes them all for each new connection: the first to
//! ask gets it. A worker that is already awake asks first every time, so a burst of new connections lands on
//! whichever worker was running when it came, and stays there for the connections' whole keep-alive life (two
//! workers under `wrk -c50` spent 98 and 517 CPU ticks). Here a worker that holds more connections than another
//! by more than [`SLACK`] leaves the next ones to the others until the counts come back within it. The worker
//! with the fewest connections never waits, so someone always accepts.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};

use tokio::sync::Notify;

/// How many more connections than another worker a worker may hold and still accept.
const SLACK: usize = 1;

/// The connections each worker holds on one listener.
pub(crate) struct Spread {
    workers: Box<[Worker]>,
}

/// One worker's count, on a cache line of its own: each worker writes its own on every accept and close.
#[repr(align(64))]
struct Worker {
    open: AtomicUsize,
    /// Its accept loop waits for its turn.
    waiting: AtomicBool,
    turn: Notify,
}

/// Counts a worker's connection while it is open.
pub(crate) struct Held {
    spread: Arc<Spread>,
    me: usize,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.spread.workers[self.me].open.fetch_sub(1, SeqCst);
        self.spread.wake_the_waiting();
    }
}

impl Spread {
    pub(crate) fn new(workers: usize) -> Arc<Self> {
        Arc::new(Self {
            workers: (0..workers)
                .map(|_| Worker {
                    open: AtomicUsize::new(0),
                    waiting: AtomicBool::new(false),
                    turn: Notify::new(),
                })
                .collect(),
        })
    }

    /// Does worker `me` hold more than its share?
    fn ahead(&self, me: usize) -> bool {
        let mine = self.workers[me].open.load(SeqCst);
        self.workers
            .iter()
            .enumerate()
            .any(|(i, w)| i != me && mine > w.open.load(SeqCst).saturating_add(SLACK))
    }

    /// Returns once worker `me` may accept the next connection.
    pub(crate) async fn my_turn(&self, me: usize) {
        let worker = &self.workers[me];
        while self.ahead(me) {
            // Say so before looking again: a count that changes after the second look sees the flag.
            worker.waiting.store(true, SeqCst);
            let waiting = Waiting(&worker.waiting);
            if self.ahead(me) {
                worker.turn.notified().await;
            }
            drop(waiting);
        }
    }

    /// Counts a connection worker `me` accepted, until the returned guard drops.
    pub(crate) fn hold(self: &Arc<Self>, me: usize) -> Held {
        self.workers[me].open.fetch_add(1, SeqCst);
        self.wake_the_waiting();
        Held {
            spread: Arc::clone(self),
            me,
        }
    }

    /// Worker `me` accepts no more (stopped, or could not start): the others stop leaving connections to it.
    pub(crate) fn leave(&self, me: usize) {
        self.workers[me].open.store(usize::MAX, SeqCst);
        self.wake_the_waiting();
    }

    fn wake_the_waiting(&self) {
        for (i, w) in self.workers.iter().enumerate() {
            if w.waiting.load(SeqCst) && !self.ahead(i) {
                w.turn.notify_one();
            }
        }
    }
}

/// Clears a worker's waiting flag however its wait ends (an accept loop stopped mid-wait too).
struct Waiting<'a>(&'a AtomicBool);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.store(false, SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn turn_comes(spread: &Spread, me: usize) -> bool {
        tokio::time::timeout(Duration::from_secs(5), spread.my_turn(me))
            .await
            .is_ok()
    }

    async fn turn_waits(spread: &Spread, me: usize) -> bool {
        tokio::time::timeout(Duration::from_millis(20), spread.my_turn(me))
            .await
            .is_err()
    }

    #[tokio::test]
    async fn a_worker_ahead_waits_until_another_catches_up() {
        let spread = Spread::new(2);
        let a1 = spread.hold(0);
        let _a2 = spread.hold(0);
        assert!(
            turn_waits(&spread, 0).await,
            "2 against 0 is more than the slack"
        );
        assert!(
            turn_comes(&spread, 1).await,
            "the worker behind never waits"
        );

        let waiter = {
            let spread = Arc::clone(&spread);
            tokio::spawn(async move { turn_comes(&spread, 0).await })
        };
        tokio::task::yield_now().await;
        let _b1 = spread.hold(1);
        assert!(
            waiter.await.unwrap(),
            "the other worker's accept wakes the one waiting"
        );

        let _a3 = spread.hold(0);
        assert!(turn_waits(&spread, 0).await);
        let waiter = {
            let spread = Arc::clone(&spread);
            tokio::spawn(async move { turn_comes(&spread, 0).await })
        };
        tokio::task::yield_now().await;
        drop(a1);
        assert!(waiter.await.unwrap(), "a close of its own wakes it too");
    }

    #[tokio::test]
    async fn a_worker_that_left_is_not_waited_for() {
        let spread = Spread::new(3);
        let _held: Vec<Held> = (0..5).map(|_| spread.hold(0)).collect();
        assert!(turn_waits(&spread, 0).await);
        spread.leave(1);
        assert!(turn_waits(&spread, 0).await, "worker 2 still has none");
        spread.leave(2);
        assert!(turn_comes(&spread, 0).await, "nobody else accepts");
    }

    /// Two worker runtimes accept on one real socket: a burst of connections made before either accepts is
    /// shared between them, each request answered with the name of the worker thread that serves it.
    #[test]
    fn a_burst_of_connections_is_shared_by_the_workers() {
        use crate::proxy::{ConnInfo, plain};
        use crate::serve::{ListenerMode, ListenerTask, ModeSource};
        use http::{Request, StatusCode};
        use http_body_util::BodyExt;
        use hyper::body::Incoming;
        use hyper_util::rt::TokioIo;

        let mut ends = Vec::new();
        let workers: Vec<tokio::runtime::Handle> = ["spread-a", "spread-b"]
            .into_iter()
            .map(|name| {
                let (handle_tx, handle_rx) = std::sync::mpsc::channel();
                let (end_tx, end_rx) = tokio::sync::oneshot::channel::<()>();
                ends.push(end_tx);
                std::thread::Builder::new()
                    .name(name.into())
                    .spawn(move || {
                        let rt = tokio::runtime::Builder::new_current_thread()
                            .enable_all()
                            .build()
                            .unwrap();
                        handle_tx.send(rt.handle().clone()).unwrap();
                        rt.block_on(async move {
                            let _ = end_rx.await;
                        });
                    })
                    .unwrap();
                handle_rx.recv().unwrap()
            })
            .collect();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let served = rt.block_on(async {
            let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let bound = tcp.local_addr().unwrap();
            let handler = |_req: Request<Incoming>, _conn: ConnInfo| async move {
                let name = std::thread::current().name().map(str::to_owned);
                plain(
                    StatusCode::OK,
                    if name.as_deref() == Some("spread-a") {
                        "a"
                    } else {
                        "b"
                    },
                )
            };
            let listener = ListenerTask::spawn(
                bound,
                tcp,
                ModeSource::Fixed(Arc::new(ListenerMode::Plain)),
                None,
                handler,
                "test",
                &workers,
            )
            .unwrap();
            let mut streams = Vec::new();
            for _ in 0..16 {
                streams.push(tokio::net::TcpStream::connect(bound).await.unwrap());
            }
            let mut served = String::new();
            let mut open = Vec::new();
            for stream in streams {
                let (mut sender, conn) =
                    hyper::client::conn::http1::handshake(TokioIo::new(stream))
                        .await
                        .unwrap();
                tokio::spawn(conn);
                let req = Request::get("/")
                    .header("host", "spread.test")
                    .body(http_body_util::Empty::<bytes::Bytes>::new())
                    .unwrap();
                let resp = sender.send_request(req).await.unwrap();
                let body = resp.into_body().collect().await.unwrap().to_bytes();
                served.push_str(std::str::from_utf8(&body).unwrap());
                open.push(sender);
            }
            drop(open);
            let _ = listener.stop(Duration::ZERO).await;
            served
        });
        drop(ends);
        let a = served.matches('a').count();
        let b = served.matches('b').count();
        assert_eq!(a + b, 16, "{served}");
        assert!(
            a.abs_diff(b) <= 2,
            "served by a {a} times, by b {b} times: {served}"
        );
    }
}
