use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{Request, Response, Uri};
use tower::ServiceExt;
use tower_service::Service;

use super::StackService;
use crate::body::{DEFAULT_BODY_LIMIT, ReplayBody, ResponseBody, read_request};
use crate::error::{ApiError, BoxError, ConfigError};
use crate::upstream::UpstreamBase;

/// The stack as a server-side service for any body type: what an axum (or hyper) app mounts
/// to serve Responses clients.
///
/// It reads the request body with a limit (decoding `zstd`/`gzip`/`deflate`/`br`), maps the
/// client path to the upstream (`/v1/X` → `base/X`; a path already stripped of its prefix by
/// the router, such as axum's `nest_service("/v1", ..)`, maps the same way), calls the stack,
/// and answers its own errors in the OpenAI envelope: it never fails.
#[derive(Clone)]
pub struct Forward {
    stack: StackService,
    base: UpstreamBase,
    body_limit: usize,
}

impl std::fmt::Debug for Forward {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forward")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl Forward {
    /// Forwards to `base_url` (e.g. `https://api.openai.com/v1`) through `stack`.
    pub fn new(stack: StackService, base_url: &str) -> Result<Self, ConfigError> {
        Ok(Forward {
            stack,
            base: UpstreamBase::parse(base_url)?,
            body_limit: DEFAULT_BODY_LIMIT,
        })
    }

    /// The largest request body accepted (after decoding).
    pub fn body_limit(mut self, limit: usize) -> Self {
        self.body_limit = limit;
        self
    }

    fn upstream_uri(&self, client: &Uri) -> Option<Uri> {
        if client.path().starts_with("/v1/") {
            return self.base.map(client);
        }
        let pq = client.path_and_query().map_or("/", |p| p.as_str());
        self.base.map(&format!("/v1{pq}").parse().ok()?)
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<B> Service<Request<B>> for Forward
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Response = Response<ResponseBody>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Response<ResponseBody>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            Ok(this
                .forward(req)
                .await
                .unwrap_or_else(ApiError::into_stack_response))
        })
    }
}

impl Forward {
    async fn forward<B>(self, req: Request<B>) -> Result<Response<ResponseBody>, ApiError>
    where
        B: http_body::Body + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let uri = self
            .upstream_uri(req.uri())
            .ok_or_else(|| ApiError::invalid_request("path cannot be mapped to the upstream"))?;
        let req = read_request(req, self.body_limit).await?;
        let (mut parts, body) = req.into_parts();
        parts.extensions = Default::default();
        let mut upstream = Request::from_parts(parts, ReplayBody::new(body));
        self.base.prepare(&mut upstream, uri);
        self.stack.oneshot(upstream).await.map_err(|e| {
            tracing::warn!(error = %e, "upstream request failed");
            ApiError::upstream_unavailable("the upstream could not be reached; retry the request")
        })
    }
}
