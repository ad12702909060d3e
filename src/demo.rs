//! `switchyard demo`: small local upstreams for the example config, so a newcomer sees balancing at once.
//!
//! Each upstream answers with its name; the last one fails (500 on every path, `/healthz` included) for 10 s of
//! every 30 s, so health checks and circuit breakers have something to show.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::time::Instant;

/// How a demo upstream behaves.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Flaky {
    pub(crate) period: Duration,
    pub(crate) failing: Duration,
}

/// The demo's failure pattern: 10 s failing in every 30 s.
pub(crate) const DEMO_FLAKY: Flaky = Flaky {
    period: Duration::from_secs(30),
    failing: Duration::from_secs(10),
};

/// Binds a demo upstream and serves it in the background; returns its address.
pub(crate) async fn spawn_upstream(
    addr: SocketAddr,
    name: String,
    flaky: Option<Flaky>,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let started = Instant::now();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let name = name.clone();
            let service = service_fn(move |req: Request<Incoming>| {
                let failing = flaky.is_some_and(|f| {
                    let phase = started.elapsed().as_millis() % f.period.as_millis().max(1);
                    phase >= (f.period - f.failing).as_millis()
                });
                let (status, text) = if failing {
                    (
                        StatusCode::INTERNAL_SERVER_ERROR,
                        format!("{name}: failing on purpose (demo)\n"),
                    )
                } else if req.uri().path() == "/healthz" {
                    (StatusCode::OK, "ok\n".to_owned())
                } else {
                    (
                        StatusCode::OK,
                        format!("hello from {name} ({local}), you asked for {}\n", req.uri()),
                    )
                };
                let mut resp = Response::new(Full::new(Bytes::from(text)));
                *resp.status_mut() = status;
                if let Ok(v) = http::HeaderValue::from_str(&name) {
                    resp.headers_mut().insert("x-upstream", v);
                }
                async move { Ok::<_, Infallible>(resp) }
            });
            tokio::spawn(async move {
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    Ok(local)
}
