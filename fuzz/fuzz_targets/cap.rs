//! `max_output_tokens` enforcement: the deferring gate the layers run decides what a gate
//! counting every event on arrival decides.
//!
//! Input: a byte for the cap (in tokens), a byte for the tracking budget, then the stream.
//! Checked: for every event up to the first that ends the stream, the same verdict from both
//! gates; a cut ends with the same closing bytes, one `response.incomplete` event whose data
//! is a JSON object with `status: "incomplete"`.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use tower_responses::__fuzz::{CapGate, CapVerdict};
use tower_responses::sse::SseDecoder;
use tower_responses_fuzz::Cursor;

fuzz_target!(|data: &[u8]| {
    let mut input = Cursor::new(data);
    let cap = u64::from(input.byte());
    let budget = match input.byte() {
        0 => 1 << 20,
        n => usize::from(n) * 16,
    };
    let stream = input.rest();

    let mut deferring = CapGate::new(cap, budget, true);
    let mut on_arrival = CapGate::new(cap, budget, false);
    let mut decoder = SseDecoder::new();
    decoder.push(Bytes::copy_from_slice(stream));
    while let Ok(Some(event)) = decoder.next_event() {
        let verdict = deferring.admit(&event);
        assert_eq!(verdict, on_arrival.admit(&event), "event {event:?}");
        match verdict {
            CapVerdict::Forward => {}
            CapVerdict::ForwardLast => break,
            CapVerdict::Cut => {
                let closing = deferring.closing();
                assert_eq!(closing, on_arrival.closing());
                let text = std::str::from_utf8(&closing).expect("UTF-8");
                let json = text
                    .strip_prefix("event: response.incomplete\ndata: ")
                    .and_then(|t| t.strip_suffix("\n\n"))
                    .expect("one response.incomplete event");
                let v: Value = serde_json::from_str(json).expect("JSON data");
                assert_eq!(v["response"]["status"], "incomplete", "{json}");
                break;
            }
        }
    }
});
