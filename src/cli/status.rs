//! `switchyard status`: the status page's pools and backends as aligned tables in the terminal, once or every
//! second (`--watch`). The exit code says whether every pool has a usable backend, so scripts and container
//! health probes can use it.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use http::{Request, header};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// Every pool has a usable backend.
const ALL_USABLE: u8 = 0;
/// At least one pool has none.
const SOME_UNUSABLE: u8 = 1;
/// The admin listener could not be asked (unreachable, refused the token, not a switchyard).
const CANNOT_ASK: u8 = 2;

pub(super) fn run(admin: &str, token_file: Option<&Path>, watch: bool) -> ExitCode {
    let token = match token_file.map(std::fs::read_to_string).transpose() {
        Ok(t) => t.map(|t| t.trim().to_owned()),
        Err(e) => {
            eprintln!(
                "switchyard status: cannot read the token file {}: {e}",
                token_file.map_or_else(String::new, |p| p.display().to_string())
            );
            return ExitCode::from(CANNOT_ASK);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("switchyard status: cannot start: {e}");
            return ExitCode::from(CANNOT_ASK);
        }
    };
    runtime.block_on(async {
        let mut code;
        let interrupted = tokio::signal::ctrl_c();
        tokio::pin!(interrupted);
        loop {
            let fetched = tokio::select! {
                f = fetch(admin, token.as_deref()) => f,
                _ = &mut interrupted => return ExitCode::from(CANNOT_ASK),
            };
            let shown = match fetched {
                Ok(status) => {
                    let (text, all_usable) = render(&status);
                    code = if all_usable {
                        ALL_USABLE
                    } else {
                        SOME_UNUSABLE
                    };
                    text
                }
                Err(e) => {
                    code = CANNOT_ASK;
                    format!("switchyard status: {e}\n")
                }
            };
            if !watch {
                if code == CANNOT_ASK {
                    eprint!("{shown}");
                } else {
                    print!("{shown}");
                }
                return ExitCode::from(code);
            }
            // Clear the screen and draw again from the top.
            print!("\x1b[2J\x1b[H{shown}");
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = &mut interrupted => return ExitCode::from(code),
            }
        }
    })
}

async fn fetch(admin: &str, token: Option<&str>) -> Result<Value, String> {
    let url = if admin.contains("://") {
        format!("{}/api/status", admin.trim_end_matches('/'))
    } else {
        format!("http://{admin}/api/status")
    };
    let mut req = Request::get(&url);
    if let Some(t) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let req = req
        .body(Empty::<bytes::Bytes>::new())
        .map_err(|e| format!("bad admin address {admin:?}: {e}"))?;
    let client: Client<_, Empty<bytes::Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let resp = tokio::time::timeout(Duration::from_secs(5), client.request(req))
        .await
        .map_err(|_| format!("no answer from {url} within 5 s"))?
        .map_err(|e| format!("cannot reach the admin listener at {url}: {e}"))?;
    let status = resp.status();
    let body = tokio::time::timeout(Duration::from_secs(5), resp.into_body().collect())
        .await
        .map_err(|_| format!("{url}: the answer did not end within 5 s"))?
        .map_err(|e| format!("{url}: {e}"))?
        .to_bytes();
    if status == http::StatusCode::UNAUTHORIZED {
        return Err(format!(
            "{url} wants the admin token: pass --token-file (401 {})",
            String::from_utf8_lossy(&body).trim()
        ));
    }
    if !status.is_success() {
        return Err(format!("{url} answered {status}"));
    }
    serde_json::from_slice(&body).map_err(|e| format!("{url}: not a switchyard status: {e}"))
}

