//! Compaction that never breaks a session (seed 000).
//!
//! Long agent sessions compact their history: the Codex CLI either posts it to
//! `{base}/responses/compact` (**v1**, unary JSON) or sends a normal streaming `/responses`
//! request whose last `input` item is `{"type":"compaction_trigger"}` (**v2**). Upstreams
//! refuse some models there (`gpt-5.5` got `502 error code: 502` from the compact route), the
//! ChatGPT Codex backend answers 404 to v1, and OpenAI-compatible providers cannot compact at
//! all; the client has no fallback and the turn fails. [`CompactRouteLayer`]:
//!
//! - **recognises** both forms ([`compaction_form`]);
//! - **decides** per model: [`RemotePolicy`] `auto` (default), `always` or `never`, an
//!   optional `compact_model`, per-model overrides. In `auto` a request goes to the upstream's
//!   compaction when the profile can compact in that form (the platform: both; the Codex
//!   backend: v2 only; generic: neither) and the model is listed in `remote_models` (the GPT-5
//!   family up to 5.4 by default, [`DEFAULT_REMOTE_MODELS`]) or unknown and probed. A
//!   model-shaped refusal (unsupported model, a 404/502 on the compact route, a v2 answer
//!   without a compaction item) is remembered for `unsupported_ttl_secs`, so the next request
//!   skips the failing attempt;
//! - **falls back in the same request**: first the same request with `compact_model`, then a
//!   **local summary**. The layer asks the upstream's normal `/responses` route (same base
//!   URL, `stream: true`, no tools, the conversation plus a summarisation request as the last
//!   user message, `prompt_cache_key` and session headers kept) and answers in the shape the
//!   client asked for: v1 JSON `{"output":[...recent user messages..., {"type":"compaction",
//!   "encrypted_content":"trsum1:..."}]}`, or a v2 stream with exactly one compaction item
//!   and a `response.completed` carrying the upstream's usage;
//! - **expands its own items on every request**: the summary travels inside the compaction
//!   item, encoded with a versioned marker ([`MARKER_PREFIX`], base64), so no server-side
//!   state is needed and any replica can read it. Before anything goes upstream, each marked
//!   item in `input` becomes a user message holding [`SUMMARY_PREFIX`] and the summary
//!   ([`expand_marked_items`]). The upstream never sees a marked item.
//!
//! A refused remote attempt is consumed by the layer (the client never sees it) and is the
//! route's failure, not the credential's: the attempt carries a [`RemoteCompactAttempt`]
//! request extension so a credential layer inside can leave the credential alone. Put the
//! layer outermost, as `ResponsesStack` does; it also works around a bare client
//! (`UpstreamClientBuilder::new().service()`).
//!
//! Answers the layer chose a path for carry a [`Compacted`] response extension. Metrics:
//! `tr_compactions_total{mode=remote|compact_model|local, form=v1|v2}`,
//! `tr_compact_refusals_total{form}`, `tr_compact_models_unsupported` (gauge),
//! `tr_compact_summaries_expanded_total`. Tracing events (targets under `tower_responses::compact`)
//! say which path was taken and why; they name models, never bodies or headers.
//!
//! # Configuration
//!
//! [`CompactConfig`] deserialises from the proxy's TOML (every key optional):
//!
//! ```toml
//! [compact]
//! remote = "auto"                 # auto | always | never
//! compact_model = "gpt-5.4"       # tried remotely when the session's model is refused
//! remote_models = ["gpt-5", "gpt-5-*", "gpt-5.1", "gpt-5.1-*", "gpt-5.4*"]
//! probe_unknown_models = true     # auto: try unlisted models once, remember refusals
//! unsupported_ttl_secs = 21600    # how long a refusal is remembered
//! keep_user_tokens = 20000        # v1 local answers keep this many tokens of user messages
//! max_summary_bytes = 262144
//! summary_idle_timeout_secs = 300 # a local summary may take long, but not go silent this long
//! # summary_prompt = "..."        # replaces DEFAULT_SUMMARY_PROMPT
//!
//! [compact.models."gpt-5.5"]      # per-model overrides
//! remote = "never"
//! compact_model = "gpt-5.4"
//! ```
//!
//! # Example
//!
//! ```
//! use bytes::Bytes;
//! use http_body_util::{BodyExt, Full};
//! use tower::{Layer, ServiceExt, service_fn};
//! use tower_responses::body::{full_body, ReplayBody, ResponseBody};
//! use tower_responses::compact::{CompactConfig, CompactRouteLayer, MARKER_PREFIX};
//! use tower_responses::profile::Profile;
//! use tower_responses::testing::events;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! // An upstream whose compact route refuses the model and whose /responses streams text.
//! let upstream = service_fn(|req: http::Request<ReplayBody>| async move {
//!     let body = String::from_utf8_lossy(req.body().bytes()).into_owned();
//!     assert!(!body.contains(MARKER_PREFIX), "a marked item reached the upstream");
//!     let res = if req.uri().path().ends_with("/compact") {
//!         http::Response::builder().status(502).header("content-type", "text/plain")
//!             .body(full_body("error code: 502"))
//!     } else {
//!         let sse: Vec<u8> = events::text_answer("The user is fixing the parser.")
//!             .iter().flat_map(|e| events::encode(e)).collect();
//!         http::Response::builder().header("content-type", "text/event-stream").body(full_body(sse))
//!     };
//!     Ok::<_, tower_responses::error::BoxError>(res.unwrap())
//! });
//! let svc = CompactRouteLayer::new(CompactConfig::default())
//!     .profile(Profile::Openai)
//!     .layer(upstream);
//!
//! let compact = http::Request::post("https://api.openai.com/v1/responses/compact")
//!     .body(ReplayBody::new(Bytes::from_static(
//!         br#"{"model":"gpt-5.5","input":[{"role":"user","content":"fix the parser"}]}"#,
//!     )))
//!     .unwrap();
//! let res = svc.clone().oneshot(compact).await.unwrap();
//! assert_eq!(res.status(), 200);
//! let json: serde_json::Value =
//!     serde_json::from_slice(&res.into_body().collect().await.unwrap().to_bytes()).unwrap();
//! let output = json["output"].as_array().unwrap();
//! assert_eq!(output[0]["content"], "fix the parser");
//! let item = output.last().unwrap();
//! assert_eq!(item["type"], "compaction");
//! assert!(item["encrypted_content"].as_str().unwrap().starts_with(MARKER_PREFIX));
//!
//! // The next turn sends the item back; the upstream gets the summary as a user message.
//! let next = serde_json::json!({"model": "gpt-5.5", "stream": true, "input": [item, {"role": "user", "content": "go on"}]});
//! let turn = http::Request::post("https://api.openai.com/v1/responses")
//!     .body(ReplayBody::new(Bytes::from(next.to_string())))
//!     .unwrap();
//! assert_eq!(svc.oneshot(turn).await.unwrap().status(), 200);
//! # }
//! ```

