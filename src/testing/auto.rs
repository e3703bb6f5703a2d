//! `Reply::auto()`: plausible answers computed from the request.

use std::sync::atomic::{AtomicU64, Ordering};

use http::{Method, StatusCode};
use serde_json::{Value, json};

use super::events;
use super::{RecordedRequest, Reply};
use crate::error::ApiError;

/// Longest quote of the user's message in an auto answer.
const QUOTE_CHARS: usize = 60;

static NEXT_REQUEST: AtomicU64 = AtomicU64::new(1);
static NEXT_COMPACTION: AtomicU64 = AtomicU64::new(1);

pub(crate) fn request_id() -> String {
    format!("req_mock_{}", NEXT_REQUEST.fetch_add(1, Ordering::Relaxed))
}

/// The route without the optional `/v1` prefix and without the query.
fn route(path: &str) -> &str {
    let path = path.split('?').next().unwrap_or("");
    let path = path.strip_prefix("/v1").unwrap_or(path);
    path.strip_suffix('/').unwrap_or(path)
}

pub(crate) fn reply_for(req: &RecordedRequest) -> Reply {
    match (&req.method, route(&req.path)) {
        (&Method::POST, "/responses") => match req.json() {
            Some(body) if body.is_object() => {
                if body.get("stream").and_then(Value::as_bool) == Some(true) {
                    Reply::auto_stream()
                } else {
                    Reply::json(StatusCode::OK, response_object(req))
                }
            }
            _ => error_reply(ApiError::invalid_request(
                "We could not parse the JSON body of your request.",
            )),
        },
        (&Method::POST, "/responses/compact") => match req.json() {
            Some(body) if body.is_object() => Reply::json(StatusCode::OK, compact(&body)),
            _ => error_reply(ApiError::invalid_request(
                "We could not parse the JSON body of your request.",
            )),
        },
        (&Method::GET, "/models") => Reply::json(StatusCode::OK, models()),
        (method, _) => error_reply(ApiError::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            format!("Invalid URL ({method} {})", req.path),
        )),
    }
}

fn error_reply(err: ApiError) -> Reply {
    let body = serde_json::from_slice(&err.to_json()).unwrap_or(Value::Null);
    Reply::json(err.status, body)
}

/// The text of an auto answer: quotes the last user message so a test can tell which
/// request it answers.
fn answer_text(req: &RecordedRequest) -> String {
    let body = req.json().unwrap_or(Value::Null);
    match last_user_text(&body) {
        Some(text) => {
            let quote: String = text.chars().take(QUOTE_CHARS).collect();
            format!("This is a mock answer to: {quote}")
        }
        None => "This is a mock answer.".to_owned(),
    }
}

fn last_user_text(body: &Value) -> Option<String> {
    match body.get("input")? {
        Value::String(s) => Some(s.clone()),
        Value::Array(items) => items
            .iter()
            .rev()
            .filter(|item| item.get("role").and_then(Value::as_str) == Some("user"))
            .find_map(|item| content_text(item.get("content")?)),
        _ => None,
    }
}

fn content_text(content: &Value) -> Option<String> {
    match content {
        Value::String(s) => Some(s.clone()),
        Value::Array(parts) => {
            let text: Vec<&str> = parts
                .iter()
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect();
            (!text.is_empty()).then(|| text.join(" "))
        }
        _ => None,
    }
}

fn model(req: &RecordedRequest) -> String {
    req.json()
        .and_then(|b| b.get("model").and_then(Value::as_str).map(str::to_owned))
        .unwrap_or_else(|| events::MODEL.to_owned())
}

fn usage_for(req: &RecordedRequest, text: &str) -> Value {
    let input = (req.body.len() as u64 / 4).max(1);
    let output = text.split_whitespace().count().max(1) as u64;
    events::usage(input, output)
}

/// The streamed auto answer.
pub(crate) fn answer_events(req: &RecordedRequest) -> Vec<Value> {
    text_events(req, &answer_text(req))
}

/// A streamed answer with `text`, the request's model and a usage sized from the request.
pub(crate) fn text_events(req: &RecordedRequest, text: &str) -> Vec<Value> {
    let (resp_id, msg_id) = events::next_ids();
    let model = model(req);
    let mut evs = events::answer(&resp_id, &msg_id, text, usage_for(req, text));
    for ev in &mut evs {
        if let Some(resp) = ev.get_mut("response") {
            resp["model"] = json!(model);
        }
    }
    evs
}

fn response_object(req: &RecordedRequest) -> Value {
    let (resp_id, msg_id) = events::next_ids();
    let text = answer_text(req);
    let usage = usage_for(req, &text);
    let mut resp = events::response(
        &resp_id,
        "completed",
        vec![events::message_item(&msg_id, &text)],
        Some(usage),
    );
    resp["model"] = json!(model(req));
    resp
}

fn compact(body: &Value) -> Value {
    let mut output: Vec<Value> = match body.get("input") {
        Some(Value::Array(items)) => items
            .iter()
            .filter(|item| item.get("role").and_then(Value::as_str) == Some("user"))
            .cloned()
            .collect(),
        Some(Value::String(s)) => vec![json!({"type": "message", "role": "user", "content": s})],
        _ => Vec::new(),
    };
    let n = NEXT_COMPACTION.fetch_add(1, Ordering::Relaxed);
    output.push(events::compaction_item(&format!("mock-compaction-{n}")));
    json!({"output": output})
}

fn models() -> Value {
    let model = |id: &str| json!({"id": id, "object": "model", "created": 0, "owned_by": "mock"});
    json!({"object": "list", "data": [model(events::MODEL), model("gpt-mock-mini")]})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_with_and_without_v1() {
        assert_eq!(route("/v1/responses"), "/responses");
        assert_eq!(route("/responses/compact?x=1"), "/responses/compact");
        assert_eq!(route("/v1/models/"), "/models");
        assert_eq!(route("/v1x"), "x");
    }

    #[test]
    fn quotes_the_last_user_message() {
        let body = json!({"input": [
            {"type": "message", "role": "user", "content": "first"},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "hi"}]},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "second"}]},
        ]});
        assert_eq!(last_user_text(&body).as_deref(), Some("second"));
        let compacted = compact(&body);
        let out = compacted["output"].as_array().unwrap();
        assert_eq!(out.len(), 3);
        assert_eq!(out[2]["type"], "compaction");
    }
}
