//! Mirroring: a share of a route's requests copied to another pool in the background, answers read and
//! discarded. The copy is the request as the primary backend gets it (forwarding headers and request ID
//! included, `Host` unchanged), its body copied as it streams to the primary, up to `max_body_bytes`. Nothing
//! of it is on the client's path: the client's answer, and its next request, never wait for a mirror; a
//! mirror's failure touches no breaker, outlier count or metric of the primary pool (nor of the mirror pool:
//! its backends are picked and counted in flight, never judged); at most `max_in_flight` mirrors of a route
//! run at once, the rest are dropped and counted.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::uri::{Authority, Uri};
use http::{Request, Version};
use http_body_util::BodyExt;
use tokio::time::Instant;

use crate::balance::pool::Tried;
use crate::router::Mirror;
use crate::upstream::request_body::{BodyCopy, RequestBody};
use crate::upstream::{self, Outgoing};

/// One mirror in flight for its route; dropping it ends the count.
struct Slot(Arc<Mirror>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Mirrors `req` (the request as the primary gets it): a copy of its head now, its body as it streams (a copy
/// taken from `req`'s body, which keeps flowing to the primary untouched).
pub(super) fn launch(mirror: &Arc<Mirror>, req: &mut Outgoing) {
    let taken = mirror.in_flight.fetch_add(1, Ordering::Relaxed);
    let slot = Slot(Arc::clone(mirror));
    if taken >= mirror.max_in_flight {
        mirror.counts.dropped.inc();
        return;
    }
    let head = super::copy_request(req);
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let body = match req.body_mut() {
        RequestBody::Client(client) if declared.is_none_or(|n| n <= mirror.max_body_bytes) => {
            let (copy, copied) = BodyCopy::new(mirror.max_body_bytes);
            client.copy = Some(copy);
            Some(copied)
        }
        RequestBody::Client(_) => {
            mirror.counts.skipped_body.inc();
            return;
        }
        RequestBody::Empty | RequestBody::Full(_) => None,
    };
    tokio::spawn(async move {
        let body = match body {
            None => Bytes::new(),
            Some(copied) => match copied.await {
                Ok(Some(parts)) => join(parts),
                Ok(None) => {
                    slot.0.counts.skipped_body.inc();
                    return;
                }
                // The client broke its body: the primary got nothing whole either.
                Err(_) => {
                    slot.0.counts.failed.inc();
                    return;
                }
            },
        };
        let counts = &slot.0.counts;
        if send(&slot.0, head, body).await {
            counts.sent.inc();
        } else {
            counts.failed.inc();
        }
    });
}

/// Sends the copy to a backend of the mirror pool and reads its answer to the end; `false` if that failed.
async fn send(mirror: &Mirror, mut head: Outgoing, body: Bytes) -> bool {
    let pool = &mirror.pool;
    let now = Instant::now();
    let Some((i, claimed)) = pool.pick(now, &mut Tried::default(), None) else {
        return false;
    };
    // A mirror never judges a backend: a half-open circuit's trial it claimed goes back unused (and only one
    // it claimed: another request's trial is not its to release).
    let trial = Trial(
        (claimed.backend().breaker.state() == crate::balance::breaker::State::HalfOpen)
            .then(|| std::sync::Arc::clone(claimed.backend())),
    );
    let Some(connections) = mirror.connections.get(i) else {
        return false;
    };
    if !body.is_empty() {
        head.headers_mut().remove(header::TRANSFER_ENCODING);
        head.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    }
    *head.body_mut() = RequestBody::Full((!body.is_empty()).then_some(body));
    if !speak(&mut head, pool.protocol.is_http2(), pool.protocol.is_tls()) {
        return false;
    }
    let timeouts = pool.timeouts;
    let exchange = async {
        let (resp, sender) = upstream::send(connections, head, now, &timeouts, false)
            .await
            .ok()?;
        let cap = upstream::keep_alive_cap(resp.headers());
        resp.into_body().collect().await.ok()?;
        connections.checkin(sender, Instant::now(), cap.min(timeouts.idle));
        Some(())
    };
    let answered = tokio::time::timeout(timeouts.connect + timeouts.request, exchange)
        .await
        .ok()
        .flatten()
        .is_some();
    drop((trial, claimed));
    answered
}

/// The half-open trial a mirror claimed, handed back when it is done.
struct Trial(Option<std::sync::Arc<crate::balance::backend::Backend>>);

impl Drop for Trial {
    fn drop(&mut self) {
        if let Some(backend) = &self.0 {
            backend.breaker.cancel_trial();
        }
    }
}

/// A body copied in parts, joined once.
fn join(parts: Vec<Bytes>) -> Bytes {
    match parts.len() {
        0 => Bytes::new(),
        1 => parts.into_iter().next().unwrap_or_default(),
        _ => {
            let mut whole = bytes::BytesMut::with_capacity(parts.iter().map(Bytes::len).sum());
            for part in parts {
                whole.extend_from_slice(&part);
            }
            whole.freeze()
        }
    }
}

/// Puts the copy in the form the mirror pool speaks (the primary's may differ): an absolute target for
/// HTTP/2, origin-form with `Host` for HTTP/1.1. `false` when the request has no host to say.
fn speak(req: &mut Request<RequestBody>, http2: bool, tls: bool) -> bool {
    let host = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
        });
    let path = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    if http2 {
        let Some(authority) = host.and_then(|h| Authority::try_from(h.as_str()).ok()) else {
            return false;
        };
        req.headers_mut().remove(header::HOST);
        let built = Uri::builder()
            .scheme(if tls { "https" } else { "http" })
            .authority(authority)
            .path_and_query(path)
            .build();
        let Ok(uri) = built else { return false };
        *req.uri_mut() = uri;
        *req.version_mut() = Version::HTTP_2;
    } else {
        if let Some(h) = host.and_then(|h| HeaderValue::from_str(&h).ok()) {
            req.headers_mut().insert(header::HOST, h);
        }
        let Ok(uri) = Uri::try_from(path) else {
            return false;
        };
        *req.uri_mut() = uri;
        *req.version_mut() = Version::HTTP_11;
    }
    true
}