/// The tables, and whether every pool has a usable backend.
fn render(status: &Value) -> (String, bool) {
    let empty = Vec::new();
    let pools = status["pools"].as_array().unwrap_or(&empty);
    let mut pool_rows = vec![row(&[
        "POOL",
        "ALGORITHM",
        "USABLE",
        "PANIC",
        "REQ/S",
        "5XX/S",
        "P50",
        "P99",
    ])];
    let mut backend_rows = vec![row(&[
        "POOL",
        "BACKEND",
        "STATE",
        "WEIGHT",
        "CIRCUIT",
        "IN FLIGHT",
        "REQ/S",
        "5XX/S",
        "P50",
        "P99",
        "LAST CHECK ERROR",
    ])];
    let mut unusable = Vec::new();
    for p in pools {
        let name = text(&p["name"]);
        let usable = p["backends_usable"].as_u64().unwrap_or(0);
        if usable == 0 {
            unusable.push(name.clone());
        }
        pool_rows.push(vec![
            name.clone(),
            text(&p["algorithm"]),
            format!("{usable}/{}", p["backends_total"].as_u64().unwrap_or(0)),
            if p["panic"].as_bool() == Some(true) {
                "yes".into()
            } else {
                "no".into()
            },
            rate(&p["requests_per_second"]),
            rate(&p["errors_per_second"]),
            ms(&p["p50_ms"]),
            ms(&p["p99_ms"]),
        ]);
        for b in p["backends"].as_array().unwrap_or(&empty) {
            let weight = match b["weight_override"].as_u64() {
                Some(_) => format!("{} (override)", b["weight"]),
                None => b["weight"].to_string(),
            };
            let error = if b["healthy"].as_bool() == Some(false) {
                text(&b["last_check_error"])
            } else {
                String::new()
            };
            backend_rows.push(vec![
                name.clone(),
                text(&b["address"]),
                text(&b["state"]),
                weight,
                text(&b["circuit"]).replace('_', "-"),
                b["active_requests"].to_string(),
                rate(&b["requests_per_second"]),
                rate(&b["errors_per_second"]),
                ms(&b["p50_ms"]),
                ms(&b["p99_ms"]),
                error,
            ]);
        }
    }
    let mut out = format!(
        "switchyard {} at {}\n\n",
        text(&status["version"]),
        text(&status["generated_at"])
    );
    out.push_str(&table(&pool_rows));
    out.push('\n');
    out.push_str(&table(&backend_rows));
    out.push('\n');
    if unusable.is_empty() {
        out.push_str("every pool has a usable backend\n");
    } else {
        out.push_str(&format!("NO USABLE BACKEND in: {}\n", unusable.join(", ")));
    }
    (out, unusable.is_empty())
}

fn row(cells: &[&str]) -> Vec<String> {
    cells.iter().map(|c| (*c).to_owned()).collect()
}

/// A JSON string as itself, anything else as JSON (`null` as empty); control characters dropped so that an
/// error text cannot move the terminal's cursor.
fn text(v: &Value) -> String {
    let s = match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    };
    s.chars().filter(|c| !c.is_control()).collect()
}

fn rate(v: &Value) -> String {
    v.as_f64().map_or_else(|| "-".into(), |x| format!("{x:.1}"))
}

fn ms(v: &Value) -> String {
    v.as_f64()
        .map_or_else(|| "-".into(), |x| format!("{x:.1} ms"))
}

/// Left-aligned columns two spaces apart; the last column is not padded.
fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (i, cell) in r.iter().enumerate() {
            line.push_str(cell);
            if i + 1 < r.len() {
                let pad = widths[i] - cell.chars().count() + 2;
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_and_say_which_pool_has_no_backend() {
        let status = serde_json::json!({
            "version": "0.1.0", "generated_at": "now",
            "pools": [
                {"name": "web", "algorithm": "round_robin", "backends_usable": 1, "backends_total": 2,
                 "panic": false, "requests_per_second": 12.5, "errors_per_second": 0.0, "p50_ms": 1.25, "p99_ms": null,
                 "backends": [
                    {"address": "127.0.0.1:1", "state": "up", "weight": 1, "weight_override": null, "healthy": true,
                     "circuit": "closed", "active_requests": 0, "requests_per_second": 12.5},
                    {"address": "127.0.0.1:22", "state": "down", "weight": 3, "weight_override": 3, "healthy": false,
                     "last_check_error": "connection refused\u{1b}[2J", "circuit": "half_open", "active_requests": 2}]},
                {"name": "api", "algorithm": "peak_ewma", "backends_usable": 0, "backends_total": 0, "backends": []}
            ]
        });
        let (out, ok) = render(&status);
        assert!(!ok);
        assert!(out.contains("NO USABLE BACKEND in: api"), "{out}");
        let lines: Vec<&str> = out.lines().collect();
        let header = lines
            .iter()
            .find(|l| l.starts_with("POOL  BACKEND"))
            .unwrap();
        let down = lines.iter().find(|l| l.contains("127.0.0.1:22")).unwrap();
        assert_eq!(header.find("STATE"), down.find("down"), "{out}");
        assert!(
            down.contains("3 (override)") && down.contains("half-open"),
            "{down}"
        );
        assert!(
            down.ends_with("connection refused[2J"),
            "control characters are dropped: {down}"
        );
        assert!(out.contains("12.5") && out.contains("1.2 ms"), "{out}");
    }
}
