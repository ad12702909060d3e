//! Per-backend state shared by the data path and the control plane, in atomics (and one small lock-free slot).
//!
//! A backend is built once per pool and address and shared by `Arc`. The selector reads it, the proxy counts
//! requests in flight with an [`InFlight`] guard and feeds its circuit breaker, the health checker flips
//! `healthy`. Its connections live in the upstream layer (`upstream::PoolConnections`), keyed by the pool's order.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use tokio::time::Instant;

use crate::balance::adaptive::{Latency, Outlier, Ramp, stamp};
use crate::balance::breaker::{BreakerSettings, CircuitBreaker, EarlyTrials, State, Transition};
use crate::balance::pool::PoolState;
use crate::observe::events::{Kind, Level};
use crate::observe::metrics::BackendMetrics;

/// The last failed health check: why, and when.
#[derive(Debug, Clone)]
pub(crate) struct CheckError {
    pub(crate) reason: String,
    pub(crate) at: SystemTime,
}

const WEIGHT: u64 = 0xffff_ffff;
const DOWN: u64 = 1 << 32;
const DRAINING: u64 = 1 << 33;
/// The circuit is not closed.
const BREAKER: u64 = 1 << 34;
/// `max_active_requests` is set.
const CAPPED: u64 = 1 << 35;
/// Ejected by outlier detection (until a time [`Outlier`] keeps).
const EJECTED: u64 = 1 << 36;
/// Taken out by the operator: unlike a draining backend, it serves not even its sticky clients.
const DISABLED: u64 = 1 << 38;
/// Its weight is 0 (set at runtime): it takes no new requests.
const WEIGHTLESS: u64 = 1 << 39;
const FLAGS: u64 = DOWN | DRAINING | BREAKER | CAPPED | EJECTED | DISABLED | WEIGHTLESS;
/// No runtime weight: the config file's applies.
const NO_OVERRIDE: u32 = u32::MAX;
/// A slow-start ramp is under way (not a gate: the backend is available, with less weight).
const RAMPING: u64 = 1 << 37;

fn inverse(weight: u32) -> u32 {
    u32::try_from((1u64 << 32) / u64::from(weight.max(1))).unwrap_or(u32::MAX)
}

/// `repr(C)`: the fields a pick reads come first, on one cache line.
#[repr(C)]
pub struct Backend {
    /// The weight (low 32 bits) and the flags that can make the backend unavailable, in one word so that the
    /// common case of a pick is a single load.
    gate: AtomicU64,
    active: AtomicUsize,
    /// `2^32 / weight`, so least-connections compares loads with one multiplication and no division.
    inverse_weight: AtomicU32,
    max_active: AtomicU32,
    /// The weight in the config file (or from DNS), and the operator's runtime weight over it.
    configured_weight: AtomicU32,
    weight_override: AtomicU32,
    pub(crate) pool: String,
    /// `host:port` as written in the config.
    pub(crate) address: String,
    pub(crate) breaker: CircuitBreaker,
    last_check_error: ArcSwapOption<CheckError>,
    pub(crate) metrics: BackendMetrics,
    /// 1 when the backend came from DNS discovery, 0 from the config file.
    from_dns: std::sync::atomic::AtomicBool,
    /// Removed from the config: the last request to end wakes [`Self::idle`]'s waiter.
    retiring: std::sync::atomic::AtomicBool,
    no_requests: tokio::sync::Notify,
    /// Of `active`, the upgraded connections (WebSocket tunnels): long-lived, they say nothing of load.
    tunnels: AtomicUsize,
    pub(crate) latency: Latency,
    pub(crate) ramp: Ramp,
    pub(crate) outlier: Outlier,
    /// What the backend's pool shares across rebuilds (its members, its queue); set once by the pool.
    pool_state: std::sync::OnceLock<Arc<PoolState>>,
    early_trials: std::sync::Mutex<EarlyTrials>,
}

