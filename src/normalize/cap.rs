use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use super::events::{DeltaFields, Fields, TextSlot, Tracker, sequence_number, visible_delta};
use crate::body::ResponseBody;
use crate::error::BoxError;
use crate::soft_failure::gate::{Gate, Gating, Verdict};
use crate::sse::{EventKind, EventRef, SseDecoder};

/// Characters per token in the output estimate. English prose averages about four
/// characters per token in OpenAI's tokenizers; code and other languages run denser, so the
/// estimate errs towards letting a little more through rather than cutting early.
pub(crate) const CHARS_PER_TOKEN: u64 = 4;

/// The estimated tokens of `chars` characters of visible output: `ceil(chars / 4)`.
pub(crate) fn estimate_tokens(chars: u64) -> u64 {
    chars.div_ceil(CHARS_PER_TOKEN)
}

/// A stream that ends with `response.incomplete` once its visible output passes a cap,
/// decoded here: for a stack without soft-failure detection below, which otherwise applies
/// the same [`CapGate`] to the events it decodes anyway.
///
/// Only whole events are forwarded, each as the exact bytes the upstream sent; the event that
/// would pass the cap is not forwarded.
pub(crate) struct CapBody {
    inner: ResponseBody,
    decoder: SseDecoder,
    gating: Gating,
    done: bool,
}

impl CapBody {
    pub(crate) fn new(inner: ResponseBody, gate: Box<dyn Gate>) -> Self {
        CapBody {
            inner,
            decoder: SseDecoder::new(),
            gating: Gating::new(gate),
            done: false,
        }
    }
}

/// Decides where a stream passes its cap: the one place that counts, whoever decodes.
///
/// Counting is deferred while the cap cannot have been reached. A delta's text has at most
/// as many characters as its event has bytes from its `"delta"` key on (every character of a
/// JSON string is one or more bytes of it), so while the estimate over such bounds is within
/// the cap, the events are only copied aside ([`Deferred`]) and nothing is parsed. The bound
/// is first the quick one ([`delta_bound_quick`]); near the cap, the tight one
/// ([`delta_bound`]), which for the upstream's deltas is the text's length exactly. So a
/// stream that stays under its cap is never parsed at all. Once the bound could pass the cap,
/// or the copy would pass the tracking budget, the events set aside are counted in order,
/// exactly as if they had been counted on arrival, and every event after them is counted as
/// it comes: the verdicts and the closing event are the same either way.
pub(crate) struct CapGate {
    cap: u64,
    chars: u64,
    last_seq: Option<u64>,
    tracker: Tracker,
    budget: usize,
    deferred: Option<Deferred>,
    on_cut: Option<Arc<dyn Fn() + Send + Sync>>,
}

/// At least as many characters as the delta text [`DeltaFields::parse`] reads from `data`,
/// found with one search: the bytes from the first `"delta"` on. The key it reads is written
/// `"delta"` (an escaped key is not that key), and those bytes cannot occur inside a JSON
/// string (its quotes are escaped), so the key is at or after the first occurrence, and its
/// value has no more characters than it has bytes. What follows the text in the upstream's
/// deltas (`logprobs`, `obfuscation`) keeps this a few tens of bytes above the text's length.
fn delta_bound_quick(data: &[u8]) -> u64 {
    DELTA_KEY
        .find(data)
        .map_or(0, |at| (data.len() - at) as u64)
}

/// As [`delta_bound_quick`], tighter: when the first `"delta"` is a key with a string value
/// (`"delta":"`, the upstream's shape), the top-level delta is either that string, which has
/// no more characters than it has bytes, or one after it, so the bound is the string's
/// length plus the bytes from the next occurrence on, if there is one. For the upstream's
/// deltas that is the text's length in bytes.
fn delta_bound(data: &[u8]) -> u64 {
    let Some(at) = DELTA_KEY.find(data) else {
        return 0;
    };
    let from_key = (data.len() - at) as u64;
    let Some(text) = data[at + b"\"delta\"".len()..].strip_prefix(b":\"") else {
        return from_key;
    };
    let Some(len) = string_len(text) else {
        return from_key;
    };
    let rest = &text[len..];
    len as u64 + DELTA_KEY.find(rest).map_or(0, |r| (rest.len() - r) as u64)
}

