//! A streamed answer folded into the one JSON response object a `stream:false` client expects.

use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::BodyExt;

use super::answer::answer;
use super::events::Fields;
use super::fold_reader::{EventReader, Seen};
use crate::body::{IdleTimeout, IdleTimeoutBody, ResponseBody, full_body};
use crate::classify::{Failure, FailureClass, Origin};
use crate::error::ApiError;
use crate::soft_failure::SoftFailure;
use crate::soft_failure::gate::{Gate, StreamGate, Verdict};
use crate::sse::{EventKind, EventRef, event_kind};

enum Outcome {
    /// The answer's JSON bytes.
    Answer(Bytes),
    /// What the client gets, and the classified failure behind it (boxed: the answer
    /// variant is the common one).
    Error(Box<(ApiError, Failure)>),
}

fn failed(err: ApiError, failure: Failure) -> Outcome {
    Outcome::Error(Box::new((err, failure)))
}

/// What the fold has seen so far.
struct Folding {
    /// The data of each `response.output_item.done`, kept as it came (slices of the upstream's
    /// chunks, no copy): read only when the terminal event's `output` is empty, which the
    /// OpenAI platform's is not. Bounded with the stream, by the fold's byte limit.
    done_items: Vec<Bytes>,
    /// The fold's byte limit, which also bounds what the items' rebuilt output may hold.
    limit: usize,
    /// A content event went by: the upstream generated (and billed) output, so a failure
    /// from here on is after content and must not be retried.
    content: bool,
}

impl Folding {
    fn new(limit: usize) -> Self {
        Folding {
            done_items: Vec::new(),
            limit,
            content: false,
        }
    }
}

