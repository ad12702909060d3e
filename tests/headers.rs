//! Header handling through the proxy, seen by an echoing backend and by a raw client.
#![allow(clippy::disallowed_methods)] // wall-clock time against real processes and sockets

mod common;

use std::time::Duration;

use common::*;

fn echo_config(echo: std::net::SocketAddr) -> String {
    echo_config_with(echo, "")
}

fn echo_config_with(echo: std::net::SocketAddr, top: &str) -> String {
    config_top(
        top,
        &format!(
            r#"
[[routes]]
pool = "p"
[pools.p]
backends = [{{ address = "{echo}" }}]
"#
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_removed_and_forwarding_headers_set() {
    let echo = echo_backend().await;
    // The test client is a trusted proxy here, so X-Forwarded-For is appended to.
    let server = start_proxy(&echo_config_with(
        echo,
        "trusted_proxies = [\"127.0.0.0/8\"]",
    ))
    .await;
    let request = b"GET /path?q=1 HTTP/1.1\r\n\
Host: Www.Example.com:8080\r\n\
Connection: close, X-Drop-Me\r\n\
X-Drop-Me: secret\r\n\
Keep-Alive: timeout=5\r\n\
Proxy-Connection: keep-alive\r\n\
TE: trailers, deflate\r\n\
Trailer: X-T\r\n\
Upgrade: something\r\n\
X-Forwarded-For: 203.0.113.7\r\n\
X-Custom: kept\r\n\
\r\n";
    let response = raw(server.listen_addrs[0], request, Duration::from_secs(5)).await;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .expect("a complete response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");

    // What the backend saw.
    let seen: serde_json::Value = serde_json::from_str(body).expect("echo JSON");
    let headers: Vec<(String, String)> = serde_json::from_value(seen["headers"].clone()).unwrap();
    let get = |name: &str| -> Vec<&str> {
        headers
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    for gone in [
        "x-drop-me",
        "keep-alive",
        "proxy-connection",
        "trailer",
        "upgrade",
        "transfer-encoding",
    ] {
        assert!(
            get(gone).is_empty(),
            "{gone} reached the backend: {headers:?}"
        );
    }
    // TE is hop-by-hop, but `trailers` stays (gRPC needs it end to end).
    assert_eq!(get("te"), vec!["trailers"], "{headers:?}");
    // Connection may be re-added by the upstream client for its own keep-alive, never the client's tokens.
    assert!(
        get("connection")
            .iter()
            .all(|v| !v.to_ascii_lowercase().contains("x-drop-me"))
    );
    assert_eq!(get("host"), ["Www.Example.com:8080"]);
    assert_eq!(get("x-forwarded-for"), ["203.0.113.7, 127.0.0.1"]);
    assert_eq!(get("x-forwarded-proto"), ["http"]);
    assert_eq!(get("x-forwarded-host"), ["Www.Example.com:8080"]);
    assert_eq!(get("x-custom"), ["kept"]);
    assert_eq!(seen["uri"], "/path?q=1");
    assert_eq!(seen["method"], "GET");

    // What the client got back: the upstream's hop-by-hop headers are gone, the rest kept.
    let head = head.to_ascii_lowercase();
    assert!(!head.contains("x-upstream-hop"), "{head}");
    assert!(!head.contains("keep-alive: timeout"), "{head}");
    assert!(head.contains("x-upstream-kept: yes"), "{head}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_clients_cannot_spoof_forwarding_headers() {
    let echo = echo_backend().await;
    let server = start_proxy(&echo_config(echo)).await;
    let request = b"GET / HTTP/1.1\r\nHost: real.example\r\nX-Forwarded-For: 203.0.113.7\r\n\
X-Forwarded-Proto: https\r\nX-Forwarded-Host: evil.example\r\nForwarded: for=203.0.113.7\r\nConnection: close\r\n\r\n";
    let response = raw(server.listen_addrs[0], request, Duration::from_secs(5)).await;
    let (_, body) = response
        .split_once("\r\n\r\n")
        .expect("a complete response");
    let seen: serde_json::Value = serde_json::from_str(body).expect("echo JSON");
    let headers: Vec<(String, String)> = serde_json::from_value(seen["headers"].clone()).unwrap();
    let get = |name: &str| -> Vec<&str> {
        headers
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    assert_eq!(get("x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(get("x-forwarded-proto"), ["http"]);
    assert_eq!(get("x-forwarded-host"), ["real.example"]);
    assert!(get("forwarded").is_empty(), "{headers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_for_starts_when_absent() {
    let echo = echo_backend().await;
    let server = start_proxy(&echo_config(echo)).await;
    let (status, _, body) = get(server.listen_addrs[0], "/", Some("h.example")).await;
    assert_eq!(status, 200);
    let seen: serde_json::Value = serde_json::from_str(&body).unwrap();
    let headers: Vec<(String, String)> = serde_json::from_value(seen["headers"].clone()).unwrap();
    assert!(
        headers.contains(&("x-forwarded-for".into(), "127.0.0.1".into())),
        "{headers:?}"
    );
    assert!(
        headers.contains(&("host".into(), "h.example".into())),
        "{headers:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_prior_knowledge_reaches_an_http1_backend() {
    let echo = echo_backend().await;
    let server = start_proxy(&echo_config(echo)).await;
    let client: hyper_util::client::legacy::Client<_, BoxBody> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .http2_only(true)
            .build_http();
    let uri = format!("http://{}/h2?x=1", server.listen_addrs[0]);
    let resp = client
        .request(http::Request::get(uri).body(full("")).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), http::Version::HTTP_2);
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    let seen: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(seen["version"], "HTTP/1.1");
    assert_eq!(seen["uri"], "/h2?x=1");
    let headers: Vec<(String, String)> = serde_json::from_value(seen["headers"].clone()).unwrap();
    let host = format!("{}", server.listen_addrs[0]);
    assert!(headers.contains(&("host".into(), host)), "{headers:?}");
}
