//! Rate limits over real sockets: a burst then a steady refill, the 429 with its headers (and in the access log
//! and metrics), keys by client IP through a trusted proxy, by header and by route, a forged X-Forwarded-For
//! ignored, two limits on one route, reloads keeping and changing buckets; global limits shared by three real
//! switchyard processes through a real Redis, Redis killed mid-run and restarted; every new config error.
#![allow(clippy::disallowed_methods)] // wall-clock time against real processes and sockets

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http::{Request, StatusCode};
use http_body_util::BodyExt;

use common::*;
use switchyard::server::Server;

const DEADLINE: Duration = Duration::from_secs(20);

struct Answer {
    status: StatusCode,
    headers: http::HeaderMap,
    body: String,
}

async fn send_to(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Answer {
    let mut req = Request::get(format!("http://{addr}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = client().request(req.body(full("")).unwrap()).await.unwrap();
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// A route `/api` to one backend, with `limits` (TOML) named by the route, and `top` keys before the tables.
fn limited(backend: SocketAddr, top: &str, limits: &str, names: &[&str]) -> String {
    let names: Vec<String> = names.iter().map(|n| format!("{n:?}")).collect();
    config_top(
        top,
        &format!(
            "[[routes]]\npath_prefix = \"/api\"\npool = \"p\"\nrate_limits = [{}]\n\
             [[routes]]\npath_prefix = \"/\"\npool = \"p\"\n\
             [pools.p]\nbackends = [{{ address = \"{backend}\" }}]\n{limits}\n",
            names.join(", ")
        ),
    )
}

fn header<'a>(a: &'a Answer, name: &str) -> &'a str {
    a.headers.get(name).map_or("", |v| v.to_str().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_then_a_steady_refill_and_a_429_that_says_when() {
    let b = controlled("b", 200).await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let server = start_proxy(&limited(
        b.addr,
        "",
        &format!(
            "[rate_limits.api]\nkey = \"route\"\nrate = 20\nburst = 5\n\
             [access_log]\nenabled = true\nformat = \"json\"\npath = \"{}\"\n",
            log.display()
        ),
        &["api"],
    ))
    .await;
    let addr = server.listen_addrs[0];
    for _ in 0..5 {
        assert_eq!(send_to(addr, "/api/x", &[]).await.status, 200);
    }
    let refused = send_to(addr, "/api/x", &[]).await;
    assert_eq!(refused.status, 429);
    assert!(refused.body.contains("rate limited"), "{}", refused.body);
    assert_eq!(header(&refused, "retry-after"), "1");
    assert_eq!(header(&refused, "ratelimit-policy"), "\"api\";q=5;w=1");
    assert_eq!(header(&refused, "ratelimit"), "\"api\";r=0;t=1");
    assert_eq!(b.hits(), 5, "a refused request never reaches the pool");
    // Other routes are not limited.
    assert_eq!(send_to(addr, "/other", &[]).await.status, 200);

    // A token comes back within 50 ms; over a second of continuous requests, no more than the refill passes.
    assert!(
        eventually(DEADLINE, || async {
            send_to(addr, "/api/x", &[]).await.status == 200
        })
        .await
    );
    let start = Instant::now();
    let (mut passed, mut sent) = (0u32, 0u32);
    while start.elapsed() < Duration::from_secs(1) {
        sent += 1;
        if send_to(addr, "/api/x", &[]).await.status == 200 {
            passed += 1;
        }
    }
    let most = 1.0 + 20.0 * start.elapsed().as_secs_f64() + 1.0;
    assert!(
        f64::from(passed) <= most,
        "{passed} of {sent} passed in a second at 20/s"
    );
    assert!(passed >= 5 && sent > passed, "{passed} of {sent}");

    let (_, metrics) = admin_get(&server, "/metrics").await;
    let n = metric(
        &metrics,
        "switchyard_rate_limited_total{limit=\"api\",route=\"/api\"}",
    )
    .unwrap();
    assert!(n >= f64::from(sent - passed), "{n}");
    // The access log has the 429 with its reason.
    assert!(
        eventually(DEADLINE, || async {
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .lines()
                .any(|l| l.contains("\"status\":429") && l.contains("rate_limited"))
        })
        .await
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buckets_by_client_ip_through_a_trusted_proxy_by_header_and_by_route() {
    let b = named_backend("b", Duration::ZERO).await;
    let limits = "[rate_limits.ip]\nkey = \"client_ip\"\nrate = 1\nburst = 2\n";
    // Behind a trusted proxy: each client its own bucket.
    let server = start_proxy(&limited(
        b,
        "trusted_proxies = [\"127.0.0.1/32\"]",
        limits,
        &["ip"],
    ))
    .await;
    let addr = server.listen_addrs[0];
    for client in ["198.51.100.1", "198.51.100.2"] {
        for _ in 0..2 {
            let a = send_to(addr, "/api", &[("x-forwarded-for", client)]).await;
            assert_eq!(a.status, 200, "{client}");
        }
        assert_eq!(
            send_to(addr, "/api", &[("x-forwarded-for", client)])
                .await
                .status,
            429
        );
    }
    // The proxy in front is not the client: a chain through another trusted hop is the same client.
    let chain = "198.51.100.1, 127.0.0.1";
    assert_eq!(
        send_to(addr, "/api", &[("x-forwarded-for", chain)])
            .await
            .status,
        429
    );
    server.shutdown().await;

    // From an untrusted peer, X-Forwarded-For is the client's own claim: one bucket however it is forged.
    let server = start_proxy(&limited(b, "", limits, &["ip"])).await;
    let addr = server.listen_addrs[0];
    let statuses: Vec<u16> = {
        let mut v = Vec::new();
        for i in 0..4 {
            let forged = format!("203.0.113.{i}");
            v.push(
                send_to(addr, "/api", &[("x-forwarded-for", &forged)])
                    .await
                    .status
                    .as_u16(),
            );
        }
        v
    };
    assert_eq!(statuses, [200, 200, 429, 429]);
    server.shutdown().await;

    // By header: each value its own bucket; without the header, the bucket of the empty key.
    let limits = "[rate_limits.user]\nkey = \"header:X-Api-Key\"\nrate = 1\nburst = 1\n";
    let server = start_proxy(&limited(b, "", limits, &["user"])).await;
    let addr = server.listen_addrs[0];
    for key in ["k1", "k2"] {
        assert_eq!(
            send_to(addr, "/api", &[("x-api-key", key)]).await.status,
            200
        );
        assert_eq!(
            send_to(addr, "/api", &[("x-api-key", key)]).await.status,
            429
        );
    }
    assert_eq!(send_to(addr, "/api", &[]).await.status, 200);
    assert_eq!(send_to(addr, "/api", &[]).await.status, 429);
    server.shutdown().await;

    // By route: one bucket per route the limit is attached to.
    let text = config(&format!(
        "[[routes]]\npath_prefix = \"/a\"\npool = \"p\"\nrate_limits = [\"r\"]\n\
         [[routes]]\npath_prefix = \"/b\"\npool = \"p\"\nrate_limits = [\"r\"]\n\
         [pools.p]\nbackends = [{{ address = \"{b}\" }}]\n\
         [rate_limits.r]\nkey = \"route\"\nrate = 1\nburst = 1\n"
    ));
    let server = start_proxy(&text).await;
    let addr = server.listen_addrs[0];
    for path in ["/a", "/b"] {
        assert_eq!(send_to(addr, path, &[]).await.status, 200);
        assert_eq!(
            send_to(addr, path, &[("x-forwarded-for", "1.2.3.4")])
                .await
                .status,
            429
        );
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_limits_on_a_route_the_first_to_refuse_answers_and_headers_on_allowed_answers() {
    let b = named_backend("b", Duration::ZERO).await;
    let limits = "[rate_limits.wide]\nkey = \"route\"\nrate = 1\nburst = 100\nresponse_headers = true\n\
                  [rate_limits.narrow]\nkey = \"client_ip\"\nrate = 1\nburst = 2\n";
    let server = start_proxy(&limited(b, "", limits, &["wide", "narrow"])).await;
    let addr = server.listen_addrs[0];
    let first = send_to(addr, "/api", &[]).await;
    assert_eq!(first.status, 200);
    assert_eq!(header(&first, "ratelimit-policy"), "\"wide\";q=100;w=100");
    assert_eq!(header(&first, "ratelimit"), "\"wide\";r=99;t=1");
    assert_eq!(send_to(addr, "/api", &[]).await.status, 200);
    let refused = send_to(addr, "/api", &[]).await;
    assert_eq!(refused.status, 429);
    assert_eq!(header(&refused, "ratelimit-policy"), "\"narrow\";q=2;w=2");
    let (_, metrics) = admin_get(&server, "/metrics").await;
    assert_eq!(
        metric(
            &metrics,
            "switchyard_rate_limited_total{limit=\"narrow\",route=\"/api\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &metrics,
            "switchyard_rate_limited_total{limit=\"wide\",route=\"/api\"}"
        ),
        Some(0.0)
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_unchanged_buckets_and_a_new_burst_applies_at_once() {
    let b = named_backend("b", Duration::ZERO).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("switchyard.toml");
    let with = |burst: u32, extra: &str| {
        limited(
            b,
            "",
            &format!("[rate_limits.api]\nkey = \"route\"\nrate = 1\nburst = {burst}\n{extra}"),
            &["api"],
        )
    };
    std::fs::write(&path, with(2, "")).unwrap();
    let server = Server::start_with_file(switchyard::config::load(&path).unwrap(), path.clone())
        .await
        .unwrap();
    let addr = server.listen_addrs[0];
    for _ in 0..2 {
        assert_eq!(send_to(addr, "/api", &[]).await.status, 200);
    }
    assert_eq!(send_to(addr, "/api", &[]).await.status, 429);
    // Another part of the config changes: the bucket stays empty.
    write_atomically(&path, with(2, "[limits]\nmax_connections = 5000\n"));
    server
        .reload(switchyard::control::Trigger::Admin)
        .await
        .unwrap();
    assert_eq!(send_to(addr, "/api", &[]).await.status, 429);
    // A larger burst: room at once.
    write_atomically(&path, with(10, ""));
    server
        .reload(switchyard::control::Trigger::Admin)
        .await
        .unwrap();
    assert_eq!(send_to(addr, "/api", &[]).await.status, 200);
    // Another key kind: new buckets.
    write_atomically(
        &path,
        limited(
            b,
            "",
            "[rate_limits.api]\nkey = \"client_ip\"\nrate = 1\nburst = 1\n",
            &["api"],
        ),
    );
    server
        .reload(switchyard::control::Trigger::Admin)
        .await
        .unwrap();
    assert_eq!(send_to(addr, "/api", &[]).await.status, 200);
    assert_eq!(send_to(addr, "/api", &[]).await.status, 429);
    server.shutdown().await;
}

/// Sends to each of `proxies` for `run`, concurrently; the requests each got through.
async fn load(proxies: &[SocketAddr], run: Duration, user: &'static str) -> Vec<u32> {
    let tasks: Vec<_> = proxies
        .iter()
        .map(|&addr| {
            tokio::spawn(async move {
                let start = Instant::now();
                let mut passed = 0;
                while start.elapsed() < run {
                    let a = send_to(addr, "/api", &[("x-user", user)]).await;
                    assert!(a.status == 200 || a.status == 429, "{}", a.status);
                    passed += u32::from(a.status == 200);
                }
                passed
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

fn global_config(redis: &str, scope: &str) -> String {
    format!(
        "[[routes]]\npath_prefix = \"/api\"\npool = \"p\"\nrate_limits = [\"shared\"]\n\
         [rate_limit_store]\nredis = \"{redis}\"\ntimeout = \"200ms\"\n\
         [rate_limits.shared]\nkey = \"header:X-User\"\nrate = 10\nburst = 10\nscope = \"{scope}\"\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_processes_share_a_global_limit_through_redis() {
    let Some(redis) = Redis::start().await else {
        return;
    };
    let b = named_backend("b", Duration::ZERO).await;
    let mut procs = Vec::new();
    for _ in 0..3 {
        let dir = tempfile::tempdir().unwrap();
        let url = redis.url();
        let (proc, port, _) = spawn(dir.path(), |port, admin| {
            format!(
                "[[listeners]]\naddress = \"127.0.0.1:{port}\"\n[admin]\naddress = \"127.0.0.1:{admin}\"\n\
                 [pools.p]\nbackends = [{{ address = \"{b}\" }}]\n{}",
                global_config(&url, "global")
            )
        })
        .await;
        procs.push((proc, dir, SocketAddr::from(([127, 0, 0, 1], port))));
    }
    let proxies: Vec<SocketAddr> = procs.iter().map(|p| p.2).collect();
    // 2 s of load on all three: the shared bucket lets through its burst and 10 a second, about 30 in all
    // (each instance learns the others' counts within a sync of 20 ms); three separate buckets would pass 90.
    let run = Duration::from_secs(2);
    let passed = load(&proxies, run, "u1").await;
    let total: u32 = passed.iter().sum();
    assert!((20..=45).contains(&total), "passed {passed:?}");
    assert!(passed.iter().all(|&p| p > 0), "{passed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_traffic_goes_on_with_local_buckets_and_global_comes_back() {
    let Some(mut redis) = Redis::start().await else {
        return;
    };
    let b = named_backend("b", Duration::ZERO).await;
    let text = config(&format!(
        "[pools.p]\nbackends = [{{ address = \"{b}\" }}]\n{}",
        global_config(&redis.url(), "global")
    ));
    let server = start_proxy(&text).await;
    let addr = server.listen_addrs[0];
    let errors = |server: &Server| {
        let server_admin = server.admin_addr;
        async move {
            let (_, _, text) = get(server_admin, "/metrics", None).await;
            metric(&text, "switchyard_rate_limit_store_errors_total").unwrap_or(0.0)
        }
    };
    // Shared: the key's count reaches Redis.
    assert_eq!(send_to(addr, "/api", &[("x-user", "a")]).await.status, 200);
    let seen_in_redis = eventually(DEADLINE, || {
        let port = redis.port;
        async move { redis_keys(port).await > 0 }
    })
    .await;
    assert!(seen_in_redis, "the bucket never reached Redis");
    assert_eq!(errors(&server).await, 0.0);

    // Redis goes away: requests are still served (and limited locally), and the errors are counted.
    redis.kill();
    let mut statuses = Vec::new();
    for _ in 0..15 {
        statuses.push(
            send_to(addr, "/api", &[("x-user", "b")])
                .await
                .status
                .as_u16(),
        );
    }
    assert!(
        statuses.iter().all(|&s| s == 200 || s == 429),
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|&&s| s == 200).count(),
        10,
        "{statuses:?}"
    );
    assert!(eventually(DEADLINE, || async { errors(&server).await > 0.0 }).await);

    // Back: counts reach Redis again, and the errors stop.
    redis.restart().await;
    assert_eq!(send_to(addr, "/api", &[("x-user", "c")]).await.status, 200);
    let back = eventually(DEADLINE, || {
        let port = redis.port;
        async move {
            send_to(addr, "/api", &[("x-user", "c")]).await;
            redis_keys(port).await > 0
        }
    })
    .await;
    assert!(back, "global limits never came back after Redis did");
    let settled = errors(&server).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        errors(&server).await,
        settled,
        "errors still counted with Redis back"
    );
    server.shutdown().await;
}

/// How many shared buckets of limit `shared` the Redis at `port` holds (through `redis-cli`).
async fn redis_keys(port: u16) -> usize {
    let Some(cli) = which("redis-cli") else {
        return 0;
    };
    let args = [
        "-p",
        &port.to_string(),
        "--scan",
        "--pattern",
        "switchyard:rate:shared:*",
    ]
    .map(str::to_owned);
    let out =
        tokio::task::spawn_blocking(move || std::process::Command::new(cli).args(args).output())
            .await;
    match out {
        Ok(Ok(out)) if out.status.success() => String::from_utf8_lossy(&out.stdout).lines().count(),
        _ => 0,
    }
}

#[test]
fn every_new_config_error_names_its_field() {
    let check = |text: &str, wants: &[&str]| {
        let e = switchyard::config::parse(text, "t.toml")
            .expect_err(text)
            .to_string();
        for want in wants {
            assert!(e.contains(want), "{text}\n---\n{e}");
        }
    };
    let b: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let with = |limits: &str, names: &[&str]| limited(b, "", limits, names);
    check(
        &with("[rate_limits.a]\nkey = \"cookie:x\"\nrate = 1", &["a"]),
        &["rate_limits.a.key", "client_ip", "header:NAME", "route"],
    );
    check(
        &with("[rate_limits.a]\nkey = \"header:a b\"\nrate = 1", &["a"]),
        &["rate_limits.a.key", "not a header name"],
    );
    check(
        &with("[rate_limits.a]\nrate = 0", &["a"]),
        &["rate_limits.a.rate", "1 to"],
    );
    check(
        &with("[rate_limits.a]\nburst = 5", &["a"]),
        &["rate_limits.a.rate", "missing"],
    );
    check(
        &with("[rate_limits.a]\nrate = 5\nburst = 0", &["a"]),
        &["rate_limits.a.burst", "1 to"],
    );
    check(
        &with("[rate_limits.a]\nrate = 5", &["b"]),
        &["routes[0].rate_limits[0]", "\"b\" is not defined", "\"a\""],
    );
    check(
        &with("[rate_limits.a]\nrate = 5\nscope = \"global\"", &["a"]),
        &["rate_limits.a.scope", "rate_limit_store"],
    );
    check(
        &with("[rate_limits.a]\nrate = 5\nscope = \"cluster\"", &["a"]),
        &["rate_limits.a.scope", "\"instance\", \"global\""],
    );
    check(
        &with(
            "[rate_limit_store]\nredis = \"http://127.0.0.1:6379\"\n[rate_limits.a]\nrate = 5",
            &["a"],
        ),
        &["rate_limit_store.redis", "not a Redis URL"],
    );
    check(
        &with(
            "[rate_limit_store]\nredis = \"redis://127.0.0.1:6379/0\"\ntimeout = \"0s\"\n[rate_limits.a]\nrate = 5",
            &["a"],
        ),
        &["rate_limit_store.timeout"],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_pacing_at_the_rate_is_never_refused_by_a_global_limit() {
    let Some(redis) = Redis::start().await else {
        return;
    };
    let b = named_backend("b", Duration::ZERO).await;
    let text = config(&format!(
        "[[routes]]\npath_prefix = \"/api\"\npool = \"p\"\nrate_limits = [\"paced\"]\n\
         [pools.p]\nbackends = [{{ address = \"{b}\" }}]\n\
         [rate_limit_store]\nredis = \"{}\"\ntimeout = \"200ms\"\n\
         [rate_limits.paced]\nkey = \"route\"\nrate = 20\nburst = 1\nscope = \"global\"\n",
        redis.url()
    ));
    let server = start_proxy(&text).await;
    let addr = server.listen_addrs[0];
    // One request every 60 ms (the rate allows one every 50): the syncs in between must not charge the
    // bucket for their own delay.
    let mut statuses = Vec::new();
    for _ in 0..20 {
        let sent = Instant::now();
        statuses.push(send_to(addr, "/api", &[]).await.status.as_u16());
        tokio::time::sleep(Duration::from_millis(60).saturating_sub(sent.elapsed())).await;
    }
    assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
    server.shutdown().await;
}
