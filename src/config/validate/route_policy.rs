//! `[request_id]`.

use super::{Checker, FieldPath, model};
use crate::config::settings::*;

impl Checker<'_, '_> {
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
