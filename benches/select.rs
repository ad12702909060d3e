//! One backend pick, for each algorithm, at 2, 16 and 256 backends: the pool's `pick`, with the health,
//! request-cap and circuit-breaker checks and the breaker claim included. Run with `cargo bench --bench select`.
#![allow(clippy::disallowed_methods)] // wall-clock time against real processes and sockets

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};

use switchyard::balance::pool::{Pool, Tried};
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
    ] {
        let name = format!(
            "{}{}",
            algorithm.as_str(),
            if extra.is_empty() { "" } else { "+slow_start" }
        );
        for n in [2usize, 16, 256] {
            let pool = pool(algorithm, n, extra, &metrics);
            // Some requests in flight, so least-connections has real comparisons to make.
            let _busy: Vec<_> = pool.backends.iter().step_by(3).map(|b| b.begin()).collect();
            group.bench_with_input(BenchmarkId::new(&name, n), &pool, |b, pool| {
                // The proxy reads the clock once per request, before the pick; so does this.
                let now = tokio::time::Instant::now();
                b.iter(|| {
                    let mut tried = Tried::default();
                    black_box(
                        pool.pick(now, &mut tried)
                            .map(|i| pool.backends[i].weight()),
                    )
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, pick);
criterion_main!(benches);