impl Backend {
    pub fn new(
        pool: &str,
        address: &str,
        weight: u32,
        breaker: BreakerSettings,
        metrics: BackendMetrics,
    ) -> Self {
        Self {
            pool: pool.to_owned(),
            address: address.to_owned(),
            gate: AtomicU64::new(
                u64::from(weight)
                    | if breaker.max_active_requests > 0 {
                        CAPPED
                    } else {
                        0
                    },
            ),
            active: AtomicUsize::new(0),
            inverse_weight: AtomicU32::new(inverse(weight)),
            max_active: AtomicU32::new(breaker.max_active_requests),
            configured_weight: AtomicU32::new(weight),
            weight_override: AtomicU32::new(NO_OVERRIDE),
            breaker: CircuitBreaker::new(breaker),
            last_check_error: ArcSwapOption::empty(),
            metrics,
            from_dns: std::sync::atomic::AtomicBool::new(false),
            retiring: std::sync::atomic::AtomicBool::new(false),
            no_requests: tokio::sync::Notify::new(),
            tunnels: AtomicUsize::new(0),
            latency: Latency::new(Duration::from_secs(10), Duration::from_millis(30)),
            ramp: Ramp::default(),
            outlier: Outlier::default(),
            pool_state: std::sync::OnceLock::new(),
            early_trials: std::sync::Mutex::default(),
        }
    }

    pub(crate) fn join(&self, state: &Arc<PoolState>) {
        let _ = self.pool_state.set(Arc::clone(state));
    }

    pub(crate) fn pool_state(&self) -> Option<&Arc<PoolState>> {
        self.pool_state.get()
    }

    /// Where the backend came from (`/api/pools`); kept up to date across reloads and DNS changes.
    pub(crate) fn set_source(&self, source: crate::config::BackendSource) {
        self.from_dns.store(
            source == crate::config::BackendSource::Dns,
            Ordering::Relaxed,
        );
    }

    pub(crate) fn source(&self) -> crate::config::BackendSource {
        if self.from_dns.load(Ordering::Relaxed) {
            crate::config::BackendSource::Dns
        } else {
            crate::config::BackendSource::Static
        }
    }

    /// May the balancer choose this backend now? Not draining, healthy (unless the pool is in panic mode), its
    /// circuit not blocking, and under its request cap.
    #[inline(always)]
    pub(crate) fn is_available(&self, now: Instant, ignore_health: bool) -> bool {
        let gate = self.gate.load(Ordering::Relaxed);
        gate & FLAGS == 0 || self.is_available_slow(gate, now, ignore_health)
    }

    /// Does this pick stand? Always, unless the backend ramps up (slow start): then with the chance of its
    /// weight factor.
    #[inline(always)]
    pub(crate) fn keeps_turn(&self, now: Instant) -> bool {
        self.gate.load(Ordering::Relaxed) & RAMPING == 0
            || crate::balance::adaptive::chance() < self.ramp_factor(now)
    }

    #[cold]
    #[inline(never)]
    fn is_available_slow(&self, gate: u64, now: Instant, ignore_health: bool) -> bool {
        gate & (DRAINING | WEIGHTLESS) == 0 && self.serves_its_own(gate, now, ignore_health)
    }

    /// May a client whose sticky cookie names this backend be sent to it? As [`Self::is_available`], but a
    /// draining backend (or one at runtime weight 0) keeps its own clients.
    #[inline]
    pub(crate) fn is_available_to_its_own(&self, now: Instant, ignore_health: bool) -> bool {
        let gate = self.gate.load(Ordering::Relaxed);
        gate & FLAGS == 0 || self.serves_its_own(gate, now, ignore_health)
    }

    fn serves_its_own(&self, gate: u64, now: Instant, ignore_health: bool) -> bool {
        gate & DISABLED == 0
            && (ignore_health || gate & DOWN == 0)
            && (ignore_health || gate & EJECTED == 0 || !self.outlier.is_ejected(stamp(now)))
            && (gate & CAPPED == 0 || self.under_cap())
            && (gate & BREAKER == 0 || self.breaker.would_admit(now))
    }

