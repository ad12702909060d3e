//! Backend selection. A [`Selector`] only chooses among the candidates it is told are usable; health, breakers
//! and draining are the pool's business. Picks are lock-free and allocate nothing.
//!
//! An algorithm is one file here implementing [`Selector`], plus its config name in
//! [`crate::config::Algorithm`] and one line in [`build`].

mod least_connections;
mod round_robin;

use std::sync::Arc;

pub use least_connections::LeastConnections;
pub use round_robin::RoundRobin;

use super::backend::Backend;
use crate::config::Algorithm;

/// A balancing algorithm and its state, for one pool's backends.
pub trait Selector: Send + Sync + std::fmt::Debug {
    /// The index of the chosen backend among those for which `usable(index)` is true, or `None`.
    fn pick(&self, backends: &[Arc<Backend>], usable: &dyn Fn(usize) -> bool) -> Option<usize>;
}

/// The selector for `algorithm`, built for `backends` as they are (order and weights): a pool is rebuilt, with
/// a new selector, whenever its membership or weights change (a reload, a DNS answer).
pub fn build(algorithm: Algorithm, backends: &[Arc<Backend>]) -> Box<dyn Selector> {
    match algorithm {
        Algorithm::RoundRobin => {
            let weights: Vec<u32> = backends.iter().map(|b| b.weight()).collect();
            Box::new(RoundRobin::new(&weights))
        }
        Algorithm::LeastConnections => Box::new(LeastConnections::new()),
    }
}

impl Selector for RoundRobin {
    #[inline]
    fn pick(&self, backends: &[Arc<Backend>], usable: &dyn Fn(usize) -> bool) -> Option<usize> {
        RoundRobin::pick(self, backends.len(), usable)
    }
}

impl Selector for LeastConnections {
    #[inline]
    fn pick(&self, backends: &[Arc<Backend>], usable: &dyn Fn(usize) -> bool) -> Option<usize> {
        LeastConnections::pick(self, backends, usable)
    }
}
