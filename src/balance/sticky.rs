//! Sticky sessions: a cookie that names the backend a client was sent to, so its next requests go there too.
//!
//! The cookie's value names a backend opaquely: an HMAC of the backend's address, never the address itself.
//! With `secret_file`, every instance sharing the key makes and accepts the same values, and nobody without the
//! key can make one for a backend (only replay one they were given); without it the key is a fixed one, so values
//! are still stable across instances, but only a digest. Values are computed when the pool is built; a request's
//! lookup is a binary search over the pool's values, with no hashing on the request path.

use std::sync::Arc;

use http::HeaderValue;
use prometheus::IntCounter;
use ring::hmac;

use crate::balance::backend::Backend;
use crate::config::{SameSite, StickySettings};
use crate::observe::metrics::Metrics;

/// The key when no `secret_file` is given: public, so values are a digest, not a signature.
const FIXED_KEY: &[u8] = b"switchyard sticky cookie: no secret_file";
/// Bytes of the HMAC in a cookie value (hex-encoded: twice as many characters).
const ID_BYTES: usize = 16;

pub(crate) struct Sticky {
    pub(crate) cookie: String,
    /// The cookie has a `Max-Age` (so it is refreshed on every answer).
    pub(crate) expires: bool,
    /// Backend indexes by the first 8 bytes of their id, sorted for a binary search.
    by_id: Vec<(u64, u32)>,
    /// Each backend's id, by index.
    ids: Vec<[u8; ID_BYTES]>,
    /// Each backend's `Set-Cookie` value: for a plain and for a TLS listener.
    set_cookie: Vec<[HeaderValue; 2]>,
    pub(crate) counts: StickyCounts,
}

/// `switchyard_sticky_total{pool,result}`.
pub(crate) struct StickyCounts {
    pub(crate) hit: IntCounter,
    pub(crate) new: IntCounter,
    pub(crate) missing: IntCounter,
    pub(crate) invalid: IntCounter,
    pub(crate) unavailable: IntCounter,
}

/// What a request's cookie says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cookie {
    /// No cookie of this name.
    Missing,
    /// Malformed, tampered with, or naming no backend of the pool.
    Invalid,
    /// It names backend `i`.
    Names(u32),
}

impl Sticky {
    pub(crate) fn new(
        pool: &str,
        settings: &StickySettings,
        backends: &[Arc<Backend>],
        metrics: &Metrics,
    ) -> Self {
        let key = hmac::Key::new(
            hmac::HMAC_SHA256,
            settings.secret.as_deref().unwrap_or(FIXED_KEY),
        );
        let ids: Vec<[u8; ID_BYTES]> = backends
            .iter()
            .map(|b| {
                let tag = hmac::sign(&key, b.address.as_bytes());
                let mut id = [0u8; ID_BYTES];
                id.copy_from_slice(&tag.as_ref()[..ID_BYTES]);
                id
            })
            .collect();
        let mut by_id: Vec<(u64, u32)> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| (prefix(id), i as u32))
            .collect();
        by_id.sort_unstable();
        let set_cookie = ids
            .iter()
            .map(|id| [false, true].map(|tls| set_cookie(settings, &hex(id), tls)))
            .collect();
        let count = |result: &str| {
            metrics
                .balancing
                .sticky_total
                .with_label_values(&[pool, result])
        };
        Self {
            cookie: settings.cookie.clone(),
            expires: settings.max_age.is_some(),
            by_id,
            ids,
            set_cookie,
            counts: StickyCounts {
                hit: count("hit"),
                new: count("new"),
                missing: count("missing"),
                invalid: count("invalid"),
                unavailable: count("unavailable"),
            },
        }
    }

    /// The backend a cookie value names.
    #[inline]
    pub(crate) fn lookup(&self, value: Option<&[u8]>) -> Cookie {
        let Some(value) = value else {
            return Cookie::Missing;
        };
        let Some(id) = unhex(value) else {
            return Cookie::Invalid;
        };
        let first = prefix(&id);
        let at = self.by_id.partition_point(|&(p, _)| p < first);
        self.by_id[at..]
            .iter()
            .take_while(|&&(p, _)| p == first)
            .map(|&(_, i)| i)
            .find(|&i| self.ids[i as usize] == id)
            .map_or(Cookie::Invalid, Cookie::Names)
    }

    /// The `Set-Cookie` value naming backend `i`, for a TLS listener or not.
    pub(crate) fn set_cookie(&self, i: usize, tls: bool) -> Option<&HeaderValue> {
        self.set_cookie.get(i).map(|v| &v[usize::from(tls)])
    }
}

/// The value of the cookie `name` in the request's `Cookie` headers (RFC 6265 `name=value` pairs separated by
/// `;`), without surrounding quotes; the first if several.
pub(crate) fn cookie<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a [u8]> {
    let name = name.as_bytes();
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b';'))
        .find_map(|pair| {
            let pair = pair.trim_ascii();
            let value = pair.strip_prefix(name)?.strip_prefix(b"=")?.trim_ascii();
            Some(
                value
                    .strip_prefix(b"\"")
                    .and_then(|v| v.strip_suffix(b"\""))
                    .unwrap_or(value),
            )
        })
}

fn prefix(id: &[u8; ID_BYTES]) -> u64 {
    let mut first = [0u8; 8];
    first.copy_from_slice(&id[..8]);
    u64::from_be_bytes(first)
}

fn hex(id: &[u8]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

/// Lowercase hex of exactly [`ID_BYTES`] bytes.
#[inline]
fn unhex(text: &[u8]) -> Option<[u8; ID_BYTES]> {
    if text.len() != 2 * ID_BYTES {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut id = [0u8; ID_BYTES];
    for (byte, pair) in id.iter_mut().zip(text.chunks_exact(2)) {
        *byte = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(id)
}

/// `name=value; Path=/[; Max-Age=N][; HttpOnly]; SameSite=...[; Secure]`.
fn set_cookie(settings: &StickySettings, value: &str, tls: bool) -> HeaderValue {
    let mut text = format!("{}={value}; Path=/", settings.cookie);
    if let Some(age) = settings.max_age {
        text.push_str(&format!("; Max-Age={}", age.as_secs().max(1)));
    }
    if settings.http_only {
        text.push_str("; HttpOnly");
    }
    text.push_str("; SameSite=");
    text.push_str(settings.same_site.as_str());
    if settings.secure.unwrap_or(tls) || settings.same_site == SameSite::None {
        text.push_str("; Secure");
    }
    // The name is a checked token and the value hex: always a valid header value.
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_and_refuses_anything_else() {
        let id = [0xab; ID_BYTES];
        assert_eq!(unhex(hex(&id).as_bytes()), Some(id));
        assert_eq!(unhex(b"ab"), None);
        assert_eq!(unhex(&[b'g'; 2 * ID_BYTES]), None);
        assert_eq!(unhex(hex(&id).to_uppercase().as_bytes()), None);
    }
}