    /// Available but for its request cap: a backend a queued request may wait for.
    pub(crate) fn is_busy(&self, now: Instant, ignore_health: bool) -> bool {
        let gate = self.gate.load(Ordering::Relaxed);
        gate & CAPPED != 0
            && !self.under_cap()
            && gate & (DRAINING | DISABLED | WEIGHTLESS) == 0
            && (ignore_health || gate & DOWN == 0)
            && (ignore_health || gate & EJECTED == 0 || !self.outlier.is_ejected(stamp(now)))
            && (gate & BREAKER == 0 || self.breaker.would_admit(now))
    }

    /// Out of rotation by its breaker or by outlier ejection (what the pool's caps count).
    pub(crate) fn is_taken_out(&self, now_ns: u64) -> bool {
        self.breaker.state() != State::Closed
            || (self.flag(EJECTED) && self.outlier.is_ejected(now_ns))
    }

    /// The share of its weight the backend has now: below 1 while it ramps up after (re)joining.
    #[inline]
    pub(crate) fn weight_factor(&self, now: Instant) -> f64 {
        if !self.flag(RAMPING) {
            return 1.0;
        }
        self.ramp_factor(now)
    }

    #[cold]
    fn ramp_factor(&self, now: Instant) -> f64 {
        match self.ramp.factor(stamp(now)) {
            Some(f) => f,
            None => {
                self.set_flag(RAMPING, false);
                // A ramp begun just now (between the two lines above) keeps its flag.
                if self.ramp.factor(stamp(now)).is_some() {
                    self.set_flag(RAMPING, true);
                }
                1.0
            }
        }
    }

    /// The backend may take requests again (back up, re-enabled, back from ejection, circuit closed): requests
    /// waiting in its pool's queue try again.
    fn room_made(&self) {
        if let Some(state) = self.pool_state() {
            state.queue.wake_all();
        }
    }

    /// Its weight now, fractional while ramping.
    pub(crate) fn effective_weight(&self, now: Instant) -> f64 {
        f64::from(self.weight()) * self.weight_factor(now)
    }

    /// Starts its slow-start ramp at `at` (a time ahead for an ejected backend's return). Only when slow start
    /// is on and another backend of the pool is usable: a backend alone gets all the traffic there is anyway.
    pub(crate) fn begin_ramp(&self, now: Instant, at_ns: u64) {
        if !self.ramp.is_configured() {
            return;
        }
        let others = self
            .pool_state()
            .is_some_and(|s| s.others_usable(self, now));
        if others && self.ramp.begin(at_ns) {
            self.set_flag(RAMPING, true);
        } else {
            self.ramp.cancel();
            self.set_flag(RAMPING, false);
        }
    }

    /// Counts an open tunnel (its request stays in flight) until the guard drops.
    pub(crate) fn open_tunnel(self: &Arc<Self>) -> OpenTunnel {
        self.tunnels.fetch_add(1, Ordering::Relaxed);
        OpenTunnel(Arc::clone(self))
    }

    /// Peak-EWMA's cost: latency estimate × (requests in flight, tunnels aside, + 1) / weight.
    #[inline]
    pub(crate) fn ewma_cost(&self, now_ns: u64) -> f64 {
        let active = self.active.load(Ordering::Relaxed);
        let load = active.saturating_sub(self.tunnels.load(Ordering::Relaxed)) as f64 + 1.0;
        self.latency.estimate(now_ns) * load / f64::from(self.weight().max(1))
    }

    /// Marks the backend ejected until `until_ns` (its [`Outlier`] holds the time).
    pub(crate) fn set_ejected(&self, ejected: bool) {
        self.set_flag(EJECTED, ejected);
        self.metrics.set_ejected(ejected);
    }

    pub(crate) fn is_ejected(&self, now: Instant) -> bool {
        self.flag(EJECTED) && self.outlier.is_ejected(stamp(now))
    }

    fn set_flag(&self, flag: u64, on: bool) {
        if on {
            self.gate.fetch_or(flag, Ordering::Relaxed);
        } else {
            self.gate.fetch_and(!flag, Ordering::Relaxed);
        }
    }

    fn flag(&self, flag: u64) -> bool {
        self.gate.load(Ordering::Relaxed) & flag != 0
    }

