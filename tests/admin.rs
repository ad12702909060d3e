//! The admin listener: `/healthz`, Prometheus `/metrics` with the core families, and `/api/pools`.
#![allow(clippy::disallowed_methods)] // wall-clock time against real processes and sockets

mod common;

use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_and_unknown_paths() {
    let b = named_backend("b", Duration::ZERO).await;
    let server = start_proxy(&config(&format!(
        "[[routes]]\npool = \"p\"\n[pools.p]\nbackends = [{{ address = \"{b}\" }}]\n"
    )))
    .await;
    assert_eq!(
        admin_get(&server, "/healthz").await,
        (http::StatusCode::OK, "ok\n".to_owned())
    );
    assert_eq!(admin_get(&server, "/nope").await.0, 404);
    let resp = client()
        .request(
            http::Request::post(format!("http://{}/healthz", server.admin_addr))
                .body(full(""))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 405);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_by_pool_backend_and_code() {
    let b = named_backend("b", Duration::ZERO).await;
    let server = start_proxy(&config(&format!(
        r#"
[[routes]]
host = "known.example"
pool = "p"
[pools.p]
backends = [{{ address = "{b}" }}]
"#
    )))
    .await;
    for _ in 0..3 {
        assert_eq!(
            get(server.listen_addrs[0], "/", Some("known.example"))
                .await
                .0,
            200
        );
    }
    assert_eq!(
        get(server.listen_addrs[0], "/", Some("unknown.example"))
            .await
            .0,
        404
    );

    let (status, text) = admin_get(&server, "/metrics").await;
    assert_eq!(status, 200);
    let ok = format!("switchyard_requests_total{{backend=\"{b}\",code=\"200\",pool=\"p\"}}");
    assert_eq!(metric(&text, &ok), Some(3.0), "{text}");
    let none = "switchyard_requests_total{backend=\"none\",code=\"404\",pool=\"none\"}";
    assert_eq!(metric(&text, none), Some(1.0), "{text}");
    let count = format!("switchyard_request_duration_seconds_count{{backend=\"{b}\",pool=\"p\"}}");
    assert_eq!(metric(&text, &count), Some(3.0), "{text}");
    let bucket = format!(
        "switchyard_request_duration_seconds_bucket{{backend=\"{b}\",pool=\"p\",le=\"0.0005\"}}"
    );
    assert!(
        metric(&text, &bucket).is_some(),
        "0.5 ms bucket missing:\n{text}"
    );
    let bucket = format!(
        "switchyard_request_duration_seconds_bucket{{backend=\"{b}\",pool=\"p\",le=\"10\"}}"
    );
    assert_eq!(metric(&text, &bucket), Some(3.0), "{text}");
    let active = format!("switchyard_backend_active_requests{{backend=\"{b}\",pool=\"p\"}}");
    assert_eq!(metric(&text, &active), Some(0.0), "{text}");
    assert!(
        metric(&text, "switchyard_open_connections").is_some(),
        "{text}"
    );
    for family in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
    ] {
        assert!(
            text.contains(&format!("# TYPE {family}")),
            "{family} missing:\n{text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_requests_and_open_connections_follow_traffic() {
    let slow = named_backend("slow", Duration::from_millis(800)).await;
    let server = start_proxy(&config(&format!(
        "[[routes]]\npool = \"p\"\n[pools.p]\nalgorithm = \"least_connections\"\nbackends = [{{ address = \"{slow}\" }}]\n"
    )))
    .await;
    let addr = server.listen_addrs[0];
    let in_flight = tokio::spawn(async move { get(addr, "/", None).await.0 });

    let admin = server.admin_addr;
    let busy = eventually(Duration::from_secs(5), || async move {
        let (_, _, body) = get(admin, "/api/pools", None).await;
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        v["pools"]["p"]["backends"][0]["active_requests"] == 1
    })
    .await;
    assert!(busy, "active_requests never reached 1");
    let (_, text) = admin_get(&server, "/metrics").await;
    let active = format!("switchyard_backend_active_requests{{backend=\"{slow}\",pool=\"p\"}}");
    assert_eq!(metric(&text, &active), Some(1.0), "{text}");
    assert!(
        metric(&text, "switchyard_open_connections").unwrap_or(0.0) >= 1.0,
        "{text}"
    );

    assert_eq!(in_flight.await.unwrap(), 200);
    let idle = eventually(Duration::from_secs(5), || async move {
        let (_, _, body) = get(admin, "/api/pools", None).await;
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        v["pools"]["p"]["backends"][0]["active_requests"] == 0
    })
    .await;
    assert!(idle, "active_requests never fell back to 0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_pools_shape() {
    let a = named_backend("a", Duration::ZERO).await;
    let b = named_backend("b", Duration::ZERO).await;
    let server = start_proxy(&config(&format!(
        r#"
[[routes]]
pool = "api"
[pools.api]
algorithm = "least_connections"
backends = [{{ address = "{a}" }}, {{ address = "{b}", weight = 3 }}]
"#
    )))
    .await;
    let (status, headers, body) = get(server.admin_addr, "/api/pools", None).await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "application/json");
    let mut v: serde_json::Value = serde_json::from_str(&body).unwrap();
    // The latency estimate starts at default_rtt (30 ms) and decays while no samples come.
    for b in v["pools"]["api"]["backends"].as_array_mut().unwrap() {
        let ms = b
            .as_object_mut()
            .unwrap()
            .remove("latency_ewma_ms")
            .unwrap();
        assert!(ms.as_f64().is_some_and(|ms| ms > 0.0 && ms <= 30.0), "{ms}");
    }
    let backend = |addr: std::net::SocketAddr, weight: u32| {
        serde_json::json!({"address": addr.to_string(), "source": "static", "weight": weight, "weight_override": null, "healthy": true, "circuit": "closed",
            "circuit_held_closed": false, "active_requests": 0, "draining": false, "disabled": false, "consecutive_failures": 0, "half_open_at": null, "last_check_error": null,
            "last_check_error_at": null, "effective_weight": f64::from(weight),
            "slow_start_ends_at": null, "ejected_until": null})
    };
    let want = serde_json::json!({"pools": {"api": {"algorithm": "least_connections", "health_checks": false,
        "panic": false, "circuit_breaker_capped": 0, "queue_waiting": 0, "hash": null, "sticky_cookie": null,
        "backends": [backend(a, 1), backend(b, 3)]}}});
    assert_eq!(v, want);
}
