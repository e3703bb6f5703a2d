use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use http::{Request, Response, StatusCode, Uri};
use tower::ServiceExt;
use tower::retry::budget::{Budget, TpsBudget};
use tower_layer::Layer;
use tower_service::Service;

use super::{CredentialLease, EncryptedOwner, PinnedCredential, Pool, ServedBy};
use crate::body::{ReplayBody, ResponseBody, clone_request};
use crate::classify::{Failure, FailureClass};
use crate::compact::RemoteCompactAttempt;
use crate::error::{ApiError, BoxError};
use crate::facts::{RequestFacts, session_key};
use crate::metrics::Metrics;
use crate::soft_failure::SoftFailure;

/// Bounds of the retries across credentials.
#[derive(Debug, Clone)]
pub struct RotateConfig {
    /// Most attempts per request (default: the pool's size).
    pub max_attempts: Option<usize>,
    /// Most time spent on one request's attempts before answering with what we have.
    pub max_total: Duration,
    /// Retries allowed beyond the first attempt, as a share of recent requests (the retry
    /// budget keeps a bad upstream from multiplying load).
    pub retry_percent: f32,
    /// Retries always allowed per second, whatever the share.
    pub min_retries_per_sec: u32,
}

impl Default for RotateConfig {
    fn default() -> Self {
        RotateConfig {
            max_attempts: None,
            max_total: Duration::from_secs(60),
            retry_percent: 0.5,
            min_retries_per_sec: 10,
        }
    }
}

/// Applies [`CredentialRotate`]. See the [module docs](super).
#[derive(Clone)]
pub struct CredentialRotateLayer {
    pool: Arc<Pool>,
    config: RotateConfig,
    budget: Arc<TpsBudget>,
    default_base: Option<Arc<str>>,
    metrics: Option<Metrics>,
}

impl std::fmt::Debug for CredentialRotateLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredentialRotateLayer")
            .field("pool", &self.pool)
            .finish_non_exhaustive()
    }
}

impl CredentialRotateLayer {
    /// Rotates over `pool` with default bounds.
    pub fn new(pool: Arc<Pool>) -> Self {
        Self::with_config(pool, RotateConfig::default())
    }

    /// Rotates over `pool` with these bounds.
    pub fn with_config(pool: Arc<Pool>, config: RotateConfig) -> Self {
        let budget = TpsBudget::new(
            Duration::from_secs(10),
            config.min_retries_per_sec,
            config.retry_percent,
        );
        CredentialRotateLayer {
            pool,
            config,
            budget: Arc::new(budget),
            default_base: None,
            metrics: None,
        }
    }

    /// The stack's upstream base URL; needed when members have their own `base_url`, so a
    /// request for `default_base/X` can go to `member_base/X`.
    pub fn upstream_base(mut self, base: impl Into<String>) -> Self {
        self.default_base = Some(Arc::from(base.into().trim_end_matches('/')));
        self
    }

    /// Reports attempts and failovers into `metrics`.
    pub fn metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// The pool.
    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }
}

impl<S> Layer<S> for CredentialRotateLayer {
    type Service = CredentialRotate<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CredentialRotate {
            inner,
            layer: self.clone(),
        }
    }
}

/// Picks a credential per attempt and retries on the next while the client has seen nothing.
#[derive(Clone)]
pub struct CredentialRotate<S> {
    inner: S,
    layer: CredentialRotateLayer,
}

impl<S> std::fmt::Debug for CredentialRotate<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredentialRotate")
            .field("pool", &self.layer.pool)
            .finish_non_exhaustive()
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S> Service<Request<ReplayBody>> for CredentialRotate<S>
where
    S: Service<Request<ReplayBody>, Response = Response<ResponseBody>, Error = BoxError>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<ResponseBody>;
    type Error = BoxError;
    type Future = BoxFuture<Result<Response<ResponseBody>, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReplayBody>) -> Self::Future {
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let layer = self.layer.clone();
        let facts = RequestFacts::of(&mut req);
        let session = session_key(req.headers(), &facts);
        let pinned = req
            .extensions()
            .get::<PinnedCredential>()
            .map(|p| p.0.clone());
        Box::pin(rotate(inner, layer, req, session, pinned))
    }
}

