//! The clients: what each sends, how long it waits, and how every answer is judged.
//!
//! A request that gets no answer within [`DEADLINE`] is a hang. A GET (idempotent) must succeed: the chaos
//! keeps at least one healthy backend in each pool, so a failed GET is a failure of the proxy. A POST may fail
//! only with 502/503/504 and a reason, after its body went out (never "could not connect" or "no backend").
//! A WebSocket or a stream may be closed only by the death of its own backend.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, StatusCode};
use http_body::Frame;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::Message;

use crate::common::{BoxBody, full};
use crate::rng::Rng;

/// The longest any request may wait for its whole answer: far past the pool's timeouts and retries.
pub const DEADLINE: Duration = Duration::from_secs(15);

/// Successes and failures of one kind of request, with the first few failures described.
#[derive(Default)]
pub struct Tally {
    pub total: u64,
    pub failed: u64,
    pub examples: Vec<String>,
}

impl Tally {
    fn record(&mut self, result: Result<(), String>) {
        self.total += 1;
        if let Err(what) = result {
            self.failed += 1;
            if self.examples.len() < 5 {
                self.examples.push(what);
            }
        }
    }
}

/// Long-lived connections (WebSockets, streams).
#[derive(Default)]
pub struct Lived {
    pub opened: u64,
    pub open_failed: Tally,
    /// Could not open because a backend of the pool had just died.
    pub open_cut_by_backend: u64,
    pub messages: u64,
    pub ended: u64,
    /// Closed because their own backend died.
    pub cut_by_backend: u64,
    /// Closed for any other reason: failures.
    pub cut: Tally,
}

#[derive(Default)]
pub struct Stats {
    /// GETs by client: HTTP/1.1 keep-alive, HTTP/1.1 a new connection each, HTTP/2 over TLS, the DNS pool.
    pub gets: BTreeMap<&'static str, Tally>,
    /// POSTs: `failed` counts only the failures not allowed.
    pub posts: Tally,
    /// POSTs that failed after their body went out, by status.
    pub posts_cut: BTreeMap<u16, u64>,
    pub hangs: u64,
    /// Every status the clients got from the proxy's listeners.
    pub statuses: BTreeMap<u16, u64>,
    pub websockets: Lived,
    pub streams: Lived,
}

pub struct Load {
    pub stats: Mutex<Stats>,
    pub plain: SocketAddr,
    pub tls: SocketAddr,
    pub connector: TlsConnector,
    pub until: Instant,
    /// Deaths so far per backend name, to judge a closed WebSocket or stream.
    pub deaths: BTreeMap<&'static str, Arc<crate::backends::Deaths>>,
    /// The POST ids a backend saw.
    pub seen: crate::backends::Seen,
    pub ids: AtomicU64,
}

impl Load {
    fn running(&self) -> bool {
        Instant::now() < self.until
    }

    fn status(&self, status: StatusCode) {
        *self
            .stats
            .lock()
            .unwrap()
            .statuses
            .entry(status.as_u16())
            .or_default() += 1;
    }

    fn died_since(&self, backend: &str, epoch: u64) -> bool {
        self.deaths.get(backend).is_some_and(|d| d.count() > epoch)
    }

    /// Did a backend of the pool whose names start with `pool` die in the last 3 s (the proxy's health checks
    /// see it within about 0.6 s; an attempt already on its way may still meet it)?
    fn pool_lost_a_backend(&self, pool: &str) -> bool {
        self.deaths
            .iter()
            .any(|(name, d)| name.starts_with(pool) && d.within(Duration::from_secs(3)))
    }

    /// A WebSocket or stream that could not open: allowed when a backend of its pool had just died (its
    /// request met the dying backend), with a 502/503 and the proxy's reason; a failure otherwise.
    fn open_failed(&self, pool: &str, lived: impl Fn(&mut Stats) -> &mut Lived, what: String) {
        let allowed = self.pool_lost_a_backend(pool);
        let mut stats = self.stats.lock().unwrap();
        let lived = lived(&mut stats);
        if allowed {
            lived.open_cut_by_backend += 1;
        } else {
            lived.open_failed.record(Err(what));
        }
    }

