//! The admin listener: `/healthz`, `/metrics` and the `/api` endpoints. It reads the same snapshot and
//! per-backend atomics as the data path and never blocks it.

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::{Value, json};

use crate::proxy::{ProxyBody, plain};
use crate::server::Shared;

pub async fn handle(shared: &Shared, req: Request<Incoming>) -> Response<ProxyBody> {
    let path = req.uri().path();
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return match path {
            "/healthz" | "/metrics" | "/api/pools" => {
                plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
            }
            _ => plain(StatusCode::NOT_FOUND, "not found\n"),
        };
    }
    match path {
        "/healthz" => plain(StatusCode::OK, "ok\n"),
        "/metrics" => with_type(
            ProxyBody::owned(shared.metrics.render()),
            "text/plain; version=0.0.4; charset=utf-8",
        ),
        "/api/pools" => json_response(&pools_json(shared)),
        _ => plain(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// `{"pools": {"NAME": {"algorithm": ..., "backends": [...]}}}`
pub fn pools_json(shared: &Shared) -> Value {
    let snapshot = shared.snapshot.load();
    let pools: serde_json::Map<String, Value> = snapshot
        .pools
        .iter()
        .map(|(name, pool)| {
            let backends: Vec<Value> = pool
                .backends
                .iter()
                .map(|b| {
                    json!({
                        "address": b.address,
                        "weight": b.weight,
                        "healthy": b.is_healthy(),
                        "circuit": "closed",
                        "active_requests": b.active_requests(),
                    })
                })
                .collect();
            (
                name.clone(),
                json!({ "algorithm": pool.algorithm.as_str(), "backends": backends }),
            )
        })
        .collect();
    json!({ "pools": pools })
}

fn json_response(value: &Value) -> Response<ProxyBody> {
    let mut body = serde_json::to_vec_pretty(value).unwrap_or_default();
    body.push(b'\n');
    with_type(ProxyBody::owned(body), "application/json")
}

fn with_type(body: ProxyBody, content_type: &'static str) -> Response<ProxyBody> {
    let mut resp = Response::new(body);
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}
