//! The access log: one line per request with every field, in JSON and in text, written to the configured file.
#![allow(clippy::disallowed_methods)] // wall-clock time against real processes and sockets

mod common;

use std::time::Duration;

use common::*;

async fn lines(path: &std::path::Path, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    let ok = eventually(Duration::from_secs(10), || {
        out = std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect();
        let done = out.len() >= n;
        async move { done }
    })
    .await;
    assert!(ok, "expected {n} lines, got {out:?}");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_lines_carry_every_field() {
    let b = controlled("b", 200).await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let server = start_proxy(&config(&format!(
        r#"
[access_log]
enabled = true
format = "json"
path = "{}"

[[routes]]
host = "shop.example"
pool = "p"
[pools.p]
backends = [{{ address = "{}" }}]
"#,
        log.display(),
        b.addr
    )))
    .await;
    let addr = server.listen_addrs[0];
    assert_eq!(
        get(addr, "/items?page=2", Some("shop.example")).await.0,
        200
    );
    let req = http::Request::post(format!("http://{addr}/upload"))
        .header("host", "shop.example")
        .body(full(vec![b'x'; 1000]))
        .unwrap();
    assert_eq!(client().request(req).await.unwrap().status(), 200);
    assert_eq!(get(addr, "/", Some("elsewhere.example")).await.0, 404);

    let lines = lines(&log, 3).await;
    let v: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let get = &v[0];
    assert_eq!(get["method"], "GET");
    assert_eq!(get["host"], "shop.example");
    assert_eq!(get["path"], "/items?page=2");
    assert_eq!(get["status"], 200);
    assert_eq!(get["pool"], "p");
    assert_eq!(get["backend"], b.addr.to_string());
    assert_eq!(get["attempts"], 1);
    assert_eq!(get["client"], "127.0.0.1");
    assert_eq!(get["bytes_in"], 0);
    assert_eq!(get["bytes_out"], 1);
    assert!(get["duration_ms"].as_f64().unwrap() >= 0.0);
    assert!(get["time"].as_str().unwrap().ends_with('Z'));
    let post = &v[1];
    assert_eq!(post["method"], "POST");
    assert_eq!(post["bytes_in"], 1000);
    let miss = &v[2];
    assert_eq!(
        (
            miss["status"].as_u64(),
            miss["pool"].as_str(),
            miss["backend"].as_str()
        ),
        (Some(404), Some("none"), Some("none"))
    );
    assert!(miss["bytes_out"].as_u64().unwrap() > 0);
    let (_, metrics) = admin_get(&server, "/metrics").await;
    assert_eq!(
        metric(&metrics, "switchyard_access_log_dropped_total"),
        Some(0.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_lines_and_retries_counted_as_attempts() {
    let failing = controlled("failing", 503).await;
    let ok = controlled("ok", 200).await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let server = start_proxy(&config(&format!(
        r#"
[access_log]
enabled = true
format = "text"
path = "{}"

[[routes]]
pool = "p"
[pools.p]
backends = [{{ address = "{}" }}, {{ address = "{}" }}]
[pools.p.retry]
backoff = "0ms"
"#,
        log.display(),
        failing.addr,
        ok.addr
    )))
    .await;
    // Round-robin: the first request meets the failing backend first and is retried on the other.
    assert_eq!(
        get(server.listen_addrs[0], "/a", Some("h.example")).await.0,
        200
    );
    let lines = lines(&log, 1).await;
    let line = &lines[0];
    assert!(line.contains("\"GET h.example/a\" 200 pool=p"), "{line}");
    assert!(line.contains(&format!("backend={}", ok.addr)), "{line}");
    assert!(line.contains("attempts=2"), "{line}");
    assert!(line.contains("bytes_in=0 bytes_out=2"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_by_default() {
    let b = controlled("b", 200).await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let server = start_proxy(&config(&format!(
        "[access_log]\npath = \"{}\"\n[[routes]]\npool = \"p\"\n[pools.p]\nbackends = [{{ address = \"{}\" }}]\n",
        log.display(),
        b.addr
    )))
    .await;
    assert_eq!(get(server.listen_addrs[0], "/", None).await.0, 200);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!log.exists());
}
