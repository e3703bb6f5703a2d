use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, Uri, header};
use tower::ServiceExt;
use tower_layer::Layer;
use tower_service::Service;

use super::local::{Summarised, answer, summarise};
use super::marker::expand_marked_items;
use super::memory::Refusals;
use super::remote::{Outcome, attempt};
use super::request::{compaction_form, kept_user_messages, summary_request, with_model};
use super::{
    CompactConfig, CompactForm, CompactMode, Compacted, RemoteCompactAttempt, RemotePolicy,
};
use crate::body::{ReplayBody, ResponseBody, clone_request};
use crate::error::BoxError;
use crate::facts::RequestFacts;
use crate::json::RawObject;
use crate::metrics::Metrics;
use crate::profile::Profile;

/// Applies [`CompactRoute`] to a service. See the [module docs](super).
#[derive(Debug, Clone)]
pub struct CompactRouteLayer {
    config: Arc<CompactConfig>,
    profile: Option<Profile>,
    metrics: Option<Metrics>,
    refusals: Arc<Refusals>,
}

impl Default for CompactRouteLayer {
    fn default() -> Self {
        Self::new(CompactConfig::default())
    }
}

impl CompactRouteLayer {
    /// The layer with this configuration.
    pub fn new(config: CompactConfig) -> Self {
        CompactRouteLayer {
            config: Arc::new(config),
            profile: None,
            metrics: None,
            refusals: Arc::default(),
        }
    }

    /// Shares refused models with the replicas on `state` (the pool's store): a model one
    /// replica found refused goes to the local summary on all of them.
    pub fn shared_state(mut self, state: Arc<dyn crate::credentials::PoolState>) -> Self {
        self.refusals = Arc::new(Refusals::shared(state));
        self
    }

    /// The upstream's profile, used when a request carries no [`Profile`] extension. Without
    /// one, the profile is read from each request's URL ([`Profile::from_base_url`]).
    pub fn profile(mut self, profile: Profile) -> Self {
        self.profile = Some(profile);
        self
    }

    /// Reports into `metrics`: `tr_compactions_total{mode, form}`,
    /// `tr_compact_refusals_total{form}`, the `tr_compact_models_unsupported` gauge and
    /// `tr_compact_summaries_expanded_total`.
    pub fn metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// The configuration.
    pub fn config(&self) -> &CompactConfig {
        &self.config
    }

    /// Models the upstream refused to compact and that are still remembered (lower-cased,
    /// sorted). Shared by every service this layer (or a clone of it) made.
    pub fn unsupported_models(&self) -> Vec<String> {
        self.refusals.models()
    }

    fn count(&self, name: &'static str, help: &'static str, labels: &[(&str, &str)]) {
        if let Some(m) = &self.metrics {
            m.inc(name, help, labels);
        }
    }

    fn set_unsupported_gauge(&self) {
        if let Some(m) = &self.metrics {
            m.set(
                "tr_compact_models_unsupported",
                "Models currently remembered as refusing remote compaction.",
                &[],
                self.refusals.len() as f64,
            );
        }
    }

    /// Whether `model` should be tried remotely; the reason when not.
    fn remote_verdict(
        &self,
        policy: RemotePolicy,
        profile: Profile,
        form: CompactForm,
        model: &str,
    ) -> Result<(), &'static str> {
        match policy {
            RemotePolicy::Never => Err("remote compaction is disabled (remote = never)"),
            RemotePolicy::Always => Ok(()),
            RemotePolicy::Auto if self.refusals.is_refused(profile, form, model) => {
                Err("the upstream refused this model recently")
            }
            RemotePolicy::Auto
                if self.config.is_listed(model) || self.config.probe_unknown_models =>
            {
                Ok(())
            }
            RemotePolicy::Auto => Err("the model is not known to support remote compaction"),
        }
    }
}

impl<S> Layer<S> for CompactRouteLayer {
    type Service = CompactRoute<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CompactRoute {
            inner,
            layer: self.clone(),
        }
    }
}

/// Routes compaction requests to the upstream's compaction, another model, or a local
/// summary, and expands local summaries on every request. See the [module docs](super).
#[derive(Debug, Clone)]
pub struct CompactRoute<S> {
    inner: S,
    layer: CompactRouteLayer,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S> Service<Request<ReplayBody>> for CompactRoute<S>
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

