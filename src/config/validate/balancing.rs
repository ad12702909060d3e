//! The sections that make balancing adapt: `peak_ewma`, `slow_start`, `outlier_detection` and `queue`.

use std::time::Duration;

use super::{Checker, FieldPath, model};
use crate::config::settings::*;

/// The longest duration these sections accept: a day (longer is a typo, and would overflow the clock's sums).
const LONGEST: Duration = Duration::from_secs(24 * 3600);

impl Checker<'_, '_> {
    /// A duration, positive and at most [`LONGEST`].
    fn span(&mut self, field: FieldPath, value: Option<&str>, default: Duration) -> Duration {
        let d = self.duration(field.clone(), value, default);
        if d > LONGEST {
            self.err(
                field,
                format!(
                    "{} is too long; at most {}",
                    humantime::format_duration(d),
                    humantime::format_duration(LONGEST)
                ),
            );
            return default;
        }
        d
    }

    pub(super) fn peak_ewma(
        &mut self,
        field: FieldPath,
        p: Option<&model::PeakEwma>,
    ) -> PeakEwmaSettings {
        let d = PeakEwmaSettings::default();
        let Some(p) = p else { return d };
        PeakEwmaSettings {
            decay: self.span(field.key("decay"), p.decay.as_deref(), d.decay),
            default_rtt: self.span(
                field.key("default_rtt"),
                p.default_rtt.as_deref(),
                d.default_rtt,
            ),
        }
    }

    pub(super) fn slow_start(
        &mut self,
        field: FieldPath,
        s: &model::SlowStart,
    ) -> SlowStartSettings {
        SlowStartSettings {
            window: self.span(
                field.key("window"),
                s.window.as_deref(),
                Duration::from_secs(30),
            ),
            min_weight_percent: self.int(
                field.key("min_weight_percent"),
                s.min_weight_percent,
                10,
                0,
                100,
            ),
        }
    }

    pub(super) fn outlier_detection(
        &mut self,
        field: FieldPath,
        o: &model::OutlierDetection,
    ) -> OutlierSettings {
        let base_ejection_time = self.span(
            field.key("base_ejection_time"),
            o.base_ejection_time.as_deref(),
            Duration::from_secs(30),
        );
        let max_ejection_time = self.span(
            field.key("max_ejection_time"),
            o.max_ejection_time.as_deref(),
            Duration::from_secs(300).max(base_ejection_time),
        );
        if max_ejection_time < base_ejection_time {
            self.err(
                field.key("max_ejection_time"),
                format!(
                    "{} is shorter than base_ejection_time {}",
                    humantime::format_duration(max_ejection_time),
                    humantime::format_duration(base_ejection_time)
                ),
            );
        }
        OutlierSettings {
            interval: self.span(
                field.key("interval"),
                o.interval.as_deref(),
                Duration::from_secs(10),
            ),
            failure_percentage: self.int(
                field.key("failure_percentage"),
                o.failure_percentage,
                20,
                0,
                100,
            ),
            min_requests: self.int(field.key("min_requests"), o.min_requests, 20, 1, 1_000_000),
            max_ejection_percent: self.int(
                field.key("max_ejection_percent"),
                o.max_ejection_percent,
                50,
                0,
                100,
            ),
            base_ejection_time,
            max_ejection_time,
        }
    }

    /// The queue needs `circuit_breaker.max_active_requests`: without a cap no backend is ever full.
    pub(super) fn queue(
        &mut self,
        field: FieldPath,
        q: &model::Queue,
        breaker: &BreakerSettings,
    ) -> QueueSettings {
        if breaker.max_active_requests == 0 {
            self.err(
                field.clone(),
                "a queue needs circuit_breaker.max_active_requests > 0 (requests wait for a backend under its \
                 cap); set [pools.NAME.circuit_breaker] max_active_requests, or remove the queue",
            );
        }
        QueueSettings {
            max_waiting: self.int(field.key("max_waiting"), q.max_waiting, 100, 1, 1_000_000),
            timeout: self.span(
                field.key("timeout"),
                q.timeout.as_deref(),
                Duration::from_secs(1),
            ),
        }
    }
}
