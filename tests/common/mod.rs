//! Test helpers: real backends on 127.0.0.1:0, the proxy started in-process from a TOML string, a real client.
#![allow(dead_code)]

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use switchyard::server::Server;

mod process;
mod scripted;
mod tls;
#[allow(unused_imports)]
pub use process::*;
#[allow(unused_imports)]
pub use scripted::*;
#[allow(unused_imports)]
pub use tls::*;

pub type BoxBody =
    http_body_util::combinators::BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

pub fn full(data: impl Into<Bytes>) -> BoxBody {
    Full::new(data.into())
        .map_err(|never| match never {})
        .boxed()
}

/// Makes a panic in any tokio task (switchyard's or a test backend's) fail the whole test binary loudly:
/// tokio would otherwise catch it and leave the test to time out or pass on a half-dead server.
pub fn fail_on_task_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            previous(info);
            let thread = std::thread::current();
            if thread
                .name()
                .is_some_and(|n| n.starts_with("tokio-runtime-worker"))
            {
                eprintln!("a task panicked: aborting the test binary");
                std::process::abort();
            }
        }));
    });
}

/// Starts an HTTP backend on 127.0.0.1:0 that answers every request with `handler`.
pub async fn backend<H, F>(handler: H) -> SocketAddr
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<BoxBody>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let handler = handler.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let fut = handler(req);
                    async move { Ok::<_, Infallible>(fut.await) }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    addr
}

/// A backend that answers 200 with its name in the body and in `x-backend`, after `delay`.
pub async fn named_backend(name: &'static str, delay: Duration) -> SocketAddr {
    backend(move |req: Request<Incoming>| async move {
        drop(req.into_body().collect().await);
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        Response::builder()
            .header("x-backend", name)
            .body(full(name))
            .unwrap()
    })
    .await
}

/// A backend that answers with a JSON echo of the request it saw: method, uri, version and headers.
pub async fn echo_backend() -> SocketAddr {
    backend(|req: Request<Incoming>| async move {
        let headers: Vec<(String, String)> = req
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let json = serde_json::json!({
            "method": req.method().as_str(),
            "uri": req.uri().to_string(),
            "version": format!("{:?}", req.version()),
            "headers": headers,
        });
        Response::builder()
            .header("content-type", "application/json")
            .header("connection", "x-upstream-hop")
            .header("x-upstream-hop", "secret")
            .header("keep-alive", "timeout=5")
            .header("x-upstream-kept", "yes")
            .body(full(json.to_string()))
            .unwrap()
    })
    .await
}

/// A port nothing listens on (bound, then closed), so connecting is refused.
pub async fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    addr
}

/// A backend that accepts connections and reads, but never answers.
pub async fn hanging_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut tcp, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n) = tcp.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
            });
        }
    });
    addr
}

/// Starts switchyard in-process on a config text.
pub async fn start_proxy(toml: &str) -> Server {
    fail_on_task_panics();
    let config = switchyard::config::parse(toml, "test.toml")
        .unwrap_or_else(|e| panic!("bad test config:\n{e}"));
    Server::start(config).await.unwrap()
}

/// A config with top-level keys `top` (they must come before any table), then [`config`]'s.
pub fn config_top(top: &str, rest: &str) -> String {
    format!("{top}\n{}", config(rest))
}

/// A minimal config: one listener and admin on port 0, plus `rest`.
pub fn config(rest: &str) -> String {
    format!(
        "[[listeners]]\naddress = \"127.0.0.1:0\"\n\n[admin]\naddress = \"127.0.0.1:0\"\n\n{rest}"
    )
}

