//! A mock Responses upstream built for load, not for assertions.
//!
//! `crate::testing::MockUpstream` records every request and runs scripts; here nothing is
//! recorded and every answer is prebuilt once: a realistic Responses stream of `deltas + 8`
//! events (`created`, `in_progress`, `output_item.added`, `content_part.added`, the
//! `output_text.delta`s, the three `done` events, `completed` with usage), each with its
//! `sequence_number`, and a fresh response id per answer. `stream:false` gets the completed
//! response object as JSON.
//!
//! Pacing and length are chosen by the model name, because it is the one field every proxy
//! under test forwards unchanged: `bench-p{ms}-d{deltas}` (e.g. `bench-p250-d20`); any other
//! name gets no pacing and 50 deltas.

use std::collections::HashMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{Request, Response, StatusCode, header};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full, combinators::UnsyncBoxBody};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::time::Sleep;

/// Placeholder for the per-answer response id: same length as the real one, patched in place.
const ID_TEMPLATE: &[u8] = b"resp_bench_0000000000000000";
const ID_DIGITS: usize = 16;
const MSG_ID: &str = "msg_bench_68a1f0c5d2e08190b7c6a5b4";
const WORDS: [&str; 10] = [
    " The", " proxy", " keeps", " the", " stream", " moving,", " event", " by", " event", " 🚀.",
];

/// One prebuilt answer: SSE events (some carrying the id placeholder) and the JSON form.
pub struct Script {
    events: Vec<Templated>,
    json: Templated,
}

struct Templated {
    bytes: Bytes,
    id_at: Vec<usize>,
}

impl Templated {
    fn new(text: String) -> Self {
        let id_at = memchr::memmem::find_iter(text.as_bytes(), ID_TEMPLATE).collect();
        Templated {
            bytes: Bytes::from(text),
            id_at,
        }
    }

    fn with_id(&self, digits: &[u8; ID_DIGITS]) -> Bytes {
        if self.id_at.is_empty() {
            return self.bytes.clone();
        }
        let mut out = BytesMut::from(&self.bytes[..]);
        for &at in &self.id_at {
            let start = at + ID_TEMPLATE.len() - ID_DIGITS;
            out[start..start + ID_DIGITS].copy_from_slice(digits);
        }
        out.freeze()
    }
}

/// A JSON object with its keys in the given order (values already JSON). The platform puts
/// `type` first in every event, and that matters: event-type sniffing stops at it.
fn obj(pairs: &[(&str, String)]) -> String {
    let body: Vec<String> = pairs.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
    format!("{{{}}}", body.join(","))
}

fn j(v: Value) -> String {
    v.to_string()
}

fn response_object(status: &str, output: &str, usage: &str) -> String {
    obj(&[
        (
            "id",
            j(json!(std::str::from_utf8(ID_TEMPLATE).unwrap_or_default())),
        ),
        ("object", j(json!("response"))),
        ("created_at", j(json!(1_755_426_498))),
        ("status", j(json!(status))),
        ("background", j(json!(false))),
        ("error", j(Value::Null)),
        ("incomplete_details", j(Value::Null)),
        ("instructions", j(Value::Null)),
        ("max_output_tokens", j(Value::Null)),
        ("model", j(json!("gpt-5-codex"))),
        ("output", output.to_owned()),
        ("parallel_tool_calls", j(json!(false))),
        ("previous_response_id", j(Value::Null)),
        ("reasoning", j(json!({"effort": "medium", "summary": null}))),
        ("store", j(json!(false))),
        ("temperature", j(json!(1.0))),
        (
            "text",
            j(json!({"format": {"type": "text"}, "verbosity": "medium"})),
        ),
        ("tool_choice", j(json!("auto"))),
        ("tools", j(json!([]))),
        ("top_p", j(json!(1.0))),
        ("truncation", j(json!("disabled"))),
        ("usage", usage.to_owned()),
        ("metadata", j(json!({}))),
    ])
}

