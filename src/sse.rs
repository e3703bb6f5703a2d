//! Incremental `text/event-stream` decoding for Responses API streams.
//!
//! [`SseDecoder`] frames events out of body chunks as they arrive, whatever the chunk
//! boundaries. Every [`Event`] keeps the exact input bytes it was decoded from
//! ([`Event::raw`]), so a layer that holds events back can later forward them unchanged: the
//! raw bytes of every event, followed by [`SseDecoder::take_remainder`], are the input.
//!
//! [`sniff_type`] reads an event's `"type"` without parsing its JSON, and [`event_kind`] sorts
//! Responses event types into what matters for retries: has the client seen content yet, and
//! has the stream ended.
//!
//! ```
//! use bytes::Bytes;
//! use tower_responses::sse::{EventKind, SseDecoder};
//!
//! let mut decoder = SseDecoder::new();
//! decoder.push(Bytes::from_static(b"event: response.created\ndata: {\"type\":\"response.cre"));
//! // The event is not complete yet.
//! assert!(decoder.next_event().unwrap().is_none());
//!
//! decoder.push(Bytes::from_static(b"ated\",\"sequence_number\":0}\n\n: keep-alive\n\n"));
//! let event = decoder.next_event().unwrap().unwrap();
//! assert_eq!(event.event_type(), Some("response.created"));
//! assert_eq!(event.kind(), EventKind::Lifecycle);
//! assert_eq!(&event.data[..], br#"{"type":"response.created","sequence_number":0}"#);
//!
//! // A comment-only block is no event, but its bytes are kept to be forwarded as they were.
//! assert!(decoder.next_event().unwrap().is_none());
//! assert!(decoder.finish().unwrap().is_none());
//! assert_eq!(decoder.take_remainder(), Bytes::from_static(b": keep-alive\n\n"));
//! ```

use std::collections::VecDeque;
use std::fmt;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use memchr::{memchr, memchr2};

/// Default bound on one line, terminator excluded.
///
/// Larger than a typical SSE bound because `response.completed` and `response.output_item.done`
/// carry whole outputs on a single `data:` line.
pub const DEFAULT_MAX_LINE: usize = 4 * 1024 * 1024;

/// Default bound on one event's raw bytes (comment blocks before it included).
pub const DEFAULT_MAX_EVENT: usize = 8 * 1024 * 1024;

const BOM: [u8; 3] = [0xEF, 0xBB, 0xBF];

/// One dispatched server-sent event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The exact input bytes from the end of the previous event through this event's
    /// terminating blank line, comments and data-less blocks included.
    pub raw: Bytes,
    /// The last `event:` field value of the event, if any.
    pub event: Option<Bytes>,
    /// The `data:` field values joined with `\n`.
    ///
    /// A slice of [`raw`](Self::raw) (no copy) when the event has one data line.
    pub data: Bytes,
    /// The last `id:` field value seen in [`raw`](Self::raw), if any (values holding NUL are
    /// ignored, as the WHATWG spec says).
    pub id: Option<Bytes>,
}

impl Event {
    /// The event's type: the JSON `"type"` of [`data`](Self::data), or else the `event:` field
    /// when it is non-empty UTF-8.
    ///
    /// The data comes first because that is what clients act on: the Codex CLI and the SDKs
    /// read only `data:`, so a mislabelled `event:` line (e.g. a generic `message`) must not
    /// change how a layer classifies the event.
    pub fn event_type(&self) -> Option<&str> {
        type_of(&self.data, self.event.as_deref())
    }

    /// The [`EventKind`] of [`event_type`](Self::event_type); [`EventKind::Other`] when the
    /// type is unknown.
    pub fn kind(&self) -> EventKind {
        self.event_type().map_or(EventKind::Other, event_kind)
    }

    /// The event's fields, borrowed.
    pub fn borrowed(&self) -> EventRef<'_> {
        EventRef {
            raw: &self.raw,
            event: self.event.as_deref(),
            data: &self.data,
        }
    }
}

/// One dispatched event, borrowed from the decoder's input: what
/// [`SseDecoder::next_event_with`] shows (the `id:` field aside, which no layer reads there).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventRef<'a> {
    /// As [`Event::raw`].
    pub raw: &'a [u8],
    /// As [`Event::event`].
    pub event: Option<&'a [u8]>,
    /// As [`Event::data`].
    pub data: &'a [u8],
}

impl<'a> EventRef<'a> {
    /// As [`Event::event_type`].
    pub fn event_type(&self) -> Option<&'a str> {
        type_of(self.data, self.event)
    }

    /// As [`Event::kind`].
    pub fn kind(&self) -> EventKind {
        self.event_type().map_or(EventKind::Other, event_kind)
    }
}

fn type_of<'a>(data: &'a [u8], event: Option<&'a [u8]>) -> Option<&'a str> {
    sniff_type(data).or_else(|| {
        event
            .filter(|e| !e.is_empty())
            .and_then(|e| std::str::from_utf8(e).ok())
    })
}

/// How a Responses stream event matters to retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// Before any output: `response.created`, `response.in_progress`, `response.queued`,
    /// `codex.rate_limits` and other rate-limit notices. Holding these back keeps an early
    /// failure retryable without the client noticing.
    Lifecycle,
    /// Output the client would see twice if the request were retried:
    /// `response.output_item.*`, `response.content_part.*`, every `*.delta`,
    /// `response.output_text.*`, reasoning, function and tool call events.
    Content,
    /// The stream's answer is over: `response.completed`, `response.failed`,
    /// `response.incomplete`.
    Terminal,
    /// A top-level `error` event.
    Error,
    /// Anything else; layers should treat it as output unless they know better.
    Other,
}

/// Classifies a Responses stream event type.
///
/// ```
/// use tower_responses::sse::{event_kind, EventKind};
///
/// assert_eq!(event_kind("response.in_progress"), EventKind::Lifecycle);
/// assert_eq!(event_kind("response.output_text.delta"), EventKind::Content);
/// assert_eq!(event_kind("response.failed"), EventKind::Terminal);
/// assert_eq!(event_kind("error"), EventKind::Error);
/// ```
pub fn event_kind(event_type: &str) -> EventKind {
    match event_type {
        "response.completed" | "response.failed" | "response.incomplete" => EventKind::Terminal,
        "error" => EventKind::Error,
        "response.created" | "response.in_progress" | "response.queued" => EventKind::Lifecycle,
        // Every event of a stream comes through here, most of them deltas: output names are
        // tested first, and rate-limit notices with a byte-window test rather than
        // `str::contains`, whose searcher setup costs more than these short names.
        t => match t.strip_prefix("response.") {
            // A delta is output, whatever it is a delta of.
            Some(rest) if rest.ends_with(".delta") => EventKind::Content,
            _ if mentions_rate_limit(t) => EventKind::Lifecycle,
            Some(rest) if is_content(rest) => EventKind::Content,
            _ => EventKind::Other,
        },
    }
}

fn mentions_rate_limit(t: &str) -> bool {
    t.as_bytes().windows(10).any(|w| w == b"rate_limit")
}

/// Output event groups after `response.`; tool calls are matched by their `_call` suffix.
const CONTENT_GROUPS: [&str; 8] = [
    "output_",
    "content_part.",
    "reasoning",
    "function_call",
    "custom_tool_call",
    "refusal.",
    "audio",
    "mcp_",
];

/// Whether a non-delta event after `response.` is output (deltas are answered before).
fn is_content(rest: &str) -> bool {
    CONTENT_GROUPS.iter().any(|g| rest.starts_with(g))
        || rest.split('.').next().unwrap_or(rest).ends_with("_call")
}

