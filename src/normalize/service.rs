use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};

use http_body_util::BodyExt;
use tower::ServiceExt;
use tower_layer::Layer;
use tower_service::Service;

use super::cap::{CapBody, CapGate};
use super::config::NormalizeConfig;
use super::fold::{fold, fold_gate};
use super::learn::{LearnedParams, error_message, unsupported_param};
use super::rewrite::{Plan, Rewrite, rewrite, without_param};
use super::rule::{Rule, codex_rules};
use crate::body::{
    DEFAULT_PEEK_TIMEOUT, ReplayBody, ResponseBody, clone_request, read_prefix_within,
};
use crate::classify::{Failure, FailureClass};
use crate::error::{ApiError, BoxError};
use crate::facts::RequestFacts;
use crate::metrics::Metrics;
use crate::profile::Profile;
use crate::soft_failure::SoftFailure;
use crate::soft_failure::gate::{StreamGate, StreamGated};
use crate::sse::is_event_stream;

/// Applies [`BodyNormalize`] to a service. See the [module docs](super).
#[derive(Debug, Clone)]
pub struct BodyNormalizeLayer {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    config: NormalizeConfig,
    codex: Vec<Rule>,
    learned: LearnedParams,
    metrics: Option<Metrics>,
}

impl BodyNormalizeLayer {
    /// The layer with this configuration.
    pub fn new(config: NormalizeConfig) -> Self {
        BodyNormalizeLayer {
            shared: Arc::new(Shared {
                config,
                codex: codex_rules(),
                learned: LearnedParams::new(),
                metrics: None,
            }),
        }
    }

    /// The layer with default settings for this profile.
    pub fn for_profile(profile: Profile) -> Self {
        Self::new(NormalizeConfig::for_profile(profile))
    }

    /// Reports into `metrics`: `tr_normalize_rewrites_total{profile,rule}`,
    /// `tr_normalize_learned_total{param}`, `tr_normalize_capped_total{profile}`.
    pub fn metrics(self, metrics: Metrics) -> Self {
        self.rebuild(|s| s.metrics = Some(metrics))
    }

    /// Shares learned parameters with other layers (e.g. one per upstream route).
    pub fn learned_params(self, learned: LearnedParams) -> Self {
        self.rebuild(|s| s.learned = learned)
    }

    /// The parameters this layer has learnt upstreams refuse.
    pub fn learned(&self) -> &LearnedParams {
        &self.shared.learned
    }

    fn rebuild(self, f: impl FnOnce(&mut Shared)) -> Self {
        let mut shared = Shared {
            config: self.shared.config.clone(),
            codex: self.shared.codex.clone(),
            learned: self.shared.learned.clone(),
            metrics: self.shared.metrics.clone(),
        };
        f(&mut shared);
        BodyNormalizeLayer {
            shared: Arc::new(shared),
        }
    }
}

impl<S> Layer<S> for BodyNormalizeLayer {
    type Service = BodyNormalize<S>;

