//! Real backends on 127.0.0.1:0: answering by a handler, named, echoing, hanging, controlled, killable.
#![allow(dead_code)]

use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

#[allow(unused_imports)]
use super::*;

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
