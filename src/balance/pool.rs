//! A pool: interchangeable backends, the selector that balances over them, and the pool's policies (timeouts,
//! retries and their budget, panic mode).

use std::collections::HashMap;
use std::sync::Arc;

use prometheus::IntCounter;
use tokio::time::Instant;

use crate::balance::backend::Backend;
use crate::balance::breaker::State;
use crate::balance::retry::{RetryBudget, RetrySettings};
pub use crate::balance::select::Tried;
use crate::balance::select::{self, Candidates, Selector};
use crate::config::UpstreamTlsSettings;
use crate::config::{Algorithm, HealthCheckSettings, PoolSettings, Protocol, Timeouts};
use crate::observe::metrics::{BackendMetrics, Metrics};

pub struct Pool {
    pub(crate) name: String,
    pub(crate) algorithm: Algorithm,
    /// How the backends are spoken to (HTTP/1.1 or HTTP/2, plain or TLS).
    pub(crate) protocol: Protocol,
    /// The TLS client settings for `https` and `h2`.
    pub(crate) tls: Option<UpstreamTlsSettings>,
    pub backends: Vec<Arc<Backend>>,
    selector: select::Registered,
    pub(crate) timeouts: Timeouts,
    pub(crate) retry: RetrySettings,
    pub(crate) budget: Arc<RetryBudget>,
    pub(crate) retries: IntCounter,
    /// `circuit_breaker.max_open_percent`.
    max_open_percent: u32,
    /// Breakers that would have opened but were held closed by the cap.
    breaker_capped: IntCounter,
    /// Failures are recorded one at a time, so two backends cannot both pass the cap's count and open together.
    /// Shared with the pools that replace this one on reloads and DNS changes: requests still in flight on an
    /// older snapshot record their failures under the same lock.
    recording_failure: Arc<std::sync::Mutex<()>>,
    pub(crate) panic_threshold: f64,
    /// A larger response head is refused (502).
    pub(crate) max_response_header_bytes: usize,
    pub(crate) health_check: Option<HealthCheckSettings>,
    /// Label handles for answers the proxy gives itself for this pool (`backend="none"`).
    pub(crate) local_metrics: BackendMetrics,
}

impl Pool {
    /// Builds a pool; backends of `previous` with the same address are reused (with the new weight and breaker
    /// settings), and so is its retry budget.
    pub fn new(
        name: &str,
        settings: &PoolSettings,
        metrics: &Metrics,
        previous: Option<&Pool>,
    ) -> Self {
        // A backend reached another way (protocol, TLS) is a new backend: what it did before says little.
        let reached_alike = |p: &&Pool| p.protocol == settings.protocol && p.tls == settings.tls;
        let old: HashMap<&str, &Arc<Backend>> = previous
            .filter(reached_alike)
            .map(|p| p.backends.iter().map(|b| (b.address.as_str(), b)).collect())
            .unwrap_or_default();
        let backends = settings
            .backends
            .iter()
            .map(|b| match old.get(b.address.as_str()) {
                Some(kept) => {
                    kept.set_source(b.source);
                    kept.set_weight(b.weight);
                    kept.set_breaker_settings(settings.breaker);
                    Arc::clone(kept)
                }
                _ => {
                    let backend = Backend::new(
                        name,
                        &b.address,
                        b.weight,
                        settings.breaker,
                        metrics.for_backend(name, &b.address),
                    );
                    backend.set_source(b.source);
                    Arc::new(backend)
                }
            })
            .collect::<Vec<_>>();
        Self {
            name: name.to_owned(),
            algorithm: settings.algorithm,
            protocol: settings.protocol,
            tls: settings.tls.clone(),
            selector: select::build(settings.algorithm, &backends),
            backends,
            timeouts: settings.timeouts,
            retry: settings.retry,
            budget: previous
                .map_or_else(|| Arc::new(RetryBudget::new()), |p| Arc::clone(&p.budget)),
            retries: metrics.retries_total.with_label_values(&[name]),
            max_open_percent: settings.breaker.max_open_percent,
            breaker_capped: metrics
                .circuit_breaker_capped_total
                .with_label_values(&[name]),
            recording_failure: previous.map_or_else(
                || Arc::new(std::sync::Mutex::new(())),
                |p| Arc::clone(&p.recording_failure),
            ),
            panic_threshold: settings.panic_threshold,
            max_response_header_bytes: settings.max_response_header_bytes,
            health_check: settings.health_check.clone(),
            local_metrics: metrics.for_local(name),
        }
    }

