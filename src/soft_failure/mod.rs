//! Failures inside HTTP 200 streams, found before the client sees them (seed 004).
//!
//! The Responses API often answers `200 OK` and reports the failure inside the stream:
//! `response.failed` with `insufficient_quota`, an `error` event, a quota-shaped
//! `response.incomplete`. Status-code middleware never sees those, so nothing rotates or
//! retries. [`SoftFailureDetectLayer`] reads `text/event-stream` bodies incrementally
//! ([`crate::sse`]) and:
//!
//! - **holds back** lifecycle events (`response.created`, `response.in_progress`, rate-limit
//!   events) until the first content event, within bounds on events, bytes and time. A
//!   failure that arrives while held is classified ([`crate::classify`]) and the response is
//!   returned marked with a [`SoftFailure`] whose `before_content` is `true`: an outer layer
//!   may retry elsewhere and the client never learns. If nothing retries, the client gets the
//!   original bytes unchanged;
//! - after content has gone out, passes failures through as they came, reports them to the
//!   request's [`CredentialLease`] so the pool cools that credential for later requests, and
//!   counts them;
//! - **ends the body after a terminal event** (`response.completed`, `response.failed`,
//!   `response.incomplete`, or a top-level `error` event) even if the upstream keeps the
//!   connection open: the Codex CLI otherwise waits its 300 s idle timeout;
//! - marks a stream that ends before content without a terminal event (retryable);
//! - answers a `200 text/event-stream` that holds no Responses event (before it ends, or by
//!   the hold-back's byte or event bound) with `502 invalid_upstream_stream` in the API's
//!   envelope, marked `Transient` before content, instead of passing on bytes no client can
//!   parse;
//! - classifies non-streaming answers too: HTTP errors (from a bounded prefix of the body,
//!   read for at most [`SoftFailureConfig::peek_timeout`]: an error body that stalls is
//!   answered with what arrived) and 2xx JSON objects whose `status` is `failed`.
//!
//! Memory per stream is bounded by the hold-back limits and the SSE line limit, whatever the
//! upstream sends.
//!
//! ```
//! use bytes::Bytes;
//! use http_body_util::{BodyExt, Full};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! use tower_responses::body::{ReplayBody, ResponseBody};
//! use tower_responses::classify::FailureClass;
//! use tower_responses::soft_failure::{SoftFailure, SoftFailureDetectLayer};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! // An upstream that accepts the request, then reports quota exhaustion inside the stream.
//! let upstream = service_fn(|_req: http::Request<ReplayBody>| async {
//!     let sse = "event: response.created\ndata: {\"type\":\"response.created\",\"response\":{\"id\":\"resp_1\"}}\n\n\
//!                event: response.failed\ndata: {\"type\":\"response.failed\",\"response\":{\"id\":\"resp_1\",\"status\":\"failed\",\"error\":{\"code\":\"insufficient_quota\",\"message\":\"You exceeded your current quota\"}}}\n\n";
//!     let body: ResponseBody = Full::new(Bytes::from(sse)).map_err(|e| match e {}).boxed_unsync();
//!     Ok::<_, tower_responses::error::BoxError>(
//!         http::Response::builder().header("content-type", "text/event-stream").body(body).unwrap(),
//!     )
//! });
//! let svc = ServiceBuilder::new().layer(SoftFailureDetectLayer::new()).service(upstream);
//! let res = svc.oneshot(http::Request::new(ReplayBody::default())).await.unwrap();
//! let marked = res.extensions().get::<SoftFailure>().expect("marked");
//! assert_eq!(marked.failure.class, FailureClass::QuotaExhausted);
//! assert!(marked.before_content);
//! // Nothing outer retried: the client still gets the upstream's bytes as they were.
//! let bytes = res.into_body().collect().await.unwrap().to_bytes();
//! assert!(bytes.starts_with(b"event: response.created"));
//! # }
//! ```

mod config;
pub(crate) mod gate;
mod observe;
mod service;
mod watch;

pub use config::SoftFailureConfig;
pub(crate) use observe::terminal_usage;
pub use observe::{EventsObserved, StreamObserver, StreamObservers, TerminalEvent, TerminalUsage};
pub use service::{SoftFailureDetect, SoftFailureDetectLayer};

#[cfg(doc)]
use crate::credentials::CredentialLease;
pub use crate::marks::SoftFailure;
