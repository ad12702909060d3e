//! Hostile clients and upstreams over raw TCP: malformed and smuggling requests, oversized headers, slowloris,
//! absolute-form targets and CONNECT, connection and body limits, an upstream with endless headers, the admin
//! token. After each hostile case a normal request still succeeds.
#![allow(clippy::disallowed_methods)] // wall-clock time against real processes and sockets

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use common::*;

const WAIT: Duration = Duration::from_secs(5);

fn status_of(response: &str) -> u16 {
    response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

async fn still_serves(proxy: SocketAddr) {
    let (status, _, _) = get(proxy, "/", Some("shop.example")).await;
    assert_eq!(status, 200, "a normal request failed after the hostile one");
}

async fn rejected(server: &switchyard::server::Server, reason: &str) -> f64 {
    let (_, text) = admin_get(server, "/metrics").await;
    metric(
        &text,
        &format!("switchyard_rejected_requests_total{{reason=\"{reason}\"}}"),
    )
    .unwrap_or(0.0)
}

async fn proxy_with(extra_top: &str) -> (switchyard::server::Server, Controlled) {
    let b = controlled("b", 200).await;
    let server = start_proxy(&config_top(
        extra_top,
        &format!(
            "[[routes]]\npool = \"p\"\n[pools.p]\nbackends = [{{ address = \"{}\" }}]\n",
            b.addr
        ),
    ))
    .await;
    (server, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_smuggling_requests_get_400_and_never_reach_a_backend() {
    let (server, b) = proxy_with("").await;
    let proxy = server.listen_addrs[0];
    let cases: [(&str, &[u8]); 14] = [
        ("garbage", b"\x00\x01\x02 hello there\r\n\r\n"),
        ("tls client hello", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n"),
        (
            "CL + TE",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
        ),
        (
            "TE + CL",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
        ),
        (
            "CL + TE, odd casing",
            b"POST / HTTP/1.1\r\nHost: a\r\ncontent-length: 4\r\ntRaNsFeR-eNcOdInG: Chunked\r\n\r\n0\r\n\r\n",
        ),
        (
            "CL + TE, odd spacing",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length:4\r\nTransfer-Encoding:   chunked  \r\n\r\n0\r\n\r\n",
        ),
        (
            "CL, CL conflicting",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nContent-Length: 40\r\n\r\nabcd",
        ),
        (
            "CL, CL identical",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nContent-Length: 4\r\n\r\nabcd",
        ),
        ("CL list", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4, 40\r\n\r\nabcd"),
        (
            "TE with space before colon",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
        ),
        (
            "TE not ending in chunked",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
        ),
        (
            "CL + TE after a normal request on the same connection",
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\nPOST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ),
        ("bad chunk size", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n"),
        ("obsolete line folding", b"GET / HTTP/1.1\r\nHost: a\r\nX-Folded: one\r\n two\r\n\r\n"),
    ];
    for (name, bytes) in cases {
        let hits = b.hits();
        let response = raw(proxy, bytes, WAIT).await;
        let status = status_of(&response);
        match name {
            // The first request is fine and answered; the second gets 400 and never reaches the backend.
            "CL + TE after a normal request on the same connection" => {
                assert!(response.starts_with("HTTP/1.1 200"), "{name}: {response:?}");
                assert!(response.contains("HTTP/1.1 400"), "{name}: {response:?}");
                assert_eq!(
                    b.hits(),
                    hits + 1,
                    "{name}: the second request reached the backend"
                );
            }
            // The head was fine, the body is not: the backend saw the start, the client a failure.
            "bad chunk size" => assert!(
                status == 400 || status == 502 || response.is_empty(),
                "{name}: {response:?}"
            ),
            _ => {
                assert_eq!(status, 400, "{name}: expected 400, got {response:?}");
                assert_eq!(b.hits(), hits, "{name}: reached the backend");
            }
        }
        // `raw` returns when the server closed the connection: the connection did not survive.
        still_serves(proxy).await;
    }
    assert!(rejected(&server, "malformed").await >= 12.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_framing_split_across_reads_and_after_a_chunked_request_gets_400() {
    let (server, b) = proxy_with("").await;
    let proxy = server.listen_addrs[0];
    // A chunked request, then (once it is answered) a head that arrives in three pieces.
    let mut tcp = TcpStream::connect(proxy).await.unwrap();
    tcp.write_all(
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    )
    .await
    .unwrap();
    let mut first = vec![0u8; 4096];
    let n = tcp.read(&mut first).await.unwrap();
    assert!(
        first[..n].starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&first[..n])
    );
    let hits = b.hits();
    for piece in [
        &b"POST / HTTP/1.1\r\nHost: a\r\nContent-"[..],
        b"Length: 4\r\nTransfer-Enc",
        b"oding: chunked\r\n\r\n0\r\n\r\n",
    ] {
        tcp.write_all(piece).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(WAIT, tcp.read_to_end(&mut rest)).await;
    let rest = String::from_utf8_lossy(&rest);
    assert!(rest.starts_with("HTTP/1.1 400"), "{rest}");
    assert!(
        rest.to_ascii_lowercase().contains("connection: close"),
        "{rest}"
    );
    assert_eq!(b.hits(), hits, "the ambiguous request reached the backend");
    still_serves(proxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_get_431() {
    let (server, _b) = proxy_with("[limits]\nmax_header_bytes = 8192\n").await;
    let proxy = server.listen_addrs[0];
    let big = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n",
        "x".repeat(20_000)
    );
    let response = raw(proxy, big.as_bytes(), WAIT).await;
    assert_eq!(status_of(&response), 431, "{response}");
    still_serves(proxy).await;
    assert_eq!(rejected(&server, "header_too_large").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_is_cut_off_after_the_header_read_timeout() {
    let (server, _b) = proxy_with("[limits]\nheader_read_timeout = \"300ms\"\n").await;
    let proxy = server.listen_addrs[0];
    let mut tcp = TcpStream::connect(proxy).await.unwrap();
    let started = std::time::Instant::now();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n")
        .await
        .unwrap();
    // Trickle a header byte every 100 ms; the server must close the connection anyway.
    let mut closed = false;
    for _ in 0..50 {
        if tcp.write_all(b"X").await.is_err() {
            closed = true;
            break;
        }
        let mut buf = [0u8; 1024];
        match tokio::time::timeout(Duration::from_millis(100), tcp.read(&mut buf)).await {
            Ok(Ok(_)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            Err(_) => {}
        }
    }
    assert!(closed, "a trickling client was never cut off");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    still_serves(proxy).await;
    assert!(
        eventually(WAIT, || async {
            rejected(&server, "header_timeout").await >= 1.0
        })
        .await
    );
}

/// The proxy reads a plain connection's first bytes to tell HTTP/2's preface from HTTP/1.1: a client that
/// sends nothing is closed at the idle timeout, and one that sends part of the preface and stops, at the header
/// read timeout; an HTTP/1.1 request that starts like the preface (`PRI` is a method name) is still served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_half_preface_connections_are_cut_by_their_timeouts() {
    let (server, _b) =
        proxy_with("[limits]\nheader_read_timeout = \"300ms\"\nidle_timeout = \"800ms\"\n").await;
    let proxy = server.listen_addrs[0];
    async fn closed_after(tcp: &mut TcpStream) -> Duration {
        let started = std::time::Instant::now();
        let mut buf = [0u8; 256];
        let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buf))
            .await
            .expect("the server never closed the connection")
            .unwrap_or(0);
        assert_eq!(n, 0, "{:?}", String::from_utf8_lossy(&buf[..n]));
        started.elapsed()
    }
    let mut silent = TcpStream::connect(proxy).await.unwrap();
    let took = closed_after(&mut silent).await;
    assert!(
        took >= Duration::from_millis(600) && took < Duration::from_secs(4),
        "{took:?}"
    );
    // Closing an idle connection is routine, not a refusal.
    assert_eq!(rejected(&server, "header_timeout").await, 0.0);
    let mut half = TcpStream::connect(proxy).await.unwrap();
    half.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    let took = closed_after(&mut half).await;
    assert!(took < Duration::from_millis(750), "{took:?}");
    assert!(
        eventually(WAIT, || async {
            rejected(&server, "header_timeout").await == 1.0
        })
        .await
    );
    let mut pri = TcpStream::connect(proxy).await.unwrap();
    pri.write_all(b"PRI /x HTTP/1.1\r\nHost: shop.example\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = tokio::time::timeout(WAIT, pri.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(answer.starts_with("HTTP/1.1 "), "{answer}");
    still_serves(proxy).await;
}

/// The first bytes, read to tell the version, are handed to hyper before anything more from the socket: a
/// request head longer than that first read (8 KiB) and a second request pipelined behind it, sent in one
/// write, both arrive whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_longer_than_the_first_read_and_a_pipelined_request_arrive_whole() {
    let echo = echo_backend().await;
    let server = start_proxy(&config_top(
        "[limits]\nmax_header_bytes = 65536\n",
        &format!("[[routes]]\npool = \"p\"\n[pools.p]\nbackends = [{{ address = \"{echo}\" }}]\n"),
    ))
    .await;
    let proxy = server.listen_addrs[0];
    let big = "y".repeat(20_000);
    let requests = format!(
        "GET /one HTTP/1.1\r\nHost: a\r\nX-Big: {big}\r\n\r\nGET /two HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
    );
    let answers = raw(proxy, requests.as_bytes(), WAIT).await;
    assert_eq!(answers.matches("HTTP/1.1 200").count(), 2, "{answers:.300}");
    let one = answers.find("\"/one\"").expect("the first request's echo");
    let two = answers
        .find("\"/two\"")
        .expect("the pipelined request's echo");
    assert!(one < two, "{answers:.300}");
    assert!(
        answers.contains(&format!("[\"x-big\",\"{big}\"]")),
        "the long header did not arrive whole"
    );
}

/// Writes its first `split` bytes, then holds the rest back for `pause`: HTTP/2's preface in two pieces.
struct SplitFirstWrite {
    inner: TcpStream,
    split: usize,
    pause: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl tokio::io::AsyncWrite for SplitFirstWrite {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        use std::future::Future;
        use std::task::{Poll, ready};
        if self.split > 0 {
            let n = buf.len().min(self.split);
            let written = ready!(std::pin::Pin::new(&mut self.inner).poll_write(cx, &buf[..n]))?;
            self.split -= written;
            if self.split == 0 {
                self.pause = Some(Box::pin(tokio::time::sleep(Duration::from_millis(150))));
            }
            return Poll::Ready(Ok(written));
        }
        if let Some(pause) = self.pause.as_mut() {
            ready!(pause.as_mut().poll(cx));
            self.pause = None;
        }
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl tokio::io::AsyncRead for SplitFirstWrite {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

/// HTTP/2's preface arriving in two pieces (10 bytes, then the rest 150 ms later) is still HTTP/2 with prior
/// knowledge, and the bytes of both reads reach hyper.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preface_in_two_pieces_is_still_http2() {
    let (server, b) = proxy_with("").await;
    let proxy = server.listen_addrs[0];
    let io = SplitFirstWrite {
        inner: TcpStream::connect(proxy).await.unwrap(),
        split: 10,
        pause: None,
    };
    let mut sender = h2(io).await;
    let resp = sender
        .send_request(
            http::Request::get(format!("http://{proxy}/split"))
                .body(full(""))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(b.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absolute_form_goes_by_the_routes_and_connect_gets_405() {
    let (server, b) = proxy_with("").await;
    let proxy = server.listen_addrs[0];
    // Some other listener stands in for "other-host": it must never be contacted.
    let other = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let other_addr = other.local_addr().unwrap();
    let request = format!(
        "GET http://{other_addr}/steal HTTP/1.1\r\nHost: {other_addr}\r\nConnection: close\r\n\r\n"
    );
    let response = raw(proxy, request.as_bytes(), WAIT).await;
    assert_eq!(status_of(&response), 200, "{response}");
    assert!(
        response.ends_with('b'),
        "answered by the configured pool: {response}"
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(200), other.accept())
            .await
            .is_err(),
        "other host contacted"
    );

    let hits = b.hits();
    let connect = format!("CONNECT {other_addr} HTTP/1.1\r\nHost: {other_addr}\r\n\r\n");
    let response = raw(proxy, connect.as_bytes(), Duration::from_secs(1)).await;
    assert_eq!(status_of(&response), 405, "{response}");
    assert_eq!(b.hits(), hits);
    still_serves(proxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_max_connections_new_ones_are_closed_and_old_ones_unharmed() {
    let (server, _b) = proxy_with("[limits]\nmax_connections = 3\n").await;
    let proxy = server.listen_addrs[0];
    let mut open = Vec::new();
    for _ in 0..3 {
        let mut tcp = TcpStream::connect(proxy).await.unwrap();
        tcp.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 512];
        let n = tcp.read(&mut buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        open.push(tcp);
    }
    let mut extra = TcpStream::connect(proxy).await.unwrap();
    let _ = extra.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await;
    let mut buf = [0u8; 512];
    let n = tokio::time::timeout(WAIT, extra.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0, "the connection over the cap was served");
    // The ones already open still work.
    for tcp in &mut open {
        tcp.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        let n = tcp.read(&mut buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    }
    assert_eq!(rejected(&server, "max_connections").await, 1.0);
    drop(open);
    assert!(
        eventually(WAIT, || async {
            try_get(proxy, "/").await.is_some_and(|(s, _)| s == 200)
        })
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_the_limit_get_413() {
    let (server, b) = proxy_with("[limits]\nmax_request_body_bytes = 1000\n").await;
    let proxy = server.listen_addrs[0];
    let (status, _) = send(proxy, "POST", "/", "small body").await;
    assert_eq!(status, 200);
    let hits = b.hits();
    let big = format!(
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5000\r\n\r\n{}",
        "x".repeat(5000)
    );
    assert_eq!(status_of(&raw(proxy, big.as_bytes(), WAIT).await), 413);
    assert_eq!(
        b.hits(),
        hits,
        "a body declared too large reached the backend"
    );
    let chunk = "x".repeat(600);
    let chunked = format!(
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n258\r\n{chunk}\r\n258\r\n{chunk}\r\n0\r\n\r\n"
    );
    assert_eq!(status_of(&raw(proxy, chunked.as_bytes(), WAIT).await), 413);
    assert_eq!(rejected(&server, "body_too_large").await, 2.0);
    still_serves(proxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_with_endless_headers_gives_502_not_memory_growth() {
    let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = upstream.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = upstream.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = tcp.read(&mut buf).await;
                let _ = tcp.write_all(b"HTTP/1.1 200 OK\r\n").await;
                let line = b"X-Endless: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n";
                // Bounded: 64 MiB of header lines at most, far past any sane limit.
                for _ in 0..(64 * 1024 * 1024 / line.len()) {
                    if tcp.write_all(line).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let ok = controlled("ok", 200).await;
    let server = start_proxy(&config(&format!(
        "[[routes]]\npath_prefix = \"/endless\"\npool = \"bad\"\n[[routes]]\npool = \"p\"\n\
         [pools.bad]\nbackends = [{{ address = \"{addr}\" }}]\n[pools.p]\nbackends = [{{ address = \"{}\" }}]\n",
        ok.addr
    )))
    .await;
    let proxy = server.listen_addrs[0];
    let (status, _, body) = get(proxy, "/endless", None).await;
    assert_eq!(status, 502, "{body}");
    let (_, text) = admin_get(&server, "/metrics").await;
    let series = format!(
        "switchyard_upstream_errors_total{{backend=\"{addr}\",kind=\"protocol\",pool=\"bad\"}}"
    );
    assert_eq!(metric(&text, &series), Some(1.0));
    assert_eq!(get(proxy, "/", None).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_needs_the_token_when_one_is_set() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), "s3cret-token\n").unwrap();
    let b = controlled("b", 200).await;
    let text = format!(
        "[[listeners]]\naddress = \"127.0.0.1:0\"\n[admin]\naddress = \"127.0.0.1:0\"\ntoken_file = \"token\"\n\
         [[routes]]\npool = \"p\"\n[pools.p]\nbackends = [{{ address = \"{}\" }}]\n",
        b.addr
    );
    let path = dir.path().join("switchyard.toml");
    std::fs::write(&path, text).unwrap();
    let config = switchyard::config::load(&path).unwrap();
    let server = switchyard::server::Server::start(config).await.unwrap();
    let admin = server.admin_addr;
    let call = |auth: Option<&'static str>, method: &'static str, path: &'static str| async move {
        let mut req = http::Request::builder()
            .method(method)
            .uri(format!("http://{admin}{path}"));
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let resp = client().request(req.body(full("")).unwrap()).await.unwrap();
        resp.status().as_u16()
    };
    assert_eq!(call(None, "GET", "/metrics").await, 401);
    assert_eq!(call(Some("Bearer wrong"), "GET", "/api/pools").await, 401);
    assert_eq!(
        call(Some("Bearer s3cret-token-and-more"), "GET", "/api/pools").await,
        401
    );
    assert_eq!(
        call(Some("Basic s3cret-token"), "GET", "/healthz").await,
        401
    );
    assert_eq!(
        call(Some("Bearer s3cret-token"), "GET", "/api/pools").await,
        200
    );
    assert_eq!(
        call(Some("Bearer s3cret-token"), "GET", "/healthz").await,
        200
    );
    // Mutating endpoints take POST only.
    assert_eq!(
        call(Some("Bearer s3cret-token"), "GET", "/api/reload").await,
        405
    );
    let drain = format!("/api/pools/p/backends/{}/drain", b.addr);
    let drain: &'static str = Box::leak(drain.into_boxed_str());
    assert_eq!(call(None, "POST", drain).await, 401);
    assert_eq!(call(Some("Bearer s3cret-token"), "PUT", drain).await, 405);
    assert_eq!(call(Some("Bearer s3cret-token"), "POST", drain).await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_stalls_mid_body_is_cut_after_the_request_timeout() {
    let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = upstream.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = upstream.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = tcp.read(&mut buf).await;
                let _ = tcp
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n0123456789")
                    .await;
                // Then silence, for longer than any timeout in this test (bounded).
                tokio::time::sleep(Duration::from_secs(20)).await;
            });
        }
    });
    let server = start_proxy(&config(&format!(
        "[[routes]]\npool = \"p\"\n[pools.p]\nbackends = [{{ address = \"{addr}\" }}]\n[pools.p.timeouts]\nrequest = \"300ms\"\n"
    )))
    .await;
    let started = std::time::Instant::now();
    let resp = client()
        .request(
            http::Request::get(format!("http://{}/", server.listen_addrs[0]))
                .body(full(""))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body = http_body_util::BodyExt::collect(resp.into_body()).await;
    assert!(body.is_err(), "a stalled body must not end as if complete");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "held for {took:?}");
    // The backend's in-flight count is released.
    assert!(no_request_left(&server, WAIT).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_idle_time_is_bounded_by_idle_timeout_not_the_header_timeout() {
    let (server, _b) =
        proxy_with("[limits]\nheader_read_timeout = \"300ms\"\nidle_timeout = \"1500ms\"\n").await;
    let proxy = server.listen_addrs[0];
    let mut tcp = TcpStream::connect(proxy).await.unwrap();
    let mut buf = [0u8; 1024];
    for round in 0..2 {
        tcp.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        let n = tcp.read(&mut buf).await.unwrap();
        assert!(
            String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"),
            "round {round}"
        );
        // Idle for longer than the header timeout, well within the idle timeout: the connection stays.
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    // Left idle, it is closed once the idle timeout has passed.
    let started = std::time::Instant::now();
    let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0, "expected the server to close the idle connection");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    // Idle closes are routine, not refusals.
    assert_eq!(rejected(&server, "header_timeout").await, 0.0);
}

/// A client that asks for a large response and never reads it holds nothing for good: once the proxy's writes
/// have waited `limits.idle_timeout`, the connection closes and the backend's request ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_cut_after_the_idle_timeout() {
    static BIG: std::sync::OnceLock<bytes::Bytes> = std::sync::OnceLock::new();
    let big = BIG.get_or_init(|| bytes::Bytes::from(vec![b'z'; 64 << 20]));
    let b = backend(move |_req| async move { http::Response::new(full(big.clone())) }).await;
    let server = start_proxy(&config_top(
        "[limits]\nidle_timeout = \"1s\"\n",
        &format!("[[routes]]\npool = \"p\"\n[pools.p]\nbackends = [{{ address = \"{b}\" }}]\n"),
    ))
    .await;
    let mut tcp = TcpStream::connect(server.listen_addrs[0]).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    // Never read: first the request is in flight, then it is not any more.
    let in_flight = || async {
        admin_get(&server, "/api/pools")
            .await
            .1
            .contains("\"active_requests\": 1")
    };
    assert!(eventually(WAIT, in_flight).await);
    let started = std::time::Instant::now();
    assert!(
        no_request_left(&server, Duration::from_secs(10)).await,
        "a client that does not read held its request for good"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    // What it gets when it finally reads: part of the body, then the end.
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut got)).await;
    assert!(read.is_ok(), "the connection is still open");
    assert!(got.len() < 64 << 20, "{} bytes", got.len());
    assert!(
        eventually(WAIT, || async {
            rejected(&server, "client_stalled").await >= 1.0
        })
        .await
    );
    still_serves(server.listen_addrs[0]).await;
}

/// Over HTTP/2 a client can take every byte the socket is given and still take nothing of its answers: it opens
/// no flow-control window for them. Once every answer has waited on it for `limits.idle_timeout`, the
/// connection closes, and the backend's request ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_client_that_opens_no_window_is_cut_after_the_idle_timeout() {
    let (server, _b) = proxy_with("[limits]\nidle_timeout = \"1s\"\n").await;
    let tcp = TcpStream::connect(server.listen_addrs[0]).await.unwrap();
    let (mut client, connection) = h2::client::Builder::new()
        .initial_window_size(0)
        .handshake::<_, bytes::Bytes>(tcp)
        .await
        .unwrap();
    let connection = tokio::spawn(connection);
    let (answer, _) = client
        .send_request(http::Request::get("http://a/").body(()).unwrap(), true)
        .unwrap();
    // The head needs no window; the body does, and never gets it.
    let resp = answer.await.unwrap();
    assert_eq!(resp.status(), 200);
    let started = std::time::Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(10), connection).await;
    assert!(
        ended.is_ok(),
        "a client with no window held its connection for good"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(no_request_left(&server, WAIT).await);
    assert!(
        eventually(WAIT, || async {
            rejected(&server, "client_stalled").await >= 1.0
        })
        .await
    );
}
