//! Request ids: the client's `x-request-id` when it is a sane token, else a fresh UUID v7.
//!
//! The id goes into the request's tracing span (so every log line of the request carries it,
//! in text and in JSON) and back to the client in the `x-request-id` response header.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{HeaderMap, HeaderName, HeaderValue};
use http_body::{Body, Frame, SizeHint};

/// The header the id travels in, both ways.
pub(super) static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// Where the upstream's own id goes, so the one the client sent or got is not lost.
pub(super) static X_UPSTREAM_REQUEST_ID: HeaderName =
    HeaderName::from_static("x-upstream-request-id");

/// The longest client id kept; longer ones are replaced (they would bloat every log line).
const MAX_LEN: usize = 128;

/// One request's id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct RequestId(String);

impl RequestId {
    /// The client's id when it is 1 to 128 characters of `A-Z a-z 0-9 - _ . : / + =` (what
    /// tracing systems and UUIDs use; nothing that could forge a log line or a JSON field),
    /// else a new one.
    pub(super) fn from_headers(headers: &HeaderMap) -> Self {
        headers
            .get(&X_REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .filter(|v| is_sane(v))
            .map(|v| RequestId(v.to_string()))
            .unwrap_or_else(Self::generate)
    }

    /// A UUID v7: time-ordered, with 74 random bits, unique across restarts and replicas.
    pub(super) fn generate() -> Self {
        RequestId(uuid::Uuid::now_v7().to_string())
    }

    /// The id as a header value.
    pub(super) fn header_value(&self) -> Option<HeaderValue> {
        HeaderValue::from_str(&self.0).ok()
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn is_sane(id: &str) -> bool {
    (1..=MAX_LEN).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:/+=".contains(&b))
}

pin_project_lite::pin_project! {
    /// A body polled inside a span: what layers log while the answer streams (a cut stream, a
    /// held-back failure) carries the request's id too.
    pub(super) struct InSpan<B> {
        #[pin]
        inner: B,
        span: tracing::Span,
    }
}

impl<B> InSpan<B> {
    pub(super) fn new(inner: B, span: tracing::Span) -> Self {
        InSpan { inner, span }
    }
}

impl<B: Body> Body for InSpan<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let _entered = this.span.enter();
        this.inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from(value: &str) -> RequestId {
        let mut headers = HeaderMap::new();
        headers.insert(&X_REQUEST_ID, HeaderValue::from_str(value).unwrap());
        RequestId::from_headers(&headers)
    }

    #[test]
    fn a_sane_client_id_is_kept() {
        assert_eq!(from("trace-01:abc/DEF+=").to_string(), "trace-01:abc/DEF+=");
    }

    #[test]
    fn odd_or_long_ids_are_replaced() {
        for bad in ["", "has space", "quote\"", "{\"a\":1}", &"x".repeat(129)] {
            let id = from(bad).to_string();
            assert_ne!(id, bad);
            assert!(uuid::Uuid::parse_str(&id).is_ok(), "{id}");
        }
    }

    #[test]
    fn generated_ids_differ() {
        let a = RequestId::generate();
        let b = RequestId::generate();
        assert_ne!(a, b);
        assert_eq!(
            uuid::Uuid::parse_str(&a.to_string())
                .unwrap()
                .get_version_num(),
            7
        );
    }
}
