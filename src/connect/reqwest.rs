//! A `reqwest::Client` as the client service at the bottom of the stack.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_core::Stream;
use http::{Request, Response};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::{ConnectionInfo, ConnectionReport, NewConnection};
use crate::body::{ReplayBody, ResponseBody};
use crate::classify::Failure;
use crate::error::BoxError;
use crate::marks::{AttemptError, Phase};

/// A `reqwest::Client` (your proxies, TLS roots, timeouts) as the innermost service of the
/// stack: `Request<ReplayBody>` in, `Response<ResponseBody>` out, the body streamed as it
/// arrives, errors boxed [`AttemptError`]s (a connect error, or a request hyper handed back
/// unwritten, is [`Phase::Unsent`]; any other [`Phase::Sent`]) with reqwest's error as their
/// source. reqwest adds its client's default headers (`accept: */*` unless you change them)
/// where the request has none, and decodes nothing (the crate enables none of reqwest's
/// decompression features).
///
/// ```
/// use tower::ServiceExt;
/// use tower_responses::body::ReplayBody;
/// use tower_responses::connect::ReqwestService;
/// use tower_responses::stack::ResponsesStack;
/// use tower_responses::testing::MockUpstream;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let upstream = MockUpstream::start().await.unwrap();
/// let client = ReqwestService::from_builder(|| {
///     reqwest::Client::builder().pool_idle_timeout(std::time::Duration::from_secs(20))
/// })
/// .unwrap();
/// let stack = ResponsesStack::new().reqwest(client);
/// let req = http::Request::post(format!("{}/responses", upstream.base_url()))
///     .header("content-type", "application/json")
///     .body(ReplayBody::new(r#"{"model":"gpt-5.5","stream":true,"input":"hi"}"#))
///     .unwrap();
/// assert_eq!(stack.oneshot(req).await.unwrap().status(), 200);
/// # }
/// ```
///
/// # What reqwest can and cannot tell
///
/// reqwest does not say which pooled connection served a request, nor let anyone retire one,
/// so [`FreshConnectionLayer`](crate::fresh::FreshConnectionLayer) above it judges from what
/// this service observes instead (its [`ConnectionReport`]):
///
/// - **reused:** built with [`from_builder`](Self::from_builder), it counts the connections
///   the client opens (a connector layer). A request during which none was opened rode a
///   connection that sat in the pool: reused. When another request opened one meanwhile it
///   cannot tell, and reports the connection as not reused, so a stale connection met while
///   connections open concurrently fails as a [`Phase::Sent`] error instead of being retried.
///   Built with [`new`](Self::new) from a finished client, nothing is known to be reused:
///   only unsent requests are retried.
/// - **idle:** the time since any request on the client last moved (started, or finished its
///   body), which is at most the real idle time of the connection: a stale answer can be
///   missed when other traffic kept the client busy, never invented.
/// - **written:** when the request was handed to reqwest, which is no later than its write.
/// - **retired:** not possible. Connections older than
///   [`max_age`](crate::fresh::FreshConnectionLayer::max_age) stay in reqwest's pool; keep
///   reqwest's `pool_idle_timeout` below your provider's idle limit (20 s is safe; reqwest's
///   default is 90 s).
/// - **new connection:** a request asking for a [`NewConnection`] (the stale retry) goes
///   through a second client from the same builder function with pooling off; with
///   [`new`](Self::new) it goes through your client.
#[derive(Debug, Clone)]
pub struct ReqwestService {
    pooled: ::reqwest::Client,
    unpooled: Option<::reqwest::Client>,
    watch: Option<Arc<Watch>>,
}

impl ReqwestService {
    /// Wraps a finished client; nothing is known about its connections (see the type docs).
    pub fn new(client: ::reqwest::Client) -> Self {
        ReqwestService {
            pooled: client,
            unpooled: None,
            watch: None,
        }
    }

    /// Builds the client from `make()` with a connector layer that counts connections, and a
    /// second client from `make()` with pooling off for requests asking for a
    /// [`NewConnection`]. `make` is called twice because `reqwest::ClientBuilder` cannot be
    /// cloned; give it the same settings both times.
    pub fn from_builder(
        make: impl Fn() -> ::reqwest::ClientBuilder,
    ) -> Result<Self, ::reqwest::Error> {
        let watch = Arc::new(Watch::new());
        let pooled = make()
            .connector_layer(CountConnects(watch.clone()))
            .build()?;
        let unpooled = make().pool_max_idle_per_host(0).build()?;
        Ok(ReqwestService {
            pooled,
            unpooled: Some(unpooled),
            watch: Some(watch),
        })
    }

    /// The pooled client.
    pub fn client(&self) -> &::reqwest::Client {
        &self.pooled
    }

    /// How many connections the pooled client has opened, when it was built with
    /// [`from_builder`](Self::from_builder).
    pub fn connections_opened(&self) -> Option<u64> {
        self.watch
            .as_ref()
            .map(|w| w.connects.load(Ordering::Relaxed))
    }
}

