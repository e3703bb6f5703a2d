use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use http::{Request, Response, Uri, header};
use http_body_util::BodyExt;
use tower_layer::Layer;
use tower_service::Service;

use super::anchor::Anchor;
use super::search::{search_owner, verdict};
use super::sessions::{SessionStats, Sessions};
use super::watch::{Learn, OwnerWatch, learn_from_event, learn_from_json};
use crate::body::{ReplayBody, ResponseBody, clone_request, full_body};
use crate::classify::FailureClass;
use crate::credentials::policy::OwnerAnswer;
use crate::credentials::{EncryptedOwner, PinnedCredential, Pool, ServedBy, SettleOwners};
use crate::error::BoxError;
use crate::facts::{RequestFacts, session_key};
use crate::marks::AttemptError;
use crate::metrics::Metrics;
use crate::profile::Profile;
use crate::soft_failure::{
    EventsObserved, SoftFailure, StreamObserver, StreamObservers, TerminalEvent,
};
use crate::sse::is_event_stream;

/// Settings of the continuity layer.
#[derive(Debug, Clone)]
pub struct ContinuityConfig {
    /// How long a response id's owner is remembered (the platform keeps stored responses 30
    /// days; a session rarely anchors to one older than a day).
    pub owner_ttl: Duration,
    /// Sessions whose token counts are kept (and exported).
    pub max_sessions: usize,
    /// Largest JSON answer read to learn its id.
    pub max_json: usize,
}

impl Default for ContinuityConfig {
    fn default() -> Self {
        ContinuityConfig {
            owner_ttl: Duration::from_secs(7 * 24 * 3600),
            max_sessions: 512,
            max_json: 8 * 1024 * 1024,
        }
    }
}

/// Applies [`Continuity`]. See the [module docs](super).
#[derive(Clone)]
pub struct ContinuityLayer {
    pool: Arc<Pool>,
    config: ContinuityConfig,
    sessions: Arc<Sessions>,
    metrics: Option<Metrics>,
    profile: Option<Profile>,
}

impl std::fmt::Debug for ContinuityLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContinuityLayer")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl ContinuityLayer {
    /// Continuity over the credentials of `pool` (owners live in its state store).
    pub fn new(pool: Arc<Pool>) -> Self {
        Self::with_config(pool, ContinuityConfig::default())
    }

    /// With settings.
    pub fn with_config(pool: Arc<Pool>, config: ContinuityConfig) -> Self {
        ContinuityLayer {
            sessions: Arc::new(Sessions::new(config.max_sessions)),
            pool,
            config,
            metrics: None,
            profile: None,
        }
    }

    /// The upstream's profile for credentials that set none (as the stack's
    /// `BodyNormalizeLayer` has it). Without one, it is read from each request's URL.
    pub fn profile(mut self, profile: Profile) -> Self {
        self.profile = Some(profile);
        self
    }

    /// Reports into `metrics`.
    pub fn metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Records that `credential` owns `response_id`.
    pub fn record_owner(&self, response_id: &str, credential: &str) {
        self.pool.state().put_owner(
            response_id,
            credential,
            SystemTime::now() + self.config.owner_ttl,
        );
    }

    /// The credential that owns `response_id`, if known.
    pub fn owner_of(&self, response_id: &str) -> Option<String> {
        self.pool.state().owner(response_id, SystemTime::now())
    }

    /// A session's token accounting.
    pub fn session_stats(&self, session: &str) -> Option<SessionStats> {
        self.sessions.get(session)
    }

    pub(super) fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    /// The profile a request goes out with when its credential names none.
    fn stack_profile(&self, uri: &Uri) -> Profile {
        self.profile
            .unwrap_or_else(|| Profile::from_base_url(&uri.to_string()))
    }

    /// Whether ids `credential` creates can be anchors later. The ChatGPT Codex backend
    /// stores nothing over HTTP (`store` is forced off there, and normalize refuses anchors
    /// to it), so its ids would only fill the owner map.
    fn keeps_anchors(&self, credential: &str, stack_profile: Profile) -> bool {
        let member = self.pool.entry(credential).map(|e| &e.member);
        let profile = member
            .and_then(|m| {
                m.profile
                    .or_else(|| m.base_url.as_deref().map(Profile::from_base_url))
            })
            .unwrap_or(stack_profile);
        profile != Profile::ChatgptCodex
    }
}

impl<S> Layer<S> for ContinuityLayer {
    type Service = Continuity<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Continuity {
            inner,
            layer: self.clone(),
        }
    }
}

