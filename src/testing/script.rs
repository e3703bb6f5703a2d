//! Scripted replies: what the mock answers, and how it misbehaves.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use serde_json::Value;

use super::RecordedRequest;
use super::auto;
use super::events;
use super::io::Abort;

/// A transport-level failure the mock can inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Read the whole request, then close the connection (FIN) without answering. hyper-util's
    /// client reports `IncompleteMessage`.
    CloseAfterRead,
    /// Read the whole request, then reset the connection (RST). hyper-util's client reports
    /// an io error of kind `ConnectionReset`.
    ResetAfterRead,
    /// Answer `200` and a streamed text answer, send its first `after_events` events, then
    /// close the connection mid-body (see also [`Reply::close_mid_stream`]).
    CloseMidStream {
        /// How many SSE events reach the client before the connection drops.
        after_events: usize,
    },
    /// Read the whole request, work on it for this long (no answer head), then close the
    /// connection (FIN): an upstream that had the request and lost it. A retry of it would
    /// run it twice.
    CloseAfterWorking(Duration),
}

/// What a request arriving on a connection that idled too long gets (see
/// [`MockUpstream::set_stale`](super::MockUpstream::set_stale)): the ways a provider or its
/// load balancer treats a stale pooled connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StaleMode {
    /// Read the request, then close (FIN) without answering.
    Fin,
    /// Read the request, then reset (RST).
    Reset,
    /// Answer a bare `400 Bad Request` with `Content-Type: text/html` (not the API's JSON
    /// envelope) and `Connection: close`, then close.
    Html400,
}

#[derive(Debug, Clone)]
enum Content {
    Auto,
    AutoStream,
    Text(String),
    Json(Value),
    Raw {
        content_type: HeaderValue,
        body: Bytes,
    },
    Sse(Vec<Bytes>),
    Abort(Abort, Option<Duration>),
}

/// One scripted answer. Build it with a constructor ([`Reply::text`], [`Reply::json`],
/// [`Reply::sse`], [`Reply::fault`], ...) and adjust it with the `with_*`/pacing methods.
///
/// ```
/// use std::time::Duration;
/// use http::StatusCode;
/// use serde_json::json;
/// use tower_responses::testing::{Reply, events};
///
/// let _streamed = Reply::text("hello").paced(Duration::from_millis(5));
/// let _quota = Reply::json(
///     StatusCode::TOO_MANY_REQUESTS,
///     json!({"error": {"type": "usage_limit_reached", "message": "The usage limit has been reached"}}),
/// )
/// .with_header("retry-after", "30");
/// let _failed = Reply::sse(vec![events::created("r1"), events::failed("r1", "server_error", "boom")]);
/// ```
#[derive(Debug, Clone)]
pub struct Reply {
    content: Content,
    status: Option<StatusCode>,
    headers: Vec<(HeaderName, HeaderValue)>,
    gap: Option<Duration>,
    first_wait: Option<Duration>,
    hold_open: bool,
    cut_after: Option<usize>,
    cut_reset: bool,
}

impl Reply {
    fn new(content: Content) -> Reply {
        Reply {
            content,
            status: None,
            headers: Vec::new(),
            gap: None,
            first_wait: None,
            hold_open: false,
            cut_after: None,
            cut_reset: false,
        }
    }

    /// Answers like the real API would, from the request: for `POST /v1/responses` a
    /// streamed text answer when the body has `"stream": true`, else the JSON response
    /// object; for `POST /v1/responses/compact` the kept user messages plus a `compaction`
    /// item; for `GET /v1/models` a model list; anything else a 404 in the OpenAI error
    /// envelope. The `/v1` prefix is optional. The answer text quotes the last user message.
    /// This is the mock's initial default.
    pub fn auto() -> Reply {
        Reply::new(Content::Auto)
    }

    /// A streamed (SSE) Responses answer carrying `text`, split into several
    /// `response.output_text.delta` events, with usage and fresh `resp_mock_N`/`msg_mock_N`
    /// ids each time it is served.
    pub fn text(text: &str) -> Reply {
        Reply::new(Content::Text(text.to_owned()))
    }

    /// The streamed auto answer to whatever the request asked.
    pub(crate) fn auto_stream() -> Reply {
        Reply::new(Content::AutoStream)
    }

    /// A JSON answer with this status.
    pub fn json(status: StatusCode, body: Value) -> Reply {
        Reply::new(Content::Json(body)).with_status(status)
    }

