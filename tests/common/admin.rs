//! The admin API as tests read it: `/api/pools` and its backends.
#![allow(dead_code)]

use http::StatusCode;
use std::net::SocketAddr;
use std::time::Duration;
use switchyard::server::Server;

#[allow(unused_imports)]
use super::*;

/// Waits (up to `within`) until no backend of the in-process proxy has a request in flight.
pub async fn no_request_left(server: &Server, within: Duration) -> bool {
    super::eventually(within, || async {
        admin_get(server, "/api/pools")
            .await
            .1
            .contains("\"active_requests\": 0")
    })
    .await
}

pub async fn admin_get(server: &Server, path: &str) -> (StatusCode, String) {
    let (s, _, b) = get(server.admin_addr, path, None).await;
    (s, b)
}

/// `/api/pools` as JSON.
pub async fn pools(server: &Server) -> serde_json::Value {
    let (_, body) = admin_get(server, "/api/pools").await;
    serde_json::from_str(&body).unwrap()
}

/// Backend `addr` of pool `p` in an `/api/pools` answer (`null` if absent).
pub fn backend_json(pools: &serde_json::Value, addr: SocketAddr) -> &serde_json::Value {
    static NULL: serde_json::Value = serde_json::Value::Null;
    pools["pools"]["p"]["backends"]
        .as_array()
        .and_then(|list| list.iter().find(|b| b["address"] == addr.to_string()))
        .unwrap_or(&NULL)
}

/// The event feed (`/api/events`), newest first, as (kind, backend, message).
pub async fn events(server: &Server) -> Vec<(String, String, String)> {
    let (_, body) = admin_get(server, "/api/events").await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let s = |k: &str| e[k].as_str().unwrap_or_default().to_owned();
            (s("kind"), s("backend"), s("message"))
        })
        .collect()
}

/// The kinds of the events about `backend`, oldest first.
pub async fn event_kinds(server: &Server, backend: &str) -> Vec<String> {
    let mut kinds: Vec<String> = events(server)
        .await
        .into_iter()
        .filter(|(_, b, _)| b == backend)
        .map(|(k, _, _)| k)
        .collect();
    kinds.reverse();
    kinds
}

/// Waits until every backend in `addrs` shows `healthy: false` in `/api/pools`.
pub async fn all_down(server: &Server, addrs: &[SocketAddr]) -> bool {
    eventually(Duration::from_secs(10), || async {
        let p = pools(server).await;
        addrs
            .iter()
            .all(|a| backend_json(&p, *a)["healthy"] == false)
    })
    .await
}
/// An admin endpoint's JSON answer.
pub async fn admin_json(admin: u16, path: &str) -> serde_json::Value {
    let (_, _, body) = get(([127, 0, 0, 1], admin).into(), path, None).await;
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"))
}

/// The backends of pool `p` whose circuit is in `state`, from `/api/pools`.
pub async fn circuits(admin: u16, state: &str) -> usize {
    let pools = admin_json(admin, "/api/pools").await;
    pools["pools"]["p"]["backends"]
        .as_array()
        .map_or(0, |list| {
            list.iter().filter(|b| b["circuit"] == state).count()
        })
}
