//! The per-backend circuit breaker: closed (traffic flows) → open (traffic blocked) → half-open (one trial at a
//! time) → closed again, or open for twice as long.
//!
//! [`Breaker`] is the pure state machine, driven with explicit instants so every transition is unit-tested.
//! [`CircuitBreaker`] shares it between requests: a closed breaker and an open one that has not yet expired are
//! read from atomics without taking the lock; only failures, half-open trials and expiries lock, briefly, and
//! never across an `.await`.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

pub use crate::config::BreakerSettings;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed,
    Open,
    HalfOpen,
}

impl State {
    pub(crate) const ALL: [State; 3] = [State::Closed, State::Open, State::HalfOpen];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
        }
    }

    fn from_u8(v: u8) -> Self {
        match v {
            1 => State::Open,
            2 => State::HalfOpen,
            _ => State::Closed,
        }
    }

    fn to_u8(self) -> u8 {
        match self {
            State::Closed => 0,
            State::Open => 1,
            State::HalfOpen => 2,
        }
    }
}

/// A change of state, with the reason to log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub(crate) to: State,
    pub(crate) reason: String,
}

/// When every usable backend of a pool is open, each request makes an early trial: open → half-open → open
/// again, a pair of transitions per request. The first pair in a second is logged and recorded as events; the
/// others are only counted (metrics), and the next one logged says how many there were.
#[derive(Default)]
pub(crate) struct EarlyTrials {
    last_logged: Option<Instant>,
    /// The circuit is half-open for an early trial that was not logged: its return to open is not either.
    quiet: bool,
    unlogged: u64,
}

/// How often an early trial on an open circuit is logged, at most.
const EARLY_TRIAL_LOG_EVERY: Duration = Duration::from_secs(1);

impl EarlyTrials {
    /// An early trial begins at `now`: true to log it (its `reason` then says how many before it were not),
    /// false to count it only.
    pub(crate) fn log(&mut self, now: Instant, reason: &mut String) -> bool {
        let recent = self
            .last_logged
            .is_some_and(|l| now.saturating_duration_since(l) < EARLY_TRIAL_LOG_EVERY);
        self.quiet = recent;
        if recent {
            self.unlogged += 1;
            return false;
        }
        self.last_logged = Some(now);
        let unlogged = std::mem::take(&mut self.unlogged);
        if unlogged > 0 {
            reason.push_str(&format!(
                " ({unlogged} more early trials in the last second, not logged)"
            ));
        }
        true
    }

    /// Was the circuit half-open for an unlogged early trial? (Its next transition is that trial's end.)
    pub(crate) fn take_quiet(&mut self) -> bool {
        std::mem::take(&mut self.quiet)
    }
}

/// The pure state machine.
#[derive(Debug, Clone)]
pub struct Breaker {
    settings: BreakerSettings,
    state: State,
    consecutive_failures: u32,
    /// How long the next (or current) open period lasts; doubles on each reopening.
    open_for: Duration,
    open_until: Option<Instant>,
    trial_in_flight: bool,
    /// The failures reached the threshold but the pool's cap kept the circuit closed.
    held_closed: bool,
}