    /// Any body with this status and `Content-Type`.
    ///
    /// # Panics
    /// When `content_type` is not a valid header value.
    pub fn raw(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Reply {
        let content_type = HeaderValue::from_str(content_type).expect("invalid Content-Type");
        Reply::new(Content::Raw {
            content_type,
            body: body.into(),
        })
        .with_status(status)
    }

    /// A `200 text/event-stream` answer; each value becomes `event: <type>\ndata: <json>\n\n`
    /// (see [`events`] for builders).
    pub fn sse(events: Vec<Value>) -> Reply {
        Reply::new(Content::Sse(events.iter().map(events::encode).collect()))
    }

    /// A `200 text/event-stream` answer of exactly these bytes, one body chunk (one "event"
    /// for pacing and cutting) each.
    pub fn sse_raw(chunks: Vec<Bytes>) -> Reply {
        Reply::new(Content::Sse(chunks))
    }

    /// A transport fault instead of an answer.
    pub fn fault(fault: Fault) -> Reply {
        match fault {
            Fault::CloseAfterRead => Reply::new(Content::Abort(Abort::Fin, None)),
            Fault::ResetAfterRead => Reply::new(Content::Abort(Abort::Reset, None)),
            Fault::CloseAfterWorking(d) => Reply::new(Content::Abort(Abort::Fin, Some(d))),
            Fault::CloseMidStream { after_events } => {
                Reply::new(Content::AutoStream).close_mid_stream(after_events)
            }
        }
    }

    /// Sets a response header, replacing the reply's own value of it (`Content-Type`
    /// included).
    ///
    /// # Panics
    /// When `name` or `value` is not a valid header name or value.
    pub fn with_header(mut self, name: &str, value: &str) -> Reply {
        let name = HeaderName::from_bytes(name.as_bytes()).expect("invalid header name");
        let value = HeaderValue::from_str(value).expect("invalid header value");
        self.headers.push((name, value));
        self
    }

    /// Overrides the status (an SSE body under a 500 is fine).
    pub fn with_status(mut self, status: StatusCode) -> Reply {
        self.status = Some(status);
        self
    }

    /// Waits `gap` between body chunks (SSE events).
    pub fn paced(mut self, gap: Duration) -> Reply {
        self.gap = Some(gap);
        self
    }

    /// Sends the first chunk (event) at once, then waits `wait` before the rest: a client that
    /// sees the first event long before the answer ends proves a layer streams instead of
    /// buffering.
    pub fn first_event_then_wait(mut self, wait: Duration) -> Reply {
        self.first_wait = Some(wait);
        self
    }

    /// After the last chunk, keeps the body open (no end of stream) until the client goes away
    /// or the mock stops: an upstream that never ends its stream after a terminal event.
    pub fn hold_open(mut self) -> Reply {
        self.hold_open = true;
        self
    }

    /// Sends the status, headers and first `after_events` chunks (events), then closes the
    /// connection without ending the body.
    pub fn close_mid_stream(mut self, after_events: usize) -> Reply {
        self.cut_after = Some(after_events);
        self
    }

    /// Like [`close_mid_stream`](Self::close_mid_stream), but resets the connection (RST):
    /// the client reads `ECONNRESET` instead of an early end of file.
    pub fn reset_mid_stream(mut self, after_events: usize) -> Reply {
        self.cut_after = Some(after_events);
        self.cut_reset = true;
        self
    }

    /// The concrete reply `auto()` stands for, keeping this reply's adjustments.
    fn resolve_auto(self, req: &RecordedRequest) -> Reply {
        let mut inner = auto::reply_for(req);
        inner.headers.extend(self.headers);
        inner.status = self.status.or(inner.status);
        inner.gap = self.gap;
        inner.first_wait = self.first_wait;
        inner.hold_open = self.hold_open;
        inner.cut_after = self.cut_after;
        inner.cut_reset = self.cut_reset;
        inner
    }

    /// Turns the script into what the server does for `req`.
    pub(crate) fn plan(self, req: &RecordedRequest) -> Plan {
        if matches!(self.content, Content::Auto) {
            return self.resolve_auto(req).plan(req);
        }
        let mut headers = HeaderMap::new();
        let (chunks, mut streamed, content_type) = match self.content {
            Content::Abort(abort, delay) => return Plan::Abort(abort, delay),
            // `Auto` was resolved above; streaming the answer is its safe reading anyway.
            Content::Auto | Content::AutoStream => sse_chunks(auto::answer_events(req)),
            Content::Text(text) => sse_chunks(auto::text_events(req, &text)),
            Content::Json(v) => (
                vec![Bytes::from(v.to_string())],
                false,
                HeaderValue::from_static("application/json"),
            ),
            Content::Raw { content_type, body } => (vec![body], false, content_type),
            Content::Sse(chunks) => (chunks, true, HeaderValue::from_static("text/event-stream")),
        };
        headers.insert(header::CONTENT_TYPE, content_type);
        if streamed {
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        }
        if let Ok(id) = HeaderValue::from_str(&auto::request_id()) {
            headers.insert("x-request-id", id);
        }
        for (name, value) in self.headers {
            headers.insert(name, value);
        }
        streamed |= self.gap.is_some()
            || self.first_wait.is_some()
            || self.hold_open
            || self.cut_after.is_some();
        Plan::Respond(Planned {
            status: self.status.unwrap_or(StatusCode::OK),
            headers,
            chunks,
            streamed,
            gap: self.gap,
            first_wait: self.first_wait,
            hold_open: self.hold_open,
            cut_after: self.cut_after,
            cut_how: if self.cut_reset {
                Abort::Reset
            } else {
                Abort::Fin
            },
        })
    }
}

fn sse_chunks(evs: Vec<Value>) -> (Vec<Bytes>, bool, HeaderValue) {
    (
        evs.iter().map(events::encode).collect(),
        true,
        HeaderValue::from_static("text/event-stream"),
    )
}

/// A reply resolved against its request.
pub(crate) enum Plan {
    Abort(Abort, Option<Duration>),
    Respond(Planned),
}

/// An answer ready to send.
pub(crate) struct Planned {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) chunks: Vec<Bytes>,
    /// Sent chunk by chunk (chunked encoding) rather than as one sized body.
    pub(crate) streamed: bool,
    pub(crate) gap: Option<Duration>,
    pub(crate) first_wait: Option<Duration>,
    pub(crate) hold_open: bool,
    pub(crate) cut_after: Option<usize>,
    pub(crate) cut_how: Abort,
}
