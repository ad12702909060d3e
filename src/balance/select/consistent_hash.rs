//! Consistent hashing: the same key goes to the same backend while backends come and go, with loads bounded.
//!
//! The lookup is a Maglev table: `table_size` slots (a prime), each naming a backend; a key's slot is its hash
//! scaled to the table, so a pick is one multiplication and one load however many backends there are. Each
//! backend walks the slots in its own order (Maglev's permutation: an offset and a step, from hashes of its
//! address). Maglev fills the table by letting backends take turns at their next free slot; here each slot goes
//! instead to the backend whose walk reaches it soonest, weighted (an exponential "arrival" at the walk's
//! position, divided by the weight). Filling by rank rather than by turns gives up Maglev's exactly even slot
//! counts (they are binomial: within a percent at 5 backends, a few percent at 256) for an exact property turns
//! lack: removing a backend moves only its own keys, adding it back restores the old table slot for slot, and a
//! backend's share of slots is its share of the weight. The table depends on the members and weights only (not
//! their order), so two instances with the same backends hash every key the same way.
//!
//! A backend that cannot take the request now (down, ejected, open circuit, draining, tried) is skipped by
//! probing the next slots: only its keys move, and they come back when it does, with no rebuild. With
//! `balance_factor`, a backend already at `ceil(factor × average in flight)` is skipped too, but by jumping to a
//! slot drawn from the key: its overflow spreads over the pool instead of piling onto its neighbour in the table.
//! A request without a key is balanced by least connections.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use prometheus::IntCounter;
use tokio::time::Instant;

use super::least_connections::{LeastConnections, splitmix64};
use crate::balance::adaptive::stamp;
use crate::balance::backend::Backend;

/// Slots probed onward past unusable backends before the pick falls back to least connections.
const PROBES: usize = 64;
/// Random jumps tried for a key whose backend is at its load bound.
const JUMPS: usize = 16;
/// How long the weight of the usable backends (for the load bound) is reused before it is summed again.
const REWEIGH_NS: u64 = 100_000_000;

#[derive(Debug)]
pub struct ConsistentHash {
    /// Backend index (into the pool's list) for each slot; empty for a pool without backends.
    table: Box<[u32]>,
    /// `balance_factor`; 0 when loads are not bounded.
    factor: f64,
    /// The sum of the backends' weights when the table was built.
    total_weight: u64,
    /// The sum of the usable backends' weights, as of `weighed_at` (0: not yet summed).
    usable_weight: AtomicU64,
    weighed_at: AtomicU64,
    /// Requests in flight over the whole pool (kept by the pool's backends when loads are bounded).
    in_flight: Option<Arc<AtomicUsize>>,
    /// `switchyard_hash_overflow_total{pool}`.
    overflow: Option<IntCounter>,
    /// For requests without a key, and when probing finds nobody.
    fallback: LeastConnections,
}

/// How a pool's table is built and bounded.
pub(crate) struct HashSetup {
    pub(crate) table_size: u32,
    pub(crate) balance_factor: f64,
    pub(crate) in_flight: Option<Arc<AtomicUsize>>,
    pub(crate) overflow: Option<IntCounter>,
}

impl ConsistentHash {
    pub(crate) fn new(backends: &[Arc<Backend>], setup: HashSetup) -> Self {
        let members: Vec<(&str, u32)> = backends
            .iter()
            .map(|b| (b.address.as_str(), b.weight()))
            .collect();
        let in_flight = setup.in_flight.filter(|_| setup.balance_factor > 0.0);
        Self {
            table: fill(&members, setup.table_size as usize).into_boxed_slice(),
            factor: if in_flight.is_some() {
                setup.balance_factor
            } else {
                0.0
            },
            total_weight: members.iter().map(|&(_, w)| u64::from(w.max(1))).sum(),
            usable_weight: AtomicU64::new(0),
            weighed_at: AtomicU64::new(0),
            in_flight,
            overflow: setup.overflow,
            fallback: LeastConnections::new(),
        }
    }

    /// The table: backend indexes, slot by slot (for the disruption tests and benches).
    pub fn table(&self) -> &[u32] {
        &self.table
    }

