//! Hot reload with the real config file on disk: rewritten in place, replaced by rename, swapped by symlink
//! (as a Kubernetes ConfigMap does), and through `POST /api/reload`. Backends keep their state across reloads;
//! an invalid file changes nothing; no request is lost; runtime drain.
#![allow(clippy::disallowed_methods)] // wall-clock time against real processes and sockets

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use switchyard::server::Server;

const DEADLINE: Duration = Duration::from_secs(10);

fn config_text(backends: &[(SocketAddr, u32)], extra: &str) -> String {
    let list: Vec<String> = backends
        .iter()
        .map(|(a, w)| format!("{{ address = \"{a}\", weight = {w} }}"))
        .collect();
    config(&format!(
        "[[routes]]\npool = \"p\"\n[pools.p]\nbackends = [{}]\n{extra}\n",
        list.join(", ")
    ))
}

async fn start_file(path: &Path) -> Server {
    let config = switchyard::config::load(path).unwrap_or_else(|e| panic!("{e}"));
    Server::start_with_file(config, path.to_path_buf())
        .await
        .unwrap()
}

/// Which backends (by name) answer a run of `n` sequential requests.
async fn answering(server: &Server, n: usize) -> std::collections::HashMap<String, usize> {
    let mut seen = std::collections::HashMap::new();
    for _ in 0..n {
        let (status, headers, _) = get(server.listen_addrs[0], "/", None).await;
        assert_eq!(status, 200);
        *seen
            .entry(headers["x-backend"].to_str().unwrap().to_owned())
            .or_insert(0) += 1;
    }
    seen
}

