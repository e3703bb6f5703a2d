//! One classification of upstream failures, which every layer decides from.
//!
//! A failure reaches the proxy as an HTTP error, as a 2xx JSON response object whose `status`
//! is `failed`, as an SSE event inside a 200 stream (`response.failed`, `error`, a quota-shaped
//! `response.incomplete`), or as a transport error. [`Failure`] turns each into a
//! [`FailureClass`], a [`RetryHint`] and what the upstream said, so no layer re-parses
//! messages itself.
//!
//! ```
//! use std::time::{Duration, UNIX_EPOCH};
//! use http::{HeaderMap, StatusCode};
//! use tower_responses::classify::{Failure, FailureClass};
//!
//! // The Codex backend's quota 429.
//! let body = br#"{"error":{"type":"usage_limit_reached","message":"The usage limit has been reached","resets_at":1900000000}}"#;
//! let failure = Failure::from_http(StatusCode::TOO_MANY_REQUESTS, &HeaderMap::new(), body).unwrap();
//! assert_eq!(failure.class, FailureClass::QuotaExhausted);
//! assert!(failure.class.cools_credential() && failure.class.retry_elsewhere());
//! assert_eq!(failure.retry.reset_at, Some(UNIX_EPOCH + Duration::from_secs(1_900_000_000)));
//!
//! // A rate limit inside a 200 stream.
//! let data = br#"{"type":"response.failed","response":{"status":"failed","error":{"code":"rate_limit_exceeded","message":"Please try again in 11.054s."}}}"#;
//! let failure = Failure::from_sse_data(data).unwrap();
//! assert_eq!(failure.class, FailureClass::RateLimited);
//! assert_eq!(failure.retry.after, Some(Duration::from_millis(11_054)));
//!
//! // A model the route does not serve is not the credential's fault.
//! let body = br#"{"detail":"The 'gpt-5-pro' model is not supported when using Codex with a ChatGPT account."}"#;
//! let failure = Failure::from_http(StatusCode::BAD_REQUEST, &HeaderMap::new(), body).unwrap();
//! assert_eq!(failure.class, FailureClass::ModelUnsupported);
//! assert!(!failure.class.cools_credential());
//! ```
//!
//! # How a failure is classified
//!
//! [`classify_error`] looks, in order, at: a specific `code`, a specific `error.type`, message
//! phrases, an unrecognised code read as a phrase, the status, and a generic code. A known code
//! wins over the message ("code wins").
//!
//! ## Codes and types
//!
//! | class | `code` / `error.type` |
//! |---|---|
//! | `QuotaExhausted` | `insufficient_quota`, `usage_limit_reached`, `usage_not_included`, `quota_exceeded`, `billing_*`, `payment_required`, `credits_exhausted`, `account_deactivated`, `deactivated_workspace` |
//! | `RateLimited` | `rate_limit_exceeded`, `rate_limit_error`, `rate_limited`, `too_many_requests`, `slow_down`, types `requests` / `tokens` |
//! | `Overloaded` | `server_is_overloaded`, `overloaded`, `overloaded_error`, `engine_overloaded`, `service_unavailable` |
//! | `Transient` | `internal_error`, `internal_server_error`, `upstream_unavailable`, `upstream_error`, `bad_gateway`, `gateway_timeout`, `timeout`; generic: `server_error`, `api_error` |
//! | `ContextLength` | `context_length_exceeded`, `context_window_exceeded` |
//! | `InvalidRequest` | `invalid_prompt`, `unsupported_parameter`, `unsupported_value`, `unknown_parameter`, `invalid_value`, `missing_required_parameter`, `string_above_max_length`, `request_too_large`, `unsupported_country_region_territory`; generic: `invalid_request_error`, `invalid_request`, `bad_request` |
//! | `ContentPolicy` | `cyber_policy`, `content_policy`, `content_policy_violation`, `content_filter`, `safety`, `moderation_blocked` |
//! | `PreviousResponseNotFound` | `previous_response_not_found` |
//! | `ModelUnsupported` | `model_not_found`, `model_not_supported`, `unsupported_model` |
//! | `Auth` | `invalid_api_key`, `authentication_error`, `invalid_authentication`, `permission_error`, `permission_denied`, `insufficient_permissions`, `unauthorized`, `token_expired`, `invalid_token` |
//! | `RouteNotFound` | `unknown_url`, `route_not_found`; generic: `not_found`, `not_found_error` |
//! | `Cancelled` | `cancelled`, `canceled`, `request_cancelled`, `response_cancelled`, `client_closed_request` |
//!
//! Codes are compared case-insensitively. A *generic* code is a catch-all: message phrases and
//! the status decide first, the generic class only when they say nothing. So
//! `{"message":"Invalid 'previous_response_id'.","code":"invalid_request_error"}` is
//! `PreviousResponseNotFound`, and a `server_error` saying "The usage limit has been reached"
//! is `QuotaExhausted`.
//!
//! Choices worth knowing:
//! - `slow_down` is `RateLimited`: it is the upstream asking *this* client to back off, so the
//!   credential cools and the request may go elsewhere. The Codex CLI treats it as fatal
//!   (it does not retry on the same credential), which is consistent. When the upstream gives
//!   no delay, the pool's default for rate limits applies.
//! - `quota_exceeded` is `QuotaExhausted`, the same class its phrase gets (see below).
//! - `invalid_prompt` is `InvalidRequest` even though its message often says "flagged": the
//!   code wins. Neither cools a credential.
//! - `account_deactivated` / "account is deactivated" are `QuotaExhausted` because the billing
//!   phrase list of PROTOCOL.md says so; both classes cool the credential.
//!
//! ## Message phrases (lower-cased substring match, in this order)
//!
//! | order | class | phrases |
//! |---|---|---|
//! | 1 | `InvalidRequest` | unsupported parameter, unsupported value, unknown parameter, unrecognized request argument, "country, region, or territory" |
//! | 2 | `ContentPolicy` | content policy, content_policy, content filter, content_filter, content management policy, usage policies, usage policy, safety, flagged, moderation |
//! | 3 | `Cancelled` | "cancel" together with user / client / "request was" |
//! | 4 | `PreviousResponseNotFound` | previous_response_id; previous response … not found; item with id … not found (`InvalidRequest` instead when the message says the parameter is not *supported*) |
//! | 5 | `Overloaded` | overloaded, at capacity, over capacity, high demand |
//! | 6 | `ContextLength` | context length, context_length, context window, maximum context, prompt is too long |
//! | 7 | `ModelUnsupported` | "model" together with: not supported, does not support, unsupported, does not exist, not found, not available, do not have access; or "unsupported model" |
//! | 8 | `RouteNotFound` | invalid url, unknown url, unknown request url, no route |
//! | 9 | `Auth` | incorrect/invalid api key, invalid_api_key, provide an api key, api key has expired / been revoked, insufficient permissions, missing scopes, unauthorized, authentication, token expired / has expired / is expired, expired token, invalid token, refresh token |
//! | 10 | `QuotaExhausted` | **billing**: insufficient, credits have been exhausted, billing, payment required, exceeded your current quota, plan does not include, account is deactivated, usage limit, credit balance, top up your credits, quota |
//! | 11 | `RateLimited` | **rate limit**: rate limit, rate_limit, too many requests, throttl, slow down, quota exceeded, requests per, tokens per |
//! | 12 | `Transient` | server error, server_error, internal error, error occurred while processing, bad gateway, service unavailable, gateway timeout, timed out, timeout |
//! | 13 | `RateLimited` | try again, retry — only with no code or type, and a status that is absent, 2xx or 429 |
//!
//! Consequences of the order:
//! - billing is checked before rate limits, so "quota exceeded" (a rate-limit phrase) is
//!   always `QuotaExhausted`: "quota" matches first. The rate-limit entry can never fire;
//!   it stays for fidelity with PROTOCOL.md.
//! - content-policy, safety and user-cancelled failures are never quota or rate limits, even
//!   when they say "retry" (rows 2–3 come first).
//! - load comes before the model phrases: "the model is not available due to high demand"
//!   is `Overloaded`, not `ModelUnsupported`.
//! - auth comes before billing so "insufficient permissions" (a 403) is not read as billing
//!   "insufficient".
//! - "try again" / "retry" are weak: OpenAI's 5xx messages say "You can retry your request".
//!
//! ## Status fallbacks (when no code, type or phrase decided)
//!
//! | status | class |
//! |---|---|
//! | 429 | `RateLimited` |
//! | 402 | `QuotaExhausted` |
//! | 401, 403 | `Auth` (a 401 from the Codex backend is an expired token; a refresh may fix it) |
//! | 403 with an HTML page or no body, nothing else said | `Blocked` (a CDN or firewall challenge, not the credential) |
//! | 404, 405 | `RouteNotFound` |
//! | 408, 500, 502, 504, other 5xx | `Transient` |
//! | 503, 529 | `Overloaded` |
//! | 499 | `Cancelled` |
//! | other 4xx | `InvalidRequest` |
//!
//! ## What the classes mean for the layers
//!
//! | class | [`cools_credential`](FailureClass::cools_credential) | [`retry_elsewhere`](FailureClass::retry_elsewhere) |
//! |---|---|---|
//! | `RateLimited`, `QuotaExhausted`, `Auth`, `Overloaded`, `Transient` | yes | yes |
//! | `StaleConnection` | no (the connection's fault) | yes |
//! | `ModelUnsupported`, `RouteNotFound`, `ContextLength`, `InvalidRequest`, `ContentPolicy`, `PreviousResponseNotFound`, `Cancelled`, `Blocked`, `Unknown` | no | no |
//!
//! A `Transient` transport error (connect refused, reset) is the network's fault, not the
//! credential's: [`Failure::cools_credential`] accounts for [`Failure::origin`] and is the
//! method a credential pool should ask.

