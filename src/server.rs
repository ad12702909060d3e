//! Listeners: bind, accept, serve HTTP/1.1 (and HTTP/2 with prior knowledge), count connections, drain.
//! [`Server`] is the handle to a running switchyard; the control loop behind it lives in [`crate::reload`].

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use prometheus::IntGauge;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::client_conn::{ConnClock, GuardedBody, ReadTimeout, TimedIo};
use crate::config::{Config, Limits};
use crate::metrics::Metrics;
use crate::proxy::{Proxy, ProxyBody};
use crate::reload::{Command, ReloadOutcome, Supervisor, Trigger};
use crate::router::Snapshot;

/// What the data path and the control plane share.
pub struct Shared {
    pub config: ArcSwap<Config>,
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    pub metrics: Arc<Metrics>,
    /// The bound addresses of the proxy listeners, in config order.
    pub listen_addrs: ArcSwap<Vec<SocketAddr>>,
    /// Set once shutdown begins.
    pub shutting_down: AtomicBool,
    pub(crate) control: mpsc::Sender<Command>,
    /// The runtimes that serve client connections, one accept loop each per proxy listener; empty: the
    /// runtime `start` was called on.
    pub(crate) workers: Vec<tokio::runtime::Handle>,
}

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
    #[error("cannot listen on {address} ({field}): {source}")]
    Bind {
        address: SocketAddr,
        field: String,
        #[source]
        source: io::Error,
    },
    #[error("{0}")]
    AccessLog(io::Error),
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
        let access_log = crate::access_log::open(
            config.access_log.as_ref(),
            None,
            &metrics.access_log_dropped_total,
        )
        .await
        .map_err(StartError::AccessLog)?;
        let snapshot = Arc::new(ArcSwap::from_pointee(Snapshot::build(
            &config, &metrics, None, access_log,
        )));
        let (control, commands) = mpsc::channel(16);
        let shared = Arc::new(Shared {
            config: ArcSwap::from_pointee(config.clone()),
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
            let tcp = bind(l.address, &format!("listeners[{i}].address")).await?;
            listeners.push(ListenerTask::proxy(l.address, tcp, &proxy, &shared)?);
        }
        let admin_tcp = bind(config.admin.address, "admin.address").await?;
        let admin = ListenerTask::admin(config.admin.address, admin_tcp, &shared)?;
        let listen_addrs: Vec<SocketAddr> = listeners.iter().map(|l| l.bound).collect();
        shared.listen_addrs.store(Arc::new(listen_addrs.clone()));
        let admin_addr = admin.bound;

        let supervisor = Supervisor::new(Arc::clone(&shared), proxy, path, listeners, admin);
        let supervisor = tokio::spawn(supervisor.run(commands));
        Ok(Self {
            shared,
            listen_addrs,
            admin_addr,
            supervisor,
        })
    }

    /// Re-reads the config file and applies it (as SIGHUP does).
    pub async fn reload(&self, trigger: Trigger) -> Result<ReloadOutcome, String> {
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

/// Asks the control loop for a reload and waits for its outcome.
pub async fn request_reload(shared: &Shared, trigger: Trigger) -> Result<ReloadOutcome, String> {
    let (reply, outcome) = oneshot::channel();
    shared
        .control
        .send(Command::Reload {
            trigger,
            reply: Some(reply),
        })
        .await
        .map_err(|_| "switchyard is shutting down".to_owned())?;
    outcome
        .await
        .unwrap_or_else(|_| Err("switchyard is shutting down".to_owned()))
}

pub(crate) async fn bind(address: SocketAddr, field: &str) -> Result<TcpListener, StartError> {
    TcpListener::bind(address)
        .await
        .map_err(|source| StartError::Bind {
            address,
            field: field.to_owned(),
            source,
        })
}

/// One listener's accept loop, and the lever to stop it.
pub(crate) struct ListenerTask {
    /// The address as configured (port 0 stays 0): what reloads compare.
    pub configured: SocketAddr,
    pub bound: SocketAddr,
    stop: watch::Sender<Option<Duration>>,
    tasks: Vec<JoinHandle<()>>,
}

impl ListenerTask {
    pub fn proxy(
        configured: SocketAddr,
        tcp: TcpListener,
        proxy: &Arc<Proxy>,
        shared: &Arc<Shared>,
    ) -> Result<Self, StartError> {
        let proxy = Arc::clone(proxy);
        let handler = move |req, peer| {
            let proxy = Arc::clone(&proxy);
            async move { proxy.handle(req, peer).await }
        };
        Self::spawn(
            configured,
            tcp,
            Some(Arc::clone(shared)),
            handler,
            "proxy",
            &shared.workers,
        )
    }

    pub fn admin(
        configured: SocketAddr,
        tcp: TcpListener,
        shared: &Arc<Shared>,
    ) -> Result<Self, StartError> {
        let shared = Arc::clone(shared);
        let handler = move |req, _peer| {
            let shared = Arc::clone(&shared);
            async move { crate::admin::handle(&shared, req).await }
        };
        Self::spawn(configured, tcp, None, handler, "admin", &[])
    }

    fn spawn<H, F>(
        configured: SocketAddr,
        tcp: TcpListener,
        limits_from: Option<Arc<Shared>>,
        handler: H,
        kind: &'static str,
        workers: &[tokio::runtime::Handle],
    ) -> Result<Self, StartError>
    where
        H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = Response<ProxyBody>> + Send + 'static,
    {
        let bound = tcp.local_addr().map_err(|source| StartError::Bind {
            address: configured,
            field: format!("{kind} listener"),
            source,
        })?;
        tracing::info!(addr = %bound, "{kind} listener ready");
        let (stop, stopped) = watch::channel(None);
        let bind_error = |source| StartError::Bind {
            address: configured,
            field: format!("{kind} listener"),
            source,
        };
        let tasks = if workers.is_empty() {
            vec![tokio::spawn(accept_loop(
                tcp,
                stopped,
                limits_from,
                handler,
            ))]
        } else {
            // One socket, one accept loop on each worker runtime: the kernel hands each connection to one.
            let socket = tcp.into_std().map_err(bind_error)?;
            let mut tasks = Vec::new();
            for worker in workers {
                let socket = socket.try_clone().map_err(bind_error)?;
                let (stopped, limits_from, handler) =
                    (stopped.clone(), limits_from.clone(), handler.clone());
                tasks.push(worker.spawn(async move {
                    match TcpListener::from_std(socket) {
                        Ok(listener) => accept_loop(listener, stopped, limits_from, handler).await,
                        Err(e) => tracing::error!(error = %e, "a worker cannot accept on {bound}"),
                    }
                }));
            }
            tasks
        };
        Ok(Self {
            configured,
            bound,
            stop,
            tasks,
        })
    }

    /// Stops accepting and drains the connections (idle ones close at once) for up to `drain`.
    pub fn stop(self, drain: Duration) -> JoinHandle<()> {
        let _ = self.stop.send(Some(drain));
        let tasks = self.tasks;
        tokio::spawn(async move {
            for t in tasks {
                let _ = t.await;
            }
        })
    }
}

/// Decrements the open-connections gauge when a connection task ends, however it ends.
struct ConnectionCount(Option<IntGauge>);

impl Drop for ConnectionCount {
    fn drop(&mut self) {
        if let Some(g) = &self.0 {
            g.dec();
        }
    }
}

/// Accepts and serves connections until stopped. `limits_from`: the shared state whose `[limits]` and
/// connection count apply (proxy listeners); `None` for the admin listener.
async fn accept_loop<H, F>(
    listener: TcpListener,
    mut stop: watch::Receiver<Option<Duration>>,
    limits_from: Option<Arc<Shared>>,
    handler: H,
) where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<ProxyBody>> + Send + 'static,
{
    let graceful = GracefulShutdown::new();
    let drain = loop {
        let accepted = tokio::select! {
            biased;
            stopped = stop.wait_for(Option::is_some) => {
                break stopped.ok().and_then(|d| *d).unwrap_or(Duration::ZERO);
            }
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // Out of file descriptors and the like: back off a little instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let limits = limits_from.as_ref().map(|s| (s.snapshot.load().limits, s));
        let gauge = match limits {
            Some((limits, shared)) => {
                let open = &shared.metrics.open_connections;
                if open.get() >= limits.max_connections as i64 {
                    // Over the cap: closed at once; the connections already open are not touched.
                    shared.metrics.reject("max_connections");
                    drop(tcp);
                    continue;
                }
                open.inc();
                Some(open.clone())
            }
            None => None,
        };
        let _ = tcp.set_nodelay(true);
        let count = ConnectionCount(gauge);
        let handler = handler.clone();
        let timing = limits.map_or_else(Limits::default, |(l, _)| l);
        let clock = ConnClock::new(timing.header_read_timeout, timing.idle_timeout);
        let requests = Arc::clone(&clock);
        let service = service_fn(move |req| {
            let guard = requests.request_started();
            let fut = handler(req, peer);
            async move { Ok::<_, Infallible>(fut.await.map(|inner| GuardedBody { inner, guard })) }
        });
        let mut builder = auto::Builder::new(TokioExecutor::new());
        let mut http1 = builder.http1();
        // Header and idle deadlines are kept by `TimedIo`, which can tell them apart.
        http1
            .timer(TokioTimer::new())
            .keep_alive(true)
            .header_read_timeout(None);
        if let Some((limits, _)) = limits {
            http1.max_buf_size(limits.max_header_bytes);
        }
        let mut http2 = builder.http2();
        http2.timer(TokioTimer::new());
        if let Some((limits, _)) = limits {
            http2.max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
        }
        let io = TokioIo::new(TimedIo::new(tcp, clock));
        let conn = builder.serve_connection(io, service).into_owned();
        let conn = graceful.watch(conn);
        let rejected = limits.map(|(_, shared)| Arc::clone(shared));
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
                if let (Some(shared), Some(reason)) = (rejected, rejection(&*e)) {
                    shared.metrics.reject(reason);
                }
            }
            drop(count);
        });
    };
    drop(listener);
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(?drain, "drain time over with connections still open");
    }
}

/// The `reason` label for a connection that hyper ended because of the client.
fn rejection(error: &(dyn std::error::Error + 'static)) -> Option<&'static str> {
    let mut source = Some(error);
    while let Some(e) = source {
        if let Some(timeout) = e.downcast_ref::<ReadTimeout>() {
            // An idle keep-alive connection closing is routine, not a refusal.
            return timeout.header.then_some("header_timeout");
        }
        if let Some(io) = e.downcast_ref::<io::Error>() {
            if let Some(timeout) = io.get_ref().and_then(|i| i.downcast_ref::<ReadTimeout>()) {
                return timeout.header.then_some("header_timeout");
            }
        }
        source = e.source();
    }
    let e = error.downcast_ref::<hyper::Error>()?;
    if e.is_parse_too_large() {
        Some("header_too_large")
    } else if e.is_timeout() {
        Some("header_timeout")
    } else if e.is_parse() {
        Some("malformed")
    } else {
        None
    }
}
