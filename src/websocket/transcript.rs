//! A client socket's transcript: the context after its last completed response, so an
//! incremental `response.create` (`previous_response_id` plus only the new items) can always
//! become the full request an HTTP upstream, a new upstream socket or another account needs.
//!
//! The Codex CLI chains a frame on the previous response only when that response completed
//! and the new input extends the previous input plus its output; so the transcript keeps
//! exactly that: the last completed turn's full input followed by the output items streamed
//! for it (`response.output_item.done`). It is bounded: past its byte limit it is dropped, and
//! a frame anchored on it gets `previous_response_not_found`, on which the client resends the
//! full request.
//!
//! ```
//! use serde_json::json;
//! use tower_responses::websocket::transcript::Transcript;
//!
//! let mut t = Transcript::new(1 << 20);
//! let first = json!({"type":"response.create","model":"m","input":[{"role":"user","content":"hi"}]});
//! let full = t.expand(first.as_object().unwrap()).unwrap();
//! t.begin(&full);
//! t.observe(r#"{"type":"response.output_item.done","item":{"type":"message","role":"assistant","content":"yo"}}"#);
//! t.observe(r#"{"type":"response.completed","response":{"id":"resp_1","output":[]}}"#);
//!
//! let next = json!({"type":"response.create","model":"m","previous_response_id":"resp_1",
//!                   "input":[{"role":"user","content":"again"}]});
//! let full = t.expand(next.as_object().unwrap()).unwrap();
//! assert_eq!(full["input"].as_array().unwrap().len(), 3);
//! assert!(full.get("previous_response_id").is_none());
//! assert_eq!(full["stream"], true);
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::{Map, Value};

use super::frames::{self, WEBSOCKET_ONLY_FIELDS};
use crate::error::ApiError;

/// Bytes all sockets' transcripts may hold together, shared by the sockets of one proxy: a
/// transcript that does not fit is dropped (the client then resends in full), so a thousand
/// long sessions cannot hold a thousand full contexts.
///
/// ```
/// use tower_responses::websocket::transcript::TranscriptBudget;
///
/// let budget = TranscriptBudget::new(100);
/// assert!(budget.try_take(60));
/// assert!(!budget.try_take(60));
/// budget.give_back(60);
/// assert_eq!(budget.in_use(), 0);
/// ```
#[derive(Debug, Clone)]
pub struct TranscriptBudget {
    limit: usize,
    used: Arc<AtomicUsize>,
}

impl TranscriptBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Self {
        TranscriptBudget {
            limit,
            used: Arc::default(),
        }
    }

    /// Takes `n` bytes if they fit.
    pub fn try_take(&self, n: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(n).filter(|&total| total <= self.limit)
            })
            .is_ok()
    }

    /// Returns `n` bytes taken before.
    pub fn give_back(&self, n: usize) {
        let _ = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                Some(used.saturating_sub(n))
            });
    }

    /// Bytes held now.
    pub fn in_use(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }
}

/// The context after the last completed response of one socket, and the turn in flight.
#[derive(Debug)]
pub struct Transcript {
    limit: usize,
    last: Option<Chain>,
    pending: Option<Pending>,
    budget: Option<TranscriptBudget>,
}

/// A completed response and the full context after it.
#[derive(Debug)]
struct Chain {
    id: String,
    items: Vec<Value>,
    bytes: usize,
}

/// The turn in flight: its full input and the output items seen so far.
#[derive(Debug)]
struct Pending {
    items: Vec<Value>,
    bytes: usize,
    /// Past the limit: the turn completes, but nothing is kept.
    overflowed: bool,
}

impl Transcript {
    /// An empty transcript holding at most `limit` bytes of items (serialized JSON).
    pub fn new(limit: usize) -> Self {
        Transcript {
            limit,
            last: None,
            pending: None,
            budget: None,
        }
    }

    /// Counts the kept context against a budget shared with other sockets.
    pub fn with_budget(mut self, budget: TranscriptBudget) -> Self {
        self.budget = Some(budget);
        self
    }

    /// The id of the response a frame may chain on, if any.
    pub fn last_response_id(&self) -> Option<&str> {
        self.last.as_ref().map(|c| c.id.as_str())
    }