    fn call(&mut self, mut req: Request<ReplayBody>) -> Self::Future {
        expand_summaries(&mut req, &self.layer);
        let Some(form) = compaction_form(&req) else {
            // An ordinary turn goes straight to the instance readied in poll_ready: nothing of
            // the routing below sizes its future, and the stack below is not cloned for it.
            return Box::pin(self.inner.call(req));
        };
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(route(inner, self.layer.clone(), req, form))
    }
}

/// Whether an upstream of this profile compacts remotely in this form at all.
fn profile_compacts(profile: Profile, form: CompactForm) -> bool {
    match profile {
        Profile::Openai => true,
        // The Codex backend compacts through `/responses` (v2); `/responses/compact` is 404.
        Profile::ChatgptCodex => form == CompactForm::V2,
        Profile::Generic => false,
    }
}

fn set_body(req: &mut Request<ReplayBody>, body: Bytes) {
    req.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    *req.body_mut() = ReplayBody::new(body);
    RequestFacts::invalidate(req);
}

/// The `/responses` URI next to a compaction URI (same base, prefix and all).
fn responses_uri(uri: &Uri) -> Uri {
    let path = uri.path().trim_end_matches('/');
    let path = path.strip_suffix("/compact").unwrap_or(path);
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = path.parse().ok();
    Uri::from_parts(parts).unwrap_or_else(|_| uri.clone())
}

fn mark(
    mut res: Response<ResponseBody>,
    mode: CompactMode,
    form: CompactForm,
) -> Response<ResponseBody> {
    res.extensions_mut().insert(Compacted { mode, form });
    res
}

/// Replaces locally compacted items by their summary messages, on every request.
fn expand_summaries(req: &mut Request<ReplayBody>, layer: &CompactRouteLayer) {
    if let Some((body, n)) = expand_marked_items(req.body().bytes()) {
        set_body(req, body);
        tracing::debug!(
            items = n,
            "expanded locally compacted items into summary messages"
        );
        if let Some(m) = &layer.metrics {
            m.add(
                "tr_compact_summaries_expanded_total",
                "Locally compacted items replaced by their summary before going upstream.",
                &[],
                n as f64,
            );
        }
    }
}

