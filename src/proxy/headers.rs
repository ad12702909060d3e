//! Header rewriting on the way through: hop-by-hop headers out, forwarding headers in.

use std::net::IpAddr;

use http::HeaderMap;
use http::header::{self, HeaderName, HeaderValue};

/// Headers that describe one connection, never the message (RFC 9110 §7.6.1), plus the legacy ones.
const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

pub(crate) static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub(crate) static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub(crate) static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// The same names as [`HOP_BY_HOP`], made once: removing by a ready `HeaderName` parses nothing.
static HOP_BY_HOP_NAMES: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

const CONNECTION_AT: usize = 0;
const TE_AT: usize = 3;

/// Removes the hop-by-hop headers and every header that `Connection` names; `TE: trailers` stays (gRPC needs
/// it, and HTTP/2 allows it).
///
/// Runs twice per request. One pass over the names finds what is there, so a message without hop-by-hop
/// headers costs no lookups, and the usual `Connection: keep-alive` or `close` costs the removal of
/// `Connection` alone. Other `Connection` values are split into tokens, and a token names another header
/// only if a pass over the names finds it. Nothing allocates unless `Connection` names a header that is there.
/// (A single pass over names and values instead measured 200 instructions more per request.)
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let mut present = [false; 7];
    let mut any = false;
    for name in headers.keys() {
        if let Some(i) = hop_by_hop_index(name) {
            present[i] = true;
            any = true;
        }
    }
    if !any {
        return;
    }
    let te_trailers = present[TE_AT]
        && headers.get(header::TE).is_some_and(|v| {
            v.to_str().is_ok_and(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
            })
        });
    let mut named: Vec<HeaderName> = Vec::new();
    if present[CONNECTION_AT] {
        for value in headers.get_all(header::CONNECTION) {
            let names_none = match connection_value(value) {
                Connection::KeepAlive => true,
                // `close` names no header unless one is called that.
                Connection::Close => !headers.keys().any(|n| n.as_str() == "close"),
                Connection::Options => false,
            };
            if names_none {
                continue;
            }
            for token in value.to_str().unwrap_or("").split(',').map(str::trim) {
                let is_hop_by_hop = HOP_BY_HOP.iter().any(|h| h.eq_ignore_ascii_case(token));
                if token.is_empty() || is_hop_by_hop {
                    continue;
                }
                if let Some(name) = headers
                    .keys()
                    .find(|n| n.as_str().eq_ignore_ascii_case(token))
                {
                    named.push(name.clone());
                }
            }
        }
    }
    for name in &named {
        headers.remove(name);
    }
    for (name, here) in HOP_BY_HOP_NAMES.iter().zip(present) {
        if here {
            headers.remove(name);
        }
    }
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// The position of `name` in [`HOP_BY_HOP`]: the length and first letter choose the one candidate, and one
/// comparison of text settles it (far cheaper than comparing `HeaderName`s, or the text of all seven).
fn hop_by_hop_index(name: &HeaderName) -> Option<usize> {
    let name = name.as_str();
    let first = name.as_bytes().first().copied();
    let at = match (name.len(), first) {
        (10, Some(b'c')) => 0,
        (10, _) => 1,
        (16, _) => 2,
        (2, _) => 3,
        (7, Some(b't')) => 4,
        (17, _) => 5,
        (7, _) => 6,
        _ => return None,
    };
    (HOP_BY_HOP[at] == name).then_some(at)
}

/// A `Connection` value, told without splitting it into tokens when it is one of the usual two.
#[derive(Debug, PartialEq, Eq)]
enum Connection {
    KeepAlive,
    Close,
    /// Anything else: tokens, which may name headers.
    Options,
}

fn connection_value(value: &HeaderValue) -> Connection {
    let value = value.as_bytes();
    if value.eq_ignore_ascii_case(b"keep-alive") {
        Connection::KeepAlive
    } else if value.eq_ignore_ascii_case(b"close") {
        Connection::Close
    } else {
        Connection::Options
    }
}

