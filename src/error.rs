//! What can go wrong with a proxied request, and the one place that maps it to a status code and a reason.

use http::StatusCode;

use crate::upstream::request_body::ClientFault;

#[derive(Debug, thiserror::Error)]
pub(crate) enum ProxyError {
    #[error("no route for this host and path")]
    NoRoute,
    #[error("malformed request")]
    BadRequest,
    #[error("request body too large")]
    BodyTooLarge,
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("no backend available")]
    NoBackend,
    #[error("every backend is at max_active_requests and the queue is full")]
    QueueFull,
    #[error("no backend came under max_active_requests within the queue's timeout")]
    QueueTimeout,
    #[error("a rate limit of the route refused the request")]
    RateLimited,
    #[error("could not connect to the backend")]
    Connect(#[source] std::io::Error),
    #[error("the backend did not answer in time")]
    Timeout,
    #[error("{}", protocol_text(.0))]
    Protocol(#[source] hyper::Error),
    #[error("upgrade requested to a pool that speaks HTTP/2")]
    UpgradeUnsupported,
    #[error("missing, repeated or malformed Host header")]
    BadHost,
    #[error(":authority and Host name different hosts")]
    AuthorityMismatch,
    #[error("a transfer coding other than chunked")]
    UnsupportedTransferCoding,
    #[error("the backend's response head is larger than max_response_header_bytes")]
    ResponseHeadTooLarge,
    /// The client broke its request body; nothing the backend did.
    #[error(transparent)]
    Client(ClientFault),
}

impl ProxyError {
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            Self::NoRoute => StatusCode::NOT_FOUND,
            Self::BadRequest | Self::BadHost | Self::AuthorityMismatch => StatusCode::BAD_REQUEST,
            Self::UnsupportedTransferCoding => StatusCode::NOT_IMPLEMENTED,
            Self::ResponseHeadTooLarge => StatusCode::BAD_GATEWAY,
            Self::Client(ClientFault::Malformed | ClientFault::Aborted) => StatusCode::BAD_REQUEST,
            Self::Client(ClientFault::Stalled) => StatusCode::REQUEST_TIMEOUT,
            Self::Client(ClientFault::TooLarge) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Self::NoBackend | Self::QueueFull | Self::QueueTimeout => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::Connect(_) | Self::Protocol(_) | Self::UpgradeUnsupported => {
                StatusCode::BAD_GATEWAY
            }
            Self::Timeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The plain-text body the client gets.
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            Self::NoRoute => "switchyard: no route for this host and path\n",
            Self::BadRequest => "switchyard: malformed request\n",
            Self::BodyTooLarge => "switchyard: request body too large\n",
            Self::MethodNotAllowed => {
                "switchyard: CONNECT is not supported; switchyard is not a forward proxy\n"
            }
            Self::NoBackend => "switchyard: no backend available\n",
            Self::QueueFull => {
                "switchyard: queue full (every backend is at max_active_requests and queue.max_waiting requests wait)\n"
            }
            Self::QueueTimeout => {
                "switchyard: queue timeout (no backend came under max_active_requests within queue.timeout)\n"
            }
            Self::RateLimited => {
                "switchyard: rate limited; try again after the seconds in Retry-After\n"
            }
            Self::Connect(_) => "switchyard: could not connect to the backend\n",
            Self::Timeout => "switchyard: the backend did not answer in time\n",
            Self::Protocol(e) if is_malformed(e) => {
                "switchyard: the backend's answer was not valid HTTP\n"
            }
            Self::Protocol(_) => {
                "switchyard: the backend closed the connection before it answered\n"
            }
            Self::UpgradeUnsupported => {
                "switchyard: this route's backends speak HTTP/2, which cannot carry an upgrade (WebSocket)\n"
            }
            Self::BadHost => "switchyard: missing, repeated or malformed Host header\n",
            Self::AuthorityMismatch => "switchyard: :authority and Host name different hosts\n",
            Self::UnsupportedTransferCoding => {
                "switchyard: only the chunked transfer coding is supported\n"
            }
            Self::ResponseHeadTooLarge => {
                "switchyard: the backend's response head is larger than this pool's max_response_header_bytes\n"
            }
            Self::Client(ClientFault::Malformed) => "switchyard: malformed request body\n",
            Self::Client(ClientFault::Aborted) => {
                "switchyard: the request body ended before its declared end\n"
            }
            Self::Client(ClientFault::Stalled) => {
                "switchyard: the request body stopped arriving (limits.body_read_timeout)\n"
            }
            Self::Client(ClientFault::TooLarge) => "switchyard: request body too large\n",
        }
    }

    /// The `reason` label of `switchyard_rejected_requests_total` for a request refused because of the client.
    pub(crate) fn rejection(&self) -> Option<&'static str> {
        match self {
            Self::BadRequest => Some("malformed"),
            Self::BadHost | Self::AuthorityMismatch => Some("bad_host"),
            Self::UnsupportedTransferCoding => Some("unsupported_transfer_coding"),
            Self::BodyTooLarge => Some("body_too_large"),
            Self::MethodNotAllowed => Some("connect_method"),
            Self::Client(fault) => Some(fault.reason()),
            _ => None,
        }
    }

    /// Why the proxy answered itself, for the access log's `reason`.
    pub(crate) fn code(&self) -> &'static str {
        match self {
            Self::NoRoute => "no_route",
            Self::BadRequest => "malformed",
            Self::BodyTooLarge => "body_too_large",
            Self::MethodNotAllowed => "connect_method",
            Self::NoBackend => "no_backend",
            Self::QueueFull => "queue_full",
            Self::QueueTimeout => "queue_timeout",
            Self::RateLimited => "rate_limited",
            Self::Connect(_) => "connect",
            Self::Timeout => "timeout",
            Self::Protocol(_) => "protocol",
            Self::UpgradeUnsupported => "upgrade_unsupported",
            Self::BadHost | Self::AuthorityMismatch => "bad_host",
            Self::UnsupportedTransferCoding => "unsupported_transfer_coding",
            Self::ResponseHeadTooLarge => "response_head_too_large",
            Self::Client(fault) => fault.reason(),
        }
    }

    /// May a replayable request go to another backend after this failure? Only for what a backend did that
    /// another may not do: it did not connect, did not answer in time, broke the exchange.
    pub(crate) fn may_retry(&self) -> bool {
        matches!(
            self,
            Self::Connect(_) | Self::Timeout | Self::Protocol(_) | Self::ResponseHeadTooLarge
        )
    }

    /// Was the request at fault (so its connection should close after the answer)?
    pub(crate) fn closes_connection(&self) -> bool {
        matches!(
            self,
            Self::BadRequest
                | Self::BadHost
                | Self::AuthorityMismatch
                | Self::UnsupportedTransferCoding
                | Self::BodyTooLarge
                | Self::Client(_)
        )
    }

    /// The `kind` label of `switchyard_upstream_errors_total`, for errors that involve a backend.
    pub(crate) fn upstream_kind(&self) -> Option<&'static str> {
        match self {
            Self::Connect(_) => Some("connect"),
            Self::Timeout => Some("timeout"),
            Self::Protocol(_) | Self::ResponseHeadTooLarge => Some("protocol"),
            Self::NoRoute
            | Self::BadRequest
            | Self::BodyTooLarge
            | Self::MethodNotAllowed
            | Self::NoBackend
            | Self::QueueFull
            | Self::QueueTimeout
            | Self::RateLimited
            | Self::UpgradeUnsupported
            | Self::BadHost
            | Self::AuthorityMismatch
            | Self::UnsupportedTransferCoding
            | Self::Client(_) => None,
        }
    }
}

/// Did the backend send bytes that are not HTTP (rather than close or reset the connection mid-exchange)?
fn is_malformed(e: &hyper::Error) -> bool {
    e.is_parse() || e.is_parse_status() || e.is_parse_too_large()
}

fn protocol_text(e: &hyper::Error) -> &'static str {
    if is_malformed(e) {
        "the backend's answer was not valid HTTP"
    } else {
        "the backend closed the connection before it answered"
    }
}
