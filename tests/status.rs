//! The status page, its API (`/api/status`, `/api/events`, `/api/events/stream`) and `switchyard status`, against
//! the real binary and real backends; the page itself in a real headless Chromium driven over WebDriver.
#![allow(clippy::disallowed_methods)] // wall-clock time against real processes, sockets and a browser

mod common;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use fantoccini::{Client as Browser, ClientBuilder, Locator};
use serde_json::{Value, json};

const TOKEN: &str = "s3cret-admin-token";

/// A config for the binary: pool `p` over `backends` with fast health checks; `admin_extra` under `[admin]`.
fn page_config(port: u16, admin: u16, backends: &[SocketAddr], admin_extra: &str) -> String {
    let list: Vec<String> = backends
        .iter()
        .map(|a| format!("{{ address = \"{a}\" }}"))
        .collect();
    format!(
        "[[listeners]]\naddress = \"127.0.0.1:{port}\"\n[admin]\naddress = \"127.0.0.1:{admin}\"\n{admin_extra}\n\
         [[routes]]\npool = \"p\"\n[pools.p]\nbackends = [{}]\n\
         [pools.p.health_check]\npath = \"/healthz\"\ninterval = \"1s\"\ntimeout = \"500ms\"\n\
         healthy_threshold = 1\nunhealthy_threshold = 1\n",
        list.join(", ")
    )
}

