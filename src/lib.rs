#![deny(unsafe_code)]
#![warn(missing_docs)]
// `ApiError` is large, but errors are the cold path; boxing it would cost every caller.
#![allow(clippy::result_large_err)]
//! `tower` middleware that keeps OpenAI Responses API traffic alive through long agent
//! sessions, and a proxy (the `tower-responses` binary) that stacks it in front of the Codex
//! CLI, the OpenAI SDKs, or any Responses client.
//!
//! # The picture
//!
//! Long agent sessions break in five known ways, and each is a [`tower::Layer`] here:
//!
//! | what breaks | layer |
//! |---|---|
//! | remote compaction fails for models the compact endpoint refuses | [`CompactRouteLayer`](compact::CompactRouteLayer) |
//! | pooled connections go stale when the provider closes idle ones first | [`FreshConnectionLayer`](fresh::FreshConnectionLayer) |
//! | the ChatGPT Codex backend rejects bodies ordinary clients send | [`BodyNormalizeLayer`](normalize::BodyNormalizeLayer) |
//! | a transport loss answered with `400 previous_response_not_found` makes the client resend its history | [`ContinuityLayer`](continuity::ContinuityLayer) |
//! | quota failures inside HTTP 200 streams, and nobody rotates | [`SoftFailureDetectLayer`](soft_failure::SoftFailureDetectLayer) + [`CredentialRotateLayer`](credentials::CredentialRotateLayer) |
//!
//! ```text
//! client (Codex CLI, SDK)
//!    │   ┌──────────────────────── ResponsesStack ────────────────────────┐
//!    └──▶│ CompactRoute ▶ Continuity ▶ CredentialRotate ▶ BodyNormalize ▶ │
//!        │ SoftFailureDetect ▶ HeadTimeout ▶ FreshConnection ▶ hyper-util │──▶ upstream
//!        └────────────────────────────────────────────────────────────────┘
//! ```
//!
//! Layers talk through types in `http::Extensions`, never globals; [`marks`] lists each one
//! with the layer that writes it and those that read it. Why the order is what it is: the
//! [`stack`] module docs.
//!
//! # The one-line stack
//!
//! ```no_run
//! use tower_responses::connect::UpstreamClientBuilder;
//! use tower_responses::stack::ResponsesStack;
//!
//! let stack = ResponsesStack::new().client(&UpstreamClientBuilder::new());
//! ```
//!
//! [`ResponsesStack`](stack::ResponsesStack) is a cloneable `tower::Service` taking a
//! `Request<`[`ReplayBody`](body::ReplayBody)`>` whose URI is the upstream's; put a
//! [`credentials::Pool`] on it with `.pool(...)` for rotation.
//! [`Forward`](stack::Forward) mounts it under a path of your own server (axum's
//! `nest_service`), and every layer also works alone in a `tower::ServiceBuilder`.
//!
//! # Feature flags
//!
//! | feature | what it adds |
//! |---|---|
//! | (none) | every layer, [`ResponsesStack`](stack::ResponsesStack), the upstream client ([`connect`]) |
//! | `test-util` | [`testing`]: a scriptable, fault-injecting mock upstream for your tests |
//! | `proxy` | [`proxy`]: the server, its TOML configuration, and the `tower-responses` binary (`cargo install tower-responses --features proxy`); enables `test-util` for `tower-responses demo` |
//!
//! # Modules
//!
//! The layers: [`compact`], [`continuity`], [`credentials`], [`normalize`], [`soft_failure`],
//! [`fresh`], and [`stack`] which orders them. Their vocabulary: [`classify`] (one
//! `Failure` for every layer), [`marks`], [`error`] (the OpenAI error envelope), [`profile`]
//! (what an upstream accepts). Plumbing you may need at the edges: [`body`], [`sse`],
//! [`connect`], [`metrics`].

pub mod body;
pub mod classify;
pub mod compact;
pub mod connect;
pub mod continuity;
pub mod credentials;
pub mod error;
// Internal, not a stable API (hidden from the docs, may change in any release): what the
// edge learns from a request body, handed to the layers. Public only for its doctests.
#[doc(hidden)]
pub mod facts;
pub mod fresh;
// Internal, not a stable API (hidden, as `facts`): top-level JSON scanners and edits.
#[doc(hidden)]
pub mod json;
pub mod marks;
pub mod metrics;
pub mod normalize;
pub mod profile;
#[cfg(feature = "proxy")]
pub mod proxy;
pub mod soft_failure;
pub mod sse;
pub mod stack;
// Internal, not a stable API (hidden, as `facts`): base-URL mapping and hop-by-hop headers
// shared by the proxy and `Forward`.
#[doc(hidden)]
pub mod upstream;

#[cfg(feature = "test-util")]
pub mod testing;
#[cfg(feature = "websocket")]
pub mod websocket;

// Internal, not a stable API: thin re-exports of crate-private parsers for the `fuzz/`
// targets, only with the `fuzzing` feature.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod __fuzz;