/// Is this an HTTP/1.1 upgrade request (`Connection: upgrade` and an `Upgrade` header)?
pub(crate) fn is_upgrade<B>(req: &http::Request<B>) -> bool {
    req.version() == http::Version::HTTP_11
        && req.headers().contains_key(header::UPGRADE)
        && req.headers().get_all(header::CONNECTION).iter().any(|v| {
            v.to_str().is_ok_and(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
        })
}

pub(crate) static FORWARDED: HeaderName = HeaderName::from_static("forwarded");

/// Sets the forwarding headers. From a trusted proxy (`trusted_proxies`), the peer is appended to
/// `X-Forwarded-For` and the proxy's `X-Forwarded-Proto`/`-Host` and `Forwarded` are kept; from anyone else they
/// are replaced, so a client cannot spoof its address: `X-Forwarded-For` is the peer alone, `Forwarded` is
/// dropped, and `X-Forwarded-Proto` and `X-Forwarded-Host` describe this hop.
pub fn add_forwarded(
    headers: &mut HeaderMap,
    peer: &HeaderValue,
    proto: Scheme,
    host: Option<HeaderValue>,
    trusted: bool,
) {
    let previous = if trusted {
        join_values(headers, &X_FORWARDED_FOR)
    } else {
        None
    };
    let value = match previous {
        Some(previous) => {
            let peer = peer.to_str().unwrap_or("");
            HeaderValue::from_str(&format!("{previous}, {peer}")).ok()
        }
        None => Some(peer.clone()),
    };
    if let Some(v) = value {
        headers.insert(X_FORWARDED_FOR.clone(), v);
    }
    if trusted {
        if !headers.contains_key(&X_FORWARDED_PROTO) {
            headers.insert(X_FORWARDED_PROTO.clone(), proto.value());
        }
        if let (false, Some(host)) = (headers.contains_key(&X_FORWARDED_HOST), host) {
            headers.insert(X_FORWARDED_HOST.clone(), host);
        }
    } else {
        headers.remove(&FORWARDED);
        headers.insert(X_FORWARDED_PROTO.clone(), proto.value());
        match host {
            Some(host) => headers.insert(X_FORWARDED_HOST.clone(), host),
            None => headers.remove(&X_FORWARDED_HOST),
        };
    }
}

/// The scheme the client spoke to this proxy, for `X-Forwarded-Proto`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

static HTTP: HeaderValue = HeaderValue::from_static("http");
static HTTPS: HeaderValue = HeaderValue::from_static("https");

impl Scheme {
    /// A clone of a value made once: `HeaderValue::from_static` checks every byte again when called at run time.
    fn value(self) -> HeaderValue {
        match self {
            Self::Http => HTTP.clone(),
            Self::Https => HTTPS.clone(),
        }
    }
}

/// The peer's address as an `X-Forwarded-For` value, made once per connection.
pub fn peer_value(peer: IpAddr) -> HeaderValue {
    HeaderValue::from_str(&canonical(peer).to_string())
        .unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// An IPv4 peer on a dual-stack socket shows as `::ffff:a.b.c.d`; log and forward it as `a.b.c.d`.
pub(crate) fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// All values of a header joined with ", " (the list form), or `None` when absent or not text.
fn join_values(headers: &HeaderMap, name: &HeaderName) -> Option<String> {
    let mut out: Option<String> = None;
    for v in headers.get_all(name) {
        let text = v.to_str().ok()?.trim();
        if text.is_empty() {
            continue;
        }
        match &mut out {
            Some(s) => {
                s.push_str(", ");
                s.push_str(text);
            }
            None => out = Some(text.to_owned()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_named_headers_go() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, X-Secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("gzip"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn every_connection_value_counts_and_plain_messages_stay() {
        let mut h = HeaderMap::new();
        h.append(header::CONNECTION, HeaderValue::from_static("close"));
        h.append(header::CONNECTION, HeaderValue::from_static("X-A, , x-b"));
        h.insert("x-a", HeaderValue::from_static("1"));
        h.insert("x-b", HeaderValue::from_static("1"));
        h.insert("x-c", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.keys().collect::<Vec<_>>(), ["x-c"]);

        let mut plain = HeaderMap::new();
        plain.insert(header::HOST, HeaderValue::from_static("a.b"));
        plain.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        let before = plain.clone();
        strip_hop_by_hop(&mut plain);
        assert_eq!(plain, before);
    }

    #[test]
    fn hop_by_hop_names_are_found_by_text() {
        for (i, name) in HOP_BY_HOP.into_iter().enumerate() {
            assert_eq!(hop_by_hop_index(&HeaderName::from_static(name)), Some(i));
        }
        assert_eq!(hop_by_hop_index(&header::CONNECTION), Some(0));
        assert_eq!(hop_by_hop_index(&header::CONTENT_LENGTH), None);
        // Same length (and first letter) as a hop-by-hop name, but another header.
        for other in [
            "connectiox",
            "x-forwards",
            "proxy-connectioz",
            "tx",
            "trailed",
            "upgradx",
            "transfer-encodinx",
            "x",
            "",
        ] {
            let found = HeaderName::from_bytes(other.as_bytes())
                .ok()
                .and_then(|name| hop_by_hop_index(&name));
            assert_eq!(found, None, "{other}");
        }
        assert_eq!(hop_by_hop_index(&header::REFERER), None);
        let names: Vec<&str> = HOP_BY_HOP_NAMES.iter().map(HeaderName::as_str).collect();
        assert_eq!(names, HOP_BY_HOP);
        assert_eq!(HOP_BY_HOP[CONNECTION_AT], "connection");
        assert_eq!(HOP_BY_HOP[TE_AT], "te");
    }

    #[test]
    fn connection_options_that_name_no_header_remove_only_connection() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("Keep-Alive, close"),
        );
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("3"));
        h.insert("closer", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        let mut left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["closer", "content-length"]);

        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("CLOSE"));
        h.insert("close", HeaderValue::from_static("1"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        strip_hop_by_hop(&mut h);
        assert_eq!(
            h.keys().collect::<Vec<_>>(),
            ["te"],
            "a header the options name goes too"
        );
    }

    #[test]
    fn only_the_usual_connection_values_skip_the_tokens() {
        for (usual, is) in [
            ("keep-alive", Connection::KeepAlive),
            ("Keep-Alive", Connection::KeepAlive),
            ("close", Connection::Close),
            ("CLOSE", Connection::Close),
        ] {
            assert_eq!(connection_value(&HeaderValue::from_static(usual)), is);
        }
        for other in ["keep-alive, x-a", "close,x-a", "x-a", "closed", ""] {
            let value = HeaderValue::from_static(other);
            assert_eq!(connection_value(&value), Connection::Options, "{other}");
        }
        let mut h = HeaderMap::new();
        h.append(header::CONNECTION, HeaderValue::from_static("close"));
        h.append(header::CONNECTION, HeaderValue::from_static("x-a"));
        h.insert("x-a", HeaderValue::from_static("1"));
        h.insert("x-b", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(
            h.keys().collect::<Vec<_>>(),
            ["x-b"],
            "a later value still counts"
        );

        let mut h = HeaderMap::new();
        h.insert("close", HeaderValue::from_static("1"));
        h.insert("x-b", HeaderValue::from_static("1"));
        h.insert(header::CONNECTION, HeaderValue::from_static("Close"));
        strip_hop_by_hop(&mut h);
        assert_eq!(
            h.keys().collect::<Vec<_>>(),
            ["x-b"],
            "`close` names a header called that"
        );
    }

    #[test]
    fn peer_values_are_canonical() {
        assert_eq!(peer_value("::ffff:10.1.2.3".parse().unwrap()), "10.1.2.3");
        assert_eq!(peer_value("2001:db8::1".parse().unwrap()), "2001:db8::1");
    }

    #[test]
    fn te_trailers_stays_for_grpc() {
        let mut h = HeaderMap::new();
        h.insert(header::TE, HeaderValue::from_static("gzip, Trailers"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.get(header::TE).unwrap(), "trailers");
    }

    #[test]
    fn forwarded_for_appends_for_trusted_peers() {
        let mut h = HeaderMap::new();
        h.append(&X_FORWARDED_FOR, HeaderValue::from_static("1.1.1.1"));
        h.append(&X_FORWARDED_FOR, HeaderValue::from_static("2.2.2.2"));
        add_forwarded(
            &mut h,
            &peer_value("10.0.0.1".parse().unwrap()),
            Scheme::Http,
            Some(HeaderValue::from_static("a.b")),
            true,
        );
        assert_eq!(h[&X_FORWARDED_FOR], "1.1.1.1, 2.2.2.2, 10.0.0.1");
        assert_eq!(h[&X_FORWARDED_PROTO], "http");
        assert_eq!(h[&X_FORWARDED_HOST], "a.b");
    }
    #[test]
    fn untrusted_peers_cannot_spoof() {
        let mut h = HeaderMap::new();
        h.append(&X_FORWARDED_FOR, HeaderValue::from_static("1.1.1.1"));
        h.append(&X_FORWARDED_PROTO, HeaderValue::from_static("https"));
        h.append(&X_FORWARDED_HOST, HeaderValue::from_static("evil.example"));
        h.append(&FORWARDED, HeaderValue::from_static("for=1.1.1.1"));
        let host = Some(HeaderValue::from_static("a.b"));
        add_forwarded(
            &mut h,
            &peer_value("10.0.0.1".parse().unwrap()),
            Scheme::Http,
            host,
            false,
        );
        assert_eq!(h[&X_FORWARDED_FOR], "10.0.0.1");
        assert_eq!(h[&X_FORWARDED_PROTO], "http");
        assert_eq!(h[&X_FORWARDED_HOST], "a.b");
        assert!(!h.contains_key(&FORWARDED));
    }
}
