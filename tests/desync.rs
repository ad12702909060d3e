//! The request desync corpus: malformed and ambiguous requests in the shapes request-smuggling research uses
//! (CL.TE, TE.CL, TE.TE with obfuscated `Transfer-Encoding`, odd `Content-Length`s, chunk-size tricks, NUL bytes,
//! bare CR/LF, obs-fold, HTTP/0.9, absolute-form and `Host` conflicts), each sent as one write and byte by byte,
//! each followed by a normal request on the same connection. For every case: either a 4xx and the connection
//! closed with nothing sent upstream, or requests upstream that the proxy and the backend read alike — never
//! two requests out of one, never the following request poisoned. The backend is a real HTTP/1.1 server that
//! records what reaches it.
#![allow(clippy::disallowed_methods)] // wall-clock time against real sockets

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use common::*;

/// What reached the backend.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    hosts: usize,
    host: String,
    /// A header named `x-smuggled` (over HTTP/2 only ever sent hidden inside another header's value).
    smuggled_header: bool,
    content_lengths: usize,
    transfer_encodings: usize,
    body: Vec<u8>,
}

/// An HTTP/1.1 backend (hyper, keep-alive) answering `ok:<path>` and recording every request.
async fn recording_backend() -> (SocketAddr, Arc<Mutex<Vec<Seen>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let record = Arc::clone(&seen);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let record = Arc::clone(&record);
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    let record = Arc::clone(&record);
                    async move {
                        let count = |name: &str| req.headers().get_all(name).iter().count();
                        let (hosts, content_lengths, transfer_encodings) = (
                            count("host"),
                            count("content-length"),
                            count("transfer-encoding"),
                        );
                        let host = req
                            .headers()
                            .get("host")
                            .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned())
                            .unwrap_or_default();
                        let smuggled_header = req.headers().contains_key("x-smuggled");
                        let method = req.method().to_string();
                        let path = req.uri().path().to_owned();
                        let body = match req.into_body().collect().await {
                            Ok(b) => b.to_bytes().to_vec(),
                            Err(_) => b"<body error>".to_vec(),
                        };
                        record.lock().unwrap().push(Seen {
                            method,
                            path: path.clone(),
                            hosts,
                            host,
                            smuggled_header,
                            content_lengths,
                            transfer_encodings,
                            body,
                        });
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(format!(
                            "ok:{path}"
                        )))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    (addr, seen)
}