mod config;
mod local;
mod marker;
mod memory;
mod remote;
mod request;
mod service;

pub use config::{
    CompactConfig, DEFAULT_REMOTE_MODELS, DEFAULT_SUMMARY_PROMPT, ModelOverride, RemotePolicy,
};
pub use marker::{
    MARKER_PREFIX, SUMMARY_PREFIX, decode_summary, encode_summary, expand_marked_items,
    summary_message,
};
pub use request::compaction_form;
pub use service::{CompactRoute, CompactRouteLayer};

use std::fmt;

/// The two ways a client asks for compaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CompactForm {
    /// `POST .../responses/compact`, answered with unary JSON.
    V1,
    /// `POST .../responses` whose last `input` item is `compaction_trigger`, answered with a
    /// stream holding exactly one compaction item.
    V2,
}

impl CompactForm {
    /// `"v1"` or `"v2"`, for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            CompactForm::V1 => "v1",
            CompactForm::V2 => "v2",
        }
    }
}

impl fmt::Display for CompactForm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which path answered a compaction request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CompactMode {
    /// The upstream's compaction, with the session's model.
    Remote,
    /// The upstream's compaction, with the configured `compact_model`.
    CompactModel,
    /// A summary from the upstream's `/responses`, packed by the layer.
    Local,
}

impl CompactMode {
    /// `"remote"`, `"compact_model"` or `"local"`, for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            CompactMode::Remote => "remote",
            CompactMode::CompactModel => "compact_model",
            CompactMode::Local => "local",
        }
    }
}

/// Response extension: the compaction path that produced this answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compacted {
    /// The path.
    pub mode: CompactMode,
    /// The form the client asked in (and was answered in).
    pub form: CompactForm,
}

/// Request extension on a remote compaction attempt that the layer will fall back from if
/// the upstream refuses it. A refusal there is the route's or the model's fault: credential
/// layers should neither cool the credential nor retry elsewhere for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteCompactAttempt;
