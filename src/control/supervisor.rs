//! The control loop: applies reloads (file change, SIGHUP, `POST /api/reload`), owns the listeners and the
//! health-check tasks, and runs the shutdown.
//!
//! A reload changes nothing unless the new file is valid and every new listener binds. Then the new routing
//! table is published in one `ArcSwap::store`: a backend whose pool and address are unchanged is the same `Arc`
//! in the new table, so it keeps its health, breaker, in-flight count, drain flag and idle connections.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::discovery::{self, Discovered};
use super::health;
use super::watch::{Watched, watch_files};
use super::{Command, ReloadError, ReloadOutcome, Shared, Trigger, series_grace};
use crate::background;
use crate::balance::backend::Backend;
use crate::config::{
    self, BackendSettings, BackendSource, Config, DiscoverySettings, ResolverSettings,
};
use crate::observe::events::{Kind, Level};
use crate::proxy::Proxy;
use crate::router::Snapshot;
use crate::serve::{ListenerMode, ListenerTask, bind};

/// A pool's DNS discovery: its task, and what the control loop knows from it.
struct Discovery {
    settings: DiscoverySettings,
    task: JoinHandle<()>,
    /// The backends DNS gave last, and the rules for changing them.
    known: discovery::Known,
}

impl Drop for Discovery {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The control loop's state: the config running, the listeners, and the tasks it owns.
pub(crate) struct Supervisor {
    shared: Arc<Shared>,
    /// The config the snapshot was last built from (without discovered backends).
    config: Arc<Config>,
    proxy: Arc<Proxy>,
    path: Option<PathBuf>,
    /// The text of the last config applied, to ignore file events that change nothing.
    applied_text: Option<String>,
    /// The last reload (or the start) succeeded. After a failure, the next valid file is applied and counted
    /// even when its text is the one running (an operator putting the good file back).
    last_reload_ok: bool,
    listeners: Vec<ListenerTask>,
    admin: Option<ListenerTask>,
    health: health::Checks,
    /// Watches the config file and every certificate and key (through their folders).
    watcher: Option<(Watched, notify::RecommendedWatcher)>,
    discovery: HashMap<String, Discovery>,
    /// The resolver discovery uses, and the settings it was built from.
    resolver: Option<(ResolverSettings, Arc<hickory_resolver::TokioResolver>)>,
    /// Where discovery tasks report their answers.
    discovered: (mpsc::Sender<Discovered>, Option<mpsc::Receiver<Discovered>>),
}

impl Supervisor {
    pub(crate) fn new(
        shared: Arc<Shared>,
        config: Config,
        proxy: Arc<Proxy>,
        path: Option<PathBuf>,
        listeners: Vec<ListenerTask>,
        admin: ListenerTask,
    ) -> Self {
        let (report, reports) = mpsc::channel(16);
        let applied_text = path
            .as_deref()
            .and_then(|p| std::fs::read_to_string(p).ok());
        let mut s = Self {
            shared,
            config: Arc::new(config),
            proxy,
            path,
            applied_text,
            last_reload_ok: true,
            listeners,
            admin: Some(admin),
            health: health::Checks::default(),
            watcher: None,
            discovery: HashMap::new(),
            resolver: None,
            discovered: (report, Some(reports)),
        };
        s.reconcile_health();
        s.rewatch();
        let config = Arc::clone(&s.config);
        s.reconcile_discovery(&config);
        s
    }

