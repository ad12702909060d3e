//! Observability: every Prometheus collector ([`metrics`]), the access log ([`access_log`]), the event feed
//! ([`events`]) and the status page's live figures ([`status`]). All are written to without blocking the data
//! path and read by the admin listener and the log writer.

#[doc(hidden)]
pub mod access_log;
pub(crate) mod balancing;
pub(crate) mod events;
pub mod metrics;
pub(crate) mod rate_limits;
pub(crate) mod routes;
pub(crate) mod status;
