//! What a request must be before it is routed (RFC 9112 §3.2 and §6.1, RFC 9113 §8.3.1): exactly one valid
//! `Host` (required in HTTP/1.1), naming the same host as the target's authority over HTTP/2, and no transfer
//! coding but `chunked`. Whatever is refused here never reaches a pool.

use http::header::{self, HeaderValue};
use http::{Request, Version};

use crate::error::ProxyError;

/// Refuses a request whose `Host` or transfer codings a careful proxy cannot pass on.
#[inline]
pub(crate) fn check<B>(req: &Request<B>) -> Result<(), ProxyError> {
    let headers = req.headers();
    let mut hosts = headers.get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(ProxyError::BadHost);
    }
    match host {
        None if req.version() == Version::HTTP_11 => return Err(ProxyError::BadHost),
        None => {}
        Some(h) if !valid_host(h.as_bytes()) => return Err(ProxyError::BadHost),
        Some(h) if req.version() == Version::HTTP_2 => {
            if let Some(authority) = req.uri().authority() {
                let https = req.uri().scheme_str() == Some("https");
                if !same_host(authority.as_str().as_bytes(), h.as_bytes(), https) {
                    return Err(ProxyError::AuthorityMismatch);
                }
            }
        }
        Some(_) => {}
    }
    // The target's authority (absolute form, HTTP/2 `:authority`) becomes the backend's Host: the same rules,
    // so no userinfo (`user:pw@`) is ever passed on.
    if let Some(authority) = req.uri().authority() {
        if !valid_host(authority.as_str().as_bytes()) {
            return Err(ProxyError::BadHost);
        }
    }
    if let Some(te) = headers.get(header::TRANSFER_ENCODING) {
        check_codings(
            te,
            headers.get_all(header::TRANSFER_ENCODING).iter().count(),
        )?;
    }
    Ok(())
}

/// Only `chunked`, once: any other coding (`gzip, chunked`) would be dropped on the way, so it gets 501.
#[cold]
fn check_codings(first: &HeaderValue, lines: usize) -> Result<(), ProxyError> {
    let mut codings = first
        .as_bytes()
        .split(|b| *b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|c| !c.is_empty());
    let only_chunked = lines == 1
        && codings
            .next()
            .is_some_and(|c| c.eq_ignore_ascii_case(b"chunked"))
        && codings.next().is_none();
    if only_chunked {
        Ok(())
    } else {
        Err(ProxyError::UnsupportedTransferCoding)
    }
}

/// `host [ ":" port ]` (RFC 3986: an IP literal in brackets, or a reg-name of unreserved, percent-encoded and
/// sub-delim characters), or empty.
pub(crate) fn valid_host(value: &[u8]) -> bool {
    let (host, port) = match value.first() {
        None => return true,
        Some(b'[') => match value.iter().position(|b| *b == b']') {
            Some(end) => {
                let inside = &value[1..end];
                let ok = !inside.is_empty()
                    && inside
                        .iter()
                        .all(|b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.'));
                if !ok {
                    return false;
                }
                (&value[..=end], &value[end + 1..])
            }
            None => return false,
        },
        Some(_) => match value.iter().position(|b| *b == b':') {
            Some(colon) => (&value[..colon], &value[colon..]),
            None => (value, &value[value.len()..]),
        },
    };
    let port_ok = match port {
        [] => true,
        [b':', digits @ ..] => digits.len() <= 5 && digits.iter().all(u8::is_ascii_digit),
        _ => false,
    };
    port_ok && (host.first() == Some(&b'[') || valid_reg_name(host))
}

fn valid_reg_name(host: &[u8]) -> bool {
    let mut i = 0;
    while i < host.len() {
        match host[i] {
            b'%' => {
                let hex = host.get(i + 1..i + 3);
                if !hex.is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) {
                    return false;
                }
                i += 3;
                continue;
            }
            b if b.is_ascii_alphanumeric() => {}
            b'-' | b'.' | b'_' | b'~' | b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+'
            | b',' | b';' | b'=' => {}
            _ => return false,
        }
        i += 1;
    }
    true
}

/// Do an authority and a `Host` name the same host (case aside, and a default port written or not)?
fn same_host(authority: &[u8], host: &[u8], https: bool) -> bool {
    let default = if https { &b":443"[..] } else { &b":80"[..] };
    let strip = |v: &'_ [u8]| -> Vec<u8> {
        let v = v.strip_suffix(default).unwrap_or(v);
        v.to_ascii_lowercase()
    };
    strip(authority) == strip(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(version: Version, uri: &str, hosts: &[&str], te: &[&str]) -> Request<()> {
        let mut b = Request::get(uri).version(version);
        for h in hosts {
            b = b.header(header::HOST, *h);
        }
        for t in te {
            b = b.header(header::TRANSFER_ENCODING, *t);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn host_rules() {
        use Version as V;
        let ok = |r: Request<()>| check(&r).is_ok();
        assert!(ok(req(V::HTTP_11, "/", &["a.example"], &[])));
        assert!(ok(req(V::HTTP_11, "/", &["a.example:8080"], &[])));
        assert!(ok(req(V::HTTP_11, "/", &["[::1]:80"], &[])));
        assert!(ok(req(V::HTTP_11, "/", &[""], &[])));
        assert!(ok(req(V::HTTP_10, "/", &[], &[])));
        assert!(!ok(req(V::HTTP_11, "/", &[], &[])));
        assert!(!ok(req(V::HTTP_11, "/", &["a", "b"], &[])));
        for bad in [
            "a b", "a/b", "a:80x", "a:123456", "[::1", "[zz]", "a%2", "a\tb", "a@b",
        ] {
            assert!(!ok(req(V::HTTP_11, "/", &[bad], &[])), "{bad}");
        }
        assert!(ok(req(
            V::HTTP_2,
            "https://a.example/",
            &["A.example:443"],
            &[]
        )));
        assert!(!ok(req(
            V::HTTP_2,
            "https://a.example/",
            &["b.example"],
            &[]
        )));
        assert!(ok(req(V::HTTP_2, "https://a.example/", &[], &[])));
        assert!(!ok(req(
            V::HTTP_11,
            "http://user:pw@a.example/",
            &["a.example"],
            &[]
        )));
        assert!(!ok(req(V::HTTP_2, "https://user@a.example/", &[], &[])));
    }

    #[test]
    fn only_chunked_passes() {
        let ok = |te: &[&str]| check(&req(Version::HTTP_11, "/", &["a"], te)).is_ok();
        assert!(ok(&["chunked"]));
        assert!(ok(&["Chunked "]));
        assert!(!ok(&["gzip, chunked"]));
        assert!(!ok(&["chunked, chunked"]));
        assert!(!ok(&["gzip", "chunked"]));
        assert!(!ok(&["identity"]));
    }
}
