//! A running switchyard: binds the listeners, builds the first snapshot, starts the control plane, and is the
//! handle to reload and stop it. Tests drive it in-process; `main` drives it from the command line.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use arc_swap::ArcSwap;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::control::supervisor::Supervisor;
use crate::control::{Command, ReloadError, ReloadOutcome, Shared, Trigger, request_reload};
use crate::observe::metrics::Metrics;
use crate::proxy::Proxy;
use crate::router::Snapshot;
use crate::serve::{BindError, ListenerMode, ListenerTask, ModeSource, bind};

/// A running switchyard: its bound addresses, and the handle to reload and stop it.
pub struct Server {
    pub shared: Arc<Shared>,
    /// The proxy listeners' bound addresses at start (port 0 in the config becomes the real port).
    pub listen_addrs: Vec<SocketAddr>,
    pub admin_addr: SocketAddr,
    supervisor: JoinHandle<()>,
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error("{0}")]
    AccessLog(io::Error),
    #[error("{0}")]
    Tls(String),
}

impl Server {
    /// Binds every listener and starts serving a config that has no file behind it (reloads are refused).
    /// Must be called inside a tokio runtime.
    pub async fn start(config: Config) -> Result<Self, StartError> {
        Self::start_on(config, None, Vec::new()).await
    }

    /// Starts serving `config`, read from `path`: the file is watched, and reloads re-read it.
    pub async fn start_with_file(config: Config, path: PathBuf) -> Result<Self, StartError> {
        Self::start_on(config, Some(path), Vec::new()).await
    }

    /// Starts serving with client connections on the `workers` runtimes (each accepts from every proxy
    /// listener); the control plane stays on the calling runtime. `path`: the config file, if any.
    pub async fn start_on(
        config: Config,
        path: Option<PathBuf>,
        workers: Vec<tokio::runtime::Handle>,
    ) -> Result<Self, StartError> {
        let metrics = Arc::new(Metrics::new());
        let access_log = crate::observe::access_log::open(
            config.access_log.as_ref(),
            None,
            &metrics.access_log_dropped_total,
        )
        .await
        .map_err(StartError::AccessLog)?;
        let mut modes = Vec::new();
        for (i, l) in config.listeners.iter().enumerate() {
            let mode = ListenerMode::build(l, None, &metrics)
                .map_err(|e| StartError::Tls(format!("listeners[{i}].tls: {e}")))?;
            modes.push((l.address, Arc::new(mode)));
        }
        let snapshot = Snapshot::build(&config, &metrics, None, access_log, modes);
        let snapshot = Arc::new(ArcSwap::from_pointee(snapshot));
        let (control, commands) = mpsc::channel(16);
        let shared = Arc::new(Shared {
            snapshot: Arc::clone(&snapshot),
            metrics,
            listen_addrs: ArcSwap::from_pointee(Vec::new()),
            shutting_down: AtomicBool::new(false),
            control,
            workers,
        });
        let proxy = Arc::new(Proxy::new(snapshot, Arc::clone(&shared.metrics)));

        let mut listeners = Vec::new();
        for (i, l) in config.listeners.iter().enumerate() {
            let tcp = bind(l.address, &format!("listeners[{i}].address"), l.reuse_port).await?;
            listeners.push(ListenerTask::proxy(
                l.address,
                tcp,
                &proxy,
                &shared.workers,
            )?);
        }
        // With `reuse_port`, a second switchyard on this host (an upgrade) shares the admin address too.
        let admin_shared = config.listeners.iter().any(|l| l.reuse_port);
        let admin_tcp = bind(config.admin.address, "admin.address", admin_shared).await?;
        let admin = {
            let shared = Arc::clone(&shared);
            let handler = move |req, _conn| {
                let shared = Arc::clone(&shared);
                async move { crate::admin::handle(&shared, req).await }
            };
            ListenerTask::spawn(
                config.admin.address,
                admin_tcp,
                ModeSource::Fixed(Arc::new(ListenerMode::Plain)),
                None,
                handler,
                "admin",
                &[],
            )?
        };
        let listen_addrs: Vec<SocketAddr> = listeners.iter().map(|l| l.bound).collect();
        shared.listen_addrs.store(Arc::new(listen_addrs.clone()));
        let admin_addr = admin.bound;

        // Whether the CPUs have time to spare for the background thread's work.
        let until_shutdown = Arc::clone(&shared.metrics);
        tokio::spawn(crate::background::watch_cpus(async move {
            until_shutdown.events.closed().await;
        }));
        // The status page's rates and history; ends at shutdown with the event feed.
        tokio::spawn(crate::observe::status::Live::run(
            Arc::clone(&shared.metrics),
            Arc::clone(&shared.snapshot),
            crate::router::Snapshot::status_readings,
        ));
        let supervisor =
            Supervisor::new(Arc::clone(&shared), config, proxy, path, listeners, admin);
        let supervisor = tokio::spawn(supervisor.run(commands));
        Ok(Self {
            shared,
            listen_addrs,
            admin_addr,
            supervisor,
        })
    }

    /// Re-reads the config file and applies it (as SIGHUP does).
    pub async fn reload(&self, trigger: Trigger) -> Result<ReloadOutcome, ReloadError> {
        request_reload(&self.shared, trigger).await
    }

    /// Stops accepting, closes idle connections, lets requests in flight finish for up to the config's
    /// `drain_timeout`, then returns.
    pub async fn shutdown(self) {
        let (reply, done) = oneshot::channel();
        if self
            .shared
            .control
            .send(Command::Shutdown { reply })
            .await
            .is_ok()
        {
            let _ = done.await;
        }
        let _ = self.supervisor.await;
    }
}
