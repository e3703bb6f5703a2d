//! The OpenAI error envelope, used for every answer the crate makes up itself.
//!
//! Clients of the Responses API (the Codex CLI, the official SDKs) read
//! `{"error":{"message","type","code","param"}}`; an error in any other shape shows up as an
//! unhelpful "unexpected status". Every layer and the proxy build their own errors here so
//! the shape and the status always agree.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use serde::Serialize;

/// A boxed error, the error type of bodies and services that mix several sources.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// An error answered in the OpenAI envelope.
///
/// ```
/// use tower_responses::error::ApiError;
/// use http::StatusCode;
///
/// let err = ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "invalid_request_error", "body too large")
///     .with_code("request_too_large");
/// let res: http::Response<http_body_util::Full<bytes::Bytes>> = err.into_response();
/// assert_eq!(res.status(), 413);
/// assert_eq!(res.headers()["content-type"], "application/json");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status of the answer.
    pub status: StatusCode,
    /// `error.type`, e.g. `invalid_request_error`.
    pub kind: String,
    /// `error.code`, e.g. `upstream_unavailable`.
    pub code: Option<String>,
    /// `error.message`, for a human.
    pub message: String,
    /// `error.param`, the request field at fault.
    pub param: Option<String>,
    /// Sent as `Retry-After` (whole seconds, rounded up) when set.
    pub retry_after: Option<Duration>,
    /// `error.resets_at` (unix seconds), as the Codex backend sends with `usage_limit_reached`.
    pub resets_at: Option<u64>,
}

#[derive(Serialize)]
struct Envelope<'a> {
    error: Inner<'a>,
}

#[derive(Serialize)]
struct Inner<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    code: Option<&'a str>,
    param: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    resets_at: Option<u64>,
}

impl ApiError {
    /// An error with a status, an `error.type` and a message.
    pub fn new(status: StatusCode, kind: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError {
            status,
            kind: kind.into(),
            code: None,
            message: message.into(),
            param: None,
            retry_after: None,
            resets_at: None,
        }
    }

    /// Sets `error.code`.
    pub fn with_code(mut self, code: impl Into<String>) -> Self {
        self.code = Some(code.into());
        self
    }

    /// Sets `error.param`.
    pub fn with_param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }

    /// Sets the `Retry-After` header of the answer.
    pub fn with_retry_after(mut self, after: Duration) -> Self {
        self.retry_after = Some(after);
        self
    }

    /// 400 `invalid_request_error`.
    pub fn invalid_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }

    /// 502 `upstream_unavailable`: the upstream could not be reached or broke off; retryable.
    pub fn upstream_unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_GATEWAY, "server_error", message)
            .with_code("upstream_unavailable")
    }

    /// The JSON envelope as bytes.
    pub fn to_json(&self) -> Bytes {
        let env = Envelope {
            error: Inner {
                message: &self.message,
                kind: &self.kind,
                code: self.code.as_deref(),
                param: self.param.as_deref(),
                resets_at: self.resets_at,
            },
        };
        // Serializing plain strings cannot fail.
        Bytes::from(serde_json::to_vec(&env).unwrap_or_default())
    }

    /// The full HTTP answer, with `Content-Type` and `Retry-After` set.
    pub fn into_response<B: From<Bytes>>(self) -> Response<B> {
        let body = self.to_json();
        let mut res = Response::new(B::from(body));
        *res.status_mut() = self.status;
        res.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(after) = self.retry_after {
            let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        res
    }
}

impl ApiError {
    /// The answer as a response of the stack's body type.
    pub fn into_stack_response(self) -> Response<crate::body::ResponseBody> {
        self.into_response::<Bytes>().map(crate::body::full_body)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.kind,
            self.message
        )
    }
}

impl std::error::Error for ApiError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_shape_and_retry_after() {
        let res: Response<http_body_util::Full<Bytes>> = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            "slow \"down\"",
        )
        .with_code("rate_limit_exceeded")
        .with_retry_after(Duration::from_millis(1500))
        .into_response();
        assert_eq!(res.status(), 429);
        assert_eq!(res.headers()[header::RETRY_AFTER], "2");
        let err = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            "slow \"down\"",
        )
        .with_param("model");
        let v: serde_json::Value = serde_json::from_slice(&err.to_json()).unwrap();
        assert_eq!(v["error"]["message"], "slow \"down\"");
        assert_eq!(v["error"]["type"], "rate_limit_error");
        assert_eq!(v["error"]["param"], "model");
        assert!(v["error"]["code"].is_null());
    }
}

/// A configuration that cannot be used.
#[derive(Debug)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}