/// What this service sees of the pooled client's connections.
#[derive(Debug)]
struct Watch {
    base: Instant,
    /// Connections the pooled client has started to open.
    connects: AtomicU64,
    /// When a request last started or finished its body, as nanoseconds since `base`.
    last_active_ns: AtomicU64,
}

impl Watch {
    fn new() -> Self {
        Watch {
            base: Instant::now(),
            connects: AtomicU64::new(0),
            last_active_ns: AtomicU64::new(0),
        }
    }

    fn now_ns(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Marks activity now and returns how long the client had been quiet before it.
    fn touch(&self) -> Duration {
        let now = self.now_ns();
        let before = self.last_active_ns.fetch_max(now, Ordering::AcqRel);
        Duration::from_nanos(now.saturating_sub(before))
    }
}

/// reqwest's connector layer that counts connection attempts.
#[derive(Debug, Clone)]
struct CountConnects(Arc<Watch>);

impl<S> Layer<S> for CountConnects {
    type Service = Counted<S>;

    fn layer(&self, inner: S) -> Counted<S> {
        Counted {
            inner,
            watch: self.0.clone(),
        }
    }
}

#[derive(Debug, Clone)]
struct Counted<S> {
    inner: S,
    watch: Arc<Watch>,
}

impl<S: Service<R>, R> Service<R> for Counted<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: R) -> S::Future {
        self.watch.connects.fetch_add(1, Ordering::AcqRel);
        self.inner.call(req)
    }
}

impl Service<Request<ReplayBody>> for ReqwestService {
    type Response = Response<ResponseBody>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<ResponseBody>, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // reqwest's client queues internally and is always ready.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<ReplayBody>) -> Self::Future {
        let report = req.extensions().get::<ConnectionReport>().cloned();
        let fresh = req.extensions().get::<NewConnection>().is_some();
        let (client, watch) = match (&self.unpooled, fresh) {
            (Some(unpooled), true) => (unpooled.clone(), None),
            _ => (self.pooled.clone(), self.watch.clone()),
        };
        let unpooled = fresh && self.unpooled.is_some();
        Box::pin(async move {
            let req = req.map(|body| ::reqwest::Body::from(body.bytes().clone()));
            let req = ::reqwest::Request::try_from(req).map_err(attempt_error)?;
            let connects_before = watch.as_ref().map(|w| w.connects.load(Ordering::Acquire));
            let idle = watch.as_ref().map(|w| w.touch());
            let sent_at = Instant::now();
            let result = client.execute(req).await;
            if let Some(report) = report {
                let mut info = ConnectionInfo::new().written_at(sent_at);
                if unpooled {
                    info = info.reused(false);
                }
                if let (Some(w), Some(before), Some(idle)) = (&watch, connects_before, idle) {
                    let opened_meanwhile = w.connects.load(Ordering::Acquire) != before;
                    info = info.reused(!opened_meanwhile).idle_before_use(idle);
                }
                report.set(info);
            }
            let res = result.map_err(attempt_error)?;
            Ok(into_response(res, watch))
        })
    }
}

fn into_response(
    mut res: ::reqwest::Response,
    watch: Option<Arc<Watch>>,
) -> Response<ResponseBody> {
    let mut out = Response::new(());
    *out.status_mut() = res.status();
    *out.version_mut() = res.version();
    *out.headers_mut() = std::mem::take(res.headers_mut());
    *out.extensions_mut() = std::mem::take(res.extensions_mut());
    let body = Streamed {
        stream: res.bytes_stream(),
        _active: Activity(watch),
    };
    out.map(|()| body.boxed_unsync())
}

/// reqwest's error as an [`AttemptError`] with the phase the request reached.
fn attempt_error(err: ::reqwest::Error) -> BoxError {
    let canceled = std::iter::successors(Some(&err as &(dyn std::error::Error + 'static)), |e| {
        e.source()
    })
    .any(|e| {
        e.downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_canceled)
    });
    // `is_builder` (a URL reqwest cannot send to) never left either.
    let unsent = err.is_connect() || err.is_builder() || canceled;
    let phase = if unsent { Phase::Unsent } else { Phase::Sent };
    let failure = Failure::transport(false, err.to_string());
    Box::new(AttemptError::new(phase, failure).with_source(err))
}

pin_project! {
    /// reqwest's byte stream as an `http_body::Body`, marking the client active when the
    /// body ends or is dropped.
    struct Streamed<St> {
        #[pin]
        stream: St,
        _active: Activity,
    }
}

impl<St> Body for Streamed<St>
where
    St: Stream<Item = Result<Bytes, ::reqwest::Error>>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        match this.stream.poll_next(cx) {
            Poll::Ready(Some(Ok(data))) => Poll::Ready(Some(Ok(Frame::data(data)))),
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(e)))),
            Poll::Ready(None) => {
                this._active.touch();
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Marks the client active when dropped: the connection went back to the pool (or closed)
/// no earlier than this.
struct Activity(Option<Arc<Watch>>);

impl Activity {
    fn touch(&self) {
        if let Some(w) = &self.0 {
            w.touch();
        }
    }
}

impl Drop for Activity {
    fn drop(&mut self) {
        self.touch();
    }
}