    fn record_get(&self, what: &'static str, result: Result<(), String>) {
        self.stats
            .lock()
            .unwrap()
            .gets
            .entry(what)
            .or_default()
            .record(result);
    }

    fn next_id(&self) -> u64 {
        self.ids.fetch_add(1, Ordering::Relaxed)
    }
}

/// Starts every client; they stop by themselves at `load.until`.
pub fn start(load: &Arc<Load>, seed: u64) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    let mut seeds = Rng::new(seed ^ 0x10ad);
    let mut spawn = |f: tokio::task::JoinHandle<()>| tasks.push(f);
    let keepalive = Client::builder(TokioExecutor::new()).build_http::<BoxBody>();
    for _ in 0..3 {
        spawn(tokio::spawn(gets(
            load.clone(),
            keepalive.clone(),
            "HTTP/1.1 keep-alive",
            None,
            seeds.next(),
        )));
    }
    spawn(tokio::spawn(gets(
        load.clone(),
        keepalive.clone(),
        "DNS-discovered pool",
        Some("dns.soak"),
        seeds.next(),
    )));
    spawn(tokio::spawn(new_connection_gets(
        load.clone(),
        seeds.next(),
    )));
    for _ in 0..2 {
        spawn(tokio::spawn(posts(
            load.clone(),
            keepalive.clone(),
            seeds.next(),
        )));
    }
    spawn(tokio::spawn(http2_over_tls(load.clone(), seeds.next())));
    for _ in 0..3 {
        spawn(tokio::spawn(websockets(load.clone(), seeds.next())));
        spawn(tokio::spawn(streams(load.clone(), seeds.next())));
    }
    tasks
}

/// Waits between two requests of one client: 5-15 ms.
async fn pace(rng: &mut Rng) {
    tokio::time::sleep(Duration::from_millis(rng.range(5, 15))).await;
}

/// The whole answer (status and body) within the deadline; `None` is a hang.
async fn whole(
    sent: impl Future<Output = Result<http::Response<Incoming>, String>>,
) -> Option<Result<(StatusCode, Bytes), String>> {
    tokio::time::timeout(DEADLINE, async {
        let resp = sent.await?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("{status}, then the body failed: {e}"))?;
        Ok((status, body.to_bytes()))
    })
    .await
    .ok()
}

fn judge_get(
    load: &Load,
    answer: Option<Result<(StatusCode, Bytes), String>>,
    size: usize,
) -> Result<(), String> {
    let Some(answer) = answer else {
        load.stats.lock().unwrap().hangs += 1;
        return Err(format!("no answer in {DEADLINE:?}"));
    };
    let (status, body) = answer?;
    load.status(status);
    if status != StatusCode::OK {
        return Err(format!(
            "{status}: {}",
            String::from_utf8_lossy(&body).trim()
        ));
    }
    if body.len() != size {
        return Err(format!("200 with {} bytes, not {size}", body.len()));
    }
    Ok(())
}

fn get_request(uri: String, host: Option<&str>, id: u64) -> Request<BoxBody> {
    let mut req = Request::get(uri).header("x-soak-id", id);
    if let Some(h) = host {
        req = req.header("host", h);
    }
    req.body(full("")).unwrap()
}

async fn gets(
    load: Arc<Load>,
    client: Client<HttpConnector, BoxBody>,
    what: &'static str,
    host: Option<&'static str>,
    seed: u64,
) {
    let mut rng = Rng::new(seed);
    while load.running() {
        let size = rng.range(0, 4096) as usize;
        let req = get_request(
            format!("http://{}/get/{size}", load.plain),
            host,
            load.next_id(),
        );
        let answer = whole(async {
            client
                .request(req)
                .await
                .map_err(|e| format!("client: {e:?}"))
        })
        .await;
        let result = judge_get(&load, answer, size);
        load.record_get(what, result);
        pace(&mut rng).await;
    }
}

