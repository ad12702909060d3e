//! Balancing: the pool of interchangeable backends, each backend's shared state (health, circuit breaker,
//! requests in flight, drain), the selectors that pick among the usable ones, and the retry policy.
//!
//! Nothing here does I/O: the data path asks a [`pool::Pool`] for a backend and reports what happened; the control
//! plane flips health and drain on a [`backend::Backend`].

pub(crate) mod adaptive;
pub mod backend;
pub mod breaker;
pub mod pool;
pub(crate) mod queue;
pub(crate) mod retry;
pub mod select;
pub(crate) mod sticky;
