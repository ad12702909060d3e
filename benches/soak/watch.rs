//! What the soak watches of the proxy: its RSS and open file descriptors each second, its request counters
//! (kept across series that go and come back, as Prometheus' `increase()` does), and its log.

use std::collections::BTreeMap;
use std::time::Instant;

/// One reading of the process, `at` seconds into the run.
pub struct Sample {
    pub at: f64,
    pub rss_kib: u64,
    pub fds: u64,
    /// Open descriptors beyond the client connections the proxy counts open (scraped right after): what a leak
    /// would raise and the load's connections coming and going do not.
    pub other_fds: Option<u64>,
}

/// The descriptors the client connections hold, from a scrape: one per connection being served
/// (`switchyard_open_connections`), two per upgraded one (its client's and its backend's: a tunnel leaves the
/// served count when it is handed over).
pub fn connection_fds(text: &str) -> Option<u64> {
    let gauge = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map(|v| v as u64)
    };
    Some(gauge("switchyard_open_connections")? + 2 * gauge("switchyard_upgraded_connections")?)
}

pub fn sample(pid: u32, start: Instant) -> Option<Sample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64;
    Some(Sample {
        at: start.elapsed().as_secs_f64(),
        rss_kib,
        fds,
        other_fds: None,
    })
}

/// `switchyard_requests_total`, per series, summed over the series' lives: a series removed (its backend left
/// the pool) and created again starts from 0, and what it had counted is kept.
#[derive(Default)]
pub struct Counted {
    series: BTreeMap<String, (f64, f64)>,
}

impl Counted {
    pub fn scrape(&mut self, text: &str) {
        for line in text.lines() {
            let Some(rest) = line.strip_prefix("switchyard_requests_total{") else {
                continue;
            };
            let Some((labels, value)) = rest.split_once("} ") else {
                continue;
            };
            let Ok(value) = value.trim().parse::<f64>() else {
                continue;
            };
            let (before, last) = self.series.entry(labels.to_owned()).or_default();
            if value < *last {
                *before += *last;
            }
            *last = value;
        }
    }

    /// Requests by status code.
    pub fn by_code(&self) -> BTreeMap<u16, u64> {
        let mut codes = BTreeMap::new();
        for (labels, (before, last)) in &self.series {
            let code = labels
                .split("code=\"")
                .nth(1)
                .and_then(|c| c.split('"').next())
                .and_then(|c| c.parse().ok())
                .unwrap_or(0);
            *codes.entry(code).or_default() += (before + last) as u64;
        }
        codes
    }
}

/// The log's verdict: panics, ERROR lines the chaos caused on purpose (an invalid config, a certificate pair
/// caught half-written), and the others.
#[derive(Default)]
pub struct LogReview {
    pub lines: u64,
    pub panics: Vec<String>,
    pub expected_errors: u64,
    pub unexpected_errors: Vec<String>,
    pub warnings: u64,
}

pub fn review_log(text: &str) -> LogReview {
    let mut review = LogReview::default();
    for line in text.lines() {
        review.lines += 1;
        if line.contains("panicked") {
            review.panics.push(line.to_owned());
            continue;
        }
        let Ok(entry) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let message = entry["fields"]["message"].as_str().unwrap_or("");
        match entry["level"].as_str() {
            Some("ERROR") if message.starts_with("config reload failed") => {
                review.expected_errors += 1
            }
            // A rotation writes the key and the certificate as two files: a reload that runs between the two
            // renames sees a pair that does not match, keeps the old one, and loads the new one on the next.
            Some("ERROR")
                if message.starts_with("certificate reload failed")
                    && entry["fields"]["error"]
                        .as_str()
                        .is_some_and(|e| e.contains("does not match the certificate")) =>
            {
                review.expected_errors += 1
            }
            Some("ERROR") => review.unexpected_errors.push(line.to_owned()),
            Some("WARN") => review.warnings += 1,
            _ => {}
        }
    }
    review
}

/// min / median / max.
pub fn spread(values: &[u64]) -> (u64, u64, u64) {
    let mut v = values.to_vec();
    v.sort_unstable();
    if v.is_empty() {
        return (0, 0, 0);
    }
    (v[0], v[v.len() / 2], v[v.len() - 1])
}
