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
pub const EMPTY_STREAK: u32 = 3;
/// The shortest time between two lookups, whatever the TTL.
const MIN_REFRESH: Duration = Duration::from_secs(1);

/// One backend found in DNS.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Found {
    pub address: String,
    pub weight: u32,
}

/// What one lookup said.
#[derive(Debug, Clone)]
pub enum Answer {
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
    pub fn result(&self) -> &'static str {
        match self {
            Self::Found(_) => "success",
            Self::Empty => "empty",
            Self::Failed(_) => "failure",
        }
    }
}

/// Builds the resolver: the configured name servers (UDP, then TCP for long answers), or the system's.
pub fn resolver(settings: &ResolverSettings) -> Result<TokioResolver, String> {
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
pub async fn lookup(
    resolver: &TokioResolver,
    settings: &DiscoverySettings,
) -> (Answer, Option<Duration>) {
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
pub struct Discovered {
    pub pool: String,
    pub answer: Answer,
}

/// A pool's discovery task: looks up, reports to the control loop, waits, again.
pub fn spawn(
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