impl Breaker {
    pub fn new(settings: BreakerSettings) -> Self {
        Self {
            settings,
            state: State::Closed,
            consecutive_failures: 0,
            open_for: settings.open_duration,
            open_until: None,
            trial_in_flight: false,
            held_closed: false,
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    #[cfg(test)]
    pub(crate) fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }

    pub(crate) fn is_held_closed(&self) -> bool {
        self.held_closed
    }

    /// When an open circuit turns half-open.
    pub(crate) fn open_until(&self) -> Option<Instant> {
        if self.state == State::Open {
            self.open_until
        } else {
            None
        }
    }

    /// New settings apply from now on; the state is kept.
    pub(crate) fn set_settings(&mut self, settings: BreakerSettings) {
        self.settings = settings;
        self.open_for = self.open_for.clamp(
            settings.open_duration,
            settings.max_open_duration.max(settings.open_duration),
        );
    }

    /// Applies the passing of time: an open circuit whose time is up turns half-open.
    pub(crate) fn refresh(&mut self, now: Instant) -> Option<Transition> {
        match (self.state, self.open_until) {
            (State::Open, Some(until)) if now >= until => {
                self.state = State::HalfOpen;
                self.trial_in_flight = false;
                Some(Transition {
                    to: State::HalfOpen,
                    reason: format!(
                        "open for {}; letting one trial request through",
                        humantime::format_duration(self.open_for)
                    ),
                })
            }
            _ => None,
        }
    }

    /// Could a request be sent now (without claiming anything)?
    pub(crate) fn would_admit(&self, now: Instant) -> bool {
        match self.state {
            State::Closed => true,
            State::Open => self.open_until.is_some_and(|until| now >= until),
            State::HalfOpen => !self.trial_in_flight,
        }
    }

    /// Claims the right to send a request: always when closed; the single trial when half-open.
    pub fn admit(&mut self, now: Instant) -> (bool, Option<Transition>) {
        let transition = self.refresh(now);
        let admitted = match self.state {
            State::Closed => true,
            State::Open => false,
            State::HalfOpen if self.trial_in_flight => false,
            State::HalfOpen => {
                self.trial_in_flight = true;
                true
            }
        };
        (admitted, transition)
    }

    /// Closes the circuit whatever its state (the backend was seen to come back by its health checks).
    pub(crate) fn reset(&mut self, reason: &str) -> Option<Transition> {
        let was = self.state;
        *self = Self::new(self.settings);
        (was != State::Closed).then(|| Transition {
            to: State::Closed,
            reason: reason.to_owned(),
        })
    }

    /// An admitted request ended without an outcome (the client went away): free the half-open trial.
    pub fn cancel_trial(&mut self) {
        self.trial_in_flight = false;
    }

    /// Opens an open (or half-open) circuit's door now: one trial at a time, without waiting out the open period.
    /// For a pool whose every usable backend is open, so that recovery is seen within a round trip.
    pub(crate) fn admit_early(&mut self) -> (bool, Option<Transition>) {
        match self.state {
            State::Closed => (true, None),
            State::HalfOpen if self.trial_in_flight => (false, None),
            State::HalfOpen => {
                self.trial_in_flight = true;
                (true, None)
            }
            State::Open => {
                self.state = State::HalfOpen;
                self.trial_in_flight = true;
                (
                    true,
                    Some(Transition {
                        to: State::HalfOpen,
                        reason: "every usable backend of the pool is open; trying this one now"
                            .to_owned(),
                    }),
                )
            }
        }
    }

    pub fn on_success(&mut self) -> Option<Transition> {
        self.consecutive_failures = 0;
        self.held_closed = false;
        match self.state {
            State::HalfOpen => {
                self.state = State::Closed;
                self.trial_in_flight = false;
                self.open_for = self.settings.open_duration;
                self.open_until = None;
                Some(Transition {
                    to: State::Closed,
                    reason: "trial request succeeded".to_owned(),
                })
            }
            // Closed: the count is reset. Open: a request admitted before the circuit opened; it changes nothing.
            State::Closed | State::Open => None,
        }
    }

    pub fn on_failure(&mut self, now: Instant, what: &str) -> Option<Transition> {
        self.on_failure_capped(now, what, || true).0
    }

    /// A failure, where a closed circuit may open only if `may_open()` agrees (the pool's cap; asked only when
    /// the threshold is reached). Also returns true when this failure newly held the circuit closed.
    pub(crate) fn on_failure_capped(
        &mut self,
        now: Instant,
        what: &str,
        may_open: impl FnOnce() -> bool,
    ) -> (Option<Transition>, bool) {
        let transition = match self.state {
            State::Closed => {
                self.consecutive_failures = self.consecutive_failures.saturating_add(1);
                if self.consecutive_failures >= self.settings.failure_threshold && !may_open() {
                    let newly = !self.held_closed;
                    self.held_closed = true;
                    return (None, newly);
                }
                if self.consecutive_failures >= self.settings.failure_threshold {
                    self.open_for = self.settings.open_duration;
                    Some(self.open(
                        now,
                        format!(
                            "{} consecutive failures, the last: {what}",
                            self.consecutive_failures
                        ),
                    ))
                } else {
                    None
                }
            }
            State::HalfOpen => {
                self.consecutive_failures = self.consecutive_failures.saturating_add(1);
                self.open_for = (self.open_for * 2).min(
                    self.settings
                        .max_open_duration
                        .max(self.settings.open_duration),
                );
                Some(self.open(now, format!("trial request failed: {what}")))
            }
            State::Open => None,
        };
        (transition, false)
    }

    fn open(&mut self, now: Instant, reason: String) -> Transition {
        self.state = State::Open;
        self.held_closed = false;
        self.trial_in_flight = false;
        self.open_until = Some(now + self.open_for);
        Transition {
            to: State::Open,
            reason: format!(
                "{reason}; open for {}",
                humantime::format_duration(self.open_for)
            ),
        }
    }
}

/// A [`Breaker`] shared by every request to one backend.
#[derive(Debug)]
pub(crate) struct CircuitBreaker {
    machine: Mutex<Breaker>,
    state: AtomicU8,
    /// Mirrors `consecutive_failures`, so a success in a clean closed state takes no lock.
    failures: AtomicU32,
    /// Milliseconds after `epoch` at which an open circuit may turn half-open.
    open_until_ms: AtomicU64,
    epoch: Instant,
}

impl CircuitBreaker {
    pub(crate) fn new(settings: BreakerSettings) -> Self {
        Self {
            machine: Mutex::new(Breaker::new(settings)),
            state: AtomicU8::new(State::Closed.to_u8()),
            failures: AtomicU32::new(0),
            open_until_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    pub(crate) fn state(&self) -> State {
        State::from_u8(self.state.load(Ordering::Acquire))
    }

    fn millis(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX)
    }

    /// Runs `f` on the machine and publishes its state to the atomics.
    fn with<R>(&self, f: impl FnOnce(&mut Breaker) -> R) -> R {
        let mut m = match self.machine.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        let out = f(&mut m);
        self.failures
            .store(m.consecutive_failures, Ordering::Relaxed);
        if let Some(until) = m.open_until() {
            self.open_until_ms
                .store(self.millis(until), Ordering::Relaxed);
        }
        self.state.store(m.state.to_u8(), Ordering::Release);
        out
    }

    /// Read-only: may this backend be chosen now? (Lock-free unless a half-open trial is in question.)
    #[inline]
    pub(crate) fn would_admit(&self, now: Instant) -> bool {
        match self.state() {
            State::Closed => true,
            State::Open => self.millis(now) >= self.open_until_ms.load(Ordering::Relaxed),
            State::HalfOpen => self.with(|m| m.would_admit(now)),
        }
    }

    /// Claims the right to send one request (the single trial when half-open).
    #[inline]
    pub(crate) fn admit(&self, now: Instant) -> (bool, Option<Transition>) {
        if self.state() == State::Closed {
            return (true, None);
        }
        self.with(|m| m.admit(now))
    }

    #[inline]
    pub(crate) fn on_success(&self) -> Option<Transition> {
        if self.state() == State::Closed && self.failures.load(Ordering::Relaxed) == 0 {
            return None;
        }
        self.with(|m| m.on_success())
    }

    #[cfg(test)]
    pub(crate) fn on_failure(&self, now: Instant, what: &str) -> Option<Transition> {
        self.with(|m| m.on_failure(now, what))
    }

    /// See [`Breaker::on_failure_capped`].
    pub(crate) fn on_failure_capped(
        &self,
        now: Instant,
        what: &str,
        may_open: impl FnOnce() -> bool,
    ) -> (Option<Transition>, bool) {
        self.with(|m| m.on_failure_capped(now, what, may_open))
    }

    pub(crate) fn is_held_closed(&self) -> bool {
        self.state() == State::Closed && self.with(|m| m.is_held_closed())
    }

    /// See [`Breaker::admit_early`].
    pub(crate) fn admit_early(&self) -> (bool, Option<Transition>) {
        self.with(|m| m.admit_early())
    }

    pub(crate) fn reset(&self, reason: &str) -> Option<Transition> {
        self.with(|m| m.reset(reason))
    }

    /// Releases a claimed half-open trial that produced no outcome.
    pub(crate) fn cancel_trial(&self) {
        if self.state() == State::HalfOpen {
            self.with(|m| m.cancel_trial());
        }
    }

    /// Applies expiry (open → half-open) without a request; for observers like `/api/pools` and `/metrics`.
    pub(crate) fn refresh(&self, now: Instant) -> Option<Transition> {
        if self.state() != State::Open {
            return None;
        }
        self.with(|m| m.refresh(now))
    }

    /// State, consecutive failures and, when open, the instant it turns half-open.
    pub(crate) fn snapshot(&self) -> (State, u32, Option<Instant>) {
        self.with(|m| (m.state, m.consecutive_failures, m.open_until()))
    }

    pub(crate) fn set_settings(&self, settings: BreakerSettings) {
        self.with(|m| m.set_settings(settings));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> BreakerSettings {
        BreakerSettings {
            failure_threshold: 3,
            open_duration: Duration::from_secs(10),
            max_open_duration: Duration::from_secs(35),
            max_active_requests: 0,
            max_open_percent: 100,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_threshold_consecutive_failures() {
        let mut b = Breaker::new(settings());
        let now = Instant::now();
        assert_eq!(b.on_failure(now, "500"), None);
        assert_eq!(b.on_failure(now, "500"), None);
        let t = b.on_failure(now, "connect refused").unwrap();
        assert_eq!(t.to, State::Open);
        assert!(t.reason.contains("3 consecutive failures"), "{}", t.reason);
        assert_eq!(b.open_until(), Some(now + Duration::from_secs(10)));
        assert!(!b.admit(now).0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_success_resets_the_count() {
        let mut b = Breaker::new(settings());
        let now = Instant::now();
        b.on_failure(now, "x");
        b.on_failure(now, "x");
        assert_eq!(b.on_success(), None);
        assert_eq!(b.consecutive_failures(), 0);
        assert_eq!(b.on_failure(now, "x"), None);
        assert_eq!(b.state(), State::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn half_open_lets_exactly_one_trial_and_success_closes() {
        let mut b = Breaker::new(settings());
        let start = Instant::now();
        for _ in 0..3 {
            b.on_failure(start, "x");
        }
        tokio::time::advance(Duration::from_secs(10)).await;
        let now = Instant::now();
        let (first, t) = b.admit(now);
        assert!(first);
        assert_eq!(t.unwrap().to, State::HalfOpen);
        assert!(!b.admit(now).0, "a second request during the trial");
        assert!(!b.would_admit(now));
        let t = b.on_success().unwrap();
        assert_eq!(t.to, State::Closed);
        assert!(b.admit(now).0);
        assert!(b.admit(now).0);
    }

    #[tokio::test(start_paused = true)]
    async fn failed_trial_reopens_for_double_capped() {
        let mut b = Breaker::new(settings());
        let mut now = Instant::now();
        for _ in 0..3 {
            b.on_failure(now, "x");
        }
        for expected in [20, 35, 35] {
            now = b.open_until().unwrap();
            assert!(b.admit(now).0);
            let t = b.on_failure(now, "still 500").unwrap();
            assert_eq!(t.to, State::Open);
            assert_eq!(b.open_until(), Some(now + Duration::from_secs(expected)));
        }
        // Recovery resets the open duration to the base.
        now = b.open_until().unwrap();
        assert!(b.admit(now).0);
        b.on_success();
        for _ in 0..3 {
            b.on_failure(now, "x");
        }
        assert_eq!(b.open_until(), Some(now + Duration::from_secs(10)));
    }

    #[tokio::test(start_paused = true)]
    async fn refresh_turns_half_open_without_traffic() {
        let mut b = Breaker::new(settings());
        let now = Instant::now();
        for _ in 0..3 {
            b.on_failure(now, "x");
        }
        assert_eq!(b.refresh(now + Duration::from_secs(9)), None);
        assert_eq!(
            b.refresh(now + Duration::from_secs(10)).unwrap().to,
            State::HalfOpen
        );
        assert_eq!(b.refresh(now + Duration::from_secs(11)), None);
    }

    #[tokio::test(start_paused = true)]
    async fn shared_breaker_mirrors_state_in_atomics() {
        let cb = CircuitBreaker::new(settings());
        let now = Instant::now();
        assert!(cb.would_admit(now));
        for _ in 0..3 {
            cb.on_failure(now, "x");
        }
        assert_eq!(cb.state(), State::Open);
        assert!(!cb.would_admit(now + Duration::from_secs(9)));
        assert!(cb.would_admit(now + Duration::from_secs(10)));
        let (ok, t) = cb.admit(now + Duration::from_secs(10));
        assert!(ok);
        assert_eq!(t.unwrap().to, State::HalfOpen);
        assert!(!cb.admit(now + Duration::from_secs(10)).0);
        assert_eq!(cb.on_success().unwrap().to, State::Closed);
        assert_eq!(cb.state(), State::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn reset_closes_from_any_state() {
        let mut b = Breaker::new(settings());
        let now = Instant::now();
        assert_eq!(b.reset("x"), None);
        for _ in 0..3 {
            b.on_failure(now, "x");
        }
        let t = b.reset("health checks passed").unwrap();
        assert_eq!(t.to, State::Closed);
        assert_eq!(b.consecutive_failures(), 0);
        assert!(b.admit(now).0);
    }

    #[tokio::test(start_paused = true)]
    async fn failures_while_open_change_nothing() {
        let mut b = Breaker::new(settings());
        let now = Instant::now();
        for _ in 0..3 {
            b.on_failure(now, "x");
        }
        let until = b.open_until();
        assert_eq!(b.on_failure(now + Duration::from_secs(1), "late"), None);
        assert_eq!(b.on_success(), None);
        assert_eq!(b.open_until(), until);
        assert_eq!(b.state(), State::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn the_cap_holds_a_circuit_closed_and_asks_again_on_the_next_failure() {
        let mut b = Breaker::new(settings());
        let now = Instant::now();
        let mut asked = 0;
        for _ in 0..2 {
            assert_eq!(
                b.on_failure_capped(now, "x", || unreachable!()),
                (None, false)
            );
        }
        assert_eq!(
            b.on_failure_capped(now, "x", || {
                asked += 1;
                false
            }),
            (None, true),
            "held: reported once"
        );
        assert_eq!(b.on_failure_capped(now, "x", || false), (None, false));
        assert!(b.is_held_closed());
        assert_eq!(b.state(), State::Closed);
        assert!(b.admit(now).0, "a held circuit lets traffic through");
        let (t, held) = b.on_failure_capped(now, "x", || {
            asked += 1;
            true
        });
        assert_eq!((t.map(|t| t.to), held), (Some(State::Open), false));
        assert!(!b.is_held_closed());
        assert_eq!(asked, 2);
        // A success clears the hold.
        let mut c = Breaker::new(settings());
        for _ in 0..3 {
            c.on_failure_capped(now, "x", || false);
        }
        c.on_success();
        assert!(!c.is_held_closed());
    }

    #[tokio::test(start_paused = true)]
    async fn an_early_trial_turns_an_open_circuit_half_open_one_trial_at_a_time() {
        let mut b = Breaker::new(settings());
        let now = Instant::now();
        assert_eq!(b.admit_early(), (true, None), "closed: nothing to do");
        for _ in 0..3 {
            b.on_failure(now, "x");
        }
        let (admitted, t) = b.admit_early();
        assert!(admitted);
        assert_eq!(t.map(|t| t.to), Some(State::HalfOpen));
        assert_eq!(b.admit_early(), (false, None), "its trial is in flight");
        b.cancel_trial();
        assert_eq!(b.admit_early(), (true, None));
        assert_eq!(b.on_success().map(|t| t.to), Some(State::Closed));
    }

    #[tokio::test(start_paused = true)]
    async fn early_trials_are_logged_once_a_second_and_say_how_many_were_not() {
        let mut early = EarlyTrials::default();
        let start = Instant::now();
        let mut reason = String::from("trying this one now");
        assert!(early.log(start, &mut reason));
        assert!(!early.take_quiet());
        assert_eq!(reason, "trying this one now");
        for ms in [10, 500, 999] {
            assert!(!early.log(start + Duration::from_millis(ms), &mut reason));
            assert!(
                early.take_quiet(),
                "its return to open is not logged either"
            );
            assert!(!early.take_quiet());
        }
        assert!(early.log(start + Duration::from_millis(1000), &mut reason));
        assert_eq!(
            reason,
            "trying this one now (3 more early trials in the last second, not logged)"
        );
    }
}