/// A compaction request in `form`: the upstream's compaction, another model, or a local
/// summary.
async fn route<S>(
    mut inner: S,
    layer: CompactRouteLayer,
    req: Request<ReplayBody>,
    form: CompactForm,
) -> Result<Response<ResponseBody>, BoxError>
where
    S: Service<Request<ReplayBody>, Response = Response<ResponseBody>, Error = BoxError>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    let Some(model) = RawObject::parse(req.body().bytes())
        .ok()
        .and_then(|o| o.get_str("model"))
    else {
        // Nothing to decide from: the upstream answers as it would.
        return inner.oneshot(req).await;
    };
    let profile = req
        .extensions()
        .get::<Profile>()
        .copied()
        .or(layer.profile)
        .unwrap_or_else(|| Profile::from_base_url(&req.uri().to_string()));
    let config = layer.config.clone();
    let policy = config.policy_for(&model);
    let compact_model = config
        .compact_model_for(&model)
        .filter(|c| *c != model)
        .map(str::to_owned);

    let mut why = String::new();
    let mut candidates = Vec::new();
    if policy != RemotePolicy::Always && !profile_compacts(profile, form) {
        why = format!("the {profile} upstream cannot compact remotely in the {form} form");
    } else {
        let tries = [
            (CompactMode::Remote, Some(model.clone())),
            (CompactMode::CompactModel, compact_model),
        ];
        for (mode, m) in tries {
            let Some(m) = m else { continue };
            match layer.remote_verdict(policy, profile, form, &m) {
                Ok(()) => candidates.push((mode, m)),
                Err(reason) => {
                    tracing::debug!(model = %m, mode = mode.as_str(), reason, "not compacting remotely");
                    why = format!("{m}: {reason}");
                }
            }
        }
    }

    if policy == RemotePolicy::Auto {
        // Refusals expire silently; keep the gauge honest whenever one may have.
        layer.set_unsupported_gauge();
    }
    for (mode, m) in candidates {
        let mut attempt_req = clone_request(&req);
        if m != model {
            match with_model(req.body().bytes(), &m) {
                Some(body) => set_body(&mut attempt_req, body),
                None => continue,
            }
        }
        attempt_req.extensions_mut().insert(RemoteCompactAttempt);
        // Every attempt goes through the instance readied in poll_ready (by `&mut`): a clone
        // would wait for capacity this one holds, such as a concurrency limit's permit.
        match Box::pin(attempt(&mut inner, attempt_req, form)).await? {
            Outcome::Compacted(res) => {
                tracing::info!(model = %m, form = form.as_str(), mode = mode.as_str(), "compacted by the upstream");
                layer.count(
                    "tr_compactions_total",
                    "Compaction requests answered, by the path that answered them and the request form.",
                    &[("mode", mode.as_str()), ("form", form.as_str())],
                );
                return Ok(mark(res, mode, form));
            }
            Outcome::Refused(reason) => {
                tracing::info!(model = %m, form = form.as_str(), %reason, "the upstream refused remote compaction; falling back");
                layer.count(
                    "tr_compact_refusals_total",
                    "Remote compaction attempts the upstream refused (model or route), by form.",
                    &[("form", form.as_str())],
                );
                if policy == RemotePolicy::Auto {
                    layer
                        .refusals
                        .remember(profile, form, &m, config.unsupported_ttl());
                    layer.set_unsupported_gauge();
                }
                why = format!("{m}: refused by the upstream ({reason})");
            }
            Outcome::Failed(res) => {
                tracing::info!(model = %m, form = form.as_str(), status = res.status().as_u16(), "remote compaction failed for a reason that is not the model's; passing the answer on");
                return Ok(res);
            }
        }
    }

    tracing::info!(model = %model, form = form.as_str(), mode = "local", reason = %why, "compacting locally");
    let Some(body) = summary_request(req.body().bytes(), config.summary_prompt()) else {
        return inner.oneshot(req).await;
    };
    let mut summary_req = clone_request(&req);
    *summary_req.uri_mut() = responses_uri(req.uri());
    set_body(&mut summary_req, body);
    summary_req.headers_mut().insert(
        header::ACCEPT,
        HeaderValue::from_static("text/event-stream"),
    );
    match summarise(
        &mut inner,
        summary_req,
        config.max_summary_bytes,
        config.summary_idle_timeout(),
    )
    .await?
    {
        Summarised::Done(summary) => {
            let kept = match form {
                CompactForm::V1 => kept_user_messages(
                    req.body().bytes(),
                    config.keep_user_tokens.saturating_mul(4),
                ),
                CompactForm::V2 => Vec::new(),
            };
            layer.count(
                "tr_compactions_total",
                "Compaction requests answered, by the path that answered them and the request form.",
                &[("mode", CompactMode::Local.as_str()), ("form", form.as_str())],
            );
            tracing::info!(model = %model, form = form.as_str(), summary_bytes = summary.text.len(), kept = kept.len(), "compacted locally");
            Ok(mark(
                answer(form, summary, &kept, &model),
                CompactMode::Local,
                form,
            ))
        }
        Summarised::Failed(res) => {
            tracing::warn!(model = %model, form = form.as_str(), status = res.status().as_u16(), "local compaction failed");
            Ok(res)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_uri_keeps_the_prefix() {
        let u: Uri = "https://chatgpt.com/backend-api/codex/responses/compact?x=1"
            .parse()
            .unwrap();
        assert_eq!(
            responses_uri(&u),
            "https://chatgpt.com/backend-api/codex/responses"
        );
        let u: Uri = "/v1/responses".parse().unwrap();
        assert_eq!(responses_uri(&u), "/v1/responses");
    }

    #[test]
    fn profiles() {
        assert!(profile_compacts(Profile::Openai, CompactForm::V1));
        assert!(!profile_compacts(Profile::ChatgptCodex, CompactForm::V1));
        assert!(profile_compacts(Profile::ChatgptCodex, CompactForm::V2));
        assert!(!profile_compacts(Profile::Generic, CompactForm::V2));
    }
}
