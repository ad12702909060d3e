//! The control loop: applies reloads (file change, SIGHUP, `POST /api/reload`), owns the listeners and the
//! health-check tasks, and runs the shutdown.
//!
//! A reload changes nothing unless the new file is valid and every new listener binds. Then the new routing
//! table is published in one `ArcSwap::store`: a backend whose pool and address are unchanged is the same `Arc`
//! in the new table, so it keeps its health, breaker, in-flight count, drain flag and idle connections.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::backend::Backend;
use crate::config::{self, Config};
use crate::health::{self, HealthCheckSettings};
use crate::proxy::Proxy;
use crate::router::Snapshot;
use crate::server::{ListenerTask, Shared, bind};

/// What asked for a reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// The watcher saw the file change: a reload only if the content differs from the last one applied.
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
    pub applied: bool,
    pub backends_added: Vec<String>,
    pub backends_removed: Vec<String>,
    pub listeners_added: Vec<String>,
    pub listeners_removed: Vec<String>,
    /// Settings that changed but only take effect at the next restart.
    pub restart_required: Vec<String>,
}

pub(crate) enum Command {
    Reload {
        trigger: Trigger,
        reply: Option<oneshot::Sender<Result<ReloadOutcome, String>>>,
    },
    Shutdown {
        reply: oneshot::Sender<()>,
    },
}

/// A health-check task and what it was started with; aborted when dropped.
struct HealthTask {
    backend: Arc<Backend>,
    settings: HealthCheckSettings,
    task: JoinHandle<()>,
}

impl Drop for HealthTask {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub(crate) struct Supervisor {
    shared: Arc<Shared>,
    proxy: Arc<Proxy>,
    path: Option<PathBuf>,
    /// The text of the last config applied, to ignore file events that change nothing.
    applied_text: Option<String>,
    listeners: Vec<ListenerTask>,
    admin: Option<ListenerTask>,
    health: HashMap<(String, String), HealthTask>,
    _watcher: Option<notify::RecommendedWatcher>,
}

impl Supervisor {
    pub fn new(
        shared: Arc<Shared>,
        proxy: Arc<Proxy>,
        path: Option<PathBuf>,
        listeners: Vec<ListenerTask>,
        admin: ListenerTask,
    ) -> Self {
        let applied_text = path
            .as_deref()
            .and_then(|p| std::fs::read_to_string(p).ok());
        let watcher = path
            .as_deref()
            .and_then(|p| watch_file(p, shared.control.clone()));
        let mut s = Self {
            shared,
            proxy,
            path,
            applied_text,
            listeners,
            admin: Some(admin),
            health: HashMap::new(),
            _watcher: watcher,
        };
        s.reconcile_health();
        s
    }

    pub async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        while let Some(command) = commands.recv().await {
            match command {
                Command::Reload { trigger, reply } => {
                    let outcome = self.reload(trigger).await;
                    if let Some(reply) = reply {
                        let _ = reply.send(outcome);
                    }
                }
                Command::Shutdown { reply } => {
                    self.shutdown().await;
                    let _ = reply.send(());
                    return;
                }
            }
        }
    }

    async fn reload(&mut self, trigger: Trigger) -> Result<ReloadOutcome, String> {
        let Some(path) = self.path.clone() else {
            return Err(
                "this switchyard was started without a config file; there is nothing to reload"
                    .to_owned(),
            );
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => {
                let error = format!("{}: cannot read the config file: {e}", path.display());
                return self.failed(error);
            }
        };
        if trigger == Trigger::FileChange && self.applied_text.as_deref() == Some(text.as_str()) {
            tracing::debug!(file = %path.display(), "config file event without a change of content; ignored");
            return Ok(ReloadOutcome::default());
        }
        let config = match config::parse(&text, &path.display().to_string()) {
            Ok(c) => c,
            Err(e) => return self.failed(e.to_string()),
        };
        match self.apply(config).await {
            Ok(outcome) => {
                self.applied_text = Some(text);
                self.shared.metrics.reload_result(true);
                tracing::info!(
                    ?trigger,
                    added = ?outcome.backends_added,
                    removed = ?outcome.backends_removed,
                    listeners_added = ?outcome.listeners_added,
                    listeners_removed = ?outcome.listeners_removed,
                    "config reloaded"
                );
                for what in &outcome.restart_required {
                    tracing::warn!("{what}");
                }
                Ok(outcome)
            }
            Err(e) => self.failed(e),
        }
    }

