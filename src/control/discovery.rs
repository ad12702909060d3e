//! Upstreams from DNS: A/AAAA records (with the configured port) or SRV records (ports and weights), as Consul's
//! DNS interface and Kubernetes headless services publish them, resolved with hickory-resolver.
//!
//! One task per pool asks every `refresh` (sooner when the records' TTL is shorter, never more than once a
//! second) and hands each answer to the control loop, which owns what is known: a failed lookup keeps the last
//! known set, an authoritative empty answer empties it only once it has persisted for [`EMPTY_STREAK`] lookups,
//! and a change is applied exactly like a reload (unchanged backends keep their state).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::ProtoErrorKind;
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{RData, RecordType};
use hickory_resolver::proto::xfer::Protocol;
use hickory_resolver::{ResolveError, TokioResolver};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::config::{DiscoverySettings, ResolverSettings};

/// Lookups in a row that must answer "no such name / no records" before the discovered backends are dropped.
pub(crate) const EMPTY_STREAK: u32 = 3;
/// The shortest time between two lookups, whatever the TTL.
const MIN_REFRESH: Duration = Duration::from_secs(1);

/// One backend found in DNS.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Found {
    pub(crate) address: String,
    pub(crate) weight: u32,
}

/// What one lookup said.
#[derive(Debug, Clone)]
pub(crate) enum Answer {
    Found(Vec<Found>),
    /// NXDOMAIN, or NOERROR without records of the type asked: the name really has no backends.
    Empty,
    /// Timeout, SERVFAIL, REFUSED, no server reachable, anything else: says nothing about the backends.
    Failed(String),
}

/// Does this error say the name has no records (NXDOMAIN, or NOERROR with an empty answer)? hickory reports
/// SERVFAIL, REFUSED and the like as "no records found" too, with their response code: those are failures of
/// the server, not answers about the name.
fn no_such_records(error: &ResolveError) -> bool {
    error.proto().is_some_and(|p| {
        matches!(
            p.kind(),
            ProtoErrorKind::NoRecordsFound {
                response_code: ResponseCode::NXDomain | ResponseCode::NoError,
                ..
            }
        )
    })
}

impl Answer {
    /// The `result` label of `switchyard_discovery_lookups_total`.
    pub(crate) fn result(&self) -> &'static str {
        match self {
            Self::Found(_) => "success",
            Self::Empty => "empty",
            Self::Failed(_) => "failure",
        }
    }
}

/// What a pool knows from DNS, and the rules for changing it: a failed lookup keeps it, "no records" empties it
/// only once it has come [`EMPTY_STREAK`] times in a row, and any answer with records replaces it. Pure: the
/// control loop feeds it answers and logs what it reports.
#[derive(Debug, Default)]
pub(crate) struct Known {
    backends: Vec<Found>,
    /// "No records" answers in a row.
    empty_streak: u32,
    /// The last lookup failed (to report when failing starts and ends, not every failure).
    failing: bool,
}

/// What an answer did to what is known.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Step {
    /// The backends changed: those added and those removed (their addresses).
    pub(crate) changed: Option<(Vec<String>, Vec<String>)>,
    /// Something worth one log line.
    pub(crate) note: Option<Note>,
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Note {
    /// Lookups started failing (the error); the backends are kept.
    FailingStarted(String),
    /// An answer came after failures or "no records".
    AnswersAgain,
    /// The first "no records" while backends are known: they are kept for now.
    NoRecordsStarted,
}

impl Known {
    /// Starts with what an earlier discovery of the pool knew (kept until the first answer).
    pub(crate) fn with(backends: Vec<Found>) -> Self {
        Self {
            backends,
            ..Self::default()
        }
    }

    pub(crate) fn backends(&self) -> &[Found] {
        &self.backends
    }

    pub(crate) fn into_backends(self) -> Vec<Found> {
        self.backends
    }

