//! The routing table: host and longest path prefix to a pool, and the snapshot the data path reads.
//!
//! A route with a host beats a host-less one when both match; among routes for the same host the longest
//! `path_prefix` wins. Prefixes match the raw path (as NGINX's and Envoy's prefix routes do): `/api` matches
//! `/api/v1` and `/apix`; write `/api/` to match whole segments only.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use http::{HeaderMap, HeaderValue};
use prometheus::IntCounter;

use crate::balance::pool::Pool;
use crate::config::HeaderCondition;
use crate::config::{Config, Limits};
use crate::observe::access_log::{AccessLog, AccessLogSettings};
use crate::observe::metrics::{BackendMetrics, Metrics, NONE};
use crate::ratelimit::{RateLimit, store::Store};
use crate::tls::ListenerMode;
use crate::upstream::PoolConnections;

/// Everything the data path needs, published whole with one `ArcSwap::store`.
pub struct Snapshot {
    pub(crate) routes: RouteTable,
    pub pools: BTreeMap<String, Arc<Pool>>,
    /// Each pool's upstream connections, by pool name.
    pub(crate) upstreams: BTreeMap<String, Arc<PoolConnections>>,
    /// Label handles for requests no route matched (`pool="none", backend="none"`).
    pub(crate) no_route_metrics: BackendMetrics,
    /// The access log, when `[access_log]` is enabled.
    pub(crate) access_log: Option<(AccessLogSettings, Arc<AccessLog>)>,
    pub(crate) limits: Limits,
    pub(crate) trusted_proxies: Vec<ipnet::IpNet>,
    /// The bearer token every admin request must carry, if one is configured.
    pub(crate) admin_token: Option<String>,
    /// What each proxy listener speaks, by its configured address.
    pub(crate) listeners: Vec<(SocketAddr, Arc<ListenerMode>)>,
    /// The named rate limits and their buckets (kept across reloads while a limit's keys stay the same).
    pub(crate) rate_limits: BTreeMap<String, Arc<RateLimit>>,
    pub(crate) rate_limit_store: Option<Arc<Store>>,
    pub(crate) request_id: Option<crate::config::RequestIdSettings>,
    /// The routes as configured (`/api/routes`).
    pub(crate) route_settings: Vec<crate::config::RouteSettings>,
}

impl Snapshot {
    /// The snapshot of `config` alone, with fresh state, no access log and no listeners (the fuzz targets).
    pub fn of(config: &Config) -> Self {
        Self::build(config, &Metrics::new(), None, None, Vec::new())
    }

    /// Does a request for `host` and `path` (without headers) match a route?
    pub fn has_route(&self, host: Option<&str>, path: &str) -> bool {
        self.routes.route(host, path, &HeaderMap::new()).is_some()
    }

    /// Builds the snapshot for `config`. Backends of `previous` whose pool and address are unchanged are carried
    /// over as the same `Arc`, keeping their health, breaker, in-flight count, drain flag and idle connections.
    pub(crate) fn build(
        config: &Config,
        metrics: &Metrics,
        previous: Option<&Snapshot>,
        access_log: Option<(AccessLogSettings, Arc<AccessLog>)>,
        listeners: Vec<(SocketAddr, Arc<ListenerMode>)>,
    ) -> Self {
        let mut pools = BTreeMap::new();
        let mut upstreams = BTreeMap::new();
        for (name, settings) in &config.pools {
            let old = previous.and_then(|p| p.pools.get(name)).map(Arc::as_ref);
            let pool = Pool::new(name, settings, metrics, old);
            let connections = PoolConnections::new(
                settings.protocol,
                settings.tls.as_ref(),
                settings.max_response_header_bytes,
                pool.backends
                    .iter()
                    .map(|b| (b.address.as_str(), b.metrics.connections_opened.clone())),
                previous
                    .and_then(|p| p.upstreams.get(name))
                    .map(Arc::as_ref),
            );
            pools.insert(name.clone(), Arc::new(pool));
            upstreams.insert(name.clone(), Arc::new(connections));
        }
        let (rate_limits, rate_limit_store) = rate_limits(config, metrics, previous);
        let mut table = RouteTable::default();
        for r in &config.routes {
            let built = (&pools, &upstreams, &rate_limits);
            if let Some(route) = route_of(r, config, built, metrics) {
                table.add(r.host.as_deref(), &r.path_prefix, Arc::new(route));
            }
        }
        table.finish();
        Self {
            routes: table,
            pools,
            upstreams,
            no_route_metrics: metrics.for_local(NONE),
            access_log,
            limits: config.limits,
            trusted_proxies: config.trusted_proxies.clone(),
            admin_token: config.admin.token.clone(),
            listeners,
            rate_limits,
            rate_limit_store,
            request_id: config.request_id.clone(),
            route_settings: config.routes.clone(),
        }
    }