    /// The full request for a `response.create` frame: its fields without `type`,
    /// `generate` and `previous_response_id`, `stream: true`, and an input that starts with
    /// the anchor's context when the frame is chained. An anchor this socket does not know
    /// (or no longer holds) is `previous_response_not_found`.
    pub fn expand(&self, frame: &Map<String, Value>) -> Result<Value, ApiError> {
        let mut full = frame.clone();
        for field in WEBSOCKET_ONLY_FIELDS {
            full.remove(field);
        }
        let anchor = full.remove("previous_response_id");
        let new_items = match full.remove("input") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => items,
            // A plain-text input is one user message.
            Some(Value::String(text)) => vec![serde_json::json!({
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": text}],
            })],
            Some(_) => {
                return Err(ApiError::invalid_request(
                    "`input` must be a string or an array of items",
                )
                .with_param("input"));
            }
        };
        let input = match anchor {
            None | Some(Value::Null) => new_items,
            Some(Value::String(id)) => match &self.last {
                Some(chain) if chain.id == id => {
                    let mut items = Vec::with_capacity(chain.items.len() + new_items.len());
                    items.extend(chain.items.iter().cloned());
                    items.extend(new_items);
                    items
                }
                _ => return Err(frames::previous_response_not_found(&id)),
            },
            Some(_) => {
                return Err(
                    ApiError::invalid_request("`previous_response_id` must be a string")
                        .with_param("previous_response_id"),
                );
            }
        };
        full.insert("input".into(), Value::Array(input));
        full.insert("stream".into(), Value::Bool(true));
        Ok(Value::Object(full))
    }

    /// A turn with this full request (from [`expand`](Self::expand)) is going upstream.
    pub fn begin(&mut self, full: &Value) {
        let items = full["input"].as_array().cloned().unwrap_or_default();
        let bytes = items.iter().map(item_bytes).sum();
        self.pending = Some(Pending {
            overflowed: bytes > self.limit,
            items,
            bytes,
        });
        self.fit_pending();
    }

    /// One upstream event of the turn in flight: output items are kept, a completed
    /// response becomes the new anchor, a failed one leaves the previous anchor (the client
    /// only chains on completed responses).
    pub fn observe(&mut self, event: &str) {
        let Some(kind) = crate::sse::sniff_type(event.as_bytes()) else {
            return;
        };
        match kind {
            "response.output_item.done" => {
                let Some(pending) = self.pending.as_mut().filter(|p| !p.overflowed) else {
                    return;
                };
                if let Ok(mut v) = serde_json::from_str::<Value>(event) {
                    let item = v["item"].take();
                    if item.is_object() {
                        pending.bytes += item_bytes(&item);
                        pending.items.push(item);
                        self.fit_pending();
                    }
                }
            }
            "response.completed" => {
                let Some(pending) = self.pending.take() else {
                    return;
                };
                let Ok(v) = serde_json::from_str::<Value>(event) else {
                    return;
                };
                let Some(id) = v["response"]["id"].as_str() else {
                    return;
                };
                self.commit(id, pending);
            }
            "response.failed" | "response.incomplete" | "error" => self.pending = None,
            _ => {}
        }
    }

    /// The turn ended without a terminal event (cut, cancelled): nothing to chain on.
    pub fn abandon(&mut self) {
        self.pending = None;
    }

    /// A prewarm answered locally: its input becomes the context later frames chain on.
    pub fn prewarmed(&mut self, id: &str, full: &Value) {
        self.begin(full);
        if let Some(pending) = self.pending.take() {
            self.commit(id, pending);
        }
    }

    fn commit(&mut self, id: &str, pending: Pending) {
        self.release();
        let fits = self
            .budget
            .as_ref()
            .is_none_or(|b| b.try_take(pending.bytes));
        if !fits {
            tracing::info!(
                bytes = pending.bytes,
                "websocket transcripts are at their shared budget: this one is dropped; the \
                 next chained frame gets previous_response_not_found and the client resends in full"
            );
            return;
        }
        if pending.overflowed {
            if let Some(b) = &self.budget {
                b.give_back(pending.bytes);
            }
            tracing::info!(
                limit = self.limit,
                "websocket transcript over its limit: dropped; the next chained frame gets \
                 previous_response_not_found and the client resends in full"
            );
            self.last = None;
            return;
        }
        self.last = Some(Chain {
            id: id.to_string(),
            items: pending.items,
            bytes: pending.bytes,
        });
    }

    /// Drops the kept context, returning its bytes to the budget.
    fn release(&mut self) {
        if let Some(chain) = self.last.take() {
            if let Some(b) = &self.budget {
                b.give_back(chain.bytes);
            }
        }
    }

    fn fit_pending(&mut self) {
        if let Some(p) = self.pending.as_mut() {
            if p.bytes > self.limit {
                p.overflowed = true;
                p.items = Vec::new();
            }
        }
        // The previous anchor is replaced by this turn's on completion; while the turn is in
        // flight only one full context (plus the new one) is held.
    }
}

