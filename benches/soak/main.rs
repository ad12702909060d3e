//! The chaos soak of issue #22: the real switchyard binary under mixed load — HTTP/1.1 on kept-alive and on new
//! connections, GETs and POSTs with bodies, HTTP/2 over TLS, WebSockets, gRPC-style streams — while a seeded RNG
//! kills and restarts backends, turns one slow or failing, rewrites the config (valid and broken), sends SIGHUP
//! and `POST /api/reload` in bursts, changes a DNS answer, rotates the TLS certificate, and drains and enables
//! backends through the admin API. Everything is on 127.0.0.1 and stops by itself.
//!
//! One table at the end; exit 1 if a line fails. `cargo bench --bench soak -- --minutes 30 [--seed N]` runs the
//! release build; CI runs `cargo test --bench soak -- --minutes 2` (debug build, lighter load).
#![allow(clippy::disallowed_methods)] // wall-clock time against a real process

#[path = "../../tests/common/mod.rs"]
mod common;

mod backends;
mod chaos;
mod load;
mod rng;
mod watch;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use clap::Parser;

use backends::{Backend, Kind};
use chaos::{CERT_NAMES, Chaos, Layout};
use common::{Dns, Pki, free_port, try_get};
use load::Load;

#[derive(Parser)]
#[command(about = "switchyard's chaos soak")]
struct Args {
    /// How long the load and the chaos run.
    #[arg(long, default_value_t = 10.0)]
    minutes: f64,
    /// The chaos schedule's seed (printed, so a run can be replayed); default: from the clock.
    #[arg(long)]
    seed: Option<u64>,
    /// Passed by `cargo bench`.
    #[arg(long, hide = true)]
    bench: bool,
}

/// One line of the table.
struct Line {
    check: &'static str,
    pass: bool,
    detail: String,
}

fn main() {
    let args = Args::parse();
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (lines, dir) = runtime.block_on(soak(args.minutes, seed));
    println!("\n| check | result | detail |\n|---|---|---|");
    for l in &lines {
        let result = if l.pass { "pass" } else { "**FAIL**" };
        println!("| {} | {result} | {} |", l.check, l.detail);
    }
    println!("\nseed {seed} (replay: --seed {seed})");
    // Leave the runtime without waiting on the clients' leftovers.
    runtime.shutdown_timeout(Duration::from_secs(1));
    if lines.iter().any(|l| !l.pass) {
        println!(
            "the config and switchyard's log are kept in {}",
            dir.keep().display()
        );
        std::process::exit(1);
    }
}

