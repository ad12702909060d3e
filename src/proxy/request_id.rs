//! Request IDs and W3C trace context. With `[request_id]`, every request carries an ID: its own when it comes
//! from a peer the settings trust, a new UUIDv7 otherwise. The ID goes upstream, back to the client, into the
//! access log and into the proxy's own error bodies. `traceparent` and `tracestate` pass through untouched; with
//! `traceparent = "generate"` a request without a valid `traceparent` gets a new trace, and a request that has
//! one is never given a new parent (switchyard does not take part in traces it was not asked to start).

use http::header::{HeaderMap, HeaderName, HeaderValue};

use crate::config::{RequestIdSettings, TrustIncoming};

static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// The longest incoming ID kept.
const MAX_ID_BYTES: usize = 128;

/// A request's ID and trace.
#[derive(Debug)]
pub(super) struct Identity {
    pub(super) header: HeaderName,
    pub(super) id: HeaderValue,
    /// The trace ID of the request's `traceparent` (received or made here), for the access log.
    pub(super) trace_id: Option<String>,
}

/// Gives the request (its `headers`) its ID and, when asked, a trace; `trusted`: the peer is in
/// `trusted_proxies`.
pub(super) fn identify(
    settings: &RequestIdSettings,
    headers: &mut HeaderMap,
    trusted: bool,
) -> Identity {
    let keep = match settings.trust_incoming {
        TrustIncoming::Always => true,
        TrustIncoming::Never => false,
        TrustIncoming::TrustedProxies => trusted,
    };
    let incoming = headers
        .get(&settings.header)
        .filter(|v| keep && is_id(v.as_bytes()))
        .cloned();
    // One ID goes on, whatever came (`insert` replaces every value).
    let id = incoming.unwrap_or_else(new_id);
    headers.insert(settings.header.clone(), id.clone());
    // Two `traceparent`s are no valid one (W3C).
    let single = headers.get_all(&TRACEPARENT).iter().nth(1).is_none();
    let parent = headers
        .get(&TRACEPARENT)
        .filter(|_| single)
        .and_then(|v| trace_of(v.as_bytes()));
    let trace_id = match parent {
        Some(trace) => Some(trace.to_owned()),
        None if settings.generate_traceparent => {
            let (value, trace) = new_traceparent();
            headers.insert(TRACEPARENT.clone(), value);
            // A trace state belongs to the trace it came with, and there is none.
            headers.remove(&TRACESTATE);
            Some(trace)
        }
        None => None,
    };
    Identity {
        header: settings.header.clone(),
        id,
        trace_id,
    }
}

/// Printable ASCII, no spaces, at most [`MAX_ID_BYTES`].
fn is_id(value: &[u8]) -> bool {
    !value.is_empty()
        && value.len() <= MAX_ID_BYTES
        && value.iter().all(|b| (0x21..0x7f).contains(b))
}

/// A UUIDv7: the Unix time in milliseconds, then random bits (from the thread's generator, not a system call),
/// written without an intermediate string.
fn new_id() -> HeaderValue {
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let id =
        uuid::Builder::from_unix_timestamp_millis(millis, &rand::random::<[u8; 10]>()).into_uuid();
    let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let text = id.hyphenated().encode_lower(&mut text);
    HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static("-"))
}

/// A new `traceparent` (version 00, sampled) and its trace ID.
fn new_traceparent() -> (HeaderValue, String) {
    let trace = loop {
        let t: u128 = rand::random();
        if t != 0 {
            break t;
        }
    };
    let parent = loop {
        let p: u64 = rand::random();
        if p != 0 {
            break p;
        }
    };
    let trace = format!("{trace:032x}");
    let value = format!("00-{trace}-{parent:016x}-01");
    (
        HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static("")),
        trace,
    )
}

/// The trace ID of a valid `traceparent` (W3C Trace Context: `VERSION-TRACEID-PARENTID-FLAGS`, lowercase hex,
/// version not `ff`, IDs not all zeros; version 00 exactly that long, later versions maybe longer).
fn trace_of(value: &[u8]) -> Option<&str> {
    if !value.is_ascii() {
        return None;
    }
    let text = std::str::from_utf8(value).ok()?;
    if text.len() < 55
        || (text.len() > 55 && (text.as_bytes()[55] != b'-' || text.starts_with("00")))
    {
        return None;
    }
    let hex = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let (version, trace, parent, flags) = (&text[0..2], &text[3..35], &text[36..52], &text[53..55]);
    let dashes = [2, 35, 52].iter().all(|&i| text.as_bytes()[i] == b'-');
    (dashes
        && hex(version)
        && version != "ff"
        && hex(trace)
        && trace.bytes().any(|b| b != b'0')
        && hex(parent)
        && parent.bytes().any(|b| b != b'0')
        && hex(flags))
    .then_some(trace)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparents_are_checked_as_w3c_says() {
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(
            trace_of(good.as_bytes()),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        for bad in [
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "0é4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
            "",
        ] {
            assert_eq!(trace_of(bad.as_bytes()), None, "{bad}");
        }
        // A later version may carry more after the flags.
        assert!(trace_of(b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-xyz").is_some());
        let (made, trace) = new_traceparent();
        assert_eq!(trace_of(made.as_bytes()), Some(trace.as_str()));
    }

    #[test]
    fn ids_are_kept_only_from_whom_the_settings_trust() {
        let settings = |trust| RequestIdSettings {
            header: HeaderName::from_static("x-request-id"),
            trust_incoming: trust,
            generate_traceparent: false,
        };
        let mut h = HeaderMap::new();
        h.insert("x-request-id", HeaderValue::from_static("abc"));
        let kept = identify(
            &settings(TrustIncoming::TrustedProxies),
            &mut h.clone(),
            true,
        );
        assert_eq!(kept.id, "abc");
        let mut untrusted = h.clone();
        let replaced = identify(
            &settings(TrustIncoming::TrustedProxies),
            &mut untrusted,
            false,
        );
        assert_ne!(replaced.id, "abc");
        assert_eq!(untrusted["x-request-id"], replaced.id);
        assert_eq!(
            identify(&settings(TrustIncoming::Always), &mut h.clone(), false).id,
            "abc"
        );
        assert_ne!(
            identify(&settings(TrustIncoming::Never), &mut h.clone(), true).id,
            "abc"
        );
        let mut twice = HeaderMap::new();
        twice.append("x-request-id", HeaderValue::from_static("one"));
        twice.append("x-request-id", HeaderValue::from_static("two"));
        let kept = identify(&settings(TrustIncoming::Always), &mut twice, true);
        assert_eq!(kept.id, "one");
        assert_eq!(
            twice.get_all("x-request-id").iter().count(),
            1,
            "one ID goes on"
        );
        let mut spaced = HeaderMap::new();
        spaced.insert("x-request-id", HeaderValue::from_static("a b"));
        assert_ne!(
            identify(&settings(TrustIncoming::Always), &mut spaced, true).id,
            "a b"
        );
    }
}