mod extract;
mod hints;
mod rules;
#[cfg(test)]
mod tests;

use std::fmt;

use http::StatusCode;

pub(crate) use hints::has_header_prefix;
pub use hints::{
    CodexUsage, CodexWindow, RetryHint, parse_go_duration, parse_retry_after, parse_try_again_in,
    retry_hint_from_headers,
};
pub use rules::classify_error;

/// What kind of failure the upstream reported, as far as retrying and cooling are concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FailureClass {
    /// Too many requests or tokens for now; comes back within seconds or minutes.
    RateLimited,
    /// Quota, usage limit, plan or billing exhausted; comes back at a reset, if ever.
    QuotaExhausted,
    /// The credential was refused (invalid, expired, revoked, lacking permission).
    Auth,
    /// The route does not serve the requested model (or not for this kind of account).
    ModelUnsupported,
    /// The input does not fit the model's context window.
    ContextLength,
    /// The upstream is overloaded (`server_is_overloaded`, 503, 529).
    Overloaded,
    /// A server error or a transport failure that another attempt may not hit.
    Transient,
    /// A reused pooled connection died under the request without an API answer.
    StaleConnection,
    /// The request itself is wrong; any credential would get the same answer.
    InvalidRequest,
    /// Refused by content policy or safety systems.
    ContentPolicy,
    /// The `previous_response_id` (or a stored item) lives with another credential or is gone.
    PreviousResponseNotFound,
    /// The path does not exist on this upstream (e.g. `/responses/compact` on the Codex
    /// backend).
    RouteNotFound,
    /// Cancelled by the user or the client.
    Cancelled,
    /// Nothing recognisable.
    Unknown,
    /// Refused before the API: a `403` with an HTML page or no body (a CDN or firewall
    /// challenge). The credential is not at fault and the request would meet the same page
    /// elsewhere, so nothing cools and the answer passes.
    Blocked,
}

