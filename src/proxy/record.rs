//! The one place where a finished exchange is recorded, however it ended: the proxy's own answer, an upstream
//! response whose body ended (or whose client went away), a tunnel that closed. Its status is counted when it
//! is known ([`answered`]); its duration and access log line when it ends ([`ended`]).
//!
//! Per attempt, the backend's circuit breaker hears the outcome in `Exchange::attempt`; the backend's in-flight
//! count ends with its `InFlight` guard, which the exchange's [`super::Completion`] holds to the end.

use std::time::Duration;

use http::StatusCode;

use super::Completion;
use crate::observe::access_log::Pending;
use crate::observe::metrics::BackendMetrics;

/// How a request's life ended, for [`ended`].
pub(super) enum Ending {
    /// A request and its response: the duration is observed.
    Request,
    /// An upgraded connection: its lifetime is not a request duration, so only the log line is written.
    Tunnel,
}

/// The response's status is known: counted under the pool and backend that answered (`backend="none"` for the
/// proxy's own answers), and noted for the access log line.
pub(super) fn answered(
    metrics: &BackendMetrics,
    status: StatusCode,
    log: Option<&mut Pending>,
    backend: Option<&str>,
    attempts: u32,
) {
    metrics.count_response(status);
    if let Some(l) = log {
        l.status = status.as_u16();
        l.pool.clone_from(metrics.pool());
        if let Some(backend) = backend {
            l.backend = backend.to_owned();
        }
        l.attempts = attempts;
    }
}

/// An upstream's response status is known: counted under the backend that answered; the log line waits in
/// `done` for the end of the exchange.
pub(super) fn upstream_answered(
    done: &mut Completion,
    status: StatusCode,
    mut log: Option<Box<Pending>>,
    attempts: u32,
) {
    let backend = done.in_flight.backend();
    let address = Some(backend.address.as_str());
    answered(
        &backend.metrics,
        status,
        log.as_deref_mut(),
        address,
        attempts,
    );
    done.log = log;
}

/// The exchange is over after `elapsed`, with `bytes_out` body bytes sent to the client.
pub(super) fn ended(
    metrics: &BackendMetrics,
    how: Ending,
    elapsed: Duration,
    log: Option<Box<Pending>>,
    bytes_out: u64,
) {
    if matches!(how, Ending::Request) {
        metrics.observe_duration(elapsed);
    }
    if let Some(log) = log {
        log.finish(elapsed, bytes_out);
    }
}
