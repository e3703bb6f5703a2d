//! [`ResponsesStack`]: every layer, in the right order, in one line.
//!
//! ```text
//! CompactRouteLayer        decides remote / compact_model / local for compaction requests
//! ContinuityLayer          pins previous_response_id owners, maps recovery errors
//! CredentialRotateLayer    picks a credential, retries on classified failure
//! BodyNormalizeLayer       shapes the body for the chosen upstream's profile
//! SoftFailureDetectLayer   holds back lifecycle events, classifies, marks the response
//! HeadTimeoutLayer         bounds one attempt's wait for its response head
//! FreshConnectionLayer     stale-connection retry
//! hyper-util Client        rustls, via a connector that tags connections (or reqwest)
//! ```
//!
//! Why this order: compaction is decided once per client request, before any credential is
//! chosen, so a failed remote compaction falls back without cooling a key. Continuity pins
//! the owner before rotation picks. Rotation sits outside normalization because each
//! credential may point at an upstream with another profile, and outside soft-failure
//! detection because it retries on what that layer finds before the client sees anything.
//! The stale-connection retry is innermost: it is a connection's fault, never a
//! credential's. The head timeout sits just above it, so it bounds one attempt's wait for
//! an answer and nothing more: answers that take long on purpose (a folded `stream:false`
//! answer, a local compaction summary) are bounded by idle timeouts in their layers.
//!
//! ```
//! use tower::ServiceExt;
//! use tower_responses::stack::ResponsesStack;
//! use tower_responses::body::ReplayBody;
//! use tower_responses::connect::UpstreamClientBuilder;
//! use tower_responses::testing::MockUpstream;
//! use http_body_util::BodyExt;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let upstream = MockUpstream::start().await.unwrap();
//! let svc = ResponsesStack::new().client(&UpstreamClientBuilder::new());
//! let req = http::Request::post(format!("{}/responses", upstream.base_url()))
//!     .header("content-type", "application/json")
//!     .body(ReplayBody::new(r#"{"model":"gpt-5.5","stream":true,"input":"hi"}"#))
//!     .unwrap();
//! let res = svc.oneshot(req).await.unwrap();
//! assert_eq!(res.status(), 200);
//! let text = res.into_body().collect().await.unwrap().to_bytes();
//! assert!(String::from_utf8_lossy(&text).contains("response.completed"));
//! # }
//! ```

mod forward;
mod head_timeout;

pub use forward::Forward;
pub use head_timeout::{HeadTimeout, HeadTimeoutElapsed, HeadTimeoutFuture, HeadTimeoutLayer};

use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use tower::util::{BoxCloneSyncService, Either};
use tower_layer::{Identity, Layer};
use tower_service::Service;

use crate::body::{ReplayBody, ResponseBody};
use crate::compact::{CompactConfig, CompactRouteLayer};
use crate::connect::UpstreamClientBuilder;
use crate::continuity::{ContinuityConfig, ContinuityLayer};
use crate::credentials::{CredentialRotateLayer, Pool, RotateConfig};
use crate::error::BoxError;
use crate::fresh::FreshConnectionLayer;
use crate::metrics::Metrics;
use crate::normalize::{BodyNormalizeLayer, LearnedParams, NormalizeConfig};
use crate::profile::Profile;
use crate::soft_failure::{SoftFailureConfig, SoftFailureDetectLayer};

/// The stack as one type-erased, cloneable service.
pub type StackService = BoxCloneSyncService<Request<ReplayBody>, Response<ResponseBody>, BoxError>;

/// Builds the layer stack; every layer is on by default where it can be and can be switched
/// off or configured.
#[derive(Debug, Clone, Default)]
pub struct ResponsesStack {
    pool: Option<Arc<Pool>>,
    metrics: Option<Metrics>,
    upstream_base: Option<String>,
    soft_failure: Option<SoftFailureConfig>,
    soft_failure_off: bool,
    rotate: RotateConfig,
    continuity: ContinuityConfig,
    continuity_off: bool,
    compact: CompactConfig,
    compact_off: bool,
    normalize: Option<NormalizeConfig>,
    normalize_off: bool,
    profile: Option<Profile>,
    head_timeout: Option<Duration>,
    head_timeout_off: bool,
}

/// How long an attempt waits for its response head unless configured otherwise.
pub const DEFAULT_HEAD_TIMEOUT: Duration = Duration::from_secs(600);

impl ResponsesStack {
    /// The default stack: soft-failure detection always; rotation and continuity once a
    /// credential pool is given.
    pub fn new() -> Self {
        Self::default()
    }

    /// Rotate over these credentials (and pin conversations to them).
    pub fn pool(mut self, pool: Arc<Pool>) -> Self {
        self.pool = Some(pool);
        self
    }

    /// Report every layer's metrics here.
    pub fn metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// The default upstream base URL (needed when credentials carry their own `base_url`).
    pub fn upstream_base(mut self, base: impl Into<String>) -> Self {
        self.upstream_base = Some(base.into());
        self
    }

    /// Configures soft-failure detection.
    pub fn soft_failure(mut self, config: SoftFailureConfig) -> Self {
        self.soft_failure = Some(config);
        self
    }

    /// Switches soft-failure detection off.
    pub fn without_soft_failure(mut self) -> Self {
        self.soft_failure_off = true;
        self
    }

    /// Configures rotation.
    pub fn rotate(mut self, config: RotateConfig) -> Self {
        self.rotate = config;
        self
    }

    /// Configures continuity.
    pub fn continuity(mut self, config: ContinuityConfig) -> Self {
        self.continuity = config;
        self
    }

    /// Switches continuity off.
    pub fn without_continuity(mut self) -> Self {
        self.continuity_off = true;
        self
    }