async fn soak(minutes: f64, seed: u64) -> (Vec<Line>, tempfile::TempDir) {
    common::fail_on_task_panics();
    let length = Duration::from_secs_f64(minutes * 60.0);
    println!("soak: {minutes} min, seed {seed}");
    let seen = backends::Seen::default();
    let mut all = Vec::new();
    for (name, kind) in [
        ("web-1", Kind::Http),
        ("web-2", Kind::Http),
        ("web-3", Kind::Http),
        ("web-4", Kind::Http),
        ("ws-1", Kind::WebSocket),
        ("ws-2", Kind::WebSocket),
        ("grpc-1", Kind::Stream),
        ("grpc-2", Kind::Stream),
    ] {
        all.push(Backend::start(name, kind, seen.clone()).await);
    }
    let mut dns_backends = Vec::new();
    for name in ["dns-1", "dns-2", "dns-3"] {
        dns_backends.push(Backend::start(name, Kind::Http, seen.clone()).await);
    }
    let dns = Dns::start().await;
    let pki = Pki::new();
    let issued = pki.issue("soak", CERT_NAMES);
    let addrs = |prefix: &str| {
        all.iter()
            .filter(|b| b.name.starts_with(prefix))
            .map(|b| b.addr)
            .collect::<Vec<_>>()
    };
    let dir = tempfile::tempdir().unwrap();
    let layout = Layout {
        dir: dir.path().to_owned(),
        plain: free_port(),
        tls: free_port(),
        admin: free_port(),
        dns: dns.addr,
        cert: issued.cert.clone(),
        key: issued.key.clone(),
        web: addrs("web"),
        ws: addrs("ws"),
        grpc: addrs("grpc"),
    };
    std::fs::write(
        layout.config_path(),
        layout.render("round_robin", &[1, 1, 1, 1]),
    )
    .unwrap();
    let (plain, tls, admin) = (layout.plain, layout.tls, layout.admin);
    let deaths: BTreeMap<&'static str, Arc<backends::Deaths>> =
        all.iter().map(|b| (b.name, b.deaths.clone())).collect();
    let mut chaos = Chaos::new(
        layout,
        all,
        dns_backends.iter().map(|b| b.addr).collect(),
        dns,
        pki,
        0,
        seed,
    );
    chaos.answer(&[0, 1, 2]);

    let log_path = dir.path().join("switchyard.log");
    let mut proxy = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["--log-format", "json", "run", "--config"])
        .arg(chaos.layout.config_path())
        .args(["--workers", "2"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    chaos.pid = proxy.id();
    let admin_addr = ([127, 0, 0, 1], admin).into();
    let up = Instant::now() + Duration::from_secs(30);
    while try_get(admin_addr, "/healthz").await.is_none() {
        assert!(
            Instant::now() < up,
            "switchyard did not come up: {}",
            std::fs::read_to_string(&log_path).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The DNS pool has its backends before the load starts.
    while !try_get(admin_addr, "/api/pools")
        .await
        .is_some_and(|(_, b)| {
            b.matches("dns-").count() + b.matches(&dns_backends[0].addr.port().to_string()).count()
                > 0
        })
    {
        assert!(Instant::now() < up, "the DNS pool found no backends");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let start = Instant::now();
    let until = start + length;
    let load = Arc::new(Load {
        stats: Default::default(),
        plain: ([127, 0, 0, 1], plain).into(),
        tls: ([127, 0, 0, 1], tls).into(),
        connector: chaos.pki.client(&["h2"]),
        until,
        deaths,
        seen,
        ids: AtomicU64::new(0),
    });
    let clients = load::start(&load, seed);

    // Each second: the process's RSS and descriptors, and its counters.
    let pid = proxy.id();
    let sampler = tokio::spawn(async move {
        let mut samples = Vec::new();
        let mut counted = watch::Counted::default();
        while Instant::now() < until + Duration::from_secs(20) {
            let sample = watch::sample(pid, start);
            let scraped = try_get(admin_addr, "/metrics").await;
            if let Some(mut s) = sample {
                s.other_fds = scraped
                    .as_ref()
                    .and_then(|(_, text)| watch::connection_fds(text))
                    .map(|open| s.fds.saturating_sub(open));
                samples.push(s);
            }
            if let Some((_, text)) = scraped {
                counted.scrape(&text);
            }
            if Instant::now() > until
                && samples
                    .last()
                    .is_some_and(|s| s.at > length.as_secs_f64() + 1.0)
            {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        (samples, counted)
    });

    chaos.run(until).await;
    let settled = settled(&chaos, admin_addr).await;
    let mut stuck = 0;
    for c in clients {
        if tokio::time::timeout(load::DEADLINE + Duration::from_secs(25), c)
            .await
            .is_err()
        {
            stuck += 1;
        }
    }
    let (samples, mut counted) = sampler.await.unwrap();
    if let Some((_, text)) = try_get(admin_addr, "/metrics").await {
        counted.scrape(&text);
    }
    let alive = matches!(proxy.try_wait(), Ok(None));
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let exited = tokio::time::timeout(Duration::from_secs(40), async {
        loop {
            if let Ok(Some(status)) = proxy.try_wait() {
                return status.success();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    if exited.is_err() {
        let _ = proxy.kill();
    }
    let log = watch::review_log(&std::fs::read_to_string(&log_path).unwrap_or_default());
    let stats = load.stats.lock().unwrap();
    let mut lines = report(
        &stats,
        &chaos,
        &samples,
        &counted,
        &log,
        stuck,
        alive,
        exited.unwrap_or(false),
        length,
    );
    lines.insert(lines.len() - 1, settled);
    (lines, dir)
}

/// Once the chaos has stopped (and mended what it broke), what runs is what it last set: the last valid
/// config, the last certificate, the last DNS answer.
async fn settled(chaos: &Chaos, admin: std::net::SocketAddr) -> Line {
    let tls: std::net::SocketAddr = ([127, 0, 0, 1], chaos.layout.tls).into();
    let connector = chaos.pki.client(&["h2"]);
    let mut answered: Vec<String> = chaos.answered.iter().map(|a| a.to_string()).collect();
    answered.sort();
    let deadline = Instant::now() + Duration::from_secs(10);
    let (ok, algorithm, backends, certificate) = loop {
        let pools: serde_json::Value = try_get(admin, "/api/pools")
            .await
            .and_then(|(_, body)| serde_json::from_str(&body).ok())
            .unwrap_or_default();
        let algorithm = pools["pools"]["web"]["algorithm"]
            .as_str()
            .unwrap_or("")
            .to_owned();
        let mut backends: Vec<String> = pools["pools"]["dns"]["backends"]
            .as_array()
            .map(|list| {
                list.iter()
                    .filter_map(|b| b["address"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        backends.sort();
        let stream = common::tls_connect(tls, "soak.test", &connector).await;
        let certificate =
            chaos.certificate.is_empty() || common::presented(&stream) == chaos.certificate;
        let ok = algorithm == chaos.algorithm && backends == answered && certificate;
        if ok || Instant::now() > deadline {
            break (ok, algorithm, backends, certificate);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    Line {
        check: "the last valid config, certificate and DNS answer are what runs at the end",
        pass: ok,
        detail: format!(
            "web algorithm {algorithm} (last written {}); DNS pool {backends:?} (last answer {answered:?}); the last certificate served: {certificate}",
            chaos.algorithm
        ),
    }
}

#[allow(clippy::too_many_arguments)]
fn report(
    stats: &load::Stats,
    chaos: &Chaos,
    samples: &[watch::Sample],
    counted: &watch::Counted,
    log: &watch::LogReview,
    stuck: usize,
    alive: bool,
    exited: bool,
    length: Duration,
) -> Vec<Line> {
    let mut lines = Vec::new();
    let examples = |t: &load::Tally| {
        if t.examples.is_empty() {
            String::new()
        } else {
            format!(" — e.g. {}", t.examples.join("; "))
        }
    };
    lines.push(Line {
        check: "every request answered (none past 15 s), every client stopped",
        pass: stats.hangs == 0 && stuck == 0,
        detail: format!("{} hangs, {stuck} clients stuck", stats.hangs),
    });
    for (what, t) in &stats.gets {
        lines.push(Line {
            check: "idempotent (GET), a healthy backend always there: 0 failed",
            pass: t.failed == 0 && t.total > 0,
            detail: format!("{what}: {} of {} failed{}", t.failed, t.total, examples(t)),
        });
    }
    let cut: Vec<String> = stats
        .posts_cut
        .iter()
        .map(|(s, n)| format!("{s} ×{n}"))
        .collect();
    lines.push(Line {
        check: "non-idempotent (POST): failed only after the body went out, 502/503/504 with a reason",
        pass: stats.posts.failed == 0 && stats.posts.total > 0,
        detail: format!(
            "{} POSTs; after the body went out: {} ({}); otherwise: {}{}",
            stats.posts.total,
            stats.posts_cut.values().sum::<u64>(),
            if cut.is_empty() { "none".into() } else { cut.join(", ") },
            stats.posts.failed,
            examples(&stats.posts)
        ),
    });
    for (what, lived) in [
        ("WebSockets", &stats.websockets),
        ("gRPC-style streams", &stats.streams),
    ] {
        lines.push(Line {
            check: if what == "WebSockets" { "WebSockets: closed only when their own backend died" } else { "streams: closed only when their own backend died" },
            pass: lived.cut.failed == 0 && lived.open_failed.failed == 0 && lived.opened > 0,
            detail: format!(
                "{what}: {} opened ({} could not as their backend had just died, {} failed to open otherwise{}), {} messages echoed, {} ended by the client, {} cut by their backend's death, {} cut otherwise{}",
                lived.opened,
                lived.open_cut_by_backend,
                lived.open_failed.failed,
                examples(&lived.open_failed),
                lived.messages,
                lived.ended,
                lived.cut_by_backend,
                lived.cut.failed,
                examples(&lived.cut)
            ),
        });
    }
    // Growth after the first minute: the median of the samples' last tenth against the median of their first
    // tenth (10 samples at least, as RSS moves by ±15% from second to second with the allocator's caches).
    let settle = 60.0_f64.min(length.as_secs_f64() / 2.0);
    let after: Vec<&watch::Sample> = samples
        .iter()
        .filter(|s| s.at >= settle && s.at <= length.as_secs_f64())
        .collect();
    for (what, get, limit) in [
        (
            "RSS (KiB)",
            (|s: &watch::Sample| Some(s.rss_kib)) as fn(&watch::Sample) -> Option<u64>,
            0.10,
        ),
        (
            "open file descriptors beyond client connections",
            |s: &watch::Sample| s.other_fds,
            0.10,
        ),
    ] {
        let values: Vec<u64> = after.iter().filter_map(|s| get(s)).collect();
        if values.is_empty() {
            lines.push(Line {
                check: "process samples",
                pass: false,
                detail: format!("no {what} sample after {settle:.0} s"),
            });
            continue;
        }
        let tail = (values.len() / 10).max(10).min(values.len() / 2).max(1);
        let first = watch::spread(&values[..tail.min(values.len())]).1;
        let last = watch::spread(&values[values.len() - tail..]).1;
        let growth = if first == 0 {
            0.0
        } else {
            last as f64 / first as f64 - 1.0
        };
        let (min, median, max) = watch::spread(&values);
        let tenths: Vec<u64> = values
            .chunks(values.len().div_ceil(10).max(1))
            .map(|c| watch::spread(c).1)
            .collect();
        // Descriptors swing by a dozen from one tenth to another with the upstream connections the load opens
        // and lets idle out, so a short run's first tenth says little: they pass while the last tenth stays
        // within 8 of the highest tenth of the first half. A leak keeps rising past what the first half saw.
        let first_half_high = tenths[..tenths.len().div_ceil(2)]
            .iter()
            .copied()
            .max()
            .unwrap_or(first);
        lines.push(Line {
            check: if what.starts_with("RSS") {
                "RSS after the first minute: growth ≤ 10%"
            } else {
                "open fds after the first minute: growth ≤ 10%, or ≤ 8 above the first half's highest tenth"
            },
            pass: growth <= limit || (what.starts_with("open") && last <= first_half_high + 8),
            detail: format!(
                "{what}: {} samples from {settle:.0} s; min {min}, median {median}, max {max}; first tenth {first}, last tenth {last}: {:+.1}%; median of each tenth: {}",
                values.len(),
                growth * 100.0,
                tenths
                    .iter()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
        });
    }
    lines.push(Line {
        check: "no panic, no ERROR line the run did not cause",
        pass: log.panics.is_empty() && log.unexpected_errors.is_empty(),
        detail: format!(
            "{} log lines: {} panics, {} ERROR from invalid configs and half-written certificate pairs (on purpose), {} other ERROR, {} WARN{}",
            log.lines,
            log.panics.len(),
            log.expected_errors,
            log.unexpected_errors.len(),
            log.warnings,
            log.panics.iter().chain(&log.unexpected_errors).take(3).map(|l| format!(" — {l}")).collect::<String>()
        ),
    });
    let proxy = counted.by_code();
    let mut worst = 0.0_f64;
    let mut pairs = Vec::new();
    let codes: std::collections::BTreeSet<u16> =
        proxy.keys().chain(stats.statuses.keys()).copied().collect();
    let (mut client_total, mut proxy_total) = (0u64, 0u64);
    for code in codes {
        let (c, p) = (
            stats.statuses.get(&code).copied().unwrap_or(0),
            proxy.get(&code).copied().unwrap_or(0),
        );
        client_total += c;
        proxy_total += p;
        let off = c.abs_diff(p) as f64 / c.max(p).max(1) as f64;
        // A handful of requests is too few for a share: up to 2 apart passes.
        if c.abs_diff(p) > 2 {
            worst = worst.max(off);
        }
        pairs.push(format!("{code}: {c} / {p}"));
    }
    lines.push(Line {
        check: "/metrics agrees with the clients (requests by status within 0.1%)",
        pass: worst <= 0.001 && client_total > 0,
        detail: format!(
            "clients / /metrics: {} — total {client_total} / {proxy_total}, worst {:.3}%",
            pairs.join(", "),
            worst * 100.0
        ),
    });
    lines.push(Line {
        check: "the proxy ran throughout and stopped cleanly on SIGTERM",
        pass: alive && exited,
        detail: format!("running at the end: {alive}; exit 0 after SIGTERM: {exited}"),
    });
    let events: Vec<String> = chaos
        .events
        .iter()
        .map(|(e, n)| format!("{e} ×{n}"))
        .collect();
    lines.push(Line {
        check: "chaos",
        pass: !chaos.events.is_empty(),
        detail: format!(
            "{} events: {}",
            chaos.events.values().sum::<u64>(),
            events.join(", ")
        ),
    });
    lines
}
