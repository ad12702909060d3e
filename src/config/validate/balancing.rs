//! The sections that make balancing adapt: `peak_ewma`, `slow_start`, `outlier_detection` and `queue`.

use std::time::Duration;

use super::{Checker, FieldPath, model};
use crate::config::settings::*;

impl Checker<'_, '_> {
    pub(super) fn peak_ewma(
        &mut self,
        field: FieldPath,
        p: Option<&model::PeakEwma>,
    ) -> PeakEwmaSettings {
        let d = PeakEwmaSettings::default();
        let Some(p) = p else { return d };
        PeakEwmaSettings {
            decay: self.duration(field.key("decay"), p.decay.as_deref(), d.decay),
            default_rtt: self.duration(
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
            window: self.duration(
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
        let base_ejection_time = self.duration(
            field.key("base_ejection_time"),
            o.base_ejection_time.as_deref(),
            Duration::from_secs(30),
        );
        let max_ejection_time = self.duration(
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
            interval: self.duration(
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
            timeout: self.duration(
                field.key("timeout"),
                q.timeout.as_deref(),
                Duration::from_secs(1),
            ),
        }
    }
}
