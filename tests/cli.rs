//! The `switchyard` command itself: `validate` reports every problem with file, line, column and field;
//! `run` refuses the same files with the same messages; `validate` summarizes a good file.
#![allow(clippy::disallowed_methods)] // wall-clock time against real processes and sockets

use std::path::Path;
use std::process::{Command, Output};

fn switchyard(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(args)
        .env("RUST_LOG", "error")
        .output()
        .expect("run switchyard")
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

const BAD: &str = r#"[[listeners]]
address = "127.0.0.1:0"
colour = "blue"

[admin]
address = "127.0.0.1:0"

[[routes]]
path_prefix = "/api"
pool = "missing"

[[routes]]
host = "a.example.com"
pool = "web"

[[routes]]
host = "A.Example.com"
path_prefix = "/"
pool = "web"

[pools.web]
algorithm = "fastest"
backends = [
  { address = "127.0.0.1:9001", weight = 0 },
  { address = "127.0.0.1:9001" },
  { address = "not-an-address" },
]

[pools.web.timeouts]
connect = "soon"

[pools.empty]
backends = []
"#;

#[test]
fn validate_lists_every_error_with_file_line_column_field_and_value() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "bad.toml", BAD);
    let out = switchyard(&["validate", "--config", &file]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let expect = [
        format!("{file}:3:1: listeners[0].colour: unknown field \"colour\""),
        format!(
            "{file}:10:8: routes[0].pool: pool \"missing\" is not defined; defined pools: \"empty\", \"web\""
        ),
        format!(
            "{file}:16:1: routes[2]: another route already has host \"a.example.com\" and path_prefix \"/\""
        ),
        format!(
            "{file}:22:13: pools.web.algorithm: unknown algorithm \"fastest\"; allowed values: \"round_robin\", \"least_connections\", \"peak_ewma\""
        ),
        format!(
            "{file}:24:42: pools.web.backends[0].weight: weight 0 is out of range; allowed values: 1 to 1000"
        ),
        format!(
            "{file}:25:15: pools.web.backends[1].address: \"127.0.0.1:9001\" appears twice in pool \"web\""
        ),
        format!(
            "{file}:26:15: pools.web.backends[2].address: \"not-an-address\" is not a backend address; expected host:port, like \"127.0.0.1:9001\""
        ),
        format!("{file}:30:11: pools.web.timeouts.connect: \"soon\" is not a duration"),
        format!("{file}:33:12: pools.empty.backends: pool has no backends"),
        format!("{file}: 9 errors"),
    ];
    for line in &expect {
        assert!(err.contains(line.as_str()), "missing {line:?} in:\n{err}");
    }
    assert!(!err.contains("panicked"), "{err}");
    assert!(out.stdout.is_empty());
}

#[test]
fn run_refuses_a_bad_file_with_the_same_messages() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "bad.toml", BAD);
    let validate =
        String::from_utf8_lossy(&switchyard(&["validate", "-c", &file]).stderr).into_owned();
    let out = switchyard(&["run", "-c", &file]);
    assert_eq!(out.status.code(), Some(1));
    let run = String::from_utf8_lossy(&out.stderr);
    let problems: Vec<&str> = validate
        .lines()
        .filter(|l| !l.ends_with(" errors"))
        .collect();
    assert_eq!(problems.len(), 9);
    for line in problems {
        assert!(run.contains(line), "run lacks {line:?}:\n{run}");
    }
    assert!(run.contains("not starting"), "{run}");
}

#[test]
fn type_errors_and_syntax_errors_name_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "types.toml",
        "[[listeners]]\naddress = \"127.0.0.1:0\"\n[pools.a]\nbackends = [ { address = \"127.0.0.1:5\", weight = \"heavy\" } ]\n",
    );
    let err = String::from_utf8_lossy(&switchyard(&["validate", "-c", &file]).stderr).into_owned();
    assert!(err.contains(&format!("{file}:4:50: pools.a.backends[0].weight: invalid type: string \"heavy\", expected an integer")), "{err}");

    let file = write(
        dir.path(),
        "syntax.toml",
        "[[listeners]]\naddress = \"127.0.0.1:0\"\n[pools.a\n",
    );
    let out = switchyard(&["validate", "-c", &file]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("{file}:3:")) && err.contains("not valid TOML"),
        "{err}"
    );

    let out = switchyard(&[
        "validate",
        "-c",
        &dir.path().join("absent.toml").display().to_string(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read the config file"));
}

#[test]
fn more_checks_addresses_durations_hosts_prefixes() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "more.toml",
        r#"[[listeners]]
address = "localhost:80"

[[routes]]
host = "http://a.example"
path_prefix = "api"
pool = "p"

[pools.p]
backends = [{ address = "10.0.0.1:0" }, { address = "10.0.0.2:8080", weight = -3 }]
[pools.p.timeouts]
request = "0s"
"#,
    );
    let err = String::from_utf8_lossy(&switchyard(&["validate", "-c", &file]).stderr).into_owned();
    for want in [
        ":2:11: listeners[0].address: \"localhost:80\" is not an address to listen on; expected IP:port",
        ":5:8: routes[0].host: \"http://a.example\" is not a host name",
        ":6:15: routes[0].path_prefix: \"api\" must start with \"/\"",
        ":10:25: pools.p.backends[0].address: \"10.0.0.1:0\" is not a backend address",
        ":10:79: pools.p.backends[1].weight: weight -3 is out of range",
        ":12:11: pools.p.timeouts.request: \"0s\" is zero",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
}

#[test]
fn validate_summarizes_a_good_file() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config/example.toml");
    let out = switchyard(&["validate", "--config", example]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("ok: 1 listener, 2 routes, 2 pools, 5 backends"),
        "{text}"
    );
}

