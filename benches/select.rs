//! One backend pick, for each algorithm, at 2, 16 and 256 backends: the pool's `pick`, with the health,
//! request-cap and circuit-breaker checks and the breaker claim included; consistent hashing's table build; a
//! sticky cookie's lookup as the proxy does it. Run with `cargo bench --bench select`.
#![allow(clippy::disallowed_methods)] // wall-clock time against real processes and sockets

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};

use switchyard::balance::pool::{Pool, Tried};
use switchyard::balance::select;
use switchyard::config::{self, Algorithm};
use switchyard::observe::metrics::Metrics;

fn pool(algorithm: Algorithm, n: usize, extra: &str, metrics: &Metrics) -> Pool {
    let backends: Vec<String> = (0..n)
        .map(|i| {
            format!(
                "{{ address = \"10.0.{}.{}:8080\", weight = {} }}",
                i / 250,
                i % 250 + 1,
                1 + i % 3
            )
        })
        .collect();
    let text = format!(
        "[[listeners]]\naddress = \"127.0.0.1:0\"\n[admin]\naddress = \"127.0.0.1:0\"\n\
         [[routes]]\npath_prefix = \"/\"\npool = \"bench\"\n\
         [pools.bench]\nalgorithm = \"{}\"\nbackends = [{}]\n{extra}\n",
        algorithm.as_str(),
        backends.join(", ")
    );
    let config = config::parse(&text, "bench.toml").expect("bench config");
    let settings = config.pool("bench").expect("the bench pool");
    Pool::new("bench", settings, metrics, None)
}

fn pick(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let _guard = runtime.enter();
    let metrics = Metrics::new();
    let mut group = c.benchmark_group("pick");
    let slow_start = "[pools.bench.slow_start]\nwindow = \"30s\"";
    for (algorithm, extra) in [
        (Algorithm::RoundRobin, ""),
        (Algorithm::LeastConnections, ""),
        (Algorithm::PeakEwma, ""),
        (Algorithm::RoundRobin, slow_start),
        (Algorithm::LeastConnections, slow_start),
        (
            Algorithm::ConsistentHash,
            "[pools.bench.hash]\nbalance_factor = 0",
        ),
        (Algorithm::ConsistentHash, ""),
    ] {
        let name = match (algorithm, extra.is_empty()) {
            (Algorithm::ConsistentHash, true) => "consistent_hash+bounded".to_owned(),
            (Algorithm::ConsistentHash, false) => "consistent_hash".to_owned(),
            (_, true) => algorithm.as_str().to_owned(),
            (_, false) => format!("{}+slow_start", algorithm.as_str()),
        };
        let hashing = algorithm == Algorithm::ConsistentHash;
        for n in [2usize, 16, 256] {
            let pool = pool(algorithm, n, extra, &metrics);
            // Some requests in flight, so least-connections has real comparisons to make.
            let _busy: Vec<_> = pool.backends.iter().step_by(3).map(|b| b.begin()).collect();
            group.bench_with_input(BenchmarkId::new(&name, n), &pool, |b, pool| {
                // The proxy reads the clock once per request, before the pick; so does this.
                let now = tokio::time::Instant::now();
                // A new key each time (hashed as the proxy hashes), so the table lookups are not all cached.
                let mut key = 0u64;
                b.iter(|| {
                    let mut tried = Tried::default();
                    key = key.wrapping_add(0x9E37_79B9_7F4A_7C15);
                    let key = hashing.then_some(key);
                    black_box(
                        pool.pick(now, &mut tried, key)
                            .map(|(i, _)| pool.backends[i].weight()),
                    )
                })
            });
        }
    }
    group.finish();
}

/// Consistent hashing's table for 256 backends of mixed weights, 65,537 slots (built off the request path, on
/// a reload or a DNS change).
fn table_build(c: &mut Criterion) {
    let addresses: Vec<String> = (0..256)
        .map(|i| format!("10.0.{}.{}:8080", i / 250, i % 250 + 1))
        .collect();
    let members: Vec<(&str, u32)> = addresses
        .iter()
        .enumerate()
        .map(|(i, a)| (a.as_str(), 1 + (i % 3) as u32))
        .collect();
    let mut group = c.benchmark_group("hash_table");
    group.sample_size(20);
    for n in [5usize, 256] {
        group.bench_with_input(BenchmarkId::new("build", n), &members[..n], |b, m| {
            b.iter(|| black_box(select::hash_table(m, 65537).len()))
        });
    }
    group.finish();
}

/// What a sticky cookie adds to a request: finding the cookie in the request's headers and the backend it
/// names, beside the round-robin pick it replaces.
fn sticky(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let _guard = runtime.enter();
    let metrics = Metrics::new();
    let mut group = c.benchmark_group("sticky");
    for n in [16usize, 256] {
        let pool = pool(
            Algorithm::RoundRobin,
            n,
            "[pools.bench.sticky]\ncookie = \"sy_bench\"",
            &metrics,
        );
        let cookie = pool
            .sticky_cookie(n / 2)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .expect("a cookie")
            .to_owned();
        let req = http::Request::get("/")
            .header("cookie", format!("theme=dark; {cookie}; lang=en"))
            .header("user-agent", "bench")
            .body(())
            .expect("request");
        let now = tokio::time::Instant::now();
        group.bench_with_input(BenchmarkId::new("follow_cookie", n), &pool, |b, pool| {
            b.iter(|| {
                let mut tried = Tried::default();
                black_box(switchyard::proxy::affinity::follow_sticky_cookie(
                    pool, &req, now, &mut tried,
                ))
            })
        });
        group.bench_with_input(BenchmarkId::new("round_robin_pick", n), &pool, |b, pool| {
            b.iter(|| {
                let mut tried = Tried::default();
                black_box(pool.pick(now, &mut tried, None).map(|(i, _)| i))
            })
        });
    }
    group.finish();
}

criterion_group!(benches, pick, table_build, sticky);
criterion_main!(benches);
