//! Per-backend state shared by the data path and the control plane, all in atomics.
//!
//! A backend is built once per pool and address and shared by `Arc`; the selector reads it, the proxy counts
//! requests in flight on it with an [`InFlight`] guard, and health checks (later) flip its flags.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use http::uri::Authority;

use crate::metrics::BackendMetrics;

pub struct Backend {
    /// `host:port` as written in the config.
    pub address: String,
    /// The same, ready to put in an upstream request URI.
    pub authority: Authority,
    pub weight: u32,
    healthy: AtomicBool,
    active: AtomicUsize,
    pub metrics: BackendMetrics,
}

impl Backend {
    pub fn new(address: &str, weight: u32, metrics: BackendMetrics) -> Result<Self, http::Error> {
        Ok(Self {
            address: address.to_owned(),
            authority: Authority::try_from(address)?,
            weight,
            healthy: AtomicBool::new(true),
            active: AtomicUsize::new(0),
            metrics,
        })
    }

    /// May the balancer send this backend a new request?
    pub fn is_available(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Takes the backend out of (or back into) rotation; the health checker's lever.
    pub fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::Relaxed);
    }

    /// Requests sent to this backend whose responses have not finished yet.
    pub fn active_requests(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// Counts a request in flight until the guard is dropped.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.active.fetch_add(1, Ordering::Relaxed);
        if let Some(g) = &self.metrics.active {
            g.inc();
        }
        InFlight(Arc::clone(self))
    }
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend")
            .field("address", &self.address)
            .field("weight", &self.weight)
            .field("active", &self.active_requests())
            .finish()
    }
}

/// A request in flight on a backend; dropping it ends the count.
pub struct InFlight(Arc<Backend>);

impl InFlight {
    pub fn backend(&self) -> &Arc<Backend> {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
        if let Some(g) = &self.0.metrics.active {
            g.dec();
        }
    }
}
