//! Backend selection. A [`Selector`] only chooses among the candidates it is told are usable; health, breakers
//! and draining are the pool's business. Picks are lock-free and allocate nothing.
//!
//! An algorithm is one file here implementing [`Selector`] (usually through [`Scan`]), plus its config name in
//! `config::Algorithm`, its variant in [`Registered`] and one line in [`build`].

mod consistent_hash;
mod least_connections;
mod peak_ewma;
mod round_robin;

use std::sync::Arc;

use tokio::time::Instant;

pub use consistent_hash::ConsistentHash;
pub(crate) use consistent_hash::HashSetup;
pub use least_connections::LeastConnections;
pub(crate) use least_connections::splitmix64;
pub use peak_ewma::PeakEwma;
pub use round_robin::RoundRobin;

use super::backend::Backend;
use crate::config::Algorithm;

/// A balancing algorithm and its state, for one pool's backends.
pub trait Selector: Send + Sync + std::fmt::Debug {
    /// The index of the chosen backend among the usable `candidates`, or `None`.
    fn pick(&self, candidates: &Candidates<'_>) -> Option<usize>;
}

/// The backends a selector may choose from: all of a pool's, with the pool's rule for which are usable now.
/// A concrete type (not a closure behind a pointer) so that each algorithm's scan inlines the check.
pub struct Candidates<'a> {
    pub(crate) backends: &'a [Arc<Backend>],
    now: Instant,
    /// The request's hashed key, for consistent hashing.
    key: Option<u64>,
    rule: Rule<'a>,
}

enum Rule<'a> {
    /// Allowed by drain and health, circuit open, not tried yet: for an early trial.
    OpenForTrial {
        ignore_health: bool,
        tried: &'a Tried,
    },
    /// Any rule given as a function (tests, tools).
    Given(&'a dyn Fn(usize) -> bool),
}

impl<'a> Candidates<'a> {
    pub(crate) fn open_for_trial(
        backends: &'a [Arc<Backend>],
        ignore_health: bool,
        tried: &'a Tried,
        key: Option<u64>,
    ) -> Self {
        let rule = Rule::OpenForTrial {
            ignore_health,
            tried,
        };
        Self {
            backends,
            now: Instant::now(),
            key,
            rule,
        }
    }

    pub fn given(backends: &'a [Arc<Backend>], usable: &'a dyn Fn(usize) -> bool) -> Self {
        Self {
            backends,
            now: Instant::now(),
            key: None,
            rule: Rule::Given(usable),
        }
    }

    /// The same candidates for a request with hashed key `key`.
    pub fn with_key(self, key: u64) -> Self {
        Self {
            key: Some(key),
            ..self
        }
    }

    /// Runs `algorithm`'s scan with this rule (the common pick, "available now", goes through
    /// [`Registered::pick_available`] instead, with its check inlined).
    #[inline(always)]
    pub(crate) fn scan_with<S: Scan>(&self, algorithm: &S) -> Option<usize> {
        algorithm.scan(self.backends, self.now, self.key, |i| self.usable(i))
    }

    /// May backend `i` be chosen?
    #[inline(always)]
    pub(crate) fn usable(&self, i: usize) -> bool {
        match &self.rule {
            Rule::OpenForTrial {
                ignore_health,
                tried,
            } => {
                let b = &self.backends[i];
                !tried.contains(i) && (*ignore_health || b.is_healthy()) && b.may_try_early()
            }
            Rule::Given(f) => f(i),
        }
    }
}

/// Backends already tried (or refused by their breaker) for one request. Inline: no allocation.
#[derive(Debug, Default)]
pub struct Tried {
    list: [u32; 16],
    len: usize,
}

impl Tried {
    #[inline]
    pub(crate) fn contains(&self, i: usize) -> bool {
        self.list[..self.len].contains(&(i as u32))
    }

    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// No room to note another backend: the request picks no more (it could not avoid repeating one).
    #[inline]
    pub(crate) fn is_full(&self) -> bool {
        self.len == self.list.len()
    }

    #[inline]
    pub(crate) fn push(&mut self, i: usize) {
        if self.len < self.list.len() {
            self.list[self.len] = i as u32;
            self.len += 1;
        }
    }
}

/// The registered algorithms. An enum rather than a `Box<dyn Selector>`: the pick is the hottest call of the
/// data path, and a static call lets each algorithm's scan inline (about 1.5 ns a pick, measured).
#[derive(Debug)]
pub enum Registered {
    RoundRobin(RoundRobin),
    LeastConnections(LeastConnections),
    PeakEwma(PeakEwma),
    ConsistentHash(ConsistentHash),
}

impl Registered {
    /// The common pick, without building [`Candidates`]: available now and not tried yet.
    #[inline(always)]
    pub(crate) fn pick_available(
        &self,
        backends: &[Arc<Backend>],
        now: Instant,
        key: Option<u64>,
        ignore_health: bool,
        tried: &Tried,
    ) -> Option<usize> {
        let at = (backends, now, key);
        match self {
            Self::RoundRobin(s) => scan_available(s, at, ignore_health, tried),
            Self::LeastConnections(s) => scan_available(s, at, ignore_health, tried),
            Self::PeakEwma(s) => scan_available(s, at, ignore_health, tried),
            Self::ConsistentHash(s) => scan_available(s, at, ignore_health, tried),
        }
    }

