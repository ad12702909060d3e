//! Overload past the process's file-descriptor limit, against the real binary started with `ulimit -n 96`: new
//! connections are closed cleanly (not left hanging), refusing them does not spin a core, connections already
//! open keep working, and new ones are served again once descriptors are free.
#![allow(clippy::disallowed_methods)] // wall-clock time against real processes and sockets

mod common;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use common::*;

fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}

/// One request on an open connection; the status code.
async fn ask(tcp: &mut TcpStream) -> Option<u16> {
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .ok()?;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !String::from_utf8_lossy(&got).ends_with("killable-a") {
        match tokio::time::timeout_at(deadline, tcp.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
            _ => return None,
        }
    }
    String::from_utf8_lossy(&got).get(9..12)?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_descriptor_limit_new_connections_are_closed_cleanly_and_old_ones_work() {
    let Some(sh) = which("sh") else {
        return;
    };
    let backend = Killable::start("killable-a").await;
    let dir = tempfile::tempdir().unwrap();
    let (port, admin) = (free_port(), free_port());
    let config = dir.path().join("switchyard.toml");
    std::fs::write(
        &config,
        binary_pool_config(port, admin, &[backend.addr], "")
            .replace("[admin]", "[limits]\nmax_connections = 10000\n[admin]"),
    )
    .unwrap();
    let log = dir.path().join("stderr.log");
    let child = Command::new(sh)
        .args([
            "-c",
            "ulimit -n 96 && exec \"$0\" run --config \"$1\" --workers 1",
            env!("CARGO_BIN_EXE_switchyard"),
            config.to_str().unwrap(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
        .spawn()
        .unwrap();
    let proc = Proc(child, Some(log.clone()));
    let pid = proc.0.id();
    let proxy: SocketAddr = ([127, 0, 0, 1], port).into();
    assert!(
        eventually(Duration::from_secs(20), || async {
            try_get(proxy, "/").await.is_some_and(|(s, _)| s == 200)
        })
        .await,
        "switchyard did not come up: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );

    // Five kept-alive clients, served.
    let mut early = Vec::new();
    for _ in 0..5 {
        let mut tcp = TcpStream::connect(proxy).await.unwrap();
        assert_eq!(ask(&mut tcp).await, Some(200));
        early.push(tcp);
    }

    // A flood of idle connections: the first ones take every descriptor left.
    let mut flood = Vec::new();
    for _ in 0..150 {
        if let Ok(tcp) = TcpStream::connect(proxy).await {
            flood.push(tcp);
        }
    }
    // Out of descriptors now: new connections, one every 10 ms for 3 s. Each must be closed (EOF or reset) by
    // the proxy within a second, not left hanging; and refusing them must not spin a core.
    let cpu_before = cpu_seconds(pid);
    let started = Instant::now();
    let mut closed = 0;
    let mut hanging = 0;
    let mut attempts = 0;
    while started.elapsed() < Duration::from_secs(3) {
        attempts += 1;
        match TcpStream::connect(proxy).await {
            Ok(mut tcp) => {
                let mut buf = [0u8; 64];
                match tokio::time::timeout(Duration::from_secs(1), tcp.read(&mut buf)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => closed += 1,
                    Ok(Ok(_)) => {}
                    Err(_) => hanging += 1,
                }
            }
            Err(_) => closed += 1,
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let busy = (cpu_seconds(pid) - cpu_before) / started.elapsed().as_secs_f64();
    eprintln!(
        "out of descriptors: {attempts} new connections, {closed} closed, {hanging} left hanging; \
         the proxy used {:.1}% of a core while refusing",
        busy * 100.0
    );
    assert!(attempts > 20);
    assert!(
        closed * 10 >= attempts * 9,
        "{closed} of {attempts} closed, {hanging} hanging"
    );
    assert!(busy < 0.25, "refusing used {:.0}% of a core", busy * 100.0);

    // The connections already open still work.
    for tcp in &mut early {
        assert_eq!(
            ask(tcp).await,
            Some(200),
            "an open connection stopped working"
        );
    }

    // Load drops: new connections are served again.
    drop(flood);
    assert!(
        eventually(Duration::from_secs(10), || async {
            try_get(proxy, "/").await.is_some_and(|(s, _)| s == 200)
        })
        .await,
        "no recovery after the flood"
    );
    let text = reqwest_metrics(admin).await;
    let shed = metric(
        &text,
        "switchyard_rejected_requests_total{reason=\"out_of_file_descriptors\"}",
    )
    .unwrap_or(0.0);
    assert!(shed >= 1.0, "{text}");
    let warnings = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .matches("out of file descriptors")
        .count();
    assert!(
        (1..=10).contains(&warnings),
        "{warnings} warnings in about 4 s: at most one a second"
    );
    drop(proc);
}

async fn reqwest_metrics(admin: u16) -> String {
    let addr: SocketAddr = ([127, 0, 0, 1], admin).into();
    for _ in 0..50 {
        if let Some((s, body)) = try_get(addr, "/metrics").await {
            if s == 200 {
                return body;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    String::new()
}