    /// The mode of the proxy listener configured at `address`.
    pub(crate) fn listener(&self, address: SocketAddr) -> Option<&Arc<ListenerMode>> {
        self.listeners
            .iter()
            .find(|(a, _)| *a == address)
            .map(|(_, mode)| mode)
    }
}

/// A route: what a request must match beyond host and prefix, what it checks first, and where it goes.
pub(crate) struct Route {
    /// The route's host, path prefix and header conditions (`api.example.com/api[x-canary=1]`), as metrics
    /// name it.
    pub(crate) label: String,
    headers: Vec<HeaderCondition>,
    pub(crate) rate_limits: Vec<RouteLimit>,
    /// The pools it sends to, by weight (one without a split).
    arms: Vec<(Arc<Target>, u32)>,
    total_weight: u32,
    /// The cookie that keeps a client on its arm.
    sticky_split: Option<String>,
    pub(crate) mirror: Option<Arc<Mirror>>,
}

impl Route {
    /// The pool of the route's first arm (its only one without a split).
    pub(crate) fn first_pool(&self) -> &Pool {
        &self.arms[0].0.pool
    }

    fn matches(&self, headers: &HeaderMap) -> bool {
        self.headers.iter().all(|c| match &c.value {
            None => headers.contains_key(&c.name),
            Some(want) => headers
                .get_all(&c.name)
                .iter()
                .any(|v| v.as_bytes() == want.as_bytes()),
        })
    }

    /// The pool for a request: the only one, or a split's arm by weight (the client's own, with a sticky
    /// split). `true` with it: the response sets the sticky split's cookie.
    #[inline]
    pub(crate) fn choose(&self, headers: &HeaderMap) -> (&Arc<Target>, bool) {
        let chosen = match self.arms.as_slice() {
            [(only, _)] => (only, false),
            arms => {
                let kept = self.sticky_split.as_deref().and_then(|name| {
                    let value = crate::balance::sticky::cookie(headers, name)?;
                    arms.iter().find(|(t, _)| t.split_value.as_bytes() == value)
                });
                match kept {
                    Some((target, _)) => (target, false),
                    None => {
                        let mut roll = rand::random_range(0..self.total_weight.max(1));
                        let target = arms
                            .iter()
                            .find(|(_, w)| {
                                let hit = roll < *w;
                                roll = roll.saturating_sub(*w);
                                hit
                            })
                            .map_or(&arms[0].0, |(t, _)| t);
                        (target, self.sticky_split.is_some())
                    }
                }
            }
        };
        chosen.0.served.inc();
        chosen
    }
}

/// Where a route sends a request: a pool and its backends' connections (same order).
pub(crate) struct Target {
    pub(crate) pool: Arc<Pool>,
    pub(crate) connections: Arc<PoolConnections>,
    /// The snapshot's request limits (here, so a request need not carry a copy).
    pub(crate) limits: crate::config::Limits,
    /// `switchyard_route_requests_total{route, pool}`.
    served: prometheus::IntCounter,
    /// The sticky split cookie's value for this pool, and the `Set-Cookie` that gives it.
    split_value: String,
    pub(crate) set_cookie: Option<HeaderValue>,
}

/// A route's mirror: where copies go, how many, and their counts.
pub(crate) struct Mirror {
    pub(crate) pool: Arc<Pool>,
    pub(crate) connections: Arc<PoolConnections>,
    /// Of the route's requests, 0 to 1.
    pub(crate) share: f64,
    pub(crate) max_body_bytes: u64,
    pub(crate) max_in_flight: usize,
    pub(crate) in_flight: AtomicUsize,
    pub(crate) counts: MirrorCounts,
}

