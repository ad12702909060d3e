//! Test helpers: real backends on 127.0.0.1:0, the proxy started in-process from a TOML string, a real client.
#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use switchyard::server::Server;

mod admin;
mod backends;
mod clients;
mod dns;
mod metrics;
mod process;
mod scripted;
mod tls;
mod tools;
#[allow(unused_imports)]
pub use admin::*;
#[allow(unused_imports)]
pub use backends::*;
#[allow(unused_imports)]
pub use clients::*;
#[allow(unused_imports)]
pub use dns::*;
#[allow(unused_imports)]
pub use metrics::*;
#[allow(unused_imports)]
pub use process::*;
#[allow(unused_imports)]
pub use scripted::*;
#[allow(unused_imports)]
pub use tls::*;
#[allow(unused_imports)]
pub use tools::*;

/// Makes a panic in any tokio task (switchyard's or a test backend's) fail the whole test binary loudly:
/// tokio would otherwise catch it and leave the test to time out or pass on a half-dead server.
pub fn fail_on_task_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            previous(info);
            let thread = std::thread::current();
            if thread
                .name()
                .is_some_and(|n| n.starts_with("tokio-runtime-worker"))
            {
                eprintln!("a task panicked: aborting the test binary");
                std::process::abort();
            }
        }));
    });
}

/// Starts switchyard in-process on a config text.
pub async fn start_proxy(toml: &str) -> Server {
    fail_on_task_panics();
    let config = switchyard::config::parse(toml, "test.toml")
        .unwrap_or_else(|e| panic!("bad test config:\n{e}"));
    Server::start(config).await.unwrap()
}

/// A config with top-level keys `top` (they must come before any table), then [`config`]'s.
pub fn config_top(top: &str, rest: &str) -> String {
    format!("{top}\n{}", config(rest))
}

/// A minimal config: one listener and admin on port 0, plus `rest`.
pub fn config(rest: &str) -> String {
    format!(
        "[[listeners]]\naddress = \"127.0.0.1:0\"\n\n[admin]\naddress = \"127.0.0.1:0\"\n\n{rest}"
    )
}

/// Polls `check` until it returns true or `deadline` passes.
pub async fn eventually<F, Fut>(deadline: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let end = tokio::time::Instant::now() + deadline;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() > end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A config with one route to one pool `p` over `backends`; `extra` lines go under `[pools.p]`.
pub fn pool_config(backends: &[SocketAddr], extra: &str) -> String {
    let list: Vec<String> = backends
        .iter()
        .map(|a| format!("{{ address = \"{a}\" }}"))
        .collect();
    config(&format!(
        "[[routes]]\npool = \"p\"\n[pools.p]\nbackends = [{}]\n{extra}\n",
        list.join(", ")
    ))
}

/// Replaces a file's content the way editors and deploy tools do: a new file renamed over the old one.
pub fn write_atomically(path: &std::path::Path, content: impl AsRef<[u8]>) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, content).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A log text without its terminal colour codes.
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