/// Reads the whole stream (at most `limit` bytes, silent at most `idle` at a time) and
/// answers as the platform would to a non-streaming request.
///
/// A failure becomes the HTTP error the platform would have sent, marked with a
/// [`SoftFailure`] that carries the real classified failure, so rotation decides from it
/// and not from a bare status: before content it may retry; after content
/// (`before_content: false`) it must not, the output was already generated. The fold's own
/// `response_too_large` is never retried.
///
/// A stream marked [`Folded`] had its events read by the [`fold_gate`] below as they were
/// decoded there; only if that gate found no outcome (it stops at a line past its decoder's
/// bound, or the stream ended first) are the bytes read here, from the start, so the answer
/// is the same either way.
pub(crate) async fn fold(
    res: Response<ResponseBody>,
    limit: usize,
    idle: Duration,
) -> Response<ResponseBody> {
    let (mut parts, body) = res.into_parts();
    let folded = parts.extensions.remove::<Folded>();
    // A long answer is fine as long as it keeps coming; an upstream that goes silent is not.
    let mut body = std::pin::pin!(IdleTimeoutBody::new(body, idle));
    let mut reader = EventReader::default();
    let mut folding = Folding::new(limit);
    // With a gate below: every frame, kept (shared, not copied) in case it must be read here.
    let mut kept: Vec<Bytes> = Vec::new();
    let mut total = 0usize;
    let outcome = loop {
        let frame = match body.frame().await {
            None => match &folded {
                Some(folded) => {
                    break folded
                        .take(&mut folding)
                        .or_else(|| read_kept(kept.drain(..), &mut reader, &mut folding));
                }
                None => break finish(&mut reader, &mut folding),
            },
            Some(Err(e)) => {
                if let Some(folded) = &folded {
                    // Only whether content went by counts now.
                    folded.take(&mut folding);
                }
                tracing::debug!(error = %e, "upstream stream broke while folding");
                break Some(broken(&*e));
            }
            Some(Ok(frame)) => frame,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        total = total.saturating_add(data.len());
        if total > limit {
            break Some(too_large(limit));
        }
        if let Some(folded) = &folded {
            kept.push(data);
            match folded.take(&mut folding) {
                Some(outcome) => break Some(outcome),
                None => continue,
            }
        }
        if let Some(outcome) = read(&mut reader, data, &mut folding) {
            break Some(outcome);
        }
    };
    let outcome = outcome.unwrap_or_else(|| {
        let message = "the upstream stream ended before the response completed";
        failed(
            ApiError::upstream_unavailable(message),
            Failure::transport(false, message),
        )
    });
    match outcome {
        Outcome::Answer(bytes) => {
            parts.status = StatusCode::OK;
            parts.headers.remove(header::TRANSFER_ENCODING);
            parts.headers.remove(header::CACHE_CONTROL);
            parts.headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            parts
                .headers
                .insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
            Response::from_parts(parts, full_body(bytes))
        }
        Outcome::Error(boxed) => {
            let (err, failure) = *boxed;
            let mut out = err.into_stack_response();
            // Keep what outer layers read from the upstream's answer (connection tags,
            // classified failures).
            *out.extensions_mut() = parts.extensions;
            let too_large = failure.code.as_deref() == Some(RESPONSE_TOO_LARGE);
            let before_content = !folding.content && !too_large;
            let inner_mark = out
                .extensions()
                .get::<SoftFailure>()
                .is_some_and(|s| s.before_content);
            // Before content an inner soft-failure layer may have classified the answer from
            // the upstream's own words already; that mark is the better one.
            if !(before_content && inner_mark) {
                out.extensions_mut().insert(SoftFailure {
                    failure,
                    before_content,
                });
            }
            out
        }
    }
}

/// The `error.code` of the fold's own answer to a stream past its byte bound.
const RESPONSE_TOO_LARGE: &str = "response_too_large";

fn too_large(limit: usize) -> Outcome {
    let message =
        format!("the upstream answer is larger than {limit} bytes; request it with stream:true");
    // Any credential would generate the same answer again: never worth a retry, and no
    // credential's fault.
    let mut failure = Failure::new(FailureClass::InvalidRequest);
    failure.status = Some(StatusCode::BAD_GATEWAY);
    failure.code = Some(RESPONSE_TOO_LARGE.into());
    failure.message = Some(message.clone());
    failed(
        ApiError::upstream_unavailable(message).with_code(RESPONSE_TOO_LARGE),
        failure,
    )
}

fn broken(e: &(dyn std::error::Error + 'static)) -> Outcome {
    if let Some(idle) = e.downcast_ref::<IdleTimeout>() {
        let message = format!(
            "the upstream sent nothing for {}s before the response completed",
            idle.0.as_secs()
        );
        return failed(
            ApiError::new(StatusCode::GATEWAY_TIMEOUT, "server_error", message.clone())
                .with_code("upstream_timeout"),
            Failure::transport(false, message),
        );
    }
    let message = "the upstream stream broke off before the response completed";
    failed(
        ApiError::upstream_unavailable(message),
        Failure::transport(false, format!("{message}: {e}")),
    )
}

fn unparseable() -> Outcome {
    let message = "the upstream sent an event stream that could not be parsed";
    let mut failure = Failure::new(FailureClass::Transient);
    failure.status = Some(StatusCode::BAD_GATEWAY);
    failure.message = Some(message.into());
    failure.origin = Origin::Stream;
    failed(ApiError::upstream_unavailable(message), failure)
}

fn finish(reader: &mut EventReader, folding: &mut Folding) -> Option<Outcome> {
    reader
        .finish(&mut |seen| on_event(&seen, folding))
        .unwrap_or_else(|_| Some(unparseable()))
}

/// The kept frames of a stream its gate found no outcome in, read here from the start.
fn read_kept(
    kept: impl IntoIterator<Item = Bytes>,
    reader: &mut EventReader,
    folding: &mut Folding,
) -> Option<Outcome> {
    *folding = Folding::new(folding.limit);
    kept.into_iter()
        .find_map(|data| read(reader, data, folding))
        .or_else(|| finish(reader, folding))
}

/// Reads one frame of the stream: the outcome, once the events so far decide it.
fn read(reader: &mut EventReader, data: Bytes, folding: &mut Folding) -> Option<Outcome> {
    reader
        .push(data, &mut |seen| on_event(&seen, folding))
        .unwrap_or_else(|_| Some(unparseable()))
}

/// An event as the fold reads it, from its own reader or from a gate's decoder.
trait EventData {
    /// The event's type, as [`Event::event_type`](crate::sse::Event::event_type).
    fn event_type(&self) -> Option<&str>;
    /// Its kind, when the caller knows it already.
    fn kind(&self) -> Option<EventKind>;
    /// Its data, borrowed.
    fn bytes(&self) -> &[u8];
    /// Its data, to keep.
    fn shared(&self) -> Bytes;
}

impl EventData for Seen<'_> {
    fn event_type(&self) -> Option<&str> {
        self.kind
    }
    fn kind(&self) -> Option<EventKind> {
        None
    }
    fn bytes(&self) -> &[u8] {
        Seen::bytes(self)
    }
    fn shared(&self) -> Bytes {
        self.data()
    }
}

/// An event a gate was shown: its type and kind sniffed there, its data borrowed from that
/// decoder (copied only for what the fold keeps).
struct Shown<'a> {
    event_type: Option<&'a str>,
    kind: EventKind,
    data: &'a [u8],
}

