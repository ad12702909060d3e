//! Smooth weighted round-robin, as NGINX does it: weights 1:3 give `B A B B`, never `A B B B`.
//!
//! NGINX keeps a running "current weight" per backend behind a lock. The order it produces is periodic, with a
//! period of the sum of the (gcd-reduced) weights, so we compute one period when the pool is built and a pick is
//! one atomic increment and one array read.

use std::sync::atomic::{AtomicUsize, Ordering};

#[derive(Debug)]
pub struct RoundRobin {
    sequence: Box<[u32]>,
    next: AtomicUsize,
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

impl RoundRobin {
    pub fn new(weights: &[u32]) -> Self {
        Self {
            sequence: smooth_sequence(weights).into_boxed_slice(),
            next: AtomicUsize::new(0),
        }
    }

    /// The precomputed order, one period long.
    pub fn sequence(&self) -> &[u32] {
        &self.sequence
    }

    #[inline]
    pub fn pick(&self, count: usize, usable: impl Fn(usize) -> bool) -> Option<usize> {
        let len = self.sequence.len();
        if len == 0 || count == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let first = self.sequence[start % len] as usize;
        if usable(first) {
            return Some(first);
        }
        // Keep to the weighted order for a while, then fall back to trying each backend once.
        let walk = len.min(2 * count);
        for step in 1..walk {
            let i = self.sequence[(start + step) % len] as usize;
            if usable(i) {
                return Some(i);
            }
        }
        (1..count).map(|k| (first + k) % count).find(|&i| usable(i))
    }
}

/// One period of NGINX's smooth weighted round-robin over `weights`.
pub(crate) fn smooth_sequence(weights: &[u32]) -> Vec<u32> {
    let divisor = weights
        .iter()
        .copied()
        .filter(|&w| w > 0)
        .fold(0, gcd)
        .max(1);
    let reduced: Vec<i64> = weights
        .iter()
        .map(|&w| i64::from(w.max(1) / divisor).max(1))
        .collect();
    if reduced.iter().all(|&w| w == 1) {
        // Equal weights take their turns in order: what the loop below gives, without its n² steps (a reload
        // of 100 pools of 100 backends spent 5% of its time here).
        return (0..weights.len() as u32).collect();
    }
    let total: i64 = reduced.iter().sum();
    let mut current = vec![0i64; reduced.len()];
    let mut out = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    for _ in 0..total {
        let mut best = 0;
        for i in 0..reduced.len() {
            current[i] += reduced[i];
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        out.push(best as u32);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_to_three_is_smooth() {
        assert_eq!(smooth_sequence(&[1, 3]), vec![1, 0, 1, 1]);
    }

    #[test]
    fn equal_weights_alternate() {
        assert_eq!(smooth_sequence(&[1, 1, 1]), vec![0, 1, 2]);
        assert_eq!(smooth_sequence(&[5, 5]), vec![0, 1]);
        assert_eq!(smooth_sequence(&[3; 100]), (0..100).collect::<Vec<u32>>());
        assert_eq!(smooth_sequence(&[2, 2, 4]), vec![2, 0, 1, 2]);
    }

    #[test]
    fn five_one_one_spreads_the_light_ones() {
        // NGINX's documented example: a a b a c a a.
        assert_eq!(smooth_sequence(&[5, 1, 1]), vec![0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn skips_unusable_and_tries_each_once() {
        let rr = RoundRobin::new(&[1, 1, 1]);
        for _ in 0..10 {
            assert_eq!(rr.pick(3, |i| i == 2), Some(2));
        }
        assert_eq!(rr.pick(3, |_| false), None);
    }

    #[test]
    fn counts_follow_weights() {
        let rr = RoundRobin::new(&[2, 7, 1]);
        let mut counts = [0; 3];
        for _ in 0..1000 {
            counts[rr.pick(3, |_| true).unwrap_or(99)] += 1;
        }
        assert_eq!(counts, [200, 700, 100]);
    }
}