    /// Starts, keeps or stops discovery tasks so that exactly the pools with `discovery` have one.
    fn reconcile_discovery(&mut self, config: &Config) {
        let wanted: Vec<(&String, &DiscoverySettings)> = config
            .pools
            .iter()
            .filter_map(|(name, p)| p.discovery.as_ref().map(|d| (name, d)))
            .collect();
        let resolver_changed = self
            .resolver
            .as_ref()
            .is_none_or(|(settings, _)| *settings != config.resolver);
        if !wanted.is_empty() && resolver_changed {
            match discovery::resolver(&config.resolver) {
                Ok(r) => self.resolver = Some((config.resolver.clone(), Arc::new(r))),
                Err(e) => tracing::error!(error = %e, "cannot set up DNS discovery"),
            }
        }
        let mut old = std::mem::take(&mut self.discovery);
        for (name, settings) in wanted {
            let Some((_, resolver)) = &self.resolver else {
                continue;
            };
            let entry = match old.remove(name) {
                Some(d) if d.settings == *settings && !resolver_changed => d,
                previous => {
                    // New settings: start over, but keep serving what was known until the first answer.
                    let known = discovery::Known::with(
                        previous
                            .map(|mut d| std::mem::take(&mut d.known).into_backends())
                            .unwrap_or_default(),
                    );
                    Discovery {
                        settings: settings.clone(),
                        task: discovery::spawn(
                            name.clone(),
                            settings.clone(),
                            Arc::clone(resolver),
                            self.discovered.0.clone(),
                        ),
                        known,
                    }
                }
            };
            self.discovery.insert(name.clone(), entry);
        }
        for name in old.keys() {
            let _ = self
                .shared
                .metrics
                .discovery_backends
                .remove_label_values(&[name]);
        }
    }

    /// The config the data path runs: the file's, with each pool's discovered backends added (a backend listed
    /// in the file and found in DNS counts as static). The file's own when nothing was discovered.
    fn effective(&self, config: &Arc<Config>) -> Arc<Config> {
        let found = |name: &String| {
            self.discovery
                .get(name)
                .map(|d| d.known.backends())
                .unwrap_or_default()
        };
        if config.pools.keys().all(|name| found(name).is_empty()) {
            return Arc::clone(config);
        }
        let mut config = Config::clone(config);
        for (name, pool) in &mut config.pools {
            for found in found(name) {
                if !pool.backends.iter().any(|b| b.address == found.address) {
                    pool.backends.push(BackendSettings {
                        address: found.address.clone(),
                        weight: found.weight,
                        source: BackendSource::Dns,
                    });
                }
            }
        }
        Arc::new(config)
    }