impl Script {
    /// The answer with `deltas` text deltas.
    pub fn new(deltas: usize) -> Script {
        let mut events = Vec::with_capacity(deltas + 8);
        let mut seq = 0u64;
        let mut push = |ty: &str, fields: Vec<(&str, String)>| {
            let mut pairs = vec![("type", j(json!(ty))), ("sequence_number", j(json!(seq)))];
            pairs.extend(fields);
            seq += 1;
            events.push(Templated::new(format!(
                "event: {ty}\ndata: {}\n\n",
                obj(&pairs)
            )));
        };
        let msg = || j(json!(MSG_ID));
        let zero = || j(json!(0));
        let starting = response_object("in_progress", "[]", "null");
        push("response.created", vec![("response", starting.clone())]);
        push("response.in_progress", vec![("response", starting)]);
        push(
            "response.output_item.added",
            vec![
                ("output_index", zero()),
                (
                    "item",
                    obj(&[
                        ("id", msg()),
                        ("type", j(json!("message"))),
                        ("status", j(json!("in_progress"))),
                        ("content", j(json!([]))),
                        ("role", j(json!("assistant"))),
                    ]),
                ),
            ],
        );
        let part = |text: &str| {
            obj(&[
                ("type", j(json!("output_text"))),
                ("annotations", j(json!([]))),
                ("logprobs", j(json!([]))),
                ("text", j(json!(text))),
            ])
        };
        push(
            "response.content_part.added",
            vec![
                ("item_id", msg()),
                ("output_index", zero()),
                ("content_index", zero()),
                ("part", part("")),
            ],
        );
        let mut text = String::new();
        for i in 0..deltas {
            let delta = WORDS[i % WORDS.len()];
            text.push_str(delta);
            push(
                "response.output_text.delta",
                vec![
                    ("item_id", msg()),
                    ("output_index", zero()),
                    ("content_index", zero()),
                    ("delta", j(json!(delta))),
                    ("logprobs", j(json!([]))),
                    ("obfuscation", j(json!("aB3dE5gH"))),
                ],
            );
        }
        push(
            "response.output_text.done",
            vec![
                ("item_id", msg()),
                ("output_index", zero()),
                ("content_index", zero()),
                ("text", j(json!(text))),
                ("logprobs", j(json!([]))),
            ],
        );
        push(
            "response.content_part.done",
            vec![
                ("item_id", msg()),
                ("output_index", zero()),
                ("content_index", zero()),
                ("part", part(&text)),
            ],
        );
        let item = obj(&[
            ("id", msg()),
            ("type", j(json!("message"))),
            ("status", j(json!("completed"))),
            ("content", format!("[{}]", part(&text))),
            ("role", j(json!("assistant"))),
        ]);
        push(
            "response.output_item.done",
            vec![("output_index", zero()), ("item", item.clone())],
        );
        let usage = j(json!({
            "input_tokens": 1843, "input_tokens_details": {"cached_tokens": 1536},
            "output_tokens": deltas, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": 1843 + deltas,
        }));
        let completed = response_object("completed", &format!("[{item}]"), &usage);
        push("response.completed", vec![("response", completed.clone())]);
        Script {
            events,
            json: Templated::new(completed),
        }
    }

    /// Number of SSE events in the stream.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// The whole stream as one text with a fixed response id: what the static upstream
    /// (nginx serving the answer from memory) sends.
    pub fn stream_text(&self) -> String {
        let id = [b'5'; ID_DIGITS];
        let mut out = Vec::new();
        for e in &self.events {
            out.extend_from_slice(&e.with_id(&id));
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}

/// What a request asked of the mock, read from its body.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ask {
    pub stream: bool,
    pub pacing: Duration,
    pub deltas: usize,
}

/// The model name that asks for this pacing and length.
pub fn model_name(pacing_ms: u64, deltas: usize) -> String {
    format!("bench-p{pacing_ms}-d{deltas}")
}

/// Reads `"model"` and `"stream"` with a scan instead of a parse: the mock must cost little.
pub fn ask(body: &[u8]) -> Ask {
    let mut ask = Ask {
        stream: false,
        pacing: Duration::ZERO,
        deltas: 50,
    };
    if let Some(v) = field_value(body, b"\"stream\"") {
        ask.stream = v.starts_with(b"true");
    }
    if let Some(v) = field_value(body, b"\"model\"") {
        let name = v
            .strip_prefix(b"\"")
            .and_then(|v| v.split(|&b| b == b'"').next())
            .unwrap_or_default();
        // The model may arrive as `openai/bench-...` or `bench-...`.
        let name = std::str::from_utf8(name).unwrap_or_default();
        let name = name.rsplit('/').next().unwrap_or(name);
        if let Some(rest) = name.strip_prefix("bench-p") {
            if let Some((p, d)) = rest.split_once("-d") {
                if let (Ok(p), Ok(d)) = (p.parse::<u64>(), d.parse::<usize>()) {
                    ask.pacing = Duration::from_millis(p);
                    ask.deltas = d.clamp(1, 10_000);
                }
            }
        }
    }
    ask
}

/// The bytes after `"key"`, whitespace and `:` (first occurrence; good enough for our bodies,
/// where `model` and `stream` are top-level and appear before any nested copy).
fn field_value<'a>(body: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    let at = memchr::memmem::find(body, key)? + key.len();
    let rest = &body[at..];
    let rest = rest.trim_ascii_start().strip_prefix(b":")?;
    Some(rest.trim_ascii_start())
}

