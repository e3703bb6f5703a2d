//! The classification rules: codes and types, then message phrases, then the status.

use http::StatusCode;

use super::FailureClass::{self, *};

/// What a `code` or `error.type` says.
enum CodeMatch {
    /// Names the cause: decides the class outright.
    Specific(FailureClass),
    /// A catch-all (`server_error`, `invalid_request_error`, `not_found`): message phrases and
    /// the status may say more, so this class is used only when they say nothing.
    Generic(FailureClass),
}

fn code_class(code: &str) -> Option<CodeMatch> {
    let code = code.trim().to_ascii_lowercase();
    let class = match code.as_str() {
        "insufficient_quota"
        | "usage_limit_reached"
        | "usage_not_included"
        | "quota_exceeded"
        | "payment_required"
        | "credits_exhausted"
        | "account_deactivated"
        | "deactivated_workspace" => QuotaExhausted,
        c if c.starts_with("billing") => QuotaExhausted,
        "rate_limit_exceeded"
        | "rate_limit_error"
        | "rate_limited"
        | "too_many_requests"
        | "slow_down"
        | "requests"
        | "tokens" => RateLimited,
        "server_is_overloaded"
        | "overloaded"
        | "overloaded_error"
        | "engine_overloaded"
        | "service_unavailable" => Overloaded,
        "internal_error"
        | "internal_server_error"
        | "upstream_unavailable"
        | "upstream_error"
        | "bad_gateway"
        | "gateway_timeout"
        | "timeout" => Transient,
        "context_length_exceeded" | "context_window_exceeded" => ContextLength,
        "invalid_prompt"
        | "unsupported_parameter"
        | "unsupported_value"
        | "unknown_parameter"
        | "invalid_value"
        | "missing_required_parameter"
        | "string_above_max_length"
        | "request_too_large"
        | "unsupported_country_region_territory" => InvalidRequest,
        "cyber_policy"
        | "content_policy"
        | "content_policy_violation"
        | "content_filter"
        | "safety"
        | "moderation_blocked" => ContentPolicy,
        "previous_response_not_found" => PreviousResponseNotFound,
        "model_not_found" | "model_not_supported" | "unsupported_model" => ModelUnsupported,
        "invalid_api_key"
        | "authentication_error"
        | "invalid_authentication"
        | "permission_error"
        | "permission_denied"
        | "insufficient_permissions"
        | "unauthorized"
        | "token_expired"
        | "invalid_token" => Auth,
        "unknown_url" | "route_not_found" => RouteNotFound,
        "cancelled"
        | "canceled"
        | "request_cancelled"
        | "response_cancelled"
        | "client_closed_request" => Cancelled,
        "server_error" | "api_error" => return Some(CodeMatch::Generic(Transient)),
        "invalid_request_error" | "invalid_request" | "bad_request" => {
            return Some(CodeMatch::Generic(InvalidRequest));
        }
        "not_found" | "not_found_error" => return Some(CodeMatch::Generic(RouteNotFound)),
        _ => return None,
    };
    Some(CodeMatch::Specific(class))
}

/// Billing phrases, checked before the rate-limit phrases (PROTOCOL.md §3).
pub(super) const BILLING_PHRASES: &[&str] = &[
    "insufficient",
    "credits have been exhausted",
    "billing",
    "payment required",
    "exceeded your current quota",
    "plan does not include",
    "account is deactivated",
    "usage limit",
    "credit balance",
    "top up your credits",
    "quota",
];

/// Rate-limit phrases (PROTOCOL.md §3). `quota exceeded` can never match: `quota` is a
/// billing phrase and billing is checked first.
pub(super) const RATE_LIMIT_PHRASES: &[&str] = &[
    "rate limit",
    "rate_limit",
    "too many requests",
    "throttl",
    "slow down",
    "quota exceeded",
    "requests per",
    "tokens per",
];

/// Rate-limit phrases that half the server errors also say ("You can retry your request").
/// They count only when nothing else is known: no code or type, and no status or one that
/// does not contradict them (2xx in-stream, 429).
pub(super) const WEAK_RATE_LIMIT_PHRASES: &[&str] = &["try again", "retry"];

const INVALID_REQUEST_PHRASES: &[&str] = &[
    "unsupported parameter",
    "unsupported value",
    "unknown parameter",
    "unrecognized request argument",
    "country, region, or territory",
];
const CONTENT_POLICY_PHRASES: &[&str] = &[
    "content policy",
    "content_policy",
    "content filter",
    "content_filter",
    "content management policy",
    "usage policies",
    "usage policy",
    "safety",
    "flagged",
    "moderation",
];
const CONTEXT_PHRASES: &[&str] = &[
    "context length",
    "context_length",
    "context window",
    "maximum context",
    "prompt is too long",
];
const MODEL_PHRASES: &[&str] = &[
    "not supported",
    "does not support",
    "unsupported",
    "does not exist",
    "not found",
    "not available",
    "do not have access",
];
const ROUTE_PHRASES: &[&str] = &[
    "invalid url",
    "unknown url",
    "unknown request url",
    "no route",
];
const AUTH_PHRASES: &[&str] = &[
    "incorrect api key",
    "invalid api key",
    "invalid_api_key",
    "provide an api key",
    "api key has expired",
    "api key has been revoked",
    "insufficient permissions",
    "missing scopes",
    "unauthorized",
    "authentication",
    "token expired",
    "token has expired",
    "token is expired",
    "expired token",
    "invalid token",
    "refresh token",
];
const OVERLOADED_PHRASES: &[&str] = &["overloaded", "at capacity", "over capacity", "high demand"];
const TRANSIENT_PHRASES: &[&str] = &[
    "server error",
    "server_error",
    "internal error",
    "error occurred while processing",
    "bad gateway",
    "service unavailable",
    "gateway timeout",
    "timed out",
    "timeout",
];

