//! Request bodies shaped for the upstream's profile, so any standard Responses client works
//! against any upstream (seed 002).
//!
//! The ChatGPT Codex backend answers 400 to much of what the OpenAI SDKs and agent
//! frameworks send (`max_output_tokens`, `temperature`, a string `input`, `system` messages,
//! `stream:false`, a missing `instructions`, ...). [`BodyNormalizeLayer`] rewrites
//! `POST …/responses` bodies per [`Profile`]; other routes pass untouched:
//!
//! - **`openai`**: bodies pass byte for byte; nothing else is done (no learning either).
//! - **`chatgpt-codex`**: the rules of PROTOCOL.md §2 ([`codex_rules`]): `stream:true` and
//!   `store:false` forced; `max_completion_tokens`, `temperature`, `top_p`, `truncation`,
//!   `user`, `metadata`, `safety_identifier`, `prompt_cache_retention` removed; a request
//!   with `previous_response_id` answered `400 previous_response_not_found` by the layer (that
//!   backend stores no responses over HTTP, so the anchor cannot resolve; dropping it would
//!   answer without the conversation); `instructions` defaulted to `""` only when absent; a
//!   string `input` turned into a one-message list; `system` items turned into `developer`
//!   in place (order kept, so the prompt-cache prefix stays stable); a `service_tier` other
//!   than `priority` dropped; `max_output_tokens` enforced locally (below).
//! - **`generic`**: the [`Rule`]s of [`NormalizeConfig::rules`].
//!
//! The profile is [`NormalizeConfig::profile`], overridden per request by a [`Profile`]
//! request extension (set by credential rotation when a credential names its upstream's
//! profile).
//!
//! Only the top level of the body is parsed, once (an internal raw-object scanner); fields no
//! rule touched (`input`, `tools`) are copied byte for byte, `Content-Length` is set to the
//! new length, and [`RequestFacts`](crate::facts::RequestFacts) is invalidated. A body that is
//! not a JSON object, or still carries a `Content-Encoding`, is forwarded untouched.
//!
//! # `max_output_tokens`
//!
//! [`TokenCapPolicy`]: `pass`, `strip`, `reject` (400 with `param: "max_output_tokens"`,
//! the upstream is not called) or `enforce` (the default for `chatgpt-codex`): the field is
//! removed upstream and the cap is enforced on the stream coming back. Visible output is
//! counted from `response.output_text.delta`, `response.refusal.delta`,
//! `response.function_call_arguments.delta` and `response.custom_tool_call_input.delta`
//! text, and estimated as **`ceil(characters / 4)` tokens** (about what OpenAI's tokenizers
//! give for English prose; reasoning tokens are invisible and not counted, so the local cap
//! is more lenient than the platform's). The event that would take the estimate past the cap
//! is not forwarded: the stream ends there with a well-formed `response.incomplete` (same
//! response id, `status: "incomplete"`, `incomplete_details.reason: "max_output_tokens"`,
//! the output so far, `usage` when the upstream had sent one, else `null`). Only whole
//! events are ever forwarded, as the upstream's exact bytes.
//!
//! With a [`SoftFailureDetectLayer`](crate::soft_failure::SoftFailureDetectLayer) below,
//! the cap is counted on the events that layer decodes anyway (for each attempt afresh), so
//! the stream is decoded once; on its own, this layer decodes it. The client gets the same
//! bytes either way. A stream that can no longer be decoded (a line past the decoder's
//! bound: that layer's `max_line` when it is below, else 4 MiB) is no longer capped: from
//! there its bytes pass as they came.
//!
//! Counting costs nothing while the cap cannot have been reached: a delta's text has no more
//! characters than its event has bytes, so while the delta events' bytes stay within
//! `4 x cap`, their events are copied aside (at most `max_buffered` bytes) rather than
//! parsed, and counted exactly, in order, only once that bound passes the cap. A stream that
//! stays far under its cap (its text is typically a thirtieth of its bytes) is never parsed.
//!
//! # `stream:false` clients
//!
//! When the client asked for no stream (or did not say) and the rules force one, the layer
//! reads the upstream's stream (at most [`NormalizeConfig::max_buffered`] bytes) and answers
//! one `application/json` response object, as the platform would: `response.completed`'s (or
//! `response.incomplete`'s) `response`, with `output` rebuilt from
//! `response.output_item.done` items when the terminal event's list is empty. A
//! `response.failed` or `error` event becomes the matching HTTP error in the OpenAI envelope
//! with the upstream's code and message: quota 429, rate limit 429, overloaded 503, server
//! error 500 (or the upstream's 5xx), invalid request 400, auth 401, unknown 502. A stream
//! that ends without a terminal event is a 502 `upstream_unavailable`.
//!
//! With a [`SoftFailureDetectLayer`](crate::soft_failure::SoftFailureDetectLayer) below (and
//! no `max_output_tokens` cap, whose gate takes that place), the fold reads the events that
//! layer decodes anyway instead of decoding the stream again; where that layer stops
//! decoding (a line past its `max_line`), the fold reads the bytes itself, from the start.
//! The answer is the same either way.
//!
//! # Learning
//!
//! When the upstream answers `400` with `Unsupported parameter: X` (in `{"error":{"message"}}`
//! or `{"detail"}`; from the [`SoftFailure`](crate::soft_failure::SoftFailure) extension when
//! an inner `SoftFailureDetectLayer` classified it, else from a bounded prefix of the body),
//! the layer removes `X` (top level, or `parent.child`), retries once, and remembers `X` for
//! that upstream (scheme, authority and profile) for [`NormalizeConfig::learn_ttl`], so later
//! requests go out without it. At most one such retry per request. A learnt
//! `max_output_tokens` is still enforced on the way back.
//!
//! # Configuration (the proxy's TOML)
//!
//! ```toml
//! [normalize]
//! profile = "generic"            # openai | chatgpt-codex | generic
//! max_output_tokens = "enforce"  # pass | strip | reject | enforce (default per profile)
//! learn = true
//! learn_ttl_secs = 3600
//! max_buffered = 16777216        # bytes folded for stream:false clients
//! max_error_body = 65536         # bytes of a 400 read to learn from
//! fold_idle_timeout_secs = 300   # a folded answer may take long, but not go silent this long
//!
//! # The generic profile's rules, applied in order. One key per rule:
//! [[normalize.rules]]
//! strip = "temperature"                                   # or "reasoning.summary"
//! [[normalize.rules]]
//! default = { field = "instructions", value = "" }        # only when absent
//! [[normalize.rules]]
//! force = { field = "stream", value = true }              # whatever it was
//! [[normalize.rules]]
//! rename = { from = "max_tokens", to = "max_output_tokens" }
//! [[normalize.rules]]
//! convert = { field = "input", conversion = "string-to-messages" }   # or "system-to-developer"
//! [[normalize.rules]]
//! allow = { field = "service_tier", values = ["priority"] }  # drop other values
//! ```
//!
//! # Metrics and logs
//!
//! With [`BodyNormalizeLayer::metrics`]: `tr_normalize_rewrites_total{profile,rule}` (rule
//! labels such as `strip:temperature`, `convert:input:system-to-developer`,
//! `enforce:max_output_tokens`, `learned:foo`), `tr_normalize_learned_total{param}`,
//! `tr_normalize_capped_total{profile}`. `tracing` events name the rules and fields that
//! changed, never values.
//!
//! # Example
//!
//! ```
//! use std::sync::{Arc, Mutex};
//! use bytes::Bytes;
//! use http_body_util::BodyExt;
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! use tower_responses::body::{ReplayBody, full_body};
//! use tower_responses::normalize::BodyNormalizeLayer;
//! use tower_responses::profile::Profile;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! // A Codex-like upstream that records what it got and streams a short answer.
//! let seen = Arc::new(Mutex::new(Bytes::new()));
//! let record = seen.clone();
//! let upstream = service_fn(move |req: http::Request<ReplayBody>| {
//!     *record.lock().unwrap() = req.body().bytes().clone();
//!     async {
//!         let sse = concat!(
//!             "data: {\"type\":\"response.created\",\"response\":{\"id\":\"resp_1\",\"status\":\"in_progress\",\"output\":[]}}\n\n",
//!             "data: {\"type\":\"response.output_item.done\",\"output_index\":0,\"item\":{\"type\":\"message\",\"role\":\"assistant\",\"content\":[{\"type\":\"output_text\",\"text\":\"Hi!\"}]}}\n\n",
//!             "data: {\"type\":\"response.completed\",\"response\":{\"id\":\"resp_1\",\"status\":\"completed\",\"output\":[]}}\n\n",
//!         );
//!         Ok::<_, tower_responses::error::BoxError>(
//!             http::Response::builder().header("content-type", "text/event-stream").body(full_body(sse)).unwrap(),
//!         )
//!     }
//! });
//! let svc = ServiceBuilder::new()
//!     .layer(BodyNormalizeLayer::for_profile(Profile::ChatgptCodex))
//!     .service(upstream);
//!
//! // What an SDK sends: string input, a system message, temperature, no stream.
//! let body = r#"{"model":"gpt-5.5","input":[{"role":"system","content":"Be brief."},{"role":"user","content":"hi"}],"temperature":0.2}"#;
//! let req = http::Request::post("https://chatgpt.com/backend-api/codex/responses")
//!     .body(ReplayBody::new(Bytes::from_static(body.as_bytes())))
//!     .unwrap();
//! let res = svc.oneshot(req).await.unwrap();
//!
//! // The upstream got a body it accepts, the system item turned developer in place.
//! let sent: serde_json::Value = serde_json::from_slice(&seen.lock().unwrap()).unwrap();
//! assert_eq!(sent["stream"], true);
//! assert_eq!(sent["store"], false);
//! assert_eq!(sent["instructions"], "");
//! assert!(sent.get("temperature").is_none());
//! assert_eq!(sent["input"][0]["role"], "developer");
//!
//! // The stream:false client gets one JSON response object.
//! assert_eq!(res.headers()["content-type"], "application/json");
//! let answer: serde_json::Value =
//!     serde_json::from_slice(&res.into_body().collect().await.unwrap().to_bytes()).unwrap();
//! assert_eq!(answer["id"], "resp_1");
//! assert_eq!(answer["output"][0]["content"][0]["text"], "Hi!");
//! # }
//! ```

mod answer;
pub(crate) mod cap;
mod config;
pub(crate) mod events;
mod fold;
mod fold_reader;
mod learn;
mod rewrite;
mod rule;
mod service;

pub use config::{NormalizeConfig, TokenCapPolicy};
pub use learn::LearnedParams;
pub use rule::{CODEX_REJECTED, Conversion, Rule, codex_rules};
pub use service::{BodyNormalize, BodyNormalizeLayer};
// For `crate::__fuzz` only.
#[cfg(feature = "fuzzing")]
pub(crate) use {fold::fold, rewrite::Rewrite, rewrite::rewrite};

#[cfg(doc)]
use crate::profile::Profile;
