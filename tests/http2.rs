//! HTTP/2 both ways: h2 over TLS by ALPN and h2c by prior knowledge from clients (and curl), h2c and h2
//! upstreams multiplexed and verified, gRPC-style trailers with streaming both ways, the stream limit, and a
//! clear refusal of an upgrade (WebSocket) to a pool that speaks HTTP/2.
#![allow(clippy::disallowed_methods)] // wall-clock time against real processes and sockets

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use common::*;

#[tokio::test]
async fn h2_over_tls_and_h2c_reach_an_http1_upstream() {
    let pki = Pki::new();
    let api = pki.issue("api", &["api.test"]);
    let backend = echo_backend().await;
    let server = start_proxy(&tls_config(&[&api], backend, "")).await;
    let tls_addr = server.listen_addrs[0];

    // h2 negotiated by ALPN.
    let stream = tls_connect(tls_addr, "api.test", &pki.client(&["h2", "http/1.1"])).await;
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let mut sender = h2(stream).await;
    let mut answers = Vec::new();
    for i in 0..10 {
        let req = Request::get(format!("https://api.test/h2/{i}?n={i}&q=a%20b"))
            .version(Version::HTTP_2)
            .body(full(""))
            .unwrap();
        answers.push(sender.send_request(req));
    }
    for (i, a) in answers.into_iter().enumerate() {
        let resp = a.await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.version(), Version::HTTP_2);
        let body = text(resp).await;
        let (version, host, proto) = echoed(&body);
        let target = serde_json::from_str::<serde_json::Value>(&body).unwrap()["uri"].clone();
        assert_eq!(
            target,
            format!("/h2/{i}?n={i}&q=a%20b").as_str(),
            "origin form, path and query as sent"
        );
        assert_eq!(version, "HTTP/1.1", "the upstream speaks HTTP/1.1");
        assert_eq!(host, vec!["api.test".to_owned()], "Host from :authority");
        assert_eq!(proto, vec!["https".to_owned()]);
    }
    server.shutdown().await;

    // h2c by prior knowledge on a plain listener.
    let server = start_proxy(&pool_config(&[backend], "")).await;
    let tcp = TcpStream::connect(server.listen_addrs[0]).await.unwrap();
    let mut sender = h2(tcp).await;
    let req = Request::get("http://plain.test/h2c")
        .version(Version::HTTP_2)
        .body(full(""))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.version(), Version::HTTP_2);
    let (version, host, proto) = echoed(&text(resp).await);
    assert_eq!(
        (version.as_str(), host, proto),
        (
            "HTTP/1.1",
            vec!["plain.test".to_owned()],
            vec!["http".to_owned()]
        )
    );
    server.shutdown().await;
}

fn curl_available() -> bool {
    let found = std::process::Command::new("curl")
        .arg("--version")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("HTTP2"));
    if !found && std::env::var_os("SWITCHYARD_REQUIRE_TOOLS").is_some() {
        panic!("curl with HTTP/2 is required (SWITCHYARD_REQUIRE_TOOLS is set)");
    }
    found
}

fn curl(args: &[&str]) -> (String, String) {
    let out = std::process::Command::new("curl")
        .args(["--silent", "--show-error", "--max-time", "10"])
        .args(args)
        .output()
        .unwrap();
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn curl_speaks_h2_over_tls_and_h2c_prior_knowledge() {
    if !curl_available() {
        eprintln!("skipped: no curl with HTTP/2 here");
        return;
    }
    let pki = Pki::new();
    let api = pki.issue("api", &["api.test"]);
    let backend = echo_backend().await;
    let server = start_proxy(&tls_config(&[&api], backend, "")).await;
    let plain = start_proxy(&pool_config(&[backend], "")).await;
    let (tls_addr, plain_addr) = (server.listen_addrs[0], plain.listen_addrs[0]);
    let ca = pki.ca_file();
    let resolve = format!("api.test:{}:127.0.0.1", tls_addr.port());
    let url = format!("https://api.test:{}/curl", tls_addr.port());
    let (out, err) = tokio::task::spawn_blocking(move || {
        curl(&[
            "--http2",
            "--cacert",
            ca.to_str().unwrap(),
            "--resolve",
            &resolve,
            "--write-out",
            "\n%{http_version} %{http_code}",
            &url,
        ])
    })
    .await
    .unwrap();
    assert!(out.ends_with("\n2 200"), "curl --http2: {out} {err}");
    assert!(out.contains("\"x-forwarded-proto\",\"https\""), "{out}");

    let url = format!("http://{plain_addr}/curl");
    let (out, err) = tokio::task::spawn_blocking(move || {
        curl(&[
            "--http2-prior-knowledge",
            "--write-out",
            "\n%{http_version} %{http_code}",
            &url,
        ])
    })
    .await
    .unwrap();
    assert!(
        out.ends_with("\n2 200"),
        "curl --http2-prior-knowledge: {out} {err}"
    );
    server.shutdown().await;
    plain.shutdown().await;
}

/// An HTTP/2-only backend (h2c) that reports the version it saw and counts its connections.
async fn h2c_backend() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&connections);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(serve_h2(TokioIo::new(tcp)));
        }
    });
    (addr, connections)
}

