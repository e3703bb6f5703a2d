//! Responses streams as SSE text for the tests that feed the same events to several layers
//! in every shape and chunking a decoder must read alike.
#![allow(dead_code)]

use bytes::Bytes;
use serde_json::{Value, json};
use tower_responses::testing::events;

/// The number of [`sse`] styles.
pub const STYLES: usize = 6;

/// One event as SSE text in one of the shapes a decoder must read alike.
pub fn sse(event: &Value, style: usize, i: usize) -> String {
    let ty = event["type"].as_str().unwrap_or("");
    let data = event.to_string();
    match style {
        0 => format!("event: {ty}\ndata: {data}\n\n"),
        1 => format!("data: {data}\n\n"),
        2 => format!("event: {ty}\r\ndata: {data}\r\n\r\n"),
        // The platform's own order, `"type"` first: what the layers step over after the first
        // content event when nothing reads text deltas.
        4 => format!("event: {ty}\ndata: {}\n\n", type_first(event)),
        5 => format!("data: {}\n\n", type_first(event)),
        // Comments, a field the decoder ignores, and the JSON over two data lines.
        _ => {
            let (a, b) = data.split_at(data.find(',').unwrap_or(data.len()));
            let comment = if i % 2 == 0 { ": keep-alive\n\n" } else { "" };
            format!("{comment}event: {ty}\nid: {i}\ndata: {a}\ndata: {b}\n\n")
        }
    }
}

/// `event` as JSON with its `"type"` first, as the platform writes it (serde_json sorts keys).
fn type_first(event: &Value) -> String {
    let mut rest = event.clone();
    let Some(ty) = rest.as_object_mut().and_then(|o| o.remove("type")) else {
        return event.to_string();
    };
    let rest = rest.to_string();
    let tail = rest.strip_prefix('{').unwrap_or(&rest);
    let sep = if tail == "}" { "" } else { "," };
    format!("{{\"type\":{ty}{sep}{tail}")
}

/// `events` with `sequence_number`s 0, 1, 2, ...
pub fn numbered(mut events: Vec<Value>) -> Vec<Value> {
    for (i, ev) in events.iter_mut().enumerate() {
        ev["sequence_number"] = json!(i);
    }
    events
}

/// `bytes` cut into chunks: whole; one per event; every `n` bytes; at pseudo-random points.
pub fn chunkings(bytes: &Bytes) -> Vec<Vec<Bytes>> {
    let every = |n: usize| -> Vec<Bytes> {
        (0..bytes.len())
            .step_by(n)
            .map(|i| bytes.slice(i..(i + n).min(bytes.len())))
            .collect()
    };
    let per_event: Vec<Bytes> = {
        let mut out = Vec::new();
        let mut start = 0;
        for (i, w) in bytes.windows(2).enumerate() {
            if w == b"\n\n" {
                out.push(bytes.slice(start..i + 2));
                start = i + 2;
            }
        }
        if start < bytes.len() {
            out.push(bytes.slice(start..));
        }
        out
    };
    let mut seed = bytes.len() as u64;
    let mut random = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let n = 1 + (seed >> 33) as usize % 300;
        random.push(bytes.slice(at..(at + n).min(bytes.len())));
        at += n;
    }
    vec![vec![bytes.clone()], per_event, every(7), random]
}

/// `evs`, numbered, as SSE text in `style`.
pub fn text(evs: Vec<Value>, style: usize) -> Bytes {
    Bytes::from(
        numbered(evs)
            .iter()
            .enumerate()
            .map(|(i, ev)| sse(ev, style, i))
            .collect::<String>(),
    )
}

/// A message `msg` of response `id` streamed as `deltas`, up to its `output_item.done` (no
/// terminal event).
pub fn message(id: &str, msg: &str, deltas: &[&str]) -> Vec<Value> {
    let text: String = deltas.concat();
    let mut evs = vec![
        events::created(id),
        events::in_progress(id),
        events::output_item_added(events::message_item_in_progress(msg)),
        events::content_part_added(msg),
    ];
    evs.extend(deltas.iter().map(|d| events::output_text_delta(msg, d)));
    evs.push(events::output_text_done(msg, &text));
    evs.push(events::output_item_done(events::message_item(msg, &text)));
    evs
}