impl EventData for Shown<'_> {
    fn event_type(&self) -> Option<&str> {
        self.event_type
    }
    fn kind(&self) -> Option<EventKind> {
        Some(self.kind)
    }
    fn bytes(&self) -> &[u8] {
        self.data
    }
    fn shared(&self) -> Bytes {
        Bytes::copy_from_slice(self.data)
    }
}

fn on_event(event: &impl EventData, folding: &mut Folding) -> Option<Outcome> {
    let kind = event.event_type()?;
    if !folding.content && event.kind().unwrap_or_else(|| event_kind(kind)) == EventKind::Content {
        folding.content = true;
    }
    match kind {
        "response.output_item.done" => {
            folding.done_items.push(event.shared());
            None
        }
        "response.completed" | "response.incomplete" => {
            let data = event.shared();
            let f = Fields::parse(&data)?;
            let raw = f.response?;
            answer(&data, raw.get(), &folding.done_items, folding.limit).map(Outcome::Answer)
        }
        "response.failed" | "error" => Some(match Failure::from_sse_data(event.bytes()) {
            Some(failure) => failed(failure_error(&failure), failure),
            None => {
                let message = "the upstream response failed";
                let mut failure = Failure::new(FailureClass::Transient);
                failure.status = Some(StatusCode::BAD_GATEWAY);
                failure.message = Some(message.into());
                failure.origin = Origin::Stream;
                failed(
                    ApiError::new(StatusCode::BAD_GATEWAY, "server_error", message),
                    failure,
                )
            }
        }),
        _ => None,
    }
}

/// A gate that reads a `stream:false` client's stream where a
/// [`SoftFailureDetectLayer`](crate::soft_failure::SoftFailureDetectLayer) below decodes it
/// anyway, so the fold need not decode it again: it marks the response [`Folded`] and
/// leaves there the outcome of the first event that decides the answer.
pub(crate) fn fold_gate(limit: usize) -> StreamGate {
    StreamGate::new(move || {
        Box::new(FoldGate {
            folding: Folding::new(limit),
            folded: Folded::default(),
        })
    })
}

struct FoldGate {
    folding: Folding,
    folded: Folded,
}

/// Response extension: what the [`fold_gate`] of this response's attempt found.
#[derive(Clone, Default)]
pub(crate) struct Folded(Arc<Mutex<Found>>);

#[derive(Default)]
struct Found {
    /// The outcome of the event that decided the answer.
    outcome: Option<Outcome>,
    /// A content event went by.
    content: bool,
}

impl Folded {
    /// The outcome found, once; `folding` learns whether content went by.
    fn take(&self, folding: &mut Folding) -> Option<Outcome> {
        let mut found = self.0.lock().unwrap_or_else(|e| e.into_inner());
        folding.content |= found.content;
        found.outcome.take()
    }
}

impl Gate for FoldGate {
    fn admit(&mut self, event_type: Option<&str>, kind: EventKind, event: EventRef<'_>) -> Verdict {
        let had_content = self.folding.content;
        let shown = Shown {
            event_type,
            kind,
            data: event.data,
        };
        let outcome = on_event(&shown, &mut self.folding);
        if outcome.is_none() && had_content == self.folding.content {
            return Verdict::Forward;
        }
        let mut found = self.folded.0.lock().unwrap_or_else(|e| e.into_inner());
        found.content = self.folding.content;
        match outcome {
            None => Verdict::Forward,
            Some(outcome) => {
                found.outcome = Some(outcome);
                // The answer is decided: nothing after it is read.
                Verdict::ForwardLast
            }
        }
    }

    fn closing(&mut self) -> Bytes {
        // Never cut: every event is forwarded.
        Bytes::new()
    }

    /// Once content went by, a text delta decides nothing: the answer is the terminal
    /// event's response with the finished items (`on_event`).
    fn reads_text_deltas(&self) -> bool {
        !self.folding.content
    }

    fn mark(&self, extensions: &mut http::Extensions) {
        extensions.insert(self.folded.clone());
    }
}