    /// The upstream's profile (default: read from each request's URL).
    pub fn profile(mut self, profile: Profile) -> Self {
        self.profile = Some(profile);
        self
    }

    /// Configures body normalization (its `profile` is replaced by the stack's when one was
    /// set with [`profile`](Self::profile)).
    pub fn normalize(mut self, config: NormalizeConfig) -> Self {
        self.normalize = Some(config);
        self
    }

    /// Switches body normalization off.
    pub fn without_normalize(mut self) -> Self {
        self.normalize_off = true;
        self
    }

    /// How long one upstream attempt may take to answer with its response head (default
    /// [`DEFAULT_HEAD_TIMEOUT`]). See [`HeadTimeoutLayer`].
    pub fn head_timeout(mut self, timeout: Duration) -> Self {
        self.head_timeout = Some(timeout);
        self
    }

    /// Switches the per-attempt head timeout off (the inner client bounds it, or nothing does).
    pub fn without_head_timeout(mut self) -> Self {
        self.head_timeout_off = true;
        self
    }

    /// Configures compaction routing.
    pub fn compact(mut self, config: CompactConfig) -> Self {
        self.compact = config;
        self
    }

    /// Switches compaction routing off (compaction requests pass as they are).
    pub fn without_compact(mut self) -> Self {
        self.compact_off = true;
        self
    }

    /// The whole stack on a new hyper-util client from `builder`, with
    /// [`crate::fresh::FreshConnectionLayer`] at the bottom.
    pub fn client(self, builder: &UpstreamClientBuilder) -> StackService {
        let fresh = self.fresh_layer();
        self.service(fresh.build(builder))
    }

    /// The whole stack on your `reqwest::Client`, with
    /// [`crate::fresh::FreshConnectionLayer`] at the bottom; what it can tell about reqwest's
    /// connections is in [`ReqwestService`](crate::connect::ReqwestService)'s docs.
    #[cfg(feature = "reqwest")]
    pub fn reqwest(self, client: crate::connect::ReqwestService) -> StackService {
        let fresh = self.fresh_layer();
        self.service(fresh.layer(client))
    }

    fn fresh_layer(&self) -> FreshConnectionLayer {
        let mut fresh = FreshConnectionLayer::new();
        if let Some(m) = &self.metrics {
            fresh = fresh.metrics(m.clone());
        }
        fresh
    }

    /// Wraps `inner` (the upstream client service) in the stack.
    pub fn service<S>(self, inner: S) -> StackService
    where
        S: Service<Request<ReplayBody>, Response = Response<ResponseBody>, Error = BoxError>
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        // One concrete type from the client up, boxed once at the top: a box per layer cost
        // an allocation per layer for each clone of the layer below it and a second boxed
        // future per layer per request. A switched-off layer is `Either::Right`, a pass-through.
        let head_timeout = (!self.head_timeout_off)
            .then(|| HeadTimeoutLayer::new(self.head_timeout.unwrap_or(DEFAULT_HEAD_TIMEOUT)));
        let svc = optional(head_timeout).layer(inner);
        let soft_failure = (!self.soft_failure_off).then(|| {
            let mut layer =
                SoftFailureDetectLayer::with_config(self.soft_failure.clone().unwrap_or_default());
            if let Some(m) = &self.metrics {
                layer = layer.metrics(m.clone());
            }
            layer
        });
        let svc = optional(soft_failure).layer(svc);
        let normalize = (!self.normalize_off).then(|| {
            let mut config = self.normalize.clone().unwrap_or_default();
            if let Some(p) = self.profile {
                config.profile = p;
            }
            let mut normalize = BodyNormalizeLayer::new(config);
            if let Some(m) = &self.metrics {
                normalize = normalize.metrics(m.clone());
            }
            // Replicas on one shared store learn refused parameters together.
            if let Some(state) = self
                .pool
                .as_ref()
                .map(|p| p.state())
                .filter(|s| s.is_shared())
            {
                normalize = normalize.learned_params(LearnedParams::shared(state.clone()));
            }
            normalize
        });
        let svc = optional(normalize).layer(svc);
        let rotate = self.pool.as_ref().map(|pool| {
            let mut rotate = CredentialRotateLayer::with_config(pool.clone(), self.rotate.clone());
            if let Some(base) = &self.upstream_base {
                rotate = rotate.upstream_base(base.clone());
            }
            if let Some(m) = &self.metrics {
                rotate = rotate.metrics(m.clone());
            }
            rotate
        });
        let svc = optional(rotate).layer(svc);
        let continuity = self
            .pool
            .as_ref()
            .filter(|_| !self.continuity_off)
            .map(|pool| {
                let mut continuity =
                    ContinuityLayer::with_config(pool.clone(), self.continuity.clone());
                if let Some(m) = &self.metrics {
                    continuity = continuity.metrics(m.clone());
                }
                if let Some(p) = self.profile {
                    continuity = continuity.profile(p);
                }
                continuity
            });
        let svc = optional(continuity).layer(svc);
        let compact = (!self.compact_off).then(|| {
            let mut compact = CompactRouteLayer::new(self.compact.clone());
            if let Some(p) = self.profile {
                compact = compact.profile(p);
            }
            if let Some(m) = &self.metrics {
                compact = compact.metrics(m.clone());
            }
            if let Some(state) = self
                .pool
                .as_ref()
                .map(|p| p.state())
                .filter(|s| s.is_shared())
            {
                compact = compact.shared_state(state.clone());
            }
            compact
        });
        StackService::new(optional(compact).layer(svc))
    }
}

/// A layer that may be switched off: `Right` passes the request to the inner service as is.
fn optional<L>(layer: Option<L>) -> Either<L, Identity> {
    match layer {
        Some(layer) => Either::Left(layer),
        None => Either::Right(Identity::new()),
    }
}