/// Serves HTTP/2 only: `/grpc` echoes the request body frame by frame and ends with gRPC trailers; anything
/// else answers with the version seen and the `:authority`.
async fn serve_h2<T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static>(io: T) {
    let service = hyper::service::service_fn(|req: Request<Incoming>| async move {
        if req.uri().path() == "/grpc" {
            let te = req.headers().get("te").cloned();
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(4);
            tokio::spawn(async move {
                let mut body = req.into_body();
                while let Some(Ok(frame)) = body.frame().await {
                    if let Ok(data) = frame.into_data() {
                        let _ = tx.send(Ok(Frame::data(data))).await;
                    }
                }
                let mut trailers = http::HeaderMap::new();
                trailers.insert("grpc-status", "0".parse().unwrap());
                trailers.insert("grpc-message", "done".parse().unwrap());
                let _ = tx.send(Ok(Frame::trailers(trailers))).await;
            });
            let stream = tokio_stream_from(rx);
            let mut resp = Response::new(BodyExt::boxed(
                StreamBody::new(stream)
                    .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>),
            ));
            resp.headers_mut()
                .insert("content-type", "application/grpc".parse().unwrap());
            if let Some(te) = te {
                resp.headers_mut().insert("x-saw-te", te);
            }
            return Ok::<_, std::convert::Infallible>(resp);
        }
        let body = format!(
            "{:?} {}",
            req.version(),
            req.uri().authority().map_or("", |a| a.as_str())
        );
        Ok(Response::new(full(body)))
    });
    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .serve_connection(io, service)
        .await;
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[tokio::test]
async fn h2c_upstream_is_multiplexed_over_few_connections() {
    let (backend, connections) = h2c_backend().await;
    let server = start_proxy(&pool_config(&[backend], "protocol = \"h2c\"")).await;
    let addr = server.listen_addrs[0];
    let mut tasks = Vec::new();
    for i in 0..40 {
        tasks.push(tokio::spawn(async move {
            get_with(addr, &format!("/many/{i}"), "svc.test").await
        }));
    }
    for t in tasks {
        let (status, body) = t.await.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            body, "HTTP/2.0 svc.test",
            "forwarded as HTTP/2 with :authority from Host"
        );
    }
    let opened = connections.load(Ordering::SeqCst);
    assert!(
        opened <= 4,
        "40 concurrent requests opened {opened} HTTP/2 connections"
    );
    server.shutdown().await;
}

async fn get_with(addr: SocketAddr, path: &str, host: &str) -> (StatusCode, String) {
    let resp = client()
        .request(
            Request::get(format!("http://{addr}{path}"))
                .header("host", host)
                .body(full(""))
                .unwrap(),
        )
        .await
        .unwrap();
    let status = resp.status();
    (status, text(resp).await)
}

#[tokio::test]
async fn grpc_trailers_and_streaming_both_ways_over_http2() {
    let (backend, _) = h2c_backend().await;
    let server = start_proxy(&pool_config(&[backend], "protocol = \"h2c\"")).await;
    let tcp = TcpStream::connect(server.listen_addrs[0]).await.unwrap();
    let mut sender = h2(tcp).await;

    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(1);
    let body = BodyExt::boxed(
        StreamBody::new(tokio_stream_from(rx))
            .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>),
    );
    let req = Request::post("http://grpc.test/grpc")
        .version(Version::HTTP_2)
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(body)
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers()["x-saw-te"],
        "trailers",
        "TE: trailers reached the backend"
    );
    let mut body = resp.into_body();
    // Each message comes back before the next is sent: the body streams both ways through the proxy.
    for i in 0..3 {
        let message = Bytes::from(format!("message {i}"));
        tx.send(Ok(Frame::data(message.clone()))).await.unwrap();
        let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
            .await
            .expect("the echo did not stream back")
            .unwrap()
            .unwrap();
        assert_eq!(frame.into_data().unwrap(), message);
    }
    drop(tx);
    let mut trailers = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.unwrap();
        if frame.is_trailers() {
            trailers = frame.into_trailers().ok();
        }
    }
    let trailers = trailers.expect("trailers arrived at the client");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["grpc-message"], "done");
    server.shutdown().await;
}

