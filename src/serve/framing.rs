//! The framing of an HTTP/1 request head as it arrives, for [`super::conn::TimedIo`]'s check: hyper reads
//! `Content-Length` together with `Transfer-Encoding`, or `Content-Length` twice, safely (as chunked, closing
//! the connection), but such a request is ambiguous to other hops, so the proxy refuses it. Most heads carry
//! neither header: a scan of the lines' first letters finds that without a parse.

pub(super) enum Framing {
    /// A whole head of `len` bytes, and what follows it.
    Complete {
        len: usize,
        body: BodyFraming,
    },
    Partial,
    NotHttp1,
}

pub(super) enum BodyFraming {
    Length(u64),
    Chunked,
    /// `Content-Length` with `Transfer-Encoding`, or `Content-Length` more than once.
    Ambiguous,
}

/// The length of the complete head at the start of `bytes` when none of its lines can be `Content-Length` or
/// `Transfer-Encoding` (by the first letters of the line, in any case); `None` when it could, or when the head is
/// not complete: [`framing`] then parses it.
pub(super) fn plain_head(bytes: &[u8]) -> Option<usize> {
    let mut line_ends = memchr::memchr_iter(b'\n', bytes);
    // The request line.
    let mut start = line_ends.next()? + 1;
    loop {
        let line = &bytes[start..];
        match line {
            [b'\n', ..] => return Some(start + 1),
            [b'\r', b'\n', ..] => return Some(start + 2),
            _ if starts_with_ignore_case(line, b"content-length")
                || starts_with_ignore_case(line, b"transfer-encoding") =>
            {
                return None;
            }
            _ => start = line_ends.next()? + 1,
        }
    }
}

fn starts_with_ignore_case(bytes: &[u8], prefix: &[u8]) -> bool {
    bytes
        .get(..prefix.len())
        .is_some_and(|b| b.eq_ignore_ascii_case(prefix))
}

pub(super) fn framing(bytes: &[u8]) -> Framing {
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(bytes) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Framing::Partial,
        Err(_) => return Framing::NotHttp1,
    };
    let (mut lengths, mut length, mut chunked) = (0, None, false);
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            lengths += 1;
            length = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok());
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = true;
        }
    }
    let body = match (lengths, chunked) {
        (0, false) => BodyFraming::Length(0),
        (0, true) => BodyFraming::Chunked,
        (1, false) => match length {
            Some(n) => BodyFraming::Length(n),
            // hyper refuses it: nothing more to follow.
            None => return Framing::NotHttp1,
        },
        _ => BodyFraming::Ambiguous,
    };
    Framing::Complete { len, body }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parsed(bytes: &[u8]) -> Option<(usize, Option<u64>)> {
        match framing(bytes) {
            Framing::Complete { len, body } => Some((
                len,
                match body {
                    BodyFraming::Length(n) => Some(n),
                    _ => None,
                },
            )),
            _ => None,
        }
    }

    #[test]
    fn plain_heads_are_found_without_a_parse() {
        let head = b"GET / HTTP/1.1\r\nHost: a\r\nCookie: c=1\r\nTE: trailers\r\n\r\nGET";
        assert_eq!(plain_head(head), Some(head.len() - 3));
        assert_eq!(parsed(head), Some((head.len() - 3, Some(0))));
        assert_eq!(plain_head(b"GET / HTTP/1.1\nHost: a\n\n"), Some(24));
        for framed in [
            &b"POST / HTTP/1.1\r\nHost: a\r\ncontent-LENGTH: 3\r\n\r\nabc"[..],
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\n",
        ] {
            assert_eq!(plain_head(framed), None);
        }
    }

    proptest! {
        /// Whatever the bytes, a head the quick scan calls plain is one the full parse finds no body in (or
        /// one hyper refuses anyway).
        #[test]
        fn quick_scan_agrees_with_the_parser(
            lines in proptest::collection::vec(
                prop_oneof![
                    Just("Host: a".to_string()),
                    Just("Content-Length: 5".to_string()),
                    Just("transfer-encoding: chunked".to_string()),
                    Just(" folded".to_string()),
                    Just("".to_string()),
                    "[ -~]{0,12}",
                ],
                0..6,
            ),
            ending in prop_oneof![Just("\r\n"), Just("\n")],
            tail in proptest::collection::vec(any::<u8>(), 0..8),
        ) {
            let mut bytes = b"GET /x HTTP/1.1".to_vec();
            for line in &lines {
                bytes.extend_from_slice(ending.as_bytes());
                bytes.extend_from_slice(line.as_bytes());
            }
            bytes.extend_from_slice(ending.as_bytes());
            bytes.extend_from_slice(ending.as_bytes());
            bytes.extend_from_slice(&tail);
            if let Some(len) = plain_head(&bytes) {
                match parsed(&bytes) {
                    Some((parsed_len, body)) => {
                        prop_assert_eq!(parsed_len, len);
                        prop_assert_eq!(body, Some(0));
                    }
                    None => prop_assert!(matches!(framing(&bytes), Framing::NotHttp1)),
                }
            }
        }
    }
}
