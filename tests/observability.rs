//! Observability proven against the real thing: a real Prometheus scrapes switchyard while real backends (one
//! dead, one failing) take traffic; `promtool check metrics` accepts the exposition; every PromQL expression of
//! the Grafana dashboard and of the alert rules evaluates, and every dashboard panel shows data; the alert for
//! the dead backend goes pending; the dashboard type-checks against @grafana/schema.
//!
//! Needs Debian's `prometheus` package (and npm for the schema check). Without them the test says so and passes,
//! unless `SWITCHYARD_REQUIRE_TOOLS=1` (set by `.ci/run`, which installs them) makes their absence a failure.
#![allow(clippy::disallowed_methods)] // wall-clock time against real processes and sockets

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Every PromQL expression in the dashboard: (what it is, expression).
fn dashboard_queries(dashboard: &serde_json::Value) -> Vec<(String, String)> {
    fn walk(panels: &serde_json::Value, out: &mut Vec<(String, String)>) {
        for p in panels.as_array().into_iter().flatten() {
            for t in p["targets"].as_array().into_iter().flatten() {
                if let Some(expr) = t["expr"].as_str() {
                    out.push((
                        format!("panel {:?}", p["title"].as_str().unwrap_or("?")),
                        expr.to_owned(),
                    ));
                }
            }
            walk(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    for v in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if let Some(q) = v["query"]["query"].as_str() {
            // label_values(SELECTOR, LABEL) shows data when `group by (LABEL) (SELECTOR)` does.
            if let Some(inner) = q
                .strip_prefix("label_values(")
                .and_then(|r| r.strip_suffix(')'))
            {
                let (selector, label) = inner
                    .rsplit_once(',')
                    .expect("label_values(selector, label)");
                out.push((
                    format!("variable {:?}", v["name"].as_str().unwrap_or("?")),
                    format!("group by ({}) ({})", label.trim(), selector.trim()),
                ));
            }
        }
    }
    for a in dashboard["annotations"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if let Some(expr) = a["expr"].as_str() {
            out.push((
                format!("annotation {:?}", a["name"].as_str().unwrap_or("?")),
                expr.to_owned(),
            ));
        }
    }
    out
}

/// Grafana's variables, as a test run can fill them.
fn substitute(expr: &str) -> String {
    expr.replace("$__rate_interval", "10s")
        .replace("$__range", "1m")
        .replace("$__interval", "5s")
        .replace("$pool", ".*")
        .replace("$backend", ".*")
        .replace("$instance", ".*")
}

async fn query(prometheus: SocketAddr, expr: &str) -> serde_json::Value {
    let (status, _, body) = get(
        prometheus,
        &format!("/api/v1/query?query={}", urlencode(expr)),
        None,
    )
    .await;
    let v: serde_json::Value =
        serde_json::from_str(&body).unwrap_or_else(|_| panic!("{status}: {body}"));
    assert_eq!(v["status"], "success", "query {expr:?} failed: {body}");
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_and_alerts_work_against_a_real_prometheus() {
    let (Some(prometheus_bin), Some(promtool)) = (require("prometheus"), require("promtool"))
    else {
        return;
    };

    // switchyard, with a dead backend (health checks, breaker, connect errors, retries) and a failing one (5xx).
    let a = named_backend("a", Duration::ZERO).await;
    let b = named_backend("b", Duration::from_millis(3)).await;
    let dead = closed_port().await;
    let failing = controlled("failing", 500).await;
    // A TLS listener (a certificate made here) for the TLS panels and the expiry alert.
    let certs = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["shop.example".to_owned()]).unwrap();
    let (cert_file, key_file) = (certs.path().join("c.pem"), certs.path().join("c.key"));
    std::fs::write(&cert_file, cert.cert.pem()).unwrap();
    std::fs::write(&key_file, cert.signing_key.serialize_pem()).unwrap();
    let tls_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let server = start_proxy(&config(&format!(
        r#"
[[listeners]]
address = "127.0.0.1:{tls_port}"
[listeners.tls]
certificates = [{{ cert = "{}", key = "{}" }}]

[[routes]]
path_prefix = "/api"
pool = "api"
rate_limits = ["api"]
[[routes]]
pool = "web"

[pools.web]
backends = [{{ address = "{a}" }}, {{ address = "{b}" }}, {{ address = "{dead}" }}]
[pools.web.health_check]
interval = "200ms"
timeout = "100ms"
unhealthy_threshold = 2
[pools.web.circuit_breaker]
failure_threshold = 2
open_duration = "1m"
[pools.web.sticky]
cookie = "sy_web"

[pools.api]
algorithm = "consistent_hash"
backends = [{{ address = "{}" }}]
[pools.api.hash]
key = "path"

[rate_limits.api]
key = "route"
rate = 5
burst = 5
"#,
        cert_file.display(),
        key_file.display(),
        failing.addr
    )))
    .await;
    let proxy = server.listen_addrs[0];
    // Plain HTTP to the TLS port: a failed handshake to count.
    raw(
        server.listen_addrs[1],
        b"GET / HTTP/1.1\r\n\r\n",
        Duration::from_secs(2),
    )
    .await;

    // Bounded traffic in the background while Prometheus scrapes.
    let traffic = tokio::spawn(async move {
        let client = client();
        let end = std::time::Instant::now() + Duration::from_secs(8);
        let mut n = 0u32;
        while std::time::Instant::now() < end && n < 50_000 {
            let path = match n % 10 {
                0 => "/api/x",
                1 => "/nothing-routes-here-no",
                _ => "/",
            };
            let host = if n % 10 == 1 {
                "unknown.example"
            } else {
                "shop.example"
            };
            let req = http::Request::get(format!("http://{proxy}{path}"))
                .header("host", host)
                .body(full(""))
                .unwrap();
            let _ = client.request(req).await.map(|r| drop(r.into_body()));
            n += 1;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        n
    });

    // A real Prometheus, scraping the admin listener every second, with the alert rules loaded.
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("prometheus.yml");
    std::fs::write(
        &config_path,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: switchyard\n    static_configs:\n      - targets: ['{}']\n",
            repo("dashboards/alerts.yml").display(),
            server.admin_addr
        ),
    )
    .unwrap();
    let mut prom = None;
    for _ in 0..5 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let child = Child(
            Command::new(&prometheus_bin)
                .arg(format!("--config.file={}", config_path.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.path().join("data").display()
                ))
                .arg(format!("--web.listen-address={addr}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let ready = eventually(Duration::from_secs(30), || async move {
            try_get(addr, "/-/ready")
                .await
                .is_some_and(|(s, _)| s == 200)
        })
        .await;
        if ready {
            prom = Some((child, addr));
            break;
        }
    }
    let (_prom_child, prom) = prom.expect("prometheus did not start");

    // Enough scrapes for rate() over 10 s windows, and the dead backend's health and breaker settled.
    let scraped = eventually(Duration::from_secs(30), || async move {
        let v = query(prom, "count_over_time(switchyard_open_connections[1m])").await;
        v["data"]["result"][0]["value"][1]
            .as_str()
            .and_then(|s| s.parse::<f64>().ok())
            .unwrap_or(0.0)
            >= 6.0
    })
    .await;
    assert!(scraped, "Prometheus did not scrape switchyard");
    let sent = traffic.await.unwrap();
    assert!(sent > 100, "only {sent} requests sent");

    // 3. promtool accepts the exposition.
    let (_, metrics) = admin_get(&server, "/metrics").await;
    let mut check = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(check.stdin.as_mut().unwrap(), metrics.as_bytes()).unwrap();
    let out = check.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && report.trim().is_empty(),
        "promtool check metrics:\n{report}"
    );

    // 4. Every dashboard expression is valid PromQL and shows data under this traffic.
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(repo("dashboards/switchyard.json")).unwrap())
            .unwrap();
    let queries = dashboard_queries(&dashboard);
    assert!(queries.len() >= 20, "{queries:?}");
    let mut empty = Vec::new();
    for (what, expr) in &queries {
        let v = query(prom, &substitute(expr)).await;
        if v["data"]["result"].as_array().is_none_or(|r| r.is_empty()) {
            empty.push(format!("{what}: {expr}"));
        }
    }
    assert!(
        empty.is_empty(),
        "dashboard queries with no data:\n{}",
        empty.join("\n")
    );

    // ... and so is every alert expression; the rules evaluate without error, and the dead backend's alert
    // goes pending.
    let rules = std::fs::read_to_string(repo("dashboards/alerts.yml")).unwrap();
    let exprs: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("expr: "))
        .collect();
    assert_eq!(exprs.len(), 9);
    for expr in &exprs {
        query(prom, expr).await;
    }
    let dead_label = dead.to_string();
    let pending = eventually(Duration::from_secs(20), || {
        let dead_label = dead_label.clone();
        async move {
            let (_, _, body) = get(prom, "/api/v1/rules", None).await;
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            let rules: Vec<&serde_json::Value> = v["data"]["groups"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|g| g["rules"].as_array().into_iter().flatten())
                .collect();
            let all_ok = rules.len() == 9 && rules.iter().all(|r| r["health"] == "ok");
            let down_pending = rules.iter().any(|r| {
                r["name"] == "SwitchyardBackendDown"
                    && r["alerts"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|a| a["labels"]["backend"] == dead_label.as_str())
            });
            all_ok && down_pending
        }
    })
    .await;
    assert!(
        pending,
        "alert rules unhealthy, or SwitchyardBackendDown not pending for {dead}"
    );

    // 5. The dashboard type-checks against Grafana's schema (dashboards/check, pinned versions).
    if require("npm").is_some() {
        let out = Command::new("bash")
            .arg(repo("dashboards/check/check.sh"))
            .arg(repo("dashboards/switchyard.json"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "schema check failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