    /// The backend for `key` (the request's hashed key), or by least connections without one.
    #[inline]
    pub(crate) fn pick(
        &self,
        backends: &[Arc<Backend>],
        now: Instant,
        key: Option<u64>,
        usable: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        let Some(key) = key else {
            return self.fallback.pick(backends, usable);
        };
        let size = self.table.len();
        if size == 0 {
            return None;
        }
        let mut slot = scale(key, size);
        for _ in 0..PROBES.min(size) {
            let i = self.table[slot] as usize;
            if i < backends.len() && usable(i) {
                if self.factor == 0.0 || self.has_room(backends, i, now) {
                    return Some(i);
                }
                return self.overflow(backends, now, key, i, &usable);
            }
            slot += 1;
            if slot == size {
                slot = 0;
            }
        }
        self.fallback.pick(backends, usable)
    }

    /// `home`, the key's backend, is at its bound: a backend with room, at slots drawn from the key.
    #[cold]
    #[inline(never)]
    fn overflow(
        &self,
        backends: &[Arc<Backend>],
        now: Instant,
        key: u64,
        home: usize,
        usable: &impl Fn(usize) -> bool,
    ) -> Option<usize> {
        let mut state = key;
        let chosen = (0..JUMPS)
            .map(|_| self.table[scale(splitmix64(&mut state), self.table.len())] as usize)
            .find(|&i| {
                i != home && i < backends.len() && usable(i) && self.has_room(backends, i, now)
            })
            // Every draw at its bound too: the least loaded (it may be `home` again).
            .or_else(|| self.fallback.pick(backends, usable));
        if let (Some(i), Some(c)) = (chosen, &self.overflow) {
            if i != home {
                c.inc();
            }
        }
        chosen
    }

    /// Is backend `i` under its bound, `ceil(factor × (in flight + 1) × weight / total weight)`? The total
    /// weight is the table's; when that says no, the weight of the usable backends only (with some out, each
    /// of the rest may take more), summed at most every 100 ms.
    #[inline]
    fn has_room(&self, backends: &[Arc<Backend>], i: usize, now: Instant) -> bool {
        let load = backends[i].active_requests();
        if load == 0 {
            return true;
        }
        let total = self
            .in_flight
            .as_ref()
            .map_or(0, |t| t.load(Ordering::Relaxed));
        let weight = f64::from(backends[i].weight().max(1));
        let fits = |total_weight: u64| {
            ((load + 1) as f64)
                <= (self.factor * (total + 1) as f64 * weight / total_weight.max(1) as f64).ceil()
        };
        fits(self.total_weight) || fits(self.usable_weight(backends, now))
    }

    /// The weight of the backends available now (as of at most [`REWEIGH_NS`] ago).
    #[cold]
    #[inline(never)]
    fn usable_weight(&self, backends: &[Arc<Backend>], now: Instant) -> u64 {
        let now_ns = stamp(now);
        let cached = self.usable_weight.load(Ordering::Relaxed);
        if cached > 0 && now_ns.saturating_sub(self.weighed_at.load(Ordering::Relaxed)) < REWEIGH_NS
        {
            return cached;
        }
        let sum: u64 = backends
            .iter()
            .filter(|b| b.is_available(now, false) || b.is_busy(now, false))
            .map(|b| u64::from(b.weight().max(1)))
            .sum();
        self.usable_weight.store(sum.max(1), Ordering::Relaxed);
        self.weighed_at.store(now_ns, Ordering::Relaxed);
        sum.max(1)
    }
}

/// A hash scaled to `0..size` (Lemire's multiply-shift: no division).
#[inline(always)]
fn scale(hash: u64, size: usize) -> usize {
    ((u128::from(hash) * size as u128) >> 64) as usize
}