async fn new_connection_gets(load: Arc<Load>, seed: u64) {
    let mut rng = Rng::new(seed);
    while load.running() {
        let size = rng.range(0, 4096) as usize;
        let req = get_request(format!("/get/{size}"), Some("soak.test"), load.next_id());
        let plain = load.plain;
        let answer = whole(async move {
            let tcp = TcpStream::connect(plain)
                .await
                .map_err(|e| format!("connect: {e}"))?;
            let (mut sender, conn) = http1::handshake(TokioIo::new(tcp))
                .await
                .map_err(|e| format!("handshake: {e}"))?;
            tokio::spawn(conn);
            sender
                .send_request(req)
                .await
                .map_err(|e| format!("send: {e}"))
        })
        .await;
        let result = judge_get(&load, answer, size);
        load.record_get("HTTP/1.1 new connection each", result);
        pace(&mut rng).await;
    }
}

async fn posts(load: Arc<Load>, client: Client<HttpConnector, BoxBody>, seed: u64) {
    let mut rng = Rng::new(seed);
    while load.running() {
        let size = rng.range(1, 32 * 1024) as usize;
        let id = load.next_id();
        let req = Request::post(format!("http://{}/post", load.plain))
            .header("x-soak-id", id)
            .body(full(vec![b'p'; size]))
            .unwrap();
        let answer = whole(async {
            client
                .request(req)
                .await
                .map_err(|e| format!("client: {e:?}"))
        })
        .await;
        let result = judge_post(&load, answer, size, id);
        load.stats.lock().unwrap().posts.record(result);
        pace(&mut rng).await;
    }
}

/// A POST may fail only after its body went out: 502/503/504 with a reason, and never for want of a backend
/// or a connection (those must be retried, or there was a healthy backend to take it).
fn judge_post(
    load: &Load,
    answer: Option<Result<(StatusCode, Bytes), String>>,
    size: usize,
    id: u64,
) -> Result<(), String> {
    let Some(answer) = answer else {
        load.stats.lock().unwrap().hangs += 1;
        return Err(format!("no answer in {DEADLINE:?}"));
    };
    let (status, body) = answer?;
    load.status(status);
    let reason = String::from_utf8_lossy(&body).trim().to_owned();
    if status == StatusCode::OK {
        return if reason == size.to_string() {
            Ok(())
        } else {
            Err(format!("200 saying {reason}, not {size}"))
        };
    }
    let sent = load.seen.lock().unwrap().contains(&id)
        || !(reason.contains("could not connect") || reason.contains("no backend"));
    if matches!(status.as_u16(), 502..=504) && !reason.is_empty() && sent {
        *load
            .stats
            .lock()
            .unwrap()
            .posts_cut
            .entry(status.as_u16())
            .or_default() += 1;
        return Ok(());
    }
    Err(format!("{status}: {reason}"))
}