fn script(deltas: usize) -> Arc<Script> {
    static CACHE: OnceLock<Mutex<HashMap<usize, Arc<Script>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let mut map = cache.lock().unwrap_or_else(|e| e.into_inner());
    map.entry(deltas)
        .or_insert_with(|| Arc::new(Script::new(deltas)))
        .clone()
}

fn next_id() -> [u8; ID_DIGITS] {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let mut out = [0u8; ID_DIGITS];
    out.copy_from_slice(format!("{n:016x}").as_bytes());
    out
}

/// The stream body: one frame per event, paced by a timer when asked.
struct EventBody {
    script: Arc<Script>,
    id: [u8; ID_DIGITS],
    next: usize,
    pacing: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl Body for EventBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = &mut *self;
        if this.next >= this.script.events.len() {
            return Poll::Ready(None);
        }
        if !this.pacing.is_zero() && this.next > 0 {
            let pacing = this.pacing;
            let sleep = this
                .sleep
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(pacing)));
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            this.sleep = None;
        }
        let bytes = this.script.events[this.next].with_id(&this.id);
        this.next += 1;
        Poll::Ready(Some(Ok(Frame::data(bytes))))
    }

    fn is_end_stream(&self) -> bool {
        self.next >= self.script.events.len()
    }
}

type MockBody = UnsyncBoxBody<Bytes, Infallible>;

async fn handle(req: Request<Incoming>) -> Result<Response<MockBody>, Infallible> {
    let is_responses =
        req.method() == http::Method::POST && req.uri().path().ends_with("/responses");
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => Bytes::new(),
    };
    if !is_responses {
        let mut res = Response::new(
            Full::new(Bytes::from_static(
                b"{\"error\":{\"message\":\"not found\"}}",
            ))
            .boxed_unsync(),
        );
        *res.status_mut() = StatusCode::NOT_FOUND;
        return Ok(res);
    }
    let ask = ask(&body);
    let script = script(ask.deltas);
    let id = next_id();
    let res = if ask.stream {
        Response::builder()
            .header(header::CONTENT_TYPE, "text/event-stream; charset=utf-8")
            .header(header::CACHE_CONTROL, "no-cache")
            .body(
                EventBody {
                    script,
                    id,
                    next: 0,
                    pacing: ask.pacing,
                    sleep: None,
                }
                .boxed_unsync(),
            )
    } else {
        Response::builder()
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(script.json.with_id(&id)).boxed_unsync())
    };
    Ok(res.unwrap_or_else(|_| Response::new(Full::new(Bytes::new()).boxed_unsync())))
}

/// Serves until the process ends.
pub async fn serve(listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service_fn(handle))
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_pacing_and_length_from_the_model() {
        let a = ask(br#"{"model": "openai/bench-p250-d20", "stream": true}"#);
        assert_eq!(a.pacing, Duration::from_millis(250));
        assert_eq!(a.deltas, 20);
        assert!(a.stream);
        assert!(!ask(br#"{"model":"gpt-5","stream":false}"#).stream);
        assert_eq!(Script::new(50).len(), 58);
    }
}
