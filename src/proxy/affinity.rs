//! What keeps a request with a backend: the key consistent hashing hashes, and the sticky cookie. Read from the
//! request once, before the first pick; retries probe onward from the same key.

use std::net::IpAddr;
use std::num::NonZeroU64;

use http::header::{self, HeaderMap};
use http::{Request, Response};

use crate::balance::backend::InFlight;
use crate::balance::pool::{Pool, Tried};
use crate::balance::sticky::{Cookie, cookie};
use crate::config::HashKey;

/// A request's affinity, decided before its first pick.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Affinity {
    /// The hashed key (`consistent_hash`); `None`: balanced by least connections. (Non-zero: the request's
    /// future stays small.)
    key: Option<NonZeroU64>,
    /// What the sticky cookie says, for a pool with one.
    cookie: Option<Cookie>,
}

impl Affinity {
    /// Reads `req`'s key and sticky cookie for `pool`. `client` is the client's address (after trusted proxies).
    pub(super) fn of<B>(pool: &Pool, req: &Request<B>, client: impl FnOnce() -> IpAddr) -> Self {
        let key = pool
            .hash_key
            .as_ref()
            .and_then(|k| hash_key(k, req, client))
            .map(|h| NonZeroU64::new(h).unwrap_or(NonZeroU64::MIN));
        let cookie = pool
            .sticky
            .as_ref()
            .map(|s| s.lookup(cookie(req.headers(), &s.cookie)));
        Self { key, cookie }
    }

    /// The hashed key, for consistent hashing.
    #[inline]
    pub(super) fn key(&self) -> Option<u64> {
        self.key.map(NonZeroU64::get)
    }

    /// The backend the sticky cookie names, when it may take the request now (claimed, and noted in `tried`);
    /// counts the cookie's outcome.
    pub(super) fn follow_cookie(
        &self,
        pool: &Pool,
        now: tokio::time::Instant,
        tried: &mut Tried,
    ) -> Option<(usize, InFlight)> {
        let (Some(sticky), Some(cookie)) = (&pool.sticky, self.cookie) else {
            return None;
        };
        let counts = &sticky.counts;
        match cookie {
            Cookie::Missing => counts.missing.inc(),
            Cookie::Invalid => counts.invalid.inc(),
            Cookie::Names(i) => match pool.pick_named(i as usize, now, tried) {
                Some(claimed) => {
                    counts.hit.inc();
                    return Some((i as usize, claimed));
                }
                None => counts.unavailable.inc(),
            },
        }
        None
    }

    /// Sets the sticky cookie on the response of backend `served`, unless the client's cookie names it already
    /// (a cookie with `max_age` is sent again then, so an active client's does not expire mid-session, but not
    /// counted as new). `tls`: the client came over TLS (the cookie is `Secure` by default then).
    pub(super) fn stick<B>(&self, pool: &Pool, served: usize, tls: bool, resp: &mut Response<B>) {
        let Some(sticky) = &pool.sticky else { return };
        let kept = self.cookie == Some(Cookie::Names(served as u32));
        if kept && !sticky.expires {
            return;
        }
        if let Some(value) = sticky.set_cookie(served, tls) {
            resp.headers_mut().append(header::SET_COOKIE, value.clone());
            if !kept {
                sticky.counts.new.inc();
            }
        }
    }
}

/// The backend `req`'s sticky cookie sends it to in `pool`, as the proxy finds it (for the bench).
pub fn follow_sticky_cookie<B>(
    pool: &Pool,
    req: &Request<B>,
    now: tokio::time::Instant,
    tried: &mut Tried,
) -> Option<usize> {
    Affinity::of(pool, req, || IpAddr::from([127, 0, 0, 1]))
        .follow_cookie(pool, now, tried)
        .map(|(i, _)| i)
}

