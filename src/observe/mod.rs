//! Observability: every Prometheus collector ([`metrics`]) and the access log ([`access_log`]). Both are
//! written to by the data path without blocking it and read by the admin listener and the log writer.

pub(crate) mod access_log;
pub(crate) mod balancing;
pub mod metrics;
pub(crate) mod rate_limits;
pub(crate) mod routes;
