//! Stale pooled connections never reach the client (seed 001, PROTOCOL.md section 7).
//!
//! Providers and their load balancers drop idle keep-alive connections after ~30 s. A pooled
//! connection reused after that fails the next request: the server reads it and closes (FIN)
//! or resets (RST), or a middlebox answers a bare `400`/`404`/`408` that is not the API's. The
//! Codex CLI then shows "Reconnecting... 1/5" and retries into rate limits.
//!
//! [`FreshConnectionLayer`] is a [`tower::Layer`] for the **bottom of the stack**: it wraps
//! the client service itself, because it needs what only the client knows, per attempt. It
//! puts a [`ConnectionReport`] on each request, and the client service reports which
//! connection carried it ([`ConnectionInfo`]): whether that connection came from the pool and
//! how long it idled (from the [`ConnTag`] a [`TaggingConnector`] gives each connection), how
//! to retire it (hyper-util's [`Connected::poison`]). A retry carries [`NewConnection`], and
//! the client service sends it on a connection of its own. It takes `Request<ReplayBody>` and
//! gives `Response<ResponseBody>` / [`BoxError`]: the stack's types, which every layer above
//! shares (axum or hyper bodies convert once, at the edge, with
//! [`Forward`](crate::stack::Forward) or [`read_request`](crate::body::read_request)).
//!
//! Two client services speak the protocol: [`ClientService`] over a hyper-util client
//! ([`build`](FreshConnectionLayer::build) makes one from an [`UpstreamClientBuilder`], with
//! tagged connections and a second, unpooled client for retries), and, with the `reqwest`
//! feature, `ReqwestService` over a user's `reqwest::Client` (what it can and cannot tell is
//! in its docs: it cannot tag or retire connections, so stale connections are judged from
//! what it can observe, and connection ages are not enforced).
//!
//! **Prevention.** [`UpstreamClientBuilder`] lets idle connections go after 20 s; on top of
//! that a connection older than [`max_age`](FreshConnectionLayer::max_age) (default 5 min) is
//! poisoned after its response instead of going back to the pool, so no connection lives long
//! enough to meet a provider's connection-lifetime limit. Idle connections a server closed
//! cleanly are noticed by hyper-util and simply not reused.
//!
//! **Recovery**, at most once per request:
//! - the request was never sent (connect error, or canceled before it was written):
//!   [`RetryReason::NotSent`];
//! - a reused connection failed before any response head (incomplete message, reset, broken
//!   pipe, EOF): [`RetryReason::BrokenConnection`];
//! - a reused connection that had idled at least
//!   [`stale_after_idle`](FreshConnectionLayer::stale_after_idle) (default 1 s) answered a
//!   status in [`stale_statuses`](FreshConnectionLayer::stale_statuses) (default 400, 404,
//!   408) with a body that is not the API's JSON error envelope (`{"error":..}` or
//!   `{"detail":..}`, judged from at most [`peek_limit`](FreshConnectionLayer::peek_limit)
//!   bytes): [`RetryReason::StaleAnswer`].
//!
//! Nothing else is retried: a real API error, a fresh connection's failure, anything after
//! response bytes reached the client (this layer never retries once it returned a response).
//! The failed connection is retired first. The retry asks for a [`NewConnection`]:
//! [`ClientService`] sends it through a second client on the same connector with pooling
//! disabled (`pool_max_idle_per_host(0)`), so it always opens a new connection: retrying on
//! the pooled client could hand out another connection that idled just as long. That
//! connection closes after its response; later requests use the pool again.
//!
//! The retry is invisible to the client and visible to operators: the response carries a
//! [`FreshRetry`] extension, an `info` tracing event is emitted, and
//! `tr_fresh_retries_total{reason}` counts it (connections retired by age count in
//! `tr_fresh_connections_aged_out_total`). Nothing is reported to a credential lease: a stale
//! connection is never the credential's fault.
//!
//! ```
//! use std::time::Duration;
//! use http_body_util::BodyExt;
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//! use tower::ServiceExt;
//! use tower_responses::body::ReplayBody;
//! use tower_responses::connect::UpstreamClientBuilder;
//! use tower_responses::fresh::{FreshConnectionLayer, FreshRetry, RetryReason};
//! use tower_responses::metrics::Metrics;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! // An upstream that answers the first request on a connection and closes on the second,
//! // the way a provider treats a connection it already forgot.
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
//! let url = format!("http://{}/v1/responses", listener.local_addr().unwrap());
//! tokio::spawn(async move {
//!     loop {
//!         let (mut sock, _) = listener.accept().await.unwrap();
//!         tokio::spawn(async move {
//!             let mut buf = vec![0u8; 4096];
//!             let _ = sock.read(&mut buf).await;
//!             let _ = sock.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
//!             let _ = sock.read(&mut buf).await;
//!         });
//!     }
//! });
//!
//! let metrics = Metrics::new();
//! let client = FreshConnectionLayer::new()
//!     .metrics(metrics.clone())
//!     .build(&UpstreamClientBuilder::new());
//! let get = || http::Request::get(&url).body(ReplayBody::default()).unwrap();
//!
//! let first = client.clone().oneshot(get()).await.unwrap();
//! first.into_body().collect().await.unwrap();
//! // Let hyper-util put the connection back into its pool.
//! tokio::time::sleep(Duration::from_millis(200)).await;
//!
//! let second = client.clone().oneshot(get()).await.expect("retried on a fresh connection");
//! assert_eq!(second.status(), 200);
//! let retry = second.extensions().get::<FreshRetry>().expect("retried");
//! assert_eq!(retry.reason, RetryReason::BrokenConnection);
//! assert_eq!(metrics.get("tr_fresh_retries_total", &[("reason", "broken_connection")]), Some(1.0));
//! assert_eq!(&second.into_body().collect().await.unwrap().to_bytes()[..], b"ok");
//! # }
//! ```
//!
//! [`ConnectionReport`]: crate::connect::ConnectionReport
//! [`ConnectionInfo`]: crate::connect::ConnectionInfo
//! [`NewConnection`]: crate::connect::NewConnection
//! [`TaggingConnector`]: crate::connect::TaggingConnector
//! [`ClientService`]: crate::connect::ClientService
//! [`UpstreamClientBuilder`]: crate::connect::UpstreamClientBuilder
//! [`Connected::poison`]: hyper_util::client::legacy::connect::Connected::poison
//! [`ConnTag`]: crate::connect::ConnTag
//! [`BoxError`]: crate::error::BoxError

