//! The sections that keep a key or a client on one backend: `hash` (for `consistent_hash`) and `sticky`.

use super::{Checker, FieldPath, model};
use crate::config::settings::*;

/// The shortest `secret_file` key accepted: 256 bits, HMAC-SHA256's own size.
const MIN_SECRET_BYTES: usize = 32;
/// The largest table: 8 MB of lookup, enough for thousands of backends.
const MAX_TABLE_SIZE: u32 = 2_000_003;

impl Checker<'_, '_> {
    pub(super) fn hash(
        &mut self,
        field: FieldPath,
        h: Option<&model::Hash>,
        algorithm: Algorithm,
    ) -> HashSettings {
        let d = HashSettings::default();
        let Some(h) = h else { return d };
        if algorithm != Algorithm::ConsistentHash {
            self.err(
                field.clone(),
                format!(
                    "[hash] is used only by algorithm = \"consistent_hash\", and this pool's algorithm is {:?}; \
                     set the algorithm or remove the section",
                    algorithm.as_str()
                ),
            );
        }
        let key = match h.key.as_deref() {
            None => d.key,
            Some(text) => self.hash_key(field.key("key"), text).unwrap_or(d.key),
        };
        let balance_factor = match h.balance_factor.map(model::Number::as_f64) {
            None => d.balance_factor,
            Some(f) if f == 0.0 || (1.0..=100.0).contains(&f) => f,
            Some(f) => {
                self.err(
                    field.key("balance_factor"),
                    format!(
                        "{f} is out of range; allowed values: 0 (loads not bounded) or 1.0 to 100 (a backend takes \
                         at most factor × the average load; below 1 the pool could not hold its load)"
                    ),
                );
                d.balance_factor
            }
        };
        let table_size = self.int(
            field.key("table_size"),
            h.table_size,
            d.table_size,
            2,
            MAX_TABLE_SIZE,
        );
        if !is_prime(table_size) {
            let (below, above) = neighbour_primes(table_size);
            self.err(
                field.key("table_size"),
                format!(
                    "{table_size} is not a prime; the table needs a prime size (nearby: {below} or {above}; \
                     the default is 65537)"
                ),
            );
        }
        HashSettings {
            key,
            balance_factor,
            table_size: if is_prime(table_size) {
                table_size
            } else {
                d.table_size
            },
        }
    }

    fn hash_key(&mut self, field: FieldPath, text: &str) -> Option<HashKey> {
        let key = match text.split_once(':') {
            None => match text {
                "client_ip" => Some(HashKey::ClientIp),
                "path" => Some(HashKey::Path),
                "path_and_query" => Some(HashKey::PathAndQuery),
                _ => None,
            },
            Some(("header", name)) => match http::HeaderName::from_bytes(name.as_bytes()) {
                Ok(name) => Some(HashKey::Header(name)),
                Err(_) => {
                    self.err(field, format!("{text:?}: {name:?} is not a header name"));
                    return None;
                }
            },
            Some(("cookie", name)) => {
                if !is_cookie_name(name) {
                    self.err(field, format!("{text:?}: {name:?} is not a cookie name"));
                    return None;
                }
                Some(HashKey::Cookie(name.to_owned()))
            }
            Some(_) => None,
        };
        if key.is_none() {
            self.err(
                field,
                format!(
                    "unknown hash key {text:?}; allowed values: {}",
                    HashKey::ALLOWED
                ),
            );
        }
        key
    }

    pub(super) fn sticky(
        &mut self,
        field: FieldPath,
        pool: &str,
        s: &model::Sticky,
        folder: &std::path::Path,
    ) -> StickySettings {
        // By default each pool has its own cookie: pools sharing one would keep replacing each other's.
        let fallback = format!("sy_{pool}");
        let cookie = match s.cookie.as_deref() {
            None if is_cookie_name(&fallback) => fallback,
            None => {
                self.err(
                    field.key("cookie"),
                    format!(
                        "the default cookie name {fallback:?} is not a cookie name; set cookie"
                    ),
                );
                fallback
            }
            Some(name) if is_cookie_name(name) => name.to_owned(),
            Some(name) => {
                self.err(
                    field.key("cookie"),
                    format!(
                        "{name:?} is not a cookie name (letters, digits and !#$%&'*+-.^_`|~ only)"
                    ),
                );
                fallback
            }
        };
        let max_age = self.duration_in(
            field.key("max_age"),
            s.max_age.as_deref(),
            std::time::Duration::ZERO,
            true,
        );
        let same_site = match s.same_site.as_deref() {
            None | Some("lax") => SameSite::Lax,
            Some("strict") => SameSite::Strict,
            Some("none") => SameSite::None,
            Some(other) => {
                self.err(
                    field.key("same_site"),
                    format!(
                        "unknown same_site {other:?}; allowed values: \"lax\", \"strict\", \"none\""
                    ),
                );
                SameSite::Lax
            }
        };
        if same_site == SameSite::None && s.secure != Some(true) {
            self.err(
                field.key("same_site"),
                "same_site = \"none\" needs secure = true: browsers drop a SameSite=None cookie that is not Secure",
            );
        }
        let secret = s
            .secret_file
            .as_deref()
            .and_then(|path| self.secret(field.key("secret_file"), path, folder));
        StickySettings {
            cookie,
            max_age: (!max_age.is_zero()).then_some(max_age),
            secure: s.secure,
            http_only: s.http_only.unwrap_or(true),
            same_site,
            secret,
        }
    }

    /// The HMAC key in `path` (relative to the config file), without a final newline.
    fn secret(
        &mut self,
        field: FieldPath,
        path: &str,
        folder: &std::path::Path,
    ) -> Option<Vec<u8>> {
        match std::fs::read(folder.join(path)) {
            Ok(mut bytes) => {
                while bytes.last().is_some_and(|b| matches!(b, b'\n' | b'\r')) {
                    bytes.pop();
                }
                if bytes.len() < MIN_SECRET_BYTES {
                    self.err(
                        field,
                        format!(
                            "{path:?} holds {} bytes; a sticky secret needs at least {MIN_SECRET_BYTES} (make one \
                             with: head -c 32 /dev/urandom | base64 > {path})",
                            bytes.len()
                        ),
                    );
                    return None;
                }
                Some(bytes)
            }
            Err(e) => {
                self.err(field, format!("cannot read {path:?}: {e}"));
                None
            }
        }
    }
}

/// A cookie name as RFC 6265 allows it (an HTTP token).
pub(crate) fn is_cookie_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    let n = u64::from(n);
    (2..).take_while(|d| d * d <= n).all(|d| n % d != 0)
}

/// The primes just below and above `n` (for the error message).
fn neighbour_primes(n: u32) -> (u32, u32) {
    let below = (2..n).rev().find(|&p| is_prime(p)).unwrap_or(2);
    let above = (n + 1..).find(|&p| is_prime(p)).unwrap_or(u32::MAX);
    (below, above)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn primes() {
        assert!(is_prime(65537) && is_prime(2) && is_prime(2_000_003));
        assert!(!is_prime(65536) && !is_prime(1) && !is_prime(9));
        assert_eq!(neighbour_primes(65536), (65521, 65537));
    }
}
