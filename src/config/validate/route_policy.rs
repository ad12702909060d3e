//! `[[routes]]`: each route's host and prefix, header conditions, pool or split, sticky split and mirror;
//! `[request_id]`.

use std::collections::{BTreeMap, HashSet};

use super::affinity::is_cookie_name;
use super::is_host_name;
use super::{Checker, FieldPath, model};
use crate::config::settings::*;

impl Checker<'_, '_> {
    /// `[[routes]]`.
    pub(super) fn routes(&mut self, file: &model::File) -> Vec<RouteSettings> {
        let root = FieldPath::root();
        let mut routes = Vec::new();
        let mut seen_routes = HashSet::new();
        for (i, r) in file.routes.iter().enumerate() {
            let field = root.key("routes").index(i);
            let split = self.route_pools(&field, r, file);
            let host = match r.host.as_deref() {
                None => None,
                Some(h) if is_host_name(h) => Some(h.to_ascii_lowercase()),
                Some(h) => {
                    self.err(
                        field.key("host"),
                        format!("{h:?} is not a host name; write the name only, like \"api.example.com\" (no scheme, port or path)"),
                    );
                    None
                }
            };
            let path_prefix = r.path_prefix.clone().unwrap_or_else(|| "/".to_owned());
            if !path_prefix.starts_with('/') {
                self.err(
                    field.key("path_prefix"),
                    format!("{path_prefix:?} must start with \"/\""),
                );
            }
            let headers = self.route_headers(field.key("headers"), r.headers.as_ref());
            let mut conditions: Vec<String> = headers
                .iter()
                .map(|c| format!("{}={:?}", c.name, c.value))
                .collect();
            conditions.sort();
            if !seen_routes.insert((host.clone(), path_prefix.clone(), conditions)) {
                self.err(
                    field.clone(),
                    format!(
                        "another route already has host {} and path_prefix {path_prefix:?}{}",
                        host.as_deref()
                            .map_or("(any)".to_owned(), |h| format!("{h:?}")),
                        if headers.is_empty() {
                            ""
                        } else {
                            ", with the same headers"
                        }
                    ),
                );
            }
            let rate_limits =
                self.route_rate_limits(field.key("rate_limits"), r.rate_limits.as_ref(), file);
            let sticky_split = self.sticky_split(&field, r);
            let mirror = self.mirror(field.key("mirror"), r.mirror.as_ref(), file);
            routes.push(RouteSettings {
                mirror,
                host,
                path_prefix,
                headers,
                split,
                sticky_split,
                rate_limits,
            });
        }
        routes
    }

    /// A route's `pool`, or its `split` (pools that exist, weights 1 to 1000): (pool, weight) pairs.
    pub(super) fn route_pools(
        &mut self,
        field: &FieldPath,
        r: &model::Route,
        file: &model::File,
    ) -> Vec<(String, u32)> {
        let exists = |this: &mut Self, field: FieldPath, pool: &str| {
            if !file.pools.contains_key(pool) {
                let defined: Vec<String> = file.pools.keys().map(|k| format!("{k:?}")).collect();
                this.err(
                    field,
                    format!(
                        "pool {pool:?} is not defined; defined pools: {}",
                        if defined.is_empty() {
                            "none".to_owned()
                        } else {
                            defined.join(", ")
                        }
                    ),
                );
            }
        };
        match (&r.pool, &r.split) {
            (Some(pool), None) => {
                exists(self, field.key("pool"), pool);
                vec![(pool.clone(), 1)]
            }
            (None, Some(arms)) if !arms.is_empty() => arms
                .iter()
                .enumerate()
                .map(|(i, arm)| {
                    let arm_field = field.key("split").index(i);
                    exists(self, arm_field.key("pool"), &arm.pool);
                    let weight = self.int(arm_field.key("weight"), arm.weight, 1, 1, MAX_WEIGHT);
                    (arm.pool.clone(), weight)
                })
                .collect(),
            (Some(_), Some(_)) => {
                self.err(
                    field.key("split"),
                    "a route has either pool or split, not both",
                );
                Vec::new()
            }
            (None, _) => {
                self.err(
                    field.key("pool"),
                    "missing: a route needs pool = \"NAME\" (or split = [{ pool = \"NAME\", weight = N }, ...])",
                );
                Vec::new()
            }
        }
    }

