//! The folded answer's bytes: the terminal event's `response`, as the upstream wrote it.
//!
//! `response.completed` (or `response.incomplete`) carries the whole response object, which
//! is what a `stream:false` client gets. It is sliced out of the event's data: no copy, no
//! parse into a `Value` and no re-serialising (which cost more than folding the rest of the
//! stream). Only when its `output` is empty (the ChatGPT Codex backend's is) is `output` set,
//! from the `response.output_item.done` items, with every other field copied as it was
//! ([`RawObject`]).
//!
//! The answer is what the fold gave when it parsed the object into a `Value`: a response
//! `serde_json` would refuse as a `Value` (which the event's raw-value scan lets through) is
//! refused here too, so a client never gets what the proxy itself could not read.

use bytes::Bytes;
use memchr::{memchr, memchr2};
use serde_json::Value;

use super::events::{Fields, Tracker};
use crate::json::RawObject;

/// The answer for the terminal event whose `data` holds the raw `response` object; `None`
/// when that is not a JSON object `serde_json` reads as a `Value` (the event is then
/// ignored, as before). `done_items` are the `response.output_item.done` events' data, in order; what
/// is rebuilt from them is bounded by `limit` bytes.
pub(super) fn answer(
    data: &Bytes,
    response: &str,
    done_items: &[Bytes],
    limit: usize,
) -> Option<Bytes> {
    match scan(response.as_bytes()) {
        Some(Output::Full) => Some(slice_of(data, response)),
        Some(Output::Empty) => {
            let mut obj = RawObject::scan_valid(response.as_bytes())?;
            let output =
                serde_json::to_string(&Value::Array(done_output(done_items, limit))).ok()?;
            obj.set("output", output);
            Some(obj.to_bytes())
        }
        // Not an object, or one the raw path cannot vouch for: answered as it always was.
        None => parsed(response, done_items, limit),
    }
}

/// The answer through a `Value`: for what the raw path cannot vouch for.
fn parsed(response: &str, done_items: &[Bytes], limit: usize) -> Option<Bytes> {
    let mut resp: Value = serde_json::from_str(response).ok()?;
    // A `response` that is not an object is no answer (the platform's always is): the
    // event is ignored, as one that is not JSON is.
    if !resp.is_object() {
        return None;
    }
    let empty = resp
        .get("output")
        .is_none_or(|o| o.as_array().is_some_and(Vec::is_empty) || o.is_null());
    if empty {
        if let Some(obj) = resp.as_object_mut() {
            obj.insert(
                "output".into(),
                Value::Array(done_output(done_items, limit)),
            );
        }
    }
    serde_json::to_vec(&resp).ok().map(Bytes::from)
}

/// The finished items, in order, the last one of each `output_index` (what the stream said).
fn done_output(done_items: &[Bytes], limit: usize) -> Vec<Value> {
    let mut tracker = Tracker::new(limit);
    for data in done_items {
        if let Some(f) = Fields::parse(data) {
            if let (Some(i), Some(item)) = (f.output_index, f.item) {
                tracker.item(i, item, true);
            }
        }
    }
    tracker.done_output()
}

/// `text` (a part of `data`) as a slice of `data`'s buffer, or a copy if it is not one.
fn slice_of(data: &Bytes, text: &str) -> Bytes {
    let start = (text.as_ptr() as usize).wrapping_sub(data.as_ptr() as usize);
    match start.checked_add(text.len()) {
        Some(end) if start <= data.len() && end <= data.len() => data.slice(start..end),
        _ => Bytes::copy_from_slice(text.as_bytes()),
    }
}

/// Deeper than this is left to `serde_json` to judge (its `Value` limit is 128 levels).
const MAX_RAW_DEPTH: usize = 100;

/// Longer numbers are left to `serde_json` to judge (an `f64` overflows past 309 digits).
const MAX_RAW_NUMBER: usize = 300;

