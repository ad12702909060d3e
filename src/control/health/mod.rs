//! Active health checks: one task per backend, on its own connections, feeding a [`RiseFall`] counter and
//! flipping the backend's `healthy` flag only on a transition.

mod rise_fall;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::{Request, header};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

pub(crate) use rise_fall::{Flip, RiseFall};

use crate::balance::backend::Backend;
use crate::observe::events::{Kind, Level};
use crate::router::Snapshot;
use crate::upstream::{ConnectionPool, RequestBody};

pub(crate) use crate::config::{CheckKind, HealthCheckSettings};

/// A health-check task and what it was started with; aborted when dropped.
struct HealthTask {
    backend: Arc<Backend>,
    connections: Arc<ConnectionPool>,
    settings: HealthCheckSettings,
    task: JoinHandle<()>,
}

impl Drop for HealthTask {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The health-check tasks: one per backend of every pool with a `health_check`, kept in step with the snapshot.
#[derive(Default)]
pub(crate) struct Checks {
    /// pool → address → task.
    tasks: HashMap<String, HashMap<String, HealthTask>>,
}

impl Checks {
    /// Starts, keeps or stops tasks so that exactly the backends of `snapshot` with checks have one. A backend
    /// whose checks were removed is marked healthy: nothing may keep it out any more.
    pub(crate) fn reconcile(&mut self, snapshot: &Snapshot) {
        // Keys are moved from the old map to the new: a reload of 10,000 backends allocates nothing for those
        // that stay (it made 20,000 strings on the control plane's thread).
        let mut old = std::mem::take(&mut self.tasks);
        for pool in snapshot.pools.values() {
            let upstream = snapshot.upstreams.get(&pool.name);
            let (name, mut old_tasks) = match old.remove_entry(pool.name.as_str()) {
                Some((name, tasks)) => (Some(name), tasks),
                None => (None, HashMap::new()),
            };
            let mut tasks = HashMap::with_capacity(old_tasks.len());
            for (i, backend) in pool.backends.iter().enumerate() {
                let existing = old_tasks.remove_entry(backend.address.as_str());
                let (Some(settings), Some(connections)) =
                    (&pool.health_check, upstream.and_then(|u| u.get(i)))
                else {
                    if existing.is_some() {
                        backend.set_healthy(true);
                    }
                    continue;
                };
                let (address, task) = match existing {
                    Some((address, t))
                        if Arc::ptr_eq(&t.backend, backend)
                            && Arc::ptr_eq(&t.connections, connections)
                            && &t.settings == settings =>
                    {
                        (address, t)
                    }
                    other => (
                        // A task for another backend at this address (or other settings) stops here.
                        other.map_or_else(|| backend.address.clone(), |(address, _)| address),
                        HealthTask {
                            backend: Arc::clone(backend),
                            connections: Arc::clone(connections),
                            settings: settings.clone(),
                            task: spawn_checker(
                                Arc::clone(backend),
                                Arc::clone(connections),
                                settings.clone(),
                            ),
                        },
                    ),
                };
                tasks.insert(address, task);
            }
            if !tasks.is_empty() {
                self.tasks
                    .insert(name.unwrap_or_else(|| pool.name.clone()), tasks);
            }
        }
        // Whatever is left in `old` belongs to removed backends: dropping aborts the tasks.
    }

    /// Stops every check (shutdown).
    pub(crate) fn clear(&mut self) {
        self.tasks.clear();
    }
}

/// Starts checking `backend` every `interval` (±10% jitter, first check at a random point of the first interval),
/// on connections of its own to where `connections` goes.
fn spawn_checker(
    backend: Arc<Backend>,
    connections: Arc<ConnectionPool>,
    settings: HealthCheckSettings,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut counter = RiseFall::with_state(
            settings.healthy_threshold,
            settings.unhealthy_threshold,
            backend.is_healthy(),
        );
        tokio::time::sleep(jitter(settings.interval, 0.0, 1.0)).await;
        loop {
            let result = match tokio::time::timeout(
                settings.timeout,
                check_once(&backend, &connections, &settings.kind, settings.timeout),
            )
            .await
            {
                Ok(r) => r,
                Err(_) => Err(format!(
                    "no answer within {}",
                    humantime::format_duration(settings.timeout)
                )),
            };
            backend.metrics.count_health_check(result.is_ok());
            if let Err(reason) = &result {
                backend.set_last_check_error(reason.clone(), SystemTime::now());
            }
            if let Some(flip) = counter.record(result.is_ok()) {
                match flip {
                    Flip::Down => tracing::warn!(
                        pool = %backend.pool, backend = %backend.address,
                        reason = result.as_ref().err().map_or("", String::as_str),
                        "backend down: {} consecutive failed health checks", settings.unhealthy_threshold
                    ),
                    Flip::Up => tracing::info!(
                        pool = %backend.pool, backend = %backend.address,
                        "backend up: {} consecutive successful health checks", settings.healthy_threshold
                    ),
                }
                let (kind, level, message) = match flip {
                    Flip::Down => (
                        Kind::BackendDown,
                        Level::Warn,
                        format!(
                            "down after {} failed health checks: {}",
                            settings.unhealthy_threshold,
                            result.as_ref().err().map_or("", String::as_str)
                        ),
                    ),
                    Flip::Up => (
                        Kind::BackendUp,
                        Level::Info,
                        format!(
                            "up after {} successful health checks",
                            settings.healthy_threshold
                        ),
                    ),
                };
                backend.metrics.events.record(
                    kind,
                    level,
                    Some(&backend.pool),
                    Some(&backend.address),
                    message,
                );
                backend.set_healthy(flip == Flip::Up);
                if flip == Flip::Up {
                    backend.reset_breaker();
                }
            }
            tokio::time::sleep(jitter(settings.interval, 0.9, 1.1)).await;
        }
    })
}

