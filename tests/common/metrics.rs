//! Reading Prometheus text: one series' value, from a text or a running proxy.
#![allow(dead_code)]

use std::time::Duration;

#[allow(unused_imports)]
use super::*;

/// The value of one sample line in a Prometheus text exposition, e.g.
/// `switchyard_requests_total{backend="none",code="404",pool="none"}`; labels must be in sorted order.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .and_then(|v| v.trim().parse().ok())
}
pub async fn reload_count(admin: u16, result: &str) -> f64 {
    let (_, _, text) = get(([127, 0, 0, 1], admin).into(), "/metrics", None).await;
    metric(
        &text,
        &format!("switchyard_config_reloads_total{{result=\"{result}\"}}"),
    )
    .unwrap_or(0.0)
}

/// Polls the admin listener at `admin` until the series equals `want` (10 s at most).
pub async fn metric_eventually(admin: u16, series: &str, want: f64) -> bool {
    super::eventually(Duration::from_secs(10), || async {
        metric_at(admin, series).await == want
    })
    .await
}

/// A metric's value on the admin listener at `admin` (0 when the series is not there).
pub async fn metric_at(admin: u16, series: &str) -> f64 {
    let (_, _, text) = get(([127, 0, 0, 1], admin).into(), "/metrics", None).await;
    metric(&text, series).unwrap_or(0.0)
}