async fn admin_request(
    admin: u16,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> (http::StatusCode, http::HeaderMap, String) {
    let mut req = http::Request::builder()
        .method(method)
        .uri(format!("http://127.0.0.1:{admin}{path}"));
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let resp = client().request(req.body(full("")).unwrap()).await.unwrap();
    let (parts, body) = resp.into_parts();
    use http_body_util::BodyExt;
    let body = body.collect().await.unwrap().to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

async fn status_of(admin: u16, token: Option<&str>) -> Value {
    let (s, _, body) = admin_request(admin, "GET", "/api/status", token).await;
    assert_eq!(s, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn backend_in(status: &Value, addr: SocketAddr) -> &Value {
    status["pools"][0]["backends"]
        .as_array()
        .and_then(|l| l.iter().find(|b| b["address"] == addr.to_string()))
        .unwrap_or(&Value::Null)
}

/// `switchyard status` with `args`: (exit code, stdout, stderr).
fn status_command(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .arg("status")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn the_api_shows_live_rates_history_and_events_and_the_page_is_locked_down() {
    let a = Killable::start("a").await;
    let b = Killable::start("b").await;
    let dir = tempfile::tempdir().unwrap();
    let (_proc, port, admin) = spawn(dir.path(), |p, ad| {
        page_config(p, ad, &[a.addr, b.addr], "")
    })
    .await;
    let proxy: SocketAddr = ([127, 0, 0, 1], port).into();

    // The page and its assets: embedded, small, and served with headers that lock them down.
    let mut total = 0;
    for (path, kind) in [
        ("/", "text/html"),
        ("/ui/app.js", "text/javascript"),
        ("/ui/app.css", "text/css"),
    ] {
        let (s, h, body) = admin_request(admin, "GET", path, None).await;
        assert_eq!(s, 200, "{path}");
        assert!(h["content-type"].to_str().unwrap().starts_with(kind));
        let csp = h["content-security-policy"].to_str().unwrap();
        assert!(
            csp.contains("script-src 'self'") && csp.contains("default-src 'none'"),
            "{csp}"
        );
        assert_eq!(h["x-content-type-options"], "nosniff");
        assert_eq!(h["cache-control"], "no-store");
        if path == "/" {
            assert!(
                !body.contains("http"),
                "the page loads nothing from elsewhere"
            );
        }
        total += body.len();
    }
    assert!(total < 150 * 1024, "the page weighs {total} bytes");
    let (s, h, _) = admin_request(admin, "GET", "/api/status", None).await;
    assert_eq!(s, 200);
    assert_eq!(h["cache-control"], "no-store");
    assert_eq!(
        admin_request(admin, "GET", "/ui/nope.js", None).await.0,
        404
    );
    // Never on a proxy listener: there `/` goes to the backends.
    let (_, _, body) = get(proxy, "/", None).await;
    assert!(body == "a" || body == "b", "{body}");

    // Live figures: 40 requests in a few seconds show as a rate, with latency percentiles.
    let mut events = sse(admin, None).await;
    for _ in 0..40 {
        let (s, _, _) = get(proxy, "/x", None).await;
        assert_eq!(s, 200);
    }
    assert!(
        eventually(Duration::from_secs(10), || async {
            let st = status_of(admin, None).await;
            st["pools"][0]["requests_per_second"]
                .as_f64()
                .unwrap_or(0.0)
                > 0.0
                && st["pools"][0]["p99_ms"].as_f64().is_some()
        })
        .await,
        "{}",
        status_of(admin, None).await
    );
    let st = status_of(admin, None).await;
    let pool = &st["pools"][0];
    assert_eq!(pool["name"], "p");
    assert_eq!(pool["algorithm"], "round_robin");
    assert_eq!(pool["backends_total"], 2);
    assert_eq!(pool["backends_usable"], 2);
    assert_eq!(st["history_interval_seconds"], 10);
    assert!(pool["history"].is_array());
    assert_eq!(backend_in(&st, a.addr)["state"], "up");

    // Another site's page cannot drain through the operator's browser, nor read through a rebound DNS name.
    let path = format!("/api/pools/p/backends/{}/drain", b.addr);
    let mut foreign = http::Request::post(format!("http://127.0.0.1:{admin}{path}"))
        .header("origin", "https://evil.example")
        .body(full(""))
        .unwrap();
    assert_eq!(client().request(foreign).await.unwrap().status(), 403);
    foreign = http::Request::get(format!("http://127.0.0.1:{admin}/api/status"))
        .header("host", format!("rebound.example:{admin}"))
        .body(full(""))
        .unwrap();
    assert_eq!(client().request(foreign).await.unwrap().status(), 403);
    assert_eq!(
        backend_in(&status_of(admin, None).await, b.addr)["draining"],
        false
    );
    // A drain through the API is an event, in the feed and on the stream.
    assert_eq!(admin_request(admin, "POST", &path, None).await.0, 200);
    let got = events
        .until_kind("backend_draining", 1, Duration::from_secs(10))
        .await;
    assert_eq!(got[0]["backend"], b.addr.to_string());
    let (_, _, body) = admin_request(admin, "GET", "/api/events", None).await;
    let feed: Value = serde_json::from_str(&body).unwrap();
    let drained = feed["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "backend_draining")
        .unwrap_or_else(|| panic!("{feed}"));
    assert_eq!(drained["pool"], "p");
    assert_eq!(drained["backend"], b.addr.to_string());
    assert_eq!(
        backend_in(&status_of(admin, None).await, b.addr)["state"],
        "draining"
    );

    // `switchyard status`: the table, exit 0 while every pool has a usable backend.
    let admin_addr = format!("127.0.0.1:{admin}");
    let (code, out, err) = status_command(&["--admin", &admin_addr]);
    assert_eq!(code, 0, "{out}{err}");
    let lines: Vec<&str> = out.lines().collect();
    let header = lines
        .iter()
        .find(|l| l.starts_with("POOL  BACKEND"))
        .unwrap_or_else(|| panic!("{out}"));
    let drained = lines
        .iter()
        .find(|l| l.contains(&b.addr.to_string()))
        .unwrap();
    assert_eq!(header.find("STATE"), drained.find("draining"), "{out}");
    assert!(out.contains("every pool has a usable backend"), "{out}");

    // Both backends gone: the feed says why, and `switchyard status` exits 1.
    let (mut a, mut b) = (a, b);
    a.kill();
    b.kill();
    let down = events
        .until_kind("backend_down", 2, Duration::from_secs(15))
        .await;
    assert!(
        down.iter()
            .all(|e| e["message"].as_str().unwrap().contains("health check")),
        "{down:?}"
    );
    assert!(
        eventually(Duration::from_secs(10), || async {
            status_of(admin, None).await["pools"][0]["backends_usable"] == 0
        })
        .await
    );
    let (code, out, _) = status_command(&["--admin", &admin_addr]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("NO USABLE BACKEND in: p"), "{out}");
    assert!(out.contains("down"), "{out}");
    // `--watch` redraws every second until interrupted.
    let mut watching = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["status", "--watch", "--admin", &admin_addr])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = watching.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        use std::io::Read;
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        let end = Instant::now() + Duration::from_secs(20);
        while Instant::now() < end {
            match stdout.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
            if String::from_utf8_lossy(&seen).matches("\x1b[2J").count() >= 3 {
                break;
            }
        }
        String::from_utf8_lossy(&seen).into_owned()
    });
    let joined = tokio::task::spawn_blocking(move || reader.join().unwrap());
    let shown = match tokio::time::timeout(Duration::from_secs(30), joined).await {
        Ok(shown) => shown.unwrap(),
        Err(_) => {
            let _ = watching.kill();
            panic!("switchyard status --watch drew nothing in 30 s");
        }
    };
    signal(&watching, "INT");
    let stopped = eventually(Duration::from_secs(10), || {
        let exited = matches!(watching.try_wait(), Ok(Some(_)));
        async move { exited }
    })
    .await;
    if !stopped {
        let _ = watching.kill();
        let _ = watching.wait();
    }
    assert!(stopped, "switchyard status --watch did not stop on SIGINT");
    assert!(shown.matches("\x1b[2J").count() >= 3, "{shown}");
    assert!(shown.contains("NO USABLE BACKEND in: p"), "{shown}");
    // Nobody there: exit 2, and a reason.
    let (code, _, err) = status_command(&["--admin", &format!("127.0.0.1:{}", free_port())]);
    assert_eq!(code, 2);
    assert!(err.contains("cannot reach the admin listener"), "{err}");
    b.restart().await;
}

#[tokio::test]
async fn status_needs_the_token_where_the_admin_listener_has_one() {
    let a = Killable::start("a").await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), format!("{TOKEN}\n")).unwrap();
    let token_path = dir.path().join("token");
    let extra = format!("token_file = {:?}", token_path.display().to_string());
    let (_proc, _port, admin) =
        spawn(dir.path(), |p, ad| page_config(p, ad, &[a.addr], &extra)).await;
    // The page loads without it (it holds no data); the API does not answer without it.
    assert_eq!(admin_request(admin, "GET", "/", None).await.0, 200);
    assert_eq!(
        admin_request(admin, "GET", "/api/status", None).await.0,
        401
    );
    assert_eq!(
        admin_request(admin, "GET", "/api/events", None).await.0,
        401
    );
    assert_eq!(
        admin_request(admin, "GET", "/api/events/stream", None)
            .await
            .0,
        401
    );
    let admin_addr = format!("127.0.0.1:{admin}");
    let (code, _, err) = status_command(&["--admin", &admin_addr]);
    assert_eq!(code, 2);
    assert!(err.contains("--token-file"), "{err}");
    let (code, out, err) = status_command(&[
        "--admin",
        &admin_addr,
        "--token-file",
        token_path.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&a.addr.to_string()), "{out}");
}

/// A reader of `/api/events/stream`.
struct Sse {
    body: hyper::body::Incoming,
    buffer: String,
}

async fn sse(admin: u16, token: Option<&str>) -> Sse {
    let mut req = http::Request::get(format!("http://127.0.0.1:{admin}/api/events/stream"));
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let resp = client().request(req.body(full("")).unwrap()).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["content-type"],
        "text/event-stream; charset=utf-8"
    );
    Sse {
        body: resp.into_body(),
        buffer: String::new(),
    }
}

