//! Top-level JSON objects edited without re-encoding what nobody touched.
//!
//! Request bodies carry the whole conversation (`input`, often megabytes) next to a few
//! scalar fields the layers rewrite. [`RawObject`] parses only the top level: each value
//! stays the exact bytes it was, so an untouched `input` or `tools` is copied, never
//! re-serialised, and key order is kept.
//!
//! ```
//! use tower_responses::json::RawObject;
//!
//! let body = br#"{"model":"gpt-5.5","input":[{"role":"user","content":"hi"}],"temperature":0.2}"#;
//! let mut obj = RawObject::parse(body).unwrap();
//! assert_eq!(obj.get_str("model").as_deref(), Some("gpt-5.5"));
//! obj.remove("temperature");
//! obj.set("stream", "true");
//! assert_eq!(
//!     &obj.to_bytes()[..],
//!     &br#"{"model":"gpt-5.5","input":[{"role":"user","content":"hi"}],"stream":true}"#[..]
//! );
//! ```

use std::borrow::Cow;
use std::ops::{ControlFlow, Range};

use bytes::Bytes;
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

/// A JSON object's top-level entries in order; values are raw JSON text.
#[derive(Debug, Clone)]
pub struct RawObject<'a> {
    entries: Vec<(Cow<'a, str>, Cow<'a, str>)>,
}

/// Where the top-level entries of a parsed object sit in its bytes: what
/// [`RawObject::from_spans`] needs to give the object again without a walk.
#[derive(Debug, Clone, Default)]
pub(crate) struct ObjectSpans {
    entries: Vec<(SpanKey, Range<usize>)>,
}

// Spans come from the proxy edge's validating pass only.
#[cfg_attr(not(feature = "proxy"), allow(dead_code))]
#[derive(Debug, Clone)]
enum SpanKey {
    /// The key's text between its quotes.
    At(Range<usize>),
    /// A key written with escapes, unescaped.
    Unescaped(String),
}

struct Entries<'a>(Vec<(Cow<'a, str>, Cow<'a, str>)>);

impl<'de> Deserialize<'de> for Entries<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Entries<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some((Key(k), v)) = map.next_entry::<Key<'de>, &'de RawValue>()? {
                    out.push((k, Cow::Borrowed(v.get())));
                }
                Ok(Entries(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// An object key borrowed from the input unless it holds escapes (serde's `Cow` always copies).
pub(crate) struct Key<'a>(pub(crate) Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object key")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(V)
    }
}