/// The HTTP error the platform would have answered for a failure.
pub(crate) fn failure_error(f: &Failure) -> ApiError {
    let (status, kind) = match f.class {
        FailureClass::QuotaExhausted => (StatusCode::TOO_MANY_REQUESTS, "insufficient_quota"),
        FailureClass::RateLimited => (StatusCode::TOO_MANY_REQUESTS, "rate_limit_error"),
        FailureClass::Overloaded => (StatusCode::SERVICE_UNAVAILABLE, "server_error"),
        FailureClass::Transient => (
            f.status
                .filter(|s| s.is_server_error())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            "server_error",
        ),
        FailureClass::Auth => (StatusCode::UNAUTHORIZED, "authentication_error"),
        FailureClass::RouteNotFound => (StatusCode::NOT_FOUND, "invalid_request_error"),
        FailureClass::InvalidRequest
        | FailureClass::ContextLength
        | FailureClass::ContentPolicy
        | FailureClass::ModelUnsupported
        | FailureClass::PreviousResponseNotFound
        | FailureClass::Cancelled => (StatusCode::BAD_REQUEST, "invalid_request_error"),
        _ => (StatusCode::BAD_GATEWAY, "server_error"),
    };
    let message = f
        .message
        .clone()
        .unwrap_or_else(|| "the upstream response failed".to_string());
    let mut err = ApiError::new(
        status,
        f.kind.clone().unwrap_or_else(|| kind.into()),
        message,
    );
    err.code = f.code.clone();
    if let Some(after) = f.retry.after {
        err = err.with_retry_after(after);
    }
    err.resets_at = f
        .retry
        .reset_at
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_secs());
    err
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    const IDLE: Duration = Duration::from_secs(300);

    fn sse(events: &[Value]) -> Response<ResponseBody> {
        let mut s = String::new();
        for e in events {
            s.push_str(&format!(
                "event: {}\ndata: {e}\n\n",
                e["type"].as_str().unwrap()
            ));
        }
        Response::builder()
            .header("content-type", "text/event-stream")
            .body(full_body(s))
            .unwrap()
    }

    async fn json_of(res: Response<ResponseBody>) -> (StatusCode, Value) {
        let status = res.status();
        let b = res.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&b).unwrap())
    }

    #[tokio::test]
    async fn rebuilds_output_from_done_items() {
        let item = json!({"id":"m1","type":"message","role":"assistant","content":[{"type":"output_text","text":"hi"}]});
        let res = sse(&[
            json!({"type":"response.created","response":{"id":"r1","status":"in_progress"}}),
            json!({"type":"response.output_item.done","output_index":0,"item":item}),
            json!({"type":"response.completed","response":{"id":"r1","status":"completed","output":[],"usage":{"output_tokens":1}}}),
        ]);
        let res = fold(res, 1 << 20, IDLE).await;
        assert_eq!(res.headers()["content-type"], "application/json");
        let (status, v) = json_of(res).await;
        assert_eq!(status, 200);
        assert_eq!(v["output"][0], item);
        assert_eq!(v["usage"]["output_tokens"], 1);
    }

    #[tokio::test]
    async fn failures_become_http_errors() {
        for (code, status) in [
            ("insufficient_quota", 429),
            ("rate_limit_exceeded", 429),
            ("server_is_overloaded", 503),
            ("server_error", 500),
            ("invalid_prompt", 400),
        ] {
            let res = sse(&[
                json!({"type":"response.failed","response":{"id":"r","status":"failed","error":{"code":code,"message":"m"}}}),
            ]);
            let (s, v) = json_of(fold(res, 1 << 20, IDLE).await).await;
            assert_eq!(s.as_u16(), status, "{code}");
            assert_eq!(v["error"]["code"], code);
            assert_eq!(v["error"]["message"], "m");
        }
    }

    #[tokio::test]
    async fn truncated_or_oversized_streams_are_502() {
        let res = sse(&[json!({"type":"response.created","response":{"id":"r"}})]);
        assert_eq!(fold(res, 1 << 20, IDLE).await.status(), 502);
        let res = sse(&[json!({"type":"response.created","response":{"id":"r"}})]);
        let (s, v) = json_of(fold(res, 10, IDLE).await).await;
        assert_eq!(s, 502);
        assert_eq!(v["error"]["code"], "response_too_large");
    }
}