impl FailureClass {
    /// A `snake_case` label for metrics and logs, e.g. `"quota_exhausted"`.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureClass::RateLimited => "rate_limited",
            FailureClass::QuotaExhausted => "quota_exhausted",
            FailureClass::Auth => "auth",
            FailureClass::ModelUnsupported => "model_unsupported",
            FailureClass::ContextLength => "context_length",
            FailureClass::Overloaded => "overloaded",
            FailureClass::Transient => "transient",
            FailureClass::StaleConnection => "stale_connection",
            FailureClass::InvalidRequest => "invalid_request",
            FailureClass::ContentPolicy => "content_policy",
            FailureClass::PreviousResponseNotFound => "previous_response_not_found",
            FailureClass::RouteNotFound => "route_not_found",
            FailureClass::Cancelled => "cancelled",
            FailureClass::Unknown => "unknown",
            FailureClass::Blocked => "blocked",
        }
    }

    /// Whether the credential that got this failure should rest for a while.
    ///
    /// True for `RateLimited`, `QuotaExhausted`, `Auth`, `Overloaded` and `Transient`. A route,
    /// model, request or connection fault is never the credential's: cooling it for those is
    /// the peer bug PROTOCOL.md §4 describes. `Unknown` does not cool either: without
    /// evidence, a healthy credential would be benched.
    pub fn cools_credential(self) -> bool {
        matches!(
            self,
            FailureClass::RateLimited
                | FailureClass::QuotaExhausted
                | FailureClass::Auth
                | FailureClass::Overloaded
                | FailureClass::Transient
        )
    }

    /// Whether the same request is worth trying with another credential (or connection).
    ///
    /// True for `RateLimited`, `QuotaExhausted`, `Auth`, `Overloaded`, `Transient` and
    /// `StaleConnection`; every other class would get the same answer anywhere.
    pub fn retry_elsewhere(self) -> bool {
        self.cools_credential() || self == FailureClass::StaleConnection
    }
}

impl fmt::Display for FailureClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a [`Failure`] was seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Origin {
    /// An HTTP answer (an error status, or a 2xx response object with `status: failed`).
    Http,
    /// An event inside a 200 SSE stream.
    Stream,
    /// No HTTP answer: connect, write or read failed.
    Transport,
    /// Built by hand with [`Failure::new`].
    #[default]
    Unspecified,
}

