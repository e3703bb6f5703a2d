use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower::ServiceExt;
use tower_service::Service;

use super::judge::{attempt_error, error_reason, is_api_envelope};
use super::peek::{PeekEnd, peek};
use super::{Config, FreshRetry, RetryReason};
use crate::body::{ReplayBody, ResponseBody, clone_request};
use crate::connect::{ConnectionInfo, ConnectionReport, NewConnection};
use crate::error::BoxError;

/// A client service that retries once on a fresh connection when a stale pooled connection
/// failed the request. Made by [`FreshConnectionLayer`](super::FreshConnectionLayer); cheap
/// to clone when `S` is.
///
/// `S` is the client service at the bottom of the stack (a
/// [`ClientService`](crate::connect::ClientService), a `ReqwestService` with the `reqwest`
/// feature, your own): it reports each request's
/// connection into the [`ConnectionReport`] this layer puts on the request, and sends
/// requests marked [`NewConnection`] on a connection of their own. A service that reports
/// nothing still gets its unsent requests retried.
///
/// Errors are [`AttemptError`](crate::marks::AttemptError)s: each says whether the request
/// may have reached the upstream.
#[derive(Debug, Clone)]
pub struct FreshConnection<S> {
    inner: S,
    config: Arc<Config>,
}

impl<S> FreshConnection<S> {
    pub(crate) fn new(inner: S, config: Arc<Config>) -> Self {
        FreshConnection { inner, config }
    }

    /// The wrapped client service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S> FreshConnection<S>
where
    S: Service<Request<ReplayBody>, Response = Response<ResponseBody>, Error = BoxError>
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    #[allow(
        clippy::manual_async_fn,
        reason = "an `async fn` stores its arguments twice in its future, which every request allocates"
    )]
    fn run(
        mut inner: S,
        config: Arc<Config>,
        req: Request<ReplayBody>,
    ) -> impl Future<Output = Result<Response<ResponseBody>, BoxError>> {
        async move {
            // Cloned before the report goes in, so the retry reports its own connection.
            let again = clone_request(&req);
            let report = ConnectionReport::new();
            let mut first = req;
            first.extensions_mut().insert(report.clone());
            // `inner` was readied by `poll_ready`: the first attempt calls it directly.
            let result = inner.call(first).await;
            let conn = report.get();

            let res = match result {
                Ok(res) => res,
                Err(err) => {
                    return match error_reason(&*err, conn.as_ref(), config.unsent_window) {
                        Some(reason) => {
                            Box::pin(retry(inner, &config, again, reason, conn, None)).await
                        }
                        None => Err(attempt_error(err)),
                    };
                }
            };

            // The peek is rare: boxed, it does not size every request's future.
            let res = if !suspect(&config, res.status(), conn.as_ref()) {
                res
            } else {
                match Box::pin(stale_answer(&config, res, conn.as_ref())).await {
                    Ok(res) => res,
                    Err(status) => {
                        let reason = RetryReason::StaleAnswer;
                        return Box::pin(retry(inner, &config, again, reason, conn, Some(status)))
                            .await;
                    }
                }
            };

            if let Some(conn) = &conn {
                if conn.can_retire() && conn.age().is_some_and(|age| age > config.max_age) {
                    conn.retire();
                    tracing::debug!(conn = conn.id(), "upstream connection retired by age");
                    if let Some(m) = &config.metrics {
                        m.inc(
                            "tr_fresh_connections_aged_out_total",
                            "Upstream connections retired after reaching the maximum age.",
                            &[],
                        );
                    }
                }
            }
            Ok(res)
        }
    }
}

/// Whether an answer with `status` on `conn` may be a stale connection's: a reused
/// connection idle past the bound, and a status stale connections answer with.
fn suspect(config: &Config, status: http::StatusCode, conn: Option<&ConnectionInfo>) -> bool {
    conn.is_some_and(|c| {
        c.is_reused() && c.idle().is_some_and(|idle| idle >= config.stale_after_idle)
    }) && config.stale_statuses.contains(&status)
}

/// The response unchanged, or `Err(status)` when it is a stale connection's answer.
async fn stale_answer(
    config: &Config,
    res: Response<ResponseBody>,
    conn: Option<&ConnectionInfo>,
) -> Result<Response<ResponseBody>, http::StatusCode> {
    let status = res.status();
    if !suspect(config, status, conn) {
        return Ok(res);
    }
    let (parts, mut body) = res.into_parts();
    let peeked = peek(&mut body, config.peek_limit, config.peek_timeout).await;
    let api = match &peeked.end {
        PeekEnd::Complete => is_api_envelope(&peeked.prefix, true),
        PeekEnd::More => is_api_envelope(&peeked.prefix, false),
        // A body that breaks before it shows an API error came from a dying connection.
        PeekEnd::Failed(_) => false,
    };
    if api {
        Ok(Response::from_parts(parts, peeked.replay(body)))
    } else {
        Err(status)
    }
}

async fn retry<S>(
    inner: S,
    config: &Config,
    mut req: Request<ReplayBody>,
    reason: RetryReason,
    failed: Option<ConnectionInfo>,
    status: Option<http::StatusCode>,
) -> Result<Response<ResponseBody>, BoxError>
where
    S: Service<Request<ReplayBody>, Response = Response<ResponseBody>, Error = BoxError>,
{
    // First, so the pool cannot hand the failed connection to anyone else.
    if let Some(conn) = &failed {
        conn.retire();
    }
    let retry = FreshRetry {
        reason,
        conn_id: failed.as_ref().and_then(ConnectionInfo::id),
        idle: failed.as_ref().and_then(ConnectionInfo::idle),
        status,
    };
    tracing::info!(
        reason = reason.as_str(),
        conn = retry.conn_id,
        idle_ms = retry
            .idle
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        status = status.map(|s| s.as_u16()),
        "stale upstream connection; retrying on a fresh connection"
    );
    if let Some(m) = &config.metrics {
        m.inc(
            "tr_fresh_retries_total",
            "Requests retried once on a fresh upstream connection after a stale pooled connection failed them.",
            &[("reason", reason.as_str())],
        );
    }
    // Retrying on a pooled connection could meet another that idled just as long.
    req.extensions_mut().insert(NewConnection);
    // The same service that served the first attempt, readied again (the tower contract).
    let mut res = inner.oneshot(req).await.map_err(attempt_error)?;
    res.extensions_mut().insert(retry);
    Ok(res)
}

impl<S> Service<Request<ReplayBody>> for FreshConnection<S>
where
    S: Service<Request<ReplayBody>, Response = Response<ResponseBody>, Error = BoxError>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<ResponseBody>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<ResponseBody>, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReplayBody>) -> Self::Future {
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(Self::run(inner, self.config.clone(), req))
    }
}
