//! Re-chunking property: a Responses stream decodes to the same events whatever the chunk
//! boundaries, and the events' raw bytes plus the remainder are exactly the input.

use bytes::Bytes;
use tower_responses::sse::{Event, EventKind, SseDecoder};

/// A captured-shape Codex stream: reasoning, a message with many deltas, a function call,
/// and `response.completed` with usage; 326 events, about 90 KB.
const FIXTURE: &[u8] = include_bytes!("fixtures/responses_stream.sse");

/// Odd but valid framing: a BOM, comments, ids, retry, multi-line data, fields without a
/// colon, a data-less block, and a last event without its blank line.
const TRICKY: &[u8] = b"\xEF\xBB\xBF: opening comment\nretry: 3000\n\nid: 1\nevent: response.created\ndata: {\"type\":\"response.created\"}\n\n: ping\n\nevent: ignored\nid: 2\n\ndata:{\"type\":\"response.output_text.delta\",\ndata: \"delta\":\"a\\nb\"}\nevent\n\ndata\n\n:c\ndata: {\"seq\":9,\"type\":\"response.completed\"}\n";

/// What a consumer keeps of an event (raw bytes depend on where CR LF pairs were split).
type Seen = (Option<String>, Bytes, Option<Bytes>, Option<Bytes>);

fn seen(event: &Event) -> Seen {
    (
        event.event_type().map(str::to_owned),
        event.data.clone(),
        event.event.clone(),
        event.id.clone(),
    )
}

/// splitmix64: small, deterministic, good enough to pick cut points.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn with_endings(input: &[u8], ending: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(input.len() * 2);
    for &b in input {
        if b == b'\n' {
            out.extend_from_slice(ending);
        } else {
            out.push(b);
        }
    }
    Bytes::from(out)
}

/// Decodes `input` cut at `cuts` (ascending offsets) and checks the raw bytes account for
/// every input byte.
fn decode(input: &Bytes, cuts: &[usize]) -> Vec<Seen> {
    let mut decoder = SseDecoder::new();
    let mut events = Vec::new();
    let mut raw = Vec::with_capacity(input.len());
    let mut keep = |event: Event| {
        raw.extend_from_slice(&event.raw);
        events.push(seen(&event));
    };
    let mut start = 0;
    for &end in cuts.iter().chain([input.len()].iter()) {
        decoder.push(input.slice(start..end));
        start = end;
        while let Some(event) = decoder.next_event().unwrap() {
            keep(event);
        }
        assert!(decoder.buffered() <= input.len());
    }
    while let Some(event) = decoder.finish().unwrap() {
        keep(event);
    }
    raw.extend_from_slice(&decoder.take_remainder());
    assert_eq!(decoder.buffered(), 0);
    assert!(
        raw == input[..],
        "raw bytes plus remainder differ from the input (cuts {cuts:?})"
    );
    events
}

/// Cut points: a mix of tiny, small and large pieces, empty chunks, and cuts right after
/// line endings (where a CR LF pair splits).
fn random_cuts(rng: &mut Rng, input: &[u8]) -> Vec<usize> {
    let max = [2, 9, 65, 4097, 20_000][rng.below(5)];
    let mut cuts = Vec::new();
    let mut at = 0;
    while at < input.len() {
        at += match rng.below(8) {
            0 => 0,
            1 => memchr::memchr2(b'\r', b'\n', &input[at..]).map_or(1, |i| i + 1),
            _ => 1 + rng.below(max),
        };
        cuts.push(at.min(input.len()));
    }
    cuts
}

