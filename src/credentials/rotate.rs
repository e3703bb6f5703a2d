use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use http::{Request, Response, Uri};
use tower::ServiceExt;
use tower::retry::budget::{Budget, TpsBudget};
use tower_layer::Layer;
use tower_service::Service;

use super::policy::{self, Next, NoneUsable};
use super::{
    Cooldown, CredentialLease, EncryptedOwner, PickRequest, PinnedCredential, Pool, ServedBy,
};
use crate::body::{
    DEFAULT_PEEK_TIMEOUT, ReplayBody, ResponseBody, clone_request, read_prefix_within,
};
use crate::classify::{Failure, FailureClass, Origin};
use crate::compact::RemoteCompactAttempt;
use crate::error::{ApiError, BoxError};
use crate::facts::{RequestFacts, session_key};
use crate::marks::{AttemptError, Phase, SoftFailure};
use crate::metrics::Metrics;

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
    /// When every credential is out of rotation and the first returns within this long, the
    /// request waits for it instead of failing.
    pub max_wait: Duration,
}

impl Default for RotateConfig {
    fn default() -> Self {
        RotateConfig {
            max_attempts: None,
            max_total: Duration::from_secs(60),
            retry_percent: 0.5,
            min_retries_per_sec: 10,
            max_wait: Duration::from_secs(2),
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
            .map(|p| p.0.clone())
            .filter(|p| {
                // A pin to a credential this pool does not have (state shared with a replica
                // configured differently) cannot be honoured: search as for an unknown owner.
                let known = layer.pool.entry(p).is_some();
                if !known {
                    tracing::info!(
                        credential = &**p,
                        "pinned credential not in this pool; ignoring the pin"
                    );
                }
                known
            });
        let anchored = pinned.is_none() && facts.previous_response_id.is_some();
        Box::pin(rotate(inner, layer, req, session, pinned, anchored))
    }
}

fn count(layer: &CredentialRotateLayer, label: &str, outcome: &str, took: Duration) {
    if let Some(m) = &layer.metrics {
        m.inc(
            "tr_credential_attempts_total",
            "Upstream attempts, by credential and outcome (ok, a failure class, or transport).",
            &[("credential", label), ("outcome", outcome)],
        );
        m.observe(
            "tr_upstream_attempt_seconds",
            "Time from sending an attempt to its outcome (first content, a complete answer or a failure), by credential and outcome.",
            &[("credential", label), ("outcome", outcome)],
            took.as_secs_f64(),
        );
    }
}

/// Most bytes of an unmarked error body read to classify it (when no
/// `SoftFailureDetectLayer` sits inside this layer to do it).
const ERROR_PEEK: usize = 64 * 1024;

/// What one attempt came to: its classified failure and phase (`None`: answered), and the
/// result to hand on.
type Outcome = (
    Option<(Failure, Phase)>,
    Result<Response<ResponseBody>, BoxError>,
);

/// The outcome of one attempt, when it can be told without reading the body: answers are
/// read from their [`SoftFailure`] mark. `Err` gives back an unmarked error status, which
/// [`peeked_outcome`] classifies from its headers and a bounded prefix of its body, never
/// from the status alone. (Kept apart so the rare read does not size every request's
/// future.)
fn outcome(
    result: Result<Response<ResponseBody>, BoxError>,
) -> Result<Outcome, Response<ResponseBody>> {
    match result {
        Ok(res) => {
            if let Some(mark) = res.extensions().get::<SoftFailure>() {
                let found = (mark.failure.clone(), mark.phase());
                return Ok((Some(found), Ok(res)));
            }
            if res.status().is_success() {
                return Ok((None, Ok(res)));
            }
            Err(res)
        }
        Err(e) => {
            let found = match AttemptError::find(&*e) {
                Some(a) => (a.failure.clone(), a.phase),
                // An inner service that does not say how far the request got: assume it may
                // have run, so it is never sent twice.
                None => (Failure::transport(false, e.to_string()), Phase::Sent),
            };
            Ok((Some(found), Err(e)))
        }
    }
}

/// The outcome of an unmarked error answer, read from its headers and body prefix.
async fn peeked_outcome(res: Response<ResponseBody>) -> Outcome {
    let (mut parts, body) = res.into_parts();
    let peek = read_prefix_within(body, ERROR_PEEK, DEFAULT_PEEK_TIMEOUT).await;
    let failure = Failure::from_http(parts.status, &parts.headers, &peek.prefix);
    if peek.stalled {
        parts.headers.remove(http::header::CONTENT_LENGTH);
    }
    let res = Response::from_parts(parts, peek.into_error_body());
    (failure.map(|f| (f, Phase::BeforeContent)), Ok(res))
}

#[allow(
    clippy::manual_async_fn,
    reason = "an `async fn` stores its arguments twice in its future, which every request allocates"
)]
fn rotate<S>(
    mut inner: S,
    layer: CredentialRotateLayer,
    req: Request<ReplayBody>,
    session: Option<String>,
    pinned: Option<Arc<str>>,
    anchored: bool,
) -> impl Future<Output = Result<Response<ResponseBody>, BoxError>>
where
    S: Service<Request<ReplayBody>, Response = Response<ResponseBody>, Error = BoxError>,
{
    async move {
        let pool = &layer.pool;
        layer.budget.deposit();
        let started = Instant::now();
        let max_attempts = layer.config.max_attempts.unwrap_or(pool.len()).max(1);
        let compaction = req.extensions().get::<RemoteCompactAttempt>().is_some();
        let encrypted_owner = req
            .extensions()
            .get::<EncryptedOwner>()
            .map(|o| o.0.clone());
        let mut template = Some(req);
        let mut tried: Vec<Arc<str>> = Vec::new();
        let mut last: Option<Result<Response<ResponseBody>, BoxError>> = None;
        let mut auth_before = 0;
        let mut waited = Duration::ZERO;
        while tried.len() < max_attempts {
            let pick = pool.pick_for(&PickRequest {
                exclude: &tried,
                pinned: pinned.as_deref(),
                session: session.as_deref(),
                anchored,
            });
            let Some(label) = pick else {
                if !tried.is_empty() {
                    break;
                }
                let left = layer.config.max_wait.saturating_sub(waited);
                match policy::when_none_usable(&pool.active_cooldowns(), SystemTime::now(), left) {
                    NoneUsable::Wait(d) => {
                        tracing::info!(
                            wait_ms = d.as_millis() as u64,
                            "every credential is out; waiting for the first to return"
                        );
                        Box::pin(tokio::time::sleep(d)).await;
                        waited += d.max(Duration::from_millis(1));
                        continue;
                    }
                    NoneUsable::Refuse(err) => {
                        tracing::warn!(
                            status = err.status.as_u16(),
                            code = err.code.as_deref(),
                            retry_after_secs = err.retry_after.map(|d| d.as_secs()),
                            "no credential can serve the request"
                        );
                        return Ok(err.into_stack_response());
                    }
                }
            };
            if pinned.is_some() {
                if let Some(c) = pool.cooldown_of(&label).filter(Cooldown::excludes) {
                    // A pinned request never goes elsewhere: the other account cannot see the anchor.
                    let left = layer.config.max_wait.saturating_sub(waited);
                    match policy::when_owner_out(&c, SystemTime::now(), left) {
                        NoneUsable::Wait(d) => {
                            Box::pin(tokio::time::sleep(d)).await;
                            waited += d.max(Duration::from_millis(1));
                            continue;
                        }
                        NoneUsable::Refuse(err) => return Ok(err.into_stack_response()),
                    }
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
            // The last attempt the loop can make takes the request itself: a copy is for a retry,
            // and none can follow it (one credential: no copy at all).
            let attempt = if tried.len() + 1 >= max_attempts {
                template.take()
            } else {
                template.as_ref().map(clone_request)
            };
            let Some(mut attempt) = attempt else {
                break;
            };
            entry.apply(attempt.headers_mut());
            if let (Some(member_base), Some(default_base)) =
                (&entry.member.base_url, &layer.default_base)
            {
                if let Some(uri) = rebase(attempt.uri(), default_base, member_base) {
                    *attempt.uri_mut() = uri;
                }
            }
            // Encrypted items are readable only by the account that made them: strip them when
            // this attempt goes to another one, or, with their account unknown, to any but the
            // first pick.
            let foreign = match &encrypted_owner {
                Some(owner) => **owner != *label,
                None => !tried.is_empty(),
            };
            if foreign {
                strip_encrypted_reasoning(&mut attempt, &layer, &label);
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
            let attempt_started = Instant::now();
            let result = match inner.ready().await {
                Ok(svc) => svc.call(attempt).await,
                Err(e) => Err(e),
            };
            let (failed, mut result) = match outcome(result) {
                Ok(known) => known,
                Err(res) => Box::pin(peeked_outcome(res)).await,
            };
            if let Ok(res) = &mut result {
                res.extensions_mut().insert(ServedBy(label.clone()));
            }
            let Some((failure, phase)) = failed else {
                count(&layer, &label, "ok", attempt_started.elapsed());
                if let Ok(res) = &result {
                    pool.record_success(&label, res.headers());
                }
                if let Some(s) = &session {
                    pool.record_served(s, &label);
                }
                return result;
            };
            let outcome_label = if failure.origin == Origin::Transport {
                "transport"
            } else {
                failure.class.as_str()
            };
            count(&layer, &label, outcome_label, attempt_started.elapsed());
            let strikes = if failure.cools_credential() {
                pool.state().strike(&label, failure.class).saturating_sub(1)
            } else {
                0
            };
            let decision = policy::decide(
                &policy::Attempt {
                    failure: Some(&failure),
                    phase,
                    kind: entry.kind,
                    strikes,
                    auth_before,
                    pinned: pinned.is_some(),
                    compaction,
                    now: SystemTime::now(),
                },
                pool.policy(),
            );
            tracing::info!(
                credential = &*label,
                class = failure.class.as_str(),
                phase = phase.as_str(),
                next = ?decision.next,
                why = decision.why,
                "upstream attempt failed"
            );
            if let Some(c) = decision.cooldown {
                pool.cool(&label, c);
            }
            if failure.class == FailureClass::Auth {
                auth_before += 1;
            }
            if decision.next == Next::Stop {
                return result;
            }
            last = Some(result);
        }
        match last {
            Some(result) => result,
            None => {
                let left = layer.config.max_wait.saturating_sub(waited);
                match policy::when_none_usable(&pool.active_cooldowns(), SystemTime::now(), left) {
                    NoneUsable::Refuse(err) => Ok(err.into_stack_response()),
                    NoneUsable::Wait(_) => Ok(ApiError::upstream_unavailable(
                        "no credential could be tried for this request",
                    )
                    .into_stack_response()),
                }
            }
        }
    }
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
