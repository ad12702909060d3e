//! A pool: interchangeable backends, the selector that balances over them, and the pool's policies (timeouts,
//! retries and their budget, panic mode).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use prometheus::IntCounter;
use tokio::time::Instant;

use crate::balance::adaptive::{instant_of, stamp};
use crate::balance::backend::{Backend, InFlight};
use crate::balance::breaker::State;
use crate::balance::queue::{Queue, QueueRejection};
use crate::balance::retry::{RetryBudget, RetrySettings};
pub use crate::balance::select::Tried;
use crate::balance::select::{self, Candidates, HashSetup, Selector};
use crate::balance::sticky::Sticky;
use crate::config::UpstreamTlsSettings;
use crate::config::{
    Algorithm, HashKey, HashSettings, HealthCheckSettings, OutlierSettings, PoolSettings, Protocol,
    QueueSettings, Timeouts,
};
use crate::observe::events::{Kind, Level};
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
    /// What the pools of this name share across reloads and DNS changes.
    pub(crate) state: Arc<PoolState>,
    outlier_detection: Option<OutlierSettings>,
    pub(crate) queue: Option<QueueSettings>,
    queue_full: IntCounter,
    queue_timeout: IntCounter,
    pub(crate) panic_threshold: f64,
    /// A larger response head is refused (502).
    pub(crate) max_response_header_bytes: usize,
    pub(crate) health_check: Option<HealthCheckSettings>,
    /// Label handles for answers the proxy gives itself for this pool (`backend="none"`).
    pub(crate) local_metrics: Arc<BackendMetrics>,
    /// What requests are hashed by, for `consistent_hash`.
    pub(crate) hash_key: Option<HashKey>,
    pub(crate) hash: HashSettings,
    pub(crate) sticky: Option<Sticky>,
}

/// What a pool shares with the pools that replace it (same name) on reloads and DNS changes, and what its
/// backends reach through it: requests still in flight on an older snapshot see the same state.
#[derive(Debug, Default)]
pub(crate) struct PoolState {
    /// Failures are recorded one at a time, so two backends cannot both pass a cap's count and go out together.
    recording_failure: std::sync::Mutex<()>,
    /// The current members (weak: a backend holds this state).
    members: ArcSwap<Vec<Weak<Backend>>>,
    pub(crate) queue: Queue,
    /// Requests in flight over the pool, counted while `counting` (consistent hashing's bounded loads).
    in_flight: Arc<AtomicUsize>,
    counting: AtomicBool,
}

impl PoolState {
    /// The pool's count of requests in flight, when it keeps one.
    #[inline]
    pub(crate) fn in_flight_total(&self) -> Option<&Arc<AtomicUsize>> {
        self.counting
            .load(Ordering::Relaxed)
            .then_some(&self.in_flight)
    }

    /// Is a backend of the pool other than `this` usable now (not draining, healthy, not out, under its cap)?
    pub(crate) fn others_usable(&self, this: &Backend, now: Instant) -> bool {
        self.members
            .load()
            .iter()
            .filter_map(Weak::upgrade)
            .any(|b| {
                !std::ptr::eq(&*b, this) && (b.is_available(now, false) || b.is_busy(now, false))
            })
    }
}

/// Why a request got no backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unavailable {
    /// None usable.
    NoBackend,
    Queue(QueueRejection),
}

/// Hands a backend its pool's settings for the latency estimate, slow start and outlier detection.
fn adapt(backend: &Backend, settings: &PoolSettings) {
    backend
        .latency
        .set_settings(settings.peak_ewma.decay, settings.peak_ewma.default_rtt);
    match settings.slow_start {
        Some(s) => backend.ramp.set_settings(s.window, s.min_weight_percent),
        None => backend.ramp.set_settings(Duration::ZERO, 0),
    }
    if settings.outlier_detection.is_none() && backend.outlier.ejected_until().is_some() {
        backend.outlier.clear();
        backend.set_ejected(false);
        tracing::info!(pool = %backend.pool, backend = %backend.address,
            "outlier returned: outlier_detection removed from the pool");
        backend.metrics.events.record(
            Kind::OutlierReturned,
            Level::Info,
            Some(&backend.pool),
            Some(&backend.address),
            "outlier returned: outlier_detection removed from the pool",
        );
    }
}

