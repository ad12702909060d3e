//! The request as the upstream gets it: hop-by-hop headers out, forwarding headers in, the target and `Host` in
//! the form the pool speaks, the client's body watched; and a body-less request's copy, for a retry.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::uri::{Authority, PathAndQuery, Uri};
use http::{Request, Version};
use hyper::body::{Body as _, Incoming};
use tokio::time::Instant;

use super::headers;
use crate::config::Protocol;
use crate::error::ProxyError;
use crate::upstream::Outgoing;
use crate::upstream::request_body::{BodyWatch, ClientBody, RequestBody};

/// How a request is passed on.
pub(super) struct Forwarding {
    /// The client's address as an `X-Forwarded-For` value.
    pub(super) peer: HeaderValue,
    /// The peer is in `trusted_proxies`.
    pub(super) trusted: bool,
    /// `X-Forwarded-Proto` for this hop.
    pub(super) proto: headers::Scheme,
    /// An upgrade request: `Connection: upgrade` and `Upgrade` stay.
    pub(super) upgrade: bool,
    pub(super) protocol: Protocol,
}

/// How a request's body is read from the client.
pub(super) struct BodySetup {
    /// Body bytes, for the access log.
    pub(super) count: Option<Arc<AtomicU64>>,
    pub(super) limit: Option<u64>,
    pub(super) stall_timeout: Duration,
    pub(super) started: Instant,
}

/// Rewrites a client request for the upstream: hop-by-hop headers out, forwarding headers in; for HTTP/1.1
/// upstreams an origin-form target and `Host` (the target's authority when it has one: routing and the backend
/// see the same host), for HTTP/2 ones an absolute target (`:scheme`, `:authority`). A body is watched
/// ([`BodyWatch`]) so that a failure the client causes is told from one the backend causes.
pub(super) fn prepare(
    req: Request<Incoming>,
    how: &Forwarding,
    setup: BodySetup,
) -> Result<(Outgoing, Option<Arc<BodyWatch>>), ProxyError> {
    let http2_client = req.version() == Version::HTTP_2;
    let (mut parts, body) = req.into_parts();
    let authority = parts
        .uri
        .authority()
        .and_then(|a| HeaderValue::from_str(a.as_str()).ok());
    let original_host = authority
        .clone()
        .or_else(|| parts.headers.get(header::HOST).cloned());
    let upgrade = if how.upgrade {
        parts.headers.get(header::UPGRADE).cloned()
    } else {
        None
    };
    // A body of unknown length (chunked) stays chunked: hyper sends none for a GET without the header.
    let chunked = !body.is_end_stream() && !parts.headers.contains_key(header::CONTENT_LENGTH);
    headers::strip_hop_by_hop(&mut parts.headers);
    if let Some(token) = upgrade {
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        parts.headers.insert(header::UPGRADE, token);
    }
    headers::add_forwarded(
        &mut parts.headers,
        &how.peer,
        how.proto,
        original_host.clone(),
        how.trusted,
    );
    if how.protocol.is_http2() {
        parts.headers.remove(header::HOST);
        let authority = original_host
            .as_ref()
            .and_then(|h| Authority::try_from(h.as_bytes()).ok())
            .ok_or(ProxyError::BadRequest)?;
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        parts.uri = Uri::builder()
            .scheme(if how.protocol.is_tls() {
                "https"
            } else {
                "http"
            })
            .authority(authority)
            .path_and_query(path)
            .build()
            .map_err(|_| ProxyError::BadRequest)?;
        parts.version = Version::HTTP_2;
    } else {
        match authority {
            Some(target) => {
                parts.headers.insert(header::HOST, target);
            }
            None if !parts.headers.contains_key(header::HOST) => {
                if let Some(host) = original_host {
                    parts.headers.insert(header::HOST, host);
                }
            }
            None => {}
        }
        parts.version = Version::HTTP_11;
        if chunked {
            parts.headers.insert(
                header::TRANSFER_ENCODING,
                HeaderValue::from_static("chunked"),
            );
        }
        if parts.uri.scheme().is_some() || parts.uri.authority().is_some() {
            // Origin form from the parsed path: a clone shares its bytes, where a parse of the text copied them.
            let mut origin = http::uri::Parts::default();
            origin.path_and_query = Some(
                parts
                    .uri
                    .path_and_query()
                    .cloned()
                    .unwrap_or_else(|| PathAndQuery::from_static("/")),
            );
            parts.uri = Uri::from_parts(origin).map_err(|_| ProxyError::BadRequest)?;
        }
    }
    if body.is_end_stream() {
        return Ok((
            Box::new(Request::from_parts(parts, RequestBody::Empty)),
            None,
        ));
    }
    let watch = BodyWatch::new(setup.started);
    let body = ClientBody::new(
        body,
        setup.count,
        setup.limit,
        setup.stall_timeout,
        http2_client,
        Arc::clone(&watch),
    );
    let req = Request::from_parts(parts, RequestBody::Client(Box::new(body)));
    Ok((Box::new(req), Some(watch)))
}

/// The request's declared body length, if it declares one.
pub(super) fn content_length<B>(req: &Request<B>) -> Option<u64> {
    req.headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

/// A copy of a body-less request, for a retry after it was sent.
pub(super) fn copy_request(req: &Request<RequestBody>) -> Outgoing {
    let mut copy = Request::new(RequestBody::Empty);
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    Box::new(copy)
}