/// An upstream failure: its class, when to retry, and what the upstream said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The classification every layer decides from.
    pub class: FailureClass,
    /// The HTTP status, when there was an HTTP answer (a 2xx for a `status: failed` body;
    /// `None` inside a stream unless the event carried one, and for transport errors).
    pub status: Option<StatusCode>,
    /// `error.code`, as sent.
    pub code: Option<String>,
    /// `error.type`, as sent.
    pub kind: Option<String>,
    /// The upstream's message (bounded to 1 KiB), `detail`, or the first part of a plain-text
    /// body; for HTML bodies, the page title.
    pub message: Option<String>,
    /// When it is worth trying again.
    pub retry: RetryHint,
    /// Where the failure was seen.
    pub origin: Origin,
}

impl Failure {
    /// A failure of `class` with nothing else known.
    pub fn new(class: FailureClass) -> Self {
        Failure {
            class,
            status: None,
            code: None,
            kind: None,
            message: None,
            retry: RetryHint::default(),
            origin: Origin::Unspecified,
        }
    }

    /// Classifies an HTTP answer from its status, headers and (a bounded prefix of) its body.
    ///
    /// Returns `None` for an answer that is not a failure: a status below 400, unless it is a
    /// 2xx JSON response object whose top-level `status` is `failed` (classified from its
    /// `error`), `cancelled`, or `incomplete` for a quota-shaped reason; or a 2xx JSON body
    /// holding only an `error` object. Streaming bodies are classified event by event with
    /// [`Failure::from_sse_data`].
    ///
    /// Understands the OpenAI envelope `{"error":{...}}`, the Codex backend's
    /// `{"detail":"..."}` (or a `detail` object), a bare `{"message","code"}`, plain text
    /// bodies (`error code: 502`), HTML error pages (by title), and the quota 429
    /// `{"error":{"type":"usage_limit_reached","resets_at"|"resets_in_seconds"}}`. Only the
    /// first 64 KiB of `body` are looked at; garbage never panics.
    ///
    /// The retry hint merges [`retry_hint_from_headers`] with `resets_at` (unix seconds, a
    /// number or a string), `resets_in_seconds`, and "try again in" in the message.
    pub fn from_http(
        status: StatusCode,
        headers: &http::HeaderMap,
        body: &[u8],
    ) -> Option<Failure> {
        Self::from_http_at(status, headers, body, std::time::SystemTime::now())
    }

    /// [`Failure::from_http`] with an explicit "now", against which an HTTP-date
    /// `Retry-After` is measured.
    pub fn from_http_at(
        status: StatusCode,
        headers: &http::HeaderMap,
        body: &[u8],
        now: std::time::SystemTime,
    ) -> Option<Failure> {
        extract::from_http(status, headers, body, now)
    }

    /// Classifies one SSE event from its `data` JSON.
    ///
    /// - `response.failed`: from `response.error{code, message, type, resets_at,
    ///   resets_in_seconds}`;
    /// - `error`: fields at the top level or under `error` (a numeric top-level `status` is
    ///   taken as the HTTP status);
    /// - `response.incomplete`: only when `response.incomplete_details.reason` is quota- or
    ///   rate-limit-shaped; `max_output_tokens`, `content_filter` and other reasons are not a
    ///   credential's failure and give `None`.
    ///
    /// Every other event, and anything that is not JSON (`[DONE]`), gives `None`.
    pub fn from_sse_data(data: &[u8]) -> Option<Failure> {
        extract::from_sse_data(data)
    }

    /// A transport failure (no HTTP answer): `StaleConnection` when a reused pooled
    /// connection died under the request, `Transient` otherwise.
    pub fn transport(stale: bool, message: impl Into<String>) -> Failure {
        let class = if stale {
            FailureClass::StaleConnection
        } else {
            FailureClass::Transient
        };
        Failure {
            message: Some(message.into()),
            origin: Origin::Transport,
            ..Failure::new(class)
        }
    }

    /// Whether the credential should rest: the class says so and the upstream answered. A
    /// transport error is the network's fault, not the credential's.
    pub fn cools_credential(&self) -> bool {
        self.class.cools_credential() && self.origin != Origin::Transport
    }

    /// Whether the request is worth trying with another credential or connection.
    pub fn retry_elsewhere(&self) -> bool {
        self.class.retry_elsewhere()
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.class.as_str())?;
        if let Some(status) = self.status {
            write!(f, " ({})", status.as_u16())?;
        }
        if let Some(code) = self.code.as_deref().or(self.kind.as_deref()) {
            write!(f, " {code}")?;
        }
        if let Some(message) = &self.message {
            write!(f, ": {message}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Failure {}
