//! The frames of the Responses WebSocket: what a client sends, and the frames the proxy makes
//! up itself (error frames, a locally answered prewarm).
//!
//! A client sends JSON text frames tagged by `type`: `response.create` (the body fields of an
//! HTTP request, plus `previous_response_id`, `generate` and `client_metadata`) and
//! `response.processed` (an acknowledgement nobody answers). The proxy sends the upstream's
//! events as they are, and errors in the wrapped shape the Codex CLI reads:
//! `{"type":"error","status":429,"error":{"type","code","message",..},"headers":{..}}`.
//!
//! ```
//! use tower_responses::error::ApiError;
//! use tower_responses::websocket::frames::{ClientFrame, error_frame};
//!
//! let frame = ClientFrame::parse(br#"{"type":"response.create","model":"m","input":[]}"#).unwrap();
//! assert!(matches!(frame, ClientFrame::Create(_)));
//! assert!(matches!(ClientFrame::parse(b"[1]"), Err(_)));
//!
//! let err: serde_json::Value =
//!     serde_json::from_str(&error_frame(&ApiError::invalid_request("no").with_code("x"))).unwrap();
//! assert_eq!(err["type"], "error");
//! assert_eq!(err["status"], 400);
//! assert_eq!(err["error"]["code"], "x");
//! ```

use http::StatusCode;
use serde_json::{Map, Value, json};

use crate::error::ApiError;

/// `type` of a client's request frame.
pub const RESPONSE_CREATE: &str = "response.create";
/// `type` of a client's acknowledgement, accepted and ignored.
pub const RESPONSE_PROCESSED: &str = "response.processed";
/// Fields only the WebSocket transport knows: never sent to an HTTP upstream.
pub const WEBSOCKET_ONLY_FIELDS: [&str; 2] = ["type", "generate"];

/// A client frame, parsed.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientFrame {
    /// `response.create`: the whole frame, `type` included.
    Create(Map<String, Value>),
    /// `response.processed`: nothing to do.
    Processed,
}

impl ClientFrame {
    /// Parses a text frame; `Err` is the error frame's error (not JSON, not an object, an
    /// unknown `type`).
    pub fn parse(text: &[u8]) -> Result<ClientFrame, ApiError> {
        let value: Value = serde_json::from_slice(text).map_err(|e| {
            ApiError::invalid_request(format!("the frame is not JSON: {e}"))
                .with_code("invalid_json")
        })?;
        let Value::Object(map) = value else {
            return Err(ApiError::invalid_request("the frame is not a JSON object")
                .with_code("invalid_json"));
        };
        match map.get("type").and_then(Value::as_str) {
            Some(RESPONSE_CREATE) => Ok(ClientFrame::Create(map)),
            Some(RESPONSE_PROCESSED) => Ok(ClientFrame::Processed),
            Some(other) => Err(ApiError::invalid_request(format!(
                "unknown frame type `{}`: this socket takes `response.create` and `response.processed`",
                truncated(other)
            ))
            .with_code("unknown_frame_type")
            .with_param("type")),
            None => Err(ApiError::invalid_request(
                "the frame has no `type`; send `{\"type\":\"response.create\", ...}`",
            )
            .with_code("missing_frame_type")
            .with_param("type")),
        }
    }
}