    pub(crate) fn on_answer(&mut self, answer: Answer) -> Step {
        let mut note = None;
        let next = match answer {
            Answer::Found(found) => {
                if self.failing || self.empty_streak > 0 {
                    note = Some(Note::AnswersAgain);
                }
                self.failing = false;
                self.empty_streak = 0;
                found
            }
            Answer::Failed(error) => {
                let note = (!self.failing).then_some(Note::FailingStarted(error));
                self.failing = true;
                // A failure says nothing about the name: "no records" must come again in a row.
                self.empty_streak = 0;
                return Step {
                    changed: None,
                    note,
                };
            }
            Answer::Empty => {
                if self.failing {
                    note = Some(Note::AnswersAgain);
                }
                self.failing = false;
                self.empty_streak += 1;
                if self.empty_streak < EMPTY_STREAK || self.backends.is_empty() {
                    if self.empty_streak == 1 && !self.backends.is_empty() {
                        note = Some(Note::NoRecordsStarted);
                    }
                    return Step {
                        changed: None,
                        note,
                    };
                }
                Vec::new()
            }
        };
        if next == self.backends {
            return Step {
                changed: None,
                note,
            };
        }
        let added = next
            .iter()
            .filter(|f| !self.backends.contains(f))
            .map(|f| f.address.clone())
            .collect();
        let removed = self
            .backends
            .iter()
            .filter(|f| !next.contains(f))
            .map(|f| f.address.clone())
            .collect();
        self.backends = next;
        Step {
            changed: Some((added, removed)),
            note,
        }
    }
}

/// Builds the resolver: the configured name servers (UDP, then TCP for long answers), or the system's.
pub(crate) fn resolver(settings: &ResolverSettings) -> Result<TokioResolver, String> {
    let mut builder = if settings.nameservers.is_empty() {
        TokioResolver::builder_tokio()
            .map_err(|e| format!("cannot read the system's DNS settings: {e}"))?
    } else {
        let mut config = ResolverConfig::new();
        for &server in &settings.nameservers {
            config.add_name_server(NameServerConfig::new(server, Protocol::Udp));
            config.add_name_server(NameServerConfig::new(server, Protocol::Tcp));
        }
        TokioResolver::builder_with_config(config, TokioConnectionProvider::default())
    };
    let options: &mut ResolverOpts = builder.options_mut();
    options.timeout = settings.timeout;
    options.attempts = 1;
    // Every refresh asks the server: the answer's TTL paces the lookups, not a cache.
    options.cache_size = 0;
    // Names are absolute as configured (`api.service.consul`), not tried under search domains.
    options.ndots = 0;
    Ok(builder.build())
}

/// Asks once; returns the answer and how long it may be trusted (its smallest TTL).
pub(crate) async fn lookup(
    resolver: &TokioResolver,
    settings: &DiscoverySettings,
) -> (Answer, Option<Duration>) {
    #[allow(clippy::disallowed_methods)] // hickory's TTL deadline is a std Instant
    let now = std::time::Instant::now();
    let name = format!("{}.", settings.name);
    let result = match settings.port {
        Some(port) => resolver.lookup_ip(name.as_str()).await.map(|ips| {
            let ttl = ips.valid_until().saturating_duration_since(now);
            let mut found: Vec<Found> = ips
                .iter()
                .map(|ip| Found {
                    address: SocketAddr::new(ip, port).to_string(),
                    weight: 1,
                })
                .collect();
            found.sort();
            found.dedup();
            (found, ttl)
        }),
        None => match resolver.lookup(name.as_str(), RecordType::SRV).await {
            Ok(records) => {
                let ttl = records.valid_until().saturating_duration_since(now);
                let mut found = Vec::new();
                for data in records.iter() {
                    let RData::SRV(srv) = data else { continue };
                    let target = srv.target().to_ascii();
                    // The target's addresses: from the same answer's additional records when the server sent
                    // them (hickory keeps them), else one more lookup.
                    let ips: Vec<IpAddr> = match resolver.lookup_ip(target.as_str()).await {
                        Ok(ips) => ips.iter().collect(),
                        // A target without addresses adds no backend; a target whose lookup failed makes
                        // the whole answer a failure (what is known is kept), never a smaller set.
                        Err(e) if no_such_records(&e) => Vec::new(),
                        Err(e) => return (Answer::Failed(describe(&e)), None),
                    };
                    for ip in ips {
                        found.push(Found {
                            address: SocketAddr::new(ip, srv.port()).to_string(),
                            weight: u32::from(srv.weight()).clamp(1, crate::config::MAX_WEIGHT),
                        });
                    }
                }
                found.sort();
                found.dedup_by(|a, b| a.address == b.address);
                Ok((found, ttl))
            }
            Err(e) => Err(e),
        },
    };
    match result {
        Ok((found, _)) if found.is_empty() => (Answer::Empty, None),
        Ok((found, ttl)) => (Answer::Found(found), Some(ttl)),
        Err(e) if no_such_records(&e) => (Answer::Empty, None),
        Err(e) => (Answer::Failed(describe(&e)), None),
    }
}