async fn reloads(server: &Server, result: &str) -> f64 {
    let (_, text) = admin_get(server, "/metrics").await;
    metric(
        &text,
        &format!("switchyard_config_reloads_total{{result=\"{result}\"}}"),
    )
    .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewriting_the_file_in_place_adds_removes_and_reweights() {
    let a = named_backend("a", Duration::ZERO).await;
    let b = named_backend("b", Duration::ZERO).await;
    // Removed backends' series stay 5 minutes by default; this test waits 2 s.
    switchyard::control::set_series_grace(Duration::from_secs(2));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("switchyard.toml");
    std::fs::write(&path, config_text(&[(a, 1)], "")).unwrap();
    let server = start_file(&path).await;
    assert_eq!(answering(&server, 4).await.get("a"), Some(&4));

    // Add b.
    std::fs::write(&path, config_text(&[(a, 1), (b, 1)], "")).unwrap();
    assert!(
        eventually(DEADLINE, || async {
            answering(&server, 4).await.contains_key("b")
        })
        .await
    );
    assert_eq!(reloads(&server, "success").await, 1.0);

    // Reweight: a 1, b 3 gives 1:3 exactly over a period.
    std::fs::write(&path, config_text(&[(a, 1), (b, 3)], "")).unwrap();
    assert!(
        eventually(DEADLINE, || async {
            let seen = answering(&server, 8).await;
            seen.get("a") == Some(&2) && seen.get("b") == Some(&6)
        })
        .await
    );

    // Remove a.
    std::fs::write(&path, config_text(&[(b, 1)], "")).unwrap();
    assert!(
        eventually(DEADLINE, || async {
            answering(&server, 6).await.get("b") == Some(&6)
        })
        .await
    );
    assert_eq!(reloads(&server, "success").await, 3.0);
    let (_, metrics) = admin_get(&server, "/metrics").await;
    assert_eq!(
        metric(&metrics, "switchyard_config_last_reload_successful"),
        Some(1.0)
    );
    // The removed backend's series stay for the grace after it has drained, so scrapes see its last
    // counts, then go.
    let (_, text) = admin_get(&server, "/metrics").await;
    assert!(
        text.contains(&format!("backend=\"{a}\"")),
        "series of the removed backend {a} went at once"
    );
    let gone = eventually(DEADLINE, || async {
        let (_, text) = admin_get(&server, "/metrics").await;
        !text.contains(&format!("backend=\"{a}\""))
    })
    .await;
    assert!(gone, "series of the removed backend {a} stayed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rename_replace_and_symlink_swap_are_followed() {
    let a = named_backend("a", Duration::ZERO).await;
    let b = named_backend("b", Duration::ZERO).await;
    let c = named_backend("c", Duration::ZERO).await;
    let dir = tempfile::tempdir().unwrap();

    // An editor's save: write a temp file, rename it over.
    let path = dir.path().join("switchyard.toml");
    std::fs::write(&path, config_text(&[(a, 1)], "")).unwrap();
    let server = start_file(&path).await;
    write_atomically(&path, config_text(&[(b, 1)], ""));
    assert!(
        eventually(DEADLINE, || async {
            answering(&server, 3).await.get("b") == Some(&3)
        })
        .await
    );
    server.shutdown().await;

    // A Kubernetes ConfigMap: switchyard.toml -> ..data/switchyard.toml, ..data -> ..v1; the update swaps ..data.
    let k8s = dir.path().join("configmap");
    std::fs::create_dir_all(k8s.join("..v1")).unwrap();
    std::fs::write(k8s.join("..v1/switchyard.toml"), config_text(&[(a, 1)], "")).unwrap();
    std::os::unix::fs::symlink("..v1", k8s.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/switchyard.toml", k8s.join("switchyard.toml")).unwrap();
    let server = start_file(&k8s.join("switchyard.toml")).await;
    assert_eq!(answering(&server, 2).await.get("a"), Some(&2));
    std::fs::create_dir_all(k8s.join("..v2")).unwrap();
    std::fs::write(k8s.join("..v2/switchyard.toml"), config_text(&[(c, 1)], "")).unwrap();
    std::os::unix::fs::symlink("..v2", k8s.join("..data_tmp")).unwrap();
    std::fs::rename(k8s.join("..data_tmp"), k8s.join("..data")).unwrap();
    std::fs::remove_dir_all(k8s.join("..v1")).unwrap();
    assert!(
        eventually(DEADLINE, || async {
            answering(&server, 3).await.get("c") == Some(&3)
        })
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unchanged_file_is_not_a_reload_but_the_admin_endpoint_always_is() {
    let a = named_backend("a", Duration::ZERO).await;
    let b = named_backend("b", Duration::ZERO).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("switchyard.toml");
    let text = config_text(&[(a, 1)], "");
    std::fs::write(&path, &text).unwrap();
    let server = start_file(&path).await;
    // Same content written again (and a touch): nothing happens.
    std::fs::write(&path, &text).unwrap();
    write_atomically(&path, &text);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(reloads(&server, "success").await, 0.0);

    // POST /api/reload re-reads and applies even when nothing changed.
    let resp = client()
        .request(
            http::Request::post(format!("http://{}/api/reload", server.admin_addr))
                .body(full(""))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["status"], "ok");
    assert_eq!(v["backends_added"], serde_json::json!([]));
    assert_eq!(reloads(&server, "success").await, 1.0);

    // A change made and then announced through the endpoint reports what changed.
    let watcher_or_admin = config_text(&[(a, 1), (b, 1)], "");
    std::fs::write(&path, watcher_or_admin).unwrap();
    let outcome = server
        .reload(switchyard::control::Trigger::Admin)
        .await
        .unwrap();
    // The watcher may have applied the change first; then the admin reload finds nothing new.
    let added = outcome.backends_added.clone();
    assert!(
        added == vec![format!("p/{b}")] || added.is_empty(),
        "{outcome:?}"
    );
    assert_eq!(answering(&server, 4).await.len(), 2);
    assert_eq!(admin_get(&server, "/api/reload").await.0, 405);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_file_keeps_the_old_routing() {
    let a = named_backend("a", Duration::ZERO).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("switchyard.toml");
    std::fs::write(&path, config_text(&[(a, 1)], "")).unwrap();
    let server = start_file(&path).await;
    std::fs::write(&path, config_text(&[(a, 1)], "algorithm = \"fastest\"\n")).unwrap();
    assert!(
        eventually(DEADLINE, || async {
            reloads(&server, "failure").await == 1.0
        })
        .await
    );
    let (_, text) = admin_get(&server, "/metrics").await;
    assert_eq!(
        metric(&text, "switchyard_config_last_reload_successful"),
        Some(0.0)
    );
    assert_eq!(answering(&server, 3).await.get("a"), Some(&3));

    let resp = client()
        .request(
            http::Request::post(format!("http://{}/api/reload", server.admin_addr))
                .body(full(""))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let error = v["error"].as_str().unwrap();
    assert!(
        error.contains("switchyard.toml:") && error.contains("pools.p.algorithm"),
        "{error}"
    );
    assert_eq!(answering(&server, 3).await.get("a"), Some(&3));

    // Fixing the file brings back a successful state.
    std::fs::write(&path, config_text(&[(a, 2)], "")).unwrap();
    assert!(
        eventually(DEADLINE, || async {
            reloads(&server, "success").await == 1.0
        })
        .await
    );
    let (_, text) = admin_get(&server, "/metrics").await;
    assert_eq!(
        metric(&text, "switchyard_config_last_reload_successful"),
        Some(1.0)
    );
    assert!(
        metric(
            &text,
            "switchyard_config_last_reload_success_timestamp_seconds"
        )
        .unwrap()
            > 1.7e9
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unhealthy_backend_stays_out_across_a_reload_that_keeps_it() {
    let sick = controlled("sick", 200).await;
    sick.set_health(500);
    let ok = controlled("ok", 200).await;
    let other = controlled("other", 200).await;
    let checks = "[pools.p.health_check]\ninterval = \"100ms\"\ntimeout = \"50ms\"\nunhealthy_threshold = 1\nhealthy_threshold = 2\n";
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("switchyard.toml");
    std::fs::write(&path, config_text(&[(sick.addr, 1), (ok.addr, 1)], checks)).unwrap();
    let server = start_file(&path).await;
    let out = |server: &Server| {
        let admin = server.admin_addr;
        let sick = sick.addr;
        async move {
            let (_, _, body) = get(admin, "/api/pools", None).await;
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            v["pools"]["p"]["backends"]
                .as_array()
                .unwrap()
                .iter()
                .any(|b| b["address"] == sick.to_string() && b["healthy"] == false)
        }
    };
    assert!(eventually(DEADLINE, || out(&server)).await);
    // Reload: reweight the sick one, add another backend.
    std::fs::write(
        &path,
        config_text(&[(sick.addr, 5), (ok.addr, 1), (other.addr, 1)], checks),
    )
    .unwrap();
    assert!(
        eventually(DEADLINE, || async {
            answering(&server, 4).await.contains_key("other")
        })
        .await
    );
    // Still out: no request reaches it, and the pool still shows it down.
    assert!(out(&server).await);
    let hits = sick.hits();
    answering(&server, 12).await;
    assert_eq!(sick.hits(), hits);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_backends_request_in_flight_completes() {
    let slow = named_backend("slow", Duration::from_millis(1200)).await;
    let fast = named_backend("fast", Duration::ZERO).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("switchyard.toml");
    std::fs::write(&path, config_text(&[(slow, 1)], "")).unwrap();
    let server = start_file(&path).await;
    let addr = server.listen_addrs[0];
    let in_flight = tokio::spawn(async move { get(addr, "/", None).await });
    assert!(
        eventually(DEADLINE, || async {
            admin_get(&server, "/api/pools")
                .await
                .1
                .contains("\"active_requests\": 1")
        })
        .await
    );
    let outcome_path = path.clone();
    write_atomically(&outcome_path, config_text(&[(fast, 1)], ""));
    assert!(
        eventually(DEADLINE, || async {
            answering(&server, 1).await.contains_key("fast")
        })
        .await
    );
    let (status, _, body) = in_flight.await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(body, "slow");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_is_lost_while_the_config_is_rewritten_25_times() {
    let backends: Vec<SocketAddr> = futures_backends().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("switchyard.toml");
    std::fs::write(&path, config_text(&[(backends[0], 1)], "")).unwrap();
    let server = start_file(&path).await;
    let addr = server.listen_addrs[0];
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let stop = stop.clone();
        clients.push(tokio::spawn(async move {
            let client = client();
            let (mut ok, mut bad) = (0usize, Vec::new());
            let end = std::time::Instant::now() + Duration::from_secs(30);
            while !stop.load(std::sync::atomic::Ordering::SeqCst) && std::time::Instant::now() < end
            {
                let req = http::Request::get(format!("http://{addr}/"))
                    .body(full(""))
                    .unwrap();
                match client.request(req).await {
                    Ok(r) if r.status() == 200 => ok += 1,
                    Ok(r) => bad.push(r.status().to_string()),
                    Err(e) => bad.push(e.to_string()),
                }
            }
            (ok, bad)
        }));
    }
    let lists: [&[usize]; 5] = [&[0, 1], &[1, 2], &[2, 3], &[0, 3], &[0, 1, 2, 3]];
    for round in 0..25 {
        let set: Vec<(SocketAddr, u32)> = lists[round % lists.len()]
            .iter()
            .map(|&i| (backends[i], 1 + (round % 3) as u32))
            .collect();
        let text = config_text(&set, "");
        if round % 2 == 0 {
            std::fs::write(&path, text).unwrap();
        } else {
            write_atomically(&path, &text);
        }
        let want = round as f64 + 1.0;
        assert!(
            eventually(DEADLINE, || async {
                reloads(&server, "success").await >= want
            })
            .await,
            "reload {round} not applied"
        );
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (mut ok, mut bad) = (0, Vec::new());
    for c in clients {
        let (o, b) = c.await.unwrap();
        ok += o;
        bad.extend(b);
    }
    eprintln!(
        "zero-loss reload test: {ok} requests answered 200 over 25 reloads; failures: {bad:?}"
    );
    assert!(bad.is_empty(), "{bad:?}");
    assert!(ok > 200, "{ok}");
}

async fn futures_backends() -> Vec<SocketAddr> {
    let mut v = Vec::new();
    for name in ["b0", "b1", "b2", "b3"] {
        v.push(named_backend(name, Duration::ZERO).await);
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_stops_new_requests_lets_in_flight_finish_and_survives_reload() {
    let slow = named_backend("slow", Duration::from_millis(800)).await;
    let other = named_backend("other", Duration::ZERO).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("switchyard.toml");
    std::fs::write(&path, config_text(&[(slow, 1), (other, 1)], "")).unwrap();
    let server = start_file(&path).await;
    let addr = server.listen_addrs[0];
    // Round-robin: this one goes to "slow".
    let in_flight = tokio::spawn(async move { get(addr, "/", None).await.2 });
    assert!(
        eventually(DEADLINE, || async {
            admin_get(&server, "/api/pools")
                .await
                .1
                .contains("\"active_requests\": 1")
        })
        .await
    );

    let post = |path: String| {
        let admin = server.admin_addr;
        async move {
            let resp = client()
                .request(
                    http::Request::post(format!("http://{admin}{path}"))
                        .body(full(""))
                        .unwrap(),
                )
                .await
                .unwrap();
            let status = resp.status();
            let body = http_body_util::BodyExt::collect(resp.into_body())
                .await
                .unwrap()
                .to_bytes();
            (
                status,
                serde_json::from_slice::<serde_json::Value>(&body).unwrap(),
            )
        }
    };
    let (status, v) = post(format!("/api/pools/p/backends/{slow}/drain")).await;
    assert_eq!(status, 200);
    assert_eq!(v["draining"], true);
    let p = pools(&server).await;
    assert_eq!(backend_json(&p, slow)["draining"], true);
    assert_eq!(backend_json(&p, slow)["active_requests"], 1);
    assert_eq!(answering(&server, 4).await.get("other"), Some(&4));
    assert_eq!(in_flight.await.unwrap(), "slow");
    assert!(
        eventually(DEADLINE, || async {
            backend_json(&pools(&server).await, slow)["active_requests"] == 0
        })
        .await
    );

    // A reload that keeps the backend keeps it draining.
    std::fs::write(&path, config_text(&[(slow, 2), (other, 1)], "")).unwrap();
    assert!(
        eventually(DEADLINE, || async {
            reloads(&server, "success").await == 1.0
        })
        .await
    );
    assert_eq!(backend_json(&pools(&server).await, slow)["draining"], true);
    assert_eq!(answering(&server, 4).await.get("other"), Some(&4));

    let (status, v) = post(format!("/api/pools/p/backends/{slow}/enable")).await;
    assert_eq!(status, 200);
    assert_eq!(v["draining"], false);
    assert!(answering(&server, 6).await.contains_key("slow"));

    assert_eq!(
        post("/api/pools/nope/backends/1.2.3.4:5/drain".to_owned())
            .await
            .0,
        404
    );
    assert_eq!(
        post(format!(
            "/api/pools/p/backends/{}/drain",
            closed_port().await
        ))
        .await
        .0,
        404
    );
    assert_eq!(
        admin_get(&server, &format!("/api/pools/p/backends/{slow}/drain"))
            .await
            .0,
        405
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_are_added_and_removed_on_reload() {
    let a = named_backend("a", Duration::ZERO).await;
    let dir = tempfile::tempdir().unwrap();
    let path: PathBuf = dir.path().join("switchyard.toml");
    let free = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    std::fs::write(&path, config_text(&[(a, 1)], "")).unwrap();
    let server = start_file(&path).await;
    let first = server.listen_addrs[0];
    let two = config_text(&[(a, 1)], "").replace(
        "[[listeners]]\naddress = \"127.0.0.1:0\"\n",
        &format!(
            "[[listeners]]\naddress = \"127.0.0.1:0\"\n\n[[listeners]]\naddress = \"{free}\"\n"
        ),
    );
    std::fs::write(&path, &two).unwrap();
    assert!(
        eventually(DEADLINE, || async {
            server.shared.listen_addrs.load().len() == 2
        })
        .await
    );
    assert_eq!(get(free, "/", None).await.0, 200);
    assert_eq!(get(first, "/", None).await.0, 200);

    // Remove the first (port 0) listener: it stops accepting.
    let only_second = two.replacen("[[listeners]]\naddress = \"127.0.0.1:0\"\n\n", "", 1);
    std::fs::write(&path, only_second).unwrap();
    assert!(
        eventually(DEADLINE, || async {
            server.shared.listen_addrs.load().len() == 1
        })
        .await
    );
    assert_eq!(get(free, "/", None).await.0, 200);
    let refused = eventually(DEADLINE, || async {
        tokio::net::TcpStream::connect(first).await.is_err()
    })
    .await;
    assert!(refused, "the removed listener still accepts");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_settings_apply_and_a_moved_admin_listener_is_refused() {
    let hang = hanging_backend().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("switchyard.toml");
    std::fs::write(
        &path,
        config_text(&[(hang, 1)], "[pools.p.timeouts]\nrequest = \"20s\"\n"),
    )
    .unwrap();
    let server = start_file(&path).await;
    std::fs::write(
        &path,
        config_text(&[(hang, 1)], "[pools.p.timeouts]\nrequest = \"200ms\"\n"),
    )
    .unwrap();
    assert!(
        eventually(DEADLINE, || async {
            reloads(&server, "success").await == 1.0
        })
        .await
    );
    let t = std::time::Instant::now();
    assert_eq!(get(server.listen_addrs[0], "/", None).await.0, 504);
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());

    let moved = config_text(&[(hang, 1)], "").replace(
        "[admin]\naddress = \"127.0.0.1:0\"",
        "[admin]\naddress = \"127.0.0.1:1\"",
    );
    std::fs::write(&path, moved).unwrap();
    let err = server
        .reload(switchyard::control::Trigger::Admin)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("admin.address changed") && err.contains("restart"),
        "{err}"
    );
    // Nothing changed: the 200 ms timeout still holds.
    let t = std::time::Instant::now();
    assert_eq!(get(server.listen_addrs[0], "/", None).await.0, 504);
    assert!(t.elapsed() < Duration::from_secs(3));
}

/// The operator's undo after a failed reload: the good text written back (identical to what runs) is a
/// successful reload, by rename and in place, so the reload alert stops firing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn putting_the_good_file_back_after_a_failed_reload_counts_as_a_success() {
    let a = named_backend("a", Duration::ZERO).await;
    let dir = tempfile::tempdir().unwrap();
    let (proc, port, admin) = spawn(dir.path(), |port, admin| config_for(port, admin, a)).await;
    let path = dir.path().join("switchyard.toml");
    let good = std::fs::read_to_string(&path).unwrap();
    let bad = good.replace("[pools.p]\n", "[pools.p]\nalgorithm = \"fastest\"\n");
    assert_ne!(good, bad);
    let ok = "switchyard_config_reloads_total{result=\"success\"}";
    let failed = "switchyard_config_reloads_total{result=\"failure\"}";
    let gauge = "switchyard_config_last_reload_successful";

    let mut round = 0.0;
    for write in [
        |p: &Path, t: &str| write_atomically(p, t),
        |p: &Path, t: &str| std::fs::write(p, t).unwrap(),
    ] {
        round += 1.0;
        write(&path, &bad);
        assert!(
            metric_eventually(admin, failed, round).await,
            "the bad file was not refused"
        );
        assert_eq!(metric_at(admin, gauge).await, 0.0);
        write(&path, &good);
        assert!(
            metric_eventually(admin, ok, round).await,
            "the good text back was not counted as a reload (round {round})"
        );
        assert_eq!(metric_at(admin, gauge).await, 1.0);
        assert_eq!(get(([127, 0, 0, 1], port).into(), "/", None).await.0, 200);
    }
    // With the last reload good, an unchanged file is still no reload: a SIGHUP afterwards is the next one.
    std::fs::write(&path, &good).unwrap();
    signal(&proc.0, "HUP");
    assert!(metric_eventually(admin, ok, 3.0).await);
    assert_eq!(metric_at(admin, failed).await, 2.0);
    let log = std::fs::read_to_string(dir.path().join("stderr.log")).unwrap();
    let log = strip_ansi(&log);
    assert!(
        log.contains("config reloaded") && log.contains("changed=false"),
        "{log}"
    );
}

/// The same for certificates: after a broken certificate file, the good bytes written back count as a
/// successful certificate reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn putting_a_good_certificate_back_after_a_broken_one_counts_as_a_success() {
    let a = named_backend("a", Duration::ZERO).await;
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["api.test".to_owned()]).unwrap();
    let (cert_path, key_path) = (dir.path().join("site.pem"), dir.path().join("site.key"));
    let good = cert.cert.pem();
    std::fs::write(&cert_path, &good).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let (_proc, _port, admin) = spawn(dir.path(), |port, admin| {
        format!(
            "[[listeners]]\naddress = \"127.0.0.1:{port}\"\n[listeners.tls]\n\
             certificates = [{{ cert = \"site.pem\", key = \"site.key\" }}]\n\
             [admin]\naddress = \"127.0.0.1:{admin}\"\n[[routes]]\npool = \"p\"\n[pools.p]\n\
             backends = [{{ address = \"{a}\" }}]\n"
        )
    })
    .await;
    let ok = "switchyard_tls_certificate_reloads_total{result=\"success\"}";
    let failed = "switchyard_tls_certificate_reloads_total{result=\"error\"}";
    write_atomically(
        &cert_path,
        "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n",
    );
    assert!(
        metric_eventually(admin, failed, 1.0).await,
        "the broken file was not counted"
    );
    write_atomically(&cert_path, &good);
    assert!(
        metric_eventually(admin, ok, 1.0).await,
        "the good certificate back was not counted as a reload"
    );
}