impl<'a> RawObject<'a> {
    /// Parses the top level of a JSON object; `Err` if the bytes are not one.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, serde_json::Error> {
        let Entries(entries) = serde_json::from_slice(bytes)?;
        Ok(RawObject { entries })
    }

    /// [`parse`](Self::parse) for bytes already known to be a valid JSON object (the proxy
    /// validated them and [`RequestFacts`](crate::facts::RequestFacts) say so): the top level
    /// is scanned, skipping values with `memchr`, instead of parsed. On bytes that are not
    /// valid JSON the result is unspecified (but never a panic); `None` when the scan fails.
    pub(crate) fn scan_valid(bytes: &'a [u8]) -> Option<Self> {
        let text = std::str::from_utf8(bytes).ok()?;
        let mut entries = Vec::new();
        let walked = walk_object(bytes, |key, escaped, start| {
            let end = scan::value(bytes, start).and_then(|end| {
                let key = match escaped {
                    false => Cow::Borrowed(text.get(key)?),
                    true => Cow::Owned(serde_json::from_str(text.get(key)?).ok()?),
                };
                entries.push((key, Cow::Borrowed(text.get(start..end)?)));
                Some(end)
            });
            match end {
                Some(end) => ControlFlow::Continue(Some(end)),
                None => ControlFlow::Break(()),
            }
        })?;
        walked.is_continue().then_some(RawObject { entries })
    }

    /// [`parse`](Self::parse)'s object, and where each entry sits in `bytes`, so a later reader
    /// of the same bytes has the object again without walking them
    /// ([`from_spans`](Self::from_spans)).
    ///
    /// One pass: the top level is walked here and each value validated by serde_json as it is
    /// passed over (as `parse` validates it), instead of a parse that keeps raw values (which
    /// checks their UTF-8 again) and a walk after it. `Some` only for bytes `parse` accepts;
    /// `None` also for some it accepts (invalid UTF-8 inside a value, which serde_json passes
    /// over): ask `parse` then.
    #[cfg_attr(not(feature = "proxy"), allow(dead_code))]
    pub(crate) fn parse_with_spans(bytes: &'a [u8]) -> Option<(Self, ObjectSpans)> {
        let text = std::str::from_utf8(bytes).ok()?;
        // Request bodies have a dozen or so top-level fields: no regrowing on the way.
        let mut entries = Vec::with_capacity(16);
        let mut spans = Vec::with_capacity(16);
        let walked = walk_object(bytes, |key, escaped, start| {
            let end = (|| {
                let raw_key = text.get(key.clone())?;
                let (name, span_key) = match escaped {
                    true => {
                        let k: String = serde_json::from_str(raw_key).ok()?;
                        (Cow::Owned(k.clone()), SpanKey::Unescaped(k))
                    }
                    // serde_json refuses a raw control character in a string.
                    false if raw_key.bytes().any(|b| b < 0x20) => return None,
                    false => (Cow::Borrowed(raw_key), SpanKey::At(key)),
                };
                let mut values = serde_json::Deserializer::from_slice(bytes.get(start..)?)
                    .into_iter::<serde::de::IgnoredAny>();
                values.next()?.ok()?;
                let end = start + values.byte_offset();
                entries.push((name, Cow::Borrowed(text.get(start..end)?)));
                spans.push((span_key, start..end));
                Some(end)
            })();
            match end {
                Some(end) => ControlFlow::Continue(Some(end)),
                None => ControlFlow::Break(()),
            }
        })?;
        // Only whitespace may follow the object, as for `parse`.
        let ControlFlow::Continue(after) = walked else {
            return None;
        };
        (scan::ws(bytes, after) == bytes.len())
            .then_some((RawObject { entries }, ObjectSpans { entries: spans }))
    }

    /// The object [`parse_with_spans`](Self::parse_with_spans) gave for these same `bytes`,
    /// without parsing or scanning them; `None` if a span does not fit them (other bytes).
    pub(crate) fn from_spans(bytes: &'a [u8], spans: &ObjectSpans) -> Option<Self> {
        let text = std::str::from_utf8(bytes).ok()?;
        let mut entries = Vec::with_capacity(spans.entries.len());
        for (key, value) in &spans.entries {
            let key = match key {
                SpanKey::At(at) => Cow::Borrowed(text.get(at.clone())?),
                SpanKey::Unescaped(k) => Cow::Owned(k.clone()),
            };
            entries.push((key, Cow::Borrowed(text.get(value.clone())?)));
        }
        Some(RawObject { entries })
    }

    /// The raw JSON text of a field. A key given twice reads as its last value, as serde_json,
    /// Python, Go and JavaScript read it (so the upstream sees what the layers saw).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_ref())
    }

    /// Whether the field is present.
    pub fn contains(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// A string field's value (`None` if absent or not a string).
    pub fn get_str(&self, key: &str) -> Option<String> {
        serde_json::from_str::<String>(self.get(key)?).ok()
    }

    /// A field parsed as `T`.
    pub fn get_as<T: serde::de::DeserializeOwned>(&self, key: &str) -> Option<T> {
        serde_json::from_str(self.get(key)?).ok()
    }

    /// Sets a field to raw JSON text (replacing in place, or appending).
    ///
    /// A key given twice keeps one entry, in the first one's place: a value set here is the
    /// value every reader of the body sees.
    pub fn set(&mut self, key: &str, raw_json: impl Into<String>) {
        let raw = Cow::Owned(raw_json.into());
        match self.entries.iter().position(|(k, _)| k == key) {
            Some(first) => {
                self.entries[first].1 = raw;
                let mut i = 0;
                self.entries.retain(|(k, _)| {
                    i += 1;
                    i - 1 == first || k != key
                });
            }
            None => self.entries.push((Cow::Owned(key.to_string()), raw)),
        }
    }

    /// Sets a field to a serialisable value.
    pub fn set_value<T: serde::Serialize>(&mut self, key: &str, value: &T) {
        if let Ok(text) = serde_json::to_string(value) {
            self.set(key, text);
        }
    }

    /// Removes a field (every occurrence of a key given twice); returns its raw text (the
    /// value [`get`](Self::get) read).
    pub fn remove(&mut self, key: &str) -> Option<String> {
        let value = self.get(key)?.to_owned();
        self.entries.retain(|(k, _)| k != key);
        Some(value)
    }

    /// Renames a field in place (keeping its position); no-op if absent or `to` exists.
    pub fn rename(&mut self, from: &str, to: &str) {
        if self.contains(to) {
            return;
        }
        if self.entries.iter().filter(|(k, _)| k == from).count() > 1 {
            // One entry for a key given twice (its last value), so none is left behind.
            let last = self.get(from).unwrap_or_default().to_owned();
            self.set(from, last);
        }
        if let Some((k, _)) = self.entries.iter_mut().find(|(k, _)| k == from) {
            *k = Cow::Owned(to.to_string());
        }
    }

    /// The entries in order: each key (unescaped) and its raw JSON text.
    #[cfg_attr(not(feature = "proxy"), allow(dead_code))]
    pub(crate) fn entries(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().map(|(k, v)| (k.as_ref(), v.as_ref()))
    }

    /// The field names, in order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|(k, _)| k.as_ref())
    }

    /// The object as JSON bytes: untouched values copied as they were.
    pub fn to_bytes(&self) -> Bytes {
        let len = self
            .entries
            .iter()
            .map(|(k, v)| k.len() + v.len() + 4)
            .sum::<usize>()
            + 2;
        let mut out = Vec::with_capacity(len);
        out.push(b'{');
        for (i, (k, v)) in self.entries.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            // Writing a string into a Vec cannot fail.
            let _ = serde_json::to_writer(&mut out, k.as_ref());
            out.push(b':');
            out.extend_from_slice(v.as_bytes());
        }
        out.push(b'}');
        Bytes::from(out)
    }
}

