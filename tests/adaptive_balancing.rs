//! Balancing that adapts: peak-EWMA moving traffic off a slow backend and back, slow start after a backend
//! (re)joins, outlier ejection by failure rate within its caps, the queue in front of busy backends, their state
//! kept across reloads, and every new config error. Real backends on 127.0.0.1, the proxy in-process.
#![allow(clippy::disallowed_methods)] // wall-clock time against real processes and sockets

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use common::*;
use switchyard::server::Server;

const DEADLINE: Duration = Duration::from_secs(20);

/// A backend named `name` that answers 200 after the delay (ms) the test sets, and answers an upgrade with 101
/// and holds the connection open.
async fn tunable(name: &'static str, delay_ms: u64) -> (SocketAddr, Arc<AtomicU64>) {
    let delay = Arc::new(AtomicU64::new(delay_ms));
    let d = delay.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let d = d.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
                    let d = d.clone();
                    async move {
                        if req.headers().contains_key(http::header::UPGRADE) {
                            let on = hyper::upgrade::on(&mut req);
                            tokio::spawn(async move {
                                if let Ok(io) = on.await {
                                    tokio::time::sleep(Duration::from_secs(60)).await;
                                    drop(io);
                                }
                            });
                            return Ok::<_, std::convert::Infallible>(
                                Response::builder()
                                    .status(101)
                                    .header("connection", "upgrade")
                                    .header("upgrade", "websocket")
                                    .header("x-backend", name)
                                    .body(full(""))
                                    .unwrap(),
                            );
                        }
                        drop(req.into_body().collect().await);
                        let ms = d.load(Ordering::SeqCst);
                        if ms > 0 {
                            tokio::time::sleep(Duration::from_millis(ms)).await;
                        }
                        Ok(Response::builder()
                            .header("x-backend", name)
                            .body(full(name))
                            .unwrap())
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                    .with_upgrades()
                    .await;
            });
        }
    });
    (addr, delay)
}

/// A backend that answers 500 to every `every`-th request and 200 otherwise (never `every` failures in a row).
async fn failing_every(name: &'static str, every: usize) -> (SocketAddr, Arc<AtomicUsize>) {
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    let addr = backend(move |_req| {
        let n = c.fetch_add(1, Ordering::SeqCst) + 1;
        async move {
            let status = if every > 0 && n % every == 0 {
                500
            } else {
                200
            };
            Response::builder()
                .status(status)
                .header("x-backend", name)
                .body(full(name))
                .unwrap()
        }
    })
    .await;
    (addr, count)
}

/// Which backends answered `n` sequential requests.
async fn shares(server: &Server, n: usize) -> HashMap<String, usize> {
    let client = client();
    let mut seen = HashMap::new();
    for _ in 0..n {
        let req = Request::get(format!("http://{}/", server.listen_addrs[0]))
            .body(full(""))
            .unwrap();
        let resp = client.request(req).await.unwrap();
        let name = resp
            .headers()
            .get("x-backend")
            .map_or("none", |v| v.to_str().unwrap())
            .to_owned();
        drop(resp.into_body().collect().await);
        *seen.entry(name).or_insert(0) += 1;
    }
    seen
}

fn backend_of<'a>(
    pools: &'a serde_json::Value,
    pool: &str,
    addr: SocketAddr,
) -> &'a serde_json::Value {
    pools["pools"][pool]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["address"] == addr.to_string())
        .unwrap()
}

