//! A pool: interchangeable backends, the selector that balances over them, and the upstream client they share.

use std::sync::Arc;

use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::backend::Backend;
use crate::config::{Algorithm, PoolSettings, Timeouts};
use crate::metrics::{BackendMetrics, Metrics};
use crate::select::Selector;

/// The HTTP/1.1 client a pool forwards with; it keeps idle keep-alive connections per backend.
pub type UpstreamClient = Client<HttpConnector, Incoming>;

pub struct Pool {
    pub name: String,
    pub algorithm: Algorithm,
    pub backends: Vec<Arc<Backend>>,
    selector: Selector,
    pub timeouts: Timeouts,
    pub client: UpstreamClient,
    /// Label handles for answers the proxy gives itself for this pool (`backend="none"`).
    pub local_metrics: BackendMetrics,
}

impl Pool {
    pub fn new(
        name: &str,
        settings: &PoolSettings,
        metrics: &Metrics,
    ) -> Result<Self, http::Error> {
        let backends = settings
            .backends
            .iter()
            .map(|b| {
                Backend::new(&b.address, b.weight, metrics.for_backend(name, &b.address))
                    .map(Arc::new)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            name: name.to_owned(),
            algorithm: settings.algorithm,
            selector: Selector::new(settings.algorithm, &backends),
            backends,
            timeouts: settings.timeouts,
            client: upstream_client(&settings.timeouts),
            local_metrics: metrics.for_local(name),
        })
    }

    /// Picks an available backend, or `None` when none is.
    #[inline]
    pub fn pick(&self) -> Option<&Arc<Backend>> {
        let backends = &self.backends;
        self.selector
            .pick(backends, |i| backends[i].is_available())
            .map(|i| &backends[i])
    }
}

fn upstream_client(timeouts: &Timeouts) -> UpstreamClient {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(timeouts.connect));
    connector.set_nodelay(true);
    connector.enforce_http(true);
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .pool_idle_timeout(std::time::Duration::from_secs(90))
        .build(connector)
}