/// The items of a raw JSON array, each as raw text; `None` if it is not an array.
pub fn array_items(raw: &str) -> Option<Vec<&str>> {
    let items: Vec<&RawValue> = serde_json::from_str(raw).ok()?;
    Some(items.into_iter().map(RawValue::get).collect())
}

/// Joins raw JSON items into an array.
pub fn join_array<'s>(items: impl IntoIterator<Item = &'s str>) -> String {
    let mut out = String::from("[");
    for (i, item) in items.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(item);
    }
    out.push(']');
    out
}

/// The items of a raw JSON array, split by scanning rather than parsing; `None` if it is not
/// a well-formed array.
///
/// Meant for values that were already validated (a [`RawObject`] value is): string contents
/// are skipped with `memchr`, so splitting a long `input` costs a fraction of a parse.
///
/// ```
/// use tower_responses::json::scan_array_items;
///
/// assert_eq!(scan_array_items(r#"[ {"a":"]"} , 2,"x\"]" ]"#).unwrap(), [r#"{"a":"]"}"#, "2", r#""x\"]""#]);
/// assert_eq!(scan_array_items("[]").unwrap(), Vec::<&str>::new());
/// assert!(scan_array_items("[1,").is_none());
/// ```
pub fn scan_array_items(raw: &str) -> Option<Vec<&str>> {
    let d = raw.as_bytes();
    let mut i = scan::ws(d, 0);
    if d.get(i) != Some(&b'[') {
        return None;
    }
    let mut items = Vec::new();
    i = scan::ws(d, i + 1);
    if d.get(i) == Some(&b']') {
        return Some(items);
    }
    loop {
        let end = scan::value(d, i)?;
        items.push(raw.get(i..end)?);
        i = scan::ws(d, end);
        match d.get(i)? {
            b',' => i = scan::ws(d, i + 1),
            b']' => return Some(items),
            _ => return None,
        }
    }
}

/// Where the raw value of a top-level field sits in a raw JSON object, found by scanning
/// (see [`scan_array_items`]); `None` if absent or the object is not well formed.
///
/// ```
/// use tower_responses::json::scan_field;
///
/// let item = r#"{"content":"role: \"system\"","role" : "system"}"#;
/// let span = scan_field(item, "role").unwrap();
/// assert_eq!(&item[span], r#""system""#);
/// ```
pub fn scan_field(raw: &str, key: &str) -> Option<std::ops::Range<usize>> {
    let d = raw.as_bytes();
    let start = find_in_object(d, |k, escaped, at| {
        // An escaped key is compared after unescaping; plain keys need no allocation.
        let matches = match escaped {
            false => k == key.as_bytes(),
            true => serde_json::from_slice::<String>(k).is_ok_and(|k| k == key),
        };
        matches.then_some(at)
    })?;
    Some(start..scan::value(d, start)?)
}

