//! Load balancing over real backends: weighted smooth round-robin and weighted least-connections.
#![allow(clippy::disallowed_methods)] // wall-clock time against real processes and sockets

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;

async fn spread(addr: std::net::SocketAddr, n: usize) -> (Vec<String>, HashMap<String, usize>) {
    let mut order = Vec::new();
    let mut counts = HashMap::new();
    for _ in 0..n {
        let (status, headers, _) = get(addr, "/", None).await;
        assert_eq!(status, 200);
        let name = headers["x-backend"].to_str().unwrap().to_owned();
        *counts.entry(name.clone()).or_insert(0) += 1;
        order.push(name);
    }
    (order, counts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_equal_weights_spread_evenly() {
    let a = named_backend("a", Duration::ZERO).await;
    let b = named_backend("b", Duration::ZERO).await;
    let c = named_backend("c", Duration::ZERO).await;
    let server = start_proxy(&pool_config(&[a, b, c], "algorithm = \"round_robin\"")).await;
    let (order, counts) = spread(server.listen_addrs[0], 300).await;
    assert_eq!(counts["a"], 100);
    assert_eq!(counts["b"], 100);
    assert_eq!(counts["c"], 100);
    assert_eq!(&order[..6], ["a", "b", "c", "a", "b", "c"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_weights_are_smooth() {
    let a = named_backend("a", Duration::ZERO).await;
    let b = named_backend("b", Duration::ZERO).await;
    let server = start_proxy(&config(&format!(
        r#"
[[routes]]
pool = "p"
[pools.p]
backends = [{{ address = "{a}" }}, {{ address = "{b}", weight = 3 }}]
"#
    )))
    .await;
    let (order, counts) = spread(server.listen_addrs[0], 100).await;
    assert_eq!(counts["a"], 25);
    assert_eq!(counts["b"], 75);
    // NGINX's smooth order: B A B B, never A B B B in a burst.
    assert_eq!(&order[..8], ["b", "a", "b", "b", "b", "a", "b", "b"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_connections_favours_the_fast_backend() {
    let fast = named_backend("fast", Duration::ZERO).await;
    let slow = named_backend("slow", Duration::from_millis(150)).await;
    let server = start_proxy(&pool_config(
        &[fast, slow],
        "algorithm = \"least_connections\"",
    ))
    .await;
    let addr = server.listen_addrs[0];
    let mut tasks = Vec::new();
    for _ in 0..8 {
        tasks.push(tokio::spawn(async move {
            let mut counts: HashMap<String, usize> = HashMap::new();
            for _ in 0..25 {
                let (status, headers, _) = get(addr, "/", None).await;
                assert_eq!(status, 200);
                *counts
                    .entry(headers["x-backend"].to_str().unwrap().to_owned())
                    .or_insert(0) += 1;
            }
            counts
        }));
    }
    let mut total: HashMap<String, usize> = HashMap::new();
    for t in tasks {
        for (k, v) in t.await.unwrap() {
            *total.entry(k).or_insert(0) += v;
        }
    }
    let fast_n = shared_count(&total, "fast");
    let slow_n = shared_count(&total, "slow");
    assert_eq!(fast_n + slow_n, 200);
    // Round-robin would give 100/100; least-connections must send most traffic to the fast backend.
    assert!(fast_n >= 160, "fast got {fast_n}, slow got {slow_n}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_connections_respects_weight_when_idle() {
    let a = named_backend("a", Duration::ZERO).await;
    let b = named_backend("b", Duration::ZERO).await;
    let server = start_proxy(&config(&format!(
        r#"
[[routes]]
pool = "p"
[pools.p]
algorithm = "least_connections"
backends = [{{ address = "{a}" }}, {{ address = "{b}", weight = 4 }}]
"#
    )))
    .await;
    // Sequential requests: nothing in flight, so (0+1)/1 vs (0+1)/4 always favours the heavier backend.
    let (_, counts) = spread(server.listen_addrs[0], 50).await;
    assert_eq!(shared_count(&counts, "b"), 50);
}