    fn layer(&self, inner: S) -> Self::Service {
        BodyNormalize {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// Rewrites request bodies for the upstream's profile. See the [module docs](super).
#[derive(Debug, Clone)]
pub struct BodyNormalize<S> {
    inner: S,
    shared: Arc<Shared>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S> Service<Request<ReplayBody>> for BodyNormalize<S>
where
    S: Service<Request<ReplayBody>, Response = Response<ResponseBody>, Error = BoxError>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    type Response = Response<ResponseBody>;
    type Error = BoxError;
    type Future = BoxFuture<Result<Response<ResponseBody>, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReplayBody>) -> Self::Future {
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let shared = self.shared.clone();
        Box::pin(handle(shared, inner, req))
    }
}

fn is_responses(req: &Request<ReplayBody>) -> bool {
    req.method() == Method::POST
        && req
            .uri()
            .path()
            .trim_end_matches('/')
            .ends_with("/responses")
}

fn is_encoded(req: &Request<ReplayBody>) -> bool {
    req.headers()
        .get(header::CONTENT_ENCODING)
        .is_some_and(|v| !v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"identity"))
}

fn upstream_key(req: &Request<ReplayBody>, profile: Profile) -> String {
    let uri = req.uri();
    format!(
        "{}://{}#{}",
        uri.scheme_str().unwrap_or(""),
        uri.authority().map_or("", |a| a.as_str()),
        profile
    )
}

fn set_body(req: &mut Request<ReplayBody>, body: Bytes) {
    req.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    *req.body_mut() = ReplayBody::new(body);
    RequestFacts::invalidate(req);
}

#[allow(
    clippy::manual_async_fn,
    reason = "an `async fn` stores its arguments twice in its future, which every request allocates"
)]
fn handle<S>(
    shared: Arc<Shared>,
    mut inner: S,
    mut req: Request<ReplayBody>,
) -> impl Future<Output = Result<Response<ResponseBody>, BoxError>>
where
    S: Service<Request<ReplayBody>, Response = Response<ResponseBody>, Error = BoxError>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    async move {
        let profile = req
            .extensions()
            .get::<Profile>()
            .copied()
            .unwrap_or(shared.config.profile);
        if profile == Profile::Openai || !is_responses(&req) || is_encoded(&req) {
            return inner.call(req).await;
        }
        if profile == Profile::ChatgptCodex
            && RequestFacts::of(&mut req).previous_response_id.is_some()
        {
            // That backend keeps no responses over HTTP (store is forced off), so the anchor can
            // never resolve. Dropping it would answer without the conversation, silently; this
            // answer makes a client resend its history, which is what it has to do here.
            tracing::info!(
                "previous_response_id refused: the ChatGPT Codex backend stores no responses over HTTP"
            );
            let message = "previous_response_id cannot be used with the ChatGPT Codex backend over \
                           HTTP: it stores no responses. Send the conversation in `input` instead.";
            let mut res = ApiError::invalid_request(message)
                .with_code("previous_response_not_found")
                .with_param("previous_response_id")
                .into_stack_response();
            // Classified where it is made, so continuity can ask the members that may own the
            // anchor and rotation does not guess from a bare 400.
            res.extensions_mut().insert(SoftFailure {
                failure: Failure {
                    status: Some(StatusCode::BAD_REQUEST),
                    code: Some("previous_response_not_found".into()),
                    kind: Some("invalid_request_error".into()),
                    message: Some(message.into()),
                    ..Failure::new(FailureClass::PreviousResponseNotFound)
                },
                before_content: true,
            });
            return Ok(res);
        }
        let config = &shared.config;
        let key = upstream_key(&req, profile);
        let learned = if config.learn {
            shared.learned.params(&key)
        } else {
            Vec::new()
        };
        let rules = match profile {
            Profile::ChatgptCodex => &shared.codex[..],
            _ => &config.rules[..],
        };
        // Facts read by the proxy (or an outer layer) mean the body was parsed whole as an object.
        let validated = RequestFacts::cached(&req).is_some_and(|f| f.is_json_object);
        let decided = rewrite(
            req.body().bytes(),
            validated,
            RequestFacts::raw_object(&req),
            rules,
            config.cap_policy(profile),
            &learned,
        );
        let mut plan = match decided {
            Rewrite::Untouched => return inner.call(req).await,
            Rewrite::Reject(err) => {
                tracing::debug!(profile = %profile, param = ?err.param, "request refused by normalize policy");
                return Ok(err.into_stack_response());
            }
            Rewrite::Plan(plan) => plan,
        };
        report_rewrites(&shared, profile, &plan);
        if let Some(body) = plan.body.take() {
            set_body(&mut req, body);
        }
        match plan.cap {
            Some(cap) => {
                req.extensions_mut().insert(cap_gate(&shared, profile, cap));
            }
            // A stream folded for a stream:false client is read where it is decoded anyway.
            // (With a cap, the cap's gate is the one below, and the fold reads for itself.)
            None if plan.upstream_stream && !plan.client_stream => {
                req.extensions_mut()
                    .insert(fold_gate(shared.config.max_buffered));
            }
            None => {}
        }
        let retry = config.learn.then(|| clone_request(&req));
        let mut res = inner.call(req).await?;

        if res.status() == StatusCode::BAD_REQUEST {
            if let Some(mut again) = retry {
                let (refused, kept) = Box::pin(refused_param(res, config.max_error_body)).await;
                res = kept;
                if let Some((param, (body, cap))) = refused.and_then(|p| {
                    let stripped = without_param(again.body().bytes(), &p)?;
                    Some((p, stripped))
                }) {
                    shared.learned.learn(&key, &param, config.learn_ttl);
                    tracing::info!(profile = %profile, param = %param, "upstream refused a parameter; retrying without it");
                    if let Some(m) = &shared.metrics {
                        m.inc(
                            "tr_normalize_learned_total",
                            "Parameters learnt from upstream Unsupported parameter answers.",
                            &[("param", &param)],
                        );
                    }
                    plan.cap = plan.cap.or(cap);
                    if let Some(cap) = plan.cap {
                        again
                            .extensions_mut()
                            .insert(cap_gate(&shared, profile, cap));
                    }
                    set_body(&mut again, body);
                    // The same instance again, readied anew: a clone could wait on capacity this
                    // one holds.
                    res = inner.ready().await?.call(again).await?;
                }
            }
        }
        Ok(shape_response(&shared, profile, &plan, res).await)
    }
}

