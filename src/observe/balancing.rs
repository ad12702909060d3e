//! The collectors of adaptive balancing and affinity: latency estimates, effective weights, outlier ejections,
//! queues, consistent hashing's overflow and sticky cookies.
//! The gauges of estimates and weights are set when `/metrics` is read (from the backends' own state), so the
//! request path pays nothing for them.

use prometheus::{GaugeVec, IntCounterVec, IntGaugeVec, Opts, Registry};

use super::metrics::{BACKEND, Register};

pub(crate) struct BalancingMetrics {
    pub(crate) latency_ewma_seconds: GaugeVec,
    pub(crate) effective_weight: GaugeVec,
    pub(crate) outlier_ejections_total: IntCounterVec,
    pub(crate) ejected: IntGaugeVec,
    pub(crate) queue_waiting: IntGaugeVec,
    pub(crate) queue_rejections_total: IntCounterVec,
    pub(crate) hash_overflow_total: IntCounterVec,
    pub(crate) sticky_total: IntCounterVec,
}

impl BalancingMetrics {
    pub(crate) fn register(registry: &Registry) -> Self {
        let reg = Register(registry);
        Self {
            latency_ewma_seconds: reg.add(GaugeVec::new(
                Opts::new(
                    "switchyard_backend_latency_ewma_seconds",
                    "The backend's peak-EWMA latency estimate (time to the response head), as peak_ewma balances on it.",
                ),
                BACKEND,
            )),
            effective_weight: reg.add(GaugeVec::new(
                Opts::new(
                    "switchyard_backend_effective_weight",
                    "The backend's weight now: below its configured weight while it ramps up (slow_start).",
                ),
                BACKEND,
            )),
            outlier_ejections_total: reg.add(IntCounterVec::new(
                Opts::new(
                    "switchyard_outlier_ejections_total",
                    "Times outlier detection ejected the backend for its failure rate.",
                ),
                BACKEND,
            )),
            ejected: reg.add(IntGaugeVec::new(
                Opts::new(
                    "switchyard_backend_ejected",
                    "1 while outlier detection keeps the backend out of rotation.",
                ),
                BACKEND,
            )),
            queue_waiting: reg.add(IntGaugeVec::new(
                Opts::new(
                    "switchyard_queue_waiting",
                    "Requests waiting in the pool's queue for a backend under max_active_requests.",
                ),
                &["pool"],
            )),
            queue_rejections_total: reg.add(IntCounterVec::new(
                Opts::new(
                    "switchyard_queue_rejections_total",
                    "Requests refused 503 by the pool's queue: full (max_waiting) or timeout.",
                ),
                &["pool", "reason"],
            )),
            hash_overflow_total: reg.add(IntCounterVec::new(
                Opts::new(
                    "switchyard_hash_overflow_total",
                    "Consistent-hash picks moved off the key's backend because it was at its load bound (balance_factor).",
                ),
                &["pool"],
            )),
            sticky_total: reg.add(IntCounterVec::new(
                Opts::new(
                    "switchyard_sticky_total",
                    "Sticky-cookie outcomes: hit (followed), missing (no cookie), invalid (tampered or naming no backend of the pool), unavailable (its backend cannot serve now) per request; new per cookie set.",
                ),
                &["pool", "result"],
            )),
        }
    }

    /// Deletes a removed backend's series.
    pub(crate) fn remove_backend(&self, pool: &str, backend: &str) {
        let labels = [pool, backend];
        let _ = self.latency_ewma_seconds.remove_label_values(&labels);
        let _ = self.effective_weight.remove_label_values(&labels);
        let _ = self.outlier_ejections_total.remove_label_values(&labels);
        let _ = self.ejected.remove_label_values(&labels);
    }
}
