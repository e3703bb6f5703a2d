//! [`HeadTimeoutLayer`]: a bound on the time one upstream attempt takes to answer with its
//! response head.
//!
//! It sits below rotation and above the connection layer, so it bounds each attempt and
//! nothing else: a `stream:false` fold, a local compaction summary or a retry on another
//! credential each get their own time (folds and summaries are bounded by idle timeouts
//! instead). On expiry the attempt fails with an [`AttemptError`] in [`Phase::Sent`]: the
//! upstream had the request and may be working on it, so the policy must not send it again
//! elsewhere.
//!
//! ```
//! use std::time::Duration;
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! use tower_responses::marks::{AttemptError, Phase};
//! use tower_responses::stack::{HeadTimeoutElapsed, HeadTimeoutLayer};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let silent = service_fn(|_req: http::Request<()>| async {
//!     std::future::pending::<Result<http::Response<()>, tower_responses::error::BoxError>>().await
//! });
//! let svc = ServiceBuilder::new()
//!     .layer(HeadTimeoutLayer::new(Duration::from_millis(10)))
//!     .service(silent);
//! let err = svc.oneshot(http::Request::new(())).await.unwrap_err();
//! let attempt = AttemptError::find(&*err).expect("typed");
//! assert_eq!(attempt.phase, Phase::Sent);
//! assert!(HeadTimeoutElapsed::find(&*err).is_some());
//! # }
//! ```

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::Sleep;
use tower_layer::Layer;
use tower_service::Service;

use crate::classify::Failure;
use crate::error::BoxError;
use crate::marks::{AttemptError, Phase};

/// The response head did not come within the bound: the source of the [`AttemptError`]
/// [`HeadTimeout`] fails with, so the proxy can answer `504 upstream_timeout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadTimeoutElapsed(pub Duration);

impl HeadTimeoutElapsed {
    /// Finds it in `err` or its chain of sources.
    pub fn find(err: &(dyn std::error::Error + 'static)) -> Option<HeadTimeoutElapsed> {
        let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
        while let Some(e) = cur {
            if let Some(t) = e.downcast_ref::<HeadTimeoutElapsed>() {
                return Some(*t);
            }
            cur = e.source();
        }
        None
    }
}

impl std::fmt::Display for HeadTimeoutElapsed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "no response head within {:?}", self.0)
    }
}

impl std::error::Error for HeadTimeoutElapsed {}

/// Applies [`HeadTimeout`] to a service. See the [module docs](crate::stack).
#[derive(Debug, Clone, Copy)]
pub struct HeadTimeoutLayer {
    timeout: Duration,
}

impl HeadTimeoutLayer {
    /// Each attempt gets `timeout` to answer with its head.
    pub fn new(timeout: Duration) -> Self {
        HeadTimeoutLayer { timeout }
    }
}

impl<S> Layer<S> for HeadTimeoutLayer {
    type Service = HeadTimeout<S>;

    fn layer(&self, inner: S) -> Self::Service {
        HeadTimeout {
            inner,
            timeout: self.timeout,
        }
    }
}

/// Fails an attempt whose response head takes longer than its bound. See the
/// [module docs](crate::stack).
#[derive(Debug, Clone)]
pub struct HeadTimeout<S> {
    inner: S,
    timeout: Duration,
}

impl<S, R> Service<R> for HeadTimeout<S>
where
    S: Service<R>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = HeadTimeoutFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: R) -> Self::Future {
        HeadTimeoutFuture {
            inner: self.inner.call(req),
            sleep: tokio::time::sleep(self.timeout),
            timeout: self.timeout,
        }
    }
}

pin_project! {
    /// The future of [`HeadTimeout`].
    pub struct HeadTimeoutFuture<F> {
        #[pin]
        inner: F,
        #[pin]
        sleep: Sleep,
        timeout: Duration,
    }
}

impl<F, T, E> Future for HeadTimeoutFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(out) = this.inner.poll(cx) {
            return Poll::Ready(out.map_err(Into::into));
        }
        if this.sleep.poll(cx).is_ready() {
            let elapsed = HeadTimeoutElapsed(*this.timeout);
            tracing::info!(
                timeout_ms = this.timeout.as_millis() as u64,
                "no response head in time; attempt abandoned"
            );
            let err =
                AttemptError::new(Phase::Sent, Failure::transport(false, elapsed.to_string()))
                    .with_source(elapsed);
            return Poll::Ready(Err(err.into()));
        }
        Poll::Pending
    }
}