static DELTA_KEY: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"\"delta\""));

/// The bytes of the JSON string at the start of `text` (after its opening quote), up to its
/// closing quote; `None` if it does not close.
fn string_len(text: &[u8]) -> Option<usize> {
    let mut i = 0;
    loop {
        i += memchr::memchr2(b'"', b'\\', text.get(i..)?)?;
        if text[i] == b'"' {
            return Some(i);
        }
        // A backslash and the byte it escapes (the rest of a `\u` escape is read as text).
        i += 2;
    }
}

/// The events not counted yet, copied in arrival order.
#[derive(Default)]
struct Deferred {
    /// Their data, in segments of at least [`SEGMENT`] bytes that are never reallocated: one
    /// growing `Vec` would copy what it holds at every doubling, as many bytes again as the
    /// stream on a stream the cap never reaches.
    segments: Vec<Vec<u8>>,
    /// Each event's segment, where its data ends there, and what it is (its data starts
    /// where the previous one in the same segment ends).
    events: Vec<(usize, usize, Class)>,
    /// The bytes copied, over all segments.
    len: usize,
    /// The sum of the delta events' bounds: a bound on their characters.
    delta_bytes: u64,
    /// Whether `delta_bytes` sums [`delta_bound`]s rather than [`delta_bound_quick`]s.
    tight: bool,
}

/// The smallest segment of [`Deferred`]: a quarter of the usual answer's stream.
const SEGMENT: usize = 4096;

impl Deferred {
    /// Copies `data` (of `class`) aside, after the events already there.
    fn push(&mut self, class: Class, data: &[u8]) {
        let room = self
            .segments
            .last()
            .is_some_and(|s| s.capacity() - s.len() >= data.len());
        if !room {
            self.segments
                .push(Vec::with_capacity(SEGMENT.max(data.len())));
        }
        let at = self.segments.len() - 1;
        let segment = &mut self.segments[at];
        segment.extend_from_slice(data);
        self.events.push((at, segment.len(), class));
        self.len += data.len();
    }

    /// The events set aside, in order: their data and class.
    fn each(&self) -> impl Iterator<Item = (&[u8], Class)> {
        let mut last = (usize::MAX, 0);
        self.events.iter().map(move |&(segment, end, class)| {
            let start = if last.0 == segment { last.1 } else { 0 };
            last = (segment, end);
            (&self.segments[segment][start..end], class)
        })
    }

    /// Whether the bound over the events set aside and `data` (of `class`) stays within
    /// `cap`, taking that bound if so. The quick bounds come first; once they would pass the
    /// cap, the tight ones are summed over what is set aside, and used from then on, so a cap
    /// far above the answer costs one search per delta and a cap near it is still not
    /// counted before it is reached.
    fn admits(&mut self, class: Class, data: &[u8], cap: u64) -> bool {
        if !matches!(class, Class::Delta(_)) {
            return true;
        }
        if !self.tight {
            let quick = self.delta_bytes + delta_bound_quick(data);
            if estimate_tokens(quick) <= cap {
                self.delta_bytes = quick;
                return true;
            }
            self.tight = true;
            self.delta_bytes = self
                .each()
                .filter(|(_, class)| matches!(class, Class::Delta(_)))
                .map(|(data, _)| delta_bound(data))
                .sum();
        }
        let tight = self.delta_bytes + delta_bound(data);
        if estimate_tokens(tight) <= cap {
            self.delta_bytes = tight;
            return true;
        }
        false
    }
}

/// What the gate reads from an event, by its type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    /// Visible text, landing in `TextSlot`.
    Delta(TextSlot),
    /// Carries the `response` object (`created`, `in_progress`, `queued`).
    Response,
    /// Carries an output item, finished or not.
    Item { done: bool },
    /// Only its sequence number matters (the closing event's follows the last one).
    Other,
}