mod judge;
mod peek;
mod service;

pub use service::FreshConnection;

use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::Connect;
use tower_layer::Layer;

use crate::body::ReplayBody;
use crate::connect::{ClientService, UpstreamClientBuilder, UpstreamConnector};
use crate::metrics::Metrics;

/// Why a request was sent again on a fresh connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RetryReason {
    /// The request never left: the connection could not be opened, or the request was
    /// canceled before it was written.
    NotSent,
    /// A reused connection broke before any response head arrived (FIN, RST, broken pipe).
    BrokenConnection,
    /// A reused connection that had idled answered a bare error status that is not the API's
    /// JSON envelope: a middlebox speaking for a connection the provider already dropped.
    StaleAnswer,
}

impl RetryReason {
    /// The label used in metrics and logs: `not_sent`, `broken_connection`, `stale_answer`.
    pub fn as_str(self) -> &'static str {
        match self {
            RetryReason::NotSent => "not_sent",
            RetryReason::BrokenConnection => "broken_connection",
            RetryReason::StaleAnswer => "stale_answer",
        }
    }
}

/// Response extension set when the response comes from a retry on a fresh connection: what
/// went wrong with the first attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FreshRetry {
    /// Why the first attempt was dropped.
    pub reason: RetryReason,
    /// The [`ConnTag`](crate::connect::ConnTag) id of the connection that failed; `None` when
    /// no connection was opened or the connector does not tag connections.
    pub conn_id: Option<u64>,
    /// How long that connection had idled in the pool before the failed attempt.
    pub idle: Option<Duration>,
    /// The status of the stale answer, for [`RetryReason::StaleAnswer`].
    pub status: Option<StatusCode>,
}

/// Layer for [`FreshConnection`], the stale-connection-proof bottom of the stack.
///
/// It wraps a client service that reports its connections (see the [module docs](self));
/// [`build`](Self::build) makes the whole bottom from an [`UpstreamClientBuilder`], and
/// [`service`](Self::service) from your own hyper-util client and the connector it was
/// built on.
#[derive(Debug, Clone)]
pub struct FreshConnectionLayer {
    config: Config,
}

