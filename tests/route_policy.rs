//! Route policy: runtime weights set and removed through the admin API, kept across reloads. Real backends on
//! 127.0.0.1, the proxy in-process.
#![allow(clippy::disallowed_methods)] // wall-clock time against real processes and sockets

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use http::{Method, Request, StatusCode};
use http_body_util::BodyExt;

use common::*;
use switchyard::server::Server;

async fn admin(
    server: &Server,
    method: Method,
    path: &str,
    body: &str,
) -> (StatusCode, serde_json::Value) {
    let req = Request::builder()
        .method(method)
        .uri(format!("http://{}{path}", server.admin_addr))
        .body(full(body.to_owned()))
        .unwrap();
    let resp = client().request(req).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
    )
}

async fn shares(server: &Server, n: usize) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for _ in 0..n {
        let (_, headers, _) = get(server.listen_addrs[0], "/", None).await;
        let name = headers
            .get("x-backend")
            .map_or("none", |v| v.to_str().unwrap())
            .to_owned();
        *seen.entry(name).or_insert(0) += 1;
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runtime_weight_applies_at_once_survives_a_reload_and_is_removed() {
    let a = named_backend("a", Duration::ZERO).await;
    let b = named_backend("b", Duration::ZERO).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("switchyard.toml");
    let text = |extra: &str| pool_config(&[a, b], extra);
    std::fs::write(&path, text("")).unwrap();
    let server = Server::start_with_file(switchyard::config::load(&path).unwrap(), path.clone())
        .await
        .unwrap();
    let weight_path = |addr: SocketAddr| format!("/api/pools/p/backends/{addr}/weight");

    let (status, body) = admin(&server, Method::POST, &weight_path(a), r#"{"weight": 3}"#).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["weight"], 3);
    assert_eq!(body["weight_override"], 3);
    let seen = shares(&server, 40).await;
    assert_eq!((seen["a"], seen["b"]), (30, 10), "{seen:?}");
    let p = pools(&server).await;
    assert_eq!(backend_json(&p, a)["weight"], 3);
    assert_eq!(backend_json(&p, a)["weight_override"], 3);
    assert_eq!(
        backend_json(&p, b)["weight_override"],
        serde_json::Value::Null
    );

    // A reload (the file changed elsewhere) keeps the override.
    write_atomically(&path, text("[pools.p.retry]\nmax_retries = 1\n"));
    server
        .reload(switchyard::control::Trigger::Admin)
        .await
        .unwrap();
    assert_eq!(backend_json(&pools(&server).await, a)["weight"], 3);
    let seen = shares(&server, 40).await;
    assert_eq!((seen["a"], seen["b"]), (30, 10), "{seen:?}");

    // Weight 0: no new requests.
    let (status, _) = admin(&server, Method::POST, &weight_path(a), r#"{"weight": 0}"#).await;
    assert_eq!(status, 200);
    let seen = shares(&server, 10).await;
    assert_eq!(seen.get("a"), None, "{seen:?}");

    // DELETE: the file's weight again.
    let (status, body) = admin(&server, Method::DELETE, &weight_path(a), "").await;
    assert_eq!(status, 200);
    assert_eq!(body["weight"], 1);
    assert_eq!(body["weight_override"], serde_json::Value::Null);
    let seen = shares(&server, 20).await;
    assert_eq!((seen["a"], seen["b"]), (10, 10), "{seen:?}");

    // Refusals: a bad body, a weight out of range, an unknown backend, a GET.
    for body in [
        r#"{"weight": 1001}"#,
        r#"{"weight": -1}"#,
        "3",
        "[3]",
        r#"{"w": 3}"#,
        "",
    ] {
        let (status, answer) = admin(&server, Method::POST, &weight_path(a), body).await;
        assert_eq!(status, 400, "{body}: {answer}");
        assert!(
            answer["error"].as_str().unwrap().contains("weight"),
            "{answer}"
        );
    }
    let (status, _) = admin(
        &server,
        Method::POST,
        "/api/pools/p/backends/127.0.0.1:1/weight",
        r#"{"weight": 2}"#,
    )
    .await;
    assert_eq!(status, 404);
    let (status, _) = admin(&server, Method::GET, &weight_path(a), "").await;
    assert_eq!(status, 405);
    server.shutdown().await;
}

/// A GET with `headers`; status, response headers, body.
async fn request(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, http::HeaderMap, String) {
    let mut req = Request::get(format!("http://{addr}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = client().request(req.body(full("")).unwrap()).await.unwrap();
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

/// The values of header `name` in the echo backend's answer.
fn upstream_saw(body: &str, name: &str) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("{body}"));
    let headers: Vec<(String, String)> = serde_json::from_value(v["headers"].clone()).unwrap();
    headers
        .into_iter()
        .filter(|(k, _)| k == name)
        .map(|(_, v)| v)
        .collect()
}

fn access_lines(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_are_made_kept_from_trusted_peers_only_and_shown_everywhere() {
    let echo = echo_backend().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let text = |top: &str| {
        config_top(
            top,
            &format!(
                "[request_id]\n\
                 [access_log]\nenabled = true\nformat = \"json\"\npath = \"{}\"\n\
                 [[routes]]\npath_prefix = \"/\"\npool = \"p\"\n[pools.p]\nbackends = [{{ address = \"{echo}\" }}]\n",
                log.display()
            ),
        )
    };
    // From an untrusted peer: a new ID (UUIDv7), the same upstream, back to the client and in the log.
    let server = start_proxy(&text("")).await;
    let addr = server.listen_addrs[0];
    let (status, headers, body) = request(addr, "/x", &[("x-request-id", "client-made")]).await;
    assert_eq!(status, 200);
    let id = headers["x-request-id"].to_str().unwrap().to_owned();
    assert_ne!(id, "client-made");
    assert_eq!(id.len(), 36, "{id}");
    assert_eq!(&id[14..15], "7", "a UUIDv7: {id}");
    assert_eq!(
        upstream_saw(&body, "x-request-id"),
        std::slice::from_ref(&id)
    );
    // Each request its own.
    let (_, again, _) = request(addr, "/x", &[]).await;
    assert_ne!(again["x-request-id"], id.as_str());
    assert!(
        eventually(Duration::from_secs(10), || {
            let found = access_lines(&log)
                .iter()
                .any(|l| l["request_id"] == id.as_str());
            async move { found }
        })
        .await
    );
    server.shutdown().await;

    // From a trusted peer: its ID is kept; the proxy's own error bodies carry it too.
    let server = start_proxy(&text("trusted_proxies = [\"127.0.0.1/32\"]")).await;
    let addr = server.listen_addrs[0];
    let (_, headers, body) = request(addr, "/x", &[("x-request-id", "edge-42")]).await;
    assert_eq!(headers["x-request-id"], "edge-42");
    assert_eq!(upstream_saw(&body, "x-request-id"), ["edge-42"]);
    let (status, headers, body) = request(
        addr,
        "/x",
        &[("x-request-id", "edge-43"), ("host", "bad host")],
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(headers["x-request-id"], "edge-43");
    assert!(body.contains("request id: edge-43"), "{body}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traceparent_passes_untouched_and_is_generated_only_when_asked_and_missing() {
    let echo = echo_backend().await;
    let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let text = |mode: &str| {
        config(&format!(
            "[request_id]\ntraceparent = \"{mode}\"\n\
             [[routes]]\npath_prefix = \"/\"\npool = \"p\"\n[pools.p]\nbackends = [{{ address = \"{echo}\" }}]\n"
        ))
    };
    for mode in ["pass", "generate"] {
        let server = start_proxy(&text(mode)).await;
        let addr = server.listen_addrs[0];
        // A request with a trace: never re-parented, its state kept.
        let (_, _, body) = request(
            addr,
            "/",
            &[("traceparent", parent), ("tracestate", "vendor=x")],
        )
        .await;
        assert_eq!(upstream_saw(&body, "traceparent"), [parent], "{mode}");
        assert_eq!(upstream_saw(&body, "tracestate"), ["vendor=x"], "{mode}");
        // Without one: only `generate` makes one, valid W3C.
        let (_, _, body) = request(addr, "/", &[]).await;
        let made = upstream_saw(&body, "traceparent");
        if mode == "pass" {
            assert!(made.is_empty(), "{made:?}");
        } else {
            assert_eq!(made.len(), 1);
            let parts: Vec<&str> = made[0].split('-').collect();
            assert_eq!(parts.len(), 4, "{made:?}");
            assert_eq!(
                (parts[0], parts[1].len(), parts[2].len(), parts[3]),
                ("00", 32, 16, "01")
            );
        }
        // A malformed one is passed as is, or replaced when asked.
        let (_, _, body) = request(addr, "/", &[("traceparent", "garbage")]).await;
        let seen = upstream_saw(&body, "traceparent");
        if mode == "pass" {
            assert_eq!(seen, ["garbage"]);
        } else {
            assert_ne!(seen, ["garbage"]);
        }
        server.shutdown().await;
    }
}

#[test]
fn every_new_config_error_names_its_field() {
    let check = |extra: &str, wants: &[&str]| {
        let text = config(&format!(
            "{extra}\n[[routes]]\npool = \"p\"\n[pools.p]\nbackends = [{{ address = \"127.0.0.1:9\" }}]\n"
        ));
        let e = switchyard::config::parse(&text, "t.toml")
            .expect_err(extra)
            .to_string();
        for want in wants {
            assert!(e.contains(want), "{extra}\n---\n{e}");
        }
    };
    check(
        "[request_id]\ntrust_incoming = \"sometimes\"",
        &[
            "request_id.trust_incoming",
            "\"trusted_proxies\", \"always\", \"never\"",
        ],
    );
    check(
        "[request_id]\ntraceparent = \"mint\"",
        &["request_id.traceparent", "\"pass\", \"generate\""],
    );
    check(
        "[request_id]\nheader = \"x id\"",
        &["request_id.header", "not a header name"],
    );
}

/// Routes on `shop.example` (given as TOML), pools `v1`, `v2`, `canary` of one named backend each.
async fn shop(routes: &str) -> Server {
    let v1 = named_backend("v1", Duration::ZERO).await;
    let v2 = named_backend("v2", Duration::ZERO).await;
    let canary = named_backend("canary", Duration::ZERO).await;
    start_proxy(&config(&format!(
        "{routes}\n[pools.v1]\nbackends = [{{ address = \"{v1}\" }}]\n\
         [pools.v2]\nbackends = [{{ address = \"{v2}\" }}]\n\
         [pools.canary]\nbackends = [{{ address = \"{canary}\" }}]\n"
    )))
    .await
}

async fn served_by(server: &Server, path: &str, headers: &[(&str, &str)]) -> String {
    let mut all = vec![("host", "shop.example")];
    all.extend_from_slice(headers);
    let (_, h, _) = request(server.listen_addrs[0], path, &all).await;
    h.get("x-backend")
        .map_or("none", |v| v.to_str().unwrap())
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_routes_beat_plain_ones_with_presence_and_case_and_fall_back_to_shorter_prefixes() {
    let server = shop(
        "[[routes]]\nhost = \"shop.example\"\npath_prefix = \"/\"\npool = \"v1\"\n\
         [[routes]]\nhost = \"shop.example\"\npath_prefix = \"/\"\nheaders = { \"X-Canary\" = \"1\" }\npool = \"canary\"\n\
         [[routes]]\nhost = \"shop.example\"\npath_prefix = \"/\"\nheaders = { \"x-canary\" = \"1\", \"x-beta\" = \"*\" }\npool = \"v2\"\n\
         [[routes]]\nhost = \"shop.example\"\npath_prefix = \"/api\"\nheaders = { \"x-api\" = \"2\" }\npool = \"v2\"\n",
    )
    .await;
    assert_eq!(served_by(&server, "/", &[]).await, "v1");
    // Names match in any case; values exactly.
    assert_eq!(
        served_by(&server, "/", &[("X-CANARY", "1")]).await,
        "canary"
    );
    assert_eq!(served_by(&server, "/", &[("x-canary", "yes")]).await, "v1");
    // More conditions, all matching, win; `*` only asks for presence.
    assert_eq!(
        served_by(&server, "/", &[("x-canary", "1"), ("x-beta", "anything")]).await,
        "v2"
    );
    // A longer prefix whose conditions do not match falls back to the shorter prefix's routes.
    assert_eq!(served_by(&server, "/api/x", &[]).await, "v1");
    assert_eq!(served_by(&server, "/api/x", &[("x-api", "2")]).await, "v2");
    let (_, routes) = admin(&server, Method::GET, "/api/routes", "").await;
    let list = routes["routes"].as_array().unwrap();
    assert_eq!(list.len(), 4);
    assert_eq!(list[1]["headers"]["x-canary"], "1");
    assert_eq!(list[2]["headers"]["x-beta"], "*");
    assert_eq!(list[0]["split"][0]["pool"], "v1");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_shares_by_weight_and_a_sticky_split_keeps_a_client_on_its_pool() {
    let server = shop(
        "[[routes]]\nhost = \"shop.example\"\npath_prefix = \"/\"\n\
         split = [ { pool = \"v1\", weight = 75 }, { pool = \"v2\", weight = 25 } ]\n\
         [[routes]]\nhost = \"shop.example\"\npath_prefix = \"/sticky\"\n\
         split = [ { pool = \"v1\", weight = 50 }, { pool = \"v2\", weight = 50 } ]\nsticky_split = \"cookie:sy_split\"\n",
    )
    .await;
    let mut v1 = 0;
    let n = 800;
    for _ in 0..n {
        if served_by(&server, "/", &[]).await == "v1" {
            v1 += 1;
        }
    }
    let share = f64::from(v1) / f64::from(n);
    assert!((share - 0.75).abs() < 0.06, "v1's share {share}");
    let (_, metrics) = get(server.admin_addr, "/metrics", None)
        .await
        .into_parts_text();
    let arm = |pool: &str| {
        metric(
            &metrics,
            &format!("switchyard_route_requests_total{{pool=\"{pool}\",route=\"shop.example/\"}}"),
        )
        .unwrap_or(0.0)
    };
    assert_eq!((arm("v1"), arm("v2")), (f64::from(v1), f64::from(n - v1)));

    // Sticky: the first answer sets the cookie; with it, every request stays on that pool.
    let addr = server.listen_addrs[0];
    let (_, headers, _) = request(addr, "/sticky", &[("host", "shop.example")]).await;
    let cookie = headers["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    assert!(cookie.starts_with("sy_split="), "{cookie}");
    let first = headers["x-backend"].to_str().unwrap().to_owned();
    for _ in 0..20 {
        let (_, h, _) = request(
            addr,
            "/sticky",
            &[("host", "shop.example"), ("cookie", &cookie)],
        )
        .await;
        assert_eq!(h["x-backend"], first.as_str());
        assert!(h.get("set-cookie").is_none());
    }
    // An unknown value: a pool by weight again, and a new cookie.
    let (_, h, _) = request(
        addr,
        "/sticky",
        &[("host", "shop.example"), ("cookie", "sy_split=zzz")],
    )
    .await;
    assert!(h.get("set-cookie").is_some());
    server.shutdown().await;
}

trait IntoPartsText {
    fn into_parts_text(self) -> (StatusCode, String);
}

impl IntoPartsText for (StatusCode, http::HeaderMap, String) {
    fn into_parts_text(self) -> (StatusCode, String) {
        (self.0, self.2)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_stay_inside_the_chosen_arm() {
    let bad = controlled("v1-bad", 503).await;
    let good = named_backend("v1-good", Duration::ZERO).await;
    let v2 = controlled("v2", 200).await;
    let server = start_proxy(&config(&format!(
        "[[routes]]\npath_prefix = \"/\"\nsplit = [ {{ pool = \"v1\", weight = 1 }}, {{ pool = \"v2\", weight = 1 }} ]\n\
         [pools.v1]\nbackends = [{{ address = \"{}\" }}, {{ address = \"{good}\" }}]\n\
         [pools.v1.retry]\nmax_retries = 1\nbudget_percent = 100\n\
         [pools.v2]\nbackends = [{{ address = \"{}\" }}]\n",
        bad.addr, v2.addr
    )))
    .await;
    for _ in 0..30 {
        let (status, h, _) = request(server.listen_addrs[0], "/", &[]).await;
        assert_eq!(status, 200);
        let name = h["x-backend"].to_str().unwrap();
        assert!(name == "v1-good" || name == "v2", "{name}");
    }
    // v1's failures were retried within v1 (on v1-good), never on v2.
    let v2_hits = v2.hits();
    let (_, metrics) = get(server.admin_addr, "/metrics", None)
        .await
        .into_parts_text();
    let to_v2 = metric(
        &metrics,
        "switchyard_route_requests_total{pool=\"v2\",route=\"/\"}",
    )
    .unwrap();
    assert_eq!(
        v2_hits as f64, to_v2,
        "v2 got only the requests routed to it"
    );
    server.shutdown().await;
}

#[test]
fn every_new_route_config_error_names_its_field() {
    let check = |routes: &str, wants: &[&str]| {
        let text = config(&format!(
            "{routes}\n[pools.p]\nbackends = [{{ address = \"127.0.0.1:9\" }}]\n"
        ));
        let e = switchyard::config::parse(&text, "t.toml")
            .expect_err(routes)
            .to_string();
        for want in wants {
            assert!(e.contains(want), "{routes}\n---\n{e}");
        }
    };
    check(
        "[[routes]]\nsplit = [ { pool = \"p\", weight = 0 } ]",
        &["routes[0].split[0].weight", "1 to 1000"],
    );
    check(
        "[[routes]]\nsplit = [ { pool = \"nope\", weight = 1 } ]",
        &["routes[0].split[0].pool", "\"nope\" is not defined"],
    );
    check(
        "[[routes]]\npool = \"p\"\nsplit = [ { pool = \"p\", weight = 1 } ]",
        &["routes[0].split", "not both"],
    );
    check(
        "[[routes]]\npath_prefix = \"/\"",
        &["routes[0].pool", "missing"],
    );
    check(
        "[[routes]]\npool = \"p\"\nheaders = { \"x-a\" = \"\" }",
        &["routes[0].headers.x-a", "empty"],
    );
    check(
        "[[routes]]\npool = \"p\"\nsticky_split = \"cookie:s\"",
        &["routes[0].sticky_split", "needs a split"],
    );
    check(
        "[[routes]]\nsplit = [ { pool = \"p\", weight = 1 } ]\nsticky_split = \"header:x\"",
        &["routes[0].sticky_split", "cookie:NAME"],
    );
    check(
        "[[routes]]\npool = \"p\"\nmirror = { pool = \"shadow\" }",
        &["routes[0].mirror.pool", "\"shadow\" is not defined"],
    );
    check(
        "[[routes]]\npool = \"p\"\nmirror = { pool = \"p\", percent = 150 }",
        &["routes[0].mirror.percent", "0 to 100"],
    );
    check(
        "[[routes]]\npool = \"p\"\nmirror = { pool = \"p\", max_in_flight = 0 }",
        &["routes[0].mirror.max_in_flight", "1 to"],
    );
    check(
        "[[routes]]\npool = \"p\"\nheaders = { \"x-a\" = \"1\" }\n[[routes]]\npool = \"p\"\nheaders = { \"X-A\" = \"1\" }",
        &["routes[1]", "with the same headers"],
    );
}

/// A mirror backend: answers after `delay`, and keeps what it got (method, path, host, body).
async fn shadow(
    delay: Duration,
) -> (
    SocketAddr,
    std::sync::Arc<std::sync::Mutex<Vec<(String, String, String, Vec<u8>)>>>,
) {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let s = seen.clone();
    let addr = backend(move |req: http::Request<hyper::body::Incoming>| {
        let s = s.clone();
        async move {
            let method = req.method().to_string();
            let path = req.uri().path().to_owned();
            let host = req
                .headers()
                .get("host")
                .map_or(String::new(), |h| h.to_str().unwrap().to_owned());
            let body = req.into_body().collect().await.unwrap().to_bytes().to_vec();
            tokio::time::sleep(delay).await;
            s.lock().unwrap().push((method, path, host, body));
            http::Response::builder()
                .status(500)
                .body(full("shadow"))
                .unwrap()
        }
    })
    .await;
    (addr, seen)
}

fn mirrored(primary: SocketAddr, mirror: SocketAddr, extra: &str) -> String {
    config(&format!(
        "[[routes]]\npath_prefix = \"/\"\npool = \"main\"\nmirror = {{ pool = \"shadow\", percent = 100.0{extra} }}\n\
         [pools.main]\nbackends = [{{ address = \"{primary}\" }}]\n\
         [pools.shadow]\nbackends = [{{ address = \"{mirror}\" }}]\n\
         [pools.shadow.retry]\nmax_retries = 0\n"
    ))
}

async fn mirror_count(server: &Server, result: &str) -> f64 {
    let (_, _, text) = get(server.admin_addr, "/metrics", None).await;
    metric(
        &text,
        &format!("switchyard_mirror_requests_total{{result=\"{result}\",route=\"/\"}}"),
    )
    .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_gets_a_copy_with_its_body_and_a_too_large_body_is_skipped() {
    let primary = controlled("main", 200).await;
    let (shadow_addr, seen) = shadow(Duration::ZERO).await;
    let server = start_proxy(&mirrored(
        primary.addr,
        shadow_addr,
        ", max_body_bytes = 1000",
    ))
    .await;
    let addr = server.listen_addrs[0];
    let req = Request::post(format!("http://{addr}/orders?x=1"))
        .header("host", "shop.example")
        .body(full(vec![b'a'; 600]))
        .unwrap();
    assert_eq!(client().request(req).await.unwrap().status(), 200);
    assert!(
        eventually(Duration::from_secs(10), || async {
            mirror_count(&server, "sent").await == 1.0
        })
        .await
    );
    {
        let got = seen.lock().unwrap();
        assert_eq!(got.len(), 1);
        let (method, path, host, body) = &got[0];
        assert_eq!(
            (method.as_str(), path.as_str(), host.as_str()),
            ("POST", "/orders", "shop.example")
        );
        assert_eq!(body.len(), 600);
    }
    // Over max_body_bytes: the primary gets it all, the mirror nothing.
    let req = Request::post(format!("http://{addr}/big"))
        .body(full(vec![b'b'; 5000]))
        .unwrap();
    assert_eq!(client().request(req).await.unwrap().status(), 200);
    assert!(
        eventually(Duration::from_secs(10), || async {
            mirror_count(&server, "skipped_body").await == 1.0
        })
        .await
    );
    assert_eq!(seen.lock().unwrap().len(), 1);
    // A GET is mirrored too; the mirror's 500s never reach the client or the primary's breaker.
    for _ in 0..10 {
        assert_eq!(get(addr, "/x", None).await.0, 200);
    }
    assert!(
        eventually(Duration::from_secs(10), || async {
            mirror_count(&server, "sent").await == 11.0
        })
        .await
    );
    let p = pools(&server).await;
    assert_eq!(p["pools"]["main"]["backends"][0]["circuit"], "closed");
    assert_eq!(p["pools"]["shadow"]["backends"][0]["circuit"], "closed");
    assert_eq!(primary.hits(), 12);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_mirror_delays_nothing_and_is_bounded_and_a_dead_one_touches_nothing() {
    let primary = named_backend("main", Duration::ZERO).await;
    let (slow, _) = shadow(Duration::from_secs(5)).await;
    let server = start_proxy(&mirrored(primary, slow, ", max_in_flight = 2")).await;
    let addr = server.listen_addrs[0];
    // One keep-alive connection: each request's answer comes at once, the next request with it.
    let client = client();
    let start = std::time::Instant::now();
    for _ in 0..6 {
        let resp = client
            .request(
                Request::get(format!("http://{addr}/"))
                    .body(full(""))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        drop(resp.into_body().collect().await);
    }
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    // Two mirrors in flight at most: the other four were dropped.
    assert_eq!(mirror_count(&server, "dropped").await, 4.0);
    server.shutdown().await;

    // A mirror pool that cannot be reached: counted as failed; the primary's pool is untouched.
    let dead = closed_port().await;
    let server = start_proxy(&mirrored(primary, dead, "")).await;
    let addr = server.listen_addrs[0];
    for _ in 0..10 {
        assert_eq!(get(addr, "/", None).await.0, 200);
    }
    assert!(
        eventually(Duration::from_secs(10), || async {
            mirror_count(&server, "failed").await == 10.0
        })
        .await
    );
    let (_, _, text) = get(server.admin_addr, "/metrics", None).await;
    assert_eq!(
        metric(
            &text,
            &format!(
                "switchyard_upstream_errors_total{{backend=\"{primary}\",kind=\"connect\",pool=\"main\"}}"
            )
        ),
        None
    );
    let p = pools(&server).await;
    assert_eq!(p["pools"]["main"]["backends"][0]["circuit"], "closed");
    assert_eq!(p["pools"]["main"]["backends"][0]["consecutive_failures"], 0);
    server.shutdown().await;
}
