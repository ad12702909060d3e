//! The `switchyard` command line: `run`, `validate`, `demo` and `status` (clap), logging, runtimes and signals.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tracing_subscriber::EnvFilter;

use crate::config::{self, Config};
use crate::control::{Trigger, request_reload};
use crate::demo;
use crate::server::Server;

mod status;

#[derive(Parser)]
#[command(
    name = "switchyard",
    version,
    about = "A load balancer and health-check proxy for HTTP services"
)]
struct Cli {
    /// Log level (error, warn, info, debug, trace); RUST_LOG overrides it.
    #[arg(long, global = true, default_value = "info")]
    log_level: String,
    /// Application log format on standard error.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Run {
        /// The config file.
        #[arg(short, long)]
        config: PathBuf,
        /// Worker threads (default: [runtime] workers, else one per core).
        #[arg(long)]
        workers: Option<usize>,
    },
    /// Check a config file and print a summary, or every problem in it.
    Validate {
        /// The config file.
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Start three local demo upstreams and the proxy on the example config.
    Demo {
        /// The config file (its backends become the demo upstreams).
        #[arg(short, long, default_value = "config/example.toml")]
        config: PathBuf,
        /// Worker threads (default: one per core).
        #[arg(long)]
        workers: Option<usize>,
    },
    /// Print the pools and backends of a running switchyard (its admin listener) as tables. Exit code 0 when
    /// every pool has a usable backend, 1 when one has none, 2 when the admin listener cannot be asked.
    Status {
        /// The admin listener's address (`admin.address` in the config).
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin: String,
        /// A file holding the admin token (`admin.token_file`), when the listener wants one.
        #[arg(long)]
        token_file: Option<PathBuf>,
        /// Redraw every second until interrupted.
        #[arg(long)]
        watch: bool,
    },
}

/// Parses the command line and runs it; the binary's `main` is only this.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&cli.log_level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }

    match cli.command {
        Command::Status {
            admin,
            token_file,
            watch,
        } => status::run(&admin, token_file.as_deref(), watch),
        Command::Validate { config } => match config::load(&config) {
            Ok(c) => {
                for w in &c.warnings {
                    eprintln!("{}: warning: {w}", config.display());
                }
                println!("{}: ok: {}", config.display(), c.summary());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                let n = e.count();
                eprintln!("{}: {n} error{}", e.file, if n == 1 { "" } else { "s" });
                ExitCode::FAILURE
            }
        },
        Command::Run {
            config: path,
            workers,
        } => match config::load(&path) {
            Ok(c) => run(c, Some(path), workers, None),
            Err(e) => {
                eprintln!("{e}");
                eprintln!("switchyard: not starting: {} has errors", e.file);
                ExitCode::FAILURE
            }
        },
        Command::Demo { config, workers } => {
            let (c, shown) = match demo_config(&config) {
                Ok(pair) => pair,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::FAILURE;
                }
            };
            let path = config.exists().then_some(config);
            run(c, path, workers, Some(shown))
        }
    }
}

/// The demo's config: the given file, or the example compiled into the binary when that file is not there.
fn demo_config(path: &Path) -> Result<(Config, String), config::ConfigError> {
    if path.exists() {
        config::load(path).map(|c| (c, path.display().to_string()))
    } else {
        let shown = "config/example.toml (built in)";
        config::parse(include_str!("../config/example.toml"), shown).map(|c| (c, shown.to_owned()))
    }
}