#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) max_age: Duration,
    pub(crate) stale_after_idle: Duration,
    pub(crate) stale_statuses: Vec<StatusCode>,
    pub(crate) peek_limit: usize,
    pub(crate) peek_timeout: Duration,
    pub(crate) unsent_window: Duration,
    pub(crate) metrics: Option<Metrics>,
}

impl Default for FreshConnectionLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl FreshConnectionLayer {
    /// Defaults: connections retire after 5 min; a reused connection that idled 1 s or more
    /// and answers a non-API `400`, `404` or `408` is stale; up to 4 KiB of such a body is
    /// read (for at most 5 s) to tell.
    pub fn new() -> Self {
        FreshConnectionLayer {
            config: Config {
                max_age: Duration::from_secs(5 * 60),
                // Provider idle limits start at a few seconds (Node's keep-alive default is
                // 5 s); 1 s stays below all of them. A false positive costs one extra request,
                // and only for a body that is not the API's own error.
                stale_after_idle: Duration::from_secs(1),
                stale_statuses: vec![
                    StatusCode::BAD_REQUEST,
                    StatusCode::NOT_FOUND,
                    StatusCode::REQUEST_TIMEOUT,
                ],
                peek_limit: 4 * 1024,
                peek_timeout: Duration::from_secs(5),
                // A stale pooled connection's RST or FIN comes back within a round trip of
                // the write; an upstream that read the request for longer than this may be
                // generating, and a second copy would be paid twice.
                unsent_window: Duration::from_millis(250),
                metrics: None,
            },
        }
    }

    /// Connections older than this are poisoned after their response instead of going back
    /// to the pool.
    pub fn max_age(mut self, age: Duration) -> Self {
        self.config.max_age = age;
        self
    }

    /// How long a reused connection must have idled before a non-API error status from it is
    /// taken for a stale connection's.
    pub fn stale_after_idle(mut self, idle: Duration) -> Self {
        self.config.stale_after_idle = idle;
        self
    }

    /// The statuses a stale connection's middlebox answers with.
    pub fn stale_statuses(mut self, statuses: impl IntoIterator<Item = StatusCode>) -> Self {
        self.config.stale_statuses = statuses.into_iter().collect();
        self
    }

    /// How many body bytes of a suspect answer are read to tell the API's JSON error from a
    /// middlebox's page.
    pub fn peek_limit(mut self, bytes: usize) -> Self {
        self.config.peek_limit = bytes;
        self
    }

    /// How long reading that prefix may take; an answer that stalls is passed through.
    pub fn peek_timeout(mut self, timeout: Duration) -> Self {
        self.config.peek_timeout = timeout;
        self
    }

    /// How soon after the request's last write a reused connection must break for the
    /// request to count as never worked on (and be retried on a fresh connection). Default
    /// 250 ms; a later break may have run the request, so it is not sent again.
    pub fn unsent_window(mut self, window: Duration) -> Self {
        self.config.unsent_window = window;
        self
    }

    /// Reports retries and retired connections into `metrics`.
    pub fn metrics(mut self, metrics: Metrics) -> Self {
        self.config.metrics = Some(metrics);
        self
    }

    /// The configured maximum connection age.
    pub fn configured_max_age(&self) -> Duration {
        self.config.max_age
    }

    /// Builds the pooled client and the retry client from `builder`, on one tagged connector
    /// (connection ids stay unique across both), and wraps them.
    pub fn build(
        &self,
        builder: &UpstreamClientBuilder,
    ) -> FreshConnection<ClientService<UpstreamConnector>> {
        self.layer(builder.service())
    }

    /// Wraps your own pooled client; `connector` (the one `pooled` was built on) opens the
    /// retry connections. Without [`TaggingConnector`](crate::connect::TaggingConnector) in
    /// the connector nothing is known to be reused, so only unsent requests are retried.
    pub fn service<C>(
        &self,
        pooled: Client<C, ReplayBody>,
        connector: C,
    ) -> FreshConnection<ClientService<C>>
    where
        C: Connect + Clone + Send + Sync + 'static,
    {
        self.layer(ClientService::with_connector(pooled, connector))
    }
}

impl<S> Layer<S> for FreshConnectionLayer {
    type Service = FreshConnection<S>;

    fn layer(&self, inner: S) -> FreshConnection<S> {
        FreshConnection::new(inner, Arc::new(self.config.clone()))
    }
}