fn variants(input: &[u8]) -> [(&'static str, Bytes); 3] {
    [
        ("LF", Bytes::copy_from_slice(input)),
        ("CRLF", with_endings(input, b"\r\n")),
        ("CR", with_endings(input, b"\r")),
    ]
}

fn check_rechunking(input: &[u8], cases: u64) {
    for (name, input) in variants(input) {
        let whole = decode(&input, &[]);
        let bytewise: Vec<usize> = (1..input.len()).collect();
        assert!(decode(&input, &bytewise) == whole, "{name}: 1-byte chunks");
        for case in 0..cases {
            let mut rng = Rng(case ^ 0x5EED_0000 ^ input.len() as u64);
            let cuts = random_cuts(&mut rng, &input);
            assert!(
                decode(&input, &cuts) == whole,
                "{name}: case {case}, cuts {cuts:?}"
            );
        }
    }
}

#[test]
fn fixture_decodes_to_its_events() {
    let events = decode(&Bytes::from_static(FIXTURE), &[]);
    assert_eq!(events.len(), 326);
    for (n, (event_type, data, event, id)) in events.iter().enumerate() {
        let json: serde_json::Value = serde_json::from_slice(data).unwrap();
        assert_eq!(
            json["sequence_number"], n,
            "events in order, none lost or merged"
        );
        assert_eq!(event_type.as_deref(), json["type"].as_str());
        assert_eq!(event.as_deref(), event_type.as_deref().map(str::as_bytes));
        assert_eq!(id, &None);
    }
    let kinds: Vec<EventKind> = events
        .iter()
        .map(|e| tower_responses::sse::event_kind(e.0.as_deref().unwrap()))
        .collect();
    assert_eq!(
        kinds[..3],
        [
            EventKind::Lifecycle,
            EventKind::Lifecycle,
            EventKind::Content
        ]
    );
    assert!(kinds[2..325].iter().all(|k| *k == EventKind::Content));
    assert_eq!(kinds[325], EventKind::Terminal);
}

#[test]
fn fixture_single_line_data_is_sliced_from_the_chunk() {
    let input = Bytes::from_static(FIXTURE);
    let range = input.as_ptr_range();
    let mut decoder = SseDecoder::new();
    decoder.push(input.clone());
    while let Some(event) = decoder.next_event().unwrap() {
        assert!(range.contains(&event.data.as_ptr()));
        assert!(range.contains(&event.raw.as_ptr()));
    }
}

#[test]
fn tricky_stream_decodes_as_the_spec_says() {
    let events = decode(&Bytes::from_static(TRICKY), &[]);
    let b = Bytes::from_static;
    assert_eq!(
        events,
        [
            (
                Some("response.created".into()),
                b(br#"{"type":"response.created"}"#),
                Some(b(b"response.created")),
                Some(b(b"1")),
            ),
            (
                Some("response.output_text.delta".into()),
                b(b"{\"type\":\"response.output_text.delta\",\n\"delta\":\"a\\nb\"}"),
                Some(b(b"")),
                Some(b(b"2")),
            ),
            (None, b(b""), None, None),
            (
                Some("response.completed".into()),
                b(br#"{"seq":9,"type":"response.completed"}"#),
                None,
                None,
            ),
        ]
    );
}

#[test]
fn fixture_rechunked() {
    check_rechunking(FIXTURE, 150);
}

#[test]
fn tricky_stream_rechunked() {
    check_rechunking(TRICKY, 400);
}

/// Length of the unterminated tail: from the end of the last blank line.
fn cut_len(input: &[u8]) -> usize {
    let last_event_end = input
        .windows(2)
        .rposition(|w| w == b"\n\n" || w == b"\r\r" || w == b"\n\r")
        .unwrap();
    // In the CRLF variant the blank line ends with one more LF.
    let end = last_event_end + 2 + usize::from(input.get(last_event_end + 2) == Some(&b'\n'));
    input.len() - end
}

#[test]
fn fixture_with_trailing_partial_event_rechunked() {
    // A stream cut mid-line: the partial event is never dispatched and stays in the remainder.
    let cut = &FIXTURE[..FIXTURE.len() - 300];
    for (_, input) in variants(cut) {
        let mut decoder = SseDecoder::new();
        decoder.push(input.clone());
        let mut n = 0;
        while decoder.next_event().unwrap().is_some() {
            n += 1;
        }
        assert!(decoder.finish().unwrap().is_none());
        assert_eq!(n, 325);
        assert_eq!(decoder.take_remainder().len(), cut_len(&input));
    }
    check_rechunking(cut, 100);
}
