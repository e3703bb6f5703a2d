//! Reading and rewriting compaction request bodies.

use bytes::Bytes;
use http::{Method, Request};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::CompactForm;
use super::marker::{MARKER_PREFIX, SUMMARY_PREFIX};
use crate::body::ReplayBody;
use crate::json::{RawObject, array_items, item_type, join_array};

/// The compaction form of a request, if it is one.
///
/// ```
/// use bytes::Bytes;
/// use tower_responses::body::ReplayBody;
/// use tower_responses::compact::{compaction_form, CompactForm};
///
/// let req = |path: &str, body: &'static str| {
///     http::Request::post(format!("https://api.openai.com/v1{path}"))
///         .body(ReplayBody::new(Bytes::from_static(body.as_bytes())))
///         .unwrap()
/// };
/// assert_eq!(compaction_form(&req("/responses/compact", "{}")), Some(CompactForm::V1));
/// let v2 = r#"{"input":[{"role":"user","content":"hi"},{"type":"compaction_trigger"}]}"#;
/// assert_eq!(compaction_form(&req("/responses", v2)), Some(CompactForm::V2));
/// assert_eq!(compaction_form(&req("/responses", r#"{"input":"hi"}"#)), None);
/// ```
pub fn compaction_form(req: &Request<ReplayBody>) -> Option<CompactForm> {
    if req.method() != Method::POST {
        return None;
    }
    let path = req.uri().path().trim_end_matches('/');
    if path.ends_with("/responses/compact") {
        return Some(CompactForm::V1);
    }
    if !path.ends_with("/responses") {
        return None;
    }
    let body = req.body().bytes();
    // Most turns are not compactions: skip the parse unless the item type appears at all.
    memchr::memmem::find(body, b"compaction_trigger")?;
    let obj = RawObject::parse(body).ok()?;
    let items = array_items(obj.get("input")?)?;
    (item_type(items.last()?) == Some("compaction_trigger")).then_some(CompactForm::V2)
}

/// The same body with `model` set to `model`.
pub(crate) fn with_model(body: &[u8], model: &str) -> Option<Bytes> {
    let mut obj = RawObject::parse(body).ok()?;
    obj.set_value("model", &model);
    Some(obj.to_bytes())
}

/// Top-level fields a summarisation request keeps from the compaction request: what selects
/// the model and keeps the prompt cache warm. Tools, tool choice and output formats go: the
/// summary is plain text.
const KEPT_FIELDS: &[&str] = &[
    "model",
    "instructions",
    "prompt_cache_key",
    "reasoning",
    "service_tier",
    "store",
];

/// The body of the `/responses` request that asks the upstream for a summary: the
/// conversation (without a trailing `compaction_trigger`) plus `prompt` as the last user
/// message, no tools, `stream: true`.
pub(crate) fn summary_request(body: &[u8], prompt: &str) -> Option<Bytes> {
    let src = RawObject::parse(body).ok()?;
    let request_message = user_message(prompt);
    let input = match src.get("input") {
        Some(raw) if raw.trim_start().starts_with('"') => {
            let text: String = serde_json::from_str(raw).ok()?;
            join_array([user_message(&text).as_str(), request_message.as_str()])
        }
        Some(raw) => {
            let mut items = array_items(raw)?;
            if items.last().and_then(|i| item_type(i)) == Some("compaction_trigger") {
                items.pop();
            }
            items.push(&request_message);
            join_array(items)
        }
        None => join_array([request_message.as_str()]),
    };
    let mut out = RawObject::parse(b"{}").ok()?;
    for key in KEPT_FIELDS {
        if let Some(raw) = src.get(key) {
            out.set(key, raw);
        }
    }
    out.set("input", input);
    out.set("stream", "true");
    Some(out.to_bytes())
}

fn user_message(text: &str) -> String {
    serde_json::json!({
        "type": "message",
        "role": "user",
        "content": [{"type": "input_text", "text": text}],
    })
    .to_string()
}

#[derive(Deserialize)]
struct Message<'a> {
    #[serde(rename = "type", default)]
    kind: Option<&'a str>,
    #[serde(default)]
    role: Option<&'a str>,
    #[serde(borrow, default)]
    content: Option<&'a RawValue>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Deserialize)]
