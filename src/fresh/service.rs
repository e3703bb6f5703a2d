use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Extensions, Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{CaptureConnection, Connect, capture_connection};
use tower_service::Service;

use super::judge::{attempt_error, error_reason, is_api_envelope};
use super::peek::{PeekEnd, peek};
use super::{Config, FreshRetry, RetryReason};
use crate::body::{ReplayBody, ResponseBody, clone_request};
use crate::connect::ConnTag;
use crate::error::BoxError;

/// The hyper-util client as the bottom of the stack, retrying once on a fresh connection
/// when a stale pooled connection failed the request. Built by
/// [`FreshConnectionLayer`](super::FreshConnectionLayer); cheap to clone.
///
/// Errors are [`AttemptError`](crate::marks::AttemptError)s with hyper-util's error as their
/// source: each says whether the request may have reached the upstream.
#[derive(Debug)]
pub struct FreshConnection<C> {
    pooled: Client<C, ReplayBody>,
    fresh: Client<C, ReplayBody>,
    config: Arc<Config>,
}

impl<C: Clone> Clone for FreshConnection<C> {
    fn clone(&self) -> Self {
        FreshConnection {
            pooled: self.pooled.clone(),
            fresh: self.fresh.clone(),
            config: self.config.clone(),
        }
    }
}

impl<C> FreshConnection<C> {
    pub(crate) fn new(
        pooled: Client<C, ReplayBody>,
        fresh: Client<C, ReplayBody>,
        config: Arc<Config>,
    ) -> Self {
        FreshConnection {
            pooled,
            fresh,
            config,
        }
    }
}

/// The connection an attempt went out on, as far as it is known.
struct Attempt {
    // `Connected` is not `Clone`: keep the capture and borrow it to poison.
    capture: CaptureConnection,
    tag: Option<ConnTag>,
}

impl Attempt {
    fn new(capture: CaptureConnection) -> Self {
        let tag = capture.connection_metadata().as_ref().and_then(|c| {
            let mut ext = Extensions::new();
            c.get_extras(&mut ext);
            ext.remove::<ConnTag>()
        });
        Attempt { capture, tag }
    }

    fn reused(&self) -> bool {
        self.tag.as_ref().is_some_and(ConnTag::is_reused)
    }

    fn idle(&self) -> Option<Duration> {
        self.tag.as_ref().map(ConnTag::idle_before_use)
    }

    fn poison(&self) {
        if let Some(c) = self.capture.connection_metadata().as_ref() {
            c.poison();
        }
    }
}

fn boxed(res: Response<Incoming>) -> Response<ResponseBody> {
    res.map(|b| b.map_err(|e| Box::new(e) as BoxError).boxed_unsync())
}

impl<C> FreshConnection<C>
where
    C: Connect + Clone + Send + Sync + 'static,
{
    async fn run(self, req: Request<ReplayBody>) -> Result<Response<ResponseBody>, BoxError> {
        // Cloned before the capture goes in, so the retry reports its own connection.
        let again = clone_request(&req);
        let mut first = req;
        let capture = capture_connection(&mut first);
        let result = self.pooled.request(first).await;
        let attempt = Attempt::new(capture);

        let res = match result {
            Ok(res) => boxed(res),
            Err(err) => {
                let window = self.config.unsent_window;
                return match error_reason(&err, attempt.tag.as_ref(), window) {
                    Some(reason) => self.retry(again, reason, &attempt, None).await,
                    None => Err(Box::new(attempt_error(err))),
                };
            }
        };

        let res = match self.stale_answer(res, &attempt).await {
            Ok(res) => res,
            Err(status) => {
                let reason = RetryReason::StaleAnswer;
                return self.retry(again, reason, &attempt, Some(status)).await;
            }
        };

        if let Some(tag) = &attempt.tag {
            if tag.age() > self.config.max_age {
                attempt.poison();
                tracing::debug!(conn = tag.id(), "upstream connection retired by age");
                if let Some(m) = &self.config.metrics {
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

    /// The response unchanged, or `Err(status)` when it is a stale connection's answer.
    async fn stale_answer(
        &self,
        res: Response<ResponseBody>,
        attempt: &Attempt,
    ) -> Result<Response<ResponseBody>, http::StatusCode> {
        let status = res.status();
        let suspect = attempt.reused()
            && attempt
                .idle()
                .is_some_and(|idle| idle >= self.config.stale_after_idle)
            && self.config.stale_statuses.contains(&status);
        if !suspect {
            return Ok(res);
        }
        let (parts, mut body) = res.into_parts();
        let peeked = peek(&mut body, self.config.peek_limit, self.config.peek_timeout).await;
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

    async fn retry(
        &self,
        req: Request<ReplayBody>,
        reason: RetryReason,
        failed: &Attempt,
        status: Option<http::StatusCode>,
    ) -> Result<Response<ResponseBody>, BoxError> {
        // First, so the pool cannot hand the failed connection to anyone else.
        failed.poison();
        let retry = FreshRetry {
            reason,
            conn_id: failed.tag.as_ref().map(ConnTag::id),
            idle: failed.idle(),
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
        if let Some(m) = &self.config.metrics {
            m.inc(
                "tr_fresh_retries_total",
                "Requests retried once on a fresh upstream connection after a stale pooled connection failed them.",
                &[("reason", reason.as_str())],
            );
        }
        let res = self.fresh.request(req).await;
        let mut res = boxed(res.map_err(|e| BoxError::from(attempt_error(e)))?);
        res.extensions_mut().insert(retry);
        Ok(res)
    }
}

impl<C> Service<Request<ReplayBody>> for FreshConnection<C>
where
    C: Connect + Clone + Send + Sync + 'static,
{
    type Response = Response<ResponseBody>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<ResponseBody>, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // hyper-util's client queues internally and is always ready.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<ReplayBody>) -> Self::Future {
        Box::pin(self.clone().run(req))
    }
}