    #[inline]
    fn under_cap(&self) -> bool {
        let max = self.max_active.load(Ordering::Relaxed);
        max == 0 || self.active.load(Ordering::Relaxed) < max as usize
    }

    #[inline]
    pub fn weight(&self) -> u32 {
        (self.gate.load(Ordering::Relaxed) & WEIGHT) as u32
    }

    /// `(requests in flight + 1) / weight`, scaled by 2^32: least-connections' measure of load.
    #[inline]
    pub(crate) fn load_score(&self) -> u64 {
        (self.active.load(Ordering::Relaxed) as u64 + 1)
            * u64::from(self.inverse_weight.load(Ordering::Relaxed))
    }

    /// The weight the config file (or DNS) gives; a runtime weight, while set, still wins.
    pub(crate) fn set_configured_weight(&self, weight: u32) {
        self.configured_weight.store(weight, Ordering::SeqCst);
        self.apply_weight();
    }

    /// Sets (`Some`) or clears the operator's runtime weight; 0 takes the backend out of new requests.
    pub(crate) fn set_weight_override(&self, weight: Option<u32>) {
        self.weight_override
            .store(weight.unwrap_or(NO_OVERRIDE), Ordering::SeqCst);
        self.apply_weight();
    }

    pub(crate) fn weight_override(&self) -> Option<u32> {
        Some(self.weight_override.load(Ordering::Relaxed)).filter(|&w| w != NO_OVERRIDE)
    }

    /// Puts the weight in force (the runtime one, else the configured one) into the gate, with its "weight 0"
    /// flag, in one step. Each writer applies after storing its value, so whatever the order of a reload and
    /// an admin request, the last to apply sees both.
    fn apply_weight(&self) {
        let weight = match self.weight_override.load(Ordering::SeqCst) {
            NO_OVERRIDE => self.configured_weight.load(Ordering::SeqCst),
            w => w,
        };
        self.inverse_weight
            .store(inverse(weight), Ordering::Relaxed);
        let zero = if weight == 0 { WEIGHTLESS } else { 0 };
        let mut current = self.gate.load(Ordering::Relaxed);
        loop {
            let next = (current & !(WEIGHT | WEIGHTLESS)) | u64::from(weight) | zero;
            match self.gate.compare_exchange_weak(
                current,
                next,
                Ordering::SeqCst,
                Ordering::Relaxed,
            ) {
                Ok(_) => return,
                Err(seen) => current = seen,
            }
        }
    }

    pub(crate) fn is_draining(&self) -> bool {
        self.flag(DRAINING)
    }

    pub(crate) fn is_disabled(&self) -> bool {
        self.flag(DISABLED)
    }

    /// Draining, disabled or at runtime weight 0: no new clients.
    pub(crate) fn is_out_of_service(&self) -> bool {
        self.gate.load(Ordering::Relaxed) & (DRAINING | DISABLED | WEIGHTLESS) != 0
    }

    /// Takes the backend out for everyone, sticky clients included (or puts it back); requests in flight
    /// finish either way. Back, it ramps up again (slow start).
    pub(crate) fn set_disabled(&self, disabled: bool) {
        let was = self.flag(DISABLED);
        self.set_flag(DISABLED, disabled);
        if was && !disabled && !self.flag(DRAINING) {
            let now = Instant::now();
            self.begin_ramp(now, stamp(now));
            self.room_made();
        }
    }

    /// Stops (or resumes) new requests to this backend; requests in flight finish either way. Resumed, it
    /// ramps up again (slow start).
    pub(crate) fn set_draining(&self, draining: bool) {
        let was = self.flag(DRAINING);
        self.set_flag(DRAINING, draining);
        if was && !draining && !self.flag(DISABLED) {
            let now = Instant::now();
            self.begin_ramp(now, stamp(now));
            self.room_made();
        }
    }

    pub(crate) fn is_healthy(&self) -> bool {
        !self.flag(DOWN)
    }