/// A failed lookup in words an operator can act on ("answered SERVFAIL", not hickory's "no records found").
fn describe(error: &ResolveError) -> String {
    match error.proto().map(|p| p.kind()) {
        Some(ProtoErrorKind::NoRecordsFound {
            response_code,
            query,
            ..
        }) => format!(
            "the DNS server answered {response_code:?} ({}) to {} {}",
            response_code.to_str(),
            query.name(),
            query.query_type()
        ),
        _ => error.to_string(),
    }
}

/// A lookup's answer for a pool, as reported to the control loop.
pub(crate) struct Discovered {
    pub(crate) pool: String,
    pub(crate) answer: Answer,
}

/// A pool's discovery task: looks up, reports to the control loop, waits, again.
pub(crate) fn spawn(
    pool: String,
    settings: DiscoverySettings,
    resolver: Arc<TokioResolver>,
    report: mpsc::Sender<Discovered>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let started = Instant::now();
            let (answer, ttl) = lookup(&resolver, &settings).await;
            let wait = ttl
                .map_or(settings.refresh, |t| t.min(settings.refresh))
                .max(MIN_REFRESH);
            let command = Discovered {
                pool: pool.clone(),
                answer,
            };
            if report.send(command).await.is_err() {
                return;
            }
            tokio::time::sleep_until(started + wait).await;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(addresses: &[&str]) -> Answer {
        Answer::Found(
            addresses
                .iter()
                .map(|a| Found {
                    address: (*a).to_owned(),
                    weight: 1,
                })
                .collect(),
        )
    }

    #[test]
    fn failures_keep_the_backends_however_long_they_last() {
        let mut known = Known::default();
        assert!(known.on_answer(found(&["a:1"])).changed.is_some());
        let first = known.on_answer(Answer::Failed("SERVFAIL".into()));
        assert_eq!(first.note, Some(Note::FailingStarted("SERVFAIL".into())));
        for _ in 0..100 {
            let step = known.on_answer(Answer::Failed("SERVFAIL".into()));
            assert_eq!(
                step,
                Step {
                    changed: None,
                    note: None
                },
                "logged once, nothing changes"
            );
        }
        assert_eq!(known.backends().len(), 1);
        assert_eq!(
            known.on_answer(found(&["a:1"])).note,
            Some(Note::AnswersAgain)
        );
    }

    #[test]
    fn no_records_empties_only_after_three_in_a_row() {
        let mut known = Known::default();
        known.on_answer(found(&["a:1", "b:1"]));
        assert_eq!(
            known.on_answer(Answer::Empty).note,
            Some(Note::NoRecordsStarted)
        );
        assert_eq!(known.on_answer(Answer::Empty).changed, None);
        // A failure in between breaks the streak.
        known.on_answer(Answer::Failed("timeout".into()));
        assert_eq!(known.on_answer(Answer::Empty).changed, None);
        assert_eq!(known.on_answer(Answer::Empty).changed, None);
        let third = known.on_answer(Answer::Empty);
        assert_eq!(
            third.changed,
            Some((vec![], vec!["a:1".into(), "b:1".into()]))
        );
        assert!(known.backends().is_empty());
    }

    #[test]
    fn a_changed_answer_reports_what_was_added_and_removed() {
        let mut known = Known::with(vec![Found {
            address: "a:1".into(),
            weight: 1,
        }]);
        let step = known.on_answer(found(&["b:1"]));
        assert_eq!(step.changed, Some((vec!["b:1".into()], vec!["a:1".into()])));
        assert_eq!(known.on_answer(found(&["b:1"])).changed, None);
    }
}