struct Part {
    #[serde(default)]
    text: Option<String>,
}

/// Opening lines of user messages that the Codex CLI injects itself (context, AGENTS.md) or
/// that hold an earlier summary: not what the user said.
const NOT_REAL: &[&str] = &[
    "<environment_context>",
    "<user_instructions>",
    "<user_shell_command>",
    "# AGENTS.md instructions",
    SUMMARY_PREFIX,
    MARKER_PREFIX,
];

fn is_real_user_message(raw: &str) -> bool {
    let Ok(msg) = serde_json::from_str::<Message<'_>>(raw) else {
        return false;
    };
    if msg.role != Some("user") || !matches!(msg.kind, None | Some("message")) {
        return false;
    }
    let text = match msg
        .content
        .map(|c| serde_json::from_str::<Content>(c.get()))
    {
        Some(Ok(Content::Text(t))) => t,
        Some(Ok(Content::Parts(parts))) => parts.into_iter().filter_map(|p| p.text).collect(),
        _ => return false,
    };
    let text = text.trim_start();
    !NOT_REAL.iter().any(|p| text.starts_with(p))
}

/// The most recent real user messages of the request's `input`, oldest first, as raw JSON,
/// within `budget_bytes`.
pub(crate) fn kept_user_messages(body: &[u8], budget_bytes: usize) -> Vec<String> {
    let Some(obj) = RawObject::parse(body).ok() else {
        return Vec::new();
    };
    let Some(raw) = obj.get("input") else {
        return Vec::new();
    };
    if raw.trim_start().starts_with('"') {
        let text: String = serde_json::from_str(raw).unwrap_or_default();
        return (text.len() <= budget_bytes)
            .then(|| user_message(&text))
            .into_iter()
            .collect();
    }
    let mut kept = Vec::new();
    let mut used = 0usize;
    for item in array_items(raw).unwrap_or_default().into_iter().rev() {
        if !is_real_user_message(item) {
            continue;
        }
        used += item.len();
        if used > budget_bytes {
            break;
        }
        kept.push(item.to_string());
    }
    kept.reverse();
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_request_shape() {
        let body = br#"{"model":"gpt-5.5","instructions":"be nice","input":[{"role":"user","content":"hi"},{"type":"compaction_trigger"}],"tools":[{"type":"function","name":"f"}],"tool_choice":"auto","prompt_cache_key":"sess","stream":true,"text":{"format":{"type":"json_schema"}}}"#;
        let out = summary_request(body, "Summarise.").unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["model"], "gpt-5.5");
        assert_eq!(v["instructions"], "be nice");
        assert_eq!(v["prompt_cache_key"], "sess");
        assert_eq!(v["stream"], true);
        assert!(
            v.get("tools").is_none() && v.get("tool_choice").is_none() && v.get("text").is_none()
        );
        let input = v["input"].as_array().unwrap();
        assert_eq!(input.len(), 2);
        assert_eq!(input[0]["content"], "hi");
        assert_eq!(input[1]["content"][0]["text"], "Summarise.");
        // The conversation prefix is copied byte for byte (prompt cache).
        assert!(
            std::str::from_utf8(&out)
                .unwrap()
                .contains(r#"[{"role":"user","content":"hi"},"#)
        );

        let s = summary_request(br#"{"model":"m","input":"just text"}"#, "S").unwrap();
        let v: serde_json::Value = serde_json::from_slice(&s).unwrap();
        assert_eq!(v["input"][0]["content"][0]["text"], "just text");
    }

    #[test]
    fn keeps_recent_real_user_messages_within_budget() {
        let body = serde_json::json!({"input": [
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "<environment_context>cwd</environment_context>"}]},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "first ask"}]},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "done"}]},
            {"type": "message", "role": "user", "content": format!("{SUMMARY_PREFIX}\n\nold")},
            {"role": "user", "content": "second ask"},
            {"type": "compaction_trigger"},
        ]})
        .to_string();
        let kept = kept_user_messages(body.as_bytes(), 10_000);
        assert_eq!(kept.len(), 2);
        assert!(kept[0].contains("first ask") && kept[1].contains("second ask"));
        let kept = kept_user_messages(body.as_bytes(), 40);
        assert_eq!(kept.len(), 1);
        assert!(kept[0].contains("second ask"));
    }
}