fn run(
    config: Config,
    path: Option<PathBuf>,
    workers: Option<usize>,
    demo: Option<String>,
) -> ExitCode {
    // Every client and upstream connection is a file descriptor: take all the system allows (the soft limit is
    // often 1024 while the hard one is far higher), so limits.max_connections is the limit that bites.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) if n < config.limits.max_connections as u64 * 2 => tracing::warn!(
            open_files = n,
            max_connections = config.limits.max_connections,
            "the open-file limit is below twice limits.max_connections; connections may be refused early"
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
    }
    for w in &config.warnings {
        tracing::warn!("{w}");
    }
    let workers = workers
        .or(config.runtime.workers)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    // Every runtime is a current-thread one, without a multi-thread scheduler's synchronization: this thread keeps
    // the control plane (reloads, health checks, the admin API and status page) and each worker thread accepts and
    // serves client connections on its own runtime. Even one worker gets a thread of its own: a reload of 10,000
    // backends takes ~20 ms of CPU, which the requests of a shared thread would all wait for.
    let runtime = match current_thread_runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("switchyard: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let worker_handles = match start_workers(workers) {
        Ok(handles) => handles,
        Err(e) => {
            eprintln!("switchyard: cannot start the worker threads: {e}");
            return ExitCode::FAILURE;
        }
    };
    yield_to_workers();
    runtime.block_on(async move {
        if let Some(shown) = &demo {
            if let Err(code) = start_demo_upstreams(&config).await {
                return code;
            }
            tracing::info!(config = %shown, "demo upstreams started");
        }
        let drain = config.drain_timeout;
        let started = Server::start_on(config, path, worker_handles).await;
        let server = match started {
            Ok(s) => s,
            Err(e) => {
                eprintln!("switchyard: {e}");
                return ExitCode::FAILURE;
            }
        };
        tracing::info!(workers, listeners = ?server.listen_addrs, admin = %server.admin_addr, "switchyard running");
        if demo.is_some() {
            show_demo(&server).await;
        }
        let shared = Arc::clone(&server.shared);
        let reloads = tokio::spawn(async move {
            let Some(mut hup) = hangups() else { return };
            while hup.recv().await.is_some() {
                tracing::info!("SIGHUP: reloading the config");
                // The outcome is logged by the control loop.
                let _ = request_reload(&shared, Trigger::Signal).await;
            }
        });
        wait_for_signal().await;
        reloads.abort();
        tracing::info!(?drain, "shutting down: no new connections, requests in flight may finish; send the signal again to exit at once");
        tokio::spawn(async {
            wait_for_signal().await;
            tracing::warn!("second signal: exiting now");
            std::process::exit(1);
        });
        server.shutdown().await;
        tracing::info!("stopped");
        ExitCode::SUCCESS
    })
}

/// Tasks a runtime polls between two looks at the sockets when tasks keep being ready (tokio's default is 61).
/// Under load every request wakes two tasks; looking at the sockets less often let switchyard serve 2–3% more
/// requests per CPU-second on the benchmark (docs/performance.md), and a runtime with nothing ready still looks
/// at once.
const EVENT_INTERVAL: u32 = 256;

/// How much less this thread (the control plane) weighs than a worker when they share a CPU: a nice value. With
/// the process on one CPU, a 20 ms reload otherwise holds requests up for its share of every scheduler slice
/// (benches/reload.py: p99 during reloads 2.4× the p99 without; 1.2–1.7× with this and the snapshot dropped on
/// the control plane); its work is never urgent by the millisecond. Linux only: there a nice value belongs to one
/// thread.
const CONTROL_PLANE_NICE: i32 = 10;

fn yield_to_workers() {
    #[cfg(target_os = "linux")]
    if let Err(e) =
        rustix::process::setpriority_process(Some(rustix::thread::gettid()), CONTROL_PLANE_NICE)
    {
        tracing::debug!(error = %e, "cannot lower the control plane's priority");
    }
}

/// One current-thread runtime (the main one, or a worker's).
fn current_thread_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .event_interval(EVENT_INTERVAL)
        .build()
}

/// How soon each worker always has a timer due.
///
/// tokio's time driver wakes its thread (a write to the runtime's eventfd, and one more `epoll_wait` turn)
/// whenever a timer is registered that is due before the driver's next planned wake-up, even while that thread is
/// busy running tasks. Each request registers its upstream timeout; a worker that last slept with no timer near
/// (its requests had all ended: the usual state below saturation) paid that write for the next request's timeout,
/// once every ten requests at 15,000 req/s (`benches/syscalls.py`). With a timer always due within this, timeouts
/// longer than it never need the wake; the cost is one wake-up a second on an idle worker.
const TIMER_HORIZON: Duration = Duration::from_secs(1);

