//! What the cap and the fold read from upstream events.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};

use bytes::Bytes;

use crate::json::RawObject;
use crate::sse::scan::skip_value;

/// The few fields of a Responses stream event the layer reads; the rest is skipped.
#[derive(Deserialize, Default)]
pub(crate) struct Fields<'a> {
    #[serde(default)]
    pub(crate) sequence_number: Option<u64>,
    #[serde(default)]
    pub(crate) output_index: Option<u64>,
    #[serde(default, borrow)]
    pub(crate) item: Option<&'a RawValue>,
    #[serde(default, borrow)]
    pub(crate) response: Option<&'a RawValue>,
}

impl<'a> Fields<'a> {
    pub(crate) fn parse(data: &'a [u8]) -> Option<Fields<'a>> {
        serde_json::from_slice(data).ok()
    }
}

/// A delta event's fields, found in one walk over its keys: no full parse of an event the
/// stream carries dozens of times (only `delta` is unescaped, when it has escapes).
pub(crate) struct DeltaFields<'a> {
    pub(crate) sequence_number: Option<u64>,
    pub(crate) delta: Cow<'a, str>,
    pub(crate) output_index: Option<u64>,
}

impl<'a> DeltaFields<'a> {
    /// `None` when `data` is not an object or `delta` is not a string (as [`Fields::parse`]).
    pub(crate) fn parse(data: &'a [u8]) -> Option<DeltaFields<'a>> {
        Self::parse_flat(data).or_else(|| Self::parse_walk(data))
    }

    /// The shape the upstream sends: `delta` a plain string after flat members (strings
    /// without escapes and scalars, no whitespace) that hold `sequence_number` and
    /// `output_index`. Such members are read with short byte loops, no walk machinery and
    /// no search set-up per key; `delta` is then the top-level key. `None` for any other
    /// shape, which [`parse_walk`](Self::parse_walk) reads; for this one both read the same.
    fn parse_flat(data: &'a [u8]) -> Option<DeltaFields<'a>> {
        let (mut seq, mut index) = (None, None);
        let mut m = data.strip_prefix(b"{")?;
        // The type the upstream puts first, a flat member: stepped over without a search.
        if let Some(rest) = m.strip_prefix(br#""type":"response.output_text.delta","#) {
            m = rest;
        }
        loop {
            let (key, rest) = known_key(m).or_else(|| flat_string(m))?;
            let rest = rest.strip_prefix(b":")?;
            if key == b"delta" {
                let text = rest.strip_prefix(b"\"")?;
                let len = memchr::memchr2(b'"', b'\\', text)?;
                if text[len] != b'"' || text[..len].iter().any(|&b| b < 0x20) {
                    return None; // escapes to undo, or a string serde_json refuses
                }
                return Some(DeltaFields {
                    sequence_number: Some(seq?),
                    delta: Cow::Borrowed(std::str::from_utf8(&text[..len]).ok()?),
                    output_index: Some(index?),
                });
            }
            let value_len = match rest.first()? {
                b'"' => rest.len() - flat_string(rest)?.1.len(),
                _ => rest.iter().position(|b| {
                    !(b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
                })?,
            };
            let (value, rest) = rest.split_at(value_len);
            if value.is_empty() {
                return None;
            }
            // A plain integer (as `str::parse` reads it), else the walk decides.
            let number = || -> Option<u64> {
                value.iter().try_fold(0u64, |n, &d| {
                    let d = d.checked_sub(b'0').filter(|d| *d < 10)?;
                    n.checked_mul(10)?.checked_add(u64::from(d))
                })
            };
            match key {
                b"sequence_number" => seq = Some(number()?),
                b"output_index" => index = Some(number()?),
                _ => {}
            }
            m = rest.strip_prefix(b",")?;
        }
    }

    fn parse_walk(data: &'a [u8]) -> Option<DeltaFields<'a>> {
        let (mut seq, mut delta, mut index) = (None, None, None);
        crate::json::find_in_object(data, |key, escaped, at| {
            match key {
                _ if escaped => {}
                b"sequence_number" => seq = Some(at),
                b"delta" => delta = Some(at),
                b"output_index" => index = Some(at),
                _ => {}
            }
            (seq.is_some() && delta.is_some() && index.is_some()).then_some(())
        });
        let value = |at: usize| skip_value(data, at).map(|end| &data[at..end]);
        let number = |at: Option<usize>| -> Option<u64> {
            std::str::from_utf8(value(at?)?).ok()?.parse().ok()
        };
        let delta = match delta {
            Some(at) => serde_json::from_slice::<Cow<'a, str>>(value(at)?).ok()?,
            None => Cow::Borrowed(""),
        };
        Some(DeltaFields {
            sequence_number: number(seq),
            delta,
            output_index: number(index),
        })
    }
}

/// The keys of a delta event, at the start of `m`: what [`flat_string`] gives for them,
/// without its search.
fn known_key(m: &[u8]) -> Option<(&[u8], &[u8])> {
    const KEYS: [&[u8]; 5] = [
        b"\"sequence_number\"",
        b"\"item_id\"",
        b"\"output_index\"",
        b"\"content_index\"",
        b"\"delta\"",
    ];
    KEYS.iter()
        .find_map(|k| m.strip_prefix(*k).map(|rest| (&k[1..k.len() - 1], rest)))
}

/// A string without escapes at the start of `m` (short: a key or a flat value): its
/// content and what follows it.
fn flat_string(m: &[u8]) -> Option<(&[u8], &[u8])> {
    let rest = m.strip_prefix(b"\"")?;
    let end = memchr::memchr2(b'"', b'\\', rest)?;
    (rest[end] == b'"').then(|| (&rest[..end], &rest[end + 1..]))
}

/// An event's `sequence_number`, found without parsing the rest of it.
pub(crate) fn sequence_number(data: &[u8]) -> Option<u64> {
    let at = crate::json::find_in_object(data, |key, escaped, at| {
        (!escaped && key == b"sequence_number").then_some(at)
    })?;
    let end = skip_value(data, at)?;
    std::str::from_utf8(&data[at..end]).ok()?.parse().ok()
}

/// Delta events whose text the client sees, and where that text lands in the output item.
pub(crate) fn visible_delta(event_type: &str) -> Option<TextSlot> {
    match event_type {
        "response.output_text.delta" => Some(TextSlot::OutputText),
        "response.refusal.delta" => Some(TextSlot::Refusal),
        "response.function_call_arguments.delta" => Some(TextSlot::Arguments),
        "response.custom_tool_call_input.delta" => Some(TextSlot::Input),
        _ => None,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TextSlot {
    OutputText,
    Refusal,
    Arguments,
    Input,
}

#[derive(Debug)]
struct Item {
    index: u64,
    /// The item as the upstream sent it (valid JSON: it came as a `RawValue`), parsed only
    /// when the output is asked for (a cut stream, the fold's answer).
    raw: Box<str>,
    text: String,
    slot: Option<TextSlot>,
    done: bool,
}

/// The response as far as the stream has told it: the `response.created` object and the
/// output items, bounded by `budget` bytes (past it, nothing more is recorded).
#[derive(Debug)]
pub(crate) struct Tracker {
    // The `response` objects seen, raw: parsed only when the stream is cut (most are not).
    responses: Vec<Box<str>>,
    items: Vec<Item>,
    budget: usize,
    used: usize,
}

impl Tracker {
    pub(crate) fn new(budget: usize) -> Self {
        Tracker {
            responses: Vec::new(),
            items: Vec::new(),
            budget,
            used: 0,
        }
    }

    fn spend(&mut self, n: usize) -> bool {
        if self.used.saturating_add(n) > self.budget {
            return false;
        }
        self.used += n;
        true
    }

    pub(crate) fn response(&mut self, raw: &RawValue) {
        if !self.spend(raw.get().len()) {
            return;
        }
        self.responses.push(raw.get().into());
    }

    pub(crate) fn item(&mut self, index: u64, raw: &RawValue, done: bool) {
        if !self.spend(raw.get().len()) {
            return;
        }
        let raw = raw.get().into();
        match self.items.iter_mut().find(|i| i.index == index) {
            Some(item) => {
                item.raw = raw;
                item.done = done;
            }
            None => self.items.push(Item {
                index,
                raw,
                text: String::new(),
                slot: None,
                done,
            }),
        }
    }

    pub(crate) fn text(&mut self, index: u64, slot: TextSlot, delta: &str) {
        if !self.spend(delta.len()) {
            return;
        }
        if let Some(item) = self.items.iter_mut().find(|i| i.index == index) {
            item.slot = Some(slot);
            item.text.push_str(delta);
        }
    }

    /// The output items in order; items still in progress carry the text streamed so far and
    /// `status: "incomplete"`.
    pub(crate) fn output(&self) -> Vec<Value> {
        let mut items: Vec<&Item> = self.items.iter().collect();
        items.sort_by_key(|i| i.index);
        items
            .into_iter()
            .filter_map(|i| Some((i, serde_json::from_str::<Value>(&i.raw).ok()?)))
            .map(|(i, mut v)| {
                if !i.done {
                    if let Some(obj) = v.as_object_mut() {
                        obj.insert("status".into(), json!("incomplete"));
                        match i.slot {
                            Some(TextSlot::OutputText) => {
                                obj.insert(
                                    "content".into(),
                                    json!([{"type": "output_text", "text": i.text, "annotations": []}]),
                                );
                            }
                            Some(TextSlot::Refusal) => {
                                obj.insert(
                                    "content".into(),
                                    json!([{"type": "refusal", "refusal": i.text}]),
                                );
                            }
                            Some(TextSlot::Arguments) => {
                                obj.insert("arguments".into(), json!(i.text));
                            }
                            Some(TextSlot::Input) => {
                                obj.insert("input".into(), json!(i.text));
                            }
                            None => {}
                        }
                    }
                }
                v
            })
            .collect()
    }

    /// Only the finished items, in order.
    pub(crate) fn done_output(&self) -> Vec<Value> {
        let mut items: Vec<&Item> = self.items.iter().filter(|i| i.done).collect();
        items.sort_by_key(|i| i.index);
        items
            .into_iter()
            .filter_map(|i| serde_json::from_str(&i.raw).ok())
            .collect()
    }

    /// A `response` object for `response.incomplete` with reason `max_output_tokens`, as JSON
    /// text, whose `usage` counts the `output_tokens` the client was let through (the upstream
    /// never sent its final count: the stream was cut before it).
    ///
    /// The latest `response` object is the base, edited at its top level: its other values
    /// stay the upstream's text (a response object echoes the request's instructions and
    /// tools, so parsing it into a `Value` and writing it out again was most of a cut's
    /// cost). The usage is the latest non-null one any of them carried.
    pub(crate) fn incomplete_response(&self, output_tokens: u64) -> Bytes {
        // Each came as a `RawValue`, valid JSON: its top level is scanned, not parsed. A
        // response that is not an object has no fields (`scan_valid` gives `None`).
        let usage_in = |obj: &RawObject<'_>| {
            serde_json::from_str::<Value>(obj.get("usage")?)
                .ok()
                .filter(|u| !u.is_null())
        };
        let last = self
            .responses
            .last()
            .map_or(r#"{"id":null,"object":"response"}"#, |r| &**r);
        let Some(mut base) = RawObject::scan_valid(last.as_bytes()) else {
            // Not an object: nothing to say incomplete on; sent as it came.
            return Bytes::copy_from_slice(last.as_bytes());
        };
        let usage = usage_in(&base).or_else(|| {
            let mut earlier = self.responses.iter().rev().skip(1);
            earlier.find_map(|r| usage_in(&RawObject::scan_valid(r.as_bytes())?))
        });
        base.set("status", r#""incomplete""#);
        base.set("incomplete_details", r#"{"reason":"max_output_tokens"}"#);
        base.set_value("output", &self.output());
        // An in-progress usage may carry the input count; its output count is not final.
        let mut given = usage;
        if let Some(u) = given.as_mut().and_then(Value::as_object_mut) {
            u.remove("output_tokens");
            u.remove("total_tokens");
            u.remove("output_tokens_details");
        }
        base.set_value("usage", &response_usage(given.as_ref(), 0, output_tokens));
        base.to_bytes()
    }
}

/// A complete Responses `usage` object: the upstream's numbers where it sent them, `input`
/// and `output` (counted or estimated by the caller) where it did not, the token details
/// the SDKs require filled with zeros, and `total_tokens` their sum when absent.
pub(crate) fn response_usage(given: Option<&Value>, input: u64, output: u64) -> Value {
    let mut usage = given
        .filter(|u| u.is_object())
        .cloned()
        .unwrap_or_else(|| json!({}));
    let count = |u: &Value, key: &str, fallback: u64| {
        u.get(key).and_then(Value::as_u64).unwrap_or(fallback)
    };
    let input = count(&usage, "input_tokens", input);
    let output = count(&usage, "output_tokens", output);
    let total = count(&usage, "total_tokens", input + output);
    let details = |u: &Value, key: &str, fields: &[&str]| {
        let mut d = u
            .get(key)
            .filter(|d| d.is_object())
            .cloned()
            .unwrap_or_else(|| json!({}));
        for f in fields {
            if d.get(*f).and_then(Value::as_u64).is_none() {
                d[*f] = json!(0);
            }
        }
        d
    };
    let input_details = details(
        &usage,
        "input_tokens_details",
        &["cached_tokens", "cache_write_tokens"],
    );
    let output_details = details(&usage, "output_tokens_details", &["reasoning_tokens"]);
    usage["input_tokens"] = json!(input);
    usage["output_tokens"] = json!(output);
    usage["total_tokens"] = json!(total);
    usage["input_tokens_details"] = input_details;
    usage["output_tokens_details"] = output_details;
    usage
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the closing event's response was before it was edited as raw text: the
    /// reference the raw edit must equal (as JSON values).
    impl Tracker {
        /// The latest `response` object (without its output) and the latest non-null usage.
        fn base_and_usage_value(&self) -> (Option<Value>, Option<Value>) {
            let (mut base, mut usage) = (None, None);
            for raw in &self.responses {
                if let Ok(mut v) = serde_json::from_str::<Value>(raw) {
                    if let Some(u) = v.get("usage").filter(|u| !u.is_null()) {
                        usage = Some(u.clone());
                    }
                    if let Some(obj) = v.as_object_mut() {
                        obj.remove("output");
                    }
                    base = Some(v);
                }
            }
            (base, usage)
        }

        /// A `response` object for `response.incomplete` with reason `max_output_tokens`, whose
        /// `usage` counts the `output_tokens` the client was let through (the upstream never
        /// sent its final count: the stream was cut before it).
        fn incomplete_response_value(&self, output_tokens: u64) -> Value {
            let (base, usage) = self.base_and_usage_value();
            let mut v = base.unwrap_or_else(|| json!({"id": null, "object": "response"}));
            if let Some(obj) = v.as_object_mut() {
                obj.insert("status".into(), json!("incomplete"));
                obj.insert(
                    "incomplete_details".into(),
                    json!({"reason": "max_output_tokens"}),
                );
                obj.insert("output".into(), Value::Array(self.output()));
                // An in-progress usage may carry the input count; its output count is not final.
                let mut given = usage;
                if let Some(u) = given.as_mut().and_then(Value::as_object_mut) {
                    u.remove("output_tokens");
                    u.remove("total_tokens");
                    u.remove("output_tokens_details");
                }
                obj.insert(
                    "usage".into(),
                    response_usage(given.as_ref(), 0, output_tokens),
                );
            }
            v
        }
    }

    /// The response of a cut stream, edited as raw text, is the object the `Value` edit gave,
    /// for every shape the tracker can hold: no response, a non-object one, usage sent
    /// early, late or never, duplicate keys, an output already there, items finished or
    /// not in each slot, and a budget that ran out.
    #[test]
    fn the_raw_incomplete_response_is_the_value_one() {
        let raw = |s: &str| RawValue::from_string(s.to_owned()).unwrap();
        let responses: [&[&str]; 7] = [
            &[],
            &["\"not an object\""],
            &[r#"{"id":"r1","status":"in_progress","usage":null}"#],
            &[
                r#"{"id":"r1","usage":{"input_tokens":12,"output_tokens":3,"total_tokens":15}}"#,
                r#"{"id":"r1","status":"in_progress","usage":null,"instructions":"be brief"}"#,
            ],
            &[r#"{"id":"r1","status":"a","status":"b","usage":null,"usage":{"input_tokens":4}}"#],
            &[
                r#"{"id":"r1","output":[{"type":"message"}],"model":"gpt-5","n":1.0e2,"s":"\u00e9\n"}"#,
            ],
            &[r#"{"id":"r1"}"#, r#"[1,2]"#],
        ];
        // One item per row: index, item, finished, the slot its text lands in.
        #[rustfmt::skip]
        let items = [
            (0, r#"{"id":"m1","type":"message","role":"assistant","content":[]}"#, false, Some(TextSlot::OutputText)),
            (1, r#"{"id":"f1","type":"function_call","arguments":""}"#, false, Some(TextSlot::Arguments)),
            (2, r#"{"id":"m2","type":"message","content":[]}"#, false, Some(TextSlot::Refusal)),
            (3, r#"{"id":"c1","type":"custom_tool_call","input":""}"#, false, Some(TextSlot::Input)),
            (4, r#"{"id":"r2","type":"reasoning","summary":[]}"#, true, None),
            (5, r#"{"id":"m3","type":"message","content":[]}"#, false, None),
        ];
        let mut compared = 0;
        for sent in responses {
            for n in 0..=items.len() {
                for budget in [0, 120, 1 << 20] {
                    let mut tracker = Tracker::new(budget);
                    for r in sent {
                        tracker.response(&raw(r));
                    }
                    for &(index, item, done, slot) in &items[..n] {
                        tracker.item(index, &raw(item), done);
                        if let Some(slot) = slot {
                            tracker.text(index, slot, "déjà \"vu\"");
                        }
                    }
                    let text = tracker.incomplete_response(7);
                    let edited: Value = serde_json::from_slice(&text).unwrap();
                    assert_eq!(edited, tracker.incomplete_response_value(7), "{text:?}");
                    compared += 1;
                }
            }
        }
        assert_eq!(compared, 7 * 7 * 3);
    }

    #[test]
    fn usage_keeps_what_was_sent_and_fills_the_rest() {
        let u = response_usage(None, 0, 7);
        assert_eq!(u["input_tokens"], 0);
        assert_eq!(u["output_tokens"], 7);
        assert_eq!(u["total_tokens"], 7);
        assert_eq!(u["input_tokens_details"]["cached_tokens"], 0);
        assert_eq!(u["output_tokens_details"]["reasoning_tokens"], 0);
        let sent = json!({"input_tokens": 5, "output_tokens": 2, "input_tokens_details": {"cached_tokens": 3}});
        let u = response_usage(Some(&sent), 0, 9);
        assert_eq!(u["input_tokens"], 5);
        assert_eq!(
            u["output_tokens"], 2,
            "the upstream's count wins over the estimate"
        );
        assert_eq!(u["total_tokens"], 7);
        assert_eq!(u["input_tokens_details"]["cached_tokens"], 3);
        assert_eq!(u["input_tokens_details"]["cache_write_tokens"], 0);
    }
}

#[cfg(test)]
mod scan_tests {
    use super::*;

    #[test]
    fn delta_fields_found_in_one_walk() {
        let f = DeltaFields::parse(
            br#"{"type":"response.output_text.delta","sequence_number":7,"item_id":"m","output_index":2,"content_index":0,"delta":"a\"b\u00e9","logprobs":[]}"#,
        )
        .unwrap();
        assert_eq!(
            (f.sequence_number, &*f.delta, f.output_index),
            (Some(7), "a\"bé", Some(2))
        );
        // Missing fields read as before (no delta: empty); a non-string delta is no delta event.
        let f = DeltaFields::parse(br#"{"type":"x"}"#).unwrap();
        assert_eq!(
            (f.sequence_number, &*f.delta, f.output_index),
            (None, "", None)
        );
        assert!(DeltaFields::parse(br#"{"delta":5}"#).is_none());
        assert!(DeltaFields::parse(br#"{"a":1,"delta":5}"#).is_none());
    }

    #[test]
    fn flat_deltas_read_as_the_walk_reads_them() {
        let cases: &[&[u8]] = &[
            br#"{"type":"response.output_text.delta","sequence_number":7,"item_id":"m","output_index":2,"content_index":0,"delta":"Hi","logprobs":[]}"#,
            br#"{"type":"t","sequence_number":7,"output_index":2,"delta":"caf\u00e9"}"#,
            br#"{"type":"t","sequence_number":7,"output_index":2,"delta":"a"b"}"#,
            br#"{"type":"t","sequence_number":7,"output_index":2,"delta":"hello","x":1}"#,
            br#"{"type":"t","sequence_number":7,"output_index":2,"delta":"tab	here"}"#,
            br#"{"type":"t","sequence_number":"7","output_index":2,"delta":"x"}"#,
            br#"{"type":"t","sequence_number":7,"delta":"x","output_index":3}"#,
            br#"{"type":"t","sequence_number":7, "output_index":2,"delta":"x"}"#,
            br#"{"type":"t","sequence_number":7,"output_index":2 ,"delta":"x"}"#,
            br#"{"type":"t","item":{"delta":"no"},"sequence_number":7,"output_index":2,"delta":"x"}"#,
            br#"{"type":"a,"delta":"no","sequence_number":7,"output_index":2,"delta":"x"}"#,
            br#"{"type":"a,","sequence_number":7,"output_index":2,"delta":"x"}"#,
            br#"{"type":"t","sequence_number":7,"sequence_number":8,"output_index":2,"delta":"x"}"#,
            br#"{"type":"t","sequence_number":99999999999999999999,"output_index":2,"delta":"x"}"#,
            br#"{"type":"t","sequence_number":7,"output_index":2,"delta":"unterminated"#,
            br#"{"type":"t","sequence_number":7,"output_index":2,"delta":5,"delta":"x"}"#,
            br#"{"type":"t","sequence_number":7,"output_index":2,"delta" :"x"}"#,
            br#"{"type":"t","sequence_number":007,"output_index":2,"delta":"x"}"#,
            br#"{"type":"t","sequence_number":7.5,"output_index":2,"delta":"x"}"#,
            br#"{"type":"t","sequence_number":-7,"output_index":2,"delta":"x"}"#,
            br#"{"type":"t","sequence\u005fnumber":7,"output_index":2,"delta":"x"}"#,
            br#"{"type":"a very long type string that is longer than thirty-two bytes","sequence_number":7,"output_index":2,"delta":"x"}"#,
            br#"{"type":"t","sequence_number":7,"output_index":2,"flag":true,"n":null,"delta":"x"}"#,
            b"{\"type\":\"t\",\"sequence_number\":7,\"output_index\":2,\"delta\":\"\xFF\"}",
            br#"{"type":"response.output_text.delta","sequence_number":7,"output_index":2,"delta":"x"}"#,
            br#"{"type":"response.output_text.delta" ,"sequence_number":7,"output_index":2,"delta":"x"}"#,
            br#"{"type":"response.output_text.delta","type":"x","sequence_number":7,"output_index":2,"delta":"x"}"#,
            br#"{"type":"response.output_text.delta","deltas":"no","sequence_number":7,"output_index":2,"delta":"x"}"#,
            br#"{"type":"response.output_text.delta","sequence_number_2":1,"sequence_number":7,"output_index":2,"delta":"x"}"#,
            br#"{"type":"response.output_text.delta","item_id":"a\"b","sequence_number":7,"output_index":2,"delta":"x"}"#,
            br#"{"type":"response.output_text.delta","del\u0074a":"no","sequence_number":7,"output_index":2,"delta":"x"}"#,
            br#"{"type":"response.output_text.delta","output_index":2,"output_index":3,"sequence_number":7,"delta":"x"}"#,
            br#"{"type":"response.output_text.delta",sequence_number":7,"output_index":2,"delta":"x"}"#,
            br#"{"type":"response.output_text.delta","#,
        ];
        // The usual delta with a byte changed anywhere, or cut short.
        let usual = br#"{"type":"response.output_text.delta","sequence_number":5,"item_id":"msg_1","output_index":0,"content_index":0,"delta":" The","logprobs":[],"obfuscation":"aB3d"}"#;
        let alphabet = b"\"\\,:{}[]0123 -.aetxy";
        let mut seed = 0x2545_F491_4F6C_DD1Du64;
        let mut mutated: Vec<Vec<u8>> = (0..=usual.len()).map(|n| usual[..n].to_vec()).collect();
        for _ in 0..4000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let mut data = usual.to_vec();
            data[(seed >> 8) as usize % usual.len()] =
                alphabet[(seed >> 40) as usize % alphabet.len()];
            mutated.push(data);
        }
        for data in cases
            .iter()
            .copied()
            .chain(mutated.iter().map(Vec::as_slice))
        {
            let flat = DeltaFields::parse(data);
            let walk = DeltaFields::parse_walk(data);
            let view = |f: Option<DeltaFields<'_>>| {
                f.map(|f| (f.sequence_number, f.delta.into_owned(), f.output_index))
            };
            assert_eq!(view(flat), view(walk), "{}", String::from_utf8_lossy(data));
        }
        // The usual delta is read without the walk.
        let line = r#"{"type":"response.output_text.delta","sequence_number":5,"item_id":"msg_bench_68a1f0c5d2e08190b7c6a5b4","output_index":0,"content_index":0,"delta":" \u{1F680}.","logprobs":[],"obfuscation":"aB3dE5gH"}"#.replace("\\u{1F680}", "\u{1F680}");
        assert!(
            DeltaFields::parse_flat(line.as_bytes()).is_some_and(|f| f.sequence_number == Some(5))
        );
        assert!(
            DeltaFields::parse_flat(
                br#"{"type":"response.output_text.delta","sequence_number":7,"item_id":"m","output_index":0,"content_index":0,"delta":"Hi","logprobs":[],"obfuscation":"x"}"#
            )
            .is_some_and(|f| f.delta == "Hi")
        );
        assert!(DeltaFields::parse(b"[DONE]").is_some_and(|f| f.delta.is_empty()));
    }

    #[test]
    fn sequence_number_without_a_parse() {
        assert_eq!(
            sequence_number(br#"{"type":"a","sequence_number":12,"text":"x"}"#),
            Some(12)
        );
        assert_eq!(
            sequence_number(br#"{"type":"a","sequence_number":"12"}"#),
            None
        );
        assert_eq!(sequence_number(br#"{"type":"a"}"#), None);
        assert_eq!(sequence_number(b"oops"), None);
    }
}
