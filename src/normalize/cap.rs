use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use serde_json::json;

use super::events::{DeltaFields, Fields, Tracker, sequence_number, visible_delta};
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
pub(crate) struct CapGate {
    cap: u64,
    chars: u64,
    last_seq: Option<u64>,
    tracker: Tracker,
    on_cut: Option<Arc<dyn Fn() + Send + Sync>>,
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
            on_cut,
        }
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
        if let Some(slot) = visible_delta(ty) {
            // The stream is mostly deltas: their three fields are found in one walk.
            let Some(fields) = DeltaFields::parse(event.data) else {
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
            return Verdict::Forward;
        }
        let tracked = matches!(
            ty,
            "response.created"
                | "response.in_progress"
                | "response.queued"
                | "response.output_item.added"
                | "response.output_item.done"
        );
        if !tracked {
            // Only its sequence number matters (the closing event's follows the last one).
            self.last_seq = sequence_number(event.data).or(self.last_seq);
            return Verdict::Forward;
        }
        let Some(fields) = Fields::parse(event.data) else {
            return Verdict::Forward;
        };
        self.last_seq = fields.sequence_number.or(self.last_seq);
        match ty {
            "response.created" | "response.in_progress" | "response.queued" => {
                if let Some(r) = fields.response {
                    self.tracker.response(r);
                }
            }
            "response.output_item.added" | "response.output_item.done" => {
                if let (Some(index), Some(item)) = (fields.output_index, fields.item) {
                    self.tracker
                        .item(index, item, ty == "response.output_item.done");
                }
            }
            _ => {}
        }
        Verdict::Forward
    }

    /// The closing `response.incomplete` event, as SSE bytes.
    fn closing(&mut self) -> Bytes {
        tracing::debug!(
            cap = self.cap,
            "stream cut at max_output_tokens; ended with response.incomplete"
        );
        if let Some(f) = self.on_cut.take() {
            f();
        }
        let mut ev = json!({
            "type": "response.incomplete",
            "response": self.tracker.incomplete_response(estimate_tokens(self.chars)),
        });
        if let Some(seq) = self.last_seq {
            ev["sequence_number"] = json!(seq + 1);
        }
        Bytes::from(format!("event: response.incomplete\ndata: {ev}\n\n"))
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
}