    /// Takes the backend out of (or back into) rotation; the health checker's lever. Back in, it ramps up
    /// again (slow start).
    pub fn set_healthy(&self, healthy: bool) {
        let was_down = self.flag(DOWN);
        self.set_flag(DOWN, !healthy);
        self.metrics.set_up(healthy);
        if was_down && healthy {
            let now = Instant::now();
            self.begin_ramp(now, stamp(now));
            self.room_made();
        }
    }

    pub(crate) fn last_check_error(&self) -> Option<Arc<CheckError>> {
        self.last_check_error.load_full()
    }

    pub(crate) fn set_last_check_error(&self, reason: String, at: SystemTime) {
        self.last_check_error
            .store(Some(Arc::new(CheckError { reason, at })));
    }

    /// Requests sent to this backend whose responses have not finished yet.
    #[inline]
    pub fn active_requests(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    pub(crate) fn set_breaker_settings(&self, settings: BreakerSettings) {
        self.max_active
            .store(settings.max_active_requests, Ordering::Relaxed);
        self.set_flag(CAPPED, settings.max_active_requests > 0);
        self.breaker.set_settings(settings);
    }

    /// Claims the right to send a request through the circuit breaker (the one trial when half-open).
    #[inline]
    pub(crate) fn admit(&self, now: Instant) -> bool {
        let (admitted, transition) = self.breaker.admit(now);
        if let Some(t) = transition {
            self.on_transition(&t);
        }
        admitted
    }

    /// Feeds a successful attempt to the circuit breaker.
    #[inline]
    pub(crate) fn record_success(&self) {
        if let Some(t) = self.breaker.on_success() {
            self.on_transition(&t);
        }
    }

    /// Feeds a failed attempt to the circuit breaker; the circuit may open only if `may_open()` agrees (asked
    /// only when this failure reaches the threshold). Returns true when the failure newly held it closed.
    pub(crate) fn record_failure(
        &self,
        what: &dyn std::fmt::Display,
        may_open: impl FnOnce() -> bool,
    ) -> bool {
        let what = what.to_string();
        let (transition, held) = self
            .breaker
            .on_failure_capped(Instant::now(), &what, may_open);
        if let Some(t) = transition {
            self.on_transition(&t);
        }
        if held {
            tracing::warn!(pool = %self.pool, backend = %self.address, last = %what,
                "breaker held closed: cap (as many of the pool's circuits as allowed are open already)");
        }
        held
    }

    /// Claims a trial on an open circuit now, not waiting out its open period (the pool has no usable one left).
    pub(crate) fn admit_early(&self) -> bool {
        let (admitted, transition) = self.breaker.admit_early();
        if let Some(mut t) = transition {
            let now = Instant::now();
            if self
                .early_trials
                .lock()
                .map_or(true, |mut e| e.log(now, &mut t.reason))
            {
                self.on_transition(&t);
            } else {
                self.count_transition(&t);
            }
        }
        admitted
    }

    /// Not draining, under its request cap, and its circuit not closed: a backend for an early trial.
    pub(crate) fn may_try_early(&self) -> bool {
        !self.is_out_of_service() && self.under_cap() && self.breaker.state() != State::Closed
    }

    /// The health checks saw the backend come back: whatever opened its circuit predates that, so close it
    /// (as Envoy un-ejects a host on a successful active health check).
    pub(crate) fn reset_breaker(&self) {
        if let Some(t) = self.breaker.reset("health checks pass again") {
            self.on_transition(&t);
        }
    }

    /// Applies the passing of time to the breaker (open → half-open) for observers.
    pub(crate) fn refresh_breaker(&self, now: Instant) {
        if let Some(t) = self.breaker.refresh(now) {
            self.on_transition(&t);
        }
    }

    /// The flag and the metrics of a transition, without a log line or an event.
    fn count_transition(&self, t: &Transition) {
        // A hint for the lock-free fast path; `admit` reads the breaker itself.
        self.set_flag(BREAKER, t.to != State::Closed);
        let index = State::ALL.iter().position(|s| *s == t.to).unwrap_or(0);
        self.metrics.breaker_transition(index, t.to.as_str());
    }

    fn on_transition(&self, t: &Transition) {
        self.count_transition(t);
        let quiet = self
            .early_trials
            .lock()
            .is_ok_and(|mut early| early.take_quiet());
        if quiet && t.to == State::Open {
            // The unlogged early trial failed: back to open, as the log last said.
            return;
        }
        let (kind, level) = match t.to {
            State::Open => (Kind::CircuitOpen, Level::Warn),
            State::HalfOpen => (Kind::CircuitHalfOpen, Level::Info),
            State::Closed => (Kind::CircuitClosed, Level::Info),
        };
        self.metrics.events.record(
            kind,
            level,
            Some(&self.pool),
            Some(&self.address),
            format!("circuit {}: {}", t.to.as_str().replace('_', "-"), t.reason),
        );
        match t.to {
            State::Open => {
                tracing::warn!(pool = %self.pool, backend = %self.address, reason = %t.reason, "circuit open")
            }
            State::HalfOpen => {
                tracing::info!(pool = %self.pool, backend = %self.address, reason = %t.reason, "circuit half-open")
            }
            State::Closed => {
                tracing::info!(pool = %self.pool, backend = %self.address, reason = %t.reason, "circuit closed");
                self.room_made();
            }
        }
    }

    /// Returns once no request is in flight (for a backend removed from the config, whose requests finish).
    pub(crate) async fn idle(&self) {
        self.retiring.store(true, Ordering::SeqCst);
        loop {
            let woken = self.no_requests.notified();
            if self.active.load(Ordering::SeqCst) == 0 {
                return;
            }
            woken.await;
        }
    }

    /// Counts a request in flight, when the request cap allows one more: exactly, since the count only grows
    /// while under the cap (two requests racing for the last slot cannot both have it). `None`: at the cap.
    #[inline]
    pub(crate) fn claim(self: &Arc<Self>) -> Option<InFlight> {
        if self.gate.load(Ordering::Relaxed) & CAPPED != 0 {
            let max = self.max_active.load(Ordering::Relaxed) as usize;
            self.active
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |a| {
                    (a < max).then_some(a + 1)
                })
                .ok()?;
        } else {
            self.active.fetch_add(1, Ordering::SeqCst);
        }
        Some(self.counted())
    }

