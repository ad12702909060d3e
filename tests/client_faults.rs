//! A client's faults are the client's: broken, aborted, stalled and oversized request bodies get 400, 408 or 413
//! (or nothing, when the client is gone) and are never charged to the backend — not its circuit breaker, not
//! `switchyard_upstream_errors_total`. Also the Host rules, bodies of any method, and transfer codings. Through
//! the real binary, over raw sockets: each request in one write and byte by byte.
#![allow(clippy::disallowed_methods)] // wall-clock time against real processes and sockets

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use common::*;

/// A backend that answers `METHOD body-length body` for whatever it fully received.
async fn body_echo() -> SocketAddr {
    backend(|req: Request<Incoming>| async move {
        let method = req.method().to_string();
        let host = req
            .headers()
            .get("host")
            .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned())
            .unwrap_or_default();
        match req.into_body().collect().await {
            Ok(body) => {
                let body = body.to_bytes();
                Response::builder()
                    .header("x-host", host)
                    .body(full(format!(
                        "{method} {} {}",
                        body.len(),
                        String::from_utf8_lossy(&body)
                    )))
                    .unwrap()
            }
            Err(_) => Response::builder()
                .status(499)
                .body(full("the body broke"))
                .unwrap(),
        }
    })
    .await
}

/// How the bytes of a request go out.
#[derive(Clone, Copy, Debug)]
enum Write {
    Whole,
    ByteByByte,
}