    /// Applies a discovery answer: a change is published like a reload; failures and fresh empty answers keep
    /// what is known.
    async fn discovered(&mut self, pool: &str, answer: discovery::Answer) {
        let Some(d) = self.discovery.get_mut(pool) else {
            return;
        };
        let metrics = &self.shared.metrics;
        metrics
            .discovery_lookups_total
            .with_label_values(&[pool, answer.result()])
            .inc();
        let name = &d.settings.name;
        let step = d.known.on_answer(answer);
        match step.note {
            Some(discovery::Note::FailingStarted(error)) => {
                tracing::warn!(pool, name = %name, %error,
                "DNS lookup failed; keeping the last known backends until it answers again");
                metrics.events.record(
                    Kind::DnsFailed,
                    Level::Warn,
                    Some(pool),
                    None,
                    format!(
                        "DNS lookup of {name} failed, keeping the last known backends: {error}"
                    ),
                );
            }
            Some(discovery::Note::AnswersAgain) => {
                tracing::info!(pool, name = %name, "DNS discovery answers again");
                metrics.events.record(
                    Kind::DnsChanged,
                    Level::Info,
                    Some(pool),
                    None,
                    format!("DNS discovery of {name} answers again"),
                );
            }
            Some(discovery::Note::NoRecordsStarted) => tracing::warn!(pool, name = %name,
                "DNS has no records for this name; keeping the last known backends unless it persists for {} lookups",
                discovery::EMPTY_STREAK),
            None => {}
        }
        let Some((added, removed)) = step.changed else {
            return;
        };
        tracing::info!(pool, name = %name, ?added, ?removed, "discovered backends changed");
        metrics.events.record(
            Kind::DnsChanged,
            Level::Info,
            Some(pool),
            None,
            format!(
                "DNS answer for {name} changed: added [{}], removed [{}]",
                added
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
                removed
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        );
        metrics
            .discovery_backends
            .with_label_values(&[pool])
            .set(d.known.backends().len() as i64);
        self.rebuild().await;
    }

    /// Publishes a snapshot of the config in force again (selectors rebuilt for runtime weights).
    async fn rebuild(&mut self) {
        let effective = self.effective(&self.config);
        let current = self.shared.snapshot.load_full();
        self.install(
            effective,
            current.access_log.clone(),
            current.listeners.clone(),
        )
        .await;
    }

    /// Publishes the routing snapshot for `effective` (backends that stay are carried over), starts and stops
    /// health checks to match, and retires the removed backends. Returns the backends added and removed, as
    /// `pool/address`. The snapshot is built, and the one it replaces freed, on the [`background`] thread.
    async fn install(
        &mut self,
        effective: Arc<Config>,
        access_log: Option<(
            crate::observe::access_log::AccessLogSettings,
            Arc<crate::observe::access_log::AccessLog>,
        )>,
        listeners: Vec<(std::net::SocketAddr, Arc<ListenerMode>)>,
    ) -> (Vec<String>, Vec<String>) {
        let previous = self.shared.snapshot.load_full();
        let metrics = Arc::clone(&self.shared.metrics);
        let before = Arc::clone(&previous);
        let (snapshot, added, removed) = background::run(move || {
            let snapshot =
                Snapshot::build(&effective, &metrics, Some(&before), access_log, listeners);
            let added = added_backends(&before, &snapshot);
            let removed = removed_backends(&before, &snapshot);
            (snapshot, added, removed)
        })
        .await;
        let removed_names = removed
            .iter()
            .map(|b| format!("{}/{}", b.pool, b.address))
            .collect();
        self.shared.snapshot.store(Arc::new(snapshot));
        drop_here(previous);
        self.reconcile_health();
        self.retire(removed);
        (added, removed_names)
    }

    /// Lets removed backends finish their requests, then, [`SERIES_GRACE`] later, drops their metric series
    /// (unless a backend of the same pool and address is there again by then: DNS answers come and go).
    fn retire(&self, removed: Vec<Arc<Backend>>) {
        for backend in removed {
            let shared = Arc::clone(&self.shared);
            tokio::spawn(async move {
                // Requests in flight finish on the old backend; its series go once it is idle and every
                // scrape has had time to see its last counts.
                backend.idle().await;
                tokio::time::sleep(series_grace()).await;
                let back = shared
                    .snapshot
                    .load()
                    .pools
                    .get(&backend.pool)
                    .is_some_and(|p| p.backends.iter().any(|b| b.address == backend.address));
                if !back {
                    backend.metrics.remove_series(&shared.metrics);
                }
            });
        }
    }

    /// The files whose changes matter (the config file, each certificate and key) and their folders.
    fn watched(&self) -> Watched {
        let mut watched = Watched::default();
        let Some(path) = &self.path else {
            return watched;
        };
        let mut files = vec![path.clone()];
        for (_, mode) in &self.shared.snapshot.load().listeners {
            if let Some(tls) = mode.tls() {
                files.extend(tls.files().map(Path::to_path_buf));
            }
        }
        for file in files {
            watched.folders.insert(match file.parent() {
                Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
                _ => PathBuf::from("."),
            });
            if let Some(name) = file.file_name() {
                watched.names.insert(name.to_owned());
            }
        }
        watched
    }

    /// (Re)starts the file watcher when the set of folders to watch changed.
    fn rewatch(&mut self) {
        let watched = self.watched();
        if watched.folders.is_empty() || self.watcher.as_ref().is_some_and(|(w, _)| *w == watched) {
            return;
        }
        self.watcher = None;
        if let Some(w) = watch_files(&watched, self.shared.control.clone()) {
            self.watcher = Some((watched, w));
        }
    }

    /// Re-reads every TLS listener's certificates (a change is applied, a broken file keeps the old ones).
    fn reload_certificates(&self) {
        for (_, mode) in &self.shared.snapshot.load().listeners {
            if let Some(tls) = mode.tls() {
                let _ = tls.reload_certificates(&self.shared.metrics);
            }
        }
    }

    /// Serves commands (and discovery answers) until shutdown.
    pub(crate) async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let Some(mut discovered) = self.discovered.1.take() else {
            return;
        };
        loop {
            let command = tokio::select! {
                command = commands.recv() => command,
                Some(answer) = discovered.recv() => {
                    self.discovered(&answer.pool, answer.answer).await;
                    continue;
                }
            };
            let Some(command) = command else { return };
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
                Command::Rebuild { reply } => {
                    self.rebuild().await;
                    let _ = reply.send(());
                }
            }
        }
    }