pub fn client() -> Client<HttpConnector, BoxBody> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// A GET through the proxy; returns status, headers and body text.
pub async fn get(
    addr: SocketAddr,
    path: &str,
    host: Option<&str>,
) -> (StatusCode, http::HeaderMap, String) {
    let mut req = Request::get(format!("http://{addr}{path}"));
    if let Some(h) = host {
        req = req.header("host", h);
    }
    let resp = client().request(req.body(full("")).unwrap()).await.unwrap();
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

/// Sends raw bytes on a new connection and reads until the server closes it or `timeout` passes.
pub async fn raw(addr: SocketAddr, request: &[u8], timeout: Duration) -> String {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(timeout, tcp.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Polls `check` until it returns true or `deadline` passes.
pub async fn eventually<F, Fut>(deadline: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let end = tokio::time::Instant::now() + deadline;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() > end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A body of `len` deterministic bytes, produced in 64 KiB chunks as it is polled (never held whole).
pub struct PatternBody {
    pub remaining: u64,
    pub offset: u64,
}

impl PatternBody {
    pub fn new(len: u64) -> Self {
        Self {
            remaining: len,
            offset: 0,
        }
    }

    /// The byte at position `i` of every pattern body.
    pub fn byte_at(i: u64) -> u8 {
        (i.wrapping_mul(31) % 251) as u8
    }

    /// The SHA-256 of a pattern body of `len` bytes, computed without the proxy.
    pub fn sha256(len: u64) -> String {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        let mut body = PatternBody::new(len);
        while let Some(chunk) = body.next_chunk() {
            h.update(&chunk);
        }
        hex(&h.finalize())
    }

    fn next_chunk(&mut self) -> Option<Bytes> {
        if self.remaining == 0 {
            return None;
        }
        let n = self.remaining.min(64 * 1024);
        let chunk: Vec<u8> = (self.offset..self.offset + n).map(Self::byte_at).collect();
        self.offset += n;
        self.remaining -= n;
        Some(Bytes::from(chunk))
    }
}

impl Body for PatternBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Poll::Ready(self.get_mut().next_chunk().map(|c| Ok(Frame::data(c))))
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The value of one sample line in a Prometheus text exposition, e.g.
/// `switchyard_requests_total{backend="none",code="404",pool="none"}`; labels must be in sorted order.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .and_then(|v| v.trim().parse().ok())
}

pub async fn admin_get(server: &Server, path: &str) -> (StatusCode, String) {
    let (s, _, b) = get(server.admin_addr, path, None).await;
    (s, b)
}

pub fn shared_count(map: &std::collections::HashMap<String, usize>, key: &str) -> usize {
    map.get(key).copied().unwrap_or(0)
}

/// A backend whose answers the test controls: `status` for every path but `/healthz`, `health` for that one.
/// `hits` counts the non-health requests it received, `methods` remembers their methods.
pub struct Controlled {
    pub addr: SocketAddr,
    pub status: std::sync::Arc<std::sync::atomic::AtomicU16>,
    pub health: std::sync::Arc<std::sync::atomic::AtomicU16>,
    pub hits: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    pub health_hits: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Controlled {
    pub fn set_status(&self, status: u16) {
        self.status
            .store(status, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn set_health(&self, status: u16) {
        self.health
            .store(status, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn hits(&self) -> usize {
        self.hits.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn health_hits(&self) -> usize {
        self.health_hits.load(std::sync::atomic::Ordering::SeqCst)
    }
}

pub async fn controlled(name: &'static str, status: u16) -> Controlled {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
    let status = Arc::new(AtomicU16::new(status));
    let health = Arc::new(AtomicU16::new(200));
    let hits = Arc::new(AtomicUsize::new(0));
    let health_hits = Arc::new(AtomicUsize::new(0));
    let (s, h, n, hn) = (
        status.clone(),
        health.clone(),
        hits.clone(),
        health_hits.clone(),
    );
    let addr = backend(move |req: Request<Incoming>| {
        let (s, h, n, hn) = (s.clone(), h.clone(), n.clone(), hn.clone());
        async move {
            let code = if req.uri().path() == "/healthz" {
                hn.fetch_add(1, Ordering::SeqCst);
                h.load(Ordering::SeqCst)
            } else {
                n.fetch_add(1, Ordering::SeqCst);
                s.load(Ordering::SeqCst)
            };
            drop(req.into_body().collect().await);
            Response::builder()
                .status(code)
                .header("x-backend", name)
                .body(full(name))
                .unwrap()
        }
    })
    .await;
    Controlled {
        addr,
        status,
        health,
        hits,
        health_hits,
    }
}

/// `/api/pools` as JSON.
pub async fn pools(server: &Server) -> serde_json::Value {
    let (_, body) = admin_get(server, "/api/pools").await;
    serde_json::from_str(&body).unwrap()
}

/// A request with any method and body through the proxy.
pub async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &'static str,
) -> (StatusCode, String) {
    let req = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .body(full(body))
        .unwrap();
    let resp = client().request(req).await.unwrap();
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// A backend that can be killed (listener closed, open connections cut) and started again on the same port.
pub struct Killable {
    pub addr: SocketAddr,
    name: &'static str,
    stop: Option<tokio::sync::watch::Sender<bool>>,
    pub hits: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Killable {
    pub async fn start(name: &'static str) -> Self {
        let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut k = Self {
            addr: "127.0.0.1:0".parse().unwrap(),
            name,
            stop: None,
            hits,
        };
        k.addr = k.serve(TcpListener::bind("127.0.0.1:0").await.unwrap());
        k
    }

    fn serve(&mut self, listener: TcpListener) -> SocketAddr {
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::watch::channel(false);
        self.stop = Some(stop);
        let (name, hits) = (self.name, self.hits.clone());
        tokio::spawn(async move {
            let mut stopped_accept = stopped.clone();
            loop {
                let accepted = tokio::select! {
                    _ = stopped_accept.wait_for(|s| *s) => break,
                    a = listener.accept() => a,
                };
                let Ok((tcp, _)) = accepted else { continue };
                let hits = hits.clone();
                let mut stopped_conn = stopped.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let hits = hits.clone();
                        async move {
                            if req.uri().path() != "/healthz" {
                                hits.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            }
                            Ok::<_, Infallible>(
                                Response::builder()
                                    .header("x-backend", name)
                                    .body(full(name))
                                    .unwrap(),
                            )
                        }
                    });
                    let builder = auto::Builder::new(TokioExecutor::new());
                    let conn = builder.serve_connection(TokioIo::new(tcp), service);
                    tokio::select! {
                        _ = conn => {}
                        _ = stopped_conn.wait_for(|s| *s) => {}
                    }
                });
            }
        });
        addr
    }

    /// Closes the listener and cuts every open connection.
    pub fn kill(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(true);
        }
    }

    /// Listens again on the same address.
    pub async fn restart(&mut self) {
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        self.serve(listener);
    }

    pub fn hits(&self) -> usize {
        self.hits.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// A GET that may fail to connect (the server may not be up yet): `None` then.
pub async fn try_get(addr: SocketAddr, path: &str) -> Option<(StatusCode, String)> {
    let req = Request::get(format!("http://{addr}{path}"))
        .body(full(""))
        .ok()?;
    let resp = client().request(req).await.ok()?;
    let status = resp.status();
    let body = resp.into_body().collect().await.ok()?.to_bytes();
    Some((status, String::from_utf8_lossy(&body).into_owned()))
}

/// A config with one route to one pool `p` over `backends`; `extra` lines go under `[pools.p]`.
pub fn pool_config(backends: &[SocketAddr], extra: &str) -> String {
    let list: Vec<String> = backends
        .iter()
        .map(|a| format!("{{ address = \"{a}\" }}"))
        .collect();
    config(&format!(
        "[[routes]]\npool = \"p\"\n[pools.p]\nbackends = [{}]\n{extra}\n",
        list.join(", ")
    ))
}

/// Backend `addr` of pool `p` in an `/api/pools` answer (`null` if absent).
pub fn backend_json(pools: &serde_json::Value, addr: SocketAddr) -> &serde_json::Value {
    static NULL: serde_json::Value = serde_json::Value::Null;
    pools["pools"]["p"]["backends"]
        .as_array()
        .and_then(|list| list.iter().find(|b| b["address"] == addr.to_string()))
        .unwrap_or(&NULL)
}

/// Waits until every backend in `addrs` shows `healthy: false` in `/api/pools`.
pub async fn all_down(server: &Server, addrs: &[SocketAddr]) -> bool {
    eventually(Duration::from_secs(10), || async {
        let p = pools(server).await;
        addrs
            .iter()
            .all(|a| backend_json(&p, *a)["healthy"] == false)
    })
    .await
}

/// Replaces a file's content the way editors and deploy tools do: a new file renamed over the old one.
pub fn write_atomically(path: &std::path::Path, content: impl AsRef<[u8]>) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, content).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A log text without its terminal colour codes.
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
