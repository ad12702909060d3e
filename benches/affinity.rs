//! Consistent hashing's figures, through the pool's own pick (the proxy's path from a hashed key to a backend):
//! how many of 10,000 keys move when one of 5 backends is removed, marked unhealthy or added back; the key
//! shares of weights 1:2; and a hot key's 50 concurrent requests under `balance_factor = 1.25`. Prints each
//! figure with its target and exits 1 if one is missed. Run with `cargo bench --bench affinity`.

use std::collections::HashMap;
use std::process::ExitCode;

use switchyard::balance::pool::{Pool, Tried};
use switchyard::config;
use switchyard::observe::metrics::Metrics;

const KEYS: usize = 10_000;

fn pool(backends: &[(&str, u32)], hash: &str, metrics: &Metrics) -> Pool {
    let list: Vec<String> = backends
        .iter()
        .map(|(a, w)| format!("{{ address = \"{a}\", weight = {w} }}"))
        .collect();
    let text = format!(
        "[[listeners]]\naddress = \"127.0.0.1:0\"\n[admin]\naddress = \"127.0.0.1:0\"\n\
         [[routes]]\npool = \"p\"\n[pools.p]\nalgorithm = \"consistent_hash\"\nbackends = [{}]\n\
         [pools.p.hash]\nkey = \"header:X-User\"\n{hash}\n",
        list.join(", ")
    );
    let config = config::parse(&text, "affinity.toml").expect("config");
    Pool::new("p", config.pool("p").expect("pool p"), metrics, None)
}

/// Each key's backend address (from `members`, the pool's list), hashed as the proxy hashes a header value.
fn mapping(pool: &Pool, members: &[(&str, u32)]) -> Vec<String> {
    let now = tokio::time::Instant::now();
    (0..KEYS)
        .map(|k| {
            let key = twox_hash::XxHash3_64::oneshot(format!("user-{k}").as_bytes());
            let (i, _) = pool
                .pick(now, &mut Tried::default(), Some(key))
                .expect("a backend");
            members[i].0.to_owned()
        })
        .collect()
}

fn main() -> ExitCode {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let _guard = runtime.enter();
    let metrics = Metrics::new();
    let mut missed = 0;
    let mut report = |what: &str, value: String, ok: bool| {
        println!(
            "{:<64} {value:>12}  {}",
            what,
            if ok { "ok" } else { "MISSED" }
        );
        if !ok {
            missed += 1;
        }
    };
    let five: Vec<(&str, u32)> = [
        "10.0.0.1:80",
        "10.0.0.2:80",
        "10.0.0.3:80",
        "10.0.0.4:80",
        "10.0.0.5:80",
    ]
    .iter()
    .map(|a| (*a, 1))
    .collect();
    let gone = five[3].0;
    let first = mapping(&pool(&five, "", &metrics), &five);

    // Removed by a reload.
    let four: Vec<(&str, u32)> = five.iter().copied().filter(|(a, _)| *a != gone).collect();
    let after = mapping(&pool(&four, "", &metrics), &four);
    let moved = first.iter().zip(&after).filter(|(a, b)| a != b).count();
    let others_moved = first
        .iter()
        .zip(&after)
        .filter(|(a, b)| a != b && *a != gone)
        .count();
    let pct = 100.0 * moved as f64 / KEYS as f64;
    report(
        "remove 1 of 5: keys moved (target <= 22%)",
        format!("{pct:.2}%"),
        pct <= 22.0,
    );
    report(
        "remove 1 of 5: keys of the others moved (target 0)",
        others_moved.to_string(),
        others_moved == 0,
    );

    // Marked unhealthy: no rebuild.
    let p = pool(&five, "", &metrics);
    p.backends[3].set_healthy(false);
    let down = mapping(&p, &five);
    let moved_down = first.iter().zip(&down).filter(|(a, b)| a != b).count();
    let others_down = first
        .iter()
        .zip(&down)
        .filter(|(a, b)| a != b && *a != gone)
        .count();
    report(
        "mark 1 of 5 unhealthy: keys moved (its own share)",
        format!("{:.2}%", 100.0 * moved_down as f64 / KEYS as f64),
        true,
    );
    report(
        "mark 1 of 5 unhealthy: keys of the others moved (target 0)",
        others_down.to_string(),
        others_down == 0,
    );
    p.backends[3].set_healthy(true);
    let back_up = mapping(&p, &five);
    report(
        "healthy again: keys off their first backend (target 0)",
        first
            .iter()
            .zip(&back_up)
            .filter(|(a, b)| a != b)
            .count()
            .to_string(),
        back_up == first,
    );

    // Added back by a reload.
    let again = mapping(&pool(&five, "", &metrics), &five);
    let differ = first.iter().zip(&again).filter(|(a, b)| a != b).count();
    report(
        "add it back: keys off the first mapping (target 0)",
        differ.to_string(),
        differ == 0,
    );

    // Weights 1:2.
    let weighted = [("10.0.1.1:80", 1), ("10.0.1.2:80", 2)];
    let shares = mapping(&pool(&weighted, "", &metrics), &weighted);
    let mut count: HashMap<&str, usize> = HashMap::new();
    for a in &shares {
        *count.entry(a.as_str()).or_insert(0) += 1;
    }
    let light = count.get("10.0.1.1:80").copied().unwrap_or(0) as f64 / KEYS as f64;
    report(
        "weights 1:2: the light backend's share (target 1/3 +- 3%)",
        format!("{:.2}%", 100.0 * light),
        (light - 1.0 / 3.0).abs() <= 0.03,
    );
    report(
        "weights 1:2: the heavy backend's share (target 2/3 +- 3%)",
        format!("{:.2}%", 100.0 * (1.0 - light)),
        (light - 1.0 / 3.0).abs() <= 0.03,
    );

    // A hot key, 50 requests in flight at once, balance_factor 1.25.
    let p = pool(&five, "balance_factor = 1.25", &metrics);
    let now = tokio::time::Instant::now();
    let key = twox_hash::XxHash3_64::oneshot(b"the hot key");
    let held: Vec<_> = (0..50)
        .map(|_| {
            p.pick(now, &mut Tried::default(), Some(key))
                .expect("a backend")
                .1
        })
        .collect();
    let most = p
        .backends
        .iter()
        .map(|b| b.active_requests())
        .max()
        .unwrap_or(0);
    let bound = (1.25_f64 * 50.0 / 5.0).ceil() as usize;
    report(
        &format!("hot key x50, factor 1.25: most in flight on one backend (bound {bound})"),
        most.to_string(),
        most <= bound,
    );
    drop(held);

    if missed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