/// What a response object's top-level `output` (its last, for a key given twice) holds.
#[derive(Debug, PartialEq)]
enum Output {
    /// Items: the object is the answer as it is.
    Full,
    /// Absent, `null` or `[]`: the answer needs the items.
    Empty,
}

/// The response object `d`'s [`Output`], in one pass that also looks for what `serde_json`
/// might refuse as a `Value` although its raw-value scan accepted it: a `\u` escape of a
/// surrogate not in a pair, a number with an exponent or very many digits (out of `f64`
/// range), nesting deeper than its limit. `d` is valid JSON as far as that scan goes.
/// `None` for any of those, for a top-level key with escapes, or when `d` is not an object:
/// conservative, `None` only sends the answer through the parsing path, which decides.
fn scan(d: &[u8]) -> Option<Output> {
    if d.first() != Some(&b'{') {
        return None;
    }
    let mut output = Output::Empty;
    let mut depth = 0usize;
    // At the top level, the next string is a key.
    let mut key_next = false;
    let mut i = 0;
    while let Some(&b) = d.get(i) {
        match b {
            b'"' => {
                let end = string_end(d, i + 1)?;
                if depth == 1 && key_next {
                    key_next = false;
                    let key = &d[i + 1..end - 1];
                    if memchr(b'\\', key).is_some() {
                        return None;
                    }
                    if key == b"output" {
                        let colon = end + skip_ws(&d[end..]);
                        let at = colon + 1 + skip_ws(d.get(colon + 1..)?);
                        output = match d.get(at..)? {
                            [b'n', ..] => Output::Empty,
                            [b'[', rest @ ..] if rest.get(skip_ws(rest)) == Some(&b']') => {
                                Output::Empty
                            }
                            _ => Output::Full,
                        };
                    }
                }
                i = end;
            }
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_RAW_DEPTH {
                    return None;
                }
                key_next = depth == 1;
                i += 1;
            }
            b']' | b'}' => {
                depth = depth.saturating_sub(1);
                i += 1;
            }
            b',' => {
                key_next = depth == 1;
                i += 1;
            }
            b'-' | b'0'..=b'9' => {
                let len = d[i..]
                    .iter()
                    .take_while(|c| matches!(c, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E'))
                    .count();
                let number = &d[i..i + len];
                if len > MAX_RAW_NUMBER || number.iter().any(|c| matches!(c, b'e' | b'E')) {
                    return None;
                }
                i += len;
            }
            _ => i += 1,
        }
    }
    Some(output)
}

fn skip_ws(d: &[u8]) -> usize {
    d.iter()
        .take_while(|c| matches!(c, b' ' | b'\t' | b'\n' | b'\r'))
        .count()
}

/// Past the string whose contents start at `i`; `None` if it holds a surrogate escape not in
/// a pair (or ends early).
fn string_end(d: &[u8], mut i: usize) -> Option<usize> {
    loop {
        i += memchr2(b'"', b'\\', d.get(i..)?)?;
        if d[i] == b'"' {
            return Some(i + 1);
        }
        if d.get(i + 1) != Some(&b'u') {
            i += 2;
            continue;
        }
        match surrogate(d.get(i + 2..i + 6)?) {
            None => i += 6,
            Some(High)
                if surrogate(d.get(i + 8..i + 12)?) == Some(Low) && d[i + 6..i + 8] == *b"\\u" =>
            {
                i += 12;
            }
            Some(_) => return None,
        }
    }
}

#[derive(PartialEq)]
enum Surrogate {
    High,
    Low,
}
use Surrogate::{High, Low};

/// Which surrogate half the four hex digits of a `\u` escape name, if any.
fn surrogate(hex: &[u8]) -> Option<Surrogate> {
    match hex {
        [b'd' | b'D', b'8' | b'9' | b'a' | b'b' | b'A' | b'B', ..] => Some(High),
        [b'd' | b'D', b'c'..=b'f' | b'C'..=b'F', ..] => Some(Low),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_response_that_is_not_an_object_is_no_answer() {
        // Found by the `fold` fuzz target: such a terminal event was answered 200 with the
        // bare value as the body, which no SDK reads as a response.
        for response in ["5", "\"x\"", "[1]", "null", "true"] {
            let data = Bytes::from(format!(
                r#"{{"type":"response.completed","response":{response}}}"#
            ));
            assert_eq!(answer(&data, response, &[], 1 << 20), None, "{response}");
        }
    }

    fn both(response: &str, items: &[&str]) -> (Option<Value>, Option<Value>) {
        let data = Bytes::from(format!(
            r#"{{"type":"response.completed","response":{response}}}"#
        ));
        let raw = Fields::parse(&data)
            .unwrap()
            .response
            .unwrap()
            .get()
            .to_owned();
        let items: Vec<Bytes> = items.iter().map(|i| Bytes::from(i.to_string())).collect();
        let read = |b: Option<Bytes>| b.map(|b| serde_json::from_slice::<Value>(&b).unwrap());
        (
            read(answer(&data, &raw, &items, 1 << 20)),
            read(parsed(&raw, &items, 1 << 20)),
        )
    }

    #[test]
    fn the_raw_answer_is_what_parsing_gave() {
        let item = r#"{"type":"response.output_item.done","output_index":0,"item":{"id":"m1","type":"message","content":[{"type":"output_text","text":"hi"}]}}"#;
        let older = r#"{"type":"response.output_item.done","output_index":0,"item":{"id":"m0"}}"#;
        let second = r#"{"type":"response.output_item.done","output_index":1,"item":{"id":"m2"}}"#;
        for response in [
            r#"{"id":"r","output":[{"id":"x","type":"message"}],"usage":{"output_tokens":3}}"#,
            r#"{"id":"r","output":[],"usage":null}"#,
            r#"{"id":"r","output":[ ],"z":1}"#,
            r#"{"id":"r","output":null}"#,
            r#"{"id":"r"}"#,
            r#"{"id":"r","output":[],"output":[{"id":"last"}]}"#,
            r#"{"id":"r","output":[{"id":"first"}],"output":[]}"#,
            r#"{"id":"r","outp\u0075t":[]}"#,
            r#"{"id":"r","text":"\ud83d\ude00 \u00e9 \"q\" \\u","n":-12.5,"t":true,"f":false}"#,
            r#"{"id":"r","text":"\ud83d"}"#,
            r#"{"id":"r","text":"\ude00\ud83d"}"#,
            r#"{"id":"r","big":1e400}"#,
            r#"{"id":"r","small":1.5e-3,"output":[]}"#,
            r#"5"#,
            r#"[]"#,
        ] {
            let (raw, parsed) = both(response, &[older, item, second, "{}"]);
            assert_eq!(raw, parsed, "{response}");
        }
        let deep = format!(r#"{{"a":{}1{}}}"#, "[".repeat(140), "]".repeat(140));
        let (raw, parsed) = both(&deep, &[]);
        assert_eq!(raw, parsed);
        assert!(raw.is_none(), "serde_json refuses 140 levels");

        let (raw, _) = both(r#"{"id":"r","output":[]}"#, &[older, item, second]);
        let output = &raw.unwrap()["output"];
        assert_eq!(output[0]["id"], "m1", "the last item of an index");
        assert_eq!(output[1]["id"], "m2");
    }

    #[test]
    fn a_full_output_is_the_events_own_bytes() {
        let data = Bytes::from_static(
            br#"{"type":"response.completed","response":{"id":"r", "output":[{"id":"x"}]}}"#,
        );
        let fields = Fields::parse(&data).unwrap();
        let out = answer(&data, fields.response.unwrap().get(), &[], 1 << 20).unwrap();
        assert_eq!(&out[..], br#"{"id":"r", "output":[{"id":"x"}]}"#);
        let at = out.as_ptr() as usize - data.as_ptr() as usize;
        assert!(at < data.len(), "a slice of the event, not a copy");
    }
}
