//! Real clients: a hyper client and the request helpers, raw bytes on a socket, streamed bodies.
#![allow(dead_code)]

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[allow(unused_imports)]
use super::*;

pub type BoxBody =
    http_body_util::combinators::BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

pub fn full(data: impl Into<Bytes>) -> BoxBody {
    Full::new(data.into())
        .map_err(|never| match never {})
        .boxed()
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
