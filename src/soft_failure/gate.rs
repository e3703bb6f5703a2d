//! Gates: an outer layer's say, event by event, in where a stream ends.
//!
//! A layer above [`SoftFailureDetectLayer`](super::SoftFailureDetectLayer) that may end a
//! stream early (the `max_output_tokens` cap of [`crate::normalize`]) would otherwise decode
//! the whole stream a second time. Instead it puts a [`StreamGate`] in the request's
//! extensions; the hold-back and the watch, which decode every event anyway, show each
//! event to a fresh [`Gate`] per attempt (a retry between the layers starts counting anew)
//! and mark the response [`StreamGated`], so the layer knows its gate was applied. Without
//! the mark the layer applies the gate itself, with a [`Gating`] over its own decoder: the
//! same gate, the same bytes.

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use crate::sse::{EventKind, EventRef, SseDecoder, event_kind};

/// What becomes of one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Forwarded; the gate goes on looking.
    Forward,
    /// Forwarded, and the gate looks at nothing after it (a terminal event).
    ForwardLast,
    /// Not forwarded: the stream ends before it, with the gate's [`closing`](Gate::closing)
    /// bytes.
    Cut,
}

/// One stream's gate: sees its events in order, decides where it ends.
pub(crate) trait Gate: Send {
    /// One event, with its type (as [`EventRef::event_type`]) and kind, sniffed once by the
    /// caller for every use.
    fn admit(&mut self, event_type: Option<&str>, kind: EventKind, event: EventRef<'_>) -> Verdict;

    /// The bytes that end the stream after a [`Verdict::Cut`]; asked once.
    fn closing(&mut self) -> Bytes;

    /// Whether the gate reads the `response.output_text.delta` events that follow the
    /// stream's first content event. One that does not (it forwards them and learns nothing
    /// from them, as the `stream:false` fold) lets the decoder step over them
    /// ([`SseDecoder::skip_events_starting_with`]): the bulk of a stream is then not decoded.
    fn reads_text_deltas(&self) -> bool {
        true
    }

    /// Leaves in the extensions of the response it gates what the layer that made the gate
    /// reads back from it (by default nothing): that layer may see a later attempt's
    /// response, never an earlier one's, so results travel with the response.
    fn mark(&self, _extensions: &mut http::Extensions) {}
}

/// Request extension: makes the [`Gate`] of each attempt's stream.
#[derive(Clone)]
pub(crate) struct StreamGate(Arc<dyn Fn() -> Box<dyn Gate> + Send + Sync>);

impl StreamGate {
    /// A gate made by `make`, once per attempt.
    pub(crate) fn new(make: impl Fn() -> Box<dyn Gate> + Send + Sync + 'static) -> Self {
        StreamGate(Arc::new(make))
    }

    /// A fresh gate for one attempt's stream.
    pub(crate) fn start(&self) -> Box<dyn Gate> {
        (self.0)()
    }
}

impl fmt::Debug for StreamGate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StreamGate")
    }
}

/// Response extension: the request's [`StreamGate`] was applied to this stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StreamGated;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// The gate looks at every event; only whole events it admitted go out.
    Counting,
    /// The gate is done looking (a terminal event, or a stream that cannot be parsed):
    /// every byte goes out as it came.
    Open,
    /// The gate cut the stream: its closing bytes go out once, then nothing.
    Cut,
}

/// A stream's bytes held until its gate has admitted the events they hold.
///
/// The decoder's caller pushes every chunk here as it pushes it into the decoder, and shows
/// each decoded event to [`event`](Self::event) in order: since the events' raw bytes are
/// the input, the bytes of the events admitted are a prefix of what was pushed, released
/// as slices of the chunks they came in (no copy unless an event spans chunks).
pub(crate) struct Gating {
    gate: Box<dyn Gate>,
    state: State,
    unsent: VecDeque<Bytes>,
    unsent_len: usize,
    /// Bytes at the front of `unsent` that belong to admitted events.
    ready: usize,
    closing: Option<Bytes>,
}

impl Gating {
    /// Gates a stream with `gate`.
    pub(crate) fn new(gate: Box<dyn Gate>) -> Self {
        Gating {
            gate,
            state: State::Counting,
            unsent: VecDeque::new(),
            unsent_len: 0,
            ready: 0,
            closing: None,
        }
    }