/// A TLS connection to the proxy's TLS listener, speaking HTTP/2.
async fn h2_connect(load: &Load, sni: &str) -> Result<http2::SendRequest<BoxBody>, String> {
    let tcp = TcpStream::connect(load.tls)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let name = ServerName::try_from(sni.to_owned()).map_err(|e| e.to_string())?;
    let tls = load
        .connector
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS: {e}"))?;
    let (sender, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
        .await
        .map_err(|e| format!("h2 handshake: {e}"))?;
    tokio::spawn(conn);
    Ok(sender)
}

/// GETs and POSTs, four at a time, multiplexed on one HTTP/2 connection over TLS (a new one when it closes).
async fn http2_over_tls(load: Arc<Load>, seed: u64) {
    let mut rng = Rng::new(seed);
    let mut sender: Option<http2::SendRequest<BoxBody>> = None;
    while load.running() {
        let s = match &sender {
            Some(s) if !s.is_closed() => s.clone(),
            _ => match h2_connect(&load, "soak.test").await {
                Ok(s) => {
                    sender = Some(s.clone());
                    s
                }
                Err(e) => {
                    load.record_get("HTTP/2 over TLS", Err(e));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let mut batch = Vec::new();
        for _ in 0..4 {
            let (load, mut s) = (load.clone(), s.clone());
            let (size, post) = (rng.range(0, 4096) as usize, rng.range(0, 4) == 0);
            batch.push(tokio::spawn(async move {
                let id = load.next_id();
                let req = if post {
                    Request::post("https://soak.test/post")
                        .header("x-soak-id", id)
                        .body(full(vec![b'p'; size]))
                        .unwrap()
                } else {
                    get_request(format!("https://soak.test/get/{size}"), None, id)
                };
                let answer =
                    whole(async { s.send_request(req).await.map_err(|e| format!("h2: {e}")) })
                        .await;
                if post {
                    let result = judge_post(&load, answer, size, id);
                    load.stats.lock().unwrap().posts.record(result);
                } else {
                    let result = judge_get(&load, answer, size);
                    load.record_get("HTTP/2 over TLS", result);
                }
            }));
        }
        for t in batch {
            let _ = t.await;
        }
        pace(&mut rng).await;
    }
}

/// WebSockets through the proxy, each living 5-20 s and echoing a message every 100 ms.
async fn websockets(load: Arc<Load>, seed: u64) {
    let mut rng = Rng::new(seed);
    while load.running() {
        let lifetime = Duration::from_millis(rng.range(5_000, 20_000));
        websocket(&load, lifetime).await;
        tokio::time::sleep(Duration::from_millis(rng.range(50, 300))).await;
    }
}

async fn websocket(load: &Load, lifetime: Duration) {
    let opened = tokio::time::timeout(DEADLINE, async {
        let tcp = TcpStream::connect(load.plain)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        tokio_tungstenite::client_async("ws://ws.soak/chat", tcp)
            .await
            .map_err(|e| match e {
                tokio_tungstenite::tungstenite::Error::Http(resp) => {
                    load.status(resp.status());
                    format!("upgrade refused: {}", resp.status())
                }
                e => format!("upgrade: {e}"),
            })
    })
    .await;
    let mut ws = match opened {
        Ok(Ok((ws, resp))) => {
            load.status(resp.status());
            ws
        }
        Ok(Err(e)) => return load.open_failed("ws", |s| &mut s.websockets, e),
        Err(_) => {
            load.stats.lock().unwrap().hangs += 1;
            return load
                .stats
                .lock()
                .unwrap()
                .websockets
                .open_failed
                .record(Err("upgrade hung".into()));
        }
    };
    // The backend says who it is first.
    let hello = tokio::time::timeout(DEADLINE, ws.next()).await;
    let Ok(Some(Ok(Message::Text(hello)))) = hello else {
        let what = format!("no greeting: {hello:?}");
        return load.open_failed("ws", |s| &mut s.websockets, what);
    };
    let (backend, epoch) = parse_greeting(&hello);
    {
        let mut stats = load.stats.lock().unwrap();
        stats.websockets.opened += 1;
        stats.websockets.open_failed.record(Ok(()));
    }
    let end = Instant::now() + lifetime;
    let mut n = 0u64;
    let outcome: Result<(), String> = async {
        while Instant::now() < end && load.running() {
            let text = format!("m{n}");
            ws.send(Message::text(text.clone()))
                .await
                .map_err(|e| format!("send: {e}"))?;
            match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
                Ok(Some(Ok(Message::Text(t)))) if t.as_str() == text => {}
                other => return Err(format!("after {n} messages: {other:?}")),
            }
            n += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = ws.close(None).await;
        Ok(())
    }
    .await;
    let mut stats = load.stats.lock().unwrap();
    stats.websockets.messages += n;
    match outcome {
        Ok(()) => stats.websockets.ended += 1,
        Err(_) if load.died_since(&backend, epoch) => stats.websockets.cut_by_backend += 1,
        Err(e) => stats.websockets.cut.record(Err(format!("{backend}: {e}"))),
    }
}

fn parse_greeting(text: &str) -> (String, u64) {
    let mut words = text.split(' ');
    let name = words.next().unwrap_or("").to_owned();
    (name, words.next().and_then(|e| e.parse().ok()).unwrap_or(0))
}

/// A request body fed from a channel, for a stream that sends as it goes.
struct Channel(mpsc::Receiver<Bytes>);

impl http_body::Body for Channel {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.0.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
    }
}

/// gRPC-style bidirectional streams over HTTP/2 and TLS to an h2c pool, each living 5-20 s, a message every
/// 100 ms echoed back on the same stream.
async fn streams(load: Arc<Load>, seed: u64) {
    let mut rng = Rng::new(seed);
    while load.running() {
        let lifetime = Duration::from_millis(rng.range(5_000, 20_000));
        stream(&load, lifetime).await;
        tokio::time::sleep(Duration::from_millis(rng.range(50, 300))).await;
    }
}

async fn stream(load: &Load, lifetime: Duration) {
    let (tx, rx) = mpsc::channel::<Bytes>(4);
    let opened = tokio::time::timeout(DEADLINE, async {
        let mut sender = h2_connect(load, "grpc.soak").await?;
        let req = Request::post("https://grpc.soak/soak.Echo/Chat")
            .header("content-type", "application/grpc")
            .body(BodyExt::boxed(Channel(rx)))
            .unwrap();
        sender
            .send_request(req)
            .await
            .map_err(|e| format!("h2: {e}"))
    })
    .await;
    let resp = match opened {
        Ok(Ok(resp)) => resp,
        Ok(Err(e)) => return load.open_failed("grpc", |s| &mut s.streams, e),
        Err(_) => {
            load.stats.lock().unwrap().hangs += 1;
            return load
                .stats
                .lock()
                .unwrap()
                .streams
                .open_failed
                .record(Err("no answer".into()));
        }
    };
    load.status(resp.status());
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let (backend, epoch) = (header("x-backend"), header("x-epoch").parse().unwrap_or(0));
    if resp.status() != StatusCode::OK {
        let what = format!("{}", resp.status());
        return load.open_failed("grpc", |s| &mut s.streams, what);
    }
    {
        let mut stats = load.stats.lock().unwrap();
        stats.streams.opened += 1;
        stats.streams.open_failed.record(Ok(()));
    }
    let mut body = resp.into_body();
    let mut echoed = Vec::new();
    let end = Instant::now() + lifetime;
    let mut n = 0u64;
    let outcome: Result<(), String> = async {
        while Instant::now() < end && load.running() {
            let message = format!("s{n:07}");
            tx.send(Bytes::from(message.clone()))
                .await
                .map_err(|_| "the request body closed".to_owned())?;
            while echoed.len() < message.len() {
                match tokio::time::timeout(Duration::from_secs(5), body.frame()).await {
                    Ok(Some(Ok(frame))) => {
                        echoed.extend_from_slice(frame.data_ref().map_or(&[][..], |d| d))
                    }
                    other => return Err(format!("after {n} messages: {other:?}")),
                }
            }
            if echoed[..message.len()] != *message.as_bytes() {
                return Err(format!(
                    "message {n} came back as {:?}",
                    String::from_utf8_lossy(&echoed)
                ));
            }
            echoed.drain(..message.len());
            n += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        drop(tx);
        // The backend ends its side when ours ends.
        match tokio::time::timeout(Duration::from_secs(5), body.collect()).await {
            Ok(Ok(_)) => Ok(()),
            other => Err(format!("at the end: {other:?}")),
        }
    }
    .await;
    let mut stats = load.stats.lock().unwrap();
    stats.streams.messages += n;
    match outcome {
        Ok(()) => stats.streams.ended += 1,
        Err(_) if load.died_since(&backend, epoch) => stats.streams.cut_by_backend += 1,
        Err(e) => stats.streams.cut.record(Err(format!("{backend}: {e}"))),
    }
}