fn any(m: &str, phrases: &[&str]) -> bool {
    phrases.iter().any(|p| m.contains(p))
}

/// Classifies a lower-cased message by phrase, in the order documented in the module table.
fn phrase_class(m: &str, weak_ok: bool) -> Option<FailureClass> {
    if any(m, INVALID_REQUEST_PHRASES) {
        return Some(InvalidRequest);
    }
    if any(m, CONTENT_POLICY_PHRASES) {
        return Some(ContentPolicy);
    }
    if m.contains("cancel")
        && (m.contains("user") || m.contains("client") || m.contains("request was"))
    {
        return Some(Cancelled);
    }
    if m.contains("previous_response_id")
        || (m.contains("previous response") && m.contains("not found"))
        || (m.contains("item with id") && m.contains("not found"))
    {
        // The anchor is fine but the route refuses anchors (the Codex backend over HTTP):
        // retrying on the anchor's owner would not help.
        return Some(if m.contains("support") {
            InvalidRequest
        } else {
            PreviousResponseNotFound
        });
    }
    // Before the model phrases: "the model is not available due to high demand" is load.
    if any(m, OVERLOADED_PHRASES) {
        return Some(Overloaded);
    }
    if any(m, CONTEXT_PHRASES) {
        return Some(ContextLength);
    }
    if (m.contains("model") && any(m, MODEL_PHRASES)) || m.contains("unsupported model") {
        return Some(ModelUnsupported);
    }
    if any(m, ROUTE_PHRASES) {
        return Some(RouteNotFound);
    }
    if any(m, AUTH_PHRASES) {
        return Some(Auth);
    }
    if any(m, BILLING_PHRASES) {
        return Some(QuotaExhausted);
    }
    if any(m, RATE_LIMIT_PHRASES) {
        return Some(RateLimited);
    }
    if any(m, TRANSIENT_PHRASES) {
        return Some(Transient);
    }
    if weak_ok && any(m, WEAK_RATE_LIMIT_PHRASES) {
        return Some(RateLimited);
    }
    None
}

/// The class a status alone implies, when nothing in the body says more.
fn status_class(status: StatusCode) -> Option<FailureClass> {
    Some(match status.as_u16() {
        429 => RateLimited,
        402 => QuotaExhausted,
        401 | 403 => Auth,
        404 | 405 => RouteNotFound,
        408 => Transient,
        499 => Cancelled,
        503 | 529 => Overloaded,
        500..=599 => Transient,
        400..=499 => InvalidRequest,
        _ => return None,
    })
}

/// Classifies a failure from what the upstream said about it.
///
/// The order (see the module table for every code and phrase):
/// 1. a specific `code`, then a specific `kind` (`error.type`): the code wins over the message;
/// 2. message phrases: request-shape, content-policy/safety and user-cancelled phrases first
///    (they are never a credential's fault), then previous-response, overloaded,
///    context-length, model-unsupported, route, auth, **billing before rate-limit**,
///    server-error;
///    the weak phrases `try again`/`retry` count only when no code or type was given and the
///    status is absent, 2xx or 429;
/// 3. an unrecognised code or type read as a phrase (`insufficient_funds` reads as billing);
/// 4. the status: 429 rate-limited, 402 quota, 401/403 auth, 404/405 route, 408 and 5xx
///    transient (503/529 overloaded), 499 cancelled, other 4xx invalid request;
/// 5. a generic code (`server_error`, `invalid_request_error`, `not_found`);
/// 6. otherwise [`FailureClass::Unknown`].
///
/// ```
/// use tower_responses::classify::{classify_error, FailureClass};
///
/// // Billing phrases are checked before rate-limit phrases.
/// let class = classify_error(None, None, None, Some("Quota exceeded, try again later"));
/// assert_eq!(class, FailureClass::QuotaExhausted);
/// // The code wins over the message.
/// let class = classify_error(None, Some("rate_limit_exceeded"), None, Some("quota"));
/// assert_eq!(class, FailureClass::RateLimited);
/// ```
pub fn classify_error(
    status: Option<StatusCode>,
    code: Option<&str>,
    kind: Option<&str>,
    message: Option<&str>,
) -> FailureClass {
    let code = code.map(str::trim).filter(|c| !c.is_empty());
    let kind = kind.map(str::trim).filter(|k| !k.is_empty());

    let mut generic = None;
    let mut unknown_codes: [Option<&str>; 2] = [None, None];
    for (slot, c) in [code, kind].into_iter().enumerate() {
        let Some(c) = c else { continue };
        match code_class(c) {
            Some(CodeMatch::Specific(class)) => return class,
            Some(CodeMatch::Generic(class)) => {
                generic.get_or_insert(class);
            }
            None => unknown_codes[slot] = Some(c),
        }
    }

    if let Some(message) = message {
        let weak_ok = code.is_none()
            && kind.is_none()
            && status.is_none_or(|s| s.is_success() || s == StatusCode::TOO_MANY_REQUESTS);
        if let Some(class) = phrase_class(&message.to_ascii_lowercase(), weak_ok) {
            return class;
        }
    }

    for c in unknown_codes.into_iter().flatten() {
        let spaced: String = c
            .chars()
            .map(|ch| match ch {
                '_' | '-' | '.' => ' ',
                ch => ch.to_ascii_lowercase(),
            })
            .collect();
        if let Some(class) = phrase_class(&spaced, false) {
            return class;
        }
    }

    if let Some(class) = status.and_then(status_class) {
        return class;
    }
    generic.unwrap_or(Unknown)
}