/// The corpus: `{P}` is the case's own path, `{S}` a path that must never reach the backend as a request of
/// its own, `{B}` a smuggling payload (a whole request for `{S}`).
const CASES: &[(&str, &str)] = &[
    // CL.TE and TE.CL
    (
        "CL.TE, G prefix",
        "POST {P} HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG",
    ),
    (
        "CL.TE, whole request",
        "POST {P} HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{B}",
    ),
    (
        "TE.CL, whole request",
        "POST {P} HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n5c\r\n{B}\r\n0\r\n\r\n",
    ),
    (
        "TE.CL, CL 3",
        "POST {P} HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\n",
    ),
    // TE.TE: obfuscated Transfer-Encoding, with and without Content-Length
    (
        "TE xchunked + CL",
        "POST {P} HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n{B}",
    ),
    (
        "TE xchunked alone",
        "POST {P} HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n{B}",
    ),
    (
        "TE leading space + CL",
        "POST {P} HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:  chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n{B}",
    ),
    (
        "TE line folded onto the previous header",
        "POST {P} HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n{B}",
    ),
    (
        "TE chunked, identity",
        "POST {P} HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n{B}",
    ),
    (
        "TE identity, chunked + CL",
        "POST {P} HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity, chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n{B}",
    ),
    (
        "TE trailing tab + CL",
        "POST {P} HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\t\r\nContent-Length: 5\r\n\r\n0\r\n\r\n{B}",
    ),
    (
        "TE tab before value + CL",
        "POST {P} HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\tchunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n{B}",
    ),
    (
        "TE twice, chunked then x",
        "POST {P} HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n\r\n0\r\n\r\n{B}",
    ),
    (
        "TE twice, x then chunked + CL",
        "POST {P} HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n{B}",
    ),
    (
        "TE quoted",
        "POST {P} HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: \"chunked\"\r\nContent-Length: 5\r\n\r\n0\r\n\r\n{B}",
    ),
    (
        "TE chunk (truncated)",
        "POST {P} HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunk\r\nContent-Length: 5\r\n\r\n0\r\n\r\n{B}",
    ),
    (
        "TE upper case + CL",
        "POST {P} HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: CHUNKED\r\nContent-Length: 5\r\n\r\n0\r\n\r\n{B}",
    ),
    (
        "TE after an obs-folded header",
        "POST {P} HTTP/1.1\r\nHost: a\r\nX-A: b\r\n Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n{B}",
    ),
    (
        "TE with a bare LF line end + CL",
        "POST {P} HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\nContent-Length: 5\r\n\r\n0\r\n\r\n{B}",
    ),
    (
        "bare CR hiding TE",
        "POST {P} HTTP/1.1\r\nHost: a\r\nX-A: b\rTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n{B}",
    ),
    (
        "Transfer_Encoding (underscore) + CL",
        "POST {P} HTTP/1.1\r\nHost: a\r\nTransfer_Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n{B}",
    ),
    (
        "TE space before colon",
        "POST {P} HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n{B}",
    ),
    (
        "CL space before colon",
        "POST {P} HTTP/1.1\r\nHost: a\r\nContent-Length : 5\r\n\r\nhello{B}",
    ),
    (
        "TE gzip, chunked",
        "POST {P} HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    ),
    (
        "TE chunked, chunked",
        "POST {P} HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n{B}",
    ),
    (
        "TE name with trailing tab",
        "POST {P} HTTP/1.1\r\nHost: a\r\nTransfer-Encoding\t: chunked\r\n\r\n0\r\n\r\n{B}",
    ),
    // Content-Length shapes
    (
        "CL +5",
        "POST {P} HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\nhello{B}",
    ),
    (
        "CL -1",
        "POST {P} HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n{B}",
    ),
    (
        "CL 0x5",
        "POST {P} HTTP/1.1\r\nHost: a\r\nContent-Length: 0x5\r\n\r\nhello{B}",
    ),
    (
        "CL leading zeros",
        "POST {P} HTTP/1.1\r\nHost: a\r\nContent-Length: 0005\r\n\r\nhello",
    ),
    (
        "CL list, same",
        "POST {P} HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\nhello",
    ),
    (
        "CL list, different",
        "POST {P} HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 50\r\n\r\nhello{B}",
    ),
    (
        "CL twice, different",
        "POST {P} HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 50\r\n\r\nhello{B}",
    ),
    (
        "CL twice, same",
        "POST {P} HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
    ),
    (
        "CL with an inner space",
        "POST {P} HTTP/1.1\r\nHost: a\r\nContent-Length: 5 0\r\n\r\nhello{B}",
    ),
    (
        "CL 1e1",
        "POST {P} HTTP/1.1\r\nHost: a\r\nContent-Length: 1e1\r\n\r\nhellohello{B}",
    ),
    (
        "CL overflowing u64",
        "POST {P} HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999999\r\n\r\nhello{B}",
    ),
    (
        "CL empty",
        "POST {P} HTTP/1.1\r\nHost: a\r\nContent-Length: \r\n\r\n{B}",
    ),
    (
        "CL trailing space (OWS)",
        "POST {P} HTTP/1.1\r\nHost: a\r\nContent-Length: 5 \r\n\r\nhello",
    ),
    (
        "CL tab before value (OWS)",
        "POST {P} HTTP/1.1\r\nHost: a\r\nContent-Length:\t5\r\n\r\nhello",
    ),
    (
        "CL 0 with a request for a body",
        "POST {P} HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n{B}",
    ),
    // Chunked bodies
    (
        "chunk size with many leading zeros",
        "POST {P} HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n000000000000000000000005\r\nhello\r\n0\r\n\r\n",
    ),
    (
        "chunk size overflowing u64",
        "POST {P} HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffffff1\r\nhello\r\n0\r\n\r\n{B}",
    ),
    (
        "chunk extension",
        "POST {P} HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;name=value\r\nhello\r\n0\r\n\r\n",
    ),
    (
        "chunk extension with a bare LF",
        "POST {P} HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;x\nhello\r\n0\r\n\r\n{B}",
    ),
    (
        "chunk size then a space",
        "POST {P} HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5 \r\nhello\r\n0\r\n\r\n",
    ),
    (
        "negative chunk size",
        "POST {P} HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n-5\r\nhello\r\n0\r\n\r\n{B}",
    ),
    (
        "chunk without CRLF after data",
        "POST {P} HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloX0\r\n\r\n{B}",
    ),
    (
        "chunk data longer than its size",
        "POST {P} HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhello\r\n0\r\n\r\n{B}",
    ),
    (
        "last chunk with a trailer",
        "POST {P} HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-Trailer: 1\r\n\r\n",
    ),
    (
        "trailer with Content-Length",
        "POST {P} HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nContent-Length: 50\r\n\r\n{B}",
    ),
    (
        "chunk framing with bare LFs",
        "POST {P} HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\n0\n\n{B}",
    ),
    (
        "chunk size in upper-case hex",
        "POST {P} HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nA\r\nhellohello\r\n0\r\n\r\n",
    ),
    // NUL and control bytes
    (
        "NUL in a header value",
        "GET {P} HTTP/1.1\r\nHost: a\r\nX-A: b\0c\r\n\r\n",
    ),
    (
        "NUL in the target",
        "GET {P}\0x HTTP/1.1\r\nHost: a\r\n\r\n",
    ),
    (
        "NUL in a header name",
        "GET {P} HTTP/1.1\r\nHost: a\r\nX-\0A: b\r\n\r\n",
    ),
    (
        "bare CR in a header value",
        "GET {P} HTTP/1.1\r\nHost: a\r\nX-A: b\rc\r\n\r\n",
    ),
    (
        "bare LF ending a header line (RFC 9112 allows it as a line end)",
        "GET {P} HTTP/1.1\r\nHost: a\r\nX-A: b\nX-Smuggled: 1\r\n\r\n",
    ),
    (
        "DEL in a header name",
        "GET {P} HTTP/1.1\r\nHost: a\r\nX-\x7fA: b\r\n\r\n",
    ),
    // Request lines
    ("HTTP/0.9", "GET {P}\r\n"),
    (
        "HTTP/2.0 in an HTTP/1 request line",
        "GET {P} HTTP/2.0\r\nHost: a\r\n\r\n",
    ),
    ("HTTP/1.2", "GET {P} HTTP/1.2\r\nHost: a\r\n\r\n"),
    (
        "absolute-form target",
        "GET http://a{P} HTTP/1.1\r\nHost: a\r\n\r\n",
    ),
    (
        "absolute-form target, Host conflicting",
        "GET http://a{P} HTTP/1.1\r\nHost: evil.example\r\n\r\n",
    ),
    (
        "two Host headers",
        "GET {P} HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    ),
    ("no Host in HTTP/1.1", "GET {P} HTTP/1.1\r\nX-A: b\r\n\r\n"),
    ("Host with a space", "GET {P} HTTP/1.1\r\nHost: a b\r\n\r\n"),
    (
        "space inside the target",
        "GET {P} x HTTP/1.1\r\nHost: a\r\n\r\n",
    ),
    (
        "tabs between request-line parts",
        "GET\t{P}\tHTTP/1.1\r\nHost: a\r\n\r\n",
    ),
    (
        "empty lines before the request",
        "\r\n\r\nGET {P} HTTP/1.1\r\nHost: a\r\n\r\n",
    ),
    (
        "header line without a colon",
        "GET {P} HTTP/1.1\r\nHost: a\r\nX-A b\r\n\r\n",
    ),
    (
        "obs-fold in an ordinary header",
        "GET {P} HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n",
    ),
    (
        "HTTP/1.0 with TE chunked",
        "POST {P} HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{B}",
    ),
    (
        "GET with a Content-Length body",
        "GET {P} HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
    ),
    (
        "Connection: close, then more",
        "GET {P} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n{B}",
    ),
    (
        "Expect: 100-continue with its body",
        "POST {P} HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\nhello",
    ),
    (
        "h2c upgrade attempt",
        "GET {P} HTTP/1.1\r\nHost: a\r\nUpgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n{B}",
    ),
];

/// One case on a fresh connection, followed by `GET /after-N`: the client's bytes back, and whether the proxy
/// closed the connection. The follow-up's answer (or the close) ends the read; a proxy still waiting for body
/// bytes after 2 s gets our end of the connection closed, and then has 3 s to answer.
async fn exchange(proxy: SocketAddr, bytes: &[u8], after: &str, bytewise: bool) -> (String, bool) {
    let tcp = TcpStream::connect(proxy).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let mut sent = bytes.to_vec();
    sent.extend_from_slice(format!("GET {after} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes());
    let (mut rd, mut wr) = tcp.into_split();
    let writer = tokio::spawn(async move {
        if bytewise {
            for b in &sent {
                if wr.write_all(&[*b]).await.is_err() {
                    return wr;
                }
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
        } else {
            let _ = wr.write_all(&sent).await;
        }
        wr
    });
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    let mut closed = false;
    let mut writer = Some(writer);
    let mut half_closed = None;
    let start = tokio::time::Instant::now();
    let wanted = format!("ok:{after}");
    loop {
        if String::from_utf8_lossy(&got).contains(&wanted) {
            break;
        }
        let deadline = match half_closed {
            None => {
                start + Duration::from_secs(2) + Duration::from_micros(300 * bytes.len() as u64)
            }
            Some(at) => at + Duration::from_secs(3),
        };
        match tokio::time::timeout_at(deadline, rd.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) if half_closed.is_none() => {
                if let Some(w) = writer.take() {
                    let mut wr = w.await.unwrap();
                    let _ = wr.shutdown().await;
                }
                half_closed = Some(tokio::time::Instant::now());
            }
            Err(_) => break,
        }
    }
    if let Some(w) = writer.take() {
        w.abort();
    }
    (String::from_utf8_lossy(&got).into_owned(), closed)
}

/// The status codes of the responses in `text`, in order.
fn statuses(text: &str) -> Vec<u16> {
    text.match_indices("HTTP/1.1 ")
        .filter_map(|(i, _)| text.get(i + 9..i + 12)?.parse().ok())
        .collect()
}

/// The `ok:<path>` bodies in the client's bytes, in order (each backend answer names its request's path).
fn answered(text: &str) -> Vec<String> {
    text.split("ok:")
        .skip(1)
        .map(|rest| rest.split("HTTP/1.1 ").next().unwrap_or("").to_owned())
        .collect()
}

/// Checks one case's outcome; returns a description of what happened for the summary.
///
/// What a desync looks like from here: the backend sees a request the proxy did not parse as one (two out of
/// one), so answers and requests stop lining up — the client gets fewer answers than the backend got requests,
/// or the following request gets another's answer (poisoned). So: every request that reached the backend was
/// answered to the client, in order, as its own response; the follow-up, if it reached the backend, is exactly
/// what was sent; and the backend never got ambiguous framing.
fn judge(
    name: &str,
    mode: &str,
    i: usize,
    response: &str,
    closed: bool,
    seen: &[Seen],
) -> &'static str {
    let case_path = format!("/c{i}");
    let after = format!("/after-{i}");
    let ctx = || {
        format!(
            "case {i} {name:?} ({mode}): response {response:?}, closed {closed}, backend saw {seen:?}"
        )
    };
    for s in seen {
        assert!(s.hosts <= 1, "the backend got two Host headers: {}", ctx());
        assert!(
            s.content_lengths + s.transfer_encodings <= 1,
            "the backend got ambiguous framing: {}",
            ctx()
        );
    }
    // RFC 9112 3.2.2: with an absolute-form target, the target's authority is the host, whatever Host says.
    if name.starts_with("absolute-form") {
        if let Some(first) = seen.first() {
            assert_eq!(first.host, "a", "{}", ctx());
        }
    }
    let codes = statuses(response);
    if seen.is_empty() {
        let first = codes.first().copied().unwrap_or(0);
        // 501 is RFC 9112's answer to a transfer coding the server does not know.
        assert!(
            (400..500).contains(&first) || first == 501,
            "nothing reached the backend, so the client must get a 4xx: {}",
            ctx()
        );
        assert!(
            closed,
            "after a refusal the connection must close: {}",
            ctx()
        );
        assert_eq!(codes.len(), 1, "one answer, then the close: {}", ctx());
        return "refused (4xx or 501), closed";
    }
    assert!(
        seen[0].path.starts_with(&case_path),
        "the first request upstream is not the case's: {}",
        ctx()
    );
    // A request whose body turned out malformed after its head was forwarded: the proxy cut it upstream
    // (the backend saw its body end in an error) and told the client, then closed. It is the last thing sent.
    if let Some(k) = seen.iter().position(|s| s.body == b"<body error>") {
        assert_eq!(k, seen.len() - 1, "{}", ctx());
        let last = codes.last().copied().unwrap_or(0);
        assert!((400..600).contains(&last) && closed, "{}", ctx());
        let before: Vec<String> = seen[..k].iter().map(|s| s.path.clone()).collect();
        assert_eq!(answered(response), before, "{}", ctx());
        return "its body malformed: cut upstream, an error to the client, closed";
    }
    let paths: Vec<String> = seen.iter().map(|s| s.path.clone()).collect();
    assert_eq!(
        answered(response),
        paths,
        "answers and requests do not line up (a request split in two, or a poisoned answer): {}",
        ctx()
    );
    match seen.iter().position(|s| s.path == after) {
        Some(k) => {
            assert_eq!(k, seen.len() - 1, "{}", ctx());
            assert_eq!(
                seen[k].method,
                "GET",
                "the follow-up was poisoned: {}",
                ctx()
            );
            assert!(
                seen[k].body.is_empty(),
                "the follow-up was poisoned: {}",
                ctx()
            );
            if seen.len() == 2 {
                "the request, then the follow-up, both as sent"
            } else {
                "pipelined requests the proxy and backend read alike, then the follow-up"
            }
        }
        None => {
            let swallowed = seen
                .iter()
                .any(|s| String::from_utf8_lossy(&s.body).contains(&after));
            assert!(
                swallowed || closed,
                "the follow-up neither reached the backend nor was part of a body, yet the connection stayed: {}",
                ctx()
            );
            "one request; the rest was its body, or the connection closed after it"
        }
    }
}

async fn run_corpus(bytewise: bool) {
    let (backend, seen) = recording_backend().await;
    let server = start_proxy(&pool_config(
        &[backend],
        "[pools.p.retry]\nmax_retries = 0\n",
    ))
    .await;
    let proxy = server.listen_addrs[0];
    let mode = if bytewise {
        "byte by byte"
    } else {
        "one write"
    };
    let mut outcomes = std::collections::BTreeMap::<&str, usize>::new();
    for (i, (name, template)) in CASES.iter().enumerate() {
        let smuggled = format!("GET /smuggled-{i} HTTP/1.1\r\nHost: a\r\n\r\n");
        let bytes = template
            .replace("{B}", &smuggled)
            .replace("{P}", &format!("/c{i}"))
            .replace("{S}", &format!("/smuggled-{i}"));
        let (response, closed) =
            exchange(proxy, bytes.as_bytes(), &format!("/after-{i}"), bytewise).await;
        // Whatever the proxy forwards has been received by the time the client has its answer or the close;
        // give a request still on its way upstream a moment.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let got: Vec<Seen> = std::mem::take(&mut *seen.lock().unwrap());
        let outcome = judge(name, mode, i, &response, closed, &got);
        eprintln!("{mode} | {i} | {name} | {outcome}");
        *outcomes.entry(outcome).or_default() += 1;
        // The proxy still serves normally afterwards.
        let (status, _, body) = get(proxy, "/ok", None).await;
        assert_eq!(
            (status.as_u16(), body.as_str()),
            (200, "ok:/ok"),
            "after case {i} {name:?}"
        );
        seen.lock().unwrap().clear();
    }
    eprintln!("{} cases ({mode}): {outcomes:?}", CASES.len());
    server.shutdown().await;
}

#[test]
fn the_corpus_has_at_least_60_cases() {
    assert!(CASES.len() >= 60, "{}", CASES.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_desync_corpus_sent_in_one_write() {
    run_corpus(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_desync_corpus_sent_byte_by_byte() {
    run_corpus(true).await;
}

// ---- the same over HTTP/2 (h2c by prior knowledge), frame by frame ----

/// A header field as HPACK's "literal without indexing, new name" (no Huffman), short strings only.
fn hpack(out: &mut Vec<u8>, name: &str, value: &str) {
    assert!(name.len() < 127 && value.len() < 127);
    out.push(0x00);
    out.push(name.len() as u8);
    out.extend_from_slice(name.as_bytes());
    out.push(value.len() as u8);
    out.extend_from_slice(value.as_bytes());
}

fn frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    let len = payload.len() as u32;
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
}

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

/// HTTP/2 cases: the header list of stream 1 (`{P}` its path), and the DATA frames after it (the last one ends
/// the stream; none: the HEADERS frame ends it).
/// An HTTP/2 case: its name, the header list of stream 1, the DATA frames after it.
type H2Case = (
    &'static str,
    Vec<(&'static str, &'static str)>,
    Vec<&'static str>,
);

fn h2_cases() -> Vec<H2Case> {
    let base = || {
        vec![
            (":method", "POST"),
            (":scheme", "http"),
            (":authority", "a"),
            (":path", "{P}"),
        ]
    };
    let with = |extra: &[(&'static str, &'static str)]| {
        let mut h = base();
        h.extend_from_slice(extra);
        h
    };
    vec![
        ("unknown pseudo-header", with(&[(":foo", "bar")]), vec![]),
        (
            "pseudo-header after a regular one",
            {
                let mut h = vec![(":method", "GET"), (":scheme", "http"), ("x-a", "b")];
                h.extend([(":authority", "a"), (":path", "{P}")]);
                h
            },
            vec![],
        ),
        ("two :path", with(&[(":path", "/smuggled")]), vec![]),
        (
            "no :method",
            vec![(":scheme", "http"), (":authority", "a"), (":path", "{P}")],
            vec![],
        ),
        (
            "no :path",
            vec![(":method", "GET"), (":scheme", "http"), (":authority", "a")],
            vec![],
        ),
        (
            "empty :path",
            vec![
                (":method", "GET"),
                (":scheme", "http"),
                (":authority", "a"),
                (":path", ""),
            ],
            vec![],
        ),
        (
            "upper-case header name",
            with(&[("Content-Length", "5")]),
            vec!["hello"],
        ),
        (
            "connection header",
            with(&[("connection", "keep-alive")]),
            vec!["hello"],
        ),
        (
            "transfer-encoding header",
            with(&[("transfer-encoding", "chunked")]),
            vec!["0\r\n\r\n"],
        ),
        (
            "te other than trailers",
            with(&[("te", "gzip")]),
            vec!["hello"],
        ),
        (
            "keep-alive header",
            with(&[("keep-alive", "timeout=5")]),
            vec!["hello"],
        ),
        (
            "upgrade header",
            with(&[("upgrade", "websocket")]),
            vec!["hello"],
        ),
        (
            "content-length above the DATA sent",
            with(&[("content-length", "10")]),
            vec!["hello"],
        ),
        (
            "content-length below the DATA sent",
            with(&[("content-length", "3")]),
            vec!["hello"],
        ),
        (
            "two different content-lengths",
            with(&[("content-length", "5"), ("content-length", "50")]),
            vec!["hello"],
        ),
        (
            "CR LF inside a value",
            with(&[("x-a", "b\r\nx-smuggled: 1")]),
            vec!["hello"],
        ),
        (
            "NUL inside a value",
            with(&[("x-a", "b\0c")]),
            vec!["hello"],
        ),
        ("space inside a name", with(&[("x a", "b")]), vec!["hello"]),
        (
            "a request line smuggled in :path",
            with(&[])
                .into_iter()
                .map(|(k, v)| {
                    if k == ":path" {
                        (k, "{P} HTTP/1.1\r\nHost: a\r\n\r\nGET /smuggled")
                    } else {
                        (k, v)
                    }
                })
                .collect(),
            vec!["hello"],
        ),
    ]
}

/// Stream 1 carries the case, stream 3 `GET /after-N`. Returns DATA text per stream, whether stream 1 was
/// reset, and whether the connection was ended (GOAWAY or closed).
async fn h2_exchange(
    proxy: SocketAddr,
    headers: &[(&str, String)],
    data: &[&str],
    after: &str,
) -> (String, String, bool, bool) {
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    frame(&mut out, SETTINGS, 0, 0, &[]);
    let mut block = Vec::new();
    for (k, v) in headers {
        hpack(&mut block, k, v);
    }
    let flags = END_HEADERS | if data.is_empty() { END_STREAM } else { 0 };
    frame(&mut out, HEADERS, flags, 1, &block);
    for (i, d) in data.iter().enumerate() {
        let last = i + 1 == data.len();
        frame(
            &mut out,
            DATA,
            if last { END_STREAM } else { 0 },
            1,
            d.as_bytes(),
        );
    }
    let mut follow = Vec::new();
    for (k, v) in [
        (":method", "GET"),
        (":scheme", "http"),
        (":authority", "a"),
        (":path", after),
    ] {
        hpack(&mut follow, k, v);
    }
    frame(&mut out, HEADERS, END_HEADERS | END_STREAM, 3, &follow);
    let mut tcp = TcpStream::connect(proxy).await.unwrap();
    tcp.write_all(&out).await.unwrap();
    let (mut one, mut three, mut reset, mut ended) = (String::new(), String::new(), false, false);
    let mut buf = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    let mut chunk = [0u8; 8192];
    loop {
        // Parse whole frames.
        while buf.len() >= 9 {
            let len = u32::from_be_bytes([0, buf[0], buf[1], buf[2]]) as usize;
            if buf.len() < 9 + len {
                break;
            }
            let (kind, flags) = (buf[3], buf[4]);
            let stream = u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) & 0x7fff_ffff;
            let payload = buf[9..9 + len].to_vec();
            buf.drain(..9 + len);
            match (kind, stream) {
                (SETTINGS, 0) if flags & 1 == 0 => {
                    let mut ack = Vec::new();
                    frame(&mut ack, SETTINGS, 1, 0, &[]);
                    let _ = tcp.write_all(&ack).await;
                }
                (DATA, 1) => one.push_str(&String::from_utf8_lossy(&payload)),
                (DATA, 3) => three.push_str(&String::from_utf8_lossy(&payload)),
                (RST_STREAM, 1) => reset = true,
                (GOAWAY, _) => ended = true,
                _ => {}
            }
        }
        if three.contains(&format!("ok:{after}")) || ended {
            break;
        }
        match tokio::time::timeout_at(deadline, tcp.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                ended = true;
                break;
            }
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => break,
        }
    }
    (one, three, reset, ended)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http2_desync_corpus() {
    let (backend, seen) = recording_backend().await;
    let server = start_proxy(&pool_config(
        &[backend],
        "[pools.p.retry]\nmax_retries = 0\n",
    ))
    .await;
    let proxy = server.listen_addrs[0];
    for (i, (name, headers, data)) in h2_cases().into_iter().enumerate() {
        let path = format!("/h{i}");
        let after = format!("/after-h{i}");
        let headers: Vec<(&str, String)> = headers
            .into_iter()
            .map(|(k, v)| (k, v.replace("{P}", &path)))
            .collect();
        let (one, three, reset, ended) = h2_exchange(proxy, &headers, &data, &after).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        let got: Vec<Seen> = std::mem::take(&mut *seen.lock().unwrap());
        let ctx = format!(
            "h2 case {i} {name:?}: stream 1 {one:?} (reset {reset}), stream 3 {three:?}, ended {ended}, backend saw {got:?}"
        );
        // Never a request the client did not send as one, never a smuggled header or line.
        assert!(got.iter().all(|s| !s.path.contains("smuggled")), "{ctx}");
        for s in &got {
            assert!(s.content_lengths + s.transfer_encodings <= 1, "{ctx}");
            assert!(!s.smuggled_header, "{ctx}");
        }
        let case: Vec<&Seen> = got.iter().filter(|s| s.path == path).collect();
        let others: Vec<&Seen> = got
            .iter()
            .filter(|s| s.path != path && s.path != after)
            .collect();
        assert!(others.is_empty(), "{ctx}");
        assert!(case.len() <= 1, "{ctx}");
        match case.first() {
            // Refused: reset, a 4xx from the proxy, or the connection ended.
            None => assert!(reset || ended || one.contains("switchyard"), "{ctx}"),
            // Reached: the body was sent whole and answered, or cut and the stream reset.
            Some(s) if s.body == b"<body error>" => assert!(reset || ended, "{ctx}"),
            Some(_) => assert!(one.contains(&format!("ok:{path}")) || reset, "{ctx}"),
        }
        // The other stream on the same connection is untouched unless the whole connection was ended.
        if !ended {
            assert!(
                three.contains(&format!("ok:{after}")),
                "the next stream was harmed: {ctx}"
            );
            let followed: Vec<&Seen> = got.iter().filter(|s| s.path == after).collect();
            assert_eq!(followed.len(), 1, "{ctx}");
            assert!(
                followed[0].method == "GET" && followed[0].body.is_empty(),
                "{ctx}"
            );
        }
        eprintln!(
            "h2 | {i} | {name} | backend saw the case: {}, reset: {reset}, connection ended: {ended}",
            !case.is_empty()
        );
        let (status, _, _) = get(proxy, "/ok", None).await;
        assert_eq!(status, 200, "after h2 case {i} {name:?}");
        seen.lock().unwrap().clear();
    }
    server.shutdown().await;
}
