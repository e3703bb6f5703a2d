//! A handler that makes [`MockUpstream`](super::MockUpstream) as strict as the ChatGPT Codex
//! backend.

use http::{Method, StatusCode};
use serde_json::{Value, json};

use super::{RecordedRequest, Reply};

/// Fields the Codex backend answers `400 {"detail":"Unsupported parameter: X"}` to.
pub const CODEX_UNSUPPORTED: [&str; 10] = [
    "max_output_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "truncation",
    "user",
    "metadata",
    "safety_identifier",
    "prompt_cache_retention",
    "previous_response_id",
];

/// A [`MockUpstream::set_handler`](super::MockUpstream::set_handler) handler that refuses
/// what the ChatGPT Codex backend refuses (PROTOCOL.md §2), with its `{"detail": ...}` 400s:
///
/// | body | answer |
/// |---|---|
/// | any of [`CODEX_UNSUPPORTED`] | `Unsupported parameter: X` |
/// | no `instructions` (an empty string is fine) | `Instructions are required` |
/// | a string `input` | `Input must be a list` |
/// | an `input` item with `"role":"system"` | `System messages are not allowed` |
/// | `stream` other than `true` | `Stream must be set to true` |
/// | `store: true` | `Store must be set to false` |
/// | `service_tier` other than `"priority"` | `Unsupported service_tier: X` |
///
/// Only `POST …/responses` bodies that are JSON objects are checked, in that order; anything
/// else, and every acceptable body, falls through (`None`) to the mock's script or its auto
/// reply, which streams.
///
/// ```
/// use tower_responses::testing::{MockUpstream, codex_strict};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let mock = MockUpstream::start().await.unwrap();
/// mock.set_handler(codex_strict());
///
/// let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
///     .build_http::<http_body_util::Full<bytes::Bytes>>();
/// let req = http::Request::post(format!("{}/responses", mock.base_url()))
///     .body(r#"{"model":"gpt-5.5","input":[],"stream":true,"max_output_tokens":10}"#.into())
///     .unwrap();
/// let res = client.request(req).await.unwrap();
/// assert_eq!(res.status(), 400);
/// # }
/// ```
pub fn codex_strict() -> impl Fn(&RecordedRequest) -> Option<Reply> + Send + Sync + 'static {
    |req: &RecordedRequest| {
        let path = req.path.split('?').next().unwrap_or("");
        if req.method != Method::POST || !path.trim_end_matches('/').ends_with("/responses") {
            return None;
        }
        let body = req.json()?;
        let detail = codex_refusal(body.as_object()?)?;
        Some(Reply::json(
            StatusCode::BAD_REQUEST,
            json!({ "detail": detail }),
        ))
    }
}

/// Why the Codex backend would refuse this body, if it would.
fn codex_refusal(body: &serde_json::Map<String, Value>) -> Option<String> {
    if let Some(field) = CODEX_UNSUPPORTED.iter().find(|f| body.contains_key(**f)) {
        return Some(format!("Unsupported parameter: {field}"));
    }
    if !body.get("instructions").is_some_and(Value::is_string) {
        return Some("Instructions are required".into());
    }
    match body.get("input") {
        Some(Value::Array(items)) => {
            if items
                .iter()
                .any(|i| i.get("role").and_then(Value::as_str) == Some("system"))
            {
                return Some("System messages are not allowed".into());
            }
        }
        _ => return Some("Input must be a list".into()),
    }
    if body.get("stream") != Some(&Value::Bool(true)) {
        return Some("Stream must be set to true".into());
    }
    if body.get("store") == Some(&Value::Bool(true)) {
        return Some("Store must be set to false".into());
    }
    match body.get("service_tier") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) if s == "priority" => {}
        Some(other) => return Some(format!("Unsupported service_tier: {other}")),
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(v: Value) -> Option<String> {
        codex_refusal(v.as_object().unwrap())
    }

    #[test]
    fn refuses_like_the_backend() {
        let ok = json!({"model":"m","instructions":"","input":[],"stream":true,"store":false});
        assert_eq!(refusal(ok.clone()), None);
        let with = |k: &str, v: Value| {
            let mut b = ok.clone();
            b[k] = v;
            refusal(b).unwrap()
        };
        assert_eq!(
            with("temperature", json!(1)),
            "Unsupported parameter: temperature"
        );
        assert_eq!(with("input", json!("hi")), "Input must be a list");
        assert_eq!(
            with("input", json!([{"role":"system","content":"x"}])),
            "System messages are not allowed"
        );
        assert_eq!(with("stream", json!(false)), "Stream must be set to true");
        assert_eq!(with("store", json!(true)), "Store must be set to false");
        assert!(with("service_tier", json!("flex")).starts_with("Unsupported service_tier"));
        assert_eq!(
            refusal(json!({"model":"m","input":[],"stream":true})).unwrap(),
            "Instructions are required"
        );
    }
}