async fn keep_a_timer_near() {
    loop {
        tokio::time::sleep(TIMER_HORIZON).await;
    }
}

/// Starts `n` threads, each running a current-thread runtime until the process ends; returns their handles.
fn start_workers(n: usize) -> std::io::Result<Vec<tokio::runtime::Handle>> {
    crate::upstream::set_runtime_count(n + 1);
    let mut handles = Vec::with_capacity(n);
    for i in 1..=n {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name(format!("switchyard-worker-{i}"))
            .spawn(move || {
                crate::upstream::set_runtime_index(i);
                match current_thread_runtime() {
                    Ok(rt) => {
                        rt.spawn(keep_a_timer_near());
                        let _ = tx.send(Ok(rt.handle().clone()));
                        rt.block_on(std::future::pending::<()>());
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                    }
                }
            })?;
        let handle = rx
            .recv()
            .map_err(|_| std::io::Error::other("a worker thread ended before it started"))??;
        handles.push(handle);
    }
    Ok(handles)
}

#[cfg(unix)]
fn hangups() -> Option<tokio::signal::unix::Signal> {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok()
}

#[cfg(not(unix))]
fn hangups() -> Option<tokio::sync::mpsc::Receiver<()>> {
    None
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

async fn start_demo_upstreams(config: &Config) -> Result<(), ExitCode> {
    let mut addresses: Vec<&str> = Vec::new();
    for pool in config.pools.values() {
        for b in &pool.backends {
            if !addresses.contains(&b.address.as_str()) {
                addresses.push(&b.address);
            }
        }
    }
    let last = addresses.len().saturating_sub(1);
    for (i, address) in addresses.iter().enumerate() {
        let Ok(addr) = address.parse() else {
            eprintln!(
                "switchyard demo: backend {address} is not an IP:port on this machine; the demo needs local addresses"
            );
            return Err(ExitCode::FAILURE);
        };
        let flaky = (i == last && addresses.len() > 1).then_some(demo::DEMO_FLAKY);
        let name = format!("upstream-{}", i + 1);
        if let Err(e) = demo::spawn_upstream(addr, name.clone(), flaky).await {
            eprintln!("switchyard demo: cannot start {name} on {address}: {e}");
            return Err(ExitCode::FAILURE);
        }
        println!(
            "  {name} on http://{address}{}",
            if flaky.is_some() {
                "  (flaky: answers 500 for 10 s of every 30 s)"
            } else {
                ""
            }
        );
    }
    Ok(())
}

async fn show_demo(server: &Server) {
    let Some(proxy) = server.listen_addrs.first() else {
        return;
    };
    let admin = server.admin_addr;
    println!();
    println!("switchyard is balancing the demo upstreams. Try:");
    println!("  curl http://{proxy}/            (pool \"web\", weighted round-robin)");
    println!("  curl http://{proxy}/api/hello   (pool \"api\", peak-EWMA)");
    println!("  curl http://{admin}/api/pools   (pools and backends)");
    println!("  curl http://{admin}/metrics     (Prometheus metrics)");
    println!();
    println!("Ten requests to http://{proxy}/ now:");
    let client: Client<_, Empty<bytes::Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    for i in 1..=10 {
        let Ok(uri) = format!("http://{proxy}/demo/{i}").parse::<http::Uri>() else {
            return;
        };
        match client.get(uri).await {
            Ok(resp) => {
                let status = resp.status();
                let from = resp
                    .headers()
                    .get("x-upstream")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("switchyard")
                    .to_owned();
                let _ = resp.into_body().collect().await;
                println!("  GET /demo/{i:<2} -> {status} from {from}");
            }
            Err(e) => println!("  GET /demo/{i:<2} -> failed: {e}"),
        }
    }
    println!();
    println!("Press Ctrl-C to stop.");
}
