//! Body normalization (`BodyNormalizeLayer`'s planner): the output is a valid JSON object and
//! every field no rule names keeps its exact bytes and its place.
//!
//! Input: a byte for the `max_output_tokens` policy, a byte for the rule set, a byte for
//! learned parameters, then the body.
#![no_main]

use std::collections::BTreeSet;

use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value, json};
use tower_responses::__fuzz::{Normalized, normalize};
use tower_responses::json::RawObject;
use tower_responses::normalize::{Conversion, Rule, TokenCapPolicy, codex_rules};
use tower_responses_fuzz::Cursor;

const FIELDS: [&str; 8] = [
    "input",
    "instructions",
    "stream",
    "store",
    "model",
    "temperature",
    "reasoning.effort",
    "text.verbosity",
];

/// A rule built from one byte, on one of `FIELDS`.
fn rule(b: u8) -> Rule {
    let field = FIELDS[usize::from(b & 7)];
    match b >> 3 & 7 {
        0 => Rule::strip(field),
        1 => Rule::default_value(field, json!("")),
        2 => Rule::force(field, json!(true)),
        3 => Rule::rename(field, FIELDS[usize::from(b >> 6)]),
        4 => Rule::convert(field, Conversion::StringToMessages),
        5 => Rule::convert(field, Conversion::SystemToDeveloper),
        6 => Rule::allow(field, vec![json!("low"), json!(1)]),
        _ => Rule::force(field, json!({"a": [1, null]})),
    }
}

/// The top-level fields a rule or a learned parameter named `path` may change: `parent` of
/// `parent.child`, and a top-level field named `path` itself (`rule::strip` removes one
/// spelled with the dot first).
fn touched_by(path: &str, out: &mut BTreeSet<String>) {
    out.insert(path.split('.').next().unwrap_or(path).to_owned());
    out.insert(path.to_owned());
}

/// The top-level fields a rule may change.
fn named(rule: &Rule, out: &mut BTreeSet<String>) {
    match rule {
        Rule::Strip { field }
        | Rule::Default { field, .. }
        | Rule::Force { field, .. }
        | Rule::Convert { field, .. }
        | Rule::Allow { field, .. } => touched_by(field, out),
        Rule::Rename { from, to } => {
            touched_by(from, out);
            touched_by(to, out);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Cursor::new(data);
    let policy = match input.byte() % 4 {
        0 => TokenCapPolicy::Pass,
        1 => TokenCapPolicy::Strip,
        2 => TokenCapPolicy::Reject,
        _ => TokenCapPolicy::Enforce,
    };
    let choice = input.byte();
    let mut rules = match choice & 1 {
        0 => codex_rules(),
        _ => Vec::new(),
    };
    rules.extend(
        input
            .take(usize::from(choice >> 1) % 6)
            .iter()
            .map(|&b| rule(b)),
    );
    let learned: Vec<String> = match input.byte() % 4 {
        0 => vec![],
        1 => vec!["temperature".into()],
        2 => vec!["max_output_tokens".into(), "reasoning.summary".into()],
        _ => vec!["text.format".into(), "tools".into()],
    };
    let body = input.rest();

    let plain = normalize(body, false, &rules, policy, &learned);
    let valid = serde_json::from_slice::<Map<String, Value>>(body).ok();
    let Some(value) = valid else {
        // Invalid bodies: anything but a panic. The scan's contract is for validated
        // bodies, but it must not panic on any.
        let _ = normalize(body, true, &rules, policy, &learned);
        return;
    };
    let scanned = normalize(body, true, &rules, policy, &learned);
    let before = RawObject::parse(body).expect("serde_json read it as an object");
    let keys: Vec<&str> = before.keys().collect();
    let unique = keys.iter().collect::<BTreeSet<_>>().len() == keys.len();

    let (out_body, changed, cap) = match (plain, scanned) {
        (Normalized::Rejected(e), Normalized::Rejected(_)) => {
            assert_eq!(policy, TokenCapPolicy::Reject);
            assert!(before.contains("max_output_tokens"));
            assert_eq!(e.status, 400);
            return;
        }
        (
            Normalized::Planned {
                body, changed, cap, ..
            },
            Normalized::Planned { body: scanned, .. },
        ) => {
            // The scan of a validated body plans exactly what the parse plans.
            assert_eq!(body, scanned, "scanned and parsed bodies plan differently");
            (body, changed, cap)
        }
        (a, b) => panic!("a valid object planned {a:?} parsed and {b:?} scanned"),
    };
    assert_eq!(
        out_body.is_none(),
        changed.is_empty(),
        "a change without a body, or back"
    );
    let out = out_body.as_deref().unwrap_or(body);
    let after_value: Map<String, Value> =
        serde_json::from_slice(out).expect("the normalized body is not a JSON object");
    let after = RawObject::parse(out).expect("parsed above");

    if policy == TokenCapPolicy::Enforce
        || (policy == TokenCapPolicy::Pass && learned.iter().any(|p| p == "max_output_tokens"))
    {
        let client = value.get("max_output_tokens").and_then(Value::as_u64);
        // `as_u64` reads `5.0` as nothing and so does the layer: the same answer either way.
        if before
            .get("max_output_tokens")
            .is_some_and(|r| r.parse::<u64>().is_ok())
        {
            assert_eq!(cap, client, "the enforced cap is not the client's");
        }
        assert!(!after.contains("max_output_tokens") || !unique);
    }

    if !unique {
        return;
    }
    let mut touched = BTreeSet::from(["max_output_tokens".to_owned()]);
    for r in &rules {
        named(r, &mut touched);
    }
    for p in &learned {
        touched_by(p, &mut touched);
    }
    // Every untouched field: present, byte-identical, and in the same order.
    let kept: Vec<&str> = keys
        .iter()
        .copied()
        .filter(|k| !touched.contains(*k))
        .collect();
    for k in &kept {
        assert_eq!(after.get(k), before.get(k), "untouched field {k:?} changed");
    }
    let kept_after: Vec<&str> = after.keys().filter(|k| kept.contains(k)).collect();
    assert_eq!(kept_after, kept, "untouched fields moved");
    assert!(after_value.len() >= kept.len());
});
