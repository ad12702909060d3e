//! Route lookup (host, then longest path prefix) in a table of 1,000 routes, as the proxy does it for each
//! request. Run with `cargo bench --bench route`.
#![allow(clippy::disallowed_methods)] // a bench: a config that does not parse should stop it loudly

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};

use switchyard::config;
use switchyard::router::Snapshot;

const PREFIXES: [&str; 10] = [
    "/",
    "/api/",
    "/api/v1/",
    "/api/v2/",
    "/static/",
    "/users/",
    "/users/admin/",
    "/orders/",
    "/search/",
    "/health/",
];

/// `routes` as TOML (`host`, `path_prefix`), each sent to one of four pools.
fn snapshot(routes: &[(Option<String>, String)]) -> Snapshot {
    let mut text = String::from(
        "[[listeners]]\naddress = \"127.0.0.1:0\"\n[admin]\naddress = \"127.0.0.1:0\"\n",
    );
    for (i, (host, prefix)) in routes.iter().enumerate() {
        text.push_str("[[routes]]\n");
        if let Some(host) = host {
            text.push_str(&format!("host = \"{host}\"\n"));
        }
        text.push_str(&format!(
            "path_prefix = \"{prefix}\"\npool = \"p{}\"\n",
            i % 4
        ));
    }
    for p in 0..4 {
        text.push_str(&format!(
            "[pools.p{p}]\nbackends = [{{ address = \"127.0.0.1:{}\" }}]\n",
            9000 + p
        ));
    }
    let config = config::parse(&text, "route-bench.toml").expect("bench config");
    Snapshot::of(&config)
}

fn lookups(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let _guard = runtime.enter();
    let mut group = c.benchmark_group("route");

    // 100 hosts × 10 prefixes each.
    let mut routes = Vec::new();
    for h in 0..100 {
        for p in PREFIXES {
            routes.push((Some(format!("svc-{h}.example.com")), p.to_owned()));
        }
    }
    let hosts = snapshot(&routes);
    let requests: Vec<(String, &str)> = (0..64)
        .map(|i| {
            let host = match i % 4 {
                0 => format!("svc-{}.example.com", i * 7 % 100),
                1 => format!("svc-{}.example.com:8080", i * 13 % 100),
                2 => format!("SVC-{}.Example.com", i * 3 % 100),
                _ => format!("unknown-{i}.example.com"),
            };
            let path = [
                "/api/v1/users/42",
                "/static/app.js",
                "/users/admin/settings",
                "/index.html",
                "/search/?q=x",
                "/api/v3/x",
            ][i % 6];
            (host, path)
        })
        .collect();
    assert!(hosts.has_route(Some("svc-7.example.com"), "/api/v1/x"));
    group.bench_function("1000_routes/100_hosts_x_10_prefixes", |b| {
        let mut i = 0;
        b.iter(|| {
            let (host, path) = &requests[i % requests.len()];
            i += 1;
            black_box(hosts.has_route(Some(black_box(host)), black_box(path)))
        })
    });

    // One host, 1,000 prefixes (`/tenant-N/...`): the worst case for a list scanned in order.
    let tenants: Vec<_> = (0..1000)
        .map(|t| (Some("api.example.com".to_owned()), format!("/tenant-{t}/")))
        .collect();
    let tenants = snapshot(&tenants);
    let paths: Vec<String> = (0..64)
        .map(|i| format!("/tenant-{}/orders/{i}", i * 15 % 1000))
        .collect();
    assert!(tenants.has_route(Some("api.example.com"), "/tenant-999/x"));
    group.bench_function("1000_routes/1_host_x_1000_prefixes", |b| {
        let mut i = 0;
        b.iter(|| {
            let path = &paths[i % paths.len()];
            i += 1;
            black_box(tenants.has_route(Some(black_box("api.example.com")), black_box(path)))
        })
    });
    group.finish();
}

criterion_group!(benches, lookups);
criterion_main!(benches);
