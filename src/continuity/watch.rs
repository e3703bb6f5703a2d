use std::borrow::Cow;
use std::pin::Pin;

use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use serde::Deserialize;

use crate::body::ResponseBody;
use crate::error::BoxError;
use crate::json::find_in_object;
use crate::sse::SseDecoder;
use crate::sse::scan::skip_value;

#[derive(Deserialize)]
pub(super) struct Usage {
    pub(super) input_tokens: Option<u64>,
}

/// What the watcher found, reported as it is found.
pub(super) trait Learn: Send + 'static {
    fn response_id(&mut self, id: &str);
    fn usage(&mut self, input_tokens: u64);
}

/// Passes a stream through unchanged, reading response ids and usage from its events.
pub(super) struct OwnerWatch<L> {
    inner: ResponseBody,
    decoder: Option<SseDecoder>,
    learn: L,
    id_seen: bool,
}

impl<L: Learn> OwnerWatch<L> {
    pub(super) fn new(inner: ResponseBody, learn: L) -> Self {
        OwnerWatch {
            inner,
            decoder: Some(SseDecoder::new()),
            learn,
            id_seen: false,
        }
    }

    /// Whether an event of this type carries what continuity learns.
    pub(super) fn wanted(event_type: &str) -> bool {
        matches!(
            event_type,
            "response.created" | "response.completed" | "response.incomplete" | "response.failed"
        )
    }

    fn scan(&mut self, data: &Bytes) {
        let Some(decoder) = &mut self.decoder else {
            return;
        };
        decoder.push(data.clone());
        loop {
            match decoder.next_event() {
                Ok(Some(ev)) => {
                    let Some(ty) = ev.event_type().filter(|t| Self::wanted(t)) else {
                        continue;
                    };
                    if self.id_seen && ty == "response.created" {
                        continue;
                    }
                    self.id_seen |= learn_from_event(&ev.data, ty, !self.id_seen, &mut self.learn);
                }
                Ok(None) => return,
                Err(_) => {
                    // A line beyond the bound: stop learning, keep forwarding.
                    self.decoder = None;
                    return;
                }
            }
        }
    }
}

impl<L: Learn + Unpin> Body for OwnerWatch<L> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let res = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &res {
            if let Some(data) = frame.data_ref() {
                let data = data.clone();
                this.scan(&data);
            }
        }
        res
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The input and output tokens of one terminal event's response (`response.completed`,
/// `.incomplete`, `.failed`), scanned without parsing its output.
pub fn response_tokens(data: &[u8]) -> Option<(u64, u64)> {
    crate::soft_failure::terminal_usage(data)?.tokens()
}

/// Reads id and usage from a complete JSON response object.
pub(super) fn learn_from_json(bytes: &[u8], learn: &mut impl Learn) {
    learn_from_response(bytes, true, true, learn);
}

/// Learns from one event's data: the response id (when `take_id`) and usage. Returns whether
/// an id was found.
pub(super) fn learn_from_event(
    data: &[u8],
    event_type: &str,
    take_id: bool,
    learn: &mut impl Learn,
) -> bool {
    // `response.created` has `"usage": null`, at the end of a response object that echoes
    // the instructions and tools: the walk stops at its id instead.
    let want_usage = event_type != "response.created";
    let response = find_in_object(data, |key, _, at| (key == b"response").then_some(at));
    match response {
        Some(at) => learn_from_response(&data[at..], take_id, want_usage, learn),
        None => false,
    }
}