    /// The consistent-hash table, for a pool that hashes.
    pub fn hash_table(&self) -> Option<&[u32]> {
        match self {
            Self::ConsistentHash(s) => Some(s.table()),
            _ => None,
        }
    }
}

#[inline(always)]
fn scan_available<S: Scan>(
    algorithm: &S,
    (backends, now, key): (&[Arc<Backend>], Instant, Option<u64>),
    ignore_health: bool,
    tried: &Tried,
) -> Option<usize> {
    if tried.is_empty() {
        algorithm.scan(backends, now, key, |i| {
            backends[i].is_available(now, ignore_health)
        })
    } else {
        algorithm.scan(backends, now, key, |i| {
            !tried.contains(i) && backends[i].is_available(now, ignore_health)
        })
    }
}

impl Selector for Registered {
    #[inline]
    fn pick(&self, candidates: &Candidates<'_>) -> Option<usize> {
        match self {
            Self::RoundRobin(s) => Selector::pick(s, candidates),
            Self::LeastConnections(s) => Selector::pick(s, candidates),
            Self::PeakEwma(s) => Selector::pick(s, candidates),
            Self::ConsistentHash(s) => Selector::pick(s, candidates),
        }
    }
}

/// The selector for `algorithm`, built for `backends` as they are (order and weights): a pool is rebuilt, with
/// a new selector, whenever its membership or weights change (a reload, a DNS answer). `hash` sets up
/// consistent hashing (its table is built here, off the request path).
pub(crate) fn build_with(
    algorithm: Algorithm,
    backends: &[Arc<Backend>],
    hash: impl FnOnce() -> HashSetup,
) -> Registered {
    match algorithm {
        Algorithm::ConsistentHash => {
            Registered::ConsistentHash(ConsistentHash::new(backends, hash()))
        }
        Algorithm::RoundRobin => {
            let weights: Vec<u32> = backends.iter().map(|b| b.weight()).collect();
            Registered::RoundRobin(RoundRobin::new(&weights))
        }
        Algorithm::LeastConnections => Registered::LeastConnections(LeastConnections::new()),
        Algorithm::PeakEwma => Registered::PeakEwma(PeakEwma::new()),
    }
}

/// A consistent-hash table of `size` slots for `members` (address, weight): each slot's backend index (for
/// the disruption figures and the table-build bench).
pub fn hash_table(members: &[(&str, u32)], size: usize) -> Vec<u32> {
    consistent_hash::fill(members, size)
}

/// [`build_with`] with consistent hashing's defaults (a table of 65,537 slots, loads not bounded).
pub fn build(algorithm: Algorithm, backends: &[Arc<Backend>]) -> Registered {
    build_with(algorithm, backends, || HashSetup {
        table_size: 65537,
        balance_factor: 0.0,
        in_flight: None,
        overflow: None,
    })
}

/// An algorithm's scan over the backends with a concrete `usable` check; [`Candidates::scan_with`] calls it
/// with the pool's rule.
pub(crate) trait Scan {
    fn scan(
        &self,
        backends: &[Arc<Backend>],
        now: Instant,
        key: Option<u64>,
        usable: impl Fn(usize) -> bool,
    ) -> Option<usize>;
}

impl Scan for RoundRobin {
    #[inline(always)]
    fn scan(
        &self,
        backends: &[Arc<Backend>],
        _now: Instant,
        _key: Option<u64>,
        usable: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        RoundRobin::pick(self, backends.len(), usable)
    }
}

impl Selector for RoundRobin {
    #[inline]
    fn pick(&self, c: &Candidates<'_>) -> Option<usize> {
        c.scan_with(self)
    }
}

impl Scan for LeastConnections {
    #[inline(always)]
    fn scan(
        &self,
        backends: &[Arc<Backend>],
        _now: Instant,
        _key: Option<u64>,
        usable: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        LeastConnections::pick(self, backends, usable)
    }
}

impl Scan for PeakEwma {
    #[inline(always)]
    fn scan(
        &self,
        backends: &[Arc<Backend>],
        now: Instant,
        _key: Option<u64>,
        usable: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        PeakEwma::pick(self, backends, now, usable)
    }
}

impl Selector for PeakEwma {
    #[inline]
    fn pick(&self, c: &Candidates<'_>) -> Option<usize> {
        c.scan_with(self)
    }
}

impl Selector for LeastConnections {
    #[inline]
    fn pick(&self, c: &Candidates<'_>) -> Option<usize> {
        c.scan_with(self)
    }
}

impl Scan for ConsistentHash {
    #[inline(always)]
    fn scan(
        &self,
        backends: &[Arc<Backend>],
        now: Instant,
        key: Option<u64>,
        usable: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        ConsistentHash::pick(self, backends, now, key, usable)
    }
}

impl Selector for ConsistentHash {
    #[inline]
    fn pick(&self, c: &Candidates<'_>) -> Option<usize> {
        c.scan_with(self)
    }
}
