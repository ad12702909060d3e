//! The rise/fall counter: a backend goes out after `fall` consecutive failed checks and comes back after `rise`
//! consecutive successes, so one lost probe never flaps it.

/// A flip of a backend's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flip {
    Up,
    Down,
}

#[derive(Debug, Clone)]
pub(crate) struct RiseFall {
    healthy: bool,
    streak: u32,
    rise: u32,
    fall: u32,
}

impl RiseFall {
    /// Backends start healthy.
    pub(crate) fn new(rise: u32, fall: u32) -> Self {
        Self {
            healthy: true,
            streak: 0,
            rise: rise.max(1),
            fall: fall.max(1),
        }
    }

    /// Starts from a known state (a backend carried over a reload keeps its health).
    pub(crate) fn with_state(rise: u32, fall: u32, healthy: bool) -> Self {
        Self {
            healthy,
            ..Self::new(rise, fall)
        }
    }

    #[cfg(test)]
    pub(crate) fn is_healthy(&self) -> bool {
        self.healthy
    }

    /// Records one check; returns the flip it causes, if any.
    pub(crate) fn record(&mut self, ok: bool) -> Option<Flip> {
        if ok == self.healthy {
            // A result that agrees with the current state breaks any streak toward the other state.
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        let needed = if self.healthy { self.fall } else { self.rise };
        if self.streak < needed {
            return None;
        }
        self.healthy = ok;
        self.streak = 0;
        Some(if ok { Flip::Up } else { Flip::Down })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn goes_down_after_fall_failures_in_a_row() {
        let mut rf = RiseFall::new(2, 3);
        assert!(rf.is_healthy());
        assert_eq!(rf.record(false), None);
        assert_eq!(rf.record(false), None);
        assert_eq!(rf.record(false), Some(Flip::Down));
        assert!(!rf.is_healthy());
        assert_eq!(rf.record(false), None);
    }

    #[test]
    fn comes_back_after_rise_successes_in_a_row() {
        let mut rf = RiseFall::with_state(2, 3, false);
        assert_eq!(rf.record(true), None);
        assert_eq!(rf.record(true), Some(Flip::Up));
        assert!(rf.is_healthy());
    }

    #[test]
    fn alternating_results_never_flap() {
        let mut rf = RiseFall::new(2, 2);
        for i in 0..100 {
            assert_eq!(rf.record(i % 2 == 0), None, "flapped at {i}");
        }
        assert!(rf.is_healthy());
        let mut down = RiseFall::with_state(2, 2, false);
        for i in 0..100 {
            assert_eq!(down.record(i % 2 == 0), None, "flapped at {i}");
        }
        assert!(!down.is_healthy());
    }

    #[test]
    fn thresholds_of_one_flip_at_once() {
        let mut rf = RiseFall::new(1, 1);
        assert_eq!(rf.record(false), Some(Flip::Down));
        assert_eq!(rf.record(true), Some(Flip::Up));
    }
}