/// Pins anchored requests to their owner and keeps recovery errors retryable.
#[derive(Clone)]
pub struct Continuity<S> {
    inner: S,
    layer: ContinuityLayer,
}

impl<S> std::fmt::Debug for Continuity<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Continuity").finish_non_exhaustive()
    }
}

struct Learner {
    layer: ContinuityLayer,
    credential: Option<Arc<str>>,
    session: Option<String>,
    stack_profile: Profile,
    /// On a shared store: where the answer's body learns that an owner write is pending.
    mark: Option<Arc<AtomicU64>>,
}

impl Learn for Learner {
    fn response_id(&mut self, id: &str) {
        if let Some(c) = &self.credential {
            if self.layer.keeps_anchors(c, self.stack_profile) {
                self.layer.record_owner(id, c);
                if let Some(mark) = &self.mark {
                    mark.store(self.layer.pool.state().owner_mark(), Ordering::Release);
                }
            }
        }
    }

    fn usage(&mut self, input_tokens: u64) {
        if let Some(s) = &self.session {
            self.layer
                .sessions
                .record(s, input_tokens, self.layer.metrics.as_ref());
        }
    }
}

/// Learns from the events SoftFailureDetectLayer already parses, so continuity does not parse
/// the stream a second time.
struct Observer {
    layer: ContinuityLayer,
    session: Option<String>,
    stack_profile: Profile,
    mark: Option<Arc<AtomicU64>>,
}

impl Observer {
    fn learner(&self, credential: Option<&str>) -> Learner {
        Learner {
            layer: self.layer.clone(),
            credential: credential.map(Arc::from),
            session: self.session.clone(),
            stack_profile: self.stack_profile,
            mark: self.mark.clone(),
        }
    }
}

impl StreamObserver for Observer {
    fn event(&self, credential: Option<&str>, event_type: &str, data: &[u8]) {
        if !OwnerWatch::<Learner>::wanted(event_type) {
            return;
        }
        // Every attempt's created event names its own credential, so a failed attempt's id
        // goes to the credential that made it; the answer's id to the one that answered.
        learn_from_event(
            data,
            event_type,
            event_type == "response.created",
            &mut self.learner(credential),
        );
    }

    /// Ids come from `response.created`, usage from the terminal event only.
    fn reads_content(&self) -> bool {
        false
    }

    /// The session's input tokens, from the usage read once for every observer.
    fn terminal(&self, credential: Option<&str>, terminal: &TerminalEvent<'_>) {
        if let Some(n) = terminal.usage.and_then(|u| u.input_tokens) {
            self.learner(credential).usage(n);
        }
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S> Service<Request<ReplayBody>> for Continuity<S>
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
        // The instance readied in poll_ready serves this request; the clone stays behind.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let layer = self.layer.clone();
        let facts = RequestFacts::of(&mut req);
        let session = session_key(req.headers(), &facts);
        let anchor = Anchor::of(&req, &facts);
        let local_owner = anchor.as_ref().and_then(|a| layer.owner_of(a.id()));
        let stack_profile = layer.stack_profile(req.uri());
        let mark = layer
            .pool
            .state()
            .is_shared()
            .then(|| Arc::new(AtomicU64::new(0)));
        StreamObservers::add(
            &mut req,
            Arc::new(Observer {
                layer: layer.clone(),
                session: session.clone(),
                stack_profile,
                mark: mark.clone(),
            }),
        );
        Box::pin(async move {
            // Not in the local view: a shared store asks its backend (another replica may
            // have answered the anchor a moment ago). In memory this is the same miss.
            let owner = match (&anchor, local_owner) {
                (Some(a), None) if layer.pool.state().is_shared() => {
                    layer.pool.state().find_owner(a.id()).await
                }
                (_, owner) => owner,
            };
            if let Some(o) = &owner {
                req.extensions_mut()
                    .insert(PinnedCredential(Arc::from(o.as_str())));
            }
            // Encrypted items belong to the account that answered the previous turn (the
            // anchor's owner, else the session's last account, a fallback included).
            let encrypted_owner = owner
                .clone()
                .or_else(|| session.as_deref().and_then(|s| layer.pool.last_served(s)));
            if let Some(o) = encrypted_owner {
                req.extensions_mut().insert(EncryptedOwner(Arc::from(o)));
            }
            let retry_copy = (anchor.is_some() && owner.is_none()).then(|| clone_request(&req));
            let result = inner.call(req).await;
            let res = match (result, anchor) {
                (Ok(res), Some(anchor)) => {
                    Box::pin(recover(res, retry_copy, &mut inner, &layer, &anchor)).await
                }
                (Ok(res), None) => res,
                (Err(e), Some(_)) => {
                    // Never let a lost anchor look like a missing one: the client must retry
                    // with previous_response_id intact.
                    let phase = AttemptError::find(&*e).map(|a| a.phase.as_str());
                    tracing::info!(error = %e, phase, "transport loss on an anchored request; answering 502 upstream_unavailable");
                    count(&layer, "transport_to_502");
                    return Ok(upstream_unavailable());
                }
                (Err(e), None) => return Err(e),
            };
            let res = learn(res, &layer, session, stack_profile, mark.clone()).await;
            Ok(match mark {
                // A new id's owner reaches the shared store before the frame that carries it.
                Some(mark) if is_event_stream(res.headers()) => {
                    let state = layer.pool.state().clone();
                    res.map(|b| SettleOwners::new(b, state, mark).boxed_unsync())
                }
                _ => res,
            })
        })
    }
}

