//! `SseDecoder` under random chunking, against the reference decoder.
//!
//! Input: one byte of chunk-size count, that many chunk sizes, one byte choosing small
//! bounds, then the stream. Checked: with the default bounds the events (type, data, id,
//! raw bytes) are the reference's, and the raw bytes of the events followed by the
//! remainder are the input; with small bounds the chunked decoder and a single-chunk one
//! agree on every event and on the error.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use tower_responses::sse::{Event, SseDecoder, SseError};
use tower_responses_fuzz::{Cursor, chunks, reference_decode};

/// Decodes `pieces` the way the layers do: push, drain, and at the end drain `finish`.
fn decode(mut decoder: SseDecoder, pieces: &[&[u8]]) -> (Vec<Event>, Option<SseError>, Bytes) {
    let mut events = Vec::new();
    let mut error = None;
    'outer: for piece in pieces {
        decoder.push(Bytes::copy_from_slice(piece));
        loop {
            match decoder.next_event() {
                Ok(Some(e)) => events.push(e),
                Ok(None) => break,
                Err(e) => {
                    error = Some(e);
                    break 'outer;
                }
            }
        }
    }
    if error.is_none() {
        loop {
            match decoder.finish() {
                Ok(Some(e)) => events.push(e),
                Ok(None) => break,
                Err(e) => {
                    error = Some(e);
                    break;
                }
            }
        }
    }
    // `buffered` must account for exactly what `take_remainder` gives back.
    let buffered = decoder.buffered();
    let rest = decoder.take_remainder();
    assert_eq!(
        buffered,
        rest.len(),
        "buffered() disagrees with take_remainder()"
    );
    (events, error, rest)
}

fuzz_target!(|data: &[u8]| {
    let mut input = Cursor::new(data);
    let n = usize::from(input.byte() % 16);
    let sizes = input.take(n).to_vec();
    let bounds = input.byte();
    let stream = input.rest();
    let pieces = chunks(stream, &sizes);

    // Default bounds: nothing in a fuzz input reaches them, so this is the reference.
    let (events, error, rest) = decode(SseDecoder::new(), &pieces);
    assert_eq!(error, None);
    let mut raw: Vec<u8> = events.iter().flat_map(|e| e.raw.to_vec()).collect();
    raw.extend_from_slice(&rest);
    assert_eq!(
        raw, stream,
        "events' raw bytes and the remainder are not the input"
    );

    let expected = reference_decode(stream);
    let got: Vec<_> = events
        .iter()
        .map(|e| {
            (
                e.event.as_deref().map(<[u8]>::to_vec),
                e.data.to_vec(),
                e.id.as_deref().map(<[u8]>::to_vec),
            )
        })
        .collect();
    let want: Vec<_> = expected
        .events
        .iter()
        .map(|e| (e.event.clone(), e.data.clone(), e.id.clone()))
        .collect();
    assert_eq!(got, want, "fields differ from the reference");
    // Raw boundaries: the reference's, except that a CR ending a chunk cannot wait for the
    // LF that may follow it (the decoder dispatches at once), so that LF may open the next
    // event's raw bytes instead.
    let mut at = 0;
    for (e, r) in events.iter().zip(&expected.events) {
        let end = at + e.raw.len();
        let shifted_lf = end + 1 == r.end && stream[end - 1] == b'\r' && stream[end] == b'\n';
        assert!(
            end == r.end || shifted_lf,
            "event ends at {end}, reference at {}",
            r.end
        );
        at = end;
    }
    // The same retry, except that a `retry:` on a last, unterminated line is applied by
    // neither.
    assert_eq!(
        {
            let mut d = SseDecoder::new();
            for p in &pieces {
                d.push(Bytes::copy_from_slice(p));
                while let Ok(Some(_)) = d.next_event() {}
            }
            while let Ok(Some(_)) = d.finish() {}
            d.retry()
        },
        expected.retry
    );

    // Small bounds: however it is chunked, the decoder gives the same events and error as
    // with the whole input in one chunk.
    let small = || {
        SseDecoder::new()
            .with_max_line(usize::from(bounds & 0x0f) * 4 + 1)
            .with_max_event(usize::from(bounds >> 4) * 16 + 1)
    };
    let (chunked, chunked_err, _) = decode(small(), &pieces);
    let (whole, whole_err, _) = decode(small(), &[stream]);
    let fields = |es: &[Event]| -> Vec<(Option<Bytes>, Bytes, Option<Bytes>)> {
        es.iter()
            .map(|e| (e.event.clone(), e.data.clone(), e.id.clone()))
            .collect()
    };
    assert_eq!(
        fields(&chunked),
        fields(&whole),
        "small bounds: events depend on chunking"
    );
    // Which bound is named may differ: a chunk ending mid-line can show the event bound
    // passed before the line's is.
    assert_eq!(
        chunked_err.is_some(),
        whole_err.is_some(),
        "small bounds: whether it fails depends on chunking ({chunked_err:?}, {whole_err:?})"
    );
});