/// The slot owners for `members` (address, weight), in their order, for a table of `size` slots (a prime).
///
/// Backend `b` reaches slot `offset_b + j × step_b (mod size)` at step `j`, which it "arrives" at at time
/// `-ln(1 - j/size) / weight_b`: exponential arrivals, so the earliest of several backends at a slot is each
/// one with the chance of its share of the weight. Each slot goes to the earliest (ties to the lower address,
/// so the rule holds whoever else is a member).
/// Walks run in stages up to a time by which every slot has likely been reached, and further if some has not.
pub(crate) fn fill(members: &[(&str, u32)], size: usize) -> Vec<u32> {
    let n = members.len();
    if n == 0 || size < 2 {
        return vec![0; if n == 0 { 0 } else { size }];
    }
    // The walks, in address order: the table does not depend on the order the backends are listed in.
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| members[a].0.cmp(members[b].0));
    let m = size as u64;
    let walks: Vec<Walk> = order
        .iter()
        .enumerate()
        .map(|(rank, &i)| {
            let address = members[i].0.as_bytes();
            let offset = twox_hash::XxHash3_64::oneshot_with_seed(0x5eed_0ff5, address) % m;
            let step = twox_hash::XxHash3_64::oneshot_with_seed(0x5eed_57e9, address) % (m - 1) + 1;
            Walk {
                rank: rank as u32,
                weight: f64::from(members[i].1.max(1)),
                position: offset,
                step,
                next: 0,
            }
        })
        .collect();
    let total_weight: f64 = walks.iter().map(|w| w.weight).sum();
    let mut walks = walks;
    // Each slot's earliest arrival so far and its walker's rank, side by side: one cache line per visit.
    let mut slots = vec![(f32::INFINITY, u32::MAX); size];
    let mut arrival: Vec<f32> = Vec::new();
    let mut unfilled = size;
    // The latest first arrival over all slots is about ln(size) / total weight; start a little past it.
    let mut until = ((size as f64).ln() + 2.0) / total_weight;
    while unfilled > 0 {
        for walk in &mut walks {
            // Steps whose arrival is at or before `until`: -ln(1 - j/size) ≤ until × weight.
            let last = ((1.0 - (-until * walk.weight).exp()) * size as f64).floor() as u64;
            let last = last.min(m - 1);
            extend_arrivals(&mut arrival, last as usize, size);
            let per_weight = (1.0 / walk.weight) as f32;
            while walk.next <= last {
                let slot = &mut slots[walk.position as usize];
                let time = arrival[walk.next as usize] * per_weight;
                if time < slot.0 || (time == slot.0 && walk.rank < slot.1) {
                    if slot.1 == u32::MAX {
                        unfilled -= 1;
                    }
                    *slot = (time, walk.rank);
                }
                walk.position += walk.step;
                if walk.position >= m {
                    walk.position -= m;
                }
                walk.next += 1;
            }
        }
        until += 1.0 / total_weight;
        if walks.iter().all(|w| w.next >= m) {
            break;
        }
    }
    slots
        .iter()
        .map(|&(_, rank)| order.get(rank as usize).map_or(0, |&i| i as u32))
        .collect()
}

/// One backend's walk through the table.
struct Walk {
    /// The backend's place in address order.
    rank: u32,
    weight: f64,
    /// The slot of step `next`.
    position: u64,
    step: u64,
    next: u64,
}

/// Arrival times `-ln(1 - j/size)` for steps up to `last`, computed once per table.
fn extend_arrivals(arrival: &mut Vec<f32>, last: usize, size: usize) {
    let from = arrival.len();
    if last < from {
        return;
    }
    arrival.extend((from..=last).map(|j| (-(-(j as f64) / size as f64).ln_1p()) as f32));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("10.0.0.{}:80", i + 1)).collect()
    }

    fn owners<'a>(table: &[u32], members: &[(&'a str, u32)]) -> Vec<&'a str> {
        table.iter().map(|&i| members[i as usize].0).collect()
    }

    #[test]
    fn every_slot_has_an_owner_and_shares_follow_weights() {
        let names = names(3);
        let members: Vec<(&str, u32)> = names
            .iter()
            .zip([1, 2, 3])
            .map(|(n, w)| (n.as_str(), w))
            .collect();
        let table = fill(&members, 65537);
        assert!(table.iter().all(|&i| i < 3));
        for (i, w) in [1.0, 2.0, 3.0].iter().enumerate() {
            let share = table.iter().filter(|&&o| o as usize == i).count() as f64 / 65537.0;
            assert!((share - w / 6.0).abs() < 0.01, "backend {i}: {share}");
        }
    }

    #[test]
    fn removing_a_backend_moves_only_its_slots_and_adding_it_back_restores_all() {
        let names = names(5);
        let all: Vec<(&str, u32)> = names.iter().map(|n| (n.as_str(), 1)).collect();
        let before = owners(&fill(&all, 65537), &all);
        let fewer: Vec<(&str, u32)> = all.iter().copied().filter(|m| m.0 != names[3]).collect();
        let after = owners(&fill(&fewer, 65537), &fewer);
        for (b, a) in before.iter().zip(&after) {
            if *b != names[3] {
                assert_eq!(b, a, "a slot of another backend moved");
            }
        }
        let mut reordered = all.clone();
        reordered.reverse();
        assert_eq!(owners(&fill(&reordered, 65537), &reordered), before);
    }

    #[test]
    fn tiny_tables_and_empty_pools() {
        assert!(fill(&[], 7).is_empty());
        let table = fill(&[("a", 1), ("b", 1)], 2);
        assert_eq!(table.len(), 2);
        assert!(table.iter().all(|&i| i < 2));
    }
}
