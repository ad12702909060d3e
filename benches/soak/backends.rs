//! The soak's backends, each killable (listener closed, every open connection cut) and started again on its
//! port: HTTP backends for the `web` and `dns` pools whose mode (normal, slow, failing) the chaos turns, a
//! WebSocket echo for `ws`, and an h2c echo of gRPC-style streams for `grpc`. Each counts its deaths, and tells
//! every connection the count it was opened in, so a client can tell "my backend died" from "the proxy cut me".

use std::collections::HashSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

use crate::common::{BoxBody, full};

pub const NORMAL: u8 = 0;
pub const SLOW: u8 = 1;
pub const FAILING: u8 = 2;
/// How long a slow backend takes over each answer.
pub const SLOW_BY: Duration = Duration::from_millis(150);

#[derive(Clone, Copy, PartialEq)]
pub enum Kind {
    Http,
    WebSocket,
    Stream,
}

/// The ids of the POSTs that reached a backend (their head arrived), whichever backend it was.
pub type Seen = Arc<Mutex<HashSet<u64>>>;

/// A backend's deaths: how many, and when the last was.
#[derive(Default)]
pub struct Deaths {
    pub count: AtomicU64,
    pub last: Mutex<Option<Instant>>,
}

impl Deaths {
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::SeqCst)
    }

    /// Did the backend die in the last `within`?
    pub fn within(&self, within: Duration) -> bool {
        self.last
            .lock()
            .unwrap()
            .is_some_and(|at| at.elapsed() < within)
    }
}

pub struct Backend {
    pub name: &'static str,
    pub addr: SocketAddr,
    kind: Kind,
    pub mode: Arc<AtomicU8>,
    pub deaths: Arc<Deaths>,
    seen: Seen,
    stop: Option<watch::Sender<bool>>,
}

impl Backend {
    pub async fn start(name: &'static str, kind: Kind, seen: Seen) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut backend = Self {
            name,
            addr: listener.local_addr().unwrap(),
            kind,
            mode: Arc::new(AtomicU8::new(NORMAL)),
            deaths: Arc::default(),
            seen,
            stop: None,
        };
        backend.serve(listener);
        backend
    }

    pub fn alive(&self) -> bool {
        self.stop.is_some()
    }

    /// Closes the listener and cuts every open connection; the death is counted first, so a client that sees
    /// its connection cut also sees the count grown.
    pub fn kill(&mut self) {
        if let Some(stop) = self.stop.take() {
            *self.deaths.last.lock().unwrap() = Some(Instant::now());
            self.deaths.count.fetch_add(1, Ordering::SeqCst);
            let _ = stop.send(true);
        }
    }

    /// Listens again on the same address.
    pub async fn restart(&mut self) {
        if self.alive() {
            return;
        }
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        self.serve(listener);
    }

    fn serve(&mut self, listener: TcpListener) {
        let (stop, stopped) = watch::channel(false);
        self.stop = Some(stop);
        let (name, kind) = (self.name, self.kind);
        let (mode, deaths, seen) = (self.mode.clone(), self.deaths.clone(), self.seen.clone());
        tokio::spawn(async move {
            let mut stopped_accept = stopped.clone();
            loop {
                let accepted = tokio::select! {
                    _ = stopped_accept.wait_for(|s| *s) => return,
                    a = listener.accept() => a,
                };
                let Ok((tcp, _)) = accepted else { continue };
                let epoch = deaths.count();
                let (mode, seen) = (mode.clone(), seen.clone());
                let mut stopped_conn = stopped.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        _ = connection(tcp, name, kind, epoch, mode, seen) => {}
                        _ = stopped_conn.wait_for(|s| *s) => {}
                    }
                });
            }
        });
    }
}

async fn connection(
    tcp: TcpStream,
    name: &'static str,
    kind: Kind,
    epoch: u64,
    mode: Arc<AtomicU8>,
    seen: Seen,
) {
    if kind == Kind::WebSocket {
        return websocket(tcp, name, epoch).await;
    }
    let service = service_fn(move |req: Request<Incoming>| {
        let (mode, seen) = (mode.clone(), seen.clone());
        async move { Ok::<_, Infallible>(answer(req, name, kind, epoch, &mode, &seen).await) }
    });
    let _ = auto::Builder::new(TokioExecutor::new())
        .serve_connection_with_upgrades(TokioIo::new(tcp), service)
        .await;
}

async fn answer(
    req: Request<Incoming>,
    name: &'static str,
    kind: Kind,
    epoch: u64,
    mode: &AtomicU8,
    seen: &Seen,
) -> Response<BoxBody> {
    let reply = Response::builder()
        .header("x-backend", name)
        .header("x-epoch", epoch);
    if req.uri().path() == "/healthz" {
        return reply.body(full("ok")).unwrap();
    }
    if kind == Kind::Stream {
        // Every frame of the request body comes straight back: a bidirectional stream.
        let echo = req.into_body().map_err(|e| Box::new(e) as _).boxed();
        return reply
            .header("content-type", "application/grpc")
            .body(echo)
            .unwrap();
    }
    if let Some(id) = req
        .headers()
        .get("x-soak-id")
        .and_then(|v| v.to_str().ok()?.parse().ok())
    {
        seen.lock().unwrap().insert(id);
    }
    match mode.load(Ordering::Relaxed) {
        FAILING => {
            return reply
                .status(503)
                .body(full("backend failing on purpose\n"))
                .unwrap();
        }
        SLOW => tokio::time::sleep(SLOW_BY).await,
        _ => {}
    }
    if req.method() == http::Method::POST {
        return match req.into_body().collect().await {
            Ok(body) => reply.body(full(body.to_bytes().len().to_string())).unwrap(),
            Err(_) => reply.status(400).body(full("")).unwrap(),
        };
    }
    let size: usize = req
        .uri()
        .path()
        .strip_prefix("/get/")
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    reply.body(full(Bytes::from(vec![b'g'; size]))).unwrap()
}

/// A WebSocket echo that first says who it is: `"<name> <epoch>"`.
async fn websocket(tcp: TcpStream, name: &'static str, epoch: u64) {
    let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
        return;
    };
    if ws
        .send(Message::text(format!("{name} {epoch}")))
        .await
        .is_err()
    {
        return;
    }
    while let Some(Ok(msg)) = ws.next().await {
        if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
            return;
        }
    }
}