    /// The gate's [`mark`](Gate::mark), on the gated response's extensions.
    pub(crate) fn mark(&self, extensions: &mut http::Extensions) {
        self.gate.mark(extensions);
    }

    /// Input, as pushed into the decoder.
    pub(crate) fn push(&mut self, chunk: &Bytes) {
        if self.state != State::Cut && !chunk.is_empty() {
            self.unsent_len += chunk.len();
            self.unsent.push_back(chunk.clone());
        }
    }

    /// The next event decoded from the input.
    pub(crate) fn event(&mut self, event: EventRef<'_>) {
        let ty = event.event_type();
        self.sniffed_event(ty, ty.map_or(EventKind::Other, event_kind), event);
    }

    /// As [`event`](Self::event), with its type and kind sniffed by the caller.
    pub(crate) fn sniffed_event(
        &mut self,
        event_type: Option<&str>,
        kind: EventKind,
        event: EventRef<'_>,
    ) {
        if self.state != State::Counting {
            return;
        }
        match self.gate.admit(event_type, kind, event) {
            Verdict::Forward => self.ready += event.raw.len(),
            Verdict::ForwardLast => self.state = State::Open,
            Verdict::Cut => {
                self.state = State::Cut;
                self.closing = Some(self.gate.closing());
            }
        }
    }

    /// Shows the gate, while it counts, the events complete in `decoder`; with `at_end` (the
    /// input is over), the last one without its blank line too. A stream the decoder cannot
    /// read opens the gate.
    pub(crate) fn drain(&mut self, decoder: &mut SseDecoder, at_end: bool) {
        while self.is_counting() {
            let next = if at_end {
                decoder
                    .finish()
                    .map(|ev| ev.map(|ev| self.event(ev.borrowed())))
            } else {
                decoder.next_event_with(|ev| self.event(ev))
            };
            match next {
                Ok(Some(())) => {}
                Ok(None) => break,
                Err(e) => {
                    // Unparseable: stop gating rather than break the stream.
                    tracing::debug!(error = %e, "stream gate stopped: the stream cannot be decoded");
                    self.open();
                }
            }
        }
    }

    /// The input ends here (the end of the body, or of what the client is given): the gate
    /// sees the events left in `decoder`, then every byte not cut goes out.
    pub(crate) fn end(&mut self, decoder: &mut SseDecoder) {
        self.drain(decoder, true);
        self.open();
    }

    /// The stream is no longer decoded (a bound was exceeded): the gate stops looking and
    /// the bytes flow as they are, as they do after a terminal event.
    pub(crate) fn open(&mut self) {
        if self.state == State::Counting {
            self.state = State::Open;
        }
    }

    /// Whether the text deltas after the first content event may be stepped over: the gate
    /// does not read them, or no longer looks at events.
    pub(crate) fn steps_over_text_deltas(&self) -> bool {
        self.state != State::Counting || !self.gate.reads_text_deltas()
    }

    /// `n` bytes of whole events were stepped over in the decoder, after the events shown:
    /// while the gate counts they are admitted as it would have admitted them (a gate that
    /// does not read text deltas forwards them).
    pub(crate) fn stepped_over(&mut self, n: usize) {
        if self.state == State::Counting {
            self.ready += n;
        }
    }

    /// Whether the gate still looks at events.
    pub(crate) fn is_counting(&self) -> bool {
        self.state == State::Counting
    }

    /// Whether the gate cut the stream: nothing follows what [`release`](Self::release)
    /// gives.
    pub(crate) fn is_cut(&self) -> bool {
        self.state == State::Cut
    }

    /// What may go to the client now: the bytes of the events admitted; once open, every
    /// byte pushed; after a cut, the admitted bytes and the closing ones, once.
    pub(crate) fn release(&mut self) -> Bytes {
        let n = match self.state {
            State::Counting => self.ready,
            State::Open => self.unsent_len,
            State::Cut => self.ready,
        };
        let mut out = self.take(n);
        if let Some(closing) = self.closing.take() {
            self.unsent.clear();
            self.unsent_len = 0;
            out = if out.is_empty() {
                closing
            } else {
                let mut both = BytesMut::with_capacity(out.len() + closing.len());
                both.extend_from_slice(&out);
                both.extend_from_slice(&closing);
                both.freeze()
            };
        }
        out
    }