/// Reads the top-level JSON `"type"` string of `data` without parsing the whole payload.
///
/// Responses events put `"type"` first, which is answered straight away; otherwise the
/// top-level keys are walked, skipping nested values, so a `"type"` inside a nested object is
/// never taken. Returns `None` when there is no such key, when its value is not a plain
/// string (escapes included), or when anything before it does not look like JSON.
///
/// ```
/// use tower_responses::sse::sniff_type;
///
/// assert_eq!(sniff_type(br#"{"type":"response.output_text.delta","delta":"Hi"}"#), Some("response.output_text.delta"));
/// assert_eq!(sniff_type(br#"{"item":{"type":"message"},"type":"response.output_item.added"}"#), Some("response.output_item.added"));
/// assert_eq!(sniff_type(br#"{"item":{"type":"message"}}"#), None);
/// assert_eq!(sniff_type(b"[DONE]"), None);
/// ```
pub fn sniff_type(data: &[u8]) -> Option<&str> {
    if let Some(rest) = data.strip_prefix(br#"{"type":""#) {
        // Every event of a stream is sniffed, most of them text deltas: that type is
        // recognised without a search, and the usual ones without a UTF-8 check.
        if rest
            .strip_prefix(TEXT_DELTA.as_bytes())
            .is_some_and(|r| r.first() == Some(&b'"'))
        {
            return Some(TEXT_DELTA);
        }
        let end = memchr2(b'"', b'\\', rest)?;
        return match rest[end] {
            b'"' => known_type(&rest[..end]).or_else(|| std::str::from_utf8(&rest[..end]).ok()),
            _ => None,
        };
    }
    sniff_type_slow(data)
}

/// The type most events of a stream have.
const TEXT_DELTA: &str = "response.output_text.delta";

/// How Responses upstreams start a text delta, with and without its `event:` line: heads
/// for [`SseDecoder::skip_events_starting_with`] that decide the type ([`sniff_type`] reads
/// the `"type"` the data starts with, whatever the `event:` line says).
pub(crate) const TEXT_DELTA_HEADS: [&[u8]; 2] = [
    b"event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\"",
    b"data: {\"type\":\"response.output_text.delta\"",
];

/// The event types of a usual answer, as static strings: a match of bytes costs less than
/// the UTF-8 check of a short string.
fn known_type(ty: &[u8]) -> Option<&'static str> {
    Some(match ty {
        b"response.created" => "response.created",
        b"response.in_progress" => "response.in_progress",
        b"response.output_item.added" => "response.output_item.added",
        b"response.output_item.done" => "response.output_item.done",
        b"response.content_part.added" => "response.content_part.added",
        b"response.content_part.done" => "response.content_part.done",
        b"response.output_text.done" => "response.output_text.done",
        b"response.reasoning_summary_text.delta" => "response.reasoning_summary_text.delta",
        b"response.function_call_arguments.delta" => "response.function_call_arguments.delta",
        b"response.completed" => "response.completed",
        _ => return None,
    })
}

fn sniff_type_slow(d: &[u8]) -> Option<&str> {
    let mut i = skip_ws(d, 0);
    if d.get(i) != Some(&b'{') {
        return None;
    }
    i += 1;
    loop {
        i = skip_ws(d, i);
        if d.get(i) != Some(&b'"') {
            return None;
        }
        let (key_end, key_escaped) = string_end(d, i + 1)?;
        let key = &d[i + 1..key_end];
        i = skip_ws(d, key_end + 1);
        if d.get(i) != Some(&b':') {
            return None;
        }
        i = skip_ws(d, i + 1);
        if key_escaped {
            // The key might spell "type" with escapes; unescaping is not worth it here.
            return None;
        }
        if key == b"type" {
            if d.get(i) != Some(&b'"') {
                return None;
            }
            let (end, escaped) = string_end(d, i + 1)?;
            return match escaped {
                false => std::str::from_utf8(&d[i + 1..end]).ok(),
                true => None,
            };
        }
        i = skip_ws(d, skip_value(d, i)?);
        if d.get(i) != Some(&b',') {
            return None;
        }
        i += 1;
    }
}

pub(crate) fn skip_ws(d: &[u8], mut i: usize) -> usize {
    while let Some(b' ' | b'\t' | b'\n' | b'\r') = d.get(i) {
        i += 1;
    }
    i
}

/// Index of the closing quote of a string whose content starts at `i`, and whether the string
/// holds escapes.
pub(crate) fn string_end(d: &[u8], mut i: usize) -> Option<(usize, bool)> {
    let mut escaped = false;
    loop {
        i += memchr2(b'"', b'\\', d.get(i..)?)?;
        if d[i] == b'"' {
            return Some((i, escaped));
        }
        escaped = true;
        i += 2;
    }
}