/// Finds a top-level entry of the raw JSON object `d` (bytes that may not be UTF-8, such as
/// an SSE event's data): `visit` gets each key (its raw bytes between the quotes, or with
/// the quotes when `escaped`, ready to unescape) and where its value starts, until it
/// returns `Some`. Only the values passed over are skipped, so a field found early costs
/// nothing of what follows it. `None` when no entry is claimed or the object is not well
/// formed up to there.
pub(crate) fn find_in_object<T>(
    d: &[u8],
    mut visit: impl FnMut(&[u8], bool, usize) -> Option<T>,
) -> Option<T> {
    let walked = walk_object(d, |key, escaped, at| match visit(&d[key], escaped, at) {
        Some(found) => ControlFlow::Break(found),
        None => ControlFlow::Continue(None),
    })?;
    walked.break_value()
}

/// The one walk over a raw object's top level behind [`find_in_object`] and
/// [`RawObject::scan_valid`].
///
/// `visit` gets each key's span (between the quotes; with them when `escaped`) and where its
/// value starts, and says what next: `Continue(None)` skips the value, `Continue(Some(end))`
/// goes on from `end` (the visitor measured the value itself), `Break(t)` stops. The walk
/// gives `Some(Break(t))` when stopped, `Some(Continue(after))` at the object's end (`after`
/// the index past its `}`), `None` when the bytes are not an object's top level.
fn walk_object<T>(
    d: &[u8],
    mut visit: impl FnMut(Range<usize>, bool, usize) -> ControlFlow<T, Option<usize>>,
) -> Option<ControlFlow<T, usize>> {
    let mut i = scan::ws(d, 0);
    if d.get(i) != Some(&b'{') {
        return None;
    }
    i = scan::ws(d, i + 1);
    if d.get(i) == Some(&b'}') {
        return Some(ControlFlow::Continue(i + 1));
    }
    loop {
        if d.get(i) != Some(&b'"') {
            return None;
        }
        let (key_end, escaped) = scan::string_end(d, i + 1)?;
        let key = match escaped {
            false => i + 1..key_end,
            true => i..key_end + 1,
        };
        i = scan::ws(d, key_end + 1);
        if d.get(i) != Some(&b':') {
            return None;
        }
        i = scan::ws(d, i + 1);
        let end = match visit(key, escaped, i) {
            ControlFlow::Break(found) => return Some(ControlFlow::Break(found)),
            ControlFlow::Continue(Some(end)) => end,
            ControlFlow::Continue(None) => scan::value(d, i)?,
        };
        i = scan::ws(d, end);
        match d.get(i)? {
            b',' => i = scan::ws(d, i + 1),
            b'}' => return Some(ControlFlow::Continue(i + 1)),
            _ => return None,
        }
    }
}

/// The scanner shared with [`crate::sse`]: one implementation of "skip a JSON value".
mod scan {
    pub(super) use crate::sse::scan::{skip_value as value, skip_ws as ws, string_end};
}