impl Class {
    fn of(event_type: &str) -> Class {
        if let Some(slot) = visible_delta(event_type) {
            return Class::Delta(slot);
        }
        match event_type {
            "response.created" | "response.in_progress" | "response.queued" => Class::Response,
            "response.output_item.added" => Class::Item { done: false },
            "response.output_item.done" => Class::Item { done: true },
            _ => Class::Other,
        }
    }
}

impl CapGate {
    /// Counts up to `cap` tokens, tracking at most `budget` bytes of the response for the
    /// closing event; `on_cut` is called if the stream is cut.
    pub(crate) fn new(
        cap: u64,
        budget: usize,
        on_cut: Option<Arc<dyn Fn() + Send + Sync>>,
    ) -> Self {
        CapGate {
            cap,
            chars: 0,
            last_seq: None,
            tracker: Tracker::new(budget),
            budget,
            deferred: Some(Deferred::default()),
            on_cut,
        }
    }

    /// A gate that counts every event on arrival: what deferral must be equal to.
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn counting_on_arrival(cap: u64, budget: usize) -> Self {
        CapGate {
            deferred: None,
            ..CapGate::new(cap, budget, None)
        }
    }

    /// Sets `data` aside if the cap cannot be reached by it and the copy stays within the
    /// budget; otherwise counts what was set aside and gives `data` back to be counted.
    fn defer<'d>(&mut self, class: Class, data: &'d [u8]) -> Option<&'d [u8]> {
        let Some(deferred) = self.deferred.as_mut() else {
            return Some(data);
        };
        let fits = deferred.len.saturating_add(data.len()) <= self.budget;
        if fits && deferred.admits(class, data, self.cap) {
            deferred.push(class, data);
            return None;
        }
        self.count_deferred();
        Some(data)
    }

    /// Counts the events set aside, in order; from here on every event is counted on arrival.
    fn count_deferred(&mut self) {
        let Some(deferred) = self.deferred.take() else {
            return;
        };
        for (data, class) in deferred.each() {
            let verdict = self.count(class, data);
            // Their characters are within the bound that let them be set aside.
            debug_assert_eq!(verdict, Verdict::Forward);
        }
    }

    /// Counts one event (not a terminal one) of `class` with `data`.
    fn count(&mut self, class: Class, data: &[u8]) -> Verdict {
        match class {
            Class::Delta(slot) => {
                let Some(fields) = DeltaFields::parse(data) else {
                    return Verdict::Forward;
                };
                let delta = &*fields.delta;
                let chars = self.chars + delta.chars().count() as u64;
                if estimate_tokens(chars) > self.cap {
                    return Verdict::Cut;
                }
                self.last_seq = fields.sequence_number.or(self.last_seq);
                self.chars = chars;
                if let Some(index) = fields.output_index {
                    self.tracker.text(index, slot, delta);
                }
            }
            Class::Other => self.last_seq = sequence_number(data).or(self.last_seq),
            Class::Response | Class::Item { .. } => {
                let Some(fields) = Fields::parse(data) else {
                    return Verdict::Forward;
                };
                self.last_seq = fields.sequence_number.or(self.last_seq);
                match (class, fields.response, fields.output_index, fields.item) {
                    (Class::Response, Some(r), _, _) => self.tracker.response(r),
                    (Class::Item { done }, _, Some(index), Some(item)) => {
                        self.tracker.item(index, item, done)
                    }
                    _ => {}
                }
            }
        }
        Verdict::Forward
    }
}

impl Gate for CapGate {
    fn admit(&mut self, event_type: Option<&str>, kind: EventKind, event: EventRef<'_>) -> Verdict {
        let Some(ty) = event_type else {
            return Verdict::Forward;
        };
        if kind == EventKind::Terminal {
            // Nothing after a terminal event is counted, and its response (the whole answer
            // again) is not needed: it is not parsed.
            return Verdict::ForwardLast;
        }
        let class = Class::of(ty);
        match self.defer(class, event.data) {
            None => Verdict::Forward,
            Some(data) => self.count(class, data),
        }
    }

