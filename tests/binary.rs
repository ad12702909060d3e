//! The real binary: graceful shutdown on SIGTERM, flat memory while a large body streams through, and the demo.
#![allow(clippy::disallowed_methods)] // wall-clock time against real processes and sockets

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::BodyExt;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_the_request_in_flight_finish_then_exits_zero() {
    let slow = named_backend("slow", Duration::from_millis(1500)).await;
    let dir = tempfile::tempdir().unwrap();
    let (mut proc, port, admin) =
        spawn(dir.path(), |port, admin| config_for(port, admin, slow)).await;
    let proxy: SocketAddr = ([127, 0, 0, 1], port).into();
    let in_flight = tokio::spawn(async move { get(proxy, "/", None).await });
    // Wait until the request has reached the proxy's backend, then ask it to stop.
    let reached = eventually(Duration::from_secs(5), || async move {
        let (_, _, body) = get(([127, 0, 0, 1], admin).into(), "/api/pools", None).await;
        body.contains("\"active_requests\": 1")
    })
    .await;
    assert!(reached);
    signal(&proc.0, "TERM");
    let (status, _, body) = in_flight.await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(body, "slow");
    let exited = eventually(Duration::from_secs(10), || {
        let done = matches!(proc.0.try_wait(), Ok(Some(_)));
        async move { done }
    })
    .await;
    assert!(exited, "switchyard did not exit after SIGTERM");
    assert_eq!(proc.0.try_wait().unwrap().and_then(|s| s.code()), Some(0));
}

fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_stream_with_flat_memory() {
    const SIZE: u64 = 256 * 1024 * 1024;
    let sink = backend(|req: Request<hyper::body::Incoming>| async move {
        if req.method() == http::Method::POST {
            let mut body = req.into_body();
            let mut len = 0u64;
            while let Some(Ok(frame)) = body.frame().await {
                len += frame.into_data().map_or(0, |d| d.len() as u64);
            }
            http::Response::new(full(len.to_string()))
        } else {
            http::Response::new(PatternBody::new(SIZE).boxed())
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let (proc, port, _admin) = spawn(dir.path(), |port, admin| config_for(port, admin, sink)).await;
    let before = peak_rss_kib(proc.0.id());

    let req = Request::post(format!("http://127.0.0.1:{port}/up"))
        .body(PatternBody::new(SIZE).boxed())
        .unwrap();
    let resp = client().request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let got = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(got, Bytes::from(SIZE.to_string()));

    let req = Request::get(format!("http://127.0.0.1:{port}/down"))
        .body(full(""))
        .unwrap();
    let mut body = client().request(req).await.unwrap().into_body();
    let mut len = 0u64;
    while let Some(frame) = body.frame().await {
        len += frame.unwrap().into_data().map_or(0, |d| d.len() as u64);
    }
    assert_eq!(len, SIZE);

    let after = peak_rss_kib(proc.0.id());
    eprintln!("peak RSS: {before} KiB at start, {after} KiB after 2 x 256 MiB through the proxy");
    // 512 MiB went through; buffering any real share of it would show here.
    assert!(
        after < before + 32 * 1024,
        "peak RSS grew from {before} KiB to {after} KiB"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_starts_upstreams_and_shows_balancing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("demo.toml");
    // Free ports can be taken between finding and binding them: try again with new ones if the demo cannot start.
    for _ in 0..5 {
        let (port, admin) = (free_port(), free_port());
        let ups: Vec<u16> = (0..3).map(|_| free_port()).collect();
        std::fs::write(
            &path,
            format!(
                r#"
[[listeners]]
address = "127.0.0.1:{port}"
[admin]
address = "127.0.0.1:{admin}"
[[routes]]
pool = "web"
[pools.web]
backends = [{{ address = "127.0.0.1:{}" }}, {{ address = "127.0.0.1:{}" }}, {{ address = "127.0.0.1:{}" }}]
"#,
                ups[0], ups[1], ups[2]
            ),
        )
        .unwrap();
        let mut child = Proc(
            Command::new(env!("CARGO_BIN_EXE_switchyard"))
                .args(["demo", "--config", path.to_str().unwrap()])
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
            None,
        );
        let stdout = child.0.stdout.take().unwrap();
        let lines = tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let done = line.contains("Ctrl-C");
                out.push(line);
                if done {
                    break;
                }
            }
            out
        });
        let lines = tokio::time::timeout(Duration::from_secs(30), lines)
            .await
            .unwrap()
            .unwrap();
        let text = lines.join("\n");
        if !text.contains("Ctrl-C") && matches!(child.0.try_wait(), Ok(Some(_))) {
            continue;
        }
        assert!(
            text.contains(&format!("http://127.0.0.1:{admin}/api/pools")),
            "{text}"
        );
        assert!(
            text.contains(&format!("http://127.0.0.1:{admin}/metrics")),
            "{text}"
        );
        assert!(
            text.contains(&format!("http://127.0.0.1:{port}/")),
            "{text}"
        );
        let answers: Vec<&String> = lines
            .iter()
            .filter(|l| l.contains("-> 200 OK from upstream-"))
            .collect();
        assert_eq!(answers.len(), 10, "{text}");
        for n in 1..=3 {
            assert!(
                text.contains(&format!("from upstream-{n}")),
                "upstream-{n} never answered:\n{text}"
            );
        }
        signal(&child.0, "TERM");
        let exited = eventually(Duration::from_secs(10), || {
            let done = matches!(child.0.try_wait(), Ok(Some(_)));
            async move { done }
        })
        .await;
        assert!(exited);
        return;
    }
    panic!("the demo never started");
}

/// The control plane runs on a thread of its own at a lower priority than the worker that serves requests
/// (`--workers 1` included), so a large reload on a shared CPU waits for requests rather than the other way.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_plane_yields_to_the_worker() {
    let a = named_backend("a", Duration::ZERO).await;
    let dir = tempfile::tempdir().unwrap();
    let (proc, port, _admin) = spawn(dir.path(), |port, admin| config_for(port, admin, a)).await;
    assert_eq!(get(([127, 0, 0, 1], port).into(), "/", None).await.0, 200);
    let pid = proc.0.id();
    // Field 19 of /proc/PID/task/TID/stat (after the command in parentheses) is the thread's nice value.
    let nice = |tid: &str| -> (String, i32) {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).unwrap();
        let name = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm")).unwrap();
        let after = stat.rsplit_once(')').unwrap().1;
        (
            name.trim().to_owned(),
            after.split_whitespace().nth(16).unwrap().parse().unwrap(),
        )
    };
    let threads: Vec<(String, i32)> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .map(|t| nice(t.unwrap().file_name().to_str().unwrap()))
        .collect();
    let main = threads.iter().find(|(name, _)| name == "switchyard");
    assert_eq!(main.map(|t| t.1), Some(10), "{threads:?}");
    assert!(
        threads
            .iter()
            .any(|(name, nice)| name.starts_with("switchyard-w") && *nice == 0),
        "{threads:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_always_reloads() {
    let a = named_backend("a", Duration::ZERO).await;
    let dir = tempfile::tempdir().unwrap();
    let (proc, port, admin) = spawn(dir.path(), |port, admin| config_for(port, admin, a)).await;
    assert_eq!(reload_count(admin, "success").await, 0.0);
    // Nothing changed, yet SIGHUP re-reads and applies the file, and counts it.
    signal(&proc.0, "HUP");
    let reloaded = "switchyard_config_reloads_total{result=\"success\"}";
    assert!(metric_eventually(admin, reloaded, 1.0).await);
    signal(&proc.0, "HUP");
    assert!(metric_eventually(admin, reloaded, 2.0).await);
    // A broken file: SIGHUP counts a failure and the proxy keeps serving.
    std::fs::write(dir.path().join("switchyard.toml"), "[[listeners]\n").unwrap();
    signal(&proc.0, "HUP");
    assert!(
        eventually(Duration::from_secs(10), || async {
            reload_count(admin, "failure").await >= 1.0
        })
        .await
    );
    assert_eq!(get(([127, 0, 0, 1], port).into(), "/", None).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_gives_up_on_requests_after_the_drain_timeout() {
    let stuck = named_backend("stuck", Duration::from_secs(30)).await;
    let dir = tempfile::tempdir().unwrap();
    let (mut proc, port, admin) = spawn(dir.path(), |port, admin| {
        format!("drain_timeout = \"1s\"\n{}", config_for(port, admin, stuck))
    })
    .await;
    let proxy: SocketAddr = ([127, 0, 0, 1], port).into();
    let _in_flight = tokio::spawn(async move {
        raw(
            proxy,
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            Duration::from_secs(40),
        )
        .await
    });
    assert!(
        eventually(Duration::from_secs(5), || async move {
            get(([127, 0, 0, 1], admin).into(), "/api/pools", None)
                .await
                .2
                .contains("\"active_requests\": 1")
        })
        .await
    );
    let t = std::time::Instant::now();
    signal(&proc.0, "TERM");
    let exited = eventually(Duration::from_secs(10), || {
        let done = matches!(proc.0.try_wait(), Ok(Some(_)));
        async move { done }
    })
    .await;
    assert!(exited);
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "exited after {took:?}"
    );
    assert_eq!(proc.0.try_wait().unwrap().and_then(|s| s.code()), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_log_line_per_health_transition_none_per_check() {
    let b = controlled("b", 200).await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("stderr.log");
    let (_proc, _port, admin) = spawn_with(
        dir.path(),
        |port, admin| {
            format!(
                "{}\n[pools.p.health_check]\ninterval = \"50ms\"\ntimeout = \"40ms\"\nunhealthy_threshold = 2\nhealthy_threshold = 2\n",
                config_for(port, admin, b.addr)
            )
        },
        || Stdio::from(std::fs::File::create(&log).unwrap()),
    )
    .await;
    let admin_addr: SocketAddr = ([127, 0, 0, 1], admin).into();
    let healthy = |want: bool| async move {
        try_get(admin_addr, "/api/pools")
            .await
            .is_some_and(|(status, body)| {
                status == 200 && body.contains(&format!("\"healthy\": {want}"))
            })
    };
    assert!(eventually(Duration::from_secs(20), || healthy(true)).await);
    // Many successful checks: no log line for them.
    let checks = b.health_hits();
    assert!(
        eventually(Duration::from_secs(10), || async {
            b.health_hits() >= checks + 10
        })
        .await
    );
    b.set_health(500);
    assert!(eventually(Duration::from_secs(10), || healthy(false)).await);
    let failing = b.health_hits();
    assert!(
        eventually(Duration::from_secs(10), || async {
            b.health_hits() >= failing + 10
        })
        .await
    );
    b.set_health(200);
    assert!(eventually(Duration::from_secs(10), || healthy(true)).await);
    let text = std::fs::read_to_string(&log).unwrap();
    let about: Vec<&str> = text
        .lines()
        .filter(|l| l.contains(&b.addr.to_string()))
        .collect();
    assert_eq!(
        about.iter().filter(|l| l.contains("backend down")).count(),
        1,
        "{text}"
    );
    assert_eq!(
        about.iter().filter(|l| l.contains("backend up")).count(),
        1,
        "{text}"
    );
    assert!(
        about
            .iter()
            .any(|l| l.contains("backend down") && l.contains("status 500")),
        "{text}"
    );
    assert_eq!(about.len(), 2, "one line per transition only:\n{text}");
    assert!(!text.contains("panicked"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_idle_connections_at_once_and_a_second_signal_exits_now() {
    let slow = named_backend("slow", Duration::from_secs(20)).await;
    let dir = tempfile::tempdir().unwrap();
    let (mut proc, port, admin) =
        spawn(dir.path(), |port, admin| config_for(port, admin, slow)).await;
    let proxy: SocketAddr = ([127, 0, 0, 1], port).into();
    // An idle keep-alive connection: one request answered (a 404-free path is not needed; any answer will do).
    let mut idle = tokio::net::TcpStream::connect(proxy).await.unwrap();
    let _busy = tokio::spawn(async move {
        raw(
            proxy,
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            Duration::from_secs(30),
        )
        .await
    });
    assert!(
        eventually(Duration::from_secs(5), || async move {
            get(([127, 0, 0, 1], admin).into(), "/api/pools", None)
                .await
                .2
                .contains("\"active_requests\": 1")
        })
        .await
    );
    signal(&proc.0, "TERM");
    // The idle connection is closed by the server while the busy one is still draining.
    let mut buf = [0u8; 64];
    let closed = tokio::time::timeout(
        Duration::from_secs(3),
        tokio::io::AsyncReadExt::read(&mut idle, &mut buf),
    )
    .await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "idle connection not closed: {closed:?}"
    );
    assert!(
        proc.0.try_wait().unwrap().is_none(),
        "exited before the request in flight finished"
    );
    // Admin /healthz says so while draining.
    let (status, body) = try_get(([127, 0, 0, 1], admin).into(), "/healthz")
        .await
        .expect("admin stays up while draining");
    assert_eq!((status.as_u16(), body.as_str()), (503, "draining\n"));
    signal(&proc.0, "TERM");
    let exited = eventually(Duration::from_secs(5), || {
        let done = matches!(proc.0.try_wait(), Ok(Some(_)));
        async move { done }
    })
    .await;
    assert!(exited, "a second signal did not end it");
    assert_eq!(proc.0.try_wait().unwrap().and_then(|s| s.code()), Some(1));
}

/// The zero-downtime upgrade: a second switchyard starts on the same addresses (`reuse_port`) while the first
/// serves, the first gets SIGTERM and drains; a client sending requests all along sees only 200s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_with_reuse_port_loses_no_request() {
    let backend = named_backend("b", Duration::ZERO).await;
    let dir = tempfile::tempdir().unwrap();
    let make = move |port: u16, admin: u16| {
        format!(
            "drain_timeout = \"5s\"\n[[listeners]]\naddress = \"127.0.0.1:{port}\"\nreuse_port = true\n\
             [admin]\naddress = \"127.0.0.1:{admin}\"\n[[routes]]\npool = \"p\"\n[pools.p]\n\
             backends = [{{ address = \"{backend}\" }}]\n"
        )
    };
    let (mut old, port, _admin) = spawn(dir.path(), make).await;
    let proxy: SocketAddr = ([127, 0, 0, 1], port).into();

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopping = std::sync::Arc::clone(&stop);
    let traffic = tokio::spawn(async move {
        let client = client();
        let (mut ok, mut failed) = (0u32, Vec::new());
        let end = std::time::Instant::now() + Duration::from_secs(20);
        let mut n = 0u32;
        while !stopping.load(std::sync::atomic::Ordering::Relaxed)
            && std::time::Instant::now() < end
        {
            n += 1;
            // Every other request on a new connection, so both processes' accept queues are in play.
            let mut req = Request::get(format!("http://{proxy}/"));
            if n % 2 == 0 {
                req = req.header("connection", "close");
            }
            let req = req.body(full("")).unwrap();
            match client.request(req).await {
                Ok(resp) if resp.status() == 200 => {
                    let _ = resp.into_body().collect().await;
                    ok += 1;
                }
                Ok(resp) => failed.push(format!("status {}", resp.status())),
                Err(e) => failed.push(format!("{e:?}")),
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        (ok, failed)
    });
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The new process: same config file, same addresses.
    let log = dir.path().join("new.log");
    let new = Proc(
        Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .args([
                "run",
                "--config",
                dir.path().join("switchyard.toml").to_str().unwrap(),
                "--workers",
                "2",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
            .spawn()
            .unwrap(),
        Some(log.clone()),
    );
    let up = eventually(Duration::from_secs(20), || async {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("switchyard running")
    })
    .await;
    assert!(
        up,
        "the new process did not start: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The old one drains and exits.
    signal(&old.0, "TERM");
    let exited = eventually(Duration::from_secs(15), || {
        let done = matches!(old.0.try_wait(), Ok(Some(_)));
        async move { done }
    })
    .await;
    assert!(exited, "the old process did not exit");
    tokio::time::sleep(Duration::from_millis(700)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = traffic.await.unwrap();
    eprintln!(
        "upgrade: {ok} requests answered 200, {} failed",
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {:?}",
        failed.len(),
        ok as usize + failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(ok > 200, "only {ok} requests");
    drop(new);
}
