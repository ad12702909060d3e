//! The admin listener: `/healthz`, `/metrics` and the `/api` endpoints. It reads the same snapshot and
//! per-backend atomics as the data path and never blocks it.

use crate::balance::adaptive::{instant_of, stamp};
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use std::borrow::Cow;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use serde_json::{Value, json};
use tokio::time::Instant;

use crate::balance::backend::Backend;
use crate::config::MAX_WEIGHT;
use crate::control::Trigger;
use crate::control::{Shared, request_reload};
use crate::observe::events::{Kind, Level};
use crate::proxy::{ProxyBody, plain};

mod status;

pub(crate) async fn handle(shared: &Shared, req: Request<Incoming>) -> Response<ProxyBody> {
    let mut resp = answer(shared, req).await;
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        ),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    resp
}

async fn answer(shared: &Shared, req: Request<Incoming>) -> Response<ProxyBody> {
    // The page itself holds no data: it loads without the token and asks for it when the API does.
    if req.method() == Method::GET || req.method() == Method::HEAD {
        if let Some(page) = status::asset(req.uri().path()) {
            return page;
        }
    }
    let token_set = shared.snapshot.load().admin_token.is_some();
    if let Some(why) = browser_guard(req.method(), req.headers(), token_set) {
        return plain(StatusCode::FORBIDDEN, why);
    }
    if let Some(token) = shared.snapshot.load().admin_token.as_deref() {
        if !authorized(req.headers(), token) {
            let mut resp = plain(
                StatusCode::UNAUTHORIZED,
                "unauthorized: send Authorization: Bearer <token>\n",
            );
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return resp;
        }
    }
    let path = req.uri().path();
    let method = req.method();
    match (path, method) {
        ("/healthz", &Method::GET | &Method::HEAD) => {
            if shared.shutting_down.load(Ordering::Relaxed) {
                plain(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
            } else {
                plain(StatusCode::OK, "ok\n")
            }
        }
        ("/metrics", &Method::GET | &Method::HEAD) => {
            refresh_breakers(shared);
            refresh_balancing(shared);
            with_type(
                ProxyBody::owned(shared.metrics.render()),
                "text/plain; version=0.0.4; charset=utf-8",
            )
        }
        ("/api/pools", &Method::GET | &Method::HEAD) => {
            json_response(StatusCode::OK, &pools_json(shared))
        }
        ("/api/routes", &Method::GET | &Method::HEAD) => {
            json_response(StatusCode::OK, &routes_json(shared))
        }
        ("/api/status", &Method::GET | &Method::HEAD) => {
            compact_json_response(StatusCode::OK, &status::status_json(shared))
        }
        ("/api/events", &Method::GET | &Method::HEAD) => {
            json_response(StatusCode::OK, &status::events_json(shared))
        }
        ("/api/events/stream", &Method::GET) => status::events_stream(shared),
        ("/api/reload", &Method::POST) => match request_reload(shared, Trigger::Admin).await {
            Ok(outcome) => {
                let mut v = serde_json::to_value(&outcome).unwrap_or(Value::Null);
                if let Value::Object(map) = &mut v {
                    map.remove("applied");
                    map.insert("status".to_owned(), json!("ok"));
                }
                json_response(StatusCode::OK, &v)
            }
            Err(e) => json_response(StatusCode::BAD_REQUEST, &json!({ "error": e.to_string() })),
        },
        (
            "/healthz" | "/metrics" | "/api/pools" | "/api/routes" | "/api/reload" | "/api/status"
            | "/api/events" | "/api/events/stream" | "/" | "/ui/app.js" | "/ui/app.css",
            _,
        ) => method_not_allowed(),
        (p, _) if p.starts_with("/ui/") => status::not_found(),
        _ => match backend_action(path) {
            Some((pool, address, Action::Service(action))) if method == Method::POST => {
                set_service(shared, &pool, &address, action)
            }
            Some((pool, address, Action::Weight))
                if method == Method::POST || method == Method::DELETE =>
            {
                let (pool, address) = (pool.into_owned(), address.into_owned());
                set_weight(shared, &pool, &address, req).await
            }
            Some(_) => method_not_allowed(),
            None => plain(StatusCode::NOT_FOUND, "not found\n"),
        },
    }
}

/// `POST .../weight` with `{"weight": N}` (0-1000) sets a runtime weight; `DELETE` returns the backend to its
/// configured one. The pool's selector is rebuilt with it (the control loop publishes a new snapshot).
async fn set_weight(
    shared: &Shared,
    pool: &str,
    address: &str,
    req: Request<Incoming>,
) -> Response<ProxyBody> {
    if shared.shutting_down.load(Ordering::Relaxed) {
        return json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({ "error": "switchyard is shutting down" }),
        );
    }
    let weight = if req.method() == Method::DELETE {
        None
    } else {
        match read_weight(req).await {
            Ok(w) => Some(w),
            Err(e) => return json_response(StatusCode::BAD_REQUEST, &json!({ "error": e })),
        }
    };
    let backend = match find_backend(shared, pool, address) {
        Ok(b) => b,
        Err(resp) => return *resp,
    };
    backend.set_weight_override(weight);
    let message = match weight {
        Some(w) => format!("runtime weight {w} set (admin API)"),
        None => format!(
            "runtime weight removed (admin API): the configured weight {} applies",
            backend.weight()
        ),
    };
    backend.metrics.events.record(
        Kind::WeightChanged,
        Level::Info,
        Some(pool),
        Some(address),
        message,
    );
    match weight {
        Some(w) => tracing::info!(pool, backend = address, weight = w, "runtime weight set"),
        None => tracing::info!(
            pool,
            backend = address,
            weight = backend.weight(),
            "runtime weight removed: the configured weight applies"
        ),
    }
    if let Err(e) = crate::control::request_rebuild(shared).await {
        return json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({ "error": e.to_string() }),
        );
    }
    json_response(
        StatusCode::OK,
        &json!({
            "pool": pool,
            "backend": address,
            "weight": backend.weight(),
            "weight_override": backend.weight_override(),
        }),
    )
}