/// The response object is scanned, not parsed: `response.completed` carries the whole output
/// and only two small fields are wanted. One walk finds both (`usage` comes after `output`);
/// only they are deserialised. `resp` may run on past the object's end.
fn learn_from_response(
    resp: &[u8],
    take_id: bool,
    want_usage: bool,
    learn: &mut impl Learn,
) -> bool {
    let (mut id_at, mut usage_at) = (None, None);
    find_in_object(resp, |key, _, at| {
        match key {
            b"id" => id_at = Some(at),
            b"usage" => usage_at = Some(at),
            _ => {}
        }
        let done = |wanted: bool, found: &Option<usize>| !wanted || found.is_some();
        (done(take_id, &id_at) && done(want_usage, &usage_at)).then_some(())
    });
    let value = |at: usize| skip_value(resp, at).map(|end| &resp[at..end]);
    let mut found = false;
    if take_id {
        let id = id_at
            .and_then(value)
            .and_then(|raw| serde_json::from_slice::<Cow<'_, str>>(raw).ok());
        if let Some(id) = id {
            learn.response_id(&id);
            found = true;
        }
    }
    let usage = usage_at
        .and_then(value)
        .and_then(|raw| serde_json::from_slice::<Usage>(raw).ok());
    if let Some(n) = usage.and_then(|u| u.input_tokens) {
        learn.usage(n);
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Seen {
        ids: Vec<String>,
        usage: Vec<u64>,
    }

    impl Learn for Seen {
        fn response_id(&mut self, id: &str) {
            self.ids.push(id.to_owned());
        }
        fn usage(&mut self, input_tokens: u64) {
            self.usage.push(input_tokens);
        }
    }

    #[test]
    fn terminal_tokens_are_the_responses_own() {
        let completed = br#"{"type":"response.completed","response":{"id":"r","output":[{"type":"message","content":[{"type":"output_text","text":"\"usage\":{\"input_tokens\":1}"}]}],"usage":{"input_tokens":2300,"output_tokens":12}}}"#;
        assert_eq!(response_tokens(completed), Some((2300, 12)));
        assert_eq!(
            response_tokens(br#"{"type":"response.failed","response":{"usage":null}}"#),
            None
        );
        assert_eq!(response_tokens(b"not json"), None);
    }

    #[test]
    fn reads_the_top_level_id_and_usage_only() {
        // Nested objects carry their own "id" and "usage" keys, and strings that look like
        // them; only the response's own fields count.
        let completed = br#"{"type":"response.completed","sequence_number":9,"response":{"id":"resp_\u0041bc","output":[{"id":"msg_1","type":"message","content":[{"type":"output_text","text":"\"usage\":{\"input_tokens\":1}"}]}],"tools":[{"type":"function","name":"f","parameters":{"properties":{"usage":{"type":"string"}}}}],"usage":{"input_tokens":2300,"output_tokens":12},"metadata":{"usage":"x"}}}"#;
        let mut seen = Seen::default();
        assert!(learn_from_event(
            completed,
            "response.completed",
            true,
            &mut seen
        ));
        assert_eq!(seen.ids, ["resp_Abc"]);
        assert_eq!(seen.usage, [2300]);

        let mut seen = Seen::default();
        assert!(!learn_from_event(
            completed,
            "response.completed",
            false,
            &mut seen
        ));
        assert_eq!((seen.ids.len(), seen.usage.as_slice()), (0, &[2300][..]));

        let created = br#"{"type":"response.created","response":{"id":"resp_1","status":"in_progress","usage":null}}"#;
        let mut seen = Seen::default();
        assert!(learn_from_event(
            created,
            "response.created",
            true,
            &mut seen
        ));
        assert_eq!(
            (seen.ids.as_slice(), seen.usage.len()),
            (&["resp_1".to_owned()][..], 0)
        );

        let mut seen = Seen::default();
        for data in [
            &br#"{"type":"response.output_text.delta","delta":"{\"response\":{\"id\":\"x\"}}"}"#[..],
            b"[DONE]",
            br#"{"type":"response.completed","response":{"id":"#,
        ] {
            assert!(!learn_from_event(
                data,
                "response.completed",
                true,
                &mut seen
            ));
        }
        assert_eq!((seen.ids.len(), seen.usage.len()), (0, 0));

        let mut seen = Seen::default();
        learn_from_json(
            br#"{"id":"resp_2","object":"response","usage":{"input_tokens":7}}"#,
            &mut seen,
        );
        assert_eq!(
            (seen.ids.as_slice(), seen.usage.as_slice()),
            (&["resp_2".to_owned()][..], &[7][..])
        );
    }
}
