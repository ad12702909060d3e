//! Upstream connections against scripted backends on 127.0.0.1, through the real binary: a backend closing a
//! kept-alive connection right after answering never costs the client a 502 (the request goes again on a new
//! connection), `Keep-Alive: timeout=N` and `timeouts.idle` bound how long a connection is reused, and a
//! response head over `max_response_header_bytes` is refused however its bytes arrive.
#![allow(clippy::disallowed_methods)] // wall-clock time against real processes and sockets

mod common;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;

fn ok_response(extra: &str) -> Vec<u8> {
    format!("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n{extra}\r\nok").into_bytes()
}

/// The binary with one pool per (name, backend), each routed by `Host: <name>`.
async fn proxy_for(
    dir: &std::path::Path,
    pools: &[(&str, SocketAddr, &str)],
) -> (Proc, SocketAddr, u16) {
    let pools = pools.to_vec();
    let pools: Vec<(String, SocketAddr, String)> = pools
        .iter()
        .map(|(n, a, e)| ((*n).to_owned(), *a, (*e).to_owned()))
        .collect();
    let (proc, port, admin) = spawn(dir, move |port, admin| {
        let mut text = format!(
            "[[listeners]]\naddress = \"127.0.0.1:{port}\"\n[admin]\naddress = \"127.0.0.1:{admin}\"\n"
        );
        for (name, addr, extra) in &pools {
            text.push_str(&format!(
                "[[routes]]\nhost = \"{name}\"\npool = \"{name}\"\n[pools.{name}]\nbackends = [{{ address = \"{addr}\" }}]\n{extra}\n"
            ));
        }
        text
    })
    .await;
    (proc, ([127, 0, 0, 1], port).into(), admin)
}

/// Sends `n` GETs for `host` one after the other; returns the statuses that were not 200.
async fn sequential(proxy: SocketAddr, host: &str, n: usize) -> Vec<u16> {
    let mut bad = Vec::new();
    for _ in 0..n {
        match try_get_host(proxy, host).await {
            Some(200) => {}
            Some(s) => bad.push(s),
            None => bad.push(0),
        }
    }
    bad
}