/// `{"weight": N}` from a request body of at most 4 KiB.
#[doc(hidden)]
pub async fn read_weight(req: Request<Incoming>) -> Result<u32, String> {
    use http_body_util::BodyExt;
    let body = http_body_util::Limited::new(req.into_body(), 4096)
        .collect()
        .await
        .map_err(|e| format!("cannot read the body: {e}"))?
        .to_bytes();
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Body {
        weight: i64,
    }
    let shape = || format!("the body must be {{\"weight\": N}} with N from 0 to {MAX_WEIGHT}");
    // serde would also read the struct from an array of its fields (`[N]`); only the object is the API.
    if !body.trim_ascii_start().starts_with(b"{") {
        return Err(shape());
    }
    let parsed: Body = serde_json::from_slice(&body).map_err(|e| format!("{}: {e}", shape()))?;
    u32::try_from(parsed.weight)
        .ok()
        .filter(|&w| w <= MAX_WEIGHT)
        .ok_or_else(|| {
            format!(
                "weight {} is out of range; allowed values: 0 to {MAX_WEIGHT}",
                parsed.weight
            )
        })
}

/// Pool `pool`'s backend `address` in the current snapshot, or the 404 that says which is missing.
fn find_backend(
    shared: &Shared,
    pool: &str,
    address: &str,
) -> Result<std::sync::Arc<crate::balance::backend::Backend>, Box<Response<ProxyBody>>> {
    let snapshot = shared.snapshot.load();
    let Some(p) = snapshot.pools.get(pool) else {
        return Err(Box::new(json_response(
            StatusCode::NOT_FOUND,
            &json!({ "error": format!("no pool {pool:?}") }),
        )));
    };
    p.backends
        .iter()
        .find(|b| b.address == address)
        .cloned()
        .ok_or_else(|| {
            Box::new(json_response(
                StatusCode::NOT_FOUND,
                &json!({ "error": format!("pool {pool:?} has no backend {address:?}") }),
            ))
        })
}