fn jitter(interval: Duration, low: f64, high: f64) -> Duration {
    interval.mul_f64(rand::random_range(low..high))
}

async fn check_once(
    backend: &Backend,
    connections: &ConnectionPool,
    kind: &CheckKind,
    timeout: Duration,
) -> Result<(), String> {
    let (path, expected, host) = match kind {
        CheckKind::Tcp => {
            return TcpStream::connect(backend.address.as_str())
                .await
                .map(drop)
                .map_err(|e| format!("connect: {e}"));
        }
        CheckKind::Http {
            path,
            expected,
            host,
        } => (path, expected, host),
    };
    // Over the pool's own protocol (TLS, HTTP/2 included), on a connection of its own.
    let mut sender = connections
        .open(timeout)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let host = host.as_deref().unwrap_or(backend.address.as_str());
    let protocol = connections.protocol();
    let mut req = Request::get(path.as_str());
    if protocol.is_http2() {
        let scheme = if protocol.is_tls() { "https" } else { "http" };
        req = req
            .uri(format!("{scheme}://{host}{path}"))
            .version(http::Version::HTTP_2);
    } else {
        req = req
            .header(header::HOST, host)
            .header(header::CONNECTION, "close");
    }
    let req = req
        .header(header::USER_AGENT, "switchyard-health-check")
        .body(RequestBody::Empty)
        .map_err(|e| format!("request: {e}"))?;
    let status = sender
        .try_send(Box::new(req))
        .await
        .map_err(|(e, _)| format!("request: {e}"))?
        .status();
    if expected.contains(status) {
        Ok(())
    } else {
        Err(format!("status {}", status.as_u16()))
    }
}

#[cfg(test)]
mod tests {
    use super::Checks;
    use crate::config::StatusRanges;
    use crate::observe::metrics::Metrics;
    use crate::router::Snapshot;
    use http::StatusCode;

    fn config(backends: &[&str], checked: bool) -> crate::config::Config {
        let list: Vec<String> = backends
            .iter()
            .map(|b| format!("{{ address = \"{b}\" }}"))
            .collect();
        let check = if checked {
            "[pools.web.health_check]\npath = \"/healthz\"\ninterval = \"1h\"\n"
        } else {
            ""
        };
        let text = format!(
            "[[listeners]]\naddress = \"127.0.0.1:0\"\n[[routes]]\npath_prefix = \"/\"\npool = \"web\"\n\
             [pools.web]\nbackends = [{}]\n{check}",
            list.join(", ")
        );
        crate::config::parse(&text, "test.toml").expect("config")
    }

    fn running(checks: &Checks) -> Vec<String> {
        let mut out: Vec<String> = checks
            .tasks
            .values()
            .flat_map(|t| t.keys().cloned())
            .collect();
        out.sort();
        out
    }

    #[tokio::test]
    async fn checks_follow_the_backends_across_reloads() {
        let metrics = Metrics::new();
        let mut checks = Checks::default();
        let first = Snapshot::build(
            &config(&["127.0.0.1:1", "127.0.0.1:2"], true),
            &metrics,
            None,
            None,
            Vec::new(),
        );
        checks.reconcile(&first);
        assert_eq!(running(&checks), ["127.0.0.1:1", "127.0.0.1:2"]);
        let kept = checks.tasks["web"]["127.0.0.1:1"].task.id();
        // One backend leaves, one comes: the staying one keeps its task.
        let second = Snapshot::build(
            &config(&["127.0.0.1:1", "127.0.0.1:3"], true),
            &metrics,
            Some(&first),
            None,
            Vec::new(),
        );
        checks.reconcile(&second);
        assert_eq!(running(&checks), ["127.0.0.1:1", "127.0.0.1:3"]);
        assert_eq!(checks.tasks["web"]["127.0.0.1:1"].task.id(), kept);
        // The checks are removed: no task, and a backend they had taken out is usable again.
        second.pools["web"].backends[0].set_healthy(false);
        let third = Snapshot::build(
            &config(&["127.0.0.1:1", "127.0.0.1:3"], false),
            &metrics,
            Some(&second),
            None,
            Vec::new(),
        );
        checks.reconcile(&third);
        assert!(running(&checks).is_empty());
        assert!(third.pools["web"].backends[0].is_healthy());
    }

    #[test]
    fn status_ranges() {
        let r = StatusRanges::parse("200-399").unwrap();
        assert!(r.contains(StatusCode::OK) && r.contains(StatusCode::PERMANENT_REDIRECT));
        assert!(!r.contains(StatusCode::BAD_REQUEST));
        let r = StatusRanges::parse("204, 300-301").unwrap();
        assert!(r.contains(StatusCode::NO_CONTENT) && r.contains(StatusCode::MOVED_PERMANENTLY));
        assert!(!r.contains(StatusCode::OK));
        for bad in ["", "abc", "399-200", "99", "200-600", "200-", "-"] {
            assert_eq!(StatusRanges::parse(bad), None, "{bad:?}");
        }
    }
}
