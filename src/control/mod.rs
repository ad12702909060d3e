//! The control plane: the [`supervisor`] that applies reloads and owns the listeners and the health and
//! discovery tasks, the file [`watch`]er, DNS [`discovery`], and active [`health`] checks.
//!
//! It talks to the data path only by publishing a new [`crate::router::Snapshot`] (one `ArcSwap::store`) and by
//! flipping per-backend state (health, drain) on shared [`crate::balance::backend::Backend`]s. Everything else
//! asks it through [`Command`]s on one channel.

pub(crate) mod discovery;
pub(crate) mod health;
pub(crate) mod supervisor;
mod watch;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use crate::observe::metrics::Metrics;
use crate::router::Snapshot;

/// How long a removed backend's metric series stay once it has drained: long enough for every scrape
/// (Prometheus' default interval is a minute) to see its last counts, so `increase()` over the pool loses none.
static SERIES_GRACE_MS: AtomicU64 = AtomicU64::new(5 * 60 * 1000);

/// Shortens [`series_grace`] for the whole process (tests).
#[doc(hidden)]
pub fn set_series_grace(grace: Duration) {
    SERIES_GRACE_MS.store(grace.as_millis() as u64, Ordering::Relaxed);
}

pub(crate) fn series_grace() -> Duration {
    Duration::from_millis(SERIES_GRACE_MS.load(Ordering::Relaxed))
}

/// What the data path and the control plane share.
pub struct Shared {
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    pub(crate) metrics: Arc<Metrics>,
    /// The bound addresses of the proxy listeners, in config order.
    pub listen_addrs: ArcSwap<Vec<SocketAddr>>,
    /// Set once shutdown begins.
    pub(crate) shutting_down: AtomicBool,
    pub(crate) control: mpsc::Sender<Command>,
    /// The runtimes that serve client connections, one accept loop each per proxy listener; empty: the
    /// runtime `start` was called on.
    pub(crate) workers: Vec<tokio::runtime::Handle>,
}

/// What asked for a reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// The watcher saw the file change: a reload only if the content differs from the last one applied (or the
    /// last reload failed).
    FileChange,
    /// SIGHUP: always re-read and apply.
    Signal,
    /// `POST /api/reload`: always re-read and apply.
    Admin,
}

/// What a reload did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReloadOutcome {
    /// False when a file change left the content as it was (nothing was applied or counted).
    pub(crate) applied: bool,
    pub backends_added: Vec<String>,
    pub(crate) backends_removed: Vec<String>,
    pub(crate) listeners_added: Vec<String>,
    pub(crate) listeners_removed: Vec<String>,
    /// Settings that changed but only take effect at the next restart.
    pub(crate) restart_required: Vec<String>,
}

impl ReloadOutcome {
    /// One line for the event feed: what asked for the reload and what it changed.
    pub(crate) fn describe(&self, trigger: Trigger, unchanged: bool) -> String {
        let by = match trigger {
            Trigger::FileChange => "file change",
            Trigger::Signal => "SIGHUP",
            Trigger::Admin => "admin API",
        };
        let mut parts = Vec::new();
        for (what, list) in [
            ("backends added", &self.backends_added),
            ("backends removed", &self.backends_removed),
            ("listeners added", &self.listeners_added),
            ("listeners removed", &self.listeners_removed),
            ("needs a restart", &self.restart_required),
        ] {
            if !list.is_empty() {
                parts.push(format!("{what}: {}", list.join(", ")));
            }
        }
        let changed = match (parts.is_empty(), unchanged) {
            (_, true) => "the file was unchanged".to_owned(),
            (true, false) => "settings changed, no backend or listener added or removed".to_owned(),
            (false, false) => parts.join("; "),
        };
        format!("config reloaded ({by}): {changed}")
    }
}

/// Why a reload changed nothing (the message names file, line and field, as `validate` does).
#[derive(Debug, Clone, thiserror::Error)]
pub enum ReloadError {
    #[error("this switchyard was started without a config file; there is nothing to reload")]
    NoFile,
    #[error("switchyard is shutting down")]
    ShuttingDown,
    #[error("{0}")]
    Refused(String),
}

/// What the control loop can be asked.
pub(crate) enum Command {
    Reload {
        trigger: Trigger,
        reply: Option<oneshot::Sender<Result<ReloadOutcome, ReloadError>>>,
    },
    Shutdown {
        reply: oneshot::Sender<()>,
    },
    /// Rebuild the snapshot from the config in force (a runtime weight changed: selectors are rebuilt).
    Rebuild {
        reply: oneshot::Sender<()>,
    },
}

/// Asks the control loop to rebuild the snapshot from the config in force, and waits until it has.
pub(crate) async fn request_rebuild(shared: &Shared) -> Result<(), ReloadError> {
    let (reply, done) = oneshot::channel();
    shared
        .control
        .send(Command::Rebuild { reply })
        .await
        .map_err(|_| ReloadError::ShuttingDown)?;
    done.await.map_err(|_| ReloadError::ShuttingDown)
}

/// Asks the control loop for a reload and waits for its outcome.
pub async fn request_reload(
    shared: &Shared,
    trigger: Trigger,
) -> Result<ReloadOutcome, ReloadError> {
    let (reply, outcome) = oneshot::channel();
    shared
        .control
        .send(Command::Reload {
            trigger,
            reply: Some(reply),
        })
        .await
        .map_err(|_| ReloadError::ShuttingDown)?;
    outcome.await.unwrap_or(Err(ReloadError::ShuttingDown))
}