    /// Counts a request in flight until the guard is dropped (and in the pool's total, when its loads are
    /// bounded).
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.active.fetch_add(1, Ordering::SeqCst);
        self.counted()
    }

    /// The guard for a request just counted in `active`; counts it in the gauge and the pool's total too.
    #[inline]
    fn counted(self: &Arc<Self>) -> InFlight {
        if let Some(g) = &self.metrics.active {
            g.inc();
        }
        let pool_total = self
            .pool_state()
            .and_then(|s| s.in_flight_total())
            .map(|total| {
                total.fetch_add(1, Ordering::Relaxed);
                Arc::clone(total)
            });
        InFlight(Arc::clone(self), pool_total)
    }
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend")
            .field("pool", &self.pool)
            .field("address", &self.address)
            .field("weight", &self.weight())
            .field("active", &self.active_requests())
            .finish()
    }
}

/// A request in flight on a backend (and in its pool's total, when counted); dropping it ends the count.
pub struct InFlight(Arc<Backend>, Option<Arc<AtomicUsize>>);

impl InFlight {
    pub(crate) fn backend(&self) -> &Arc<Backend> {
        &self.0
    }
}

/// An upgraded connection open on a backend; dropping it ends the count.
pub(crate) struct OpenTunnel(Arc<Backend>);

impl Drop for OpenTunnel {
    fn drop(&mut self) {
        self.0.tunnels.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(total) = &self.1 {
            total.fetch_sub(1, Ordering::Relaxed);
        }
        let before = self.0.active.fetch_sub(1, Ordering::SeqCst);
        if let Some(g) = &self.0.metrics.active {
            g.dec();
        }
        if before == 1 && self.0.retiring.load(Ordering::SeqCst) {
            self.0.no_requests.notify_waiters();
        }
        if self.0.flag(CAPPED) {
            if let Some(state) = self.0.pool_state() {
                state.queue.slot_freed();
            }
        }
    }
}