/// The request's key for `key`, hashed (the same way in every instance); `None` when the request has none.
fn hash_key<B>(key: &HashKey, req: &Request<B>, client: impl FnOnce() -> IpAddr) -> Option<u64> {
    let hash = twox_hash::XxHash3_64::oneshot;
    match key {
        HashKey::ClientIp => Some(match client() {
            IpAddr::V4(ip) => hash(&ip.octets()),
            IpAddr::V6(ip) => hash(&ip.octets()),
        }),
        HashKey::Header(name) => req
            .headers()
            .get(name)
            .map(|v| v.as_bytes())
            .filter(|v| !v.is_empty())
            .map(hash),
        HashKey::Cookie(name) => cookie(req.headers(), name)
            .filter(|v| !v.is_empty())
            .map(hash),
        HashKey::Path => Some(hash(req.uri().path().as_bytes())),
        HashKey::PathAndQuery => Some(hash(
            req.uri()
                .path_and_query()
                .map_or(req.uri().path(), |p| p.as_str())
                .as_bytes(),
        )),
    }
}

/// The client's address: the peer's, or, from a trusted proxy, the last address in `X-Forwarded-For` that is not
/// a trusted proxy's (the first, when all are). A hop that is not an address (`ip` or `ip:port`) ends the walk at
/// the peer: what lies left of it cannot be told from what the client wrote.
pub(super) fn client_ip(
    headers: &HeaderMap,
    peer: IpAddr,
    trusted: bool,
    trusted_proxies: &[ipnet::IpNet],
) -> IpAddr {
    if !trusted {
        return peer;
    }
    let mut leftmost = None;
    for value in headers
        .get_all(&super::headers::X_FORWARDED_FOR)
        .iter()
        .rev()
    {
        let Ok(text) = value.to_str() else {
            return peer;
        };
        for hop in text.rsplit(',') {
            let hop = hop.trim();
            let Some(ip) = hop
                .parse::<IpAddr>()
                .ok()
                .or_else(|| hop.parse::<std::net::SocketAddr>().ok().map(|a| a.ip()))
                .map(super::headers::canonical)
            else {
                return peer;
            };
            if !trusted_proxies.iter().any(|net| net.contains(&ip)) {
                return ip;
            }
            leftmost = Some(ip);
        }
    }
    leftmost.unwrap_or(peer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn cookies_are_found_by_exact_name() {
        let h = headers(&[("cookie", "a=1; sy_app=\"xyz\" ; b=2"), ("cookie", "c=3")]);
        assert_eq!(cookie(&h, "sy_app"), Some(&b"xyz"[..]));
        assert_eq!(cookie(&h, "c"), Some(&b"3"[..]));
        assert_eq!(cookie(&h, "sy"), None);
        assert_eq!(cookie(&h, "app"), None);
        assert_eq!(cookie(&headers(&[("cookie", "=; ;;a")]), "a"), None);
    }

    #[test]
    fn the_client_is_the_last_untrusted_hop() {
        let nets: Vec<ipnet::IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let peer: IpAddr = "10.0.0.1".parse().unwrap();
        let h = headers(&[("x-forwarded-for", "1.1.1.1, 2.2.2.2, 10.0.0.5")]);
        assert_eq!(
            client_ip(&h, peer, true, &nets),
            "2.2.2.2".parse::<IpAddr>().unwrap()
        );
        assert_eq!(client_ip(&h, peer, false, &nets), peer);
        let all = headers(&[("x-forwarded-for", "10.1.1.1, 10.0.0.5")]);
        assert_eq!(
            client_ip(&all, peer, true, &nets),
            "10.1.1.1".parse::<IpAddr>().unwrap()
        );
        let junk = headers(&[("x-forwarded-for", "nonsense")]);
        assert_eq!(client_ip(&junk, peer, true, &nets), peer);
        // A forged address left of a hop that is not one is never taken.
        let broken = headers(&[("x-forwarded-for", "6.6.6.6, garbage, 10.0.0.5")]);
        assert_eq!(client_ip(&broken, peer, true, &nets), peer);
        let ported = headers(&[("x-forwarded-for", "1.1.1.1, 2.2.2.2:4711, [::1]:80")]);
        assert_eq!(
            client_ip(&ported, peer, true, &nets),
            "::1".parse::<IpAddr>().unwrap()
        );
    }
}