#[tokio::test]
async fn h2_and_https_upstreams_over_tls_are_verified() {
    let pki = Pki::new();
    let upstream_cert = pki.issue("upstream", &["backend.internal"]);
    let certs = vec![rustls::pki_types::CertificateDer::from(
        upstream_cert.der.clone(),
    )];
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(&upstream_cert.key).unwrap();
    let mut server_config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    server_config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(server_config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
                    serve_h2(TokioIo::new(tls)).await;
                } else {
                    let service = hyper::service::service_fn(|req: Request<Incoming>| async move {
                        Ok::<_, std::convert::Infallible>(Response::new(full(format!(
                            "{:?} {}",
                            req.version(),
                            req.headers()
                                .get("host")
                                .map_or("", |h| h.to_str().unwrap_or(""))
                        ))))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                }
            });
        }
    });

    for (protocol, expected) in [("h2", "HTTP/2.0 app.test"), ("https", "HTTP/1.1 app.test")] {
        let extra = format!(
            "protocol = \"{protocol}\"\n[pools.p.tls]\nca_file = \"{}\"\nserver_name = \"backend.internal\"\n",
            pki.ca_file().display()
        );
        let checked = format!(
            "{extra}[pools.p.health_check]\npath = \"/health\"\ninterval = \"200ms\"\ntimeout = \"150ms\"\n"
        );
        let server = start_proxy(&pool_config(&[upstream], &checked)).await;
        let (status, body) = get_with(server.listen_addrs[0], "/x", "app.test").await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::OK, expected),
            "{protocol}"
        );
        // Health checks speak the pool's protocol too.
        let series = format!(
            "switchyard_health_checks_total{{backend=\"{upstream}\",pool=\"p\",result=\"success\"}}"
        );
        assert!(
            eventually(Duration::from_secs(10), || async {
                metric(&metrics_text(&server).await, &series) >= Some(2.0)
            })
            .await,
            "{protocol}: {}",
            metrics_text(&server).await
        );
        server.shutdown().await;

        // The wrong name: the certificate does not verify, and the client gets 502.
        let extra = extra.replace("backend.internal", "other.internal");
        let server = start_proxy(&pool_config(&[upstream], &extra)).await;
        let (status, body) = get_with(server.listen_addrs[0], "/x", "app.test").await;
        assert_eq!(status, StatusCode::BAD_GATEWAY, "{protocol}: {body}");
        server.shutdown().await;
    }
}

#[tokio::test]
async fn http2_clients_get_the_configured_stream_limit() {
    let backend = named_backend("b", Duration::ZERO).await;
    let toml = pool_config(&[backend], "").replace(
        "[[routes]]",
        "[limits]\nmax_concurrent_streams = 7\n\n[[routes]]",
    );
    let server = start_proxy(&toml).await;
    let tcp = TcpStream::connect(server.listen_addrs[0]).await.unwrap();
    let (sender, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let mut sender = sender.ready().await.unwrap();
    let req = Request::get("http://s.test/").body(()).unwrap();
    let (resp, _) = sender.send_request(req, true).unwrap();
    let resp = resp.await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    // The server's SETTINGS have arrived with the first response.
    assert_eq!(sender.current_max_send_streams(), 7);
    server.shutdown().await;
}

#[tokio::test]
async fn an_upgrade_to_an_http2_pool_is_refused_clearly() {
    let (backend, _) = h2c_backend().await;
    let server = start_proxy(&pool_config(&[backend], "protocol = \"h2c\"")).await;
    let answer = raw(
        server.listen_addrs[0],
        b"GET /chat HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        Duration::from_secs(3),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 502"), "{answer}");
    assert!(answer.contains("cannot carry an upgrade"), "{answer}");
    server.shutdown().await;
}
