//! Graceful drain of a listener's connections: each connection runs under a [`DrainWatch`]; [`Drain::shutdown`]
//! asks every one to finish the requests it has (hyper's `graceful_shutdown`: HTTP/1 closes after the response
//! in flight, or at once when idle; HTTP/2 sends GOAWAY) and waits until all have ended.
//!
//! hyper-util's `GracefulShutdown` does the same for its own connection types; this one takes any connection
//! with a shutdown call, so HTTP/1 connections can be served by hyper's own builder (with upgrades), without
//! hyper-util's version sniffing in front.

use std::future::Future;
use std::pin::Pin;

use tokio::sync::{mpsc, watch};

/// The listener's side: starts the drain and waits for it.
#[doc(hidden)]
pub struct Drain {
    signal: watch::Sender<bool>,
    alive: mpsc::Sender<()>,
    ended: mpsc::Receiver<()>,
}

impl Default for Drain {
    fn default() -> Self {
        Self::new()
    }
}

impl Drain {
    pub fn new() -> Self {
        let (signal, _) = watch::channel(false);
        let (alive, ended) = mpsc::channel(1);
        Self {
            signal,
            alive,
            ended,
        }
    }

    /// What one connection holds while it is served.
    pub fn watcher(&self) -> DrainWatch {
        DrainWatch {
            signal: self.signal.subscribe(),
            _alive: self.alive.clone(),
        }
    }

    /// Tells every connection to finish and resolves when the last one has ended.
    pub async fn shutdown(self) {
        let Self {
            signal,
            alive,
            mut ended,
        } = self;
        signal.send_replace(true);
        drop(alive);
        // Nothing is ever sent: `None` once every watcher is dropped.
        let _ = ended.recv().await;
    }
}

/// One connection's part in the drain: the connection counts as open while this lives.
#[doc(hidden)]
pub struct DrainWatch {
    signal: watch::Receiver<bool>,
    _alive: mpsc::Sender<()>,
}

impl DrainWatch {
    /// Resolves when the drain starts (never, if the listener is gone without one).
    pub(crate) async fn started(&mut self) {
        if self.signal.wait_for(|draining| *draining).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Runs `conn` to its end; when the drain starts first, calls `shutdown` on it and lets it finish.
    pub(crate) async fn watch<C, T>(mut self, conn: C, shutdown: impl FnOnce(Pin<&mut C>)) -> T
    where
        C: Future<Output = T>,
    {
        let mut conn = std::pin::pin!(conn);
        tokio::select! {
            biased;
            done = conn.as_mut() => return done,
            () = self.started() => {}
        }
        shutdown(conn.as_mut());
        conn.await
    }
}
