//! Hostile upstreams, scripted at the byte level: each is answered with a clear status (or a cut the client can
//! see), and nothing is left stuck. (A head over the limit and a body that stalls are in `hardening.rs`.)
#![allow(clippy::disallowed_methods)] // wall-clock time against real sockets

mod common;

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use common::*;

/// An upstream that reads each request head and hands the connection to `answer`.
async fn upstream<F, Fut>(answer: F) -> SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let answer = Arc::new(answer);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let answer = Arc::clone(&answer);
            tokio::spawn(async move { answer(tcp).await });
        }
    });
    addr
}

/// Reads up to the end of a request head; false when the peer went away first.
async fn read_head(tcp: &mut TcpStream) -> bool {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
        match tcp.read(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
    true
}

async fn proxy_to(addr: SocketAddr, extra: &str) -> switchyard::server::Server {
    start_proxy(&pool_config(
        &[addr],
        &format!("[pools.p.timeouts]\nrequest = \"1s\"\n[pools.p.retry]\nmax_retries = 0\n{extra}"),
    ))
    .await
}

/// GET through the proxy: the status, and the body or the error that ended it.
async fn fetch(proxy: SocketAddr, path: &str) -> (u16, Result<Bytes, String>) {
    let resp = client()
        .request(
            http::Request::get(format!("http://{proxy}{path}"))
                .body(full(""))
                .unwrap(),
        )
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let body = tokio::time::timeout(Duration::from_secs(10), resp.into_body().collect())
        .await
        .expect("the body neither ended nor failed in 10 s");
    (
        status,
        body.map(|b| b.to_bytes()).map_err(|e| e.to_string()),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_in_the_middle_of_a_response_is_a_cut_the_client_sees() {
    let addr = upstream(|mut tcp| async move {
        if read_head(&mut tcp).await {
            let _ = tcp
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
                .await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            // RST, not FIN.
            let _ = tcp.set_zero_linger();
        }
    })
    .await;
    let server = proxy_to(addr, "").await;
    let (status, body) = fetch(server.listen_addrs[0], "/").await;
    assert_eq!(status, 200);
    assert!(
        body.is_err(),
        "a cut body must not end as if complete: {body:?}"
    );
    // Raw: the client is told 100 bytes and gets 10, then the close.
    let raw = raw(
        server.listen_addrs[0],
        b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(
        raw.to_ascii_lowercase().contains("content-length: 100"),
        "{raw}"
    );
    assert!(raw.ends_with("0123456789"), "{raw}");
    assert!(no_request_left(&server, Duration::from_secs(5)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_body_that_never_ends_or_has_a_broken_size_is_cut() {
    let endless = upstream(|mut tcp| async move {
        if read_head(&mut tcp).await {
            let _ = tcp
                .write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
                .await;
            tokio::time::sleep(Duration::from_secs(20)).await;
        }
    })
    .await;
    let broken = upstream(|mut tcp| async move {
        if read_head(&mut tcp).await {
            let _ = tcp
                .write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\nworld\r\n0\r\n\r\n")
                .await;
            tokio::time::sleep(Duration::from_secs(20)).await;
        }
    })
    .await;
    for (addr, what) in [(endless, "never ends"), (broken, "broken chunk size")] {
        let server = proxy_to(addr, "").await;
        let started = Instant::now();
        let (status, body) = fetch(server.listen_addrs[0], "/").await;
        assert_eq!(status, 200, "{what}");
        assert!(
            body.is_err(),
            "{what}: must not end as if complete: {body:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{what}: {:?}",
            started.elapsed()
        );
        assert!(
            no_request_left(&server, Duration::from_secs(5)).await,
            "{what}"
        );
        server.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_body_than_content_length_never_reaches_the_next_request() {
    // Every answer carries 5 bytes of body as promised, then a whole second response nobody asked for.
    let addr = upstream(|mut tcp| async move {
        while read_head(&mut tcp).await {
            let _ = tcp
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloHTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nPOISON")
                .await;
        }
    })
    .await;
    let server = proxy_to(addr, "").await;
    for i in 0..5 {
        let (status, body) = fetch(server.listen_addrs[0], &format!("/{i}")).await;
        assert_eq!(status, 200, "request {i}");
        assert_eq!(
            body.as_deref(),
            Ok(&b"hello"[..]),
            "request {i} got another's answer"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interim_1xx_responses_are_dropped_and_the_final_one_passes() {
    let addr = upstream(|mut tcp| async move {
        while read_head(&mut tcp).await {
            let _ = tcp
                .write_all(
                    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n\
                      HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
                )
                .await;
        }
    })
    .await;
    let server = proxy_to(addr, "").await;
    for _ in 0..3 {
        let (status, body) = fetch(server.listen_addrs[0], "/").await;
        assert_eq!((status, body.as_deref()), (200, Ok(&b"ok"[..])));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_1_0_backend_that_closes_to_end_the_body_is_passed_whole() {
    let addr = upstream(|mut tcp| async move {
        if read_head(&mut tcp).await {
            let _ = tcp
                .write_all(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n")
                .await;
            for _ in 0..100 {
                let _ = tcp.write_all(&[b'x'; 1000]).await;
            }
            // The close ends the body.
        }
    })
    .await;
    let server = proxy_to(addr, "").await;
    for _ in 0..3 {
        let (status, body) = fetch(server.listen_addrs[0], "/").await;
        assert_eq!(status, 200);
        assert_eq!(body.map(|b| b.len()), Ok(100_000));
    }
}

/// A request body of `len` bytes that counts what the proxy took from it.
struct CountedBody {
    left: u64,
    taken: Arc<AtomicU64>,
}

impl Body for CountedBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if this.left == 0 {
            return Poll::Ready(None);
        }
        let n = this.left.min(64 * 1024);
        this.left -= n;
        this.taken.fetch_add(n, Ordering::SeqCst);
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(vec![b'u'; n as usize])))))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_never_reads_an_upload_gets_a_timeout_and_the_upload_is_not_buffered() {
    let addr = upstream(|mut tcp| async move {
        // Reads the head, then nothing: the upload fills the socket buffers and stops.
        if read_head(&mut tcp).await {
            tokio::time::sleep(Duration::from_secs(20)).await;
        }
    })
    .await;
    let server = proxy_to(addr, "").await;
    let taken = Arc::new(AtomicU64::new(0));
    let body = CountedBody {
        left: 512 * 1024 * 1024,
        taken: Arc::clone(&taken),
    };
    let req = http::Request::post(format!("http://{}/upload", server.listen_addrs[0]))
        .header("content-length", (512u64 * 1024 * 1024).to_string())
        .body(body)
        .unwrap();
    let plain = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<CountedBody>();
    let started = Instant::now();
    let answer = tokio::time::timeout(Duration::from_secs(10), plain.request(req)).await;
    let took = started.elapsed();
    match answer {
        Ok(Ok(resp)) => assert!(
            resp.status() == 504 || resp.status() == 502,
            "{}",
            resp.status()
        ),
        // The proxy answered and closed while the client was still sending: also an answer.
        Ok(Err(e)) => eprintln!("the client saw the connection end while uploading: {e}"),
        Err(_) => panic!("no answer in 10 s"),
    }
    assert!(took < Duration::from_secs(5), "{took:?}");
    // Bounded by socket buffers on the way, not by the upload's size.
    let taken = taken.load(Ordering::SeqCst);
    eprintln!("the proxy took {} KiB of a 512 MiB upload", taken / 1024);
    assert!(
        taken < 64 * 1024 * 1024,
        "{taken} bytes taken: the upload was buffered"
    );
    assert!(no_request_left(&server, Duration::from_secs(5)).await);
}

/// A backend that answers `head`, then sends `body` one byte every `every`.
async fn trickler(head: &'static str, body: &'static [u8], every: Duration) -> SocketAddr {
    upstream(move |mut tcp| async move {
        if read_head(&mut tcp).await {
            if tcp.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            for byte in body {
                tokio::time::sleep(every).await;
                if tcp.write_all(std::slice::from_ref(byte)).await.is_err() {
                    return;
                }
            }
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_trickling_a_byte_at_a_time_is_cut_when_timeouts_request_runs_out() {
    // 100 bytes at one per 50 ms would take 5 s; no single silence comes near the 1 s timeout.
    static BODY: [u8; 100] = [b'x'; 100];
    let addr = trickler(
        "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n",
        &BODY,
        Duration::from_millis(50),
    )
    .await;
    let server = proxy_to(addr, "").await;
    let started = Instant::now();
    let (status, body) = fetch(server.listen_addrs[0], "/").await;
    let took = started.elapsed();
    assert_eq!(status, 200);
    assert!(body.is_err(), "a trickled body must be cut: {body:?}");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "cut after {took:?}, not near the 1 s timeout"
    );
    assert!(no_request_left(&server, Duration::from_secs(5)).await);
    let (_, metrics) = admin_get(&server, "/metrics").await;
    let series = format!(
        "switchyard_upstream_errors_total{{backend=\"{addr}\",kind=\"timeout\",pool=\"p\"}}"
    );
    assert_eq!(metric(&metrics, &series), Some(1.0), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_is_cut_only_by_a_silence_and_a_slow_client_is_not_charged_to_the_backend() {
    // Server-sent events: 30 events 100 ms apart (3 s in all, past the 1 s timeout) pass whole.
    static EVENTS: [u8; 30] = [b'.'; 30];
    let stream = trickler(
        "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: 30\r\n\r\n",
        &EVENTS,
        Duration::from_millis(100),
    )
    .await;
    let server = proxy_to(stream, "").await;
    let (status, body) = fetch(server.listen_addrs[0], "/").await;
    assert_eq!(status, 200);
    assert_eq!(body.as_deref().map(<[u8]>::len), Ok(30), "{body:?}");
    server.shutdown().await;

    // A backend that sends 8 MiB at once, read by a client that takes 3 s over it: the backend kept no one
    // waiting, so the 1 s timeout does not cut it.
    const SIZE: usize = 8 << 20;
    let fast = upstream(|mut tcp| async move {
        if read_head(&mut tcp).await {
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {SIZE}\r\n\r\n");
            let _ = tcp.write_all(head.as_bytes()).await;
            let _ = tcp.write_all(&vec![b'y'; SIZE]).await;
            tokio::time::sleep(Duration::from_secs(10)).await;
        }
    })
    .await;
    let server = proxy_to(fast, "").await;
    let resp = client()
        .request(
            http::Request::get(format!("http://{}/", server.listen_addrs[0]))
                .body(full(""))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let started = Instant::now();
    let mut got = 0;
    while let Some(frame) = tokio::time::timeout(Duration::from_secs(10), body.frame())
        .await
        .expect("the body neither ended nor failed in 10 s")
    {
        let frame = frame.unwrap_or_else(|e| panic!("cut after {got} bytes: {e}"));
        got += frame.data_ref().map_or(0, Bytes::len);
        // Paced to take about 3 s over the whole body.
        let due = Duration::from_secs_f64(3.0 * got as f64 / SIZE as f64);
        if let Some(wait) = due.checked_sub(started.elapsed()) {
            tokio::time::sleep(wait).await;
        }
    }
    assert_eq!(got, SIZE);
    assert!(started.elapsed() >= Duration::from_secs(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_502_says_whether_the_backend_closed_or_sent_something_that_is_not_http() {
    let closes = upstream(|mut tcp| async move {
        read_head(&mut tcp).await;
    })
    .await;
    let garbage = upstream(|mut tcp| async move {
        if read_head(&mut tcp).await {
            let _ = tcp.write_all(b"HELLO THERE\r\n\r\n").await;
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
    })
    .await;
    for (addr, reason) in [
        (
            closes,
            "the backend closed the connection before it answered",
        ),
        (garbage, "the backend's answer was not valid HTTP"),
    ] {
        let server = proxy_to(addr, "").await;
        let (status, body) = fetch(server.listen_addrs[0], "/").await;
        assert_eq!(status, 502);
        let body = body.unwrap();
        assert!(
            String::from_utf8_lossy(&body).contains(reason),
            "{reason}: {body:?}"
        );
        server.shutdown().await;
    }
}