async fn try_get_host(proxy: SocketAddr, host: &str) -> Option<u16> {
    // One kept-alive client connection per test thread: the proxy's worker threads keep idle upstream
    // connections apart, so counting them needs the client to stay on one worker.
    thread_local! {
        static CLIENT: hyper_util::client::legacy::Client<
            hyper_util::client::legacy::connect::HttpConnector,
            BoxBody,
        > = client();
    }
    let req = http::Request::get(format!("http://{proxy}/"))
        .header("host", host)
        .body(full(""))
        .ok()?;
    let resp = CLIENT.with(|c| c.request(req)).await.ok()?;
    let status = resp.status().as_u16();
    http_body_util::BodyExt::collect(resp.into_body())
        .await
        .ok()?;
    Some(status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_closing_right_after_answering_never_gives_a_502() {
    let delays = [
        ("d0", Duration::ZERO),
        ("d05", Duration::from_micros(500)),
        ("d1", Duration::from_millis(1)),
        ("d2", Duration::from_millis(2)),
    ];
    let mut pools = Vec::new();
    for (name, delay) in delays {
        let (addr, _) = scripted_backend(Script {
            close_after: Some(delay),
            ..Script::answering(ok_response(""))
        })
        .await;
        pools.push((name, addr, ""));
    }
    let dir = tempfile::tempdir().unwrap();
    let (_proc, proxy, admin) = proxy_for(dir.path(), &pools).await;
    let mut failed = Vec::new();
    for (name, _) in delays {
        for _ in 0..8 {
            failed.extend(sequential(proxy, name, 20).await);
        }
        let tasks: Vec<_> = (0..4)
            .map(|_| tokio::spawn(async move { sequential(proxy, name, 25).await }))
            .collect();
        for t in tasks {
            failed.extend(t.await.unwrap());
        }
    }
    assert!(
        failed.is_empty(),
        "{} of 1040 requests failed: {failed:?}",
        failed.len()
    );
    let text = get(([127, 0, 0, 1], admin).into(), "/metrics", None)
        .await
        .2;
    for (name, _) in delays {
        for kind in ["connect", "timeout", "protocol"] {
            let errors = text
                .lines()
                .filter(|l| {
                    l.starts_with("switchyard_upstream_errors_total")
                        && l.contains(&format!("pool=\"{name}\""))
                        && l.contains(&format!("kind=\"{kind}\""))
                })
                .count();
            assert_eq!(errors, 0, "{name}: an upstream error was counted:\n{text}");
        }
        assert!(text.contains(&format!(
            "switchyard_circuit_breaker_state{{backend=\"{}\",pool=\"{name}\",state=\"closed\"}} 1",
            pools.iter().find(|p| p.0 == name).unwrap().1
        )));
    }
    let resent: f64 = text
        .lines()
        .filter(|l| l.starts_with("switchyard_upstream_reused_connection_retries_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    println!("requests sent again on a new connection: {resent}");
    assert_eq!(
        metric(&text, "switchyard_retries_total{pool=\"d0\"}").unwrap_or(0.0),
        0.0,
        "a resend is not a retry"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_timeouts_and_the_idle_cap_bound_reuse() {
    // A backend that keeps connections 1 s and says so, and one that keeps them forever (the pool caps it).
    let (short, short_conns) = scripted_backend(Script {
        idle: Some(Duration::from_secs(1)),
        ..Script::answering(ok_response("Keep-Alive: timeout=1\r\n"))
    })
    .await;
    let (long, long_conns) = scripted_backend(Script::answering(ok_response(""))).await;
    let dir = tempfile::tempdir().unwrap();
    let (_proc, proxy, admin) = proxy_for(
        dir.path(),
        &[
            ("short", short, ""),
            ("long", long, "[pools.long.timeouts]\nidle = \"300ms\"\n"),
        ],
    )
    .await;

    // Quick succession: reused (a response's connection goes back to the pool as its body ends, so a client
    // that is quicker than that may see a second one opened).
    assert!(sequential(proxy, "short", 5).await.is_empty());
    assert!(short_conns.load(Ordering::SeqCst) <= 2);
    // Past half the backend's timeout (the cap is 1 s less 0.5 s): a new connection, never one the backend is
    // about to close. Around the backend's own 1 s nothing fails.
    let mut failed = Vec::new();
    for gap_ms in [600u64, 900, 950, 1000, 1050, 1100, 700, 980] {
        tokio::time::sleep(Duration::from_millis(gap_ms)).await;
        let before = short_conns.load(Ordering::SeqCst);
        failed.extend(sequential(proxy, "short", 1).await);
        assert_eq!(
            short_conns.load(Ordering::SeqCst),
            before + 1,
            "after {gap_ms} ms idle the connection must not be reused"
        );
    }
    // Concurrent requests with idle gaps around the timeout.
    let tasks: Vec<_> = (0..4u64)
        .map(|i| {
            tokio::spawn(async move {
                let mut bad = Vec::new();
                for round in 0..5u64 {
                    tokio::time::sleep(Duration::from_millis(400 + (i * 137 + round * 211) % 700))
                        .await;
                    bad.extend(sequential(proxy, "short", 3).await);
                }
                bad
            })
        })
        .collect();
    for t in tasks {
        failed.extend(t.await.unwrap());
    }
    assert!(failed.is_empty(), "{failed:?}");

    // The pool's own cap: reused within 300 ms, not after.
    assert!(sequential(proxy, "long", 1).await.is_empty());
    let opened = long_conns.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(sequential(proxy, "long", 1).await.is_empty());
    assert_eq!(
        long_conns.load(Ordering::SeqCst),
        opened,
        "reused within timeouts.idle"
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(sequential(proxy, "long", 1).await.is_empty());
    assert_eq!(
        long_conns.load(Ordering::SeqCst),
        opened + 1,
        "a new connection past timeouts.idle"
    );

    let resent = metric_at(
        admin,
        &format!("switchyard_upstream_reused_connection_retries_total{{backend=\"{short}\",pool=\"short\"}}"),
    )
    .await;
    assert_eq!(
        resent, 0.0,
        "the cap kept every reuse inside the backend's timeout"
    );
}

/// A response head of `size` bytes (as the proxy measures it: status line, header lines, blank line).
fn head_of(size: usize) -> Vec<u8> {
    let fixed = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Big: \r\n\r\n".len();
    let value = "a".repeat(size - fixed);
    format!("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Big: {value}\r\n\r\nok").into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_head_over_the_limit_is_refused_however_it_arrives() {
    const LIMIT: usize = 256 * 1024;
    let cases = [
        ("huge", 320 * 1024, 502),
        ("over", LIMIT + 1024, 502),
        ("just-over", LIMIT + 1, 502),
        ("at", LIMIT, 200),
        ("under", LIMIT - 1024, 200),
    ];
    let mut pools = Vec::new();
    for (name, size, _) in cases {
        for (suffix, piece) in [("whole", 0), ("pieces", 16 * 1024)] {
            let (addr, _) = scripted_backend(Script {
                piece,
                ..Script::answering(head_of(size))
            })
            .await;
            pools.push((format!("{name}-{suffix}"), addr));
        }
    }
    let named: Vec<(&str, SocketAddr, &str)> =
        pools.iter().map(|(n, a)| (n.as_str(), *a, "")).collect();
    let dir = tempfile::tempdir().unwrap();
    let (_proc, proxy, admin) = proxy_for(dir.path(), &named).await;
    for (name, _, want) in cases {
        for suffix in ["whole", "pieces"] {
            let host = format!("{name}-{suffix}");
            assert_eq!(try_get_host(proxy, &host).await, Some(want), "{host}");
        }
    }
    let (_, addr) = &pools[0];
    let protocol_errors = metric_at(
        admin,
        &format!("switchyard_upstream_errors_total{{backend=\"{addr}\",kind=\"protocol\",pool=\"huge-whole\"}}"),
    )
    .await;
    assert_eq!(protocol_errors, 1.0);
}

/// Each pool's upstream read buffer follows its own `max_response_header_bytes` (it bounds what a slow client
/// holds up): a pool at 16 KiB takes a 12 KiB head and refuses a 20 KiB one, while a pool at the default takes
/// 200 KiB, in one write or in pieces.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_pool_reads_heads_up_to_its_own_limit() {
    let small = "max_response_header_bytes = 16384";
    let cases = [
        ("small-under", 12 * 1024, small, 200),
        ("small-over", 20 * 1024, small, 502),
        ("default-large", 200 * 1024, "", 200),
    ];
    let mut pools = Vec::new();
    for (name, size, extra, _) in cases {
        for (suffix, piece) in [("whole", 0), ("pieces", 4096)] {
            let (addr, _) = scripted_backend(Script {
                piece,
                ..Script::answering(head_of(size))
            })
            .await;
            pools.push((format!("{name}-{suffix}"), addr, extra));
        }
    }
    let named: Vec<(&str, SocketAddr, &str)> =
        pools.iter().map(|(n, a, e)| (n.as_str(), *a, *e)).collect();
    let dir = tempfile::tempdir().unwrap();
    let (_proc, proxy, _admin) = proxy_for(dir.path(), &named).await;
    for (name, _, _, want) in cases {
        for suffix in ["whole", "pieces"] {
            let host = format!("{name}-{suffix}");
            assert_eq!(try_get_host(proxy, &host).await, Some(want), "{host}");
        }
    }
}
