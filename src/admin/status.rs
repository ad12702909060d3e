//! The status page (`GET /`, `/ui/…`), what it reads (`/api/status`, `/api/events`, `/api/events/stream`), and
//! the same figures for `switchyard status`.
//!
//! The page is three small files compiled into the binary: it loads nothing from elsewhere, needs no build step,
//! and the listener's `Content-Security-Policy` lets it run only its own script.

use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;
use tokio::time::Instant;

use super::{backend_json, json_response, refresh_breakers};
use crate::balance::backend::Backend;
use crate::balance::pool::Pool;
use crate::control::Shared;
use crate::observe::status::{Figures, POINT, View};
use crate::proxy::ProxyBody;

const INDEX: &str = include_str!("ui/index.html");
const SCRIPT: &str = include_str!("ui/app.js");
const STYLE: &str = include_str!("ui/app.css");

/// The page and its assets, by path; `None` for any other path.
pub(super) fn asset(path: &str) -> Option<Response<ProxyBody>> {
    let (text, content_type) = match path {
        "/" | "/index.html" => (INDEX, "text/html; charset=utf-8"),
        "/ui/app.js" => (SCRIPT, "text/javascript; charset=utf-8"),
        "/ui/app.css" => (STYLE, "text/css; charset=utf-8"),
        _ => return None,
    };
    let mut resp = Response::new(ProxyBody::local(text));
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    Some(resp)
}

/// Everything the page shows, once: pools sorted by name, each with its live figures, its 15-minute history
/// and its backends.
pub(crate) fn status_json(shared: &Shared) -> Value {
    refresh_breakers(shared);
    let now = Instant::now();
    let wall = SystemTime::now();
    let snapshot = shared.snapshot.load();
    let live = shared.metrics.status.view();
    let mut names: Vec<&String> = snapshot.pools.keys().collect();
    names.sort();
    let pools: Vec<Value> = names
        .into_iter()
        .filter_map(|name| {
            snapshot
                .pools
                .get(name)
                .map(|p| pool_json(p, &live, now, wall))
        })
        .collect();
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "generated_at": humantime::format_rfc3339_millis(wall).to_string(),
        "shutting_down": shared.shutting_down.load(Ordering::Relaxed),
        "history_interval_seconds": POINT.as_secs(),
        "pools": pools,
    })
}

fn pool_json(pool: &Pool, live: &View, now: Instant, wall: SystemTime) -> Value {
    let panic = pool.in_panic();
    let backends: Vec<Value> = pool
        .backends
        .iter()
        .map(|b| {
            let mut v = backend_json(b, now, wall);
            // Health counts even in panic mode: a pool whose backends are all down has none usable, though it
            // still sends them requests.
            let usable = b.is_available(now, false) || b.is_busy(now, false);
            if let Value::Object(map) = &mut v {
                map.insert("usable".into(), json!(usable));
                map.insert("state".into(), json!(state_word(b, now)));
                figures_into(map, live.backend(&pool.name, &b.address));
            }
            v
        })
        .collect();
    let usable = backends
        .iter()
        .filter(|b| b["usable"] == json!(true))
        .count();
    let history: Vec<[f32; 2]> = live
        .history(&pool.name)
        .iter()
        .map(|p| [round2(p.rate), round2(p.errors)])
        .collect();
    let mut v = json!({
        "name": pool.name,
        "algorithm": pool.algorithm.as_str(),
        "health_checks": pool.health_check.is_some(),
        "panic": panic,
        "backends_total": backends.len(),
        "backends_usable": usable,
        "queue_waiting": pool.state.queue.waiting(),
        "history": history,
        "backends": backends,
    });
    if let Value::Object(map) = &mut v {
        figures_into(map, live.pool(&pool.name));
    }
    v
}

fn round2(x: f32) -> f32 {
    (x * 100.0).round() / 100.0
}

fn figures_into(map: &mut serde_json::Map<String, Value>, f: Figures) {
    let r = |x: f64| (x * 100.0).round() / 100.0;
    map.insert("requests_per_second".into(), json!(r(f.rate)));
    map.insert("errors_per_second".into(), json!(r(f.errors)));
    map.insert("p50_ms".into(), json!(f.p50_ms.map(r)));
    map.insert("p99_ms".into(), json!(f.p99_ms.map(r)));
}

/// The one word that says why a backend is (not) taking requests, most serious first.
fn state_word(b: &Backend, now: Instant) -> &'static str {
    use crate::balance::breaker::State;
    if b.is_disabled() {
        "disabled"
    } else if b.is_draining() {
        "draining"
    } else if !b.is_healthy() {
        "down"
    } else if b.breaker.state() == State::Open {
        "circuit open"
    } else if b.breaker.state() == State::HalfOpen {
        "half-open"
    } else if b.is_ejected(now) {
        "ejected"
    } else if b.weight() == 0 {
        "weight 0"
    } else if b.effective_weight(now) < b.weight() as f64 {
        "warming up"
    } else {
        "up"
    }
}

/// `{"events": [...]}`, newest first.
pub(super) fn events_json(shared: &Shared) -> Value {
    let events: Vec<Value> = shared
        .metrics
        .events
        .newest_first()
        .iter()
        .map(|e| serde_json::to_value(&**e).unwrap_or(Value::Null))
        .collect();
    json!({ "events": events })
}

/// `text/event-stream`: each new event as `id:`/`event:`/`data:` (JSON), a comment every 15 s so proxies and
/// browsers keep the connection; the stream ends at shutdown, when the reader leaves, and when it falls more
/// than 256 events behind (it then reads `/api/events` again).
pub(super) fn events_stream(shared: &Shared) -> Response<ProxyBody> {
    let events = std::sync::Arc::clone(&shared.metrics.events);
    let mut live = events.subscribe();
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(16);
    tokio::spawn(async move {
        if tx
            .send(Bytes::from_static(b"retry: 2000\n\n"))
            .await
            .is_err()
        {
            return;
        }
        loop {
            let chunk = tokio::select! {
                got = live.recv() => match got {
                    Ok(e) => {
                        let data = serde_json::to_string(&*e).unwrap_or_default();
                        Bytes::from(format!("id: {}\nevent: {}\ndata: {data}\n\n", e.id, "change"))
                    }
                    // Fallen behind: end the stream; the reader reconnects and reads /api/events again.
                    Err(RecvError::Lagged(_)) | Err(RecvError::Closed) => return,
                },
                () = tokio::time::sleep(Duration::from_secs(15)) => Bytes::from_static(b": keep-alive\n\n"),
                () = events.closed() => return,
                () = tx.closed() => return,
            };
            if tx.send(chunk).await.is_err() {
                return;
            }
        }
    });
    let mut resp = Response::new(ProxyBody::Feed(rx));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream; charset=utf-8"),
    );
    resp
}

/// 404 for `/ui/` paths that are not an asset.
pub(super) fn not_found() -> Response<ProxyBody> {
    json_response(StatusCode::NOT_FOUND, &json!({ "error": "not found" }))
}
