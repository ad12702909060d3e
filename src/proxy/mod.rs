//! The data path, top to bottom: route → pick → forward → record.

mod body;
pub mod headers;

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use http::header::{self, HeaderValue};
use http::uri::{PathAndQuery, Scheme, Uri};
use http::{Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use tokio::time::Instant;

pub use body::{Completion, ProxyBody};

use crate::error::ProxyError;
use crate::metrics::BackendMetrics;
use crate::router::Snapshot;

/// The proxy service shared by every connection of every listener.
pub struct Proxy {
    pub snapshot: Arc<ArcSwap<Snapshot>>,
}

impl Proxy {
    pub fn new(snapshot: Arc<ArcSwap<Snapshot>>) -> Self {
        Self { snapshot }
    }

    /// Serves one client request.
    pub async fn handle(
        &self,
        mut req: Request<Incoming>,
        peer: SocketAddr,
    ) -> Response<ProxyBody> {
        let started = Instant::now();
        let pool = {
            let snapshot = self.snapshot.load();
            let host = request_host(&req);
            match snapshot.routes.route(host, req.uri().path()) {
                Some(pool) => Arc::clone(pool),
                None => {
                    return local_answer(&ProxyError::NoRoute, &snapshot.no_route_metrics, started);
                }
            }
        };
        let Some(backend) = pool.pick() else {
            return local_answer(&ProxyError::NoBackend, &pool.local_metrics, started);
        };
        let in_flight = backend.begin();

        let original_host = req.headers().get(header::HOST).cloned().or_else(|| {
            req.uri()
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        let headers = req.headers_mut();
        headers::strip_hop_by_hop(headers);
        headers::add_forwarded(headers, peer.ip(), "http", original_host.clone());
        if !headers.contains_key(header::HOST) {
            if let Some(host) = original_host {
                headers.insert(header::HOST, host);
            }
        }
        *req.version_mut() = Version::HTTP_11;
        let path = req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(Scheme::HTTP);
        parts.authority = Some(backend.authority.clone());
        parts.path_and_query = Some(path);
        match Uri::from_parts(parts) {
            Ok(uri) => *req.uri_mut() = uri,
            Err(_) => return local_answer(&ProxyError::BadRequest, &pool.local_metrics, started),
        }

        let result =
            match tokio::time::timeout(pool.timeouts.request, pool.client.request(req)).await {
                Ok(Ok(resp)) => Ok(resp),
                Ok(Err(e)) => Err(ProxyError::from_client(e)),
                Err(_) => Err(ProxyError::Timeout),
            };
        match result {
            Ok(resp) => {
                let (mut parts, body) = resp.into_parts();
                headers::strip_hop_by_hop(&mut parts.headers);
                backend.metrics.count_response(parts.status);
                let done = Completion { started, in_flight };
                Response::from_parts(parts, ProxyBody::Upstream { body, done })
            }
            Err(e) => {
                if let Some(kind) = e.upstream_kind() {
                    backend.metrics.count_error(kind);
                }
                tracing::warn!(pool = %pool.name, backend = %backend.address, error = %e,
                    cause = ?std::error::Error::source(&e), "upstream request failed");
                drop(in_flight);
                local_answer(&e, &pool.local_metrics, started)
            }
        }
    }
}

/// The host a request is for: the authority of an absolute-form target (and HTTP/2's `:authority`), else `Host`.
fn request_host<B>(req: &Request<B>) -> Option<&str> {
    req.uri().host().or_else(|| {
        req.headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
    })
}

/// An answer the proxy gives itself, counted with `backend="none"`.
fn local_answer(
    error: &ProxyError,
    metrics: &BackendMetrics,
    started: Instant,
) -> Response<ProxyBody> {
    let status = error.status();
    metrics.count_response(status);
    metrics.duration.observe(started.elapsed().as_secs_f64());
    plain(status, error.reason())
}

/// A short plain-text response.
pub fn plain(status: StatusCode, text: &'static str) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::local(text));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}
