//! Routing by host and longest path prefix, and the proxy's own answers: 404, 502, 503, 504.
#![allow(clippy::disallowed_methods)] // wall-clock time against real processes and sockets

mod common;

use std::time::{Duration, Instant};

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_and_longest_prefix_precedence() {
    let any_root = named_backend("any-root", Duration::ZERO).await;
    let any_api = named_backend("any-api", Duration::ZERO).await;
    let host_root = named_backend("host-root", Duration::ZERO).await;
    let host_api_v2 = named_backend("host-api-v2", Duration::ZERO).await;
    let server = start_proxy(&config(&format!(
        r#"
[[routes]]
pool = "any_root"
[[routes]]
path_prefix = "/api"
pool = "any_api"
[[routes]]
host = "Shop.Example.com"
pool = "host_root"
[[routes]]
host = "shop.example.com"
path_prefix = "/api/v2"
pool = "host_api_v2"

[pools.any_root]
backends = [{{ address = "{any_root}" }}]
[pools.any_api]
backends = [{{ address = "{any_api}" }}]
[pools.host_root]
backends = [{{ address = "{host_root}" }}]
[pools.host_api_v2]
backends = [{{ address = "{host_api_v2}" }}]
"#
    )))
    .await;
    let addr = server.listen_addrs[0];
    let cases = [
        (None, "/", "any-root"),
        (Some("other.example.com"), "/api/x", "any-api"),
        (Some("other.example.com"), "/apix", "any-api"),
        (Some("other.example.com"), "/ap", "any-root"),
        (Some("shop.example.com"), "/", "host-root"),
        (Some("SHOP.example.COM:8443"), "/api/v1", "host-root"),
        (Some("shop.example.com"), "/api/v2/items", "host-api-v2"),
        (Some("shop.example.com."), "/api/v2", "host-api-v2"),
    ];
    for (host, path, want) in cases {
        let (status, headers, _) = get(addr, path, host).await;
        assert_eq!(status, 200, "{host:?} {path}");
        assert_eq!(headers["x-backend"], want, "{host:?} {path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_route_falls_back_to_host_less_routes_when_no_prefix_matches() {
    let any = named_backend("any", Duration::ZERO).await;
    let host = named_backend("host", Duration::ZERO).await;
    let server = start_proxy(&config(&format!(
        r#"
[[routes]]
pool = "any"
[[routes]]
host = "a.example"
path_prefix = "/only"
pool = "host"
[pools.any]
backends = [{{ address = "{any}" }}]
[pools.host]
backends = [{{ address = "{host}" }}]
"#
    )))
    .await;
    let addr = server.listen_addrs[0];
    assert_eq!(
        get(addr, "/only/x", Some("a.example")).await.1["x-backend"],
        "host"
    );
    assert_eq!(
        get(addr, "/else", Some("a.example")).await.1["x-backend"],
        "any"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_route_is_404_with_a_reason() {
    let b = named_backend("b", Duration::ZERO).await;
    let server = start_proxy(&config(&format!(
        r#"
[[routes]]
host = "a.example"
pool = "p"
[pools.p]
backends = [{{ address = "{b}" }}]
"#
    )))
    .await;
    let (status, headers, body) = get(server.listen_addrs[0], "/", Some("b.example")).await;
    assert_eq!(status, 404);
    assert_eq!(headers["content-type"], "text/plain; charset=utf-8");
    assert!(body.contains("no route"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_failure_is_502() {
    let dead = closed_port().await;
    let server = start_proxy(&config(&format!(
        r#"
[[routes]]
pool = "p"
[pools.p]
backends = [{{ address = "{dead}" }}]
"#
    )))
    .await;
    let (status, _, body) = get(server.listen_addrs[0], "/", None).await;
    assert_eq!(status, 502);
    assert!(body.contains("could not connect"), "{body}");
    let (_, metrics) = admin_get(&server, "/metrics").await;
    let series = format!(
        "switchyard_upstream_errors_total{{backend=\"{dead}\",kind=\"connect\",pool=\"p\"}}"
    );
    assert_eq!(metric(&metrics, &series), Some(1.0), "{metrics}");
    let series = "switchyard_requests_total{backend=\"none\",code=\"502\",pool=\"p\"}";
    assert_eq!(metric(&metrics, series), Some(1.0), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_timeout_is_504_within_the_timeout() {
    let hang = hanging_backend().await;
    let server = start_proxy(&config(&format!(
        r#"
[[routes]]
pool = "p"
[pools.p]
backends = [{{ address = "{hang}" }}]
[pools.p.timeouts]
connect = "1s"
request = "300ms"
"#
    )))
    .await;
    let started = Instant::now();
    let (status, _, body) = get(server.listen_addrs[0], "/", None).await;
    let took = started.elapsed();
    assert_eq!(status, 504);
    assert!(body.contains("did not answer in time"), "{body}");
    assert!(
        took >= Duration::from_millis(300),
        "answered after {took:?}"
    );
    assert!(took < Duration::from_secs(5), "answered after {took:?}");
    let (_, metrics) = admin_get(&server, "/metrics").await;
    let series = format!(
        "switchyard_upstream_errors_total{{backend=\"{hang}\",kind=\"timeout\",pool=\"p\"}}"
    );
    assert_eq!(metric(&metrics, &series), Some(1.0), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_available_backend_is_503_at_once() {
    let b = named_backend("b", Duration::ZERO).await;
    let server = start_proxy(&config(&format!(
        r#"
[[routes]]
pool = "p"
[pools.p]
backends = [{{ address = "{b}" }}]
"#
    )))
    .await;
    // The control plane takes the only backend out (as a failing health check will).
    server.shared.snapshot.load().pools["p"].backends[0].set_healthy(false);
    let started = Instant::now();
    let (status, _, body) = get(server.listen_addrs[0], "/", None).await;
    assert_eq!(status, 503);
    assert!(body.contains("no backend available"), "{body}");
    assert!(started.elapsed() < Duration::from_secs(1));
    server.shared.snapshot.load().pools["p"].backends[0].set_healthy(true);
    assert_eq!(get(server.listen_addrs[0], "/", None).await.0, 200);
}
