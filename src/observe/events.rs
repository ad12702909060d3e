//! The event feed: the last [`KEEP`] state changes an operator wants explained (a backend down and why, a circuit
//! opening, an ejection, a drain, a reload and what it changed), kept in memory for `GET /api/events` and sent
//! live to `GET /api/events/stream`.
//!
//! Events are rare (state changes, not requests): recording one takes a short lock that is never held across an
//! `.await`, so the data path may record the transitions it causes (a circuit opening) without waiting on anyone.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde::Serialize;
use tokio::sync::{Notify, broadcast};

/// How many events are kept.
pub(crate) const KEEP: usize = 500;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Kind {
    BackendDown,
    BackendUp,
    CircuitOpen,
    CircuitHalfOpen,
    CircuitClosed,
    OutlierEjected,
    OutlierReturned,
    BackendDraining,
    BackendDisabled,
    BackendEnabled,
    WeightChanged,
    Reload,
    ReloadFailed,
    DnsChanged,
    DnsFailed,
    CertificateReloaded,
    CertificateFailed,
}

/// How much attention an event deserves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Level {
    Info,
    Warn,
    Error,
}

/// One state change, as `GET /api/events` shows it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Event {
    /// Increases by one per event since the process started.
    pub(crate) id: u64,
    /// RFC 3339, milliseconds.
    pub(crate) at: String,
    pub(crate) kind: Kind,
    pub(crate) level: Level,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) pool: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) backend: Option<String>,
    /// What changed and why, in words (plain text: the page escapes it).
    pub(crate) message: String,
}

/// The feed: the ring of recent events and the live stream.
pub(crate) struct Events {
    recent: Mutex<Recent>,
    live: broadcast::Sender<Arc<Event>>,
    closed: AtomicBool,
    close: Notify,
}

struct Recent {
    next_id: u64,
    events: VecDeque<Arc<Event>>,
}

impl Default for Events {
    fn default() -> Self {
        Self {
            recent: Mutex::new(Recent {
                next_id: 1,
                events: VecDeque::with_capacity(KEEP),
            }),
            live: broadcast::channel(256).0,
            closed: AtomicBool::new(false),
            close: Notify::new(),
        }
    }
}

impl Events {
    /// Records an event about `pool` (and one of its backends) or the process (`pool` `None`).
    pub(crate) fn record(
        &self,
        kind: Kind,
        level: Level,
        pool: Option<&str>,
        backend: Option<&str>,
        message: impl Into<String>,
    ) {
        let at = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
        let event = {
            let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
            let event = Arc::new(Event {
                id: recent.next_id,
                at,
                kind,
                level,
                pool: pool.map(str::to_owned),
                backend: backend.map(str::to_owned),
                message: message.into(),
            });
            recent.next_id += 1;
            if recent.events.len() == KEEP {
                recent.events.pop_front();
            }
            recent.events.push_back(Arc::clone(&event));
            event
        };
        // No subscriber is not an error: the feed is kept either way.
        let _ = self.live.send(event);
    }

    /// The kept events, newest first.
    pub(crate) fn newest_first(&self) -> Vec<Arc<Event>> {
        let recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        recent.events.iter().rev().cloned().collect()
    }

    /// Events recorded from now on. A subscriber that falls more than 256 events behind skips ahead (and is told).
    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.live.subscribe()
    }

    /// Ends every live stream (shutdown), so no open feed holds up the drain.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.close.notify_waiters();
    }

    /// Resolves once [`close`](Self::close) has been called.
    pub(crate) async fn closed(&self) {
        loop {
            let notified = self.close.notified();
            if self.closed.load(Ordering::SeqCst) {
                return;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_500_newest_first() {
        let events = Events::default();
        for i in 0..(KEEP + 20) {
            events.record(
                Kind::BackendDown,
                Level::Warn,
                Some("web"),
                Some("127.0.0.1:1"),
                format!("event {i}"),
            );
        }
        let kept = events.newest_first();
        assert_eq!(kept.len(), KEEP);
        assert_eq!(kept[0].message, format!("event {}", KEEP + 19));
        assert_eq!(kept[KEEP - 1].message, "event 20");
        assert!(kept.windows(2).all(|w| w[0].id == w[1].id + 1));
    }

    #[tokio::test]
    async fn subscribers_see_new_events_and_the_close() {
        let events = Arc::new(Events::default());
        let mut live = events.subscribe();
        events.record(Kind::Reload, Level::Info, None, None, "reloaded");
        let got = live.recv().await.unwrap();
        assert_eq!(got.kind, Kind::Reload);
        let waiting = tokio::spawn({
            let events = Arc::clone(&events);
            async move { events.closed().await }
        });
        events.close();
        tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .unwrap()
            .unwrap();
    }
}