    /// The closing `response.incomplete` event, as SSE bytes.
    fn closing(&mut self) -> Bytes {
        // A cut is decided by counting, so nothing is set aside here; this keeps it so.
        self.count_deferred();
        tracing::debug!(
            cap = self.cap,
            "stream cut at max_output_tokens; ended with response.incomplete"
        );
        if let Some(f) = self.on_cut.take() {
            f();
        }
        let response = self
            .tracker
            .incomplete_response(estimate_tokens(self.chars));
        let mut out = Vec::with_capacity(response.len() + 128);
        out.extend_from_slice(
            b"event: response.incomplete\ndata: {\"type\":\"response.incomplete\",\"response\":",
        );
        out.extend_from_slice(&response);
        if let Some(seq) = self.last_seq {
            // It follows the last event's number (a number the upstream could not go past).
            let seq = seq.saturating_add(1);
            out.extend_from_slice(format!(",\"sequence_number\":{seq}").as_bytes());
        }
        out.extend_from_slice(b"}\n\n");
        Bytes::from(out)
    }
}

impl Body for CapBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            let at_end = match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                None => true,
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                Some(Ok(frame)) => {
                    let data = match frame.into_data() {
                        Ok(d) => d,
                        Err(trailers) => return Poll::Ready(Some(Ok(trailers))),
                    };
                    this.gating.push(&data);
                    if this.gating.is_counting() {
                        this.decoder.push(data);
                    }
                    false
                }
            };
            if at_end {
                this.gating.end(&mut this.decoder);
            } else {
                this.gating.drain(&mut this.decoder, false);
            }
            this.done = at_end || this.gating.is_cut();
            let out = this.gating.release();
            if !out.is_empty() {
                return Poll::Ready(Some(Ok(Frame::data(out))));
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body::full_body;
    use http_body_util::BodyExt;

    #[test]
    fn estimate_rounds_up() {
        assert_eq!(estimate_tokens(0), 0);
        assert_eq!(estimate_tokens(1), 1);
        assert_eq!(estimate_tokens(8), 2);
        assert_eq!(estimate_tokens(9), 3);
    }

    fn stream(deltas: &[&str]) -> Bytes {
        let mut s = String::new();
        s.push_str("event: response.created\ndata: {\"type\":\"response.created\",\"sequence_number\":0,\"response\":{\"id\":\"resp_1\",\"status\":\"in_progress\",\"usage\":null}}\n\n");
        s.push_str("data: {\"type\":\"response.output_item.added\",\"sequence_number\":1,\"output_index\":0,\"item\":{\"id\":\"m1\",\"type\":\"message\",\"role\":\"assistant\",\"status\":\"in_progress\",\"content\":[]}}\n\n");
        for (i, d) in deltas.iter().enumerate() {
            s.push_str(&format!(
                "data: {{\"type\":\"response.output_text.delta\",\"sequence_number\":{},\"output_index\":0,\"delta\":\"{d}\"}}\n\n",
                i + 2
            ));
        }
        s.push_str("data: {\"type\":\"response.completed\",\"response\":{\"id\":\"resp_1\",\"status\":\"completed\"}}\n\n");
        Bytes::from(s)
    }

    async fn run(input: Bytes, cap: u64) -> Bytes {
        CapBody::new(full_body(input), Box::new(CapGate::new(cap, 1 << 20, None)))
            .collect()
            .await
            .unwrap()
            .to_bytes()
    }

    #[tokio::test]
    async fn under_the_cap_bytes_are_unchanged() {
        let input = stream(&["abcd", "efgh"]);
        assert_eq!(run(input.clone(), 2).await, input);
    }

    #[tokio::test]
    async fn over_the_cap_ends_with_incomplete() {
        let out = run(stream(&["abcd", "efgh", "ijkl"]), 2).await;
        let text = std::str::from_utf8(&out).unwrap();
        assert!(!text.contains("ijkl"));
        assert!(!text.contains("response.completed"));
        let last = text.trim_end().rsplit("data: ").next().unwrap();
        let ev: serde_json::Value = serde_json::from_str(last).unwrap();
        assert_eq!(ev["type"], "response.incomplete");
        assert_eq!(ev["sequence_number"], 4);
        assert_eq!(ev["response"]["id"], "resp_1");
        assert_eq!(ev["response"]["status"], "incomplete");
        assert_eq!(
            ev["response"]["incomplete_details"]["reason"],
            "max_output_tokens"
        );
        assert_eq!(
            ev["response"]["output"][0]["content"][0]["text"],
            "abcdefgh"
        );
        // Eight characters let through: two tokens by the estimate.
        assert_eq!(ev["response"]["usage"]["output_tokens"], 2);
        assert_eq!(ev["response"]["usage"]["total_tokens"], 2);
    }

    /// The bound deferral rests on: never fewer characters than counting reads, whatever
    /// the event looks like; exactly the text's bytes for the upstream's deltas, so a cap
    /// near the answer's length is not counted until it is reached.
    #[test]
    fn the_delta_bound_is_at_least_the_text_counting_reads() {
        let counted = |data: &str| {
            DeltaFields::parse(data.as_bytes()).map_or(0, |f| f.delta.chars().count() as u64)
        };
        let upstream = [
            r#"{"type":"response.output_text.delta","sequence_number":7,"item_id":"msg_1","output_index":0,"content_index":0,"delta":" The","logprobs":[],"obfuscation":"k3J9x"}"#,
            r#"{"type":"response.output_text.delta","sequence_number":8,"output_index":0,"delta":"déjà vu 🚀"}"#,
            r#"{"type":"response.output_text.delta","sequence_number":9,"output_index":0,"delta":""}"#,
        ];
        for data in upstream {
            let text = data.split(r#""delta":""#).nth(1).unwrap();
            let text = &text[..text.find('"').unwrap()];
            assert_eq!(delta_bound(data.as_bytes()), text.len() as u64, "{data}");
            assert!(delta_bound(data.as_bytes()) >= counted(data), "{data}");
            assert!(delta_bound_quick(data.as_bytes()) >= delta_bound(data.as_bytes()));
        }
        let others = [
            r#"{"item":{"delta":"n"},"output_index":0,"delta":"after a nested key, much longer"}"#,
            r#"{"item":{"delta":""},"delta":"after an empty nested one"}"#,
            r#"{"note":"delta","delta":"after the word as a value"}"#,
            r#"{"delta":"a","delta":"the same key again, longer"}"#,
            r#"{"delta" : "a spaced key"}"#,
            r#"{"delta":"say \"delta\": \"a quoted key\", and then more"}"#,
            r#"{"delta":"\\","delta":"after an escaped backslash"}"#,
            r#"{"delta":"\u00e9\ud83d\ude80\n\t"}"#,
            r#"{"del\u0074a":"an escaped key is not the key"}"#,
            r#"{"delta":"unclosed"#,
            r#"{"delta":5}"#,
            r#"{"item":{"delta":"nested only"}}"#,
        ];
        for data in others {
            assert!(
                delta_bound_quick(data.as_bytes()) >= counted(data),
                "{data}"
            );
            assert!(
                delta_bound(data.as_bytes()) >= counted(data),
                "{data}: bound {} < {}",
                delta_bound(data.as_bytes()),
                counted(data)
            );
        }
    }

    /// Events of random streams shown to a deferring gate and to one counting on arrival:
    /// the same verdicts, the same closing bytes, for caps below, near and above the output
    /// and budgets that run out early.
    #[test]
    fn deferred_counting_decides_what_counting_on_arrival_decides() {
        // Long enough that what is set aside fills more than one segment.
        let long = "a thousand bytes, ".repeat(56);
        let pieces = [
            &long,
            "abcd",
            "é",
            "\\n",
            "\\u00e9",
            "\\ud83d\\ude80",
            "🚀",
            " The",
            "x",
            "",
            "long piece of text that is longer than most",
            "say \\\"delta\\\": \\\"a quoted key\\\"",
            "\\\\",
        ];
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 11) as usize % n
        };
        let mut streams = Vec::new();
        for _ in 0..200 {
            let deltas: Vec<String> = (0..next(40))
                .map(|_| {
                    (0..1 + next(4))
                        .map(|_| pieces[next(pieces.len())])
                        .collect()
                })
                .collect();
            let refs: Vec<&str> = deltas.iter().map(String::as_str).collect();
            let mut text = String::from_utf8(stream(&refs).to_vec()).unwrap();
            if next(3) == 0 {
                // An event between the deltas that only carries a sequence number, a delta
                // of another kind and one the cap cannot read.
                let at = text
                    .find("data: {\"type\":\"response.output_text.delta")
                    .unwrap_or(0);
                text.insert_str(at, "data: {\"type\":\"response.content_part.added\",\"sequence_number\":90}\n\ndata: {\"type\":\"response.refusal.delta\",\"sequence_number\":91,\"output_index\":0,\"delta\":\"no\"}\n\ndata: {\"type\":\"response.output_text.delta\",\"delta\":5}\n\n");
            }
            if next(3) == 0 {
                // Deltas whose key the bound must not miss: spaced, after a nested `delta`,
                // escaped (not the key), and a nested one only.
                let at = text
                    .find("data: {\"type\":\"response.output_text.delta")
                    .unwrap_or(0);
                text.insert_str(at, concat!(
                    "data: {\"type\":\"response.output_text.delta\",\"output_index\":0,\"delta\" : \"spaced key, a longer text\",\"item\":{\"delta\":\"x\"}}\n\n",
                    "data: {\"type\":\"response.output_text.delta\",\"item\":{\"delta\":\"n\"},\"output_index\":0,\"delta\":\"after a nested key, longer\"}\n\n",
                    "data: {\"type\":\"response.output_text.delta\",\"output_index\":0,\"del\\u0074a\":\"an escaped key is not the key\"}\n\n",
                    "data: {\"type\":\"response.output_text.delta\",\"output_index\":0,\"item\":{\"delta\":\"nested only\"}}\n\n",
                    "data: {\"type\":\"response.output_text.delta\",\"note\":\"delta\",\"output_index\":0,\"delta\":\"after the word as a value\"}\n\n",
                    "data: {\"type\":\"response.output_text.delta\",\"output_index\":0,\"delta\":\"a\",\"delta\":\"the same key again, longer\"}\n\n",
                    "data: {\"type\":\"response.output_text.delta\",\"output_index\":0,\"item\":{\"delta\":\"\"},\"delta\":\"after an empty nested one\"}\n\n",
                    "data: {\"type\":\"response.output_text.delta\",\"output_index\":0,\"delta\":\"unclosed\n\n",
                ));
            }
            streams.push(text);
        }
        let view = |mut gate: CapGate, text: &str| {
            let mut decoder = SseDecoder::new();
            decoder.push(Bytes::copy_from_slice(text.as_bytes()));
            let mut verdicts = Vec::new();
            while let Ok(Some(ev)) = decoder.next_event() {
                let ev = ev.borrowed();
                let ty = ev.event_type();
                let kind = ty.map_or(EventKind::Other, crate::sse::event_kind);
                let verdict = gate.admit(ty, kind, ev);
                verdicts.push(verdict);
                if verdict != Verdict::Forward {
                    break;
                }
            }
            let closing = (verdicts.last() == Some(&Verdict::Cut)).then(|| gate.closing());
            (verdicts, closing)
        };
        let mut cuts = 0;
        for text in &streams {
            for cap in [0, 1, 2, 5, 17, 60, 1000, 20_000] {
                for budget in [0, 150, 600, 5000, 1 << 20] {
                    let deferred = view(CapGate::new(cap, budget, None), text);
                    let on_arrival = view(CapGate::counting_on_arrival(cap, budget), text);
                    cuts += usize::from(deferred.1.is_some());
                    assert_eq!(deferred, on_arrival, "cap {cap}, budget {budget}: {text}");
                }
            }
        }
        assert!(
            cuts > 1000,
            "the streams are cut often enough to compare: {cuts}"
        );
    }
}
