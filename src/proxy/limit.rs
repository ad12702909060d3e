//! A route's rate limits, checked before anything else is done for the request: the first limit to refuse
//! answers 429 with `Retry-After` and the IETF draft's `RateLimit-Policy` and `RateLimit` headers.

use std::net::IpAddr;

use http::header::{HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use tokio::time::Instant;

use crate::ratelimit::{Verdict, rate_limit_header};
use crate::router::Route;

static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// `RateLimit-Policy` and `RateLimit` values, for one limit or a list of them.
#[derive(Debug, Default)]
pub(super) struct Headers {
    policy: Option<HeaderValue>,
    state: Option<HeaderValue>,
}

impl Headers {
    pub(super) fn add_to(&self, headers: &mut HeaderMap) {
        if let (Some(policy), Some(state)) = (&self.policy, &self.state) {
            headers.insert(RATELIMIT_POLICY.clone(), policy.clone());
            headers.insert(RATELIMIT.clone(), state.clone());
        }
    }
}

/// A refusal: its `Retry-After` and the refusing limit's headers.
pub(super) struct Refusal {
    retry_after: u64,
    headers: Headers,
}

impl Refusal {
    pub(super) fn add_to(&self, headers: &mut HeaderMap) {
        headers.insert(RETRY_AFTER, HeaderValue::from(self.retry_after));
        self.headers.add_to(headers);
    }
}

/// Takes a token from each of the route's limits, in order. `Ok` carries the headers for the response when a
/// limit asks for them (`response_headers`); `Err` the first refusal (counted).
pub(super) fn check(
    route: &Route,
    headers: &HeaderMap,
    client: impl Fn() -> IpAddr,
    now: Instant,
) -> Result<Option<Box<Headers>>, Refusal> {
    let mut shown: Option<(String, String)> = None;
    for route_limit in &route.rate_limits {
        let limit = &route_limit.limit;
        match limit.check(headers, &client, &route.label, now) {
            Verdict::Allowed { remaining, reset } => {
                if limit.response_headers {
                    let (policy, state) = shown.get_or_insert_with(Default::default);
                    for (list, item) in [
                        (&mut *policy, limit.policy_header()),
                        (
                            &mut *state,
                            rate_limit_header(&limit.name, remaining, reset),
                        ),
                    ] {
                        if !list.is_empty() {
                            list.push_str(", ");
                        }
                        list.push_str(&item);
                    }
                }
            }
            Verdict::Refused { retry_after, reset } => {
                route_limit.refused.inc();
                return Err(Refusal {
                    retry_after,
                    headers: Headers {
                        policy: HeaderValue::from_str(&limit.policy_header()).ok(),
                        state: HeaderValue::from_str(&rate_limit_header(&limit.name, 0, reset))
                            .ok(),
                    },
                });
            }
        }
    }
    Ok(shown.map(|(policy, state)| {
        Box::new(Headers {
            policy: HeaderValue::from_str(&policy).ok(),
            state: HeaderValue::from_str(&state).ok(),
        })
    }))
}
