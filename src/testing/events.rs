//! Builders for realistic Responses API stream events.
//!
//! Each function returns the JSON of one event as the OpenAI Responses API sends it (the
//! `data:` line); [`encode`] turns one into SSE bytes. Tests use them to script failures:
//!
//! ```
//! use tower_responses::testing::{events, Reply};
//!
//! let id = "resp_quota";
//! let reply = Reply::sse(vec![
//!     events::created(id),
//!     events::in_progress(id),
//!     events::failed(id, "insufficient_quota", "You exceeded your current quota."),
//! ]);
//! # let _ = reply;
//! let ev = events::failed(id, "insufficient_quota", "You exceeded your current quota.");
//! assert_eq!(ev["type"], "response.failed");
//! assert_eq!(ev["response"]["error"]["code"], "insufficient_quota");
//! ```
//!
//! Events that belong to an output item use `output_index` 0 and `content_index` 0, which is
//! what a one-message answer has; set `ev["output_index"]` yourself for multi-item answers.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde_json::{Value, json};

/// The model name the mock reports when the request does not name one.
pub const MODEL: &str = "gpt-mock";

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A fresh `(response id, message id)` pair, `("resp_mock_N", "msg_mock_N")`, unique in the
/// process.
pub fn next_ids() -> (String, String) {
    let n = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    (format!("resp_mock_{n}"), format!("msg_mock_{n}"))
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Encodes one event as SSE: `event: <type>\ndata: <json>\n\n` (only the `data:` line when
/// the value has no string `type`).
pub fn encode(event: &Value) -> Bytes {
    let data = event.to_string();
    let out = match event.get("type").and_then(Value::as_str) {
        Some(kind) => format!("event: {kind}\ndata: {data}\n\n"),
        None => format!("data: {data}\n\n"),
    };
    Bytes::from(out)
}

/// A response object (`"object":"response"`) with the given status, output and usage.
pub fn response(id: &str, status: &str, output: Vec<Value>, usage: Option<Value>) -> Value {
    json!({
        "id": id,
        "object": "response",
        "created_at": unix_now(),
        "status": status,
        "error": null,
        "incomplete_details": null,
        "model": MODEL,
        "output": output,
        "usage": usage,
    })
}

/// `response.created`, the first event of every stream.
pub fn created(id: &str) -> Value {
    json!({"type": "response.created", "response": response(id, "in_progress", vec![], None)})
}

/// `response.in_progress`.
pub fn in_progress(id: &str) -> Value {
    json!({"type": "response.in_progress", "response": response(id, "in_progress", vec![], None)})
}

/// `response.output_item.added` for `item` at output index 0; the first event that carries
/// content (see [`message_item_in_progress`] for a message).
pub fn output_item_added(item: Value) -> Value {
    json!({"type": "response.output_item.added", "output_index": 0, "item": item})
}

/// `response.content_part.added`: an empty `output_text` part of message `item_id`.
pub fn content_part_added(item_id: &str) -> Value {
    json!({
        "type": "response.content_part.added",
        "item_id": item_id,
        "output_index": 0,
        "content_index": 0,
        "part": {"type": "output_text", "text": "", "annotations": []},
    })
}

/// `response.output_text.delta`: a piece of text of message `item_id`.
pub fn output_text_delta(item_id: &str, delta: &str) -> Value {
    json!({
        "type": "response.output_text.delta",
        "item_id": item_id,
        "output_index": 0,
        "content_index": 0,
        "delta": delta,
    })
}

/// `response.output_text.done`: the whole text of message `item_id`.
pub fn output_text_done(item_id: &str, text: &str) -> Value {
    json!({
        "type": "response.output_text.done",
        "item_id": item_id,
        "output_index": 0,
        "content_index": 0,
        "text": text,
    })
}

/// `response.content_part.done`: the finished `output_text` part of message `item_id`.
pub fn content_part_done(item_id: &str, text: &str) -> Value {
    json!({
        "type": "response.content_part.done",
        "item_id": item_id,
        "output_index": 0,
        "content_index": 0,
        "part": {"type": "output_text", "text": text, "annotations": []},
    })
}

/// `response.output_item.done` for the finished `item` at output index 0.
pub fn output_item_done(item: Value) -> Value {
    json!({"type": "response.output_item.done", "output_index": 0, "item": item})
}

/// `response.completed` with the final output list and usage.
pub fn completed(id: &str, output: Vec<Value>, usage: Value) -> Value {
    json!({"type": "response.completed", "response": response(id, "completed", output, Some(usage))})
}

/// `response.failed` with `response.error{code, message}`.
pub fn failed(id: &str, code: &str, message: &str) -> Value {
    let mut resp = response(id, "failed", vec![], None);
    resp["error"] = json!({"code": code, "message": message});
    json!({"type": "response.failed", "response": resp})
}

/// A top-level `error` event (`{"type":"error","code","message","param"}`).
pub fn error(code: &str, message: &str) -> Value {
    json!({"type": "error", "code": code, "message": message, "param": null})
}

/// `response.incomplete` with `incomplete_details.reason`, e.g. `max_output_tokens`.
pub fn incomplete(id: &str, reason: &str) -> Value {
    let mut resp = response(id, "incomplete", vec![], None);
    resp["incomplete_details"] = json!({"reason": reason});
    json!({"type": "response.incomplete", "response": resp})
}

/// A `usage` object; `total_tokens` is the sum, cached and reasoning tokens are 0.
pub fn usage(input: u64, output: u64) -> Value {
    json!({
        "input_tokens": input,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": output,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": input + output,
    })
}

/// A completed assistant `message` item holding one `output_text` part.
pub fn message_item(id: &str, text: &str) -> Value {
    json!({
        "id": id,
        "type": "message",
        "status": "completed",
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": []}],
    })
}

/// An assistant `message` item as announced by `response.output_item.added`: in progress,
/// no content yet.
pub fn message_item_in_progress(id: &str) -> Value {
    json!({"id": id, "type": "message", "status": "in_progress", "role": "assistant", "content": []})
}

/// A `compaction` output item (what remote compaction returns).
pub fn compaction_item(encrypted_content: &str) -> Value {
    json!({"type": "compaction", "encrypted_content": encrypted_content})
}

/// The whole ordered event sequence of a streamed text answer, with fresh ids
/// ([`next_ids`]) and a small made-up usage.
///
/// ```
/// let evs = tower_responses::testing::events::text_answer("hello there world");
/// assert_eq!(evs.first().unwrap()["type"], "response.created");
/// assert_eq!(evs.last().unwrap()["type"], "response.completed");
/// let text: String = evs
///     .iter()
///     .filter(|e| e["type"] == "response.output_text.delta")
///     .map(|e| e["delta"].as_str().unwrap())
///     .collect();
/// assert_eq!(text, "hello there world");
/// ```
pub fn text_answer(text: &str) -> Vec<Value> {
    let (resp_id, msg_id) = next_ids();
    let output_tokens = text.split_whitespace().count().max(1) as u64;
    answer(&resp_id, &msg_id, text, usage(12, output_tokens))
}

/// [`text_answer`] with chosen ids and usage. Every event carries a `sequence_number`.
pub fn answer(resp_id: &str, msg_id: &str, text: &str, usage: Value) -> Vec<Value> {
    let mut evs = vec![
        created(resp_id),
        in_progress(resp_id),
        output_item_added(message_item_in_progress(msg_id)),
        content_part_added(msg_id),
    ];
    evs.extend(
        split_deltas(text)
            .into_iter()
            .map(|d| output_text_delta(msg_id, d)),
    );
    evs.push(output_text_done(msg_id, text));
    evs.push(content_part_done(msg_id, text));
    evs.push(output_item_done(message_item(msg_id, text)));
    evs.push(completed(resp_id, vec![message_item(msg_id, text)], usage));
    for (n, ev) in evs.iter_mut().enumerate() {
        ev["sequence_number"] = json!(n);
    }
    evs
}

/// Splits text the way a model streams it: word by word (each piece keeps its trailing
/// space), and a single word in two halves, so every answer has more than one delta when it
/// can.
fn split_deltas(text: &str) -> Vec<&str> {
    let pieces: Vec<&str> = text.split_inclusive(' ').collect();
    if pieces.len() > 1 {
        return pieces;
    }
    let mid = text
        .char_indices()
        .nth(text.chars().count() / 2)
        .map(|(i, _)| i);
    match mid {
        Some(i) if i > 0 => vec![&text[..i], &text[i..]],
        _ => vec![text],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deltas_rebuild_the_text() {
        for text in ["", "x", "héllo", "a b  c ", "one two three four"] {
            let joined: String = split_deltas(text).concat();
            assert_eq!(joined, text);
        }
        assert_eq!(split_deltas("héllo").len(), 2);
    }

    #[test]
    fn encode_names_the_event() {
        let bytes = encode(&error("server_error", "boom"));
        let s = std::str::from_utf8(&bytes).unwrap();
        assert!(s.starts_with("event: error\ndata: {"));
        assert!(s.ends_with("}\n\n"));
        assert_eq!(&encode(&json!({"x": 1}))[..], b"data: {\"x\":1}\n\n");
    }

    #[test]
    fn ids_are_unique_per_answer() {
        let a = text_answer("a");
        let b = text_answer("b");
        assert_ne!(a[0]["response"]["id"], b[0]["response"]["id"]);
        assert_eq!(a.last().unwrap()["response"]["usage"]["total_tokens"], 13);
    }
}