/// Index just past the JSON value starting at `i`.
pub(crate) fn skip_value(d: &[u8], i: usize) -> Option<usize> {
    match *d.get(i)? {
        b'"' => Some(string_end(d, i + 1)?.0 + 1),
        b'{' | b'[' => skip_nested(d, i),
        _ => {
            let len = d[i..]
                .iter()
                .take_while(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
                .count();
            (len > 0).then_some(i + len)
        }
    }
}

fn skip_nested(d: &[u8], mut i: usize) -> Option<usize> {
    // One bit per open bracket, set for an object: enough to check that brackets match.
    // 128 levels, as many as serde_json reads: the scans must read what the parse reads.
    let mut open: u128 = 0;
    let mut depth = 0u32;
    while let Some(&b) = d.get(i) {
        match b {
            b'"' => {
                i = string_end(d, i + 1)?.0;
            }
            b'{' | b'[' => {
                if depth == u128::BITS {
                    return None;
                }
                open = (open << 1) | u128::from(b == b'{');
                depth += 1;
            }
            b'}' | b']' => {
                if depth == 0 || (open & 1 == 1) != (b == b'}') {
                    return None;
                }
                open >>= 1;
                depth -= 1;
                if depth == 0 {
                    return Some(i + 1);
                }
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// The JSON scanning helpers, for [`crate::json`].
pub(crate) mod scan {
    pub(crate) use super::{skip_value, skip_ws, string_end};
}

/// Whether `headers` announce a `text/event-stream` body (parameters allowed, any case).
///
/// ```
/// use http::{HeaderMap, HeaderValue, header::CONTENT_TYPE};
/// use tower_responses::sse::is_event_stream;
///
/// let mut headers = HeaderMap::new();
/// headers.insert(CONTENT_TYPE, HeaderValue::from_static("Text/Event-Stream; charset=utf-8"));
/// assert!(is_event_stream(&headers));
/// headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
/// assert!(!is_event_stream(&headers));
/// ```
pub fn is_event_stream(headers: &http::HeaderMap) -> bool {
    headers.get(http::header::CONTENT_TYPE).is_some_and(|v| {
        let v = v.as_bytes();
        let mime = v.split(|&b| b == b';').next().unwrap_or(v);
        mime.trim_ascii().eq_ignore_ascii_case(b"text/event-stream")
    })
}

/// A bound of [`SseDecoder`] was exceeded. The decoder stops decoding; its buffered bytes
/// are still available from [`SseDecoder::take_remainder`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SseError {
    /// A line is longer than the decoder's line bound.
    LineTooLong {
        /// The bound, in bytes.
        limit: usize,
    },
    /// An event's raw bytes are more than the decoder's event bound.
    EventTooLarge {
        /// The bound, in bytes.
        limit: usize,
    },
}

impl fmt::Display for SseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::LineTooLong { limit } => write!(f, "event-stream line longer than {limit} bytes"),
            Self::EventTooLarge { limit } => {
                write!(f, "event-stream event larger than {limit} bytes")
            }
        }
    }
}

impl std::error::Error for SseError {}

/// Field values of the event being assembled, as offsets into its raw bytes.
#[derive(Debug, Default)]
struct Fields {
    event: Option<(usize, usize)>,
    id: Option<(usize, usize)>,
    data: Vec<(usize, usize)>,
}

impl Fields {
    /// Applies one non-empty line starting at raw offset `at`.
    fn line(&mut self, retry: &mut Option<u64>, line: &[u8], at: usize) {
        let (name_end, value_start) = match memchr(b':', line) {
            Some(0) => return,
            Some(c) if line.get(c + 1) == Some(&b' ') => (c, c + 2),
            Some(c) => (c, c + 1),
            None => (line.len(), line.len()),
        };
        let range = (at + value_start, at + line.len());
        let value = &line[value_start..];
        match &line[..name_end] {
            b"data" => self.data.push(range),
            b"event" => self.event = Some(range),
            b"id" if memchr(0, value).is_none() => self.id = Some(range),
            b"retry" if !value.is_empty() && value.iter().all(u8::is_ascii_digit) => {
                *retry = Some(value.iter().fold(0u64, |n, d| {
                    n.saturating_mul(10).saturating_add(u64::from(d - b'0'))
                }));
            }
            _ => {}
        }
    }

    /// A blank line without data: per spec the event type and data are dropped, the id kept.
    fn end_block(&mut self) {
        self.event = None;
        self.data.clear();
    }

    fn take_event(&mut self, raw: Bytes) -> Event {
        let data = match self.data.as_slice() {
            &[(start, end)] => raw.slice(start..end),
            lines => {
                let len = lines.iter().map(|(s, e)| e - s + 1).sum::<usize>();
                let mut joined = BytesMut::with_capacity(len);
                for (n, &(start, end)) in lines.iter().enumerate() {
                    if n > 0 {
                        joined.put_u8(b'\n');
                    }
                    joined.extend_from_slice(&raw[start..end]);
                }
                joined.freeze()
            }
        };
        let event = self.event.take().map(|(s, e)| raw.slice(s..e));
        let id = self.id.take().map(|(s, e)| raw.slice(s..e));
        self.data.clear();
        Event {
            raw,
            event,
            data,
            id,
        }
    }
}

/// An event framed by [`frame_simple`]: offsets into its chunk.
struct Simple {
    event: Option<(usize, usize)>,
    data: (usize, usize),
    end: usize,
}

/// Frames the event at the start of `s` when it has the shape Responses streams use, an
/// optional `event:` line, one `data:` line and a blank line, all ending in LF, within the
/// bounds; `None` for anything else (comments, CR, `id:`, several data lines, an event that
/// goes on in the next chunk), which the line-by-line decoder then reads as the spec says.
///
/// One search per line and none for the blank line: this is most of the decoding of a
/// stream of deltas.
fn frame_simple(s: &[u8], max_line: usize, max_event: usize) -> Option<Simple> {
    // The value of the field whose name (colon included) is `name`, at `at`, and the offset
    // just past its LF.
    let field = |at: usize, name: &[u8]| -> Option<((usize, usize), usize)> {
        let rest = s.get(at..)?.strip_prefix(name)?;
        let nl = memchr2(b'\n', b'\r', rest)?;
        if rest[nl] != b'\n' || nl + name.len() > max_line {
            return None;
        }
        let start = at + name.len() + usize::from(rest.first() == Some(&b' ') && nl > 0);
        Some(((start, at + name.len() + nl), at + name.len() + nl + 1))
    };
    let (event, at) = match field(0, b"event:") {
        Some((value, next)) => (Some(value), next),
        None if s.starts_with(b"data:") => (None, 0),
        None => return None,
    };
    let (data, next) = field(at, b"data:")?;
    if s.get(next) != Some(&b'\n') || next + 1 > max_event {
        return None;
    }
    Some(Simple {
        event,
        data,
        end: next + 1,
    })
}

#[derive(Debug)]
enum Bom {
    /// The stream's first bytes, held until they are known to be a BOM or not.
    Checking {
        held: [u8; 3],
        len: usize,
    },
    Done,
}

/// An incremental `text/event-stream` decoder.
///
/// Push chunks with [`push`](Self::push) and drain [`next_event`](Self::next_event) until it
/// returns `None` after each one; at the end of the body drain [`finish`](Self::finish), then
/// forward [`take_remainder`](Self::take_remainder). Events come out the same whatever the
/// chunk boundaries. LF, CRLF and CR line endings, comments, multi-line data, `event:`,
/// `id:` and `retry:` fields and a leading byte-order mark are handled as the WHATWG spec
/// says; an event's data is sliced out of its chunk without copying when it fits in one.
///
/// Memory is bounded: a line longer than [`with_max_line`](Self::with_max_line) or an event
/// larger than [`with_max_event`](Self::with_max_event) is an error, raised before the
/// decoder holds more than the bound plus the chunks pushed since the last drain. After an
/// error the decoder decodes nothing more; callers forward
/// [`take_remainder`](Self::take_remainder) and the rest of the body as they are.
#[derive(Debug)]
pub struct SseDecoder {
    max_line: usize,
    max_event: usize,
    /// The start of the event being assembled, copied here once it spans chunks.
    buf: BytesMut,
    /// Pushed chunks; the front one continues `buf`.
    queue: VecDeque<Bytes>,
    queued: usize,
    /// Scan position in the front chunk.
    scan: usize,
    /// Start of the current line as an offset into the event's raw bytes (`buf`, then the
    /// front chunk).
    line_start: usize,
    /// The last byte scanned was a CR ending a chunk: an LF starting the next one belongs
    /// to the same line ending.
    pending_cr: bool,
    fields: Fields,
    retry: Option<u64>,
    bom: Bom,
    failed: Option<SseError>,
}

impl Default for SseDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl SseDecoder {
    /// A decoder with [`DEFAULT_MAX_LINE`] and [`DEFAULT_MAX_EVENT`].
    pub fn new() -> Self {
        Self {
            max_line: DEFAULT_MAX_LINE,
            max_event: DEFAULT_MAX_EVENT,
            buf: BytesMut::new(),
            queue: VecDeque::new(),
            queued: 0,
            scan: 0,
            line_start: 0,
            pending_cr: false,
            fields: Fields::default(),
            retry: None,
            bom: Bom::Checking {
                held: [0; 3],
                len: 0,
            },
            failed: None,
        }
    }

    /// Bounds one line, terminator excluded, to `n` bytes.
    pub fn with_max_line(mut self, n: usize) -> Self {
        self.max_line = n;
        self
    }

    /// Bounds one event's raw bytes to `n`.
    pub fn with_max_event(mut self, n: usize) -> Self {
        self.max_event = n;
        self
    }

    /// Appends input. Nothing is decoded until [`next_event`](Self::next_event).
    pub fn push(&mut self, mut chunk: Bytes) {
        if let Bom::Checking { held, len } = &mut self.bom {
            let before = *len;
            let mut i = 0;
            while *len < BOM.len() && i < chunk.len() {
                if chunk[i] != BOM[*len] {
                    let held = Bytes::copy_from_slice(&held[..before]);
                    self.bom = Bom::Done;
                    self.enqueue(held);
                    self.enqueue(chunk);
                    return;
                }
                held[*len] = chunk[i];
                *len += 1;
                i += 1;
            }
            if *len < BOM.len() {
                return;
            }
            self.bom = Bom::Done;
            // The BOM belongs to the first event's raw bytes but not to its first line.
            self.buf.extend_from_slice(&BOM);
            self.line_start = BOM.len();
            chunk.advance(i);
        }
        self.enqueue(chunk);
    }

    fn enqueue(&mut self, chunk: Bytes) {
        if !chunk.is_empty() {
            self.queued += chunk.len();
            self.queue.push_back(chunk);
        }
    }

    /// The next complete event, or `None` until more input is pushed.
    ///
    /// # Errors
    ///
    /// When a bound is exceeded; every later call returns the same error.
    pub fn next_event(&mut self) -> Result<Option<Event>, SseError> {
        if let Some(err) = self.failed {
            return Err(err);
        }
        if let Some(fast) = self.simple_at_front() {
            return Ok(Some(self.dispatch_simple(fast)));
        }
        self.next_event_by_lines()
    }

    /// As [`next_event`](Self::next_event), but shows the event to `f`, borrowed, instead of
    /// handing it out: an event of the usual shape (an `event:` line, one `data:` line) is
    /// then neither sliced nor copied, only stepped over, so a reader that wants little of
    /// most events (their type) pays for no more. Gives what `f` returned.
    ///
    /// ```
    /// use bytes::Bytes;
    /// use tower_responses::sse::{EventKind, SseDecoder};
    ///
    /// let mut decoder = SseDecoder::new();
    /// decoder.push(Bytes::from_static(b"event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"Hi\"}\n\n"));
    /// let kind = decoder.next_event_with(|ev| ev.kind()).unwrap();
    /// assert_eq!(kind, Some(EventKind::Content));
    /// assert_eq!(decoder.next_event_with(|ev| ev.kind()).unwrap(), None);
    /// ```
    ///
    /// # Errors
    ///
    /// As [`next_event`](Self::next_event).
    pub fn next_event_with<R>(
        &mut self,
        f: impl FnOnce(EventRef<'_>) -> R,
    ) -> Result<Option<R>, SseError> {
        if let Some(err) = self.failed {
            return Err(err);
        }
        if let Some(fast) = self.simple_at_front() {
            if let Some(front) = self.queue.front_mut() {
                let seen = f(EventRef {
                    raw: &front[..fast.end],
                    event: fast.event.map(|(s, e)| &front[s..e]),
                    data: &front[fast.data.0..fast.data.1],
                });
                front.advance(fast.end);
                self.queued -= fast.end;
                if front.is_empty() {
                    self.queue.pop_front();
                }
                return Ok(Some(seen));
            }
        }
        Ok(self.next_event_by_lines()?.map(|ev| f(ev.borrowed())))
    }

    /// Steps over the events at the front that begin with `head` and have the usual shape
    /// (an optional `event:` line, one `data:` line, a blank line, all ending in LF): the
    /// events [`next_event`](Self::next_event) would hand out next, without handing them out.
    /// Gives how many.
    ///
    /// `head` is an event's start: `data:` and the start of its value, or an `event:` line
    /// (LF included) and that. A reader that wants only the type of most events, and knows
    /// that `head` decides it, pays one comparison and one search of the data line per event.
    /// Any other `head` (another field, a CR, a second line) skips nothing. Stops at the first
    /// event that does not begin with `head`, that is not whole in its chunk, or that breaks a
    /// bound, which `next_event` then reads (or refuses) as before.
    ///
    /// ```
    /// use bytes::Bytes;
    /// use tower_responses::sse::SseDecoder;
    ///
    /// let mut decoder = SseDecoder::new();
    /// decoder.push(Bytes::from_static(
    ///     b"data: {\"type\":\"a\",\"n\":1}\n\ndata: {\"type\":\"a\",\"n\":2}\n\ndata: {\"type\":\"b\"}\n\n",
    /// ));
    /// assert_eq!(decoder.skip_events_starting_with(b"data: {\"type\":\"a\""), 2);
    /// let next = decoder.next_event().unwrap().unwrap();
    /// assert_eq!(next.event_type(), Some("b"));
    /// ```
    pub fn skip_events_starting_with(&mut self, head: &[u8]) -> usize {
        // Where the data line starts in `head`, and that the lines before it are one `event:`
        // line as `frame_simple` takes it: LF-terminated, no CR, within the line bound.
        let data_line = match memchr(b'\n', head) {
            None => 0,
            Some(lf) if head.starts_with(b"event:") && lf <= self.max_line => lf + 1,
            Some(_) => return 0,
        };
        let data = &head[data_line..];
        if !data.starts_with(b"data:") || memchr2(b'\n', b'\r', data).is_some() {
            return 0;
        }
        if head[..data_line].contains(&b'\r') {
            return 0;
        }
        let mut skipped = 0;
        while self.failed.is_none()
            && self.scan == 0
            && self.line_start == 0
            && self.buf.is_empty()
            && !self.pending_cr
        {
            let Some(front) = self.queue.front_mut() else {
                break;
            };
            if !front.starts_with(head) {
                break;
            }
            // The data line's end: the first LF or CR after `head` (which has neither there).
            let Some(nl) = memchr2(b'\n', b'\r', &front[head.len()..]) else {
                break;
            };
            let eol = head.len() + nl;
            let end = eol + 2;
            if front[eol] != b'\n'
                || eol - data_line > self.max_line
                || front.get(eol + 1) != Some(&b'\n')
                || end > self.max_event
            {
                break;
            }
            front.advance(end);
            self.queued -= end;
            if front.is_empty() {
                self.queue.pop_front();
            }
            skipped += 1;
        }
        skipped
    }

    /// The event at the front, framed in one go, when it starts its chunk and has the usual
    /// shape ([`frame_simple`]).
    fn simple_at_front(&self) -> Option<Simple> {
        if self.scan != 0 || self.line_start != 0 || !self.buf.is_empty() || self.pending_cr {
            return None;
        }
        frame_simple(self.queue.front()?, self.max_line, self.max_event)
    }

    /// The next event, read line by line as the spec says.
    fn next_event_by_lines(&mut self) -> Result<Option<Event>, SseError> {
        loop {
            let Some(chunk) = self.queue.front() else {
                return Ok(None);
            };
            let base = self.buf.len();
            if self.pending_cr && self.scan < chunk.len() {
                self.pending_cr = false;
                if chunk[self.scan] == b'\n' {
                    self.scan += 1;
                    self.line_start += 1;
                }
            }
            let Some(found) = memchr2(b'\n', b'\r', &chunk[self.scan..]) else {
                let end = base + chunk.len();
                if let Some(err) = self.exceeded(end - self.line_start, end) {
                    self.failed = Some(err);
                    return Err(err);
                }
                self.spill();
                continue;
            };
            let term = self.scan + found;
            let mut next = term + 1;
            if chunk[term] == b'\r' {
                match chunk.get(next) {
                    Some(b'\n') => next += 1,
                    Some(_) => {}
                    None => self.pending_cr = true,
                }
            }
            let line_end = base + term;
            if let Some(err) = self.exceeded(line_end - self.line_start, base + next) {
                self.failed = Some(err);
                return Err(err);
            }

            if line_end == self.line_start {
                if !self.fields.data.is_empty() {
                    return Ok(Some(self.dispatch(next)));
                }
                self.fields.end_block();
                self.scan = next;
            } else if self.line_start >= base {
                let line = &chunk[self.line_start - base..term];
                self.fields.line(&mut self.retry, line, self.line_start);
                self.scan = next;
            } else {
                // The line started in an earlier chunk: move its end next to its start.
                self.consume_front(next);
                let line = &self.buf[self.line_start..line_end];
                self.fields.line(&mut self.retry, line, self.line_start);
                self.scan = 0;
            }
            self.line_start = base + next;
        }
    }

    /// At the end of the input: the next event still held, the last one possibly without
    /// its blank line.
    ///
    /// Call it until it returns `None`. The WHATWG spec drops an event that lacks its blank
    /// line at the end of the stream; it is delivered here because servers do end streams
    /// that way. An event whose last line has no line ending is not delivered: the connection
    /// may have dropped mid-line, and a truncated `response.completed` would still sniff as
    /// one. Its bytes stay in [`take_remainder`](Self::take_remainder).
    ///
    /// # Errors
    ///
    /// As [`next_event`](Self::next_event).
    pub fn finish(&mut self) -> Result<Option<Event>, SseError> {
        if let Some(err) = self.failed {
            return Err(err);
        }
        if let Bom::Checking { held, len } = self.bom {
            self.bom = Bom::Done;
            self.enqueue(Bytes::copy_from_slice(&held[..len]));
        }
        if let Some(event) = self.next_event()? {
            return Ok(Some(event));
        }
        // `next_event` left nothing in the queue: the rest is all in `buf`.
        if self.line_start < self.buf.len() || self.fields.data.is_empty() {
            return Ok(None);
        }
        let raw = self.buf.split().freeze();
        self.line_start = 0;
        Ok(Some(self.fields.take_event(raw)))
    }

    /// Bytes pushed but not yet handed out in an event.
    pub fn buffered(&self) -> usize {
        let held = match self.bom {
            Bom::Checking { len, .. } => len,
            Bom::Done => 0,
        };
        held + self.buf.len() + self.queued
    }

    /// Takes every byte pushed but not handed out in an event, to forward at the end of the
    /// input or after an error, and forgets the partial event they held.
    pub fn take_remainder(&mut self) -> Bytes {
        let mut out = match std::mem::replace(&mut self.bom, Bom::Done) {
            Bom::Checking { held, len } => BytesMut::from(&held[..len]),
            Bom::Done => self.buf.split(),
        };
        let rest = if out.is_empty() && self.queue.len() == 1 {
            self.queue.pop_front().unwrap_or_default()
        } else {
            out.reserve(self.queued);
            for chunk in self.queue.drain(..) {
                out.extend_from_slice(&chunk);
            }
            out.freeze()
        };
        self.queued = 0;
        self.scan = 0;
        self.line_start = 0;
        self.pending_cr = false;
        self.fields.end_block();
        self.fields.id = None;
        rest
    }

    /// The last valid `retry:` value seen, in milliseconds.
    pub fn retry(&self) -> Option<u64> {
        self.retry
    }

    fn exceeded(&self, line_len: usize, event_len: usize) -> Option<SseError> {
        if line_len > self.max_line {
            Some(SseError::LineTooLong {
                limit: self.max_line,
            })
        } else if event_len > self.max_event {
            Some(SseError::EventTooLarge {
                limit: self.max_event,
            })
        } else {
            None
        }
    }

    /// Moves the whole front chunk into `buf`: the event goes on in the next chunk.
    fn spill(&mut self) {
        if let Some(chunk) = self.queue.pop_front() {
            self.queued -= chunk.len();
            self.buf.extend_from_slice(&chunk);
        }
        self.scan = 0;
    }

    /// Moves the first `n` bytes of the front chunk into `buf`.
    fn consume_front(&mut self, n: usize) {
        if let Some(front) = self.queue.front_mut() {
            self.buf.extend_from_slice(&front[..n]);
            front.advance(n);
            self.queued -= n;
            if front.is_empty() {
                self.queue.pop_front();
            }
        }
    }

    /// Hands out the event [`frame_simple`] framed at the start of the front chunk.
    fn dispatch_simple(&mut self, fast: Simple) -> Event {
        let raw = match self.queue.front_mut() {
            Some(front) => front.split_to(fast.end),
            None => Bytes::new(),
        };
        self.queued -= fast.end;
        if self.queue.front().is_some_and(Bytes::is_empty) {
            self.queue.pop_front();
        }
        Event {
            event: fast.event.map(|(s, e)| raw.slice(s..e)),
            data: raw.slice(fast.data.0..fast.data.1),
            id: None,
            raw,
        }
    }

    /// Hands out the event whose raw bytes end at `end` in the front chunk.
    fn dispatch(&mut self, end: usize) -> Event {
        let raw = if self.buf.is_empty() {
            let front = self.queue.front_mut().map(|f| f.split_to(end));
            self.queued -= end;
            if self.queue.front().is_some_and(Bytes::is_empty) {
                self.queue.pop_front();
            }
            front.unwrap_or_default()
        } else {
            self.consume_front(end);
            self.buf.split().freeze()
        };
        self.scan = 0;
        self.line_start = 0;
        self.fields.take_event(raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `chunks` to the end; returns the events and the undispatched remainder.
    fn decode(chunks: &[&[u8]]) -> (Vec<Event>, Bytes) {
        let mut decoder = SseDecoder::new();
        let mut events = Vec::new();
        for chunk in chunks {
            decoder.push(Bytes::copy_from_slice(chunk));
            while let Some(event) = decoder.next_event().unwrap() {
                events.push(event);
            }
        }
        while let Some(event) = decoder.finish().unwrap() {
            events.push(event);
        }
        let rest = decoder.take_remainder();
        let mut all: Vec<u8> = events.iter().flat_map(|e| e.raw.to_vec()).collect();
        all.extend_from_slice(&rest);
        assert_eq!(all, chunks.concat(), "raw bytes must reproduce the input");
        (events, rest)
    }

    fn datas(events: &[Event]) -> Vec<&[u8]> {
        events.iter().map(|e| &e.data[..]).collect()
    }

    /// Decodes `input` one byte per chunk: every event spans chunks, so none takes the
    /// one-go framing of [`frame_simple`].
    fn decode_bytewise(input: &[u8]) -> Vec<Event> {
        let pieces: Vec<&[u8]> = input.chunks(1).collect();
        decode(&pieces).0
    }

    #[test]
    fn one_go_framing_reads_what_the_line_decoder_reads() {
        let inputs: &[&[u8]] = &[
            b"event: x\ndata: y\n\n",
            b"event:x\ndata:y\n\n",
            b"event:\ndata:\n\n",
            b"event: \ndata: \n\n",
            b"event:  x\ndata:  y \n\n",
            b"data: a\n\ndata: {\"type\":\"t\"}\n\n",
            b"event: x\r\ndata: y\r\n\r\n",
            b"event: x\ndata: y\r\n\n",
            b"event: x\ndata: y\n\r\n",
            b"data: a\ndata: b\n\n",
            b"event: x\nid: 1\ndata: y\n\n",
            b"id: 1\nevent: x\ndata: y\n\n",
            b"event: x\nevent: z\ndata: y\n\n",
            b"event: x\n\ndata: y\n\n",
            b": hi\nevent: x\ndata: y\n\n",
            b"data: y\n: after\n\n",
            b"data: y\nretry: 5\n\n",
            b"event: x\ndata: y\n",
            b"dataX: y\n\ndata: z\n\n",
            b"eventdata: y\n\n",
        ];
        for input in inputs {
            let (whole, _) = decode(&[input]);
            let bytewise = decode_bytewise(input);
            let fields = |events: &[Event]| -> Vec<_> {
                events
                    .iter()
                    .map(|e| (e.event.clone(), e.data.clone(), e.id.clone()))
                    .collect()
            };
            let text = String::from_utf8_lossy(input);
            assert_eq!(fields(&whole), fields(&bytewise), "{text:?}");
            if !input.contains(&b'\r') {
                // (A CR ending a chunk leaves its LF to what follows: raw bytes differ then.)
                assert_eq!(whole, bytewise, "{text:?}");
            }
        }
        // A data line the one-go framing reads, sliced out of the chunk without a copy.
        let input = Bytes::from_static(b"event: e\ndata: {}\n\ndata: x\n\n");
        let mut decoder = SseDecoder::new();
        decoder.push(input.clone());
        let first = decoder.next_event().unwrap().unwrap();
        assert_eq!(first.event.as_deref(), Some(&b"e"[..]));
        assert_eq!(first.data.as_ptr(), input[15..].as_ptr());
        assert_eq!(&decoder.next_event().unwrap().unwrap().data[..], b"x");
        assert_eq!(decoder.buffered(), 0);
    }

    #[test]
    fn one_go_framing_keeps_the_bounds() {
        let input = b"event: abcdef\ndata: 0123456789\n\n";
        let mut decoder = SseDecoder::new().with_max_line(12);
        decoder.push(Bytes::from_static(input));
        assert_eq!(
            decoder.next_event(),
            Err(SseError::LineTooLong { limit: 12 })
        );
        let mut decoder = SseDecoder::new().with_max_event(input.len() - 1);
        decoder.push(Bytes::from_static(input));
        assert_eq!(
            decoder.next_event(),
            Err(SseError::EventTooLarge {
                limit: input.len() - 1
            })
        );
        for (line, event) in [(16, input.len()), (usize::MAX, input.len())] {
            let mut decoder = SseDecoder::new().with_max_line(line).with_max_event(event);
            decoder.push(Bytes::from_static(input));
            assert!(decoder.next_event().unwrap().is_some());
        }
    }

    #[test]
    fn line_endings_lf_crlf_cr() {
        for input in [
            &b"data: a\n\ndata: b\n\n"[..],
            b"data: a\r\n\r\ndata: b\r\n\r\n",
            b"data: a\r\rdata: b\r\r",
            b"data: a\r\n\ndata: b\n\r\n",
        ] {
            let (events, rest) = decode(&[input]);
            assert_eq!(datas(&events), [b"a", b"b"], "{input:?}");
            assert!(rest.is_empty());
        }
    }

    #[test]
    fn cr_and_lf_split_across_chunks_are_one_line_ending() {
        // Were the LF a second line ending, it would end the event after `event: x`.
        let (events, _) = decode(&[b"event: x\r", b"\ndata: a\r", b"\n\r", b"\n"]);
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].event.as_deref(), Some(&b"x"[..]));
        assert_eq!(&events[0].data[..], b"a");
    }

    #[test]
    fn event_is_dispatched_on_cr_without_waiting_for_more() {
        let mut decoder = SseDecoder::new();
        decoder.push(Bytes::from_static(b"data: a\r\r"));
        assert_eq!(&decoder.next_event().unwrap().unwrap().data[..], b"a");
    }

    #[test]
    fn comments_are_skipped_and_kept_in_raw() {
        let input = b": hello\ndata: a\n: mid\n\n:only a comment\n\ndata: b\n\n";
        let (events, rest) = decode(&[input]);
        assert_eq!(datas(&events), [b"a", b"b"]);
        assert_eq!(&events[0].raw[..], b": hello\ndata: a\n: mid\n\n");
        assert_eq!(&events[1].raw[..], b":only a comment\n\ndata: b\n\n");
        assert!(rest.is_empty());
    }

    #[test]
    fn event_field_of_a_data_less_block_is_dropped() {
        let (events, _) = decode(&[b"event: lost\n\ndata: a\n\n"]);
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].event, None);
    }

    #[test]
    fn multi_line_data_is_joined_with_lf() {
        let (events, _) = decode(&[b"data: one\ndata:two\ndata\ndata:  four\n\n"]);
        assert_eq!(&events[0].data[..], b"one\ntwo\n\n four");
    }

    #[test]
    fn fields_without_colon_and_leading_space() {
        let input = b"event\ndata\n\nevent:x\ndata:y\n\nevent:  z\ndata:  w \n\n";
        let (events, _) = decode(&[input]);
        let fields: Vec<_> = events
            .iter()
            .map(|e| (e.event.as_deref().map(<[u8]>::to_vec), e.data.to_vec()))
            .collect();
        assert_eq!(
            fields,
            [
                (Some(b"".to_vec()), b"".to_vec()),
                (Some(b"x".to_vec()), b"y".to_vec()),
                (Some(b" z".to_vec()), b" w ".to_vec()),
            ]
        );
    }

    #[test]
    fn id_and_retry_fields() {
        let mut decoder = SseDecoder::new();
        decoder.push(Bytes::from_static(
            b"id: 7\nretry: 1500\ndata: a\n\nid: bad\0id\nretry: 2x\ndata: b\n\ndata: c\n\n",
        ));
        let ids: Vec<_> = std::iter::from_fn(|| decoder.next_event().unwrap())
            .map(|e| e.id)
            .collect();
        assert_eq!(ids, [Some(Bytes::from_static(b"7")), None, None]);
        assert_eq!(decoder.retry(), Some(1500));
    }

    #[test]
    fn single_line_data_is_not_copied() {
        let mut decoder = SseDecoder::new();
        let input = Bytes::from_static(b"event: e\ndata: {\"type\":\"x\"}\n\n");
        decoder.push(input.clone());
        let event = decoder.next_event().unwrap().unwrap();
        assert_eq!(event.raw.as_ptr(), input.as_ptr());
        assert_eq!(event.data.as_ptr(), input[15..].as_ptr());
    }

    #[test]
    fn bom_at_stream_start_is_ignored_but_forwarded() {
        for chunks in [
            vec![&b"\xEF\xBB\xBFdata: a\n\n"[..]],
            vec![b"\xEF", b"\xBB", b"\xBF", b"data: a\n\n"],
            vec![b"\xEF\xBB", b"\xBFdata: a\n\n"],
        ] {
            let (events, _) = decode(&chunks);
            assert_eq!(datas(&events), [b"a"]);
            assert_eq!(&events[0].raw[..3], b"\xEF\xBB\xBF");
        }
        // Not at the start, or not a whole BOM: part of the field name, which is then unknown.
        let (events, _) = decode(&[b"data: a\n\n\xEF\xBB\xBFdata: b\n\n"]);
        assert_eq!(datas(&events), [b"a"]);
        let (events, rest) = decode(&[b"\xEF\xBB", b"data: a\n\n"]);
        assert!(events.is_empty());
        assert_eq!(&rest[..], b"\xEF\xBBdata: a\n\n");
        let (events, rest) = decode(&[b"\xEF\xBB"]);
        assert!(events.is_empty());
        assert_eq!(&rest[..], b"\xEF\xBB");
    }

    #[test]
    fn final_event_without_blank_line_comes_from_finish() {
        for input in [&b"data: a\n\ndata: b\n"[..], b"data: a\n\ndata: b\r"] {
            let mut decoder = SseDecoder::new();
            decoder.push(Bytes::copy_from_slice(input));
            assert_eq!(&decoder.next_event().unwrap().unwrap().data[..], b"a");
            assert!(decoder.next_event().unwrap().is_none());
            let last = decoder.finish().unwrap().unwrap();
            assert_eq!(&last.data[..], b"b");
            assert!(decoder.finish().unwrap().is_none());
            assert_eq!(decoder.buffered(), 0);
        }
        // Without data, nothing to deliver: the bytes stay in the remainder.
        let (events, rest) = decode(&[b"data: a\n\n: bye\nevent: x\n"]);
        assert_eq!(events.len(), 1);
        assert_eq!(&rest[..], b": bye\nevent: x\n");
    }

    #[test]
    fn unterminated_last_line_is_not_delivered() {
        let truncated = b"data: {\"type\":\"response.completed\",\"response\":{\"usage\"";
        let (events, rest) = decode(&[b"data: a\n\ndata: x\n", truncated]);
        assert_eq!(datas(&events), [b"a"]);
        assert_eq!(rest, [&b"data: x\n"[..], truncated].concat());
    }

    #[test]
    fn long_line_without_newline_errors_with_bounded_buffer() {
        let mut decoder = SseDecoder::new().with_max_line(1 << 20);
        let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
        let mut pushed = 0;
        let err = loop {
            assert!(pushed < 10 << 20, "a 10 MB line must not be accepted");
            decoder.push(chunk.clone());
            pushed += chunk.len();
            match decoder.next_event() {
                Ok(None) => assert!(decoder.buffered() <= (1 << 20) + chunk.len()),
                Ok(Some(_)) => panic!("no event expected"),
                Err(err) => break err,
            }
        };
        assert_eq!(err, SseError::LineTooLong { limit: 1 << 20 });
        assert!(decoder.buffered() <= (1 << 20) + chunk.len());
        assert_eq!(decoder.next_event(), Err(err));
        assert_eq!(decoder.finish(), Err(err));
        // Everything held is still there to be passed through.
        assert_eq!(decoder.take_remainder().len(), pushed);
    }

    #[test]
    fn default_bounds_stop_an_endless_line() {
        let mut decoder = SseDecoder::new();
        let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
        let mut result = Ok(None);
        for _ in 0..(10 << 20) / chunk.len() {
            decoder.push(chunk.clone());
            result = decoder.next_event();
            assert!(decoder.buffered() <= DEFAULT_MAX_LINE + chunk.len());
            if result.is_err() {
                break;
            }
        }
        assert_eq!(
            result,
            Err(SseError::LineTooLong {
                limit: DEFAULT_MAX_LINE
            })
        );
    }

    #[test]
    fn event_bound_counts_every_line_and_comment() {
        let mut decoder = SseDecoder::new().with_max_event(100);
        decoder.push(Bytes::from(": ping\n\n".repeat(20)));
        assert_eq!(
            decoder.next_event(),
            Err(SseError::EventTooLarge { limit: 100 })
        );
        let mut decoder = SseDecoder::new().with_max_event(100);
        decoder.push(Bytes::from(format!("data: {}\n\n", "y".repeat(80))));
        assert!(decoder.next_event().unwrap().is_some());
    }

    #[test]
    fn errors_display() {
        assert_eq!(
            SseError::LineTooLong { limit: 5 }.to_string(),
            "event-stream line longer than 5 bytes"
        );
    }

    #[test]
    fn sniff_type_tricky_json() {
        let cases: &[(&[u8], Option<&str>)] = &[
            (br#"{"type":"response.created"}"#, Some("response.created")),
            (br#" { "type" : "a.b" , "x": 1}"#, Some("a.b")),
            (br#"{"seq":1,"type":"late"}"#, Some("late")),
            (
                br#"{"item":{"type":"message"},"type":"outer"}"#,
                Some("outer"),
            ),
            (br#"{"item":{"type":"message"}}"#, None),
            (br#"{"a":[{"type":"x"},"]}{"],"type":"ok"}"#, Some("ok")),
            (br#"{"s":"a \"type\":\"no\" \\","type":"yes"}"#, Some("yes")),
            (br#"{"n":-1.5e3,"t":true,"z":null,"type":"v"}"#, Some("v")),
            (br#"{"type":"esc\"aped"}"#, None),
            (br#"{"type":1}"#, None),
            (br#"{"ty\u0070e":"x"}"#, None),
            (br#"{"a":{"b":]},"type":"x"}"#, None),
            (br#"{"a":1 "type":"x"}"#, None),
            (br#"{"type":"unterminated"#, None),
            (br#"{"a":"unterminated"#, None),
            (br#"["type","x"]"#, None),
            (b"[DONE]", None),
            (b"", None),
            (b"{\"type\":\"\xFF\"}", None),
        ];
        for (data, want) in cases {
            assert_eq!(sniff_type(data), *want, "{}", String::from_utf8_lossy(data));
        }
        // Past serde_json's 128 levels the sniff gives up.
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        assert_eq!(
            sniff_type(format!(r#"{{"a":{deep},"type":"x"}}"#).as_bytes()),
            None
        );
    }

    /// The heads `soft_failure`'s watch skips text deltas by, and a few that skip nothing.
    const HEADS: [&[u8]; 5] = [
        TEXT_DELTA_HEADS[0],
        TEXT_DELTA_HEADS[1],
        b"event: x\r\ndata: {",
        b"id: 1\ndata: {",
        b"event: x\nevent: y\ndata: {",
    ];

    /// Decodes `chunks` as `decode` does, but first skips by each of `heads` before every
    /// `next_event`: the events and errors handed out, and how many were skipped.
    fn decode_skipping(
        chunks: &[Bytes],
        heads: &[&[u8]],
        max_line: usize,
    ) -> (Vec<Result<Event, SseError>>, usize, Bytes) {
        let mut decoder = SseDecoder::new()
            .with_max_line(max_line)
            .with_max_event(400);
        let (mut out, mut skipped) = (Vec::new(), 0);
        let drain = |decoder: &mut SseDecoder, out: &mut Vec<_>, skipped: &mut usize| loop {
            for head in heads {
                *skipped += decoder.skip_events_starting_with(head);
            }
            match decoder.next_event() {
                Ok(Some(ev)) => out.push(Ok(ev)),
                Ok(None) => return true,
                Err(e) => {
                    out.push(Err(e));
                    return false;
                }
            }
        };
        for chunk in chunks {
            decoder.push(chunk.clone());
            if !drain(&mut decoder, &mut out, &mut skipped) {
                return (out, skipped, decoder.take_remainder());
            }
        }
        if let Ok(Some(ev)) = decoder.finish() {
            out.push(Ok(ev));
        }
        (out, skipped, decoder.take_remainder())
    }

    #[test]
    fn skipping_by_a_head_leaves_what_next_event_reads_after_the_skipped() {
        // Over the event bound (400) but within the long line bound.
        let large = format!(
            "event: {TEXT_DELTA}\ndata: {{\"type\":\"{TEXT_DELTA}\",\"delta\":\"{}\"}}\n\n",
            "x".repeat(400)
        );
        let menu: [&[u8]; 15] = [
            large.as_bytes(),
            b"event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"a\"}\n\n",
            b"data: {\"type\":\"response.output_text.delta\",\"delta\":\"b\"}\n\n",
            b"event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\"}\n\n",
            b"event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"c\"}\r\n\n",
            b"event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"d\"}\n\r\n",
            b"event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\"}\ndata: 2\n\n",
            b"event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"a long line that breaks the bound of sixty-four bytes\"}\n\n",
            b"event: response.output_text.delta\ndata: {\"type\":\"response.output_text.deltas\"}\n\n",
            b"event: response.output_text.delta\ndata:{\"type\":\"response.output_text.delta\"}\n\n",
            b"event: response.output_text.delta\nid: 7\ndata: {\"type\":\"response.output_text.delta\"}\n\n",
            b"event: response.completed\ndata: {\"type\":\"response.completed\"}\n\n",
            b"data: {\"type\":\"response.output_text.delta\"}\n: note\n\n",
            b": keep-alive\n\n",
            b"event: x\r\ndata: {\"type\":\"x\"}\r\n\r\n",
        ];
        let mut seed = 0x2545_F491_4F6C_DD1Du64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut skipped_any = 0;
        for round in 0..3000 {
            let mut input = Vec::new();
            for _ in 0..1 + next() % 12 {
                input.extend_from_slice(menu[next() as usize % menu.len()]);
            }
            // Whole, or cut at random places (an event across chunks is not skipped).
            let mut chunks = Vec::new();
            let mut at = 0;
            while at < input.len() {
                let n = match round % 3 {
                    0 => input.len(),
                    _ => 1 + next() as usize % 200,
                };
                let end = (at + n).min(input.len());
                chunks.push(Bytes::copy_from_slice(&input[at..end]));
                at = end;
            }
            let max_line = if round % 2 == 0 { 64 } else { 4096 };
            let (plain, none, plain_rest) = decode_skipping(&chunks, &[], max_line);
            assert_eq!(none, 0);
            let (skipping, skipped, rest) = decode_skipping(&chunks, &HEADS, max_line);
            let text = String::from_utf8_lossy(&input);
            assert_eq!(rest, plain_rest, "{text:?}");
            // The skipping run reads the plain run's events in order, less `skipped` text
            // deltas: everything else (other events, failures) comes out the same.
            let mut left = skipping.iter().peekable();
            let mut dropped = 0;
            for ev in &plain {
                if left.peek() == Some(&ev) {
                    left.next();
                    continue;
                }
                let ev = ev.as_ref().expect("a failure is never skipped");
                assert_eq!(ev.event_type(), Some(TEXT_DELTA), "{text:?}");
                assert!(ev.id.is_none() && ev.event.as_deref() != Some(&b"x"[..]));
                dropped += 1;
            }
            assert!(left.next().is_none(), "{text:?}");
            assert_eq!(dropped, skipped, "{text:?}");
            skipped_any += skipped;
        }
        assert!(
            skipped_any > 1000,
            "the heads must skip events: {skipped_any}"
        );
    }

    #[test]
    fn the_fast_sniff_reads_what_the_walk_reads() {
        let mut cases: Vec<Vec<u8>> = [
            &br#"{"type":"response.output_text.delta","delta":"a"}"#[..],
            br#"{"type":"response.output_text.delta"}"#,
            br#"{"type":"response.output_text.delta.x","delta":"a"}"#,
            br#"{"type":"response.output_text.delt"}"#,
            br#"{"type":"response.output_text.delta\u0022"}"#,
            br#"{"type":"response.output_text.delta"#,
            br#"{"type":"response.created"}"#,
            br#"{"type":"response.created.x"}"#,
            br#"{"type":"response.createdx"}"#,
            br#"{"type":"response.completed","response":{}}"#,
            br#"{"type":"response.function_call_arguments.delta"}"#,
            b"{\"type\":\"caf\xC3\xA9\"}",
            b"{\"type\":\"\xFF\"}",
            br#"{"type":"esc\"aped"}"#,
            br#"{"type":""}"#,
        ]
        .iter()
        .map(|c| c.to_vec())
        .collect();
        // Every prefix of the usual types, each type with a byte changed, and random
        // bytes after the prefix the fast path reads.
        let alphabet = b"\"\\.aedlt{}:,\xC3\xA9\xFF";
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for ty in [
            TEXT_DELTA,
            "response.output_item.added",
            "response.in_progress",
        ] {
            let full = format!(r#"{{"type":"{ty}"}}"#).into_bytes();
            for n in 0..=full.len() {
                cases.push(full[..n].to_vec());
            }
            for i in 9..9 + ty.len() {
                let mut changed = full.clone();
                changed[i] = alphabet[next() as usize % alphabet.len()];
                cases.push(changed);
            }
        }
        for _ in 0..2000 {
            let mut data = br#"{"type":""#.to_vec();
            if next() % 2 == 0 {
                data.extend_from_slice(TEXT_DELTA.as_bytes());
            }
            for _ in 0..next() % 8 {
                data.push(alphabet[next() as usize % alphabet.len()]);
            }
            cases.push(data);
        }
        for data in &cases {
            assert_eq!(
                sniff_type(data),
                sniff_type_slow(data),
                "{}",
                String::from_utf8_lossy(data)
            );
        }
    }

    #[test]
    fn event_type_prefers_the_data() {
        let event = |event: Option<&'static [u8]>, data: &'static [u8]| Event {
            raw: Bytes::new(),
            event: event.map(Bytes::from_static),
            data: Bytes::from_static(data),
            id: None,
        };
        let labelled = event(Some(b"message"), br#"{"type":"response.completed"}"#);
        assert_eq!(labelled.event_type(), Some("response.completed"));
        assert_eq!(labelled.kind(), EventKind::Terminal);
        assert_eq!(event(Some(b"error"), b"oops").kind(), EventKind::Error);
        assert_eq!(event(Some(b""), b"oops").event_type(), None);
        assert_eq!(event(None, b"oops").kind(), EventKind::Other);
    }

    #[test]
    fn event_kind_table() {
        use EventKind::*;
        let table = [
            ("response.created", Lifecycle),
            ("response.in_progress", Lifecycle),
            ("response.queued", Lifecycle),
            ("codex.rate_limits", Lifecycle),
            ("rate_limits.updated", Lifecycle),
            ("response.output_item.added", Content),
            ("response.content_part.added", Content),
            ("response.output_text.delta", Content),
            ("response.output_text.done", Content),
            ("response.output_text.annotation.added", Content),
            ("response.content_part.done", Content),
            ("response.output_item.done", Content),
            ("response.refusal.delta", Content),
            ("response.reasoning_summary_part.added", Content),
            ("response.reasoning_summary_text.delta", Content),
            ("response.reasoning_text.done", Content),
            ("response.function_call_arguments.delta", Content),
            ("response.function_call_arguments.done", Content),
            ("response.custom_tool_call_input.delta", Content),
            ("response.web_search_call.searching", Content),
            ("response.image_generation_call.partial_image", Content),
            ("response.mcp_list_tools.completed", Content),
            ("response.completed", Terminal),
            ("response.failed", Terminal),
            ("response.incomplete", Terminal),
            ("error", Error),
            ("message", Other),
            ("response.something_new", Other),
            ("", Other),
        ];
        for (t, kind) in table {
            assert_eq!(event_kind(t), kind, "{t}");
        }
    }

    #[test]
    fn event_stream_content_type() {
        let with = |v: &'static str| {
            let mut h = http::HeaderMap::new();
            h.insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static(v),
            );
            is_event_stream(&h)
        };
        assert!(with("text/event-stream"));
        assert!(with(" TEXT/EVENT-STREAM ;charset=utf-8"));
        assert!(!with("text/event-streams"));
        assert!(!with("application/json"));
        assert!(!is_event_stream(&http::HeaderMap::new()));
    }
}