/// `switchyard_mirror_requests_total{route, result}`.
pub(crate) struct MirrorCounts {
    pub(crate) sent: IntCounter,
    pub(crate) skipped_body: IntCounter,
    pub(crate) dropped: IntCounter,
    pub(crate) failed: IntCounter,
}

impl Mirror {
    /// Is this request one of the share to mirror?
    #[inline]
    pub(crate) fn sampled(&self) -> bool {
        self.share >= 1.0 || (self.share > 0.0 && rand::random::<f64>() < self.share)
    }
}

/// A sticky split cookie's value for `pool`: opaque and short, the same in every instance.
fn split_value(pool: &str) -> String {
    format!("{:016x}", twox_hash::XxHash3_64::oneshot(pool.as_bytes()))
}

/// A rate limit attached to a route, with the route's count of refusals.
pub(crate) struct RouteLimit {
    pub(crate) limit: Arc<RateLimit>,
    pub(crate) refused: prometheus::IntCounter,
}

/// What a snapshot has built before its routes: pools, their connections, rate limits (by name).
type Built<'a> = (
    &'a BTreeMap<String, Arc<Pool>>,
    &'a BTreeMap<String, Arc<PoolConnections>>,
    &'a BTreeMap<String, Arc<RateLimit>>,
);

/// The route `r` of `config`, over the pools and limits just built; `None` when none of its pools exists.
fn route_of(
    r: &crate::config::RouteSettings,
    config: &Config,
    (pools, upstreams, rate_limits): Built<'_>,
    metrics: &Metrics,
) -> Option<Route> {
    let label = r.label();
    let arms: Vec<(Arc<Target>, u32)> = r
        .split
        .iter()
        .filter_map(|(name, weight)| {
            let (pool, connections) = (pools.get(name)?, upstreams.get(name)?);
            let set_cookie = r.sticky_split.as_ref().and_then(|cookie| {
                HeaderValue::from_str(&format!(
                    "{cookie}={}; Path=/; HttpOnly; SameSite=Lax",
                    split_value(name)
                ))
                .ok()
            });
            let target = Target {
                pool: Arc::clone(pool),
                connections: Arc::clone(connections),
                limits: config.limits,
                served: metrics
                    .routes
                    .route_requests_total
                    .with_label_values(&[label.as_str(), name.as_str()]),
                split_value: split_value(name),
                set_cookie,
            };
            Some((Arc::new(target), *weight))
        })
        .collect();
    if arms.is_empty() {
        return None;
    }
    let limits = r
        .rate_limits
        .iter()
        .filter_map(|name| rate_limits.get(name))
        .map(|limit| RouteLimit {
            limit: Arc::clone(limit),
            refused: metrics
                .rate_limits
                .rate_limited_total
                .with_label_values(&[label.as_str(), limit.name.as_str()]),
        })
        .collect();
    let mirror = r.mirror.as_ref().and_then(|m| {
        let (pool, connections) = (pools.get(&m.pool)?, upstreams.get(&m.pool)?);
        let count = |result: &str| {
            metrics
                .routes
                .mirror_requests_total
                .with_label_values(&[label.as_str(), result])
        };
        Some(Arc::new(Mirror {
            pool: Arc::clone(pool),
            connections: Arc::clone(connections),
            share: m.percent / 100.0,
            max_body_bytes: m.max_body_bytes,
            max_in_flight: m.max_in_flight as usize,
            in_flight: AtomicUsize::new(0),
            counts: MirrorCounts {
                sent: count("sent"),
                skipped_body: count("skipped_body"),
                dropped: count("dropped"),
                failed: count("failed"),
            },
        }))
    });
    let route = Route {
        mirror,
        headers: r.headers.clone(),
        rate_limits: limits,
        total_weight: arms.iter().map(|(_, w)| *w).sum(),
        arms,
        sticky_split: r.sticky_split.clone(),
        label,
    };
    Some(route)
}

