//! The HTTP/2 downstream path: the input, after the client preface, is what a client sends on a connection
//! (frames, HPACK blocks, bodies). It goes over an in-memory stream into the listener's own connection code
//! (`serve_http` with a proxy listener's HTTP/2 settings, under `TimedIo`'s deadlines) running the proxy: h2's
//! frame and header checks, switchyard's request checks (`Host` against `:authority`, transfer codings), routing,
//! the body limit, request IDs, and a pool whose backend refuses connections. Nothing may panic, and the
//! connection must end once the client has said everything (on a paused clock, so its timeouts cost no wall time),
//! even when the client's flow-control windows hold the answers back (`limits.idle_timeout` then ends it).
#![no_main]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper::service::service_fn;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::runtime::Runtime;

use switchyard::config::Limits;
use switchyard::observe::metrics::Metrics;
use switchyard::proxy::{ConnInfo, Proxy, headers};
use switchyard::router::Snapshot;
use switchyard::serve::conn::{ConnClock, GuardedBody, TimedIo};
use switchyard::serve::{Drain, Versions, serve_http};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Ports 1 and 2 on loopback: nothing listens there, so every attempt is refused at once (then the breaker opens).
/// `[limits]` other than the body limit stay at their defaults: the connection is served with `Limits::default()`.
const CONFIG: &str = r#"
[[listeners]]
address = "127.0.0.1:0"

[limits]
max_request_body_bytes = 1024

[request_id]

[[routes]]
pool = "web"

[[routes]]
host = "h2.example"
path_prefix = "/api"
pool = "api"

[[routes]]
host = "h2.example"
path_prefix = "/api"
headers = { "x-canary" = "1" }
pool = "web"

[pools.web]
backends = [{ address = "127.0.0.1:1" }]

[pools.api]
backends = [{ address = "127.0.0.1:1" }, { address = "127.0.0.1:2" }]

[pools.api.retry]
max_retries = 1
"#;

/// How long (on the paused clock) a connection may take after the client has sent everything: past the header
/// and body timeouts, so only a connection nothing would ever end runs into it.
const LIMIT: Duration = Duration::from_secs(600);

thread_local! {
    static RUNTIME: Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("a current-thread runtime");
}

fn proxy() -> &'static Arc<Proxy> {
    static PROXY: OnceLock<Arc<Proxy>> = OnceLock::new();
    PROXY.get_or_init(|| {
        let config = switchyard::config::parse(CONFIG, "fuzz.toml").expect("fixed config");
        let snapshot = Arc::new(ArcSwap::from_pointee(Snapshot::of(&config)));
        Arc::new(Proxy::new(snapshot, Arc::new(Metrics::new())))
    })
}

/// One client connection, served as a proxy listener serves it (`serve::Acceptor::serve`), the client sending
/// `input` and reading everything it is sent. `false`: the connection was still open after [`LIMIT`].
async fn connection(input: &[u8]) -> bool {
    let proxy = proxy();
    let limits = Limits::default();
    let peer: SocketAddr = ([192, 0, 2, 1], 40000).into();
    let info = ConnInfo {
        peer,
        peer_value: headers::peer_value(peer.ip()),
        https: false,
        redirect_https: false,
    };
    // The listener's defaults for `header_read_timeout` and `idle_timeout`.
    let clock = ConnClock::new(Duration::from_secs(10), Duration::from_secs(60));
    let requests = Arc::clone(&clock);
    // The listener's service, but for the ambiguous-framing answer, which only HTTP/1 heads can get.
    let service = service_fn(move |req| {
        let guard = requests.request_started();
        let answer = Box::pin(proxy.handle(req, info.clone()));
        async move {
            let resp = answer.await;
            Ok::<_, Infallible>(resp.map(|inner| GuardedBody::new(inner, guard)))
        }
    });
    let (client, server) = tokio::io::duplex(64 * 1024);
    let graceful = Drain::new();
    let served = serve_http(
        TimedIo::new(server, clock),
        Versions::Http2,
        service,
        Some(&limits),
        graceful.watcher(),
    );
    let (mut from_server, mut to_server) = tokio::io::split(client);
    // The client keeps its side open, as one waiting for answers does: the connection ends when the server
    // closes it (its idle or header timeout, a GOAWAY).
    let send = async move {
        to_server.write_all(PREFACE).await?;
        to_server.write_all(input).await?;
        Ok::<_, std::io::Error>(to_server)
    };
    let receive = async move {
        let mut buf = vec![0; 16 * 1024];
        while from_server.read(&mut buf).await? > 0 {}
        Ok::<_, std::io::Error>(())
    };
    let client = async {
        // The server may stop reading (a GOAWAY) before the client is done: not an error here.
        let _ = tokio::join!(send, receive);
    };
    tokio::time::timeout(LIMIT, async { tokio::join!(served, client) })
        .await
        .is_ok()
}

/// Lets the tasks the connection spawned (one per stream) see that it is gone and end, as they must: nothing is
/// left for the next input (or for the runtime's drop at exit, after the clock's thread-local is gone).
async fn settle() {
    let alive = || {
        tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks()
    };
    for _ in 0..64 {
        if alive() == 0 {
            return;
        }
        tokio::task::yield_now().await;
    }
    tokio::time::sleep(LIMIT).await;
    assert_eq!(alive(), 0, "tasks outlived their connection");
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    RUNTIME.with(|rt| {
        let ended = rt.block_on(connection(data));
        assert!(
            ended,
            "the connection was still open {LIMIT:?} after the client went quiet"
        );
        rt.block_on(settle());
    });
});
