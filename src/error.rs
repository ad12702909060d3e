//! What can go wrong with a proxied request, and the one place that maps it to a status code and a reason.

use http::StatusCode;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
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
    #[error("could not connect to the backend")]
    Connect(#[source] std::io::Error),
    #[error("the backend did not answer in time")]
    Timeout,
    #[error("the backend's answer was not valid HTTP")]
    Protocol(#[source] hyper::Error),
    #[error("upgrade requested to a pool that speaks HTTP/2")]
    UpgradeUnsupported,
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::NoRoute => StatusCode::NOT_FOUND,
            Self::BadRequest => StatusCode::BAD_REQUEST,
            Self::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::NoBackend => StatusCode::SERVICE_UNAVAILABLE,
            Self::Connect(_) | Self::Protocol(_) | Self::UpgradeUnsupported => {
                StatusCode::BAD_GATEWAY
            }
            Self::Timeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The plain-text body the client gets.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NoRoute => "switchyard: no route for this host and path\n",
            Self::BadRequest => "switchyard: malformed request\n",
            Self::BodyTooLarge => "switchyard: request body too large\n",
            Self::MethodNotAllowed => {
                "switchyard: CONNECT is not supported; switchyard is not a forward proxy\n"
            }
            Self::NoBackend => "switchyard: no backend available\n",
            Self::Connect(_) => "switchyard: could not connect to the backend\n",
            Self::Timeout => "switchyard: the backend did not answer in time\n",
            Self::Protocol(_) => "switchyard: the backend's answer was not valid HTTP\n",
            Self::UpgradeUnsupported => {
                "switchyard: this route's backends speak HTTP/2, which cannot carry an upgrade (WebSocket)\n"
            }
        }
    }

    /// The `kind` label of `switchyard_upstream_errors_total`, for errors that involve a backend.
    pub fn upstream_kind(&self) -> Option<&'static str> {
        match self {
            Self::Connect(_) => Some("connect"),
            Self::Timeout => Some("timeout"),
            Self::Protocol(_) => Some("protocol"),
            Self::NoRoute
            | Self::BadRequest
            | Self::BodyTooLarge
            | Self::MethodNotAllowed
            | Self::NoBackend
            | Self::UpgradeUnsupported => None,
        }
    }
}