    async fn reload(&mut self, trigger: Trigger) -> Result<ReloadOutcome, ReloadError> {
        let Some(path) = self.path.clone() else {
            return Err(ReloadError::NoFile);
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => {
                let error = format!("{}: cannot read the config file: {e}", path.display());
                return self.failed(error);
            }
        };
        let unchanged = self.applied_text.as_deref() == Some(text.as_str());
        if trigger == Trigger::FileChange && unchanged && self.last_reload_ok {
            // Not the config: maybe a certificate or key.
            self.reload_certificates();
            return Ok(ReloadOutcome::default());
        }
        let origin = path.display().to_string();
        let (text, parsed) = background::run(move || {
            let parsed = config::parse(&text, &origin);
            (text, parsed)
        })
        .await;
        let config = match parsed {
            Ok(c) => c,
            Err(e) => return self.failed(e.to_string()),
        };
        match self.apply(config).await {
            Ok(outcome) => {
                self.applied_text = Some(text);
                self.last_reload_ok = true;
                self.shared.metrics.reload_result(true);
                tracing::info!(
                    ?trigger,
                    changed = !unchanged,
                    added = ?outcome.backends_added,
                    removed = ?outcome.backends_removed,
                    listeners_added = ?outcome.listeners_added,
                    listeners_removed = ?outcome.listeners_removed,
                    "config reloaded"
                );
                for what in &outcome.restart_required {
                    tracing::warn!("{what}");
                }
                self.shared.metrics.events.record(
                    Kind::Reload,
                    Level::Info,
                    None,
                    None,
                    outcome.describe(trigger, unchanged),
                );
                Ok(outcome)
            }
            Err(e) => self.failed(e),
        }
    }

    fn failed(&mut self, error: String) -> Result<ReloadOutcome, ReloadError> {
        self.last_reload_ok = false;
        self.shared.metrics.reload_result(false);
        tracing::error!("config reload failed; still serving the previous config:\n{error}");
        self.shared.metrics.events.record(
            Kind::ReloadFailed,
            Level::Error,
            None,
            None,
            format!("config reload failed; still serving the previous config: {error}"),
        );
        Err(ReloadError::Refused(error))
    }