/// What a browser must not do to the admin API now that it has a page: another site's page posting to it
/// (drain, reload) without a token to stop it, or reading it through a DNS name rebound to 127.0.0.1. Requests
/// from curl, scripts and Prometheus carry neither `Origin` nor a name for `Host`, and pass.
fn browser_guard(
    method: &Method,
    headers: &http::HeaderMap,
    token_set: bool,
) -> Option<&'static str> {
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    if method != Method::GET && method != Method::HEAD {
        let cross_site = headers
            .get("sec-fetch-site")
            .is_some_and(|v| v.as_bytes() == b"cross-site" || v.as_bytes() == b"same-site");
        let foreign_origin = headers.get(header::ORIGIN).is_some_and(|origin| {
            let origin = origin.to_str().unwrap_or("");
            let origin_host = origin.split_once("://").map_or(origin, |(_, h)| h);
            Some(origin_host) != host
        });
        if cross_site || foreign_origin {
            return Some("forbidden: a cross-origin request to the admin API\n");
        }
    }
    if !token_set {
        let named = host.is_some_and(|h| {
            let name = match h.rsplit_once(':') {
                Some((n, port)) if port.bytes().all(|b| b.is_ascii_digit()) => n,
                _ => h,
            };
            let name = name.trim_start_matches('[').trim_end_matches(']');
            name.parse::<std::net::IpAddr>().is_err() && !name.eq_ignore_ascii_case("localhost")
        });
        if named {
            return Some(
                "forbidden: without admin.token_file the admin API answers only to an IP address or localhost \
                 in Host (a guard against DNS rebinding)\n",
            );
        }
    }
    None
}

/// Does the request carry `Authorization: Bearer <token>`? Compared in constant time, so the answer's timing
/// tells nothing about how much of a guess was right.
fn authorized(headers: &http::HeaderMap, token: &str) -> bool {
    let Some(given) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
    else {
        return false;
    };
    let expected = token.as_bytes();
    let mut diff = u8::from(given.len() != expected.len());
    for (i, e) in expected.iter().enumerate() {
        diff |= e ^ given.get(i).copied().unwrap_or(0);
    }
    std::hint::black_box(diff) == 0
}

fn method_not_allowed() -> Response<ProxyBody> {
    plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
}

/// What the operator does to a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Service {
    /// No new clients; sticky clients stay (`/drain`).
    Drain,
    /// No requests at all, sticky clients included (`/disable`).
    Disable,
    /// Back in service (`/enable`).
    Enable,
}

/// What an admin path under a backend asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Service(Service),
    /// `/weight`.
    Weight,
}

/// `/api/pools/{pool}/backends/{address}/drain` (or `/disable`, `/enable`, `/weight`) → (pool, address, action).
fn backend_action(path: &str) -> Option<(Cow<'_, str>, Cow<'_, str>, Action)> {
    let rest = path.strip_prefix("/api/pools/")?;
    let (pool, rest) = rest.split_once("/backends/")?;
    let (address, action) = rest.rsplit_once('/')?;
    if pool.contains('/') {
        return None;
    }
    // The page percent-encodes both (pool names are any TOML key).
    let decode = |s| percent_encoding::percent_decode_str(s).decode_utf8().ok();
    let (pool, address) = (decode(pool)?, decode(address)?);
    let action = match action {
        "drain" => Action::Service(Service::Drain),
        "disable" => Action::Service(Service::Disable),
        "enable" => Action::Service(Service::Enable),
        "weight" => Action::Weight,
        _ => return None,
    };
    (!pool.is_empty() && !address.is_empty()).then_some((pool, address, action))
}