pub(super) fn count(layer: &ContinuityLayer, what: &str) {
    if let Some(m) = &layer.metrics {
        m.inc(
            "tr_continuity_actions_total",
            "What the continuity layer did, by action.",
            &[("action", what)],
        );
    }
}

pub(super) fn upstream_unavailable() -> Response<ResponseBody> {
    crate::credentials::policy::anchored_transport_loss().into_stack_response()
}

/// Handles an anchored request's answer: maps a stream cut before content to 502; searches
/// the other credentials when the owner is unknown and the answer says the anchor is missing.
async fn recover<S>(
    res: Response<ResponseBody>,
    retry_copy: Option<Request<ReplayBody>>,
    inner: &mut S,
    layer: &ContinuityLayer,
    anchor: &Anchor,
) -> Response<ResponseBody>
where
    S: Service<Request<ReplayBody>, Response = Response<ResponseBody>, Error = BoxError>,
{
    let cut = res
        .extensions()
        .get::<SoftFailure>()
        .filter(|s| s.before_content)
        .is_some_and(|s| {
            matches!(
                s.failure.class,
                FailureClass::Transient | FailureClass::StaleConnection
            )
        });
    if cut && res.status().is_success() {
        // A stream cut before content: retryable, not a missing anchor.
        count(layer, "cut_stream_to_502");
        return upstream_unavailable();
    }
    match (verdict(&res, anchor), retry_copy) {
        (OwnerAnswer::Missing, Some(template)) => {
            search_owner(res, &template, inner, layer, anchor).await
        }
        // The owner itself says it is gone (genuine), or the answer is not about the anchor.
        _ => res,
    }
}

/// Learns the owner of the answer's response id and the session's usage.
async fn learn(
    res: Response<ResponseBody>,
    layer: &ContinuityLayer,
    session: Option<String>,
    stack_profile: Profile,
    mark: Option<Arc<AtomicU64>>,
) -> Response<ResponseBody> {
    let credential = res.extensions().get::<ServedBy>().map(|s| s.0.clone());
    if credential.is_none() && session.is_none() {
        return res;
    }
    let mut learner = Learner {
        layer: layer.clone(),
        credential,
        session,
        stack_profile,
        mark,
    };
    if res.extensions().get::<EventsObserved>().is_some() {
        return res; // the observer above learns as the events pass
    }
    if is_event_stream(res.headers()) {
        return res.map(|b| OwnerWatch::new(b, learner).boxed_unsync());
    }
    let json = res
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("json"));
    let small = http_body::Body::size_hint(res.body())
        .exact()
        .is_some_and(|n| n as usize <= layer.config.max_json);
    if !(res.status().is_success() && json && small) {
        return res;
    }
    // Only bodies already in memory (exact size) are read here; nothing streams.
    let (parts, body) = res.into_parts();
    match body.collect().await {
        Ok(c) => {
            let bytes = c.to_bytes();
            learn_from_json(&bytes, &mut learner);
            // The client may send its next turn to another replica at once: the owner
            // reaches the shared store before the answer does (bounded; at once in memory).
            let state = layer.pool.state();
            state.owners_settled(state.owner_mark()).await;
            Response::from_parts(parts, full_body(bytes))
        }
        Err(e) => {
            tracing::info!(error = %e, "the upstream's JSON answer broke off");
            upstream_unavailable()
        }
    }
}