    /// The first `n` unsent bytes.
    fn take(&mut self, n: usize) -> Bytes {
        // Events are made of pushed bytes, so `n` is never more than is unsent.
        let n = n.min(self.unsent_len);
        self.ready -= n.min(self.ready);
        self.unsent_len -= n;
        let Some(front) = self.unsent.front_mut().filter(|_| n > 0) else {
            return Bytes::new();
        };
        if front.len() > n {
            return front.split_to(n);
        }
        if front.len() == n {
            return self.unsent.pop_front().unwrap_or_default();
        }
        // An event spanning chunks: the only copy.
        let mut out = BytesMut::with_capacity(n);
        while out.len() < n {
            let Some(front) = self.unsent.front_mut() else {
                break;
            };
            let want = n - out.len();
            if front.len() > want {
                out.extend_from_slice(&front.split_to(want));
            } else {
                out.extend_from_slice(front);
                self.unsent.pop_front();
            }
        }
        out.freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sse::TEXT_DELTA_HEADS;

    /// Admits every event, cuts at the first `response.failed`, and reads text deltas or
    /// not; records the types it was shown.
    struct Recording {
        reads_deltas: bool,
        seen: Arc<std::sync::Mutex<Vec<String>>>,
    }

    impl Gate for Recording {
        fn admit(&mut self, ty: Option<&str>, _: EventKind, _: EventRef<'_>) -> Verdict {
            let ty = ty.unwrap_or_default();
            self.seen.lock().unwrap().push(ty.to_owned());
            match ty {
                "response.failed" => Verdict::Cut,
                _ => Verdict::Forward,
            }
        }
        fn closing(&mut self) -> Bytes {
            Bytes::from_static(b"closing\n\n")
        }
        fn reads_text_deltas(&self) -> bool {
            self.reads_deltas
        }
    }

    fn delta(n: usize) -> String {
        format!("data: {{\"type\":\"response.output_text.delta\",\"delta\":\"w{n}\"}}\n\n")
    }

    /// The watch's loop over one chunk: steps over text deltas when the gate allows, then
    /// shows the next event, until the decoder is empty or the gate cuts.
    fn run(reads_deltas: bool, chunks: &[&str]) -> (Vec<u8>, Vec<String>) {
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut gating = Gating::new(Box::new(Recording {
            reads_deltas,
            seen: seen.clone(),
        }));
        let mut decoder = SseDecoder::new();
        let mut out = Vec::new();
        for chunk in chunks {
            let chunk = Bytes::copy_from_slice(chunk.as_bytes());
            gating.push(&chunk);
            decoder.push(chunk);
            while gating.is_counting() {
                if gating.steps_over_text_deltas() {
                    let before = decoder.buffered();
                    for head in TEXT_DELTA_HEADS {
                        decoder.skip_events_starting_with(head);
                    }
                    gating.stepped_over(before - decoder.buffered());
                }
                let next = decoder.next_event_with(|ev| gating.event(ev)).unwrap();
                if next.is_none() {
                    break;
                }
            }
            out.extend_from_slice(&gating.release());
        }
        let seen = seen.lock().unwrap().clone();
        (out, seen)
    }

    #[test]
    fn deltas_stepped_over_go_out_as_admitted_and_a_cut_after_them_keeps_them() {
        let head = "data: {\"type\":\"response.created\"}\n\n";
        let deltas: String = (0..5).map(delta).collect();
        let failed = "data: {\"type\":\"response.failed\"}\n\n";
        let tail = "data: {\"type\":\"response.completed\"}\n\n";
        let whole = format!("{head}{deltas}");
        for reads_deltas in [true, false] {
            // Held until shown, released as admitted: the deltas go out with the chunk
            // they came in, whether the gate read them or not.
            let (out, seen) = run(reads_deltas, &[&whole, failed, tail]);
            assert_eq!(
                String::from_utf8(out).unwrap(),
                format!("{whole}closing\n\n"),
                "reads deltas: {reads_deltas}"
            );
            let shown_deltas = seen.iter().filter(|t| t.ends_with(".delta")).count();
            assert_eq!(shown_deltas, if reads_deltas { 5 } else { 0 });
            assert_eq!(seen.last().map(String::as_str), Some("response.failed"));
        }
        // Stepped over in the chunk that also holds the cut: what came before it goes out,
        // nothing after.
        let (out, _) = run(false, &[&format!("{whole}{failed}{tail}")]);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            format!("{whole}closing\n\n")
        );
    }
}