/// Drains, disables or enables one backend; requests in flight finish either way.
fn set_service(shared: &Shared, pool: &str, address: &str, action: Service) -> Response<ProxyBody> {
    let backend = match find_backend(shared, pool, address) {
        Ok(b) => b,
        Err(resp) => return *resp,
    };
    let (draining, disabled) = match action {
        Service::Drain => (true, false),
        Service::Disable => (backend.is_draining(), true),
        Service::Enable => (false, false),
    };
    let changed = backend.is_draining() != draining || backend.is_disabled() != disabled;
    backend.set_disabled(disabled);
    backend.set_draining(draining);
    if changed {
        match action {
            Service::Drain => tracing::info!(
                pool,
                backend = address,
                "backend draining: no new clients (sticky clients stay)"
            ),
            Service::Disable => tracing::info!(
                pool,
                backend = address,
                "backend disabled: no new requests, sticky clients included"
            ),
            Service::Enable => tracing::info!(pool, backend = address, "backend enabled"),
        }
        let (kind, message) = match action {
            Service::Drain => (
                Kind::BackendDraining,
                "draining (admin API): no new clients, sticky clients stay",
            ),
            Service::Disable => (
                Kind::BackendDisabled,
                "disabled (admin API): no new requests, sticky clients included",
            ),
            Service::Enable => (Kind::BackendEnabled, "enabled (admin API): back in service"),
        };
        backend
            .metrics
            .events
            .record(kind, Level::Info, Some(pool), Some(address), message);
    }
    json_response(
        StatusCode::OK,
        &json!({
            "pool": pool,
            "backend": address,
            "draining": draining,
            "disabled": disabled,
            "active_requests": backend.active_requests(),
        }),
    )
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

/// Sets the gauges read from the backends' own state: latency estimates, effective weights, queue lengths.
fn refresh_balancing(shared: &Shared) {
    let now = Instant::now();
    let now_ns = stamp(now);
    let m = &shared.metrics.balancing;
    for pool in shared.snapshot.load().pools.values() {
        for b in &pool.backends {
            let labels = [pool.name.as_str(), b.address.as_str()];
            m.latency_ewma_seconds
                .with_label_values(&labels)
                .set(b.latency.estimate(now_ns) / 1e9);
            m.effective_weight
                .with_label_values(&labels)
                .set(b.effective_weight(now));
        }
        m.queue_waiting
            .with_label_values(&[pool.name.as_str()])
            .set(pool.state.queue.waiting() as i64);
    }
}

/// A time kept as a balancing stamp, as wall-clock RFC 3339.
fn stamp_rfc3339(stamp_ns: u64, now: Instant, wall: SystemTime) -> String {
    rfc3339(wall + instant_of(stamp_ns, now).saturating_duration_since(now))
}

fn rfc3339(at: SystemTime) -> String {
    humantime::format_rfc3339_millis(at).to_string()
}

/// `{"pools": {"NAME": {"algorithm": ..., "backends": [...]}}}`
pub(crate) fn pools_json(shared: &Shared) -> Value {
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
                .map(|b| backend_json(b, now, wall))
                .collect();
            (
                name.clone(),
                json!({
                    "algorithm": pool.algorithm.as_str(),
                    "health_checks": pool.health_check.is_some(),
                    "panic": pool.in_panic(),
                    "circuit_breaker_capped": pool.breaker_capped(),
                    "queue_waiting": pool.state.queue.waiting(),
                    "hash": pool.hash_key.as_ref().map(|key| json!({
                        "key": key.describe(),
                        "table_size": pool.hash.table_size,
                        "balance_factor": pool.hash.balance_factor,
                    })),
                    "sticky_cookie": pool.sticky.as_ref().map(|s| s.cookie.as_str()),
                    "backends": backends,
                }),
            )
        })
        .collect();
    json!({ "pools": pools })
}

/// One backend as `/api/pools` (and the status page) shows it.
fn backend_json(b: &Backend, now: Instant, wall: SystemTime) -> Value {
    let (state, failures, open_until) = b.breaker.snapshot();
    let last_error = b.last_check_error();
    let now_ns = stamp(now);
    let ejected_until = b
        .outlier
        .ejected_until()
        .filter(|&t| t > now_ns)
        .map(|t| stamp_rfc3339(t, now, wall));
    json!({
        "latency_ewma_ms": (b.latency.estimate(now_ns) / 1e3).round() / 1e3,
        "effective_weight": (b.effective_weight(now) * 1e3).round() / 1e3,
        "slow_start_ends_at": b.ramp.ends_at(now_ns).map(|t| stamp_rfc3339(t, now, wall)),
        "ejected_until": ejected_until,
        "address": b.address,
        "source": b.source().as_str(),
        "weight": b.weight(),
        "weight_override": b.weight_override(),
        "draining": b.is_draining(),
        "disabled": b.is_disabled(),
        "healthy": b.is_healthy(),
        "circuit": state.as_str(),
        "circuit_held_closed": b.breaker.is_held_closed(),
        "active_requests": b.active_requests(),
        "consecutive_failures": failures,
        "half_open_at": open_until.map(|u| rfc3339(wall + u.saturating_duration_since(now))),
        "last_check_error": last_error.as_ref().map(|e| e.reason.clone()),
        "last_check_error_at": last_error.as_ref().map(|e| rfc3339(e.at)),
    })
}

