//! The top-level JSON scanner and field edits, against `serde_json`.
//!
//! Input: one byte of edit choices, then a document. Checked on every input: nothing panics,
//! `RawObject::parse` accepts exactly what `serde_json` accepts as an object, and the edge's
//! one-pass walk (`parse_with_spans`) accepts nothing the parse refuses and reads what it
//! reads. On a valid object: the scan (`scan_valid`) gives what the parse gives; every
//! value's raw text is the value `serde_json` read; `scan_field`, `sniff_type`,
//! `scan_array_items` agree with it; edits (`set`, `remove`, `rename`) give the object
//! `serde_json` would.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde::de::IgnoredAny;
use serde_json::{Map, Value};
use tower_responses::__fuzz::{parse_with_spans, scan_valid};
use tower_responses::json::{RawObject, array_items, scan_array_items, scan_field};
use tower_responses::sse::sniff_type;
use tower_responses_fuzz::Cursor;

fuzz_target!(|data: &[u8]| {
    let mut input = Cursor::new(data);
    let edits = input.byte();
    let doc = input.rest();

    let parsed = RawObject::parse(doc);
    // The edge's one-pass walk accepts only what the parse accepts, and reads the same.
    if let Some(walked) = parse_with_spans(doc) {
        let parsed = parsed
            .as_ref()
            .expect("parse_with_spans accepted what parse refuses");
        assert_same(&walked, parsed, "walk");
    }
    // Scanning garbage gives anything but a panic.
    let scanned = scan_valid(doc);
    let sniffed = sniff_type(doc);
    if let Ok(text) = std::str::from_utf8(doc) {
        let _ = scan_array_items(text);
        let _ = scan_field(text, "type");
    }

    let value: Option<Map<String, Value>> = serde_json::from_slice(doc).ok();
    let Some(value) = value else {
        // Not an object serde_json can hold in a `Value`. The parse may still accept it when
        // it is valid JSON whose numbers overflow an f64 (raw values keep their text), but
        // never broken JSON or a non-object.
        if parsed.is_ok() {
            let first = doc.iter().find(|b| !b.is_ascii_whitespace());
            assert!(
                first == Some(&b'{') && serde_json::from_slice::<IgnoredAny>(doc).is_ok(),
                "RawObject::parse accepted what is not a JSON object"
            );
        }
        return;
    };
    let parsed = parsed.expect("serde_json reads an object RawObject::parse refuses");
    let text = std::str::from_utf8(doc).expect("valid JSON is UTF-8");

    // The scan of a valid object is the parse.
    let scanned = scanned.expect("scan_valid failed on a valid object");
    assert_same(&scanned, &parsed, "scan");

    // Output is the same object serde_json reads (duplicates: both keep the last).
    let round: Map<String, Value> =
        serde_json::from_slice(&parsed.to_bytes()).expect("to_bytes is not JSON");
    assert_eq!(round, value, "to_bytes changed the object");

    let keys: Vec<String> = parsed.keys().map(str::to_owned).collect();
    let unique = {
        let mut k = keys.clone();
        k.sort();
        k.dedup();
        k.len() == keys.len()
    };
    for key in &keys {
        let raw = parsed.get(key).expect("a listed key has a value");
        let v: Value = serde_json::from_str(raw).expect("a raw value is not JSON");
        if unique {
            assert_eq!(&v, &value[key.as_str()], "raw value of {key:?} differs");
            let span = scan_field(text, key).expect("scan_field misses a key");
            assert_eq!(&text[span], raw, "scan_field span of {key:?}");
        }
        if let Value::Array(items) = &v {
            let scanned = scan_array_items(raw).expect("scan_array_items fails on an array");
            assert_eq!(
                Some(scanned.clone()),
                array_items(raw),
                "array split differs"
            );
            assert_eq!(scanned.len(), items.len());
        }
    }
    if unique {
        match (sniffed, value.get("type")) {
            (Some(t), Some(Value::String(s))) => assert_eq!(t, s, "sniff_type differs"),
            (Some(t), other) => panic!("sniff_type found {t:?}, serde_json {other:?}"),
            // An escaped string, or a non-string type: sniffing gives up, which is allowed.
            (None, _) => {}
        }
    }

    // Edits, mirrored on the serde_json map.
    let mut obj = parsed.clone();
    let mut want = value.clone();
    let pick = |n: u8| keys.get(usize::from(n) % keys.len().max(1)).cloned();
    if let Some(k) = pick(edits) {
        if edits & 1 == 0 {
            assert!(obj.remove(&k).is_some());
            if !obj.contains(&k) {
                want.remove(&k);
            }
        } else if !obj.contains("renamed\u{e9}") {
            obj.rename(&k, "renamed\u{e9}");
            // rename moves the first entry; with duplicates the last one still wins.
            if unique {
                let v = want.remove(&k).expect("present");
                want.insert("renamed\u{e9}".into(), v);
            }
        }
    }
    obj.set("stream", "true");
    want.insert("stream".into(), Value::Bool(true));
    obj.set_value("new\"key", &vec![1, 2]);
    want.insert("new\"key".into(), serde_json::json!([1, 2]));
    let edited: Map<String, Value> =
        serde_json::from_slice(&obj.to_bytes()).expect("edited object is not JSON");
    // With duplicate keys an edit touches the first entry while readers take the last one.
    if unique {
        assert_eq!(edited, want, "edits differ from serde_json's");
    }
});

/// `other` (the scan or the walk, named `what`) read the object the parse read.
fn assert_same(other: &RawObject<'_>, parsed: &RawObject<'_>, what: &str) {
    assert_eq!(
        other.to_bytes(),
        parsed.to_bytes(),
        "{what} and parse differ"
    );
    assert!(
        other.keys().eq(parsed.keys()),
        "{what} and parse keys differ"
    );
}
