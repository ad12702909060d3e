//! Listeners: bind, accept, serve HTTP/1.1 (and HTTP/2 with prior knowledge), count connections, drain.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
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
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::health::{self, HealthChecks};
use crate::metrics::Metrics;
use crate::proxy::{Proxy, ProxyBody};
use crate::router::Snapshot;

/// What the data path and the control plane share.
pub struct Shared {
    pub config: ArcSwap<Config>,
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    pub metrics: Arc<Metrics>,
}

/// A running switchyard: its bound addresses, and the handle to stop it.
pub struct Server {
    pub shared: Arc<Shared>,
    /// The proxy listeners' bound addresses, in config order (port 0 in the config becomes the real port).
    pub listen_addrs: Vec<SocketAddr>,
    pub admin_addr: SocketAddr,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    health_checks: HealthChecks,
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
}

impl Server {
    /// Binds every listener and starts serving. Must be called inside a tokio runtime.
    pub async fn start(config: Config) -> Result<Self, StartError> {
        let metrics = Arc::new(Metrics::new());
        let snapshot = Arc::new(ArcSwap::from_pointee(Snapshot::build(&config, &metrics)));
        let shared = Arc::new(Shared {
            config: ArcSwap::from_pointee(config.clone()),
            snapshot: Arc::clone(&snapshot),
            metrics: Arc::clone(&metrics),
        });

        let mut listeners = Vec::new();
        for (i, l) in config.listeners.iter().enumerate() {
            listeners.push(bind(l.address, format!("listeners[{i}].address")).await?);
        }
        let admin = bind(config.admin.address, "admin.address".to_owned()).await?;

        let (stop, stop_rx) = watch::channel(false);
        let mut listen_addrs = Vec::new();
        let mut tasks = Vec::new();
        let proxy = Arc::new(Proxy::new(snapshot));
        for listener in listeners {
            let addr = listener.local_addr().map_err(|source| StartError::Bind {
                address: config.listeners[listen_addrs.len()].address,
                field: "listeners".to_owned(),
                source,
            })?;
            listen_addrs.push(addr);
            tracing::info!(%addr, "proxy listener ready");
            let proxy = Arc::clone(&proxy);
            let handler = move |req, peer| {
                let proxy = Arc::clone(&proxy);
                async move { proxy.handle(req, peer).await }
            };
            tasks.push(tokio::spawn(accept_loop(
                listener,
                stop_rx.clone(),
                Some(metrics.open_connections.clone()),
                handler,
            )));
        }
        let admin_addr = admin.local_addr().map_err(|source| StartError::Bind {
            address: config.admin.address,
            field: "admin.address".to_owned(),
            source,
        })?;
        tracing::info!(addr = %admin_addr, "admin listener ready");
        let admin_shared = Arc::clone(&shared);
        let admin_handler = move |req, _peer| {
            let shared = Arc::clone(&admin_shared);
            async move { crate::admin::handle(&shared, req).await }
        };
        tasks.push(tokio::spawn(accept_loop(
            admin,
            stop_rx,
            None,
            admin_handler,
        )));

        let mut health_checks = HealthChecks::default();
        for pool in shared.snapshot.load().pools.values() {
            if let Some(settings) = &pool.health_check {
                for backend in &pool.backends {
                    health_checks
                        .push(health::spawn_checker(Arc::clone(backend), settings.clone()));
                }
            }
        }

        Ok(Self {
            shared,
            listen_addrs,
            admin_addr,
            stop,
            tasks,
            health_checks,
        })
    }

    /// Stops accepting, lets requests in flight finish for up to `drain`, then closes what is left.
    pub async fn shutdown(self, drain: Duration) {
        let _ = self.stop.send(true);
        drop(self.health_checks);
        let all = join_all(self.tasks);
        if tokio::time::timeout(drain, all).await.is_err() {
            tracing::warn!(
                ?drain,
                "drain time over; closing the connections still open"
            );
        }
    }
}

async fn join_all(tasks: Vec<JoinHandle<()>>) {
    for t in tasks {
        let _ = t.await;
    }
}

async fn bind(address: SocketAddr, field: String) -> Result<TcpListener, StartError> {
    TcpListener::bind(address)
        .await
        .map_err(|source| StartError::Bind {
            address,
            field,
            source,
        })
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

async fn accept_loop<H, F>(
    listener: TcpListener,
    mut stop: watch::Receiver<bool>,
    gauge: Option<IntGauge>,
    handler: H,
) where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<ProxyBody>> + Send + 'static,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).keep_alive(true);
    builder.http2().timer(TokioTimer::new());

    let graceful = GracefulShutdown::new();
    loop {
        let accepted = tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => break,
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
        let _ = tcp.set_nodelay(true);
        if let Some(g) = &gauge {
            g.inc();
        }
        let count = ConnectionCount(gauge.clone());
        let handler = handler.clone();
        let service = service_fn(move |req| {
            let fut = handler(req, peer);
            async move { Ok::<_, Infallible>(fut.await) }
        });
        let conn = builder
            .serve_connection(TokioIo::new(tcp), service)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            drop(count);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}