async fn metric_of(server: &Server, series: &str) -> f64 {
    let (_, text) = admin_get(server, "/metrics").await;
    metric(&text, series).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peak_ewma_moves_traffic_off_a_slow_backend_and_back() {
    let (a, _) = tunable("a", 2).await;
    let (b, _) = tunable("b", 2).await;
    let (c, _) = tunable("c", 2).await;
    let (slow, delay) = tunable("slow", 2).await;
    let server = start_proxy(&pool_config(
        &[a, b, c, slow],
        "algorithm = \"peak_ewma\"\n[pools.p.peak_ewma]\ndecay = \"1s\"\ndefault_rtt = \"5ms\"\n",
    ))
    .await;
    let warm = shares(&server, 80).await;
    assert!(warm.get("slow").copied().unwrap_or(0) > 0, "{warm:?}");

    delay.store(60, Ordering::SeqCst);
    // Within a few requests of the slowdown its share falls under 10%.
    let _ = shares(&server, 20).await;
    let slowed = shares(&server, 100).await;
    assert!(slowed.get("slow").copied().unwrap_or(0) < 10, "{slowed:?}");
    let ewma = backend_of(&pools(&server).await, "p", slow)["latency_ewma_ms"]
        .as_f64()
        .unwrap();
    assert!(ewma > 10.0, "its estimate shows the slowdown: {ewma} ms");

    delay.store(2, Ordering::SeqCst);
    // Back to its share once it answers fast again (the estimate decays; decay is 1 s).
    let started = Instant::now();
    let mut last = HashMap::new();
    while started.elapsed() < DEADLINE {
        last = shares(&server, 100).await;
        if last.get("slow").copied().unwrap_or(0) >= 15 {
            return;
        }
    }
    panic!("the recovered backend never got its share back: {last:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_held_open_does_not_raise_its_backends_cost() {
    let (a, _) = tunable("a", 15).await;
    let (b, _) = tunable("b", 15).await;
    let server = start_proxy(&pool_config(
        &[a, b],
        "algorithm = \"peak_ewma\"\n[pools.p.peak_ewma]\ndecay = \"2s\"\ndefault_rtt = \"15ms\"\n",
    ))
    .await;
    // Three upgraded connections held open on a (b drained meanwhile), so a has tunnels in flight.
    let admin = server.admin_addr;
    let post = |action: &'static str| async move {
        let url = format!("http://{admin}/api/pools/p/backends/{b}/{action}");
        let resp = client()
            .request(Request::post(url).body(full("")).unwrap())
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    };
    post("drain").await;
    let mut tunnels = Vec::new();
    for _ in 0..3 {
        let mut tcp = tokio::net::TcpStream::connect(server.listen_addrs[0])
            .await
            .unwrap();
        tcp.write_all(
            b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
        )
        .await
        .unwrap();
        let mut head = vec![0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut head))
            .await
            .unwrap()
            .unwrap();
        assert!(String::from_utf8_lossy(&head[..n]).starts_with("HTTP/1.1 101"));
        tunnels.push(tcp);
    }
    post("enable").await;
    let p = pools(&server).await;
    assert_eq!(backend_of(&p, "p", a)["active_requests"], 3);
    // Tunnels counted as load would make a four times as costly as b: it would get nothing.
    let seen = shares(&server, 200).await;
    assert!(seen.get("a").copied().unwrap_or(0) >= 30, "{seen:?}");
    drop(tunnels);
}

/// The proxy started from a file with `first`'s config, then reloaded with `then`'s (real file, real reload).
async fn start_then_reload(first: &str, then: &str) -> (Server, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("switchyard.toml");
    std::fs::write(&path, first).unwrap();
    let config = switchyard::config::load(&path).unwrap();
    let server = Server::start_with_file(config, path.clone()).await.unwrap();
    write_atomically(&path, then);
    server
        .reload(switchyard::control::Trigger::Admin)
        .await
        .unwrap();
    (server, dir)
}

fn slow_start_config(backends: &[SocketAddr], extra: &str) -> String {
    pool_config(
        backends,
        &format!("[pools.p.slow_start]\nwindow = \"3s\"\nmin_weight_percent = 10\n{extra}"),
    )
}