    /// Picks an available backend not in `tried` and claims it through its circuit breaker: its index in
    /// `backends`, or `None` when no backend is available.
    #[inline]
    pub fn pick(&self, now: Instant, tried: &mut Tried) -> Option<usize> {
        if tried.is_full() {
            return None;
        }
        let backends = &self.backends;
        let ignore_health = self.in_panic();
        // A half-open backend may be claimed by a concurrent request between the check and the claim.
        for _ in 0..4 {
            let i = self
                .selector
                .pick_available(backends, now, ignore_health, tried)?;
            tried.push(i);
            if backends[i].admit(now) {
                return Some(i);
            }
        }
        None
    }

    /// Picks for a request that found no available backend: when every backend health and drain allow has
    /// its circuit open, one of them gets a trial now instead of the pool answering 503 until an open period
    /// ends (one trial per backend at a time). `None` when something else keeps the backends out.
    #[cold]
    pub(crate) fn pick_early_trial(&self, tried: &mut Tried) -> Option<usize> {
        if tried.is_full() {
            return None;
        }
        let backends = &self.backends;
        let ignore_health = self.in_panic();
        let allowed = |b: &Backend| !b.is_draining() && (ignore_health || b.is_healthy());
        if backends
            .iter()
            .any(|b| allowed(b) && b.breaker.state() == State::Closed)
        {
            return None;
        }
        for _ in 0..backends.len().min(8) {
            let candidates = Candidates::open_for_trial(backends, ignore_health, tried);
            let i = self.selector.pick(&candidates)?;
            tried.push(i);
            if backends[i].admit_early() {
                return Some(i);
            }
        }
        None
    }

    /// Records a successful attempt on `backend`.
    #[inline]
    pub(crate) fn record_success(&self, backend: &Backend) {
        backend.record_success();
    }

    /// Records a failed attempt on `backend` (something the backend did: refused, timed out, broke the
    /// exchange, answered 5xx). Its circuit opens only within the pool's cap.
    pub(crate) fn record_failure(&self, backend: &Backend, what: &dyn std::fmt::Display) {
        let _one_at_a_time = self
            .recording_failure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if backend.record_failure(what, || self.may_eject(backend)) {
            self.breaker_capped.inc();
        }
    }

    /// How many times the cap has held a circuit closed (since the pool's series began).
    pub(crate) fn breaker_capped(&self) -> u64 {
        self.breaker_capped.get()
    }

    /// May `candidate` be taken out of rotation (its circuit opened; later, outlier ejection)? Only while,
    /// counting it as out, at most `max_open_percent` of the pool is out, and another backend stays usable
    /// (not out, not draining, healthy or the pool in panic mode).
    pub(crate) fn may_eject(&self, candidate: &Backend) -> bool {
        let ignore_health = self.in_panic();
        let (mut out, mut usable) = (1usize, 0usize);
        for b in &self.backends {
            if std::ptr::eq(&**b, candidate) {
                continue;
            }
            if b.breaker.state() != State::Closed {
                out += 1;
            } else if !b.is_draining() && (ignore_health || b.is_healthy()) {
                usable += 1;
            }
        }
        usable > 0 && out * 100 <= self.max_open_percent as usize * self.backends.len()
    }

    /// Is the healthy share of the pool below `panic_threshold`, so health checks are ignored?
    pub(crate) fn in_panic(&self) -> bool {
        if self.panic_threshold <= 0.0 || self.backends.is_empty() {
            return false;
        }
        let healthy = self.backends.iter().filter(|b| b.is_healthy()).count();
        (healthy as f64) < self.panic_threshold * self.backends.len() as f64
    }
}