impl Drop for Transcript {
    fn drop(&mut self) {
        self.release();
    }
}

fn item_bytes(item: &Value) -> usize {
    // Serialized length, as a client would send it; writing into a counter allocates nothing.
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut c = Count(0);
    let _ = serde_json::to_writer(&mut c, item);
    c.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    fn completed(t: &mut Transcript, id: &str, out: &[Value]) {
        for item in out {
            t.observe(&json!({"type":"response.output_item.done","item":item}).to_string());
        }
        t.observe(&json!({"type":"response.completed","response":{"id":id}}).to_string());
    }

    #[test]
    fn chained_frames_expand_to_input_plus_output_plus_new_items() {
        let mut t = Transcript::new(1 << 20);
        let full = t
            .expand(&obj(
                json!({"type":"response.create","input":[{"n":1}],"generate":false}),
            ))
            .unwrap();
        assert!(full.get("generate").is_none() && full.get("type").is_none());
        t.prewarmed("resp_w", &full);
        let full = t
            .expand(&obj(
                json!({"previous_response_id":"resp_w","input":[{"n":2}]}),
            ))
            .unwrap();
        assert_eq!(full["input"], json!([{"n":1},{"n":2}]));
        t.begin(&full);
        completed(&mut t, "resp_a", &[json!({"out":1})]);
        let full = t
            .expand(&obj(
                json!({"previous_response_id":"resp_a","input":[{"n":3}]}),
            ))
            .unwrap();
        assert_eq!(full["input"], json!([{"n":1},{"n":2},{"out":1},{"n":3}]));
    }

    #[test]
    fn unknown_failed_and_dropped_anchors_are_not_found() {
        let mut t = Transcript::new(1 << 20);
        let err = t
            .expand(&obj(json!({"previous_response_id":"resp_x","input":[]})))
            .unwrap_err();
        assert_eq!(err.code.as_deref(), Some("previous_response_not_found"));
        // A failed turn is not an anchor; the previous one stays.
        t.prewarmed("resp_w", &json!({"input":[{"n":1}]}));
        t.begin(&json!({"input":[{"n":1},{"n":2}]}));
        t.observe(r#"{"type":"response.failed","response":{"id":"resp_f"}}"#);
        assert_eq!(t.last_response_id(), Some("resp_w"));
        // Over the limit: dropped, so chaining on it is refused rather than truncated.
        let mut small = Transcript::new(16);
        small.begin(&json!({"input":[{"text":"a long item, over sixteen bytes"}]}));
        completed(&mut small, "resp_big", &[]);
        assert_eq!(small.last_response_id(), None);
        let err = small
            .expand(&obj(json!({"previous_response_id":"resp_big"})))
            .unwrap_err();
        assert_eq!(err.code.as_deref(), Some("previous_response_not_found"));
    }

    #[test]
    fn transcripts_share_a_budget_and_give_it_back() {
        let budget = TranscriptBudget::new(100);
        let item = json!({"text": "x".repeat(50)}); // 61 bytes serialized
        let mut a = Transcript::new(1 << 20).with_budget(budget.clone());
        a.begin(&json!({"input": [item.clone()]}));
        completed(&mut a, "resp_a", &[]);
        assert_eq!(a.last_response_id(), Some("resp_a"));
        assert_eq!(budget.in_use(), 61);
        let mut b = Transcript::new(1 << 20).with_budget(budget.clone());
        b.begin(&json!({"input": [item.clone()]}));
        completed(&mut b, "resp_b", &[]);
        assert_eq!(
            b.last_response_id(),
            None,
            "over the shared budget: not kept"
        );
        // A's next turn replaces its context; a socket that closes gives its bytes back.
        a.begin(&json!({"input": [json!(1)]}));
        completed(&mut a, "resp_a2", &[]);
        assert_eq!(budget.in_use(), 1);
        drop(a);
        assert_eq!(budget.in_use(), 0);
    }

    #[test]
    fn text_input_becomes_a_user_message() {
        let t = Transcript::new(1024);
        let full = t.expand(&obj(json!({"input":"hello"}))).unwrap();
        assert_eq!(full["input"][0]["role"], "user");
        assert_eq!(full["input"][0]["content"][0]["text"], "hello");
    }
}