fn count(layer: &CredentialRotateLayer, label: &str, outcome: &str) {
    if let Some(m) = &layer.metrics {
        m.inc(
            "tr_credential_attempts_total",
            "Upstream attempts, by credential and outcome (ok, a failure class, or transport).",
            &[("credential", label), ("outcome", outcome)],
        );
    }
}

async fn rotate<S>(
    mut inner: S,
    layer: CredentialRotateLayer,
    req: Request<ReplayBody>,
    session: Option<String>,
    pinned: Option<Arc<str>>,
) -> Result<Response<ResponseBody>, BoxError>
where
    S: Service<Request<ReplayBody>, Response = Response<ResponseBody>, Error = BoxError>,
{
    let pool = &layer.pool;
    layer.budget.deposit();
    let started = Instant::now();
    let max_attempts = layer.config.max_attempts.unwrap_or(pool.len()).max(1);
    let compact_attempt = req.extensions().get::<RemoteCompactAttempt>().is_some();
    let mut tried: Vec<Arc<str>> = Vec::new();
    let mut last: Option<Response<ResponseBody>> = None;
    let mut last_err: Option<BoxError> = None;
    while tried.len() < max_attempts {
        let Some(label) = pool.pick(&tried, pinned.as_deref(), session.as_deref()) else {
            break;
        };
        if pinned.is_some() {
            if let Some(c) = pool.cooldown_of(&label) {
                // A pinned request never goes elsewhere: the other account cannot see the anchor.
                let wait = c
                    .until
                    .and_then(|u| u.duration_since(SystemTime::now()).ok())
                    .unwrap_or(Duration::from_secs(60));
                return Ok(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "server_error",
                    format!("the credential that owns previous_response_id is cooling ({}); retry later", c.reason),
                )
                .with_code("previous_response_owner_unavailable")
                .with_retry_after(wait)
                .into_stack_response());
            }
        }
        if !tried.is_empty() {
            if started.elapsed() >= layer.config.max_total || !layer.budget.withdraw() {
                tracing::info!(
                    "retry budget or time spent; answering with the last upstream answer"
                );
                break;
            }
            if let Some(m) = &layer.metrics {
                m.inc(
                    "tr_credential_failovers_total",
                    "Attempts moved to another credential.",
                    &[],
                );
            }
        }
        let Some(entry) = pool.entry(&label) else {
            break;
        };
        let mut attempt = clone_request(&req);
        let cred = entry.credential();
        cred.apply(attempt.headers_mut());
        if let (Some(member_base), Some(default_base)) =
            (&entry.member.base_url, &layer.default_base)
        {
            if let Some(uri) = rebase(attempt.uri(), default_base, member_base) {
                *attempt.uri_mut() = uri;
            }
        }
        if let Some(owner) = attempt.extensions().get::<EncryptedOwner>() {
            if owner.0 != label {
                strip_encrypted_reasoning(&mut attempt, &layer, &label);
            }
        }
        if let Some(profile) = entry.member.profile {
            attempt.extensions_mut().insert(profile);
        }
        let reporter_pool = pool.clone();
        attempt.extensions_mut().insert(CredentialLease::new(
            label.clone(),
            move |c: &str, f: &Failure| {
                reporter_pool.record_failure(c, f);
            },
        ));
        pool.record_use(&label);
        tried.push(label.clone());
        let result = match inner.ready().await {
            Ok(svc) => svc.call(attempt).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(mut res) => {
                res.extensions_mut().insert(ServedBy(label.clone()));
                let failure = res
                    .extensions()
                    .get::<SoftFailure>()
                    .filter(|s| s.before_content)
                    .map(|s| s.failure.clone())
                    .or_else(|| {
                        // Working without SoftFailureDetectLayer: classify by status alone.
                        (!res.status().is_success())
                            .then(|| Failure::from_http(res.status(), res.headers(), b""))
                            .flatten()
                    });
                let Some(failure) = failure else {
                    count(&layer, &label, "ok");
                    pool.record_success(&label, res.headers());
                    if let Some(s) = &session {
                        pool.bind_session(s, &label);
                    }
                    return Ok(res);
                };
                count(&layer, &label, failure.class.as_str());
                if compact_attempt
                    && !matches!(
                        failure.class,
                        FailureClass::RateLimited
                            | FailureClass::QuotaExhausted
                            | FailureClass::Auth
                    )
                {
                    // A remote compaction the route or the model refused (a bare 502, a 404,
                    // an unsupported model): the compaction layer falls back; the key is fine.
                    return Ok(res);
                }
                pool.record_failure(&label, &failure);
                if pinned.is_some() || !failure.class.retry_elsewhere() {
                    return Ok(res);
                }
                tracing::info!(
                    credential = &*label,
                    class = failure.class.as_str(),
                    "failure before content; trying the next credential"
                );
                last = Some(res);
            }
            Err(e) => {
                // No HTTP answer: the connection's fault, not the credential's. Try the next.
                count(&layer, &label, "transport");
                tracing::info!(credential = &*label, error = %e, "transport failure; trying the next credential");
                if pinned.is_some() {
                    return Err(e);
                }
                last_err = Some(e);
            }
        }
    }
    if let Some(res) = last {
        return Ok(res);
    }
    if let Some(e) = last_err {
        return Err(e);
    }
    Ok(all_cooling(pool))
}