    fn failed(&self, error: String) -> Result<ReloadOutcome, String> {
        self.shared.metrics.reload_result(false);
        tracing::error!("config reload failed; still serving the previous config:\n{error}");
        Err(error)
    }

    async fn apply(&mut self, new: Config) -> Result<ReloadOutcome, String> {
        let old = self.shared.config.load_full();
        if new.admin.address != old.admin.address {
            return Err(format!(
                "admin.address changed from {} to {}: the admin listener moves only on a restart; reload refused",
                old.admin.address, new.admin.address
            ));
        }
        let mut outcome = ReloadOutcome {
            applied: true,
            ..Default::default()
        };
        if new.runtime.workers != old.runtime.workers {
            outcome
                .restart_required
                .push("runtime.workers changed: the new number of worker threads applies at the next restart".to_owned());
        }

        // Bind every new listener first: if one fails, nothing has changed yet.
        let kept: HashSet<_> = self.listeners.iter().map(|l| l.configured).collect();
        let mut bound = Vec::new();
        for (i, l) in new.listeners.iter().enumerate() {
            if !kept.contains(&l.address) {
                let tcp = bind(l.address, &format!("listeners[{i}].address"))
                    .await
                    .map_err(|e| format!("{e}; reload refused"))?;
                bound.push((l.address, tcp));
            }
        }

        let previous = self.shared.snapshot.load_full();
        let access_log = crate::access_log::open(
            new.access_log.as_ref(),
            previous.access_log.as_ref(),
            &self.shared.metrics.access_log_dropped_total,
        )
        .await
        .map_err(|e| format!("{e}; reload refused"))?;
        let snapshot = Snapshot::build(&new, &self.shared.metrics, Some(&previous), access_log);
        let removed = removed_backends(&previous, &snapshot);
        outcome.backends_added = added_backends(&previous, &snapshot);
        outcome.backends_removed = removed
            .iter()
            .map(|b| format!("{}/{}", b.pool, b.address))
            .collect();
        self.shared.snapshot.store(Arc::new(snapshot));
        let drain = new.drain_timeout;
        let wanted: Vec<_> = new.listeners.iter().map(|l| l.address).collect();
        self.shared.config.store(Arc::new(new));

        for (configured, tcp) in bound {
            let task = ListenerTask::proxy(configured, tcp, &self.proxy, &self.shared)
                .map_err(|e| e.to_string())?;
            outcome.listeners_added.push(task.bound.to_string());
            self.listeners.push(task);
        }
        let (keep, gone): (Vec<_>, Vec<_>) = std::mem::take(&mut self.listeners)
            .into_iter()
            .partition(|l| wanted.contains(&l.configured));
        for l in gone {
            outcome.listeners_removed.push(l.bound.to_string());
            drop(l.stop(drain));
        }
        self.listeners = keep;
        self.listeners.sort_by_key(|l| {
            wanted
                .iter()
                .position(|w| *w == l.configured)
                .unwrap_or(usize::MAX)
        });
        self.shared
            .listen_addrs
            .store(Arc::new(self.listeners.iter().map(|l| l.bound).collect()));

        self.reconcile_health();
        for backend in removed {
            let metrics = Arc::clone(&self.shared.metrics);
            tokio::spawn(async move {
                // Requests in flight finish on the old backend; its series go once it is idle.
                while backend.active_requests() > 0 {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                backend.metrics.remove_series(&metrics);
            });
        }
        Ok(outcome)
    }

    /// Starts, keeps or stops health-check tasks so that exactly the current backends with checks have one.
    fn reconcile_health(&mut self) {
        let snapshot = self.shared.snapshot.load_full();
        let mut old = std::mem::take(&mut self.health);
        for pool in snapshot.pools.values() {
            for backend in &pool.backends {
                let key = (pool.name.clone(), backend.address.clone());
                let existing = old.remove(&key);
                let Some(settings) = &pool.health_check else {
                    if existing.is_some() {
                        // Checks were removed: nothing may keep the backend out any more.
                        backend.set_healthy(true);
                    }
                    continue;
                };
                let task = match existing {
                    Some(t) if Arc::ptr_eq(&t.backend, backend) && &t.settings == settings => t,
                    _ => HealthTask {
                        backend: Arc::clone(backend),
                        settings: settings.clone(),
                        task: health::spawn_checker(Arc::clone(backend), settings.clone()),
                    },
                };
                self.health.insert(key, task);
            }
        }
        // Whatever is left in `old` belongs to removed backends: dropping aborts the tasks.
    }

    async fn shutdown(&mut self) {
        self.shared.shutting_down.store(true, Ordering::SeqCst);
        let drain = self.shared.config.load().drain_timeout;
        self.health.clear();
        let tasks: Vec<JoinHandle<()>> = self.listeners.drain(..).map(|l| l.stop(drain)).collect();
        for t in tasks {
            let _ = t.await;
        }
        // The admin listener stays up through the drain, its /healthz answering 503, so an outer load
        // balancer sees the instance leave.
        if let Some(admin) = self.admin.take() {
            let _ = admin.stop(Duration::from_millis(200)).await;
        }
    }
}

fn added_backends(previous: &Snapshot, next: &Snapshot) -> Vec<String> {
    next.pools
        .values()
        .flat_map(|p| p.backends.iter())
        .filter(|b| !contains(previous, b))
        .map(|b| format!("{}/{}", b.pool, b.address))
        .collect()
}

fn removed_backends(previous: &Snapshot, next: &Snapshot) -> Vec<Arc<Backend>> {
    previous
        .pools
        .values()
        .flat_map(|p| p.backends.iter())
        .filter(|b| !contains(next, b))
        .cloned()
        .collect()
}

fn contains(snapshot: &Snapshot, backend: &Arc<Backend>) -> bool {
    snapshot
        .pools
        .get(&backend.pool)
        .is_some_and(|p| p.backends.iter().any(|b| Arc::ptr_eq(b, backend)))
}

/// Watches the config file's folder (so editors' rename-replace and Kubernetes ConfigMap symlink swaps are
/// seen), debounces bursts of events, and asks for a reload; the control loop ignores unchanged content.
fn watch_file(path: &Path, control: mpsc::Sender<Command>) -> Option<notify::RecommendedWatcher> {
    use notify::{RecursiveMode, Watcher};
    let folder = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let (events, mut received) = mpsc::channel::<()>(64);
    let mut watcher = match notify::recommended_watcher(
        move |event: notify::Result<notify::Event>| {
            if event.is_ok() {
                let _ = events.try_send(());
            }
        },
    ) {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch the config file; reload with SIGHUP or POST /api/reload");
            return None;
        }
    };
    if let Err(e) = watcher.watch(&folder, RecursiveMode::NonRecursive) {
        tracing::warn!(folder = %folder.display(), error = %e, "cannot watch the config folder; reload with SIGHUP or POST /api/reload");
        return None;
    }
    tokio::spawn(async move {
        const QUIET: Duration = Duration::from_millis(150);
        while received.recv().await.is_some() {
            // Debounce: wait until the folder has been quiet for a moment.
            while let Ok(Some(())) = tokio::time::timeout(QUIET, received.recv()).await {}
            let command = Command::Reload {
                trigger: Trigger::FileChange,
                reply: None,
            };
            if control.send(command).await.is_err() {
                return;
            }
        }
    });
    Some(watcher)
}