/// The rate limits of `config`: those of `previous` whose buckets may stay (same name, keys, scope and bound)
/// are kept, with the new rate and burst; the store too, when its settings are unchanged.
fn rate_limits(
    config: &Config,
    metrics: &Metrics,
    previous: Option<&Snapshot>,
) -> (BTreeMap<String, Arc<RateLimit>>, Option<Arc<Store>>) {
    let needed = config.rate_limits.values().any(|l| l.global);
    let store = config
        .rate_limit_store
        .as_ref()
        .filter(|_| needed)
        .map(|settings| {
            previous
                .and_then(|p| p.rate_limit_store.as_ref())
                .filter(|s| s.settings == *settings)
                .map_or_else(
                    || Store::start(settings, metrics.rate_limits.store_errors_total.clone()),
                    Arc::clone,
                )
        });
    let limits = config
        .rate_limits
        .iter()
        .map(|(name, settings)| {
            let kept = previous
                .and_then(|p| p.rate_limits.get(name))
                .filter(|l| l.keeps_buckets_for(settings, store.as_ref()));
            let limit = match kept {
                Some(l) => {
                    l.set_rate(settings.rate, settings.burst);
                    Arc::clone(l)
                }
                None => Arc::new(RateLimit::new(name, settings, store.clone())),
            };
            (name.clone(), limit)
        })
        .collect();
    (limits, store)
}

type Prefixes = Vec<(String, Arc<Route>)>;

#[derive(Default)]
pub(crate) struct RouteTable {
    by_host: Vec<(String, Prefixes)>,
    any_host: Prefixes,
}

impl RouteTable {
    fn add(&mut self, host: Option<&str>, prefix: &str, route: Arc<Route>) {
        let list = match host {
            None => &mut self.any_host,
            Some(h) => match self.by_host.iter().position(|(name, _)| name == h) {
                Some(i) => &mut self.by_host[i].1,
                None => {
                    self.by_host.push((h.to_owned(), Vec::new()));
                    let last = self.by_host.len() - 1;
                    &mut self.by_host[last].1
                }
            },
        };
        list.push((prefix.to_owned(), route));
    }

    /// Longest prefix first; among equal prefixes, most header conditions first, then file order (stable).
    fn finish(&mut self) {
        let key = |e: &(String, Arc<Route>)| {
            (
                std::cmp::Reverse(e.0.len()),
                std::cmp::Reverse(e.1.headers.len()),
            )
        };
        self.any_host.sort_by_key(key);
        for (_, list) in &mut self.by_host {
            list.sort_by_key(key);
        }
    }

    /// The route for a request to `host` (as sent: any case, maybe with a port), `path` and `headers`: the
    /// host's routes first, then the host-less ones; in each, the longest prefix whose header conditions all
    /// match.
    pub(crate) fn route(
        &self,
        host: Option<&str>,
        path: &str,
        headers: &HeaderMap,
    ) -> Option<&Arc<Route>> {
        if let Some(host) = host.map(normalize_host).filter(|h| !h.is_empty()) {
            let by_host = self
                .by_host
                .iter()
                .find(|(name, _)| name.eq_ignore_ascii_case(host))
                .and_then(|(_, list)| longest_prefix(list, path, headers));
            if by_host.is_some() {
                return by_host;
            }
        }
        longest_prefix(&self.any_host, path, headers)
    }
}

fn longest_prefix<'a>(
    list: &'a Prefixes,
    path: &str,
    headers: &HeaderMap,
) -> Option<&'a Arc<Route>> {
    list.iter()
        .find(|(prefix, route)| path.starts_with(prefix.as_str()) && route.matches(headers))
        .map(|(_, route)| route)
}

/// `API.example.com:8443` → `API.example.com`; `example.com.` → `example.com`.
pub(crate) fn normalize_host(host: &str) -> &str {
    let host = if host.starts_with('[') {
        host.find(']')
            .and_then(|end| host.get(..=end))
            .unwrap_or(host)
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
            _ => host,
        }
    };
    host.strip_suffix('.').unwrap_or(host)
}

#[cfg(test)]
mod tests {
    use super::normalize_host;

    #[test]
    fn host_normalization() {
        assert_eq!(normalize_host("a.example.com:8080"), "a.example.com");
        assert_eq!(normalize_host("a.example.com."), "a.example.com");
        assert_eq!(normalize_host("a.example.com"), "a.example.com");
        assert_eq!(normalize_host("[::1]:80"), "[::1]");
    }
}
