//! `[rate_limits.NAME]`, `[rate_limit_store]`, and the limits routes name.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{Checker, FieldPath, model};
use crate::config::settings::*;

/// How long a sync with the store may take by default.
const DEFAULT_STORE_TIMEOUT: Duration = Duration::from_millis(50);

impl Checker<'_, '_> {
    pub(super) fn rate_limits(
        &mut self,
        file: &model::File,
    ) -> (
        BTreeMap<String, RateLimitSettings>,
        Option<RateLimitStoreSettings>,
    ) {
        let store = file
            .rate_limit_store
            .as_ref()
            .and_then(|s| self.rate_limit_store(s));
        let limits = file
            .rate_limits
            .iter()
            .map(|(name, l)| {
                let field = FieldPath::root().key("rate_limits").key(name);
                (name.clone(), self.rate_limit(field, l, store.is_some()))
            })
            .collect();
        (limits, store)
    }

    fn rate_limit(
        &mut self,
        field: FieldPath,
        l: &model::RateLimit,
        has_store: bool,
    ) -> RateLimitSettings {
        let key = match l.key.as_deref() {
            None | Some("client_ip") => RateLimitKey::ClientIp,
            Some("route") => RateLimitKey::Route,
            Some(text) => match text.strip_prefix("header:") {
                Some(name) => match http::HeaderName::from_bytes(name.as_bytes()) {
                    Ok(name) => RateLimitKey::Header(name),
                    Err(_) => {
                        self.err(
                            field.key("key"),
                            format!("{text:?}: {name:?} is not a header name"),
                        );
                        RateLimitKey::ClientIp
                    }
                },
                None => {
                    self.err(
                        field.key("key"),
                        format!(
                            "unknown rate limit key {text:?}; allowed values: \"client_ip\", \"header:NAME\", \"route\""
                        ),
                    );
                    RateLimitKey::ClientIp
                }
            },
        };
        if l.rate.is_none() {
            self.err(
                field.key("rate"),
                "missing: a rate limit needs rate (tokens per second, 1 or more)",
            );
        }
        let rate = self.int(field.key("rate"), l.rate, 1, 1, 10_000_000);
        let burst = self.int(field.key("burst"), l.burst, rate, 1, 10_000_000);
        let global = match l.scope.as_deref() {
            None | Some("instance") => false,
            Some("global") => {
                if !has_store {
                    self.err(
                        field.key("scope"),
                        "scope = \"global\" needs [rate_limit_store] redis = \"redis://HOST:PORT/DB\" (the store \
                         instances share the limit through)",
                    );
                }
                true
            }
            Some(other) => {
                self.err(
                    field.key("scope"),
                    format!("unknown scope {other:?}; allowed values: \"instance\", \"global\""),
                );
                false
            }
        };
        RateLimitSettings {
            key,
            rate,
            burst,
            global,
            max_keys: self.int(field.key("max_keys"), l.max_keys, 100_000, 1, 100_000_000),
            response_headers: l.response_headers.unwrap_or(false),
        }
    }

    fn rate_limit_store(&mut self, s: &model::RateLimitStore) -> Option<RateLimitStoreSettings> {
        let field = FieldPath::root().key("rate_limit_store");
        let Some(url) = s.redis.as_deref() else {
            self.err(
                field.key("redis"),
                "missing: the store's address, like \"redis://127.0.0.1:6379/0\"",
            );
            return None;
        };
        if let Err(e) = redis::IntoConnectionInfo::into_connection_info(url) {
            self.err(
                field.key("redis"),
                format!(
                    "{url:?} is not a Redis URL ({e}); write it like \"redis://127.0.0.1:6379/0\""
                ),
            );
            return None;
        }
        let timeout = self.duration(
            field.key("timeout"),
            s.timeout.as_deref(),
            DEFAULT_STORE_TIMEOUT,
        );
        Some(RateLimitStoreSettings {
            redis: url.to_owned(),
            timeout,
        })
    }

    /// A route's `rate_limits`, each naming a `[rate_limits.NAME]` section.
    pub(super) fn route_rate_limits(
        &mut self,
        field: FieldPath,
        names: Option<&Vec<String>>,
        file: &model::File,
    ) -> Vec<String> {
        let mut out = Vec::new();
        for (i, name) in names.into_iter().flatten().enumerate() {
            if !file.rate_limits.contains_key(name) {
                let defined: Vec<String> =
                    file.rate_limits.keys().map(|k| format!("{k:?}")).collect();
                self.err(
                    field.index(i),
                    format!(
                        "rate limit {name:?} is not defined; defined limits: {}",
                        if defined.is_empty() {
                            "none".to_owned()
                        } else {
                            defined.join(", ")
                        }
                    ),
                );
            } else if !out.contains(name) {
                out.push(name.clone());
            }
        }
        out
    }
}