    /// `mirror = { pool, percent, max_body_bytes, max_in_flight }`.
    pub(super) fn mirror(
        &mut self,
        field: FieldPath,
        m: Option<&model::Mirror>,
        file: &model::File,
    ) -> Option<MirrorSettings> {
        let m = m?;
        if !file.pools.contains_key(&m.pool) {
            self.err(
                field.key("pool"),
                format!("pool {:?} is not defined", m.pool),
            );
        }
        let percent = match m.percent.map(model::Number::as_f64) {
            None => 100.0,
            Some(p) if (0.0..=100.0).contains(&p) => p,
            Some(p) => {
                self.err(
                    field.key("percent"),
                    format!("{p} is out of range; allowed values: 0 to 100"),
                );
                100.0
            }
        };
        let max_body_bytes = self.int(
            field.key("max_body_bytes"),
            m.max_body_bytes,
            65536,
            0,
            16 << 20,
        );
        let max_in_flight = self.int(field.key("max_in_flight"), m.max_in_flight, 64, 1, 100_000);
        Some(MirrorSettings {
            pool: m.pool.clone(),
            percent,
            max_body_bytes: u64::from(max_body_bytes),
            max_in_flight,
        })
    }

    /// `headers = { "name" = "value" | "*" }`.
    pub(super) fn route_headers(
        &mut self,
        field: FieldPath,
        headers: Option<&BTreeMap<String, String>>,
    ) -> Vec<HeaderCondition> {
        let mut out = Vec::new();
        for (name, value) in headers.into_iter().flatten() {
            let Ok(header) = http::HeaderName::from_bytes(name.as_bytes()) else {
                self.err(field.key(name), format!("{name:?} is not a header name"));
                continue;
            };
            if value.is_empty() {
                self.err(
                    field.key(name),
                    "empty; give the exact value to match, or \"*\" for any value",
                );
                continue;
            }
            out.push(HeaderCondition {
                name: header,
                value: (value != "*").then(|| value.clone()),
            });
        }
        out
    }

    /// `sticky_split = "cookie:NAME"`, only with a split.
    pub(super) fn sticky_split(&mut self, field: &FieldPath, r: &model::Route) -> Option<String> {
        let text = r.sticky_split.as_deref()?;
        if r.split.is_none() {
            self.err(
                field.key("sticky_split"),
                "sticky_split needs a split (the pools a client is kept on)",
            );
            return None;
        }
        match text.strip_prefix("cookie:") {
            Some(name) if is_cookie_name(name) => Some(name.to_owned()),
            _ => {
                self.err(
                    field.key("sticky_split"),
                    format!("{text:?}: write it as \"cookie:NAME\" with a cookie name (letters, digits, -_.)"),
                );
                None
            }
        }
    }

    pub(super) fn request_id(&mut self, file: &model::File) -> Option<RequestIdSettings> {
        let r = file.request_id.as_ref()?;
        let field = FieldPath::root().key("request_id");
        let header = match r.header.as_deref() {
            None => http::HeaderName::from_static("x-request-id"),
            Some(text) => match http::HeaderName::from_bytes(text.as_bytes()) {
                Ok(name) => name,
                Err(_) => {
                    self.err(
                        field.key("header"),
                        format!("{text:?} is not a header name"),
                    );
                    http::HeaderName::from_static("x-request-id")
                }
            },
        };
        let trust_incoming = match r.trust_incoming.as_deref() {
            None | Some("trusted_proxies") => TrustIncoming::TrustedProxies,
            Some("always") => TrustIncoming::Always,
            Some("never") => TrustIncoming::Never,
            Some(other) => {
                self.err(
                    field.key("trust_incoming"),
                    format!(
                        "unknown mode {other:?}; allowed values: \"trusted_proxies\", \"always\", \"never\""
                    ),
                );
                TrustIncoming::TrustedProxies
            }
        };
        let generate_traceparent = match r.traceparent.as_deref() {
            None | Some("pass") => false,
            Some("generate") => true,
            Some(other) => {
                self.err(
                    field.key("traceparent"),
                    format!("unknown mode {other:?}; allowed values: \"pass\", \"generate\""),
                );
                false
            }
        };
        Some(RequestIdSettings {
            header,
            trust_incoming,
            generate_traceparent,
        })
    }
}
