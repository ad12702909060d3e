//! The body of every response the proxy sends: an upstream's body streamed through, or a short local answer.
//!
//! An upstream body carries the request's [`Completion`]: the backend's in-flight count and the request's
//! duration end when the body ends (or the client goes away), not when the headers pass.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::Instant;

use crate::backend::InFlight;

pub enum ProxyBody {
    Upstream { body: Incoming, done: Completion },
    Local(Option<Bytes>),
}

impl ProxyBody {
    pub fn local(text: &'static str) -> Self {
        Self::Local(Some(Bytes::from_static(text.as_bytes())))
    }

    pub fn owned(bytes: Vec<u8>) -> Self {
        Self::Local(Some(Bytes::from(bytes)))
    }
}

/// Ends a forwarded request's bookkeeping when dropped.
pub struct Completion {
    pub started: Instant,
    pub in_flight: InFlight,
}

impl Drop for Completion {
    fn drop(&mut self) {
        let elapsed = self.started.elapsed().as_secs_f64();
        self.in_flight.backend().metrics.duration.observe(elapsed);
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            Self::Upstream { body, .. } => Pin::new(body).poll_frame(cx),
            Self::Local(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Upstream { body, .. } => body.is_end_stream(),
            Self::Local(bytes) => bytes.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Upstream { body, .. } => body.size_hint(),
            Self::Local(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
        }
    }
}
