//! Bodies stream through the proxy both ways: a 64 MB upload and a 64 MB download arrive intact.
#![allow(clippy::disallowed_methods)] // wall-clock time against real processes and sockets

mod common;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use sha2::Digest;

use common::*;

const SIZE: u64 = 64 * 1024 * 1024;

/// A backend that hashes whatever it is sent (POST), or sends a pattern body of the requested size (GET).
async fn stream_backend() -> std::net::SocketAddr {
    backend(|req: Request<Incoming>| async move {
        if req.method() == http::Method::POST {
            let mut body = req.into_body();
            let mut hash = sha2::Sha256::new();
            let mut len = 0u64;
            while let Some(frame) = body.frame().await {
                if let Ok(data) = frame.unwrap().into_data() {
                    len += data.len() as u64;
                    hash.update(&data);
                }
            }
            Response::new(full(format!("{len} {}", hex(&hash.finalize()))))
        } else {
            let len: u64 = req.uri().query().and_then(|q| q.parse().ok()).unwrap_or(0);
            Response::new(PatternBody::new(len).boxed())
        }
    })
    .await
}

async fn proxy_for(backend: std::net::SocketAddr) -> switchyard::server::Server {
    start_proxy(&config(&format!(
        r#"
[[routes]]
pool = "p"
[pools.p]
backends = [{{ address = "{backend}" }}]
"#
    )))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_64mb_arrives_intact() {
    let server = proxy_for(stream_backend().await).await;
    let req = Request::post(format!("http://{}/upload", server.listen_addrs[0]))
        .body(PatternBody::new(SIZE).boxed())
        .unwrap();
    let resp = client().request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        String::from_utf8_lossy(&body),
        format!("{SIZE} {}", PatternBody::sha256(SIZE))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn download_64mb_arrives_intact() {
    let server = proxy_for(stream_backend().await).await;
    let req = Request::get(format!("http://{}/download?{SIZE}", server.listen_addrs[0]))
        .body(full(Bytes::new()))
        .unwrap();
    let resp: Response<Incoming> = client().request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut hash = sha2::Sha256::new();
    let mut len = 0u64;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            len += data.len() as u64;
            hash.update(&data);
        }
    }
    assert_eq!(len, SIZE);
    assert_eq!(hex(&hash.finalize()), PatternBody::sha256(SIZE));
}