/// Starts the backends `added` to a pool: their latency estimate at their peers' (or `default_rtt`), and, in a
/// running pool, their slow-start ramp. At process start (no previous pool), or when every backend is new
/// (reached another way), all start together: no ramp.
fn welcome(backends: &[Arc<Backend>], added: &[Arc<Backend>], running: bool) {
    let now = Instant::now();
    let now_ns = stamp(now);
    let kept: Vec<f64> = backends
        .iter()
        .filter(|b| !added.iter().any(|a| Arc::ptr_eq(a, b)))
        .map(|b| b.latency.estimate(now_ns))
        .collect();
    let peers = (!kept.is_empty()).then(|| kept.iter().sum::<f64>() / kept.len() as f64);
    for b in added {
        b.latency.start(now_ns, peers);
    }
    if running && added.len() < backends.len() {
        for b in added {
            b.begin_ramp(now, now_ns);
        }
    }
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
        let state = previous.map_or_else(Default::default, |p| Arc::clone(&p.state));
        let mut added = Vec::new();
        let backends = settings
            .backends
            .iter()
            .map(|b| {
                let backend = match old.get(b.address.as_str()) {
                    Some(kept) => {
                        kept.set_configured_weight(b.weight);
                        kept.set_breaker_settings(settings.breaker);
                        Arc::clone(kept)
                    }
                    _ => {
                        let backend = Arc::new(Backend::new(
                            name,
                            &b.address,
                            b.weight,
                            settings.breaker,
                            metrics.for_backend(name, &b.address),
                        ));
                        backend.join(&state);
                        added.push(Arc::clone(&backend));
                        backend
                    }
                };
                backend.set_source(b.source);
                adapt(&backend, settings);
                backend
            })
            .collect::<Vec<_>>();
        state
            .members
            .store(Arc::new(backends.iter().map(Arc::downgrade).collect()));
        // Requests waiting in the queue may find room among new backends or new caps.
        state.queue.wake_all();
        welcome(&backends, &added, previous.is_some());
        let hashing = settings.algorithm == Algorithm::ConsistentHash;
        let bounded = hashing && settings.hash.balance_factor > 0.0;
        state.counting.store(bounded, Ordering::Relaxed);
        let hash = || HashSetup {
            table_size: settings.hash.table_size,
            balance_factor: settings.hash.balance_factor,
            in_flight: bounded.then(|| Arc::clone(&state.in_flight)),
            overflow: Some(
                metrics
                    .balancing
                    .hash_overflow_total
                    .with_label_values(&[name]),
            ),
        };
        let selector = select::build_with(settings.algorithm, &backends, hash);
        Self {
            hash_key: hashing.then(|| settings.hash.key.clone()),
            hash: settings.hash.clone(),
            sticky: settings
                .sticky
                .as_ref()
                .map(|s| Sticky::new(name, s, &backends, metrics)),
            name: name.to_owned(),
            algorithm: settings.algorithm,
            protocol: settings.protocol,
            tls: settings.tls.clone(),
            selector,
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
            state,
            outlier_detection: settings.outlier_detection,
            queue: settings.queue,
            queue_full: metrics
                .balancing
                .queue_rejections_total
                .with_label_values(&[name, "full"]),
            queue_timeout: metrics
                .balancing
                .queue_rejections_total
                .with_label_values(&[name, "timeout"]),
            panic_threshold: settings.panic_threshold,
            max_response_header_bytes: settings.max_response_header_bytes,
            health_check: settings.health_check.clone(),
            // Kept across reloads, so the status page's reading of them goes on.
            local_metrics: previous.map_or_else(
                || Arc::new(metrics.for_local(name)),
                |p| Arc::clone(&p.local_metrics),
            ),
        }
    }

    /// Picks an available backend not in `tried` and claims it (a slot under its request cap, and its circuit
    /// breaker's consent): its index in `backends` and the request's count in flight there, or `None` when no
    /// backend is available. `key` is the request's hashed key, for consistent hashing.
    #[inline]
    pub fn pick(
        &self,
        now: Instant,
        tried: &mut Tried,
        key: Option<u64>,
    ) -> Option<(usize, InFlight)> {
        if tried.is_full() {
            return None;
        }
        let backends = &self.backends;
        let ignore_health = self.in_panic();
        let mut passed_over = usize::MAX;
        // A half-open backend may be claimed by a concurrent request between the check and the claim.
        for _ in 0..4 {
            let Some(i) = self
                .selector
                .pick_available(backends, now, key, ignore_health, tried)
            else {
                return self.take_passed_over(passed_over, now);
            };
            tried.push(i);
            // A ramping backend (slow start) keeps its turn only with the chance of its weight factor, whatever
            // the algorithm and the load. Passed over, it is out of this request's picks, so an algorithm that
            // favours it (least-connections, when it is the idlest) cannot hand it the turn straight back.
            if backends[i].keeps_turn(now) {
                if let Some(claimed) = self.claim(i, now) {
                    return Some((i, claimed));
                }
            } else if passed_over == usize::MAX {
                passed_over = i;
            }
        }
        self.take_passed_over(passed_over, now)
    }

    /// The backend a client's sticky cookie names, `i`, when it may serve the client (a draining one may; see
    /// [`Backend::is_available_to_its_own`]) and its circuit breaker admits the request; `tried` notes it.
    pub(crate) fn pick_named(&self, i: usize, now: Instant, tried: &mut Tried) -> Option<InFlight> {
        let b = self.backends.get(i)?;
        if !b.is_available_to_its_own(now, self.in_panic()) {
            return None;
        }
        let claimed = self.claim(i, now)?;
        tried.push(i);
        Some(claimed)
    }

    /// A slot on backend `i` under its request cap, then its circuit breaker's consent.
    #[inline]
    fn claim(&self, i: usize, now: Instant) -> Option<InFlight> {
        let b = self.backends.get(i)?;
        let claimed = b.claim()?;
        b.admit(now).then_some(claimed)
    }

    /// Nobody else could take the turn: the ramping backend passed over takes it after all.
    #[cold]
    #[inline(never)]
    fn take_passed_over(&self, passed_over: usize, now: Instant) -> Option<(usize, InFlight)> {
        self.claim(passed_over, now).map(|c| (passed_over, c))
    }

    /// Picks for a request that found no available backend: when every backend health and drain allow has
    /// its circuit open, one of them gets a trial now instead of the pool answering 503 until an open period
    /// ends (one trial per backend at a time). `None` when something else keeps the backends out.
    #[cold]
    pub(crate) fn pick_early_trial(
        &self,
        tried: &mut Tried,
        key: Option<u64>,
    ) -> Option<(usize, InFlight)> {
        if tried.is_full() {
            return None;
        }
        let backends = &self.backends;
        let ignore_health = self.in_panic();
        let allowed = |b: &Backend| !b.is_out_of_service() && (ignore_health || b.is_healthy());
        if backends
            .iter()
            .any(|b| allowed(b) && b.breaker.state() == State::Closed)
        {
            return None;
        }
        for _ in 0..backends.len().min(8) {
            let candidates = Candidates::open_for_trial(backends, ignore_health, tried, key);
            let i = self.selector.pick(&candidates)?;
            tried.push(i);
            let Some(claimed) = backends[i].claim() else {
                continue;
            };
            if backends[i].admit_early() {
                return Some((i, claimed));
            }
        }
        None
    }

    /// Records a successful attempt on `backend`; `latency` (to the response head) feeds its estimate, for
    /// ordinary exchanges only (not upgrades).
    #[inline]
    pub(crate) fn record_success(
        &self,
        backend: &Backend,
        now: Instant,
        latency: Option<Duration>,
    ) {
        let now_ns = stamp(now);
        if let Some(latency) = latency {
            backend.latency.observe(now_ns, latency);
        }
        if let Some(o) = &self.outlier_detection {
            backend
                .outlier
                .count(now_ns, false, o.interval.as_nanos() as u64);
        }
        backend.record_success();
    }

    /// Records a failed attempt on `backend` (something the backend did: refused, timed out, broke the
    /// exchange, answered 5xx), `took` after it began. Its circuit opens, and outlier detection ejects it, only
    /// within the pool's caps.
    pub(crate) fn record_failure(
        &self,
        backend: &Arc<Backend>,
        what: &dyn std::fmt::Display,
        now: Instant,
        took: Duration,
    ) {
        let now_ns = stamp(now);
        backend.latency.penalize(now_ns, took);
        let _one_at_a_time = self
            .state
            .recording_failure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if backend.record_failure(what, || self.may_eject(backend, self.max_open_percent)) {
            self.breaker_capped.inc();
        }
        if let Some(o) = &self.outlier_detection {
            let (requests, failures) =
                backend
                    .outlier
                    .count(now_ns, true, o.interval.as_nanos() as u64);
            if requests >= o.min_requests
                && u64::from(failures) * 100
                    >= u64::from(o.failure_percentage) * u64::from(requests)
                && !backend.is_ejected(now)
                && self.may_eject(backend, o.max_ejection_percent)
            {
                self.eject(backend, o, now, requests, failures);
            }
        }
    }

    /// Takes `backend` out of rotation for its ejection time; a timer brings it back (with slow start).
    fn eject(
        &self,
        backend: &Arc<Backend>,
        o: &OutlierSettings,
        now: Instant,
        requests: u32,
        failures: u32,
    ) {
        let now_ns = stamp(now);
        let until = backend
            .outlier
            .eject(now_ns, o.base_ejection_time, o.max_ejection_time);
        backend.set_ejected(true);
        backend.metrics.ejections.inc();
        backend.ramp.cancel();
        backend.begin_ramp(now, until);
        let back_at = instant_of(until, now);
        let ejected_for =
            humantime::format_duration(Duration::from_millis((back_at - now).as_millis() as u64));
        tracing::warn!(pool = %self.name, backend = %backend.address, requests, failures,
            ejected_for = %ejected_for,
            "outlier ejected: failure rate at or above failure_percentage");
        backend.metrics.events.record(
            Kind::OutlierEjected,
            Level::Warn,
            Some(&self.name),
            Some(&backend.address),
            format!(
                "outlier ejected for {ejected_for}: {failures} of its last {requests} requests failed"
            ),
        );
        let (backend, state) = (Arc::clone(backend), Arc::clone(&self.state));
        tokio::spawn(async move {
            tokio::time::sleep_until(back_at).await;
            // Under the failure lock: a failure recorded meanwhile cannot eject it again half-way through.
            let ended = {
                let _one_at_a_time = state
                    .recording_failure
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let ended = backend.outlier.end(until);
                if ended {
                    backend.set_ejected(false);
                }
                ended
            };
            if ended {
                tracing::info!(pool = %backend.pool, backend = %backend.address,
                    "outlier returned: ejection time over");
                backend.metrics.events.record(
                    Kind::OutlierReturned,
                    Level::Info,
                    Some(&backend.pool),
                    Some(&backend.address),
                    "outlier returned: ejection time over",
                );
                state.queue.wake_all();
            }
        });
    }

    /// Waits in the pool's queue for a backend under its request cap, when every usable backend is at its cap
    /// (or others wait already: first come, first served). `Err` when the pool has no queue or something other
    /// than the caps keeps the backends out (no backend), when the queue is full, or when the wait runs out.
    pub(crate) async fn wait_for_backend(
        &self,
        tried: &mut Tried,
        key: Option<u64>,
    ) -> Result<(usize, InFlight), Unavailable> {
        let Some(settings) = self.queue else {
            return Err(Unavailable::NoBackend);
        };
        let queue = &self.state.queue;
        let now = Instant::now();
        if !self.any_busy(now) {
            *tried = Tried::default();
            return self.pick(now, tried, key).ok_or(Unavailable::NoBackend);
        }
        let Some(mut place) = queue.enter(settings.max_waiting as usize) else {
            self.queue_full.inc();
            return Err(Unavailable::Queue(QueueRejection::Full));
        };
        let deadline = now + settings.timeout;
        let mut woken = false;
        loop {
            place.line_up(woken);
            // Alone in the line, a slot freed just before it lined up is its own; after a wake-up, the slot
            // is its turn. Otherwise the ones ahead go first.
            if woken || queue.waiting() == 1 {
                let now = Instant::now();
                *tried = Tried::default();
                if let Some(picked) = self.pick(now, tried, key) {
                    return Ok(picked);
                }
                if !self.any_busy(now) {
                    // Nothing to wait for any more (the busy backends went out): the others find out too.
                    queue.wake_all();
                    return Err(Unavailable::NoBackend);
                }
            }
            if tokio::time::timeout_at(deadline, place.woken())
                .await
                .is_err()
            {
                self.queue_timeout.inc();
                return Err(Unavailable::Queue(QueueRejection::Timeout));
            }
            woken = true;
        }
    }

    /// Is a backend available but for its request cap (so a queued request may wait for it)?
    fn any_busy(&self, now: Instant) -> bool {
        let ignore_health = self.in_panic();
        self.backends.iter().any(|b| b.is_busy(now, ignore_health))
    }

    /// Must a new request wait in the queue, behind others that wait already?
    #[inline]
    pub(crate) fn queue_ahead(&self) -> bool {
        self.queue.is_some() && self.state.queue.waiting() > 0
    }

    /// How many times the cap has held a circuit closed (since the pool's series began).
    pub(crate) fn breaker_capped(&self) -> u64 {
        self.breaker_capped.get()
    }

    /// May `candidate` be taken out of rotation (its circuit opened, or outlier detection ejects it)? Only
    /// while, counting it as out, at most `percent` of the pool is out (by breaker or ejection), and another
    /// backend stays usable (not out, not draining, healthy or the pool in panic mode).
    pub(crate) fn may_eject(&self, candidate: &Backend, percent: u32) -> bool {
        let ignore_health = self.in_panic();
        let now_ns = stamp(Instant::now());
        let (mut out, mut usable) = (1usize, 0usize);
        // The pool's members now (a request on an older snapshot may record this failure).
        let members = self.state.members.load();
        for b in members.iter().filter_map(Weak::upgrade) {
            if std::ptr::eq(&*b, candidate) {
                continue;
            }
            if b.is_taken_out(now_ns) {
                out += 1;
            } else if !b.is_out_of_service() && (ignore_health || b.is_healthy()) {
                usable += 1;
            }
        }
        usable > 0 && out * 100 <= percent as usize * members.len()
    }

    /// The sticky cookie naming backend `i` (`Set-Cookie` on a plain listener), for a pool with one.
    pub fn sticky_cookie(&self, i: usize) -> Option<&http::HeaderValue> {
        self.sticky.as_ref()?.set_cookie(i, false)
    }

    /// The consistent-hash table (backend indexes, slot by slot), for a pool that hashes.
    pub fn hash_table(&self) -> Option<&[u32]> {
        self.selector.hash_table()
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
