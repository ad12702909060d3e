//! The routing table: host and longest path prefix to a pool, and the snapshot the data path reads.
//!
//! A route with a host beats a host-less one when both match; among routes for the same host the longest
//! `path_prefix` wins. Prefixes match the raw path (as NGINX's and Envoy's prefix routes do): `/api` matches
//! `/api/v1` and `/apix`; write `/api/` to match whole segments only.

use std::collections::BTreeMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use http::{HeaderMap, HeaderValue};
use prometheus::IntCounter;

use crate::balance::pool::Pool;
use crate::config::HeaderCondition;
use crate::config::{Config, Limits};
use crate::observe::access_log::{AccessLog, AccessLogSettings};
use crate::observe::metrics::{BackendMetrics, Metrics, NONE, StatusCounts};
use crate::observe::status::PoolReading;
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

    /// Every pool's counters for the status page, read through the label handles its backends hold (the
    /// proxy's own answers as backend `none`).
    pub(crate) fn status_readings(&self) -> Vec<PoolReading<'_>> {
        self.pools
            .values()
            .map(|pool| {
                let mut backends: Vec<(&str, &Arc<StatusCounts>)> = pool
                    .backends
                    .iter()
                    .map(|b| (b.address.as_str(), &b.metrics.status))
                    .collect();
                backends.push((NONE, &pool.local_metrics.status));
                PoolReading {
                    pool: &pool.name,
                    backends,
                }
            })
            .collect()
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

/// Hosts hash with xxh3 and no random seed: the keys come from the config, so a request cannot choose
/// collisions.
type HostMap =
    std::collections::HashMap<Box<str>, Prefixes<Arc<Route>>, BuildHasherDefault<HostHasher>>;

#[derive(Default)]
struct HostHasher(u64);

