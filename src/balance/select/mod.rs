//! Backend selection. A selector only chooses among the candidates it is told are usable; health, breakers and
//! draining are the pool's business. Picks are lock-free and allocate nothing.

mod least_connections;
mod round_robin;

use std::sync::Arc;

pub use least_connections::LeastConnections;
pub use round_robin::RoundRobin;

use crate::balance::backend::Backend;
use crate::config::Algorithm;

/// The algorithm a pool balances with, and its state.
#[derive(Debug)]
pub enum Selector {
    RoundRobin(RoundRobin),
    LeastConnections(LeastConnections),
}

impl Selector {
    pub fn new(algorithm: Algorithm, backends: &[Arc<Backend>]) -> Self {
        match algorithm {
            Algorithm::RoundRobin => {
                let weights: Vec<u32> = backends.iter().map(|b| b.weight()).collect();
                Self::RoundRobin(RoundRobin::new(&weights))
            }
            Algorithm::LeastConnections => Self::LeastConnections(LeastConnections::new()),
        }
    }

    /// The index of the chosen backend among those for which `usable(index)` is true, or `None`.
    #[inline]
    pub fn pick(&self, backends: &[Arc<Backend>], usable: impl Fn(usize) -> bool) -> Option<usize> {
        match self {
            Self::RoundRobin(s) => s.pick(backends.len(), usable),
            Self::LeastConnections(s) => s.pick(backends, usable),
        }
    }
}