/// `{"routes": [...]}`: each route as configured, in file order, with its metrics label.
fn routes_json(shared: &Shared) -> Value {
    let snapshot = shared.snapshot.load();
    let routes: Vec<Value> = snapshot
        .route_settings
        .iter()
        .map(|r| {
            let headers: serde_json::Map<String, Value> = r
                .headers
                .iter()
                .map(|c| (c.name.to_string(), json!(c.value.as_deref().unwrap_or("*"))))
                .collect();
            let split: Vec<Value> = r
                .split
                .iter()
                .map(|(pool, weight)| json!({ "pool": pool, "weight": weight }))
                .collect();
            json!({
                "route": r.label(),
                "host": r.host,
                "path_prefix": r.path_prefix,
                "headers": headers,
                "split": split,
                "sticky_split": r.sticky_split.as_ref().map(|c| format!("cookie:{c}")),
                "mirror": r.mirror.as_ref().map(|m| json!({
                    "pool": m.pool,
                    "percent": m.percent,
                    "max_body_bytes": m.max_body_bytes,
                    "max_in_flight": m.max_in_flight,
                })),
                "rate_limits": r.rate_limits,
            })
        })
        .collect();
    json!({ "routes": routes })
}

fn json_response(status: StatusCode, value: &Value) -> Response<ProxyBody> {
    let mut body = serde_json::to_vec_pretty(value).unwrap_or_default();
    body.push(b'\n');
    json_body(status, body)
}

/// One line of JSON, for what the page and `switchyard status` poll every second.
fn compact_json_response(status: StatusCode, value: &Value) -> Response<ProxyBody> {
    let mut body = serde_json::to_vec(value).unwrap_or_default();
    body.push(b'\n');
    json_body(status, body)
}

fn json_body(status: StatusCode, body: Vec<u8>) -> Response<ProxyBody> {
    let mut resp = with_type(ProxyBody::owned(body), "application/json");
    *resp.status_mut() = status;
    resp
}

fn with_type(body: ProxyBody, content_type: &'static str) -> Response<ProxyBody> {
    let mut resp = Response::new(body);
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> http::HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    http::HeaderName::from_static(k),
                    HeaderValue::from_static(v),
                )
            })
            .collect()
    }

    #[test]
    fn browsers_from_elsewhere_are_refused_and_scripts_pass() {
        let post = Method::POST;
        let local = headers(&[("host", "127.0.0.1:9901")]);
        assert_eq!(browser_guard(&post, &local, false), None);
        let same = headers(&[
            ("host", "127.0.0.1:9901"),
            ("origin", "http://127.0.0.1:9901"),
        ]);
        assert_eq!(browser_guard(&post, &same, false), None);
        let other = headers(&[
            ("host", "127.0.0.1:9901"),
            ("origin", "https://evil.example"),
        ]);
        assert!(browser_guard(&post, &other, true).is_some());
        let fetch_meta = headers(&[("host", "127.0.0.1:9901"), ("sec-fetch-site", "cross-site")]);
        assert!(browser_guard(&post, &fetch_meta, true).is_some());
        // A GET from another origin reads nothing it may see (no CORS headers), so it is not refused here.
        assert_eq!(browser_guard(&Method::GET, &other, false), None);
        // DNS rebinding: a name in Host without a token.
        let rebound = headers(&[("host", "evil.example:9901")]);
        assert!(browser_guard(&Method::GET, &rebound, false).is_some());
        assert_eq!(browser_guard(&Method::GET, &rebound, true), None);
        for ok in ["localhost:9901", "[::1]:9901", "127.0.0.1", "LOCALHOST"] {
            let h = http::HeaderMap::from_iter([(header::HOST, HeaderValue::from_static(ok))]);
            assert_eq!(browser_guard(&Method::GET, &h, false), None, "{ok}");
        }
    }
}