/// Sends `bytes` on a new connection (then, if `close`, half-closes it) and reads what comes back within
/// `wait`. Returns the answer's status (0 when nothing came) and the whole answer.
async fn exchange(
    proxy: SocketAddr,
    bytes: &[u8],
    how: Write,
    close: bool,
    wait: Duration,
) -> (u16, String) {
    let mut tcp = TcpStream::connect(proxy).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    match how {
        Write::Whole => tcp.write_all(bytes).await.unwrap(),
        Write::ByteByByte => {
            for b in bytes {
                if tcp.write_all(&[*b]).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
        }
    }
    if close {
        let _ = tcp.shutdown().await;
    }
    let mut out = Vec::new();
    let _ = tokio::time::timeout(wait, tcp.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .or_else(|| text.strip_prefix("HTTP/1.0 "))
        .and_then(|r| r.get(..3))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

struct Proxy {
    _proc: Proc,
    _dir: tempfile::TempDir,
    addr: SocketAddr,
    admin: u16,
    backends: Vec<SocketAddr>,
}

/// The binary over two echo backends whose circuits would open after 2 failures (the cap allows one).
async fn proxy() -> Proxy {
    let backends = vec![body_echo().await, body_echo().await];
    let dir = tempfile::tempdir().unwrap();
    let list = backends.clone();
    let (proc, port, admin) = spawn(dir.path(), move |port, admin| {
        format!(
            "[limits]\nbody_read_timeout = \"400ms\"\nmax_request_body_bytes = 1000\n{}",
            binary_pool_config(
                port,
                admin,
                &list,
                "[pools.p.circuit_breaker]\nfailure_threshold = 2\nmax_open_percent = 100\n",
            )
        )
    })
    .await;
    Proxy {
        _proc: proc,
        _dir: dir,
        addr: ([127, 0, 0, 1], port).into(),
        admin,
        backends,
    }
}

impl Proxy {
    /// Nothing was charged to any backend, and a normal request is served right after.
    async fn backends_untouched(&self, what: &str) {
        let pools = admin_json(self.admin, "/api/pools").await;
        for b in pools["pools"]["p"]["backends"].as_array().unwrap() {
            assert_eq!(b["circuit"], "closed", "{what}: {b}");
            assert_eq!(b["consecutive_failures"], 0, "{what}: {b}");
        }
        let metrics = get(([127, 0, 0, 1], self.admin).into(), "/metrics", None)
            .await
            .2;
        for b in &self.backends {
            for kind in ["connect", "timeout", "protocol"] {
                let series = format!(
                    "switchyard_upstream_errors_total{{backend=\"{b}\",kind=\"{kind}\",pool=\"p\"}}"
                );
                assert_eq!(
                    metric(&metrics, &series).unwrap_or(0.0),
                    0.0,
                    "{what}: {series}"
                );
            }
        }
        let (status, _, body) = get(self.addr, "/after", None).await;
        assert_eq!((status.as_u16(), body.as_str()), (200, "GET 0 "), "{what}");
    }

    async fn rejected(&self, reason: &str) -> f64 {
        metric_at(
            self.admin,
            &format!("switchyard_rejected_requests_total{{reason=\"{reason}\"}}"),
        )
        .await
    }
}

const CHUNKED_HEAD: &str = "POST /x HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_chunked_bodies_get_400_and_never_open_a_circuit() {
    let p = proxy().await;
    let shapes: &[(&str, &str)] = &[
        ("bad hex", "5g\r\nhello\r\n0\r\n\r\n"),
        ("negative size", "-5\r\nhello\r\n0\r\n\r\n"),
        (
            "overflowing size",
            "fffffffffffffffffff\r\nhello\r\n0\r\n\r\n",
        ),
        ("bare LF after the size", "5\nhello\r\n0\r\n\r\n"),
        ("bare CR after the size", "5\rhello\r\n0\r\n\r\n"),
        ("data longer than the size", "5\r\nhelloXX\r\n0\r\n\r\n"),
        ("data shorter than the size", "5\r\nhel\r\n0\r\n\r\n"),
        ("no CRLF after the data", "5\r\nhello0\r\n\r\n"),
        (
            "a trailer that is no header field",
            "5\r\nhello\r\n0\r\nnot a header\r\n\r\n",
        ),
    ];
    for how in [Write::Whole, Write::ByteByByte] {
        for (name, body) in shapes {
            // Twenty of each shape in all (ten each way), more than enough to open a circuit if they counted.
            for _ in 0..10 {
                let request = format!("{CHUNKED_HEAD}{body}");
                let (status, answer) = exchange(
                    p.addr,
                    request.as_bytes(),
                    how,
                    false,
                    Duration::from_secs(5),
                )
                .await;
                assert_eq!(status, 400, "{name} ({how:?}):\n{answer}");
                assert!(
                    answer.contains("malformed request body"),
                    "{name}: {answer}"
                );
            }
            p.backends_untouched(name).await;
        }
    }
    assert!(p.rejected("body_malformed").await >= 9.0 * 20.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aborted_uploads_are_the_clients_and_never_open_a_circuit() {
    let p = proxy().await;
    let shapes: &[(&str, &str)] = &[
        (
            "a body shorter than its Content-Length",
            "POST /x HTTP/1.1\r\nHost: a.test\r\nContent-Length: 100\r\n\r\n0123456789",
        ),
        (
            "a chunked body without its last chunk",
            "POST /x HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
        ),
        (
            "a chunked body without the final CRLF",
            "POST /x HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n",
        ),
    ];
    for how in [Write::Whole, Write::ByteByByte] {
        for (name, request) in shapes {
            for _ in 0..10 {
                // The client closes its side: it gets a 400 if it still listens, or nothing.
                let (status, answer) = exchange(
                    p.addr,
                    request.as_bytes(),
                    how,
                    true,
                    Duration::from_secs(5),
                )
                .await;
                assert!(status == 400 || status == 0, "{name} ({how:?}):\n{answer}");
            }
            p.backends_untouched(name).await;
        }
    }
    assert!(p.rejected("client_aborted").await >= 60.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_sending_gets_408_and_a_slow_upload_is_not_a_slow_backend() {
    let p = proxy().await;
    for _ in 0..3 {
        let request = "POST /x HTTP/1.1\r\nHost: a.test\r\nContent-Length: 100\r\n\r\n0123456789";
        let started = std::time::Instant::now();
        let (status, answer) = exchange(
            p.addr,
            request.as_bytes(),
            Write::Whole,
            false,
            Duration::from_secs(10),
        )
        .await;
        assert_eq!(status, 408, "{answer}");
        assert!(answer.contains("body_read_timeout"), "{answer}");
        assert!(started.elapsed() >= Duration::from_millis(400));
    }
    p.backends_untouched("stalled uploads").await;
    assert_eq!(p.rejected("body_timeout").await, 3.0);

    // An upload that keeps coming, slower than nothing but never silent for the stall timeout, is served.
    let mut tcp = TcpStream::connect(p.addr).await.unwrap();
    tcp.write_all(b"POST /x HTTP/1.1\r\nHost: a.test\r\nContent-Length: 10\r\n\r\n")
        .await
        .unwrap();
    for b in b"0123456789" {
        tokio::time::sleep(Duration::from_millis(150)).await;
        tcp.write_all(&[*b]).await.unwrap();
    }
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut answer))
        .await
        .unwrap()
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("POST 10 0123456789"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_body_over_the_limit_gets_413_and_never_opens_a_circuit() {
    let p = proxy().await;
    let chunk = "x".repeat(600);
    let request = format!("{CHUNKED_HEAD}258\r\n{chunk}\r\n258\r\n{chunk}\r\n0\r\n\r\n");
    for how in [Write::Whole, Write::ByteByByte] {
        for _ in 0..5 {
            let (status, answer) = exchange(
                p.addr,
                request.as_bytes(),
                how,
                false,
                Duration::from_secs(5),
            )
            .await;
            assert_eq!(status, 413, "{how:?}: {answer}");
        }
    }
    p.backends_untouched("oversized bodies").await;
    assert_eq!(p.rejected("body_too_large").await, 10.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_rules_and_the_targets_authority() {
    let p = proxy().await;
    let cases: &[(&str, &str, u16)] = &[
        ("no Host in HTTP/1.1", "GET / HTTP/1.1\r\n\r\n", 400),
        (
            "two Host headers",
            "GET / HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n",
            400,
        ),
        (
            "a space in Host",
            "GET / HTTP/1.1\r\nHost: a .test\r\n\r\n",
            400,
        ),
        (
            "a path in Host",
            "GET / HTTP/1.1\r\nHost: a.test/x\r\n\r\n",
            400,
        ),
        (
            "a control character in Host",
            "GET / HTTP/1.1\r\nHost: a\x01.test\r\n\r\n",
            400,
        ),
        (
            "a bad port in Host",
            "GET / HTTP/1.1\r\nHost: a.test:80x\r\n\r\n",
            400,
        ),
        ("HTTP/1.0 without Host", "GET / HTTP/1.0\r\n\r\n", 200),
        (
            "Host with a port",
            "GET / HTTP/1.1\r\nHost: a.test:8080\r\n\r\n",
            200,
        ),
    ];
    for how in [Write::Whole, Write::ByteByByte] {
        for (name, request, want) in cases {
            let (status, answer) = exchange(
                p.addr,
                request.as_bytes(),
                how,
                false,
                Duration::from_secs(3),
            )
            .await;
            assert_eq!(status, *want, "{name} ({how:?}):\n{answer}");
        }
    }
    // hyper itself refuses the control character as a malformed head.
    let refused = p.rejected("bad_host").await + p.rejected("malformed").await;
    assert_eq!(refused, 12.0);
    // A target with userinfo would pass credentials on as the backend's Host: refused.
    let (status, answer) = exchange(
        p.addr,
        b"GET http://user:pw@a.test/x HTTP/1.1\r\nHost: a.test\r\n\r\n",
        Write::Whole,
        false,
        Duration::from_secs(3),
    )
    .await;
    assert_eq!(status, 400, "{answer}");
    // Absolute form: the target's authority wins, for routing and for the Host the backend sees.
    let (status, answer) = exchange(
        p.addr,
        b"GET http://other.example/x HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n",
        Write::Whole,
        false,
        Duration::from_secs(3),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("x-host: other.example\r\n"),
        "{answer}"
    );
    p.backends_untouched("host rules").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_of_any_method_are_forwarded_and_other_codings_get_501() {
    let p = proxy().await;
    for method in ["GET", "HEAD", "DELETE", "OPTIONS", "POST"] {
        for how in [Write::Whole, Write::ByteByByte] {
            let request = format!(
                "{method} /x HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
            );
            let (status, answer) = exchange(
                p.addr,
                request.as_bytes(),
                how,
                false,
                Duration::from_secs(3),
            )
            .await;
            assert_eq!(status, 200, "{method} ({how:?}): {answer}");
            if method != "HEAD" {
                assert!(
                    answer.ends_with(&format!("{method} 5 hello")),
                    "{method}: {answer}"
                );
            }
            let sized = format!(
                "{method} /x HTTP/1.1\r\nHost: a.test\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"
            );
            let (status, answer) =
                exchange(p.addr, sized.as_bytes(), how, false, Duration::from_secs(3)).await;
            assert_eq!(status, 200, "{method} ({how:?}): {answer}");
            if method != "HEAD" {
                assert!(
                    answer.ends_with(&format!("{method} 5 hello")),
                    "{method}: {answer}"
                );
            }
        }
    }
    for coding in ["gzip, chunked", "deflate, chunked", "chunked, chunked"] {
        let request = format!(
            "POST /x HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: {coding}\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        );
        let (status, answer) = exchange(
            p.addr,
            request.as_bytes(),
            Write::Whole,
            false,
            Duration::from_secs(3),
        )
        .await;
        assert_eq!(status, 501, "{coding}: {answer}");
    }
    assert_eq!(p.rejected("unsupported_transfer_coding").await, 3.0);
    p.backends_untouched("codings").await;
}

/// Over HTTP/2, `:authority` and a `host` header that name different hosts are refused, never guessed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_authority_and_host_must_agree() {
    use hyper::client::conn::http2;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let p = proxy().await;
    let tcp = TcpStream::connect(p.addr).await.unwrap();
    let (mut sender, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut send = |host: &'static str| {
        let req = Request::get("http://a.test/x")
            .header("host", host)
            .body(full(""))
            .unwrap();
        sender.send_request(req)
    };
    let agreeing = send("A.test").await.unwrap();
    assert_eq!(agreeing.status(), 200);
    let with_port = send("a.test:80").await.unwrap();
    assert_eq!(with_port.status(), 200);
    match send("b.test").await {
        Ok(resp) => assert_eq!(resp.status(), 400),
        Err(e) => assert!(
            e.to_string().contains("reset") || e.to_string().contains("stream"),
            "{e}"
        ),
    }
    assert_eq!(p.rejected("bad_host").await, 1.0);
    p.backends_untouched("h2 authority").await;
}