fn report_rewrites(shared: &Shared, profile: Profile, plan: &Plan) {
    if plan.changed.is_empty() {
        return;
    }
    tracing::debug!(profile = %profile, changed = %plan.changed.join(","), "request body normalized");
    if let Some(m) = &shared.metrics {
        for rule in &plan.changed {
            m.inc(
                "tr_normalize_rewrites_total",
                "Request body rewrites, by profile and rule.",
                &[("profile", profile.as_str()), ("rule", rule)],
            );
        }
    }
}

/// The gate that enforces `cap` on the stream coming back: a request extension, so a
/// [`SoftFailureDetectLayer`](crate::soft_failure::SoftFailureDetectLayer) below, which
/// decodes the stream anyway, applies it; [`shape_response`] applies it when none did.
fn cap_gate(shared: &Shared, profile: Profile, cap: u64) -> StreamGate {
    let metrics = shared.metrics.clone();
    let on_cut: Arc<dyn Fn() + Send + Sync> = Arc::new(move || {
        if let Some(m) = &metrics {
            m.inc(
                "tr_normalize_capped_total",
                "Streams ended at the client's max_output_tokens.",
                &[("profile", profile.as_str())],
            );
        }
    });
    let budget = shared.config.max_buffered;
    StreamGate::new(move || Box::new(CapGate::new(cap, budget, Some(on_cut.clone()))))
}

/// Enforces the cap and folds the stream for a client that did not ask for one.
async fn shape_response(
    shared: &Shared,
    profile: Profile,
    plan: &Plan,
    res: Response<ResponseBody>,
) -> Response<ResponseBody> {
    if !res.status().is_success() || !is_event_stream(res.headers()) {
        return res;
    }
    let res = match plan.cap {
        // Applied below, on the events it decoded anyway.
        Some(_) if res.extensions().get::<StreamGated>().is_some() => res,
        Some(cap) => {
            let gate = cap_gate(shared, profile, cap).start();
            res.map(|body| CapBody::new(body, gate).boxed_unsync())
        }
        None => res,
    };
    if plan.upstream_stream && !plan.client_stream {
        // Boxed: the fold's state does not size the future of every request.
        Box::pin(fold(
            res,
            shared.config.max_buffered,
            shared.config.fold_idle_timeout,
        ))
        .await
    } else {
        res
    }
}

/// The parameter a 400 answer refuses, and the answer to pass on if nothing is retried.
///
/// A [`SoftFailure`] from an inner layer already carries the message; otherwise a bounded
/// prefix of the body is read.
async fn refused_param(
    res: Response<ResponseBody>,
    limit: usize,
) -> (Option<String>, Response<ResponseBody>) {
    if let Some(message) = res
        .extensions()
        .get::<SoftFailure>()
        .and_then(|s| s.failure.message.as_deref())
    {
        return (unsupported_param(message), res);
    }
    let (parts, body) = res.into_parts();
    // Bounded in time too: a 400 whose body stalls is answered with what came.
    let peek = read_prefix_within(body, limit, DEFAULT_PEEK_TIMEOUT).await;
    let param = match (&peek.rest, peek.stalled) {
        (None, false) => error_message(&peek.prefix).and_then(|m| unsupported_param(&m)),
        _ => None,
    };
    (param, peek.into_error_response(parts))
}