    async fn apply(&mut self, new: Config) -> Result<ReloadOutcome, String> {
        let old = Arc::clone(&self.config);
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

        // Load every listener's certificates and bind every new listener first: if one fails, nothing has
        // changed yet.
        let previous = self.shared.snapshot.load_full();
        let mut modes = Vec::new();
        let mut bound = Vec::new();
        for (i, l) in new.listeners.iter().enumerate() {
            let old = previous.listener(l.address).map(Arc::as_ref);
            let mode = ListenerMode::build(l, old, &self.shared.metrics)
                .map_err(|e| format!("listeners[{i}].tls: {e}; reload refused"))?;
            modes.push((l.address, Arc::new(mode)));
            if !self.listeners.iter().any(|k| k.configured == l.address) {
                let tcp = bind(l.address, &format!("listeners[{i}].address"), l.reuse_port)
                    .await
                    .map_err(|e| format!("{e}; reload refused"))?;
                bound.push((l.address, tcp));
            }
        }

        let access_log = crate::observe::access_log::open(
            new.access_log.as_ref(),
            previous.access_log.as_ref(),
            &self.shared.metrics.access_log_dropped_total,
        )
        .await
        .map_err(|e| format!("{e}; reload refused"))?;
        self.reconcile_discovery(&new);
        let drain = new.drain_timeout;
        let wanted: Vec<_> = new.listeners.iter().map(|l| l.address).collect();
        self.config = Arc::new(new);
        let effective = self.effective(&self.config);
        (outcome.backends_added, outcome.backends_removed) =
            self.install(effective, access_log, modes.clone()).await;

        // Certificate expiry series: those of TLS states no longer in use go, then those in use are set (a
        // listener whose certificates stayed keeps its labels).
        let metrics = &self.shared.metrics;
        for (_, old) in &previous.listeners {
            let Some(old) = old.tls() else { continue };
            let kept = modes
                .iter()
                .any(|(_, m)| m.tls().is_some_and(|t| Arc::ptr_eq(t, old)));
            if !kept {
                old.forget(metrics);
            }
        }
        for (_, mode) in &modes {
            if let Some(tls) = mode.tls() {
                tls.export(metrics);
            }
        }
        for (configured, tcp) in bound {
            let task = ListenerTask::proxy(configured, tcp, &self.proxy, &self.shared.workers)
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

        self.rewatch();
        // The last reference to the replaced config: freed after requests, like the snapshot built from it.
        background::drop_later(old);
        Ok(outcome)
    }

    /// Starts, keeps or stops health-check tasks so that exactly the current backends with checks have one.
    fn reconcile_health(&mut self) {
        let snapshot = self.shared.snapshot.load_full();
        self.health.reconcile(&snapshot);
    }

    async fn shutdown(&mut self) {
        self.shared.shutting_down.store(true, Ordering::SeqCst);
        self.shared.metrics.events.close();
        let drain = self.config.drain_timeout;
        self.health.clear();
        self.discovery.clear();
        let deadline = tokio::time::Instant::now() + drain;
        let tasks: Vec<JoinHandle<()>> = self.listeners.drain(..).map(|l| l.stop(drain)).collect();
        for t in tasks {
            let _ = t.await;
        }
        // Upgraded connections (WebSocket) are not HTTP any more: they get the rest of the drain time to end.
        let _ = tokio::time::timeout_at(deadline, self.proxy.tunnels.all_closed()).await;
        // The admin listener stays up through the drain, its /healthz answering 503, so an outer load
        // balancer sees the instance leave.
        if let Some(admin) = self.admin.take() {
            let _ = admin.stop(Duration::from_millis(200)).await;
        }
    }
}

/// Frees a replaced snapshot on the [`background`] thread once no request holds it any more. Freeing one of
/// 10,000 backends takes milliseconds, which a worker dropping the last reference would spend on a request's
/// path.
fn drop_here(previous: Arc<Snapshot>) {
    tokio::spawn(async move {
        let mut wait = Duration::from_millis(10);
        while Arc::strong_count(&previous) > 1 {
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(1));
        }
        background::drop_later(previous);
    });
}

fn added_backends(previous: &Snapshot, next: &Snapshot) -> Vec<String> {
    let before = backend_set(previous);
    backends(next)
        .filter(|b| !before.contains(&Arc::as_ptr(b)))
        .map(|b| format!("{}/{}", b.pool, b.address))
        .collect()
}

fn removed_backends(previous: &Snapshot, next: &Snapshot) -> Vec<Arc<Backend>> {
    let after = backend_set(next);
    backends(previous)
        .filter(|b| !after.contains(&Arc::as_ptr(b)))
        .cloned()
        .collect()
}

fn backends(snapshot: &Snapshot) -> impl Iterator<Item = &Arc<Backend>> {
    snapshot.pools.values().flat_map(|p| p.backends.iter())
}

/// A reload carries a kept backend over as the same `Arc`: its address tells it apart.
fn backend_set(snapshot: &Snapshot) -> std::collections::HashSet<*const Backend> {
    backends(snapshot).map(Arc::as_ptr).collect()
}