impl Hasher for HostHasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0 = self.0.rotate_left(17) ^ twox_hash::XxHash3_64::oneshot(bytes);
    }

    /// The terminator `str` hashes after its bytes: the length of a key is in its xxh3 already.
    fn write_u8(&mut self, byte: u8) {
        self.0 ^= u64::from(byte);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// The routes: a prefix tree per host (keys lowercased) and one for host-less routes. A lookup costs one hash of
/// the host and one walk down the path's bytes, however many routes there are.
#[derive(Default)]
pub(crate) struct RouteTable {
    by_host: HostMap,
    any_host: Prefixes<Arc<Route>>,
}

impl RouteTable {
    fn add(&mut self, host: Option<&str>, prefix: &str, route: Arc<Route>) {
        let tree = match host {
            None => &mut self.any_host,
            Some(h) => self
                .by_host
                .entry(h.to_ascii_lowercase().into())
                .or_default(),
        };
        tree.insert(prefix.as_bytes(), route);
    }

    /// Among equal prefixes: most header conditions first, then file order (stable).
    fn finish(&mut self) {
        let conditions = |r: &Arc<Route>| r.headers.len();
        self.any_host.finish(conditions);
        for tree in self.by_host.values_mut() {
            tree.finish(conditions);
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
        if !self.by_host.is_empty()
            && let Some(host) = host.map(normalize_host).filter(|h| !h.is_empty())
        {
            let by_host = with_lowercase(host, |h| self.by_host.get(h))
                .and_then(|tree| tree.longest(path.as_bytes(), |r| r.matches(headers)));
            if by_host.is_some() {
                return by_host;
            }
        }
        self.any_host
            .longest(path.as_bytes(), |r| r.matches(headers))
    }
}

/// Calls `f` with `host` in lowercase, copied (to the stack, up to 256 bytes) only when it has capitals: most
/// hosts have none.
fn with_lowercase<T>(host: &str, f: impl FnOnce(&str) -> Option<T>) -> Option<T> {
    if !host.bytes().any(|b| b.is_ascii_uppercase()) {
        return f(host);
    }
    let mut buf = [0u8; 256];
    let Some(bytes) = buf.get_mut(..host.len()) else {
        return f(&host.to_ascii_lowercase());
    };
    bytes.copy_from_slice(host.as_bytes());
    bytes.make_ascii_lowercase();
    f(std::str::from_utf8(bytes).ok()?)
}

/// Path prefixes as a radix tree over their bytes: each node holds the bytes of its edge and the routes whose
/// prefix ends there, so the longest matching prefix is found in one walk down the path.
struct Prefixes<T> {
    /// `nodes[0]` is the root (the empty prefix) once anything was inserted.
    nodes: Vec<PrefixNode<T>>,
}

impl<T> Default for Prefixes<T> {
    fn default() -> Self {
        Self { nodes: Vec::new() }
    }
}

struct PrefixNode<T> {
    edge: Box<[u8]>,
    /// The first byte of each child's edge, and the child (same order).
    first_bytes: Vec<u8>,
    children: Vec<u32>,
    routes: Vec<T>,
}

impl<T> PrefixNode<T> {
    fn new(edge: &[u8]) -> Self {
        Self {
            edge: edge.into(),
            first_bytes: Vec::new(),
            children: Vec::new(),
            routes: Vec::new(),
        }
    }

    fn child(&self, first: u8) -> Option<usize> {
        if self.first_bytes.len() <= 16 {
            self.first_bytes.iter().position(|&b| b == first)
        } else {
            memchr::memchr(first, &self.first_bytes)
        }
    }

    fn add_child(&mut self, first: u8, child: u32) {
        self.first_bytes.push(first);
        self.children.push(child);
    }
}

impl<T> Prefixes<T> {
    fn insert(&mut self, prefix: &[u8], route: T) {
        if self.nodes.is_empty() {
            self.nodes.push(PrefixNode::new(b""));
        }
        let mut at = 0;
        let mut rest = prefix;
        while let Some(&first) = rest.first() {
            let Some(slot) = self.nodes[at].child(first) else {
                let leaf = self.push(PrefixNode::new(rest));
                self.nodes[at].add_child(first, leaf);
                at = leaf as usize;
                break;
            };
            let child = self.nodes[at].children[slot] as usize;
            let edge = &self.nodes[child].edge;
            let common = edge.iter().zip(rest).take_while(|(a, b)| a == b).count();
            if common < edge.len() {
                let mut middle = PrefixNode::new(&edge[..common]);
                let tail: Box<[u8]> = edge[common..].into();
                middle.add_child(tail[0], child as u32);
                self.nodes[child].edge = tail;
                let middle = self.push(middle);
                self.nodes[at].children[slot] = middle;
                at = middle as usize;
            } else {
                at = child;
            }
            rest = &rest[common..];
        }
        self.nodes[at].routes.push(route);
    }

    fn push(&mut self, node: PrefixNode<T>) -> u32 {
        self.nodes.push(node);
        u32::try_from(self.nodes.len() - 1).unwrap_or(u32::MAX)
    }

    /// Orders each prefix's routes by `conditions`, most first, keeping insertion order among equals.
    fn finish(&mut self, conditions: impl Fn(&T) -> usize) {
        for node in &mut self.nodes {
            node.routes
                .sort_by_key(|r| std::cmp::Reverse(conditions(r)));
        }
    }

    /// The first route that `matches` at the longest prefix of `path` that has one.
    fn longest(&self, path: &[u8], matches: impl Fn(&T) -> bool) -> Option<&T> {
        let mut node = self.nodes.first()?;
        let mut rest = path;
        let mut best = None;
        loop {
            if let Some(route) = node.routes.iter().find(|r| matches(r)) {
                best = Some(route);
            }
            let Some(&first) = rest.first() else {
                return best;
            };
            let Some(slot) = node.child(first) else {
                return best;
            };
            let child = &self.nodes[node.children[slot] as usize];
            let edge = &*child.edge;
            // Edges are short: a byte loop beats a call to memcmp.
            if rest.len() < edge.len() || !edge.iter().zip(rest).skip(1).all(|(a, b)| a == b) {
                return best;
            }
            rest = &rest[edge.len()..];
            node = child;
        }
    }
}

/// `API.example.com:8443` → `API.example.com`; `example.com.` → `example.com`.
pub(crate) fn normalize_host(host: &str) -> &str {
    let host = if host.starts_with('[') {
        host.find(']')
            .and_then(|end| host.get(..=end))
            .unwrap_or(host)
    } else if !host.ends_with(|c: char| c.is_ascii_digit() || c == ':') {
        host
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
    use super::{Prefixes, normalize_host, with_lowercase};
    use proptest::prelude::*;

    /// What the tree must answer: of the prefixes that `path` starts with, the longest one with an entry that
    /// `matches`; among its entries, most conditions first, then insertion order.
    fn by_scan<'a>(
        entries: &'a [(String, usize, bool)],
        path: &str,
        matches: impl Fn(&(String, usize, bool)) -> bool,
    ) -> Option<&'a (String, usize, bool)> {
        let mut sorted: Vec<&(String, usize, bool)> = entries.iter().collect();
        sorted.sort_by_key(|e| (std::cmp::Reverse(e.0.len()), std::cmp::Reverse(e.1)));
        sorted
            .into_iter()
            .find(|e| path.starts_with(e.0.as_str()) && matches(e))
    }

    proptest! {
        #[test]
        fn tree_finds_what_a_scan_finds(
            entries in proptest::collection::vec(("[/ab]{0,6}", 0usize..3, any::<bool>()), 0..24),
            paths in proptest::collection::vec("[/abc]{0,8}", 1..16),
        ) {
            let mut tree = Prefixes::default();
            for (i, e) in entries.iter().enumerate() {
                tree.insert(e.0.as_bytes(), (i, e));
            }
            tree.finish(|(_, e)| e.1);
            for path in &paths {
                let found = tree.longest(path.as_bytes(), |(_, e)| e.2).map(|(_, e)| *e);
                let want = by_scan(&entries, path, |e| e.2);
                prop_assert_eq!(found.map(|e| (&e.0, e.1)), want.map(|e| (&e.0, e.1)));
                if let (Some(a), Some(b)) = (found, want) {
                    prop_assert!(std::ptr::eq(a, b), "same prefix and conditions, but not the first in file order");
                }
            }
        }
    }

    #[test]
    fn split_edges_keep_their_routes() {
        let mut tree = Prefixes::default();
        for (i, p) in ["/api/v1", "/api", "/apiary", "/", "/api/v2/x"]
            .iter()
            .enumerate()
        {
            tree.insert(p.as_bytes(), i);
        }
        tree.finish(|_| 0);
        let at = |p: &str| tree.longest(p.as_bytes(), |_| true).copied();
        assert_eq!(at("/api/v1/users"), Some(0));
        assert_eq!(at("/api/v2"), Some(1));
        assert_eq!(at("/apiar"), Some(1));
        assert_eq!(at("/apiary/bees"), Some(2));
        assert_eq!(at("/other"), Some(3));
        assert_eq!(at("/api/v2/x"), Some(4));
        assert_eq!(at(""), None);
    }

    #[test]
    fn hosts_are_compared_in_lowercase() {
        assert_eq!(
            with_lowercase("Api.Example.COM", |h| Some(h.to_owned())).as_deref(),
            Some("api.example.com")
        );
        assert_eq!(
            with_lowercase("api.example.com", |h| Some(h.to_owned())).as_deref(),
            Some("api.example.com")
        );
        assert_eq!(
            with_lowercase(&"A".repeat(300), |h| Some(h.bytes().all(|b| b == b'a'))),
            Some(true)
        );
    }

    #[test]
    fn host_normalization() {
        assert_eq!(normalize_host("a.example.com:8080"), "a.example.com");
        assert_eq!(normalize_host("a.example.com."), "a.example.com");
        assert_eq!(normalize_host("a.example.com"), "a.example.com");
        assert_eq!(normalize_host("[::1]:80"), "[::1]");
        assert_eq!(normalize_host("a.example.com:"), "a.example.com");
        assert_eq!(normalize_host("10.0.0.1"), "10.0.0.1");
        assert_eq!(normalize_host("10.0.0.1:80"), "10.0.0.1");
    }
}

#[cfg(test)]
mod status_tests {
    use super::*;

    #[test]
    fn the_status_reading_of_a_pools_own_answers_goes_on_across_reloads() {
        let text = r#"
            [[listeners]]
            address = "127.0.0.1:0"
            [[routes]]
            path_prefix = "/"
            pool = "web"
            [pools.web]
            backends = [{ address = "127.0.0.1:1" }]
        "#;
        let config = crate::config::parse(text, "test.toml").expect("config");
        let metrics = Metrics::new();
        let first = Snapshot::build(&config, &metrics, None, None, Vec::new());
        first.pools["web"]
            .local_metrics
            .count_response(http::StatusCode::SERVICE_UNAVAILABLE);
        let second = Snapshot::build(&config, &metrics, Some(&first), None, Vec::new());
        let readings = second.status_readings();
        let web = readings.iter().find(|r| r.pool == "web").expect("web");
        let (_, own) = web.backends.iter().find(|(b, _)| *b == NONE).expect("none");
        let counted =
            |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!((counted(&own.answered), counted(&own.answered_5xx)), (1, 1));
        assert!(web.backends.iter().any(|(b, _)| *b == "127.0.0.1:1"));
    }
}