fn truncated(s: &str) -> &str {
    match s.char_indices().nth(64) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// `true` for a `generate: false` prewarm: it asks for a response id and no output.
pub fn is_prewarm(frame: &Map<String, Value>) -> bool {
    frame.get("generate") == Some(&Value::Bool(false))
}

/// The wrapped error frame the Codex CLI reads (it maps a non-2xx `status` to an HTTP
/// error, retrying 5xx and `previous_response_not_found`).
pub fn error_frame(err: &ApiError) -> String {
    let mut error = Map::new();
    error.insert("type".into(), err.kind.clone().into());
    error.insert("code".into(), err.code.clone().into());
    error.insert("message".into(), err.message.clone().into());
    error.insert("param".into(), err.param.clone().into());
    if let Some(at) = err.resets_at {
        error.insert("resets_at".into(), at.into());
    }
    let mut headers = Map::new();
    if let Some(after) = err.retry_after {
        let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
        headers.insert("retry-after".into(), secs.max(1).to_string().into());
    }
    json!({
        "type": "error",
        "status": err.status.as_u16(),
        "error": error,
        "headers": headers,
    })
    .to_string()
}

/// A message over the socket's budget: a `400` the client does not retry and that keeps it on
/// the WebSocket (a `1009` close or a `413` makes the Codex CLI resend five times, then drop
/// to HTTP for the session).
pub fn payload_too_large(len: usize, budget: usize) -> ApiError {
    ApiError::invalid_request(format!(
        "the message is {len} bytes, over this socket's budget of {budget} bytes"
    ))
    .with_code("payload_too_large")
}

/// A second `response.create` while one is still streaming.
pub fn already_in_flight() -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "invalid_request_error",
        "a response is already in flight on this socket: wait for its terminal event",
    )
    .with_code("response_already_in_flight")
}

/// A binary frame: the Responses WebSocket speaks JSON text frames only.
pub fn binary_not_supported() -> ApiError {
    ApiError::invalid_request("binary frames are not accepted: send JSON text frames")
        .with_code("unsupported_frame")
}

/// An anchor the socket cannot expand: the canonical error on which the Codex CLI resends
/// the full request without `previous_response_id`.
pub fn previous_response_not_found(id: &str) -> ApiError {
    ApiError::invalid_request(format!(
        "Previous response with id '{}' not found.",
        truncated(id)
    ))
    .with_code("previous_response_not_found")
    .with_param("previous_response_id")
}

/// The two events that answer a `generate: false` prewarm locally, as the Codex backend
/// would: `response.created` then `response.completed` with no output and zero usage.
pub fn prewarm_events(id: &str, model: Option<&str>) -> [String; 2] {
    let response = |status: &str| {
        json!({
            "id": id,
            "object": "response",
            "status": status,
            "model": model,
            "output": [],
        })
    };
    let mut completed = response("completed");
    completed["usage"] = json!({
        "input_tokens": 0,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": 0,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 0,
    });
    [
        json!({"type": "response.created", "sequence_number": 0, "response": response("in_progress")})
            .to_string(),
        json!({"type": "response.completed", "sequence_number": 1, "response": completed})
            .to_string(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_parse_or_explain() {
        assert_eq!(
            ClientFrame::parse(br#"{"type":"response.processed","response_id":"resp_1"}"#).unwrap(),
            ClientFrame::Processed
        );
        let unknown = ClientFrame::parse(br#"{"type":"session.update"}"#).unwrap_err();
        assert_eq!(unknown.code.as_deref(), Some("unknown_frame_type"));
        let untyped = ClientFrame::parse(br#"{"model":"m"}"#).unwrap_err();
        assert_eq!(untyped.code.as_deref(), Some("missing_frame_type"));
        assert!(ClientFrame::parse(b"\xff").is_err());
    }

    #[test]
    fn error_frames_carry_status_code_and_retry_after() {
        let err = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "usage_limit_reached", "out")
            .with_code("usage_limit_reached")
            .with_retry_after(std::time::Duration::from_millis(1500));
        let mut err = err;
        err.resets_at = Some(42);
        let v: Value = serde_json::from_str(&error_frame(&err)).unwrap();
        assert_eq!(v["status"], 429);
        assert_eq!(v["error"]["resets_at"], 42);
        assert_eq!(v["headers"]["retry-after"], "2");
    }

    #[test]
    fn prewarm_is_created_then_completed_without_output() {
        let [created, completed] = prewarm_events("resp_prewarm_1", Some("gpt-5.5"));
        let created: Value = serde_json::from_str(&created).unwrap();
        let completed: Value = serde_json::from_str(&completed).unwrap();
        assert_eq!(created["type"], "response.created");
        assert_eq!(completed["response"]["id"], "resp_prewarm_1");
        assert_eq!(completed["response"]["output"], json!([]));
        assert_eq!(completed["response"]["usage"]["total_tokens"], 0);
    }
}