/// Every credential is cooling and none was tried: say when one returns.
fn all_cooling(pool: &Pool) -> Response<ResponseBody> {
    let (earliest, all_quota) = pool.earliest_return();
    let now = SystemTime::now();
    let wait = earliest
        .and_then(|t| t.duration_since(now).ok())
        .unwrap_or(Duration::from_secs(60));
    let mut err = if all_quota {
        let mut e = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "usage_limit_reached",
            "The usage limit has been reached on every configured credential",
        )
        .with_code("usage_limit_reached");
        e.resets_at = earliest
            .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
            .map(|d| d.as_secs());
        e
    } else {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            format!(
                "every configured credential is cooling; try again in {}s",
                wait.as_secs().max(1)
            ),
        )
        .with_code("rate_limit_exceeded")
    };
    err = err.with_retry_after(wait);
    tracing::warn!(
        wait_secs = wait.as_secs(),
        all_quota,
        "every credential is cooling"
    );
    err.into_stack_response()
}

fn rebase(uri: &Uri, default_base: &str, member_base: &str) -> Option<Uri> {
    let full = uri.to_string();
    let rest = full.strip_prefix(default_base)?;
    format!("{}{}", member_base.trim_end_matches('/'), rest)
        .parse()
        .ok()
}

/// Removes reasoning items that carry `encrypted_content` from `input`: only the account
/// that produced them can decrypt them. Only this failover path pays for the rewrite.
fn strip_encrypted_reasoning(
    req: &mut Request<ReplayBody>,
    layer: &CredentialRotateLayer,
    label: &str,
) {
    let Some((body, removed)) = crate::facts::without_encrypted_reasoning(req.body().bytes())
    else {
        return;
    };
    if removed == 0 {
        return;
    }
    tracing::info!(
        credential = label,
        removed,
        "request moved to another credential; stripped encrypted reasoning items it cannot decrypt"
    );
    if let Some(m) = &layer.metrics {
        m.add(
            "tr_encrypted_items_stripped_total",
            "Encrypted reasoning items removed because the request had to go to another credential.",
            &[],
            removed as f64,
        );
    }
    req.headers_mut().insert(
        http::header::CONTENT_LENGTH,
        http::HeaderValue::from(body.len()),
    );
    *req.body_mut() = ReplayBody::new(body);
    RequestFacts::invalidate(req);
}
