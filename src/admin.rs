//! The admin listener: `/healthz`, `/metrics` and the `/api` endpoints. It reads the same snapshot and
//! per-backend atomics as the data path and never blocks it.

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use std::time::SystemTime;

use serde_json::{Value, json};
use tokio::time::Instant;

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
        "/metrics" => {
            refresh_breakers(shared);
            with_type(
                ProxyBody::owned(shared.metrics.render()),
                "text/plain; version=0.0.4; charset=utf-8",
            )
        }
        "/api/pools" => json_response(&pools_json(shared)),
        _ => plain(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// Applies the passing of time to every breaker (open → half-open), so observers see the current state.
fn refresh_breakers(shared: &Shared) {
    let now = Instant::now();
    for pool in shared.snapshot.load().pools.values() {
        for b in &pool.backends {
            b.refresh_breaker(now);
        }
    }
}

fn rfc3339(at: SystemTime) -> String {
    humantime::format_rfc3339_millis(at).to_string()
}

/// `{"pools": {"NAME": {"algorithm": ..., "backends": [...]}}}`
pub fn pools_json(shared: &Shared) -> Value {
    refresh_breakers(shared);
    let now = Instant::now();
    let wall = SystemTime::now();
    let snapshot = shared.snapshot.load();
    let pools: serde_json::Map<String, Value> = snapshot
        .pools
        .iter()
        .map(|(name, pool)| {
            let backends: Vec<Value> = pool
                .backends
                .iter()
                .map(|b| {
                    let (state, failures, open_until) = b.breaker.snapshot();
                    let last_error = b.last_check_error();
                    json!({
                        "address": b.address,
                        "weight": b.weight,
                        "healthy": b.is_healthy(),
                        "circuit": state.as_str(),
                        "active_requests": b.active_requests(),
                        "consecutive_failures": failures,
                        "half_open_at": open_until.map(|u| rfc3339(wall + u.saturating_duration_since(now))),
                        "last_check_error": last_error.as_ref().map(|e| e.reason.clone()),
                        "last_check_error_at": last_error.as_ref().map(|e| rfc3339(e.at)),
                    })
                })
                .collect();
            (
                name.clone(),
                json!({
                    "algorithm": pool.algorithm.as_str(),
                    "health_checks": pool.health_check.is_some(),
                    "panic": pool.in_panic(),
                    "backends": backends,
                }),
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
