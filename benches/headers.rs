//! The header rewriting every request and response goes through: hop-by-hop headers out (a response as NGINX
//! sends it, with `Connection: keep-alive`; a request as a browser sends it, with none), and the forwarding
//! headers in. Run with `cargo bench --bench headers`.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use http::header::{self, HeaderMap, HeaderValue};

use switchyard::proxy::headers::{Scheme, add_forwarded, peer_value, strip_hop_by_hop};

fn response() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(header::SERVER, HeaderValue::from_static("nginx/1.26.3"));
    h.insert(
        header::DATE,
        HeaderValue::from_static("Mon, 30 Nov 2026 12:00:00 GMT"),
    );
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("3"));
    h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
    h.insert("x-backend", HeaderValue::from_static("18081"));
    h
}

fn request() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(header::HOST, HeaderValue::from_static("app.example"));
    h.insert(header::USER_AGENT, HeaderValue::from_static("Mozilla/5.0"));
    h.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
    h.insert(header::ACCEPT_ENCODING, HeaderValue::from_static("gzip"));
    h
}

fn rewriting(c: &mut Criterion) {
    let (response, request) = (response(), request());
    let peer = peer_value(
        "10.1.2.3"
            .parse()
            .unwrap_or(std::net::Ipv4Addr::LOCALHOST.into()),
    );
    let host = HeaderValue::from_static("app.example");
    let mut group = c.benchmark_group("headers");
    group.bench_function("response: strip hop-by-hop", |b| {
        b.iter_batched_ref(
            || response.clone(),
            |h| strip_hop_by_hop(black_box(h)),
            criterion::BatchSize::SmallInput,
        )
    });
    group.bench_function("request: strip hop-by-hop, add forwarding", |b| {
        b.iter_batched_ref(
            || request.clone(),
            |h| {
                strip_hop_by_hop(black_box(h));
                add_forwarded(h, &peer, Scheme::Http, Some(host.clone()), false);
            },
            criterion::BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, rewriting);
criterion_main!(benches);