/// The `type` of a raw JSON object (an `input` item), if it has a string one.
pub fn item_type(raw: &str) -> Option<&str> {
    crate::sse::sniff_type(raw.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A key given twice (found by the `normalize_body` fuzz target): the layers read what
    /// serde_json and the upstream read, the last value, and an edit leaves one entry.
    #[test]
    fn a_key_given_twice_reads_as_its_last_value_and_edits_leave_one() {
        let body = br#"{"a":1,"max_output_tokens":8192,"b":2,"max_output_tokens":8193}"#;
        let obj = RawObject::parse(body).unwrap();
        assert_eq!(obj.get("max_output_tokens"), Some("8193"));

        let mut removed = obj.clone();
        assert_eq!(removed.remove("max_output_tokens").as_deref(), Some("8193"));
        assert_eq!(&removed.to_bytes()[..], br#"{"a":1,"b":2}"#);

        let mut set = obj.clone();
        set.set("max_output_tokens", "5");
        assert_eq!(
            &set.to_bytes()[..],
            br#"{"a":1,"max_output_tokens":5,"b":2}"#
        );

        let mut renamed = obj;
        renamed.rename("max_output_tokens", "cap");
        assert_eq!(&renamed.to_bytes()[..], br#"{"a":1,"cap":8193,"b":2}"#);
    }

    #[test]
    fn keeps_untouched_bytes_and_escapes_keys() {
        let body = br#"{ "a\"b" : 1, "input" : [ 1 ,2 ] }"#;
        let obj = RawObject::parse(body).unwrap();
        assert_eq!(&obj.to_bytes()[..], br#"{"a\"b":1,"input":[ 1 ,2 ]}"#);
        assert!(RawObject::parse(b"[1]").is_err());
        assert!(RawObject::parse(b"{\"a\":").is_err());
    }

    #[test]
    fn rename_and_arrays() {
        let mut obj = RawObject::parse(br#"{"x":1,"y":[{"type":"reasoning"},2]}"#).unwrap();
        obj.rename("x", "z");
        assert_eq!(obj.keys().collect::<Vec<_>>(), ["z", "y"]);
        let items = array_items(obj.get("y").unwrap()).unwrap();
        assert_eq!(item_type(items[0]), Some("reasoning"));
        assert_eq!(join_array(items), r#"[{"type":"reasoning"},2]"#);
    }

    #[test]
    fn scanning_agrees_with_parsing_and_never_panics() {
        let raw = r#"[{"role":"system","content":"a \"]\" b"},[1,[2]],"\\",-1.5e3,true,null,{}]"#;
        assert_eq!(scan_array_items(raw), array_items(raw));
        for bad in [
            "[",
            "[\"",
            "[\"\\",
            "[{]",
            "[1 2]",
            "{\"a\"",
            "{\"a\":",
            "{\"a\":1,",
            "\u{e9}",
            "[é]",
        ] {
            let _ = scan_array_items(bad);
            let _ = scan_field(bad, "a");
        }
        assert_eq!(
            scan_field(r#"{"r\u006fle":"x","role":"y"}"#, "role"),
            Some(13..16)
        );
        assert_eq!(scan_field(r#"{"a":{"role":"x"}}"#, "role"), None);
    }

    fn entries(o: &RawObject<'_>) -> Vec<(String, String)> {
        o.entries
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn spans_give_the_parsed_object_again_and_only_for_its_own_bytes() {
        for body in [
            r#"{}"#,
            r#" { "model" : "gpt-5.5" , "input":[{"role":"user","content":"a \"}\" b"}] } "#,
            r#"{"r\u006fle":"x","n":-1.5e3,"t":true,"z":null,"o":{"k":[1,{"a":"}"}]},"s":"é"}"#,
            r#"{"a":1,"max_output_tokens":8192,"a":2}"#,
        ] {
            let parsed = RawObject::parse(body.as_bytes()).unwrap();
            let (walked, spans) = RawObject::parse_with_spans(body.as_bytes()).unwrap();
            assert_eq!(entries(&walked), entries(&parsed), "{body}");
            let again = RawObject::from_spans(body.as_bytes(), &spans).unwrap();
            assert_eq!(entries(&again), entries(&parsed), "{body}");
            assert_eq!(again.to_bytes(), parsed.to_bytes(), "{body}");
        }
        let (_, spans) = RawObject::parse_with_spans(br#"{"model":"gpt-5.5"}"#).unwrap();
        // Whatever `parse` refuses, this refuses too.
        for bad in [
            "",
            "[]",
            "{",
            "{}}",
            "{} x",
            r#"{"a":}"#,
            r#"{"a":1 "b":2}"#,
            r#"{"a":1x}"#,
            r#"{"a":tru}"#,
            r#"{"a":"\q"}"#,
            "{\"\u{1}\":1}",
            r#"{"a":[1,]}"#,
            r#"{"a":01}"#,
            r#"{"a\":1}"#,
            "\u{ff}",
        ] {
            assert!(RawObject::parse(bad.as_bytes()).is_err(), "{bad}");
            assert!(
                RawObject::parse_with_spans(bad.as_bytes()).is_none(),
                "{bad}"
            );
        }
        assert!(RawObject::from_spans(b"{}", &spans).is_none());
        // A span ending inside a character of other bytes.
        assert!(RawObject::from_spans("{\"model\":\"gpt-5ééé\"}".as_bytes(), &spans).is_none());
    }

    #[test]
    fn scanning_a_valid_object_gives_what_parsing_gives() {
        for body in [
            r#"{}"#,
            r#" { "model" : "gpt-5.5" , "input":[{"role":"user","content":"a \"}\" b"}] } "#,
            r#"{"r\u006fle":"x","n":-1.5e3,"t":true,"z":null,"o":{"k":[1,{"a":"}"}]},"s":"é"}"#,
            r#"{"input":"[\"not\", \"an array\"]","tools":[],"stream":false}"#,
        ] {
            let parsed = RawObject::parse(body.as_bytes()).unwrap();
            let scanned = RawObject::scan_valid(body.as_bytes()).unwrap();
            assert_eq!(entries(&scanned), entries(&parsed), "{body}");
            assert_eq!(scanned.to_bytes(), parsed.to_bytes(), "{body}");
        }
        for bad in ["", "[]", "{", r#"{"a":}"#, r#"{"a":1 "b":2}"#, "\u{ff}"] {
            let _ = RawObject::scan_valid(bad.as_bytes());
        }
    }
}
