//! Resilience against real failing backends on 127.0.0.1: active health checks with rise/fall thresholds,
//! per-backend circuit breakers, safe retries under a budget, timeouts, panic mode.
//! Intervals are short and every wait polls against a deadline.
#![allow(clippy::disallowed_methods)] // wall-clock time against real processes and sockets

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;

const DEADLINE: Duration = Duration::from_secs(10);

async fn metric_now(server: &switchyard::server::Server, series: &str) -> f64 {
    let (_, text) = admin_get(server, "/metrics").await;
    metric(&text, series).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connections_without_health_checks_never_reach_the_client() {
    let dead = closed_port().await;
    let alive = controlled("alive", 200).await;
    let server = start_proxy(&pool_config(&[dead, alive.addr], "")).await;
    let addr = server.listen_addrs[0];
    for i in 0..20 {
        assert_eq!(get(addr, "/", None).await.0, 200, "GET {i}");
        // Nothing was sent to the dead backend, so even a POST with a body is retried.
        assert_eq!(send(addr, "POST", "/", "payload").await.0, 200, "POST {i}");
    }
    assert_eq!(alive.hits(), 40);
    let errors = format!(
        "switchyard_upstream_errors_total{{backend=\"{dead}\",kind=\"connect\",pool=\"p\"}}"
    );
    assert!(metric_now(&server, &errors).await >= 1.0);
    assert!(metric_now(&server, "switchyard_retries_total{pool=\"p\"}").await >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connections_with_health_checks_take_the_backend_out() {
    let dead = closed_port().await;
    let alive = controlled("alive", 200).await;
    let server = start_proxy(&pool_config(
        &[dead, alive.addr],
        "[pools.p.health_check]\ninterval = \"100ms\"\ntimeout = \"50ms\"\nunhealthy_threshold = 2\nhealthy_threshold = 2\n[pools.p.circuit_breaker]\nfailure_threshold = 1000\n",
    ))
    .await;
    let out = eventually(DEADLINE, || async {
        backend_json(&pools(&server).await, dead)["healthy"] == false
    })
    .await;
    assert!(out, "the dead backend was never taken out");
    let p = pools(&server).await;
    let b = backend_json(&p, dead);
    assert!(
        b["last_check_error"].as_str().unwrap().contains("connect"),
        "{b}"
    );
    assert!(b["last_check_error_at"].as_str().is_some(), "{b}");
    let up = format!("switchyard_backend_up{{backend=\"{dead}\",pool=\"p\"}}");
    assert_eq!(metric_now(&server, &up).await, 0.0);
    let fails = format!(
        "switchyard_health_checks_total{{backend=\"{dead}\",pool=\"p\",result=\"failure\"}}"
    );
    assert!(metric_now(&server, &fails).await >= 2.0);

    let errors = format!(
        "switchyard_upstream_errors_total{{backend=\"{dead}\",kind=\"connect\",pool=\"p\"}}"
    );
    let before = metric_now(&server, &errors).await;
    for _ in 0..30 {
        assert_eq!(get(server.listen_addrs[0], "/", None).await.0, 200);
    }
    // Out means out: no request even tried the dead backend.
    assert_eq!(metric_now(&server, &errors).await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recovered_backend_comes_back_after_the_rise_threshold() {
    let b = controlled("b", 200).await;
    let other = controlled("other", 200).await;
    b.set_health(500);
    let server = start_proxy(&pool_config(
        &[b.addr, other.addr],
        "[pools.p.health_check]\ninterval = \"100ms\"\ntimeout = \"50ms\"\nunhealthy_threshold = 2\nhealthy_threshold = 3\n",
    ))
    .await;
    assert!(
        eventually(DEADLINE, || async {
            backend_json(&pools(&server).await, b.addr)["healthy"] == false
        })
        .await
    );
    assert!(
        backend_json(&pools(&server).await, b.addr)["last_check_error"]
            .as_str()
            .unwrap()
            .contains("status 500")
    );
    let hits = b.hits();
    for _ in 0..10 {
        assert_eq!(
            get(server.listen_addrs[0], "/", None).await.1["x-backend"],
            "other"
        );
    }
    assert_eq!(b.hits(), hits);
    b.set_health(200);
    let checks_at_recovery = b.health_hits();
    assert!(
        eventually(DEADLINE, || async {
            backend_json(&pools(&server).await, b.addr)["healthy"] == true
        })
        .await
    );
    // At least three successful checks were needed.
    assert!(b.health_hits() >= checks_at_recovery + 3);
    let seen = eventually(DEADLINE, || async {
        get(server.listen_addrs[0], "/", None).await.1["x-backend"] == "b"
    })
    .await;
    assert!(seen);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flapping_health_endpoint_does_not_flap_the_backend() {
    // /healthz answers 200, 500, 200, 500, ...: never two failures (or two successes) in a row.
    let flip = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let f = flip.clone();
    let addr = backend(move |req: http::Request<hyper::body::Incoming>| {
        let f = f.clone();
        async move {
            let status = if req.uri().path() == "/healthz"
                && f.fetch_add(1, std::sync::atomic::Ordering::SeqCst) % 2 == 1
            {
                500
            } else {
                200
            };
            http::Response::builder()
                .status(status)
                .body(full("x"))
                .unwrap()
        }
    })
    .await;
    let server = start_proxy(&pool_config(
        &[addr],
        "[pools.p.health_check]\ninterval = \"50ms\"\ntimeout = \"40ms\"\nunhealthy_threshold = 2\nhealthy_threshold = 2\n",
    ))
    .await;
    let started = Instant::now();
    while flip.load(std::sync::atomic::Ordering::SeqCst) < 16 {
        assert!(started.elapsed() < DEADLINE, "health checks too slow");
        assert_eq!(backend_json(&pools(&server).await, addr)["healthy"], true);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let fails = format!(
        "switchyard_health_checks_total{{backend=\"{addr}\",pool=\"p\",result=\"failure\"}}"
    );
    assert!(metric_now(&server, &fails).await >= 5.0);
    let up = format!("switchyard_backend_up{{backend=\"{addr}\",pool=\"p\"}}");
    assert_eq!(metric_now(&server, &up).await, 1.0);
}

/// Sends GETs until backend `b` has had `hits` requests (at most `limit` GETs); returns their statuses.
async fn until_hits(addr: SocketAddr, b: &Controlled, hits: usize, limit: usize) -> Vec<u16> {
    let mut statuses = Vec::new();
    while b.hits() < hits && statuses.len() < limit {
        statuses.push(get(addr, "/", None).await.0.as_u16());
    }
    assert_eq!(b.hits(), hits, "{statuses:?}");
    statuses
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_opens_on_500s_then_half_opens_and_closes_on_recovery() {
    let b = controlled("b", 500).await;
    // A second backend: the cap never opens a pool's last usable backend.
    let spare = controlled("spare", 200).await;
    let server = start_proxy(&pool_config(
        &[b.addr, spare.addr],
        "[pools.p.circuit_breaker]\nfailure_threshold = 3\nopen_duration = \"300ms\"\nmax_open_duration = \"2s\"\n",
    ))
    .await;
    let addr = server.listen_addrs[0];
    // 500 passes through untouched (never retried).
    let statuses = until_hits(addr, &b, 3, 10).await;
    assert_eq!(
        statuses.iter().filter(|s| **s == 500).count(),
        3,
        "{statuses:?}"
    );
    let p = pools(&server).await;
    let j = backend_json(&p, b.addr);
    assert_eq!(j["circuit"], "open", "{j}");
    assert_eq!(j["consecutive_failures"], 3);
    assert!(j["half_open_at"].as_str().is_some(), "{j}");
    // Open: the backend gets nothing; the other one serves.
    for _ in 0..5 {
        assert_eq!(get(addr, "/", None).await.0, 200);
    }
    assert_eq!(b.hits(), 3);
    let open = format!(
        "switchyard_circuit_breaker_state{{backend=\"{}\",pool=\"p\",state=\"open\"}}",
        b.addr
    );
    assert_eq!(metric_now(&server, &open).await, 1.0);

    // Half-open after open_duration, without any traffic.
    assert!(
        eventually(DEADLINE, || async {
            backend_json(&pools(&server).await, b.addr)["circuit"] == "half_open"
        })
        .await
    );
    let half = format!(
        "switchyard_circuit_breaker_state{{backend=\"{}\",pool=\"p\",state=\"half_open\"}}",
        b.addr
    );
    assert_eq!(metric_now(&server, &half).await, 1.0);
    // A failed trial reopens it (for twice as long).
    assert_eq!(until_hits(addr, &b, 4, 4).await.last(), Some(&500));
    assert_eq!(
        backend_json(&pools(&server).await, b.addr)["circuit"],
        "open"
    );
    assert!(
        eventually(DEADLINE, || async {
            backend_json(&pools(&server).await, b.addr)["circuit"] == "half_open"
        })
        .await
    );
    // It recovers: the trial succeeds and closes the circuit.
    b.set_status(200);
    until_hits(addr, &b, 5, 4).await;
    let p = pools(&server).await;
    assert_eq!(backend_json(&p, b.addr)["circuit"], "closed");
    assert_eq!(backend_json(&p, b.addr)["consecutive_failures"], 0);
    for _ in 0..5 {
        assert_eq!(get(addr, "/", None).await.0, 200);
    }
    let (_, text) = admin_get(&server, "/metrics").await;
    for (to, n) in [("open", 2.0), ("half_open", 2.0), ("closed", 1.0)] {
        let s = format!(
            "switchyard_circuit_breaker_transitions_total{{backend=\"{}\",pool=\"p\",to=\"{to}\"}}",
            b.addr
        );
        assert_eq!(metric(&text, &s), Some(n), "{s}\n{text}");
    }
    // The event feed tells the same story, in order, with the reasons.
    assert_eq!(
        event_kinds(&server, &b.addr.to_string()).await,
        [
            "circuit_open",
            "circuit_half_open",
            "circuit_open",
            "circuit_half_open",
            "circuit_closed"
        ]
    );
    let opened = events(&server)
        .await
        .into_iter()
        .rev()
        .find(|e| e.0 == "circuit_open")
        .unwrap();
    assert!(opened.2.contains("500"), "{opened:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_open_breaker_leaves_the_other_backends_serving() {
    let bad = controlled("bad", 503).await;
    let good = controlled("good", 200).await;
    let server = start_proxy(&pool_config(
        &[bad.addr, good.addr],
        "[pools.p.circuit_breaker]\nfailure_threshold = 2\nopen_duration = \"1m\"\n",
    ))
    .await;
    for _ in 0..20 {
        // GETs that hit the 503 backend are retried on the good one.
        assert_eq!(get(server.listen_addrs[0], "/", None).await.0, 200);
    }
    assert_eq!(
        backend_json(&pools(&server).await, bad.addr)["circuit"],
        "open"
    );
    assert_eq!(
        backend_json(&pools(&server).await, good.addr)["circuit"],
        "closed"
    );
    assert_eq!(bad.hits(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_backend_gives_504_in_time_and_other_pools_are_unaffected() {
    let hang = hanging_backend().await;
    let fast = controlled("fast", 200).await;
    let server = start_proxy(&config(&format!(
        r#"
[[routes]]
path_prefix = "/hang"
pool = "hang"
[[routes]]
pool = "fast"
[pools.hang]
backends = [{{ address = "{hang}" }}]
[pools.hang.timeouts]
request = "500ms"
[pools.fast]
backends = [{{ address = "{}" }}]
"#,
        fast.addr
    )))
    .await;
    let addr = server.listen_addrs[0];
    let hung = tokio::spawn(async move {
        let t = Instant::now();
        (get(addr, "/hang", None).await.0, t.elapsed())
    });
    for _ in 0..10 {
        let t = Instant::now();
        assert_eq!(get(addr, "/", None).await.0, 200);
        assert!(
            t.elapsed() < Duration::from_millis(400),
            "the other pool waited {:?}",
            t.elapsed()
        );
    }
    let (status, took) = hung.await.unwrap();
    assert_eq!(status, 504);
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_secs(3),
        "{took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_backend_past_the_timeout_is_retried_for_gets_only() {
    let hang = hanging_backend().await;
    let ok = controlled("ok", 200).await;
    let server = start_proxy(&pool_config(
        &[hang, ok.addr],
        "[pools.p.timeouts]\nrequest = \"200ms\"\n[pools.p.circuit_breaker]\nfailure_threshold = 1000\n",
    ))
    .await;
    let addr = server.listen_addrs[0];
    // Round-robin sends the first request of each pair to the hanging backend.
    for _ in 0..4 {
        assert_eq!(get(addr, "/", None).await.0, 200);
    }
    assert_eq!(ok.hits(), 4);
    // A POST that timed out was sent: never retried.
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(send(addr, "POST", "/", "").await.0.as_u16());
    }
    statuses.sort();
    assert_eq!(statuses, [200, 200, 504, 504]);
    assert_eq!(ok.hits(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_idempotent_requests_are_never_retried_once_sent() {
    let failing = controlled("failing", 503).await;
    let ok = controlled("ok", 200).await;
    let server = start_proxy(&pool_config(
        &[failing.addr, ok.addr],
        "[pools.p.circuit_breaker]\nfailure_threshold = 1000\n",
    ))
    .await;
    let addr = server.listen_addrs[0];
    let mut got_503 = 0;
    for _ in 0..10 {
        let (status, _) = send(addr, "POST", "/", "order=1").await;
        if status == 503 {
            got_503 += 1;
        } else {
            assert_eq!(status, 200);
        }
    }
    // Every POST reached exactly one backend; the ones that met the 503 got it.
    assert_eq!(failing.hits() + ok.hits(), 10);
    assert_eq!(got_503, failing.hits());
    assert!(got_503 >= 4, "{got_503}");
    // The same for PATCH; a GET is retried instead.
    let (f, o) = (failing.hits(), ok.hits());
    for _ in 0..10 {
        assert_eq!(get(addr, "/", None).await.0, 200);
    }
    assert!(failing.hits() > f);
    assert_eq!(ok.hits() - o, 10);
    assert_eq!(
        metric_now(&server, "switchyard_retries_total{pool=\"p\"}").await,
        (failing.hits() - f) as f64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retry_budget_holds_retries_down() {
    let a = controlled("a", 503).await;
    let b = controlled("b", 503).await;
    let server = start_proxy(&pool_config(
        &[a.addr, b.addr],
        "[pools.p.circuit_breaker]\nfailure_threshold = 1000\n[pools.p.retry]\nmax_retries = 1\nbackoff = \"0ms\"\nbudget_percent = 20\n",
    ))
    .await;
    for _ in 0..100 {
        assert_eq!(get(server.listen_addrs[0], "/", None).await.0, 503);
    }
    let retries = metric_now(&server, "switchyard_retries_total{pool=\"p\"}").await;
    // Without a budget every request would be retried once (100 retries); 20% of 100 is 20.
    assert!((15.0..=23.0).contains(&retries), "retries: {retries}");
    assert_eq!((a.hits() + b.hits()) as f64, 100.0 + retries);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_backends_down_is_503_at_once() {
    let a = controlled("a", 200).await;
    let b = controlled("b", 200).await;
    a.set_health(503);
    b.set_health(503);
    let server = start_proxy(&pool_config(
        &[a.addr, b.addr],
        "[pools.p.health_check]\ninterval = \"100ms\"\ntimeout = \"50ms\"\nunhealthy_threshold = 1\n",
    ))
    .await;
    assert!(all_down(&server, &[a.addr, b.addr]).await);
    let t = Instant::now();
    let (status, _, body) = get(server.listen_addrs[0], "/", None).await;
    assert_eq!(status, 503);
    assert!(body.contains("no backend available"));
    assert!(t.elapsed() < Duration::from_millis(250));
    assert_eq!(a.hits() + b.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panic_mode_routes_to_all_when_too_few_are_healthy() {
    let a = controlled("a", 200).await;
    let b = controlled("b", 200).await;
    a.set_health(500);
    b.set_health(500);
    let server = start_proxy(&pool_config(
        &[a.addr, b.addr],
        "panic_threshold = 0.5\n[pools.p.health_check]\ninterval = \"100ms\"\ntimeout = \"50ms\"\nunhealthy_threshold = 1\n",
    ))
    .await;
    assert!(all_down(&server, &[a.addr, b.addr]).await);
    assert_eq!(pools(&server).await["pools"]["p"]["panic"], true);
    for _ in 0..4 {
        assert_eq!(get(server.listen_addrs[0], "/", None).await.0, 200);
    }
    assert_eq!(a.hits() + b.hits(), 4);
    // One healthy of two is not below 0.5: panic ends, and only the healthy one is used.
    a.set_health(200);
    assert!(
        eventually(DEADLINE, || async {
            pools(&server).await["pools"]["p"]["panic"] == false
        })
        .await
    );
    let before = b.hits();
    for _ in 0..4 {
        assert_eq!(
            get(server.listen_addrs[0], "/", None).await.1["x-backend"],
            "a"
        );
    }
    assert_eq!(b.hits(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_active_requests_skips_a_busy_backend() {
    let slow = named_backend("slow", Duration::from_millis(600)).await;
    let fast = named_backend("fast", Duration::ZERO).await;
    let server = start_proxy(&pool_config(
        &[slow, fast],
        "[pools.p.circuit_breaker]\nmax_active_requests = 1\n",
    ))
    .await;
    let addr = server.listen_addrs[0];
    // Round-robin: the first request goes to the slow backend and stays there.
    let first = tokio::spawn(async move { get(addr, "/", None).await.1["x-backend"].clone() });
    assert!(
        eventually(DEADLINE, || async {
            backend_json(&pools(&server).await, slow)["active_requests"] == 1
        })
        .await
    );
    for _ in 0..4 {
        assert_eq!(get(addr, "/", None).await.1["x-backend"], "fast");
    }
    assert_eq!(first.await.unwrap(), "slow");
}

/// The load test of the resilience issue: bounded concurrent GETs while one of three backends is killed and
/// restarted. Every GET must succeed; reports how long the dead backend kept being tried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_and_restarting_a_backend_under_load_loses_no_get() {
    let a = Killable::start("a").await;
    let mut b = Killable::start("b").await;
    let c = Killable::start("c").await;
    let server = start_proxy(&pool_config(
        &[a.addr, b.addr, c.addr],
        "[pools.p.health_check]\ninterval = \"200ms\"\ntimeout = \"100ms\"\nunhealthy_threshold = 2\nhealthy_threshold = 2\n",
    ))
    .await;
    let addr = server.listen_addrs[0];
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let served = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (stop, served) = (stop.clone(), served.clone());
        clients.push(tokio::spawn(async move {
            let (mut ok, mut failed) = (0usize, 0usize);
            let client = client();
            let end = Instant::now() + Duration::from_secs(20);
            while !stop.load(std::sync::atomic::Ordering::SeqCst) && Instant::now() < end {
                let req = http::Request::get(format!("http://{addr}/"))
                    .body(full(""))
                    .unwrap();
                match client.request(req).await {
                    Ok(r) if r.status() == 200 => {
                        ok += 1;
                        served.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                    _ => failed += 1,
                }
            }
            (ok, failed)
        }));
    }
    let errors = format!(
        "switchyard_upstream_errors_total{{backend=\"{}\",kind=\"connect\",pool=\"p\"}}",
        b.addr
    );
    // The clients are under way: some requests served.
    let served_now = || served.load(std::sync::atomic::Ordering::SeqCst);
    assert!(eventually(DEADLINE, || async { served_now() >= 50 }).await);
    let killed_at = Instant::now();
    b.kill();
    // Wait until the health checks have taken it out, then note when it was last tried.
    assert!(
        eventually(DEADLINE, || async {
            backend_json(&pools(&server).await, b.addr)["healthy"] == false
        })
        .await
    );
    let out_after = killed_at.elapsed();
    let tried = metric_now(&server, &errors).await;
    // 200 more requests served after it went out, none of them tried on it.
    let mark = served_now();
    assert!(eventually(DEADLINE, || async { served_now() >= mark + 200 }).await);
    assert_eq!(
        metric_now(&server, &errors).await,
        tried,
        "the dead backend was tried after it went out"
    );
    let hits_before_restart = b.hits();
    b.restart().await;
    assert!(
        eventually(DEADLINE, || async {
            backend_json(&pools(&server).await, b.addr)["healthy"] == true
        })
        .await
    );
    assert!(
        eventually(DEADLINE, || async { b.hits() > hits_before_restart }).await,
        "never came back"
    );
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (mut ok, mut failed) = (0, 0);
    for c in clients {
        let (o, f) = c.await.unwrap();
        ok += o;
        failed += f;
    }
    eprintln!(
        "load test: {ok} GETs ok, {failed} failed; dead backend out of rotation {out_after:?} after the kill, \
         {tried} connect attempts to it (all rerouted)"
    );
    assert_eq!(failed, 0);
    assert!(ok > 100);
    assert!(a.hits() > 0 && c.hits() > 0);
}

/// A fleet-wide blip: all three backends answer 500 for 2 s while their health checks pass. The cap keeps
/// most circuits closed, so the first 200 comes right after they recover (it used to take the 30 s open period).
/// Through the real binary, with a client sending all along.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_second_blip_across_the_pool_is_not_a_thirty_second_outage() {
    let backends = [
        controlled("a", 200).await,
        controlled("b", 200).await,
        controlled("c", 200).await,
    ];
    let addrs: Vec<_> = backends.iter().map(|b| b.addr).collect();
    let running = spawn_pool(
        &addrs,
        "[pools.p.health_check]\ninterval = \"300ms\"\ntimeout = \"200ms\"\n",
    )
    .await;
    let (proxy, admin) = (running.proxy, running.admin);
    assert_eq!(get(proxy, "/", None).await.0, 200);
    for b in &backends {
        b.set_status(500);
    }
    let blip = Instant::now();
    while blip.elapsed() < Duration::from_secs(2) {
        let status = get(proxy, "/", None).await.0;
        assert!(status == 500 || status == 503, "{status}");
    }
    let opened = circuits(admin, "open").await;
    assert!(
        opened <= 1,
        "50% of 3: at most one circuit open, {opened} are"
    );
    assert!(
        admin_json(admin, "/api/pools").await["pools"]["p"]["circuit_breaker_capped"]
            .as_u64()
            .unwrap()
            >= 1
    );
    for b in &backends {
        b.set_status(200);
    }
    let recovered = Instant::now();
    let mut first_ok = None;
    while recovered.elapsed() < Duration::from_secs(10) {
        if get(proxy, "/", None).await.0 == 200 {
            first_ok = Some(recovered.elapsed());
            break;
        }
    }
    let first_ok = first_ok.expect("no 200 within 10 s of recovery");
    assert!(
        first_ok < Duration::from_secs(2),
        "first 200 after {first_ok:?}"
    );
    let capped = metric_at(admin, "switchyard_circuit_breaker_capped_total{pool=\"p\"}").await;
    assert!(capped >= 1.0, "{capped}");
}

/// Three of ten backends fail for good: their circuits open (30% is under the cap) and the other seven serve
/// everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_backends_under_the_cap_are_taken_out() {
    let mut backends = Vec::new();
    for (i, name) in ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"]
        .into_iter()
        .enumerate()
    {
        backends.push(controlled(name, if i < 3 { 500 } else { 200 }).await);
    }
    let addrs: Vec<_> = backends.iter().map(|b| b.addr).collect();
    let running = spawn_pool(
        &addrs,
        "[pools.p.circuit_breaker]\nfailure_threshold = 3\nopen_duration = \"1m\"\n",
    )
    .await;
    let (proxy, admin) = (running.proxy, running.admin);
    let mut sent = 0;
    while circuits(admin, "open").await < 3 && sent < 200 {
        get(proxy, "/", None).await;
        sent += 1;
    }
    assert_eq!(circuits(admin, "open").await, 3, "after {sent} requests");
    let failing_hits: usize = backends[..3].iter().map(Controlled::hits).sum();
    for _ in 0..50 {
        assert_eq!(get(proxy, "/", None).await.0, 200);
    }
    assert_eq!(
        backends[..3].iter().map(Controlled::hits).sum::<usize>(),
        failing_hits
    );
    assert_eq!(
        metric_at(admin, "switchyard_circuit_breaker_capped_total{pool=\"p\"}").await,
        0.0
    );
}

/// Under concurrent failures of every backend, the cap holds exactly: no more than half the circuits ever open
/// (counted by their transitions), the rest are held closed and say so, and the pool still answers with the
/// backends' own 500s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cap_holds_under_concurrent_failures() {
    let mut backends = Vec::new();
    for name in ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"] {
        backends.push(controlled(name, 500).await);
    }
    let addrs: Vec<_> = backends.iter().map(|b| b.addr).collect();
    let running = spawn_pool(
        &addrs,
        "[pools.p.circuit_breaker]\nfailure_threshold = 2\nopen_duration = \"1m\"\n",
    )
    .await;
    let (proxy, admin) = (running.proxy, running.admin);
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            tokio::spawn(async move {
                let mut statuses = Vec::new();
                for _ in 0..25 {
                    statuses.push(get(proxy, "/", None).await.0.as_u16());
                }
                statuses
            })
        })
        .collect();
    for t in tasks {
        for status in t.await.unwrap() {
            assert_eq!(status, 500, "the backends' own answer, never a dark pool");
        }
    }
    let text = get(([127, 0, 0, 1], admin).into(), "/metrics", None)
        .await
        .2;
    let opened: f64 = addrs
        .iter()
        .map(|a| {
            metric(
                &text,
                &format!(
                    "switchyard_circuit_breaker_transitions_total{{backend=\"{a}\",pool=\"p\",to=\"open\"}}"
                ),
            )
            .unwrap_or(0.0)
        })
        .sum();
    assert_eq!(opened, 5.0, "50% of 10 circuits open, never more:\n{text}");
    assert_eq!(circuits(admin, "open").await, 5);
    let pools = admin_json(admin, "/api/pools").await;
    let held = pools["pools"]["p"]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["circuit_held_closed"] == true)
        .count();
    assert_eq!(held, 5, "{pools}");
    let capped = metric(&text, "switchyard_circuit_breaker_capped_total{pool=\"p\"}").unwrap();
    assert_eq!(capped, 5.0, "one per backend held closed:\n{text}");
}

/// When every usable backend's circuit is open anyway (the last usable one went out by its health checks),
/// the pool tries the open ones at once instead of staying dark for the open period: recovery is seen within
/// a round trip.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_whose_usable_backends_are_all_open_tries_them_at_once() {
    let a = controlled("a", 500).await;
    let b = controlled("b", 200).await;
    let running = spawn_pool(
        &[a.addr, b.addr],
        "[pools.p.circuit_breaker]\nfailure_threshold = 2\nopen_duration = \"1m\"\nmax_open_percent = 100\n\
         [pools.p.health_check]\ninterval = \"100ms\"\ntimeout = \"50ms\"\nunhealthy_threshold = 2\n",
    )
    .await;
    let (proxy, admin) = (running.proxy, running.admin);
    let mut sent = 0;
    while circuits(admin, "open").await < 1 && sent < 20 {
        get(proxy, "/", None).await;
        sent += 1;
    }
    assert_eq!(circuits(admin, "open").await, 1);
    // b's health checks fail: a (open for a minute) is the only backend health allows.
    b.set_health(500);
    assert!(
        eventually(Duration::from_secs(10), || async {
            admin_json(admin, "/api/pools").await["pools"]["p"]["backends"][1]["healthy"] == false
        })
        .await
    );
    // Still failing: the client gets a's own answer from a trial, not a 503 for the rest of the minute.
    assert_eq!(get(proxy, "/", None).await.0, 500);
    // Each request is an early trial (half-open, then open again): all counted, but not a log line and an
    // event each; about one pair a second is.
    let t = Instant::now();
    for _ in 0..30 {
        assert_eq!(get(proxy, "/", None).await.0, 500);
    }
    let took = t.elapsed().as_secs() as usize;
    let (_, _, text) = get(([127, 0, 0, 1], admin).into(), "/metrics", None).await;
    let series = format!(
        "switchyard_circuit_breaker_transitions_total{{backend=\"{}\",pool=\"p\",to=\"half_open\"}}",
        a.addr
    );
    assert!(metric(&text, &series).unwrap_or(0.0) >= 31.0, "{text}");
    let logged = admin_json(admin, "/api/events").await["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "circuit_half_open")
        .count();
    assert!(logged <= took + 2, "{logged} half-open events in {took} s");
    a.set_status(200);
    let t = Instant::now();
    assert_eq!(get(proxy, "/", None).await.0, 200);
    assert!(t.elapsed() < Duration::from_secs(1));
    assert!(
        eventually(Duration::from_secs(5), || async {
            circuits(admin, "closed").await == 2
        })
        .await
    );
}