impl Sse {
    async fn next_event(&mut self, within: Duration) -> Value {
        use http_body_util::BodyExt;
        let deadline = tokio::time::Instant::now() + within;
        loop {
            while let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                if let Some(data) = block.lines().find_map(|l| l.strip_prefix("data: ")) {
                    return serde_json::from_str(data).unwrap();
                }
            }
            let frame = tokio::time::timeout_at(deadline, self.body.frame())
                .await
                .expect("no event in time")
                .expect("the stream ended")
                .unwrap();
            if let Ok(data) = frame.into_data() {
                self.buffer.push_str(&String::from_utf8_lossy(&data));
            }
        }
    }

    async fn until_kind(&mut self, kind: &str, n: usize, within: Duration) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + within;
        let mut found = Vec::new();
        while found.len() < n {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let e = self.next_event(left).await;
            if e["kind"] == kind {
                found.push(e);
            }
        }
        found
    }
}

// ---- the page in a real browser ----

/// chromedriver in a process group of its own, so the browsers it starts go with it.
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .status();
        let _ = self.child.wait();
    }
}

/// A headless Chromium session, or `None` (skipped) where chromium or chromedriver is not installed.
async fn browser() -> Option<(Driver, Browser)> {
    use std::os::unix::process::CommandExt;
    let chromium = require("chromium")?;
    let chromedriver = require("chromedriver")?;
    for _ in 0..5 {
        let port = free_port();
        let child = Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap();
        let driver = Driver {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let up = eventually(Duration::from_secs(20), || async {
            try_get(addr, "/status")
                .await
                .is_some_and(|(s, _)| s == 200)
        })
        .await;
        if !up {
            continue;
        }
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": chromium,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=1400,1000", "--no-first-run"],
            }),
        );
        let session = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&driver.url)
            .await;
        match session {
            Ok(b) => return Some((driver, b)),
            Err(e) => eprintln!("chromedriver session failed, trying again: {e}"),
        }
    }
    panic!("chromedriver did not start a session");
}

