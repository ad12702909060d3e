//! Header rewriting: any header list (names and values as hyper would accept them) goes through the hop-by-hop
//! removal and the forwarding headers without a panic, and no hop-by-hop header survives (but `TE: trailers`).
#![no_main]

use http::header::{HeaderMap, HeaderName, HeaderValue};
use switchyard::proxy::headers;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut map = HeaderMap::new();
    for line in data.split(|b| *b == b'\n') {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(&line[colon + 1..]),
        ) else {
            continue;
        };
        map.append(name, value);
    }
    let host = map.get("host").cloned();
    let trusted = data.first().is_some_and(|b| b % 2 == 0);
    headers::strip_hop_by_hop(&mut map);
    let peer = headers::peer_value([192, 0, 2, 1].into());
    headers::add_forwarded(&mut map, &peer, headers::Scheme::Http, host, trusted);
    for name in [
        "connection",
        "keep-alive",
        "proxy-connection",
        "trailer",
        "transfer-encoding",
        "upgrade",
    ] {
        assert!(!map.contains_key(name), "{name} survived");
    }
    if let Some(te) = map.get("te") {
        assert_eq!(te, "trailers", "TE survived with another value");
    }
    assert!(map.contains_key("x-forwarded-for"));
});