/// The backend ramps: effective weight under its weight (never under the floor), an end time, then full.
async fn ramps_then_ends(server: &Server, addr: SocketAddr) {
    let p = pools(server).await;
    let b = backend_of(&p, "p", addr);
    let w = b["effective_weight"].as_f64().unwrap();
    assert!(b["slow_start_ends_at"].is_string(), "{b}");
    assert!((0.1..1.0).contains(&w), "{b}");
    assert!(
        eventually(DEADLINE, || async {
            let p = pools(server).await;
            let b = backend_of(&p, "p", addr);
            let w = b["effective_weight"].as_f64().unwrap();
            assert!(w >= 0.1, "under the floor: {b}");
            b["slow_start_ends_at"].is_null() && w == 1.0
        })
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_start_ramps_a_backend_added_by_reload_but_none_at_start() {
    let (a, _) = tunable("a", 0).await;
    let (b, _) = tunable("b", 0).await;
    let (c, _) = tunable("c", 0).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("switchyard.toml");
    std::fs::write(&path, slow_start_config(&[a, b], "")).unwrap();
    let config = switchyard::config::load(&path).unwrap();
    let server = Server::start_with_file(config, path.clone()).await.unwrap();
    let p = pools(&server).await;
    for addr in [a, b] {
        assert!(
            backend_of(&p, "p", addr)["slow_start_ends_at"].is_null(),
            "{p}"
        );
    }
    write_atomically(&path, slow_start_config(&[a, b, c], ""));
    server
        .reload(switchyard::control::Trigger::Admin)
        .await
        .unwrap();
    // While it ramps it gets less than its fair third.
    let early = shares(&server, 60).await;
    assert!(early.get("c").copied().unwrap_or(0) < 20, "{early:?}");
    ramps_then_ends(&server, c).await;
    let p = pools(&server).await;
    assert!(backend_of(&p, "p", a)["slow_start_ends_at"].is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_start_holds_the_floor_under_least_connections_at_low_load() {
    // One request at a time: every backend idle at each pick, so least-connections alone would give a ramping
    // backend its full turn; the ramp keeps it to its effective weight, and never to nothing.
    let (a, _) = tunable("a", 0).await;
    let (b, _) = tunable("b", 0).await;
    let (c, _) = tunable("c", 0).await;
    let text = |list: &[SocketAddr]| {
        slow_start_config(list, "").replace(
            "[pools.p]\n",
            "[pools.p]\nalgorithm = \"least_connections\"\n",
        )
    };
    let (server, _dir) = start_then_reload(&text(&[a, b]), &text(&[a, b, c])).await;
    let early = shares(&server, 90).await;
    let got = early.get("c").copied().unwrap_or(0);
    assert!((1..25).contains(&got), "{early:?}");
    ramps_then_ends(&server, c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_start_holds_a_new_backend_back_under_least_connections_under_load() {
    // Eight requests at a time to 5 ms backends: the new backend, with nothing in flight, is the least loaded
    // at most picks; the ramp keeps it to a fraction of its turns instead of a rush.
    let (a, _) = tunable("a", 5).await;
    let (b, _) = tunable("b", 5).await;
    let (c, _) = tunable("c", 5).await;
    let text = |list: &[SocketAddr]| {
        pool_config(
            list,
            "algorithm = \"least_connections\"\n[pools.p.slow_start]\nwindow = \"20s\"\nmin_weight_percent = 10\n",
        )
    };
    let (server, _dir) = start_then_reload(&text(&[a, b]), &text(&[a, b, c])).await;
    let addr = server.listen_addrs[0];
    let clients: Vec<_> = (0..8)
        .map(|_| {
            tokio::spawn(async move {
                let mut c = 0;
                for _ in 0..25 {
                    let (_, headers, _) = get(addr, "/", None).await;
                    c += usize::from(headers["x-backend"] == "c");
                }
                c
            })
        })
        .collect();
    let mut to_c = 0;
    for client in clients {
        to_c += client.await.unwrap();
    }
    // 200 requests; a third would be ~67, a rush far more; its ramp (10% and up) gives a few.
    assert!(
        (1..40).contains(&to_c),
        "{to_c} of 200 to the ramping backend"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_start_after_health_checks_bring_a_backend_back_and_after_a_drain_ends() {
    let x = controlled("x", 200).await;
    let y = controlled("y", 200).await;
    let server = start_proxy(&slow_start_config(
        &[x.addr, y.addr],
        "[pools.p.health_check]\npath = \"/healthz\"\ninterval = \"300ms\"\ntimeout = \"250ms\"\nhealthy_threshold = 1\nunhealthy_threshold = 2\n",
    ))
    .await;
    x.set_health(503);
    assert!(
        eventually(DEADLINE, || async {
            backend_json(&pools(&server).await, x.addr)["healthy"] == false
        })
        .await
    );
    x.set_health(200);
    assert!(
        eventually(DEADLINE, || async {
            backend_json(&pools(&server).await, x.addr)["healthy"] == true
        })
        .await
    );
    ramps_then_ends(&server, x.addr).await;

    let admin = server.admin_addr;
    for action in ["drain", "enable"] {
        let resp = client()
            .request(
                Request::post(format!(
                    "http://{admin}/api/pools/p/backends/{}/{action}",
                    y.addr
                ))
                .body(full(""))
                .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{action}");
    }
    ramps_then_ends(&server, y.addr).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_backend_pool_gets_no_ramp() {
    let x = controlled("x", 200).await;
    let server = start_proxy(&slow_start_config(&[x.addr], "")).await;
    let admin = server.admin_addr;
    for action in ["drain", "enable"] {
        let url = format!("http://{admin}/api/pools/p/backends/{}/{action}", x.addr);
        let resp = client()
            .request(Request::post(url).body(full("")).unwrap())
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    let p = pools(&server).await;
    let b = backend_json(&p, x.addr);
    assert!(b["slow_start_ends_at"].is_null(), "{b}");
    assert_eq!(b["effective_weight"], 1.0);
}

fn outlier_config(backends: &[SocketAddr], max_ejection_percent: u32, base: &str) -> String {
    pool_config(
        backends,
        &format!(
            "[pools.p.retry]\nmax_retries = 0\n[pools.p.outlier_detection]\ninterval = \"30s\"\nfailure_percentage = 20\n\
             min_requests = 10\nmax_ejection_percent = {max_ejection_percent}\nbase_ejection_time = \"{base}\"\n\
             max_ejection_time = \"60s\"\n"
        ),
    )
}

/// Sends requests (bounded) until `done` says so; false if it never did.
async fn send_until(server: &Server, mut done: impl AsyncFnMut() -> bool) -> bool {
    let started = Instant::now();
    while started.elapsed() < DEADLINE {
        let _ = shares(server, 10).await;
        if done().await {
            return true;
        }
    }
    false
}

/// How long the backend stays ejected, by its `ejected_until`.
fn ejected_for(p: &serde_json::Value, addr: SocketAddr) -> Duration {
    let until = backend_of(p, "p", addr)["ejected_until"]
        .as_str()
        .unwrap()
        .to_owned();
    humantime::parse_rfc3339(&until)
        .unwrap()
        .duration_since(std::time::SystemTime::now())
        .unwrap_or_default()
}

fn ejected(p: &serde_json::Value, addr: SocketAddr) -> bool {
    backend_of(p, "p", addr)["ejected_until"].is_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_failing_a_fifth_of_requests_is_ejected_returns_and_is_ejected_longer_next_time()
{
    let (bad, _) = failing_every("bad", 5).await;
    let (ok1, _) = failing_every("ok1", 0).await;
    let (ok2, _) = failing_every("ok2", 0).await;
    let server = start_proxy(&outlier_config(&[bad, ok1, ok2], 50, "2s")).await;
    assert!(send_until(&server, async || ejected(&pools(&server).await, bad)).await);
    let first_for = ejected_for(&pools(&server).await, bad);
    let p = pools(&server).await;
    assert_eq!(
        backend_of(&p, "p", bad)["circuit"],
        "closed",
        "never 5 in a row: not the breaker"
    );
    let series = |name: &str| format!("{name}{{backend=\"{bad}\",pool=\"p\"}}");
    assert_eq!(
        metric_of(&server, &series("switchyard_outlier_ejections_total")).await,
        1.0
    );
    assert_eq!(
        metric_of(&server, &series("switchyard_backend_ejected")).await,
        1.0
    );
    // Out of rotation: the others answer everything.
    let seen = shares(&server, 30).await;
    assert_eq!(seen.get("bad"), None, "{seen:?}");
    // Back after its ejection time, with no health checks configured.
    assert!(eventually(DEADLINE, || async { !ejected(&pools(&server).await, bad) }).await);
    assert_eq!(
        metric_of(&server, &series("switchyard_backend_ejected")).await,
        0.0
    );
    // Ejected again: for twice as long.
    assert!(send_until(&server, async || ejected(&pools(&server).await, bad)).await);
    let second_for = ejected_for(&pools(&server).await, bad);
    assert!(first_for <= Duration::from_secs(2), "{first_for:?}");
    assert!(
        second_for > first_for + Duration::from_millis(1200)
            && second_for <= Duration::from_secs(4),
        "first {first_for:?}, second {second_for:?}"
    );
    assert!(eventually(DEADLINE, || async { !ejected(&pools(&server).await, bad) }).await);
    assert_eq!(
        metric_of(&server, &series("switchyard_outlier_ejections_total")).await,
        2.0
    );
    // The event feed: ejected and back, twice, with the failure count.
    let wanted = [
        "outlier_ejected",
        "outlier_returned",
        "outlier_ejected",
        "outlier_returned",
    ];
    assert!(
        eventually(DEADLINE, || async {
            event_kinds(&server, &bad.to_string()).await == wanted
        })
        .await,
        "{:?}",
        events(&server).await
    );
    let first = events(&server)
        .await
        .into_iter()
        .rev()
        .find(|e| e.0 == "outlier_ejected")
        .unwrap();
    assert!(first.2.contains("requests failed"), "{first:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ejection_cap_holds_with_three_backends_and_the_last_backend_stays() {
    let (bad1, _) = failing_every("bad1", 4).await;
    let (bad2, _) = failing_every("bad2", 4).await;
    let (good, _) = failing_every("good", 0).await;
    let server = start_proxy(&outlier_config(&[bad1, bad2, good], 50, "60s")).await;
    assert!(
        send_until(&server, async || {
            let p = pools(&server).await;
            ejected(&p, bad1) || ejected(&p, bad2)
        })
        .await
    );
    // The other one keeps failing a quarter of its requests, past min_requests: the cap (2 of 3 is over 50%)
    // keeps it in.
    let other = if ejected(&pools(&server).await, bad1) {
        bad2
    } else {
        bad1
    };
    let mut sent = 0;
    while sent < 120 {
        let _ = shares(&server, 10).await;
        sent += 10;
        let p = pools(&server).await;
        assert!(
            !(ejected(&p, bad1) && ejected(&p, bad2)),
            "both ejected: {p}"
        );
    }
    assert!(!ejected(&pools(&server).await, other));
    server.shutdown().await;

    // A pool of one: never ejected, even with the cap at 100%.
    let (alone, count) = failing_every("alone", 3).await;
    let server = start_proxy(&outlier_config(&[alone], 100, "60s")).await;
    let _ = shares(&server, 60).await;
    assert!(count.load(Ordering::SeqCst) >= 60);
    assert!(!ejected(&pools(&server).await, alone));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ejection_and_latency_state_survive_a_reload() {
    let (bad, _) = failing_every("bad", 2).await;
    let (ok1, _) = failing_every("ok1", 0).await;
    let (ok2, _) = failing_every("ok2", 0).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("switchyard.toml");
    std::fs::write(&path, outlier_config(&[bad, ok1, ok2], 50, "60s")).unwrap();
    let config = switchyard::config::load(&path).unwrap();
    let server = Server::start_with_file(config, path.clone()).await.unwrap();
    assert!(send_until(&server, async || ejected(&pools(&server).await, bad)).await);
    let before = pools(&server).await;
    let (ok3, _) = failing_every("ok3", 0).await;
    write_atomically(&path, outlier_config(&[bad, ok1, ok2, ok3], 50, "60s"));
    server
        .reload(switchyard::control::Trigger::Admin)
        .await
        .unwrap();
    let after = pools(&server).await;
    let until = |p: &serde_json::Value| {
        let text = backend_of(p, "p", bad)["ejected_until"]
            .as_str()
            .unwrap()
            .to_owned();
        humantime::parse_rfc3339(&text).unwrap()
    };
    let (a, b) = (until(&before), until(&after));
    let apart = a
        .duration_since(b)
        .or_else(|_| b.duration_since(a))
        .unwrap();
    assert!(apart < Duration::from_millis(50), "{a:?} vs {b:?}");
    let ewma = |p: &serde_json::Value| backend_of(p, "p", ok1)["latency_ewma_ms"].as_f64().unwrap();
    assert_ne!(
        ewma(&after),
        30.0,
        "the estimate is kept, not reset to default_rtt"
    );
}

fn queue_config(backend: SocketAddr, timeout: &str) -> String {
    pool_config(
        &[backend],
        &format!(
            "[pools.p.retry]\nmax_retries = 0\n[pools.p.circuit_breaker]\nmax_active_requests = 2\n\
             [pools.p.queue]\nmax_waiting = 10\ntimeout = \"{timeout}\"\n"
        ),
    )
}

/// A backend that holds every request until the test opens the gate.
async fn gated() -> (SocketAddr, tokio::sync::watch::Sender<bool>) {
    let (open, gate) = tokio::sync::watch::channel(false);
    let addr = backend(move |_req| {
        let mut gate = gate.clone();
        async move {
            let _ = gate.wait_for(|open| *open).await;
            Response::builder().body(full("done")).unwrap()
        }
    })
    .await;
    (addr, open)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queue_serves_twelve_with_two_slots_and_refuses_the_thirteenth() {
    let (slow, gate) = gated().await;
    let server = start_proxy(&queue_config(slow, "20s")).await;
    let addr = server.listen_addrs[0];
    let requests: Vec<_> = (0..12)
        .map(|_| tokio::spawn(async move { get(addr, "/", None).await.0 }))
        .collect();
    assert!(
        eventually(DEADLINE, || async {
            pools(&server).await["pools"]["p"]["queue_waiting"] == 10
        })
        .await
    );
    let (status, _, body) = get(addr, "/", None).await;
    assert_eq!(status, 503);
    assert!(body.contains("queue full"), "{body}");
    gate.send_replace(true);
    for r in requests {
        assert_eq!(r.await.unwrap(), 200);
    }
    assert_eq!(
        metric_of(
            &server,
            "switchyard_queue_rejections_total{pool=\"p\",reason=\"full\"}"
        )
        .await,
        1.0
    );
    assert_eq!(pools(&server).await["pools"]["p"]["queue_waiting"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_request_times_out_and_a_client_that_leaves_leaves_the_queue() {
    let (slow, _) = tunable("slow", 3000).await;
    let server = start_proxy(&queue_config(slow, "300ms")).await;
    let addr = server.listen_addrs[0];
    let busy: Vec<_> = (0..2)
        .map(|_| tokio::spawn(async move { get(addr, "/", None).await.0 }))
        .collect();
    assert!(
        eventually(DEADLINE, || async {
            backend_json(&pools(&server).await, slow)["active_requests"] == 2
        })
        .await
    );
    let (status, _, body) = get(addr, "/", None).await;
    assert_eq!(status, 503);
    assert!(body.contains("queue timeout"), "{body}");
    assert_eq!(
        metric_of(
            &server,
            "switchyard_queue_rejections_total{pool=\"p\",reason=\"timeout\"}"
        )
        .await,
        1.0
    );
    server.shutdown().await;

    // Requests that hold their slots for the whole test: only leaving can empty the queue.
    let (held, _) = tunable("held", 30_000).await;
    let server = start_proxy(&queue_config(held, "30s")).await;
    let addr = server.listen_addrs[0];
    let busy2: Vec<_> = (0..2)
        .map(|_| tokio::spawn(async move { get(addr, "/", None).await.0 }))
        .collect();
    assert!(
        eventually(DEADLINE, || async {
            backend_json(&pools(&server).await, held)["active_requests"] == 2
        })
        .await
    );
    let waiting = tokio::spawn(async move { get(addr, "/", None).await.0 });
    assert!(
        eventually(DEADLINE, || async {
            pools(&server).await["pools"]["p"]["queue_waiting"] == 1
        })
        .await
    );
    waiting.abort();
    assert!(
        eventually(Duration::from_secs(5), || async {
            pools(&server).await["pools"]["p"]["queue_waiting"] == 0
        })
        .await,
        "the client went away but its request still waits"
    );
    assert_eq!(
        backend_json(&pools(&server).await, held)["active_requests"],
        2
    );
    for r in busy.into_iter().chain(busy2) {
        r.abort();
    }
}

#[test]
fn every_new_config_error_names_its_field() {
    let check = |extra: &str, wants: &[&str]| {
        let text = pool_config(&["127.0.0.1:9".parse().unwrap()], extra);
        let e = switchyard::config::parse(&text, "t.toml")
            .expect_err(extra)
            .to_string();
        for want in wants {
            assert!(e.contains(want), "{extra}\n---\n{e}");
        }
    };
    check(
        "algorithm = \"fastest\"",
        &["pools.p.algorithm", "peak_ewma"],
    );
    check(
        "[pools.p.peak_ewma]\ndecay = \"0s\"",
        &["pools.p.peak_ewma.decay", "positive"],
    );
    check(
        "[pools.p.peak_ewma]\ndefault_rtt = \"soon\"",
        &["pools.p.peak_ewma.default_rtt"],
    );
    check(
        "[pools.p.slow_start]\nwindow = \"0s\"",
        &["pools.p.slow_start.window"],
    );
    check(
        "[pools.p.slow_start]\nmin_weight_percent = 101",
        &["pools.p.slow_start.min_weight_percent", "0 to 100"],
    );
    check(
        "[pools.p.outlier_detection]\nfailure_percentage = 120",
        &["pools.p.outlier_detection.failure_percentage"],
    );
    check(
        "[pools.p.outlier_detection]\nmax_ejection_percent = -1",
        &["pools.p.outlier_detection.max_ejection_percent"],
    );
    check(
        "[pools.p.outlier_detection]\ninterval = \"0s\"",
        &["pools.p.outlier_detection.interval"],
    );
    check(
        "[pools.p.outlier_detection]\nmin_requests = 0",
        &["pools.p.outlier_detection.min_requests"],
    );
    check(
        "[pools.p.outlier_detection]\nbase_ejection_time = \"2m\"\nmax_ejection_time = \"1m\"",
        &[
            "pools.p.outlier_detection.max_ejection_time",
            "shorter than base_ejection_time",
        ],
    );
    check(
        "[pools.p.queue]\nmax_waiting = 10",
        &["pools.p.queue", "circuit_breaker.max_active_requests"],
    );
    check(
        "[pools.p.circuit_breaker]\nmax_active_requests = 2\n[pools.p.queue]\ntimeout = \"0s\"",
        &["pools.p.queue.timeout"],
    );
    check(
        "[pools.p.circuit_breaker]\nmax_active_requests = 2\n[pools.p.queue]\nmax_waiting = 0",
        &["pools.p.queue.max_waiting"],
    );
    check(
        "[pools.p.outlier_detection]\nbase_ejection_time = \"2days\"",
        &["pools.p.outlier_detection.base_ejection_time", "too long"],
    );
    check("[pools.p.queue]\nwait = 1", &["pools.p.queue.wait"]);
}