#[test]
fn resilience_sections_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "resilience.toml",
        r#"[[listeners]]
address = "127.0.0.1:0"

[pools.p]
backends = [{ address = "127.0.0.1:9001" }]
panic_threshold = 1.5

[pools.p.health_check]
type = "udp"
expected_status = "399-200"
interval = "1s"
timeout = "2s"
healthy_threshold = 0
unhealthy_threshold = 0
path = "healthz"

[pools.p.circuit_breaker]
failure_threshold = 0
open_duration = "10s"
max_open_duration = "5s"
max_active_requests = -1
max_open_percent = 101

[pools.p.retry]
max_retries = 50
backoff = "fast"
budget_percent = 101
jitter = true
"#,
    );
    let out = switchyard(&["validate", "-c", &file]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    for want in [
        ":6:19: pools.p.panic_threshold: 1.5 is out of range; allowed values: 0.0 to 1.0",
        ":9:8: pools.p.health_check.type: unknown health check type \"udp\"; allowed values: \"http\", \"tcp\"",
        ":10:19: pools.p.health_check.expected_status: \"399-200\" is not a status range",
        ":12:11: pools.p.health_check.timeout: timeout 2s must be shorter than interval 1s",
        ":13:21: pools.p.health_check.healthy_threshold: 0 is out of range; allowed values: 1 to 1000",
        ":14:23: pools.p.health_check.unhealthy_threshold: 0 is out of range",
        ":15:8: pools.p.health_check.path: \"healthz\" must start with \"/\"",
        ":18:21: pools.p.circuit_breaker.failure_threshold: 0 is out of range",
        ":20:21: pools.p.circuit_breaker.max_open_duration: 5s is shorter than open_duration 10s",
        ":21:23: pools.p.circuit_breaker.max_active_requests: -1 is out of range",
        ":22:20: pools.p.circuit_breaker.max_open_percent: 101 is out of range; allowed values: 0 to 100",
        ":25:15: pools.p.retry.max_retries: 50 is out of range; allowed values: 0 to 10",
        ":26:11: pools.p.retry.backoff: \"fast\" is not a duration",
        ":27:18: pools.p.retry.budget_percent: 101 is out of range; allowed values: 0 to 100",
        ":28:1: pools.p.retry.jitter: unknown field \"jitter\"",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
}

#[test]
fn admin_off_loopback_needs_a_token_and_limits_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "exposed.toml",
        r#"trusted_proxies = ["10.0.0.0/8", "not-a-cidr"]

[[listeners]]
address = "127.0.0.1:0"

[admin]
address = "0.0.0.0:9901"

[limits]
max_header_bytes = 100
max_connections = 0
max_request_body_bytes = -1
"#,
    );
    let out = switchyard(&["validate", "-c", &file]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    for want in [
        ":1:34: trusted_proxies[1]: \"not-a-cidr\" is not a CIDR range or an IP address",
        ":7:11: admin.address: \"0.0.0.0:9901\" is not a loopback address: an admin listener reachable from other hosts needs admin.token_file",
        ":10:20: limits.max_header_bytes: 100 is out of range; allowed values: 8192 to 16777216",
        ":11:19: limits.max_connections: 0 is out of range",
        ":12:26: limits.max_request_body_bytes: -1 is out of range",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
    // With a token file it is accepted; a missing token file is an error naming it.
    std::fs::write(dir.path().join("token"), "t0ken").unwrap();
    let ok = write(
        dir.path(),
        "token.toml",
        "[[listeners]]\naddress = \"127.0.0.1:0\"\n[admin]\naddress = \"0.0.0.0:9901\"\ntoken_file = \"token\"\n",
    );
    let out = switchyard(&["validate", "-c", &ok]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let missing = write(
        dir.path(),
        "missing.toml",
        "[[listeners]]\naddress = \"127.0.0.1:0\"\n[admin]\ntoken_file = \"nope\"\n",
    );
    let err =
        String::from_utf8_lossy(&switchyard(&["validate", "-c", &missing]).stderr).into_owned();
    assert!(
        err.contains("admin.token_file: cannot read \"nope\""),
        "{err}"
    );
}