/// The text of the first element matching `css`, or `None`; the page redraws every second, so an element
/// found may be gone a moment later: that counts as not found yet.
async fn text_of(page: &Browser, css: &str) -> Option<String> {
    let e = page.find(Locator::Css(css)).await.ok()?;
    e.text().await.ok()
}

async fn page_shows(page: &Browser, css: &str, wanted: &str, within: Duration) -> bool {
    eventually(within, || async {
        text_of(page, css).await.is_some_and(|t| t.contains(wanted))
    })
    .await
}

/// Clicks the element matching `css`, again if the page redrew it in between.
async fn click(page: &Browser, css: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match page.find(Locator::Css(css)).await {
            Ok(e) => match e.click().await {
                Ok(()) => return,
                Err(e) if Instant::now() > deadline => panic!("cannot click {css}: {e}"),
                Err(_) => {}
            },
            Err(e) if Instant::now() > deadline => panic!("no {css}: {e}"),
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn row(addr: SocketAddr) -> String {
    format!("section[data-pool=\"p\"] tr[data-backend=\"{addr}\"]")
}

#[tokio::test]
async fn the_page_in_a_real_browser_shows_failures_and_acts() {
    let Some((_driver, page)) = browser().await else {
        return;
    };
    let a = Killable::start("a").await;
    let b = Killable::start("b").await;
    let c = Killable::start("c").await;
    let dir = tempfile::tempdir().unwrap();
    let (_proc, port, admin) = spawn(dir.path(), |p, ad| {
        page_config(p, ad, &[a.addr, b.addr], "")
    })
    .await;
    let config_path = dir.path().join("switchyard.toml");
    page.goto(&format!("http://127.0.0.1:{admin}/"))
        .await
        .unwrap();

    // Pools and backends listed, with their state in words.
    let within = Duration::from_secs(15);
    assert!(page_shows(&page, "section[data-pool=\"p\"] h2", "p", within).await);
    for addr in [a.addr, b.addr] {
        assert!(
            page_shows(&page, &format!("{} [data-state]", row(addr)), "up", within).await,
            "{addr} not shown up: {:?}",
            page.source().await
        );
    }
    assert!(page_shows(&page, "[data-figure=\"algorithm\"]", "round_robin", within).await);

    // A backend killed: "down" with its reason within two health intervals (1 s each; the page polls each
    // second, and a busy CI machine gets 2 s of slack), and the event in the feed.
    let (mut a, b) = (a, b);
    a.kill();
    let killed = Instant::now();
    assert!(
        page_shows(
            &page,
            &format!("{} [data-state]", row(a.addr)),
            "down",
            within
        )
        .await
    );
    let took = killed.elapsed();
    eprintln!("the page showed the killed backend down after {took:?}");
    // Two intervals is the design (1 s checks, threshold 1, the page polls each second); the bound leaves a
    // busy 2-core CI machine room.
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert!(
        page_shows(
            &page,
            &format!("{} [data-reason]", row(a.addr)),
            "last check: ",
            within
        )
        .await
    );
    assert!(
        page_shows(
            &page,
            "#events li[data-kind=\"backend_down\"]",
            &a.addr.to_string(),
            within
        )
        .await
    );
    assert!(page_shows(&page, "#summary", "all with usable backends", within).await);

    // Drain from the page: the admin API sees it; enable from the page undoes it.
    click(
        &page,
        &format!("{} button[data-action=\"drain\"]", row(b.addr)),
    )
    .await;
    let draining_in_pools = || async {
        let pools = admin_json(admin, "/api/pools").await;
        pools["pools"]["p"]["backends"]
            .as_array()
            .and_then(|l| l.iter().find(|x| x["address"] == b.addr.to_string()))
            .map(|x| x["draining"] == true)
    };
    assert!(eventually(within, || async { draining_in_pools().await == Some(true) }).await);
    assert!(
        page_shows(
            &page,
            &format!("{} [data-state]", row(b.addr)),
            "draining",
            within
        )
        .await
    );
    assert!(
        page_shows(
            &page,
            "#events li[data-kind=\"backend_draining\"]",
            &b.addr.to_string(),
            within
        )
        .await
    );
    click(
        &page,
        &format!("{} button[data-action=\"enable\"]", row(b.addr)),
    )
    .await;
    assert!(
        eventually(within, || async {
            draining_in_pools().await == Some(false)
        })
        .await
    );

    // A reload from the page applies a changed file (backend c added) and says so.
    write_atomically(
        &config_path,
        page_config(port, admin, &[a.addr, b.addr, c.addr], ""),
    );
    click(&page, "#reload").await;
    assert!(page_shows(&page, "#notice", "Config reloaded", within).await);
    assert!(
        page_shows(
            &page,
            "#events li[data-kind=\"reload\"]",
            "(admin API)",
            within
        )
        .await
    );
    assert!(
        page_shows(
            &page,
            &format!("{} [data-state]", row(c.addr)),
            "up",
            within
        )
        .await
    );
    assert_eq!(
        backend_in(&status_of(admin, None).await, c.addr)["healthy"],
        true
    );

    // An error text with markup in it shows as text: no element made of it, no script run.
    let hostile = "<script>window.__pwned=1</script><img src=x onerror=\"window.__pwned=2\">";
    let broken = page_config(port, admin, &[a.addr, b.addr, c.addr], "").replace(
        "pool = \"p\"\n[pools.p]",
        &format!("pool = {hostile:?}\n[pools.p]"),
    );
    write_atomically(&config_path, broken);
    click(&page, "#reload").await;
    assert!(
        page_shows(
            &page,
            "#notice",
            "<script>window.__pwned=1</script>",
            within
        )
        .await
    );
    assert!(
        page_shows(
            &page,
            "#events li[data-kind=\"reload_failed\"]",
            "<img src=x onerror",
            within
        )
        .await
    );
    let injected = page
        .execute(
            "return [document.scripts.length, document.images.length, window.__pwned === undefined]",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(injected, json!([1, 0, true]));
    let _ = page.close().await;
}

#[tokio::test]
async fn with_a_token_the_page_asks_for_it_and_actions_need_it() {
    let Some((_driver, page)) = browser().await else {
        return;
    };
    let a = Killable::start("a").await;
    let dir = tempfile::tempdir().unwrap();
    let token_path = dir.path().join("token");
    std::fs::write(&token_path, TOKEN).unwrap();
    let extra = format!("token_file = {:?}", token_path.display().to_string());
    let (_proc, _port, admin) =
        spawn(dir.path(), |p, ad| page_config(p, ad, &[a.addr], &extra)).await;
    let url = format!("http://127.0.0.1:{admin}/");
    page.goto(&url).await.unwrap();
    let within = Duration::from_secs(15);
    let drained =
        || async { backend_in(&status_of(admin, Some(TOKEN)).await, a.addr)["draining"] == true };

    // Asked for the token; a wrong one is not accepted and shows nothing.
    let form = page.find(Locator::Id("token-form")).await.unwrap();
    assert!(
        eventually(within, || async {
            form.is_displayed().await.unwrap_or(false)
        })
        .await
    );
    page.find(Locator::Id("token"))
        .await
        .unwrap()
        .send_keys("wrong")
        .await
        .unwrap();
    click(&page, "#token-submit").await;
    assert!(
        page_shows(
            &page,
            "#token-form label",
            "The token was not accepted",
            within
        )
        .await
    );
    assert!(text_of(&page, &row(a.addr)).await.is_none());

    // The right one: the page shows the pool, and keeps the token in this tab's session storage only.
    page.find(Locator::Id("token"))
        .await
        .unwrap()
        .send_keys(TOKEN)
        .await
        .unwrap();
    click(&page, "#token-submit").await;
    assert!(
        page_shows(
            &page,
            &format!("{} [data-state]", row(a.addr)),
            "up",
            within
        )
        .await
    );
    let stored = page
        .execute(
            "return [sessionStorage.getItem('switchyard-admin-token'), localStorage.length, document.cookie]",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(stored, json!([TOKEN, 0, ""]));
    assert!(!page.current_url().await.unwrap().as_str().contains(TOKEN));

    // Without the token an action fails (and the page asks again); with it, it works.
    click(&page, "#forget-token").await;
    click(
        &page,
        &format!("{} button[data-action=\"drain\"]", row(a.addr)),
    )
    .await;
    assert!(page_shows(&page, "#notice", "refused", within).await);
    assert!(!drained().await);
    page.find(Locator::Id("token"))
        .await
        .unwrap()
        .send_keys(TOKEN)
        .await
        .unwrap();
    click(&page, "#token-submit").await;
    click(
        &page,
        &format!("{} button[data-action=\"drain\"]", row(a.addr)),
    )
    .await;
    assert!(eventually(within, drained).await);
    assert!(page_shows(&page, "#notice", "draining", within).await);
    let _ = page.close().await;
}

/// Makes `docs/status-page.png`: three backends under load, one of them down. Run by hand:
/// `cargo test --release --test status -- --ignored --nocapture screenshot`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn screenshot_for_the_readme() {
    let Some((_driver, page)) = browser().await else {
        return;
    };
    let web = [
        Killable::start("web-1").await,
        Killable::start("web-2").await,
        Killable::start("web-3").await,
    ];
    let api = [
        Killable::start("api-1").await,
        Killable::start("api-2").await,
    ];
    let dir = tempfile::tempdir().unwrap();
    let (_proc, port, admin) = spawn(dir.path(), |p, ad| {
        format!(
            "[[listeners]]\naddress = \"127.0.0.1:{p}\"\n[admin]\naddress = \"127.0.0.1:{ad}\"\n\
             [[routes]]\npath_prefix = \"/api\"\npool = \"api\"\n[[routes]]\npool = \"web\"\n\
             [pools.web]\nbackends = [{{ address = \"{}\" }}, {{ address = \"{}\" }}, {{ address = \"{}\", weight = 2 }}]\n\
             [pools.web.health_check]\npath = \"/healthz\"\ninterval = \"1s\"\ntimeout = \"500ms\"\n\
             [pools.web.circuit_breaker]\nfailure_threshold = 3\nopen_duration = \"5s\"\n\
             [pools.api]\nalgorithm = \"peak_ewma\"\nbackends = [{{ address = \"{}\" }}, {{ address = \"{}\" }}]\n",
            web[0].addr, web[1].addr, web[2].addr, api[0].addr, api[1].addr
        )
    })
    .await;
    let proxy: SocketAddr = ([127, 0, 0, 1], port).into();
    let load = tokio::spawn(async move {
        let c = client();
        let end = Instant::now() + Duration::from_secs(150);
        let mut n = 0u64;
        while Instant::now() < end {
            let path = if n % 3 == 0 { "/api/items" } else { "/" };
            let _ = c
                .get(format!("http://{proxy}{path}").parse().unwrap())
                .await;
            n += 1;
            tokio::time::sleep(Duration::from_millis(4)).await;
        }
    });
    tokio::time::sleep(Duration::from_secs(100)).await;
    let mut web = web;
    web[2].kill();
    let path = format!("/api/pools/web/backends/{}/drain", web[1].addr);
    admin_request(admin, "POST", &path, None).await;
    page.goto(&format!("http://127.0.0.1:{admin}/"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(25)).await;
    let png = page.screenshot().await.unwrap();
    let out = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/status-page.png");
    std::fs::write(out, png).unwrap();
    eprintln!("wrote {out}");
    load.abort();
    let _ = page.close().await;
}
