//! What layers need to know about a request body, read once.
//!
//! Several layers decide from the same few top-level fields (`model`, `stream`,
//! `previous_response_id`, `prompt_cache_key`). [`RequestFacts::of`] reads them on first use
//! and keeps them in the request's extensions, so the body is scanned once per request
//! however many layers ask. Only these fields are materialised; everything else (the `input`
//! history, tools) is skipped without allocating.
//!
//! ```
//! use bytes::Bytes;
//! use tower_responses::body::ReplayBody;
//! use tower_responses::facts::RequestFacts;
//!
//! let mut req = http::Request::new(ReplayBody::new(Bytes::from_static(
//!     br#"{"model":"gpt-5.5","input":[{"role":"user","content":"hi"}],"stream":true,"previous_response_id":"resp_1"}"#,
//! )));
//! let facts = RequestFacts::of(&mut req);
//! assert_eq!(facts.model.as_deref(), Some("gpt-5.5"));
//! assert_eq!(facts.stream, Some(true));
//! assert_eq!(facts.previous_response_id.as_deref(), Some("resp_1"));
//! ```

use std::sync::Arc;

use bytes::Bytes;
use http::Request;
use serde::Deserialize;

use crate::body::ReplayBody;
use crate::json::{ObjectSpans, RawObject};

/// The top-level request fields the layers decide from.
///
/// Fields of an unexpected type read as absent: deciding is the upstream's job, not ours.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestFacts {
    /// `model`.
    pub model: Option<String>,
    /// `stream`.
    pub stream: Option<bool>,
    /// `store`.
    pub store: Option<bool>,
    /// `previous_response_id`.
    pub previous_response_id: Option<String>,
    /// `prompt_cache_key` (the Codex CLI sets it to the session id).
    pub prompt_cache_key: Option<String>,
    /// Whether the body was a JSON object at all.
    pub is_json_object: bool,
}

/// A field's value if it has type `T`; anything else reads as absent.
struct Lenient<T>(Option<T>);

impl<'de, T: serde::de::DeserializeOwned> Deserialize<'de> for Lenient<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = serde_json::Value::deserialize(d)?;
        Ok(Lenient(serde_json::from_value(v).ok()))
    }
}

impl<'de> Deserialize<'de> for RequestFacts {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = RequestFacts;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<RequestFacts, A::Error> {
                let mut f = RequestFacts {
                    is_json_object: true,
                    ..RequestFacts::default()
                };
                while let Some(crate::json::Key(key)) = map.next_key()? {
                    match key.as_ref() {
                        "model" => f.model = map.next_value::<Lenient<String>>()?.0,
                        "stream" => f.stream = map.next_value::<Lenient<bool>>()?.0,
                        "store" => f.store = map.next_value::<Lenient<bool>>()?.0,
                        "previous_response_id" => {
                            f.previous_response_id = map.next_value::<Lenient<String>>()?.0
                        }
                        "prompt_cache_key" => {
                            f.prompt_cache_key = map.next_value::<Lenient<String>>()?.0
                        }
                        _ => {
                            map.next_value::<serde::de::IgnoredAny>()?;
                        }
                    }
                }
                Ok(f)
            }
        }
        d.deserialize_map(V)
    }
}

/// Cached facts, shared by reference between the layers of one request, and where the body's
/// top-level entries sit when the pass that validated it found them.
#[derive(Debug, Clone)]
struct Cached(Arc<RequestFacts>, Option<Arc<Spans>>);

/// The spans of a body's top-level entries, with the body they index: a layer checks that
/// its request still carries those very bytes before using them.
#[derive(Debug)]
struct Spans {
    body: Bytes,
    spans: ObjectSpans,
}

/// A fact field's value from its raw text, as the whole-body parse reads it; `None` when that
/// parse must decide (a nested value, whose depth limit differs out of context, or a value
/// that does not parse), so the facts and the error are exactly the whole-body parse's.
// The lenient readers serve `try_parse_with_spans`, which only the proxy edge calls.
#[cfg_attr(not(feature = "proxy"), allow(dead_code))]
fn lenient<T: serde::de::DeserializeOwned>(raw: &str) -> Option<Option<T>> {
    if raw.starts_with(['[', '{']) {
        return None;
    }
    serde_json::from_str::<Lenient<T>>(raw).ok().map(|l| l.0)
}

/// [`lenient`] for a string field, without serde for a string with nothing to unescape (the
/// common case: a model name, an id).
#[cfg_attr(not(feature = "proxy"), allow(dead_code))]
fn lenient_string(raw: &str) -> Option<Option<String>> {
    let plain = raw
        .strip_prefix('"')
        .and_then(|r| r.strip_suffix('"'))
        .filter(|inner| !inner.bytes().any(|b| b == b'\\' || b == b'"' || b < 0x20));
    match plain {
        Some(inner) => Some(Some(inner.to_owned())),
        None => lenient(raw),
    }
}

/// [`lenient`] for a boolean field, without serde for the literals.
#[cfg_attr(not(feature = "proxy"), allow(dead_code))]
fn lenient_bool(raw: &str) -> Option<Option<bool>> {
    match raw {
        "true" => Some(Some(true)),
        "false" => Some(Some(false)),
        _ => lenient(raw),
    }
}

impl RequestFacts {
    /// Reads the facts from a body (a non-object body gives empty facts).
    pub fn parse(body: &[u8]) -> RequestFacts {
        Self::try_parse(body).unwrap_or_default()
    }

    /// Reads the facts, or says why the body is not a JSON object. This one pass also
    /// validates the whole body, so an edge that must reject bad JSON need not parse it twice.
    pub fn try_parse(body: &[u8]) -> Result<RequestFacts, serde_json::Error> {
        serde_json::from_slice::<RequestFacts>(body)
    }

    /// [`try_parse`](Self::try_parse), and where the body's top-level entries sit, from the
    /// same one pass: the edge validates the body, and normalization edits it without walking
    /// it again ([`attach_parsed`](Self::attach_parsed), [`raw_object`](Self::raw_object)).
    /// The facts and any error are exactly [`try_parse`](Self::try_parse)'s.
    #[cfg_attr(not(feature = "proxy"), allow(dead_code))]
    pub(crate) fn try_parse_with_spans(
        body: &[u8],
    ) -> Result<(RequestFacts, Option<ObjectSpans>), serde_json::Error> {
        if let Some((obj, spans)) = RawObject::parse_with_spans(body) {
            if let Some(facts) = Self::from_object(&obj) {
                return Ok((facts, Some(spans)));
            }
        }
        // Not an object (or one the walk leaves to serde_json), or a fact field only the
        // whole-body parse can read: it decides, and says why a body is refused.
        Self::try_parse(body).map(|facts| (facts, None))
    }

    /// The facts of a parsed object, read as the [`Deserialize`] impl reads them (every
    /// occurrence of a key given twice, the last one kept); `None` when a field needs the
    /// whole-body parse (see [`lenient`]).
    #[cfg_attr(not(feature = "proxy"), allow(dead_code))]
    fn from_object(obj: &RawObject<'_>) -> Option<RequestFacts> {
        let mut f = RequestFacts {
            is_json_object: true,
            ..RequestFacts::default()
        };
        for (key, raw) in obj.entries() {
            match key {
                "model" => f.model = lenient_string(raw)?,
                "stream" => f.stream = lenient_bool(raw)?,
                "store" => f.store = lenient_bool(raw)?,
                "previous_response_id" => f.previous_response_id = lenient_string(raw)?,
                "prompt_cache_key" => f.prompt_cache_key = lenient_string(raw)?,
                _ => {}
            }
        }
        Some(f)
    }

    /// Caches facts already read (by [`try_parse`](Self::try_parse)) on a request.
    pub fn attach<B>(req: &mut Request<B>, facts: RequestFacts) {
        req.extensions_mut().insert(Cached(Arc::new(facts), None));
    }

    /// Caches what [`try_parse_with_spans`](Self::try_parse_with_spans) read from this
    /// request's body.
    #[cfg_attr(not(feature = "proxy"), allow(dead_code))]
    pub(crate) fn attach_parsed(
        req: &mut Request<ReplayBody>,
        facts: RequestFacts,
        spans: Option<ObjectSpans>,
    ) {
        let spans = spans.map(|spans| {
            Arc::new(Spans {
                body: req.body().bytes().clone(),
                spans,
            })
        });
        req.extensions_mut().insert(Cached(Arc::new(facts), spans));
    }

    /// The body as a [`RawObject`], from the spans the validating pass found, when the
    /// request still carries the bytes they index; `None` otherwise (then parse or scan).
    pub(crate) fn raw_object(req: &Request<ReplayBody>) -> Option<RawObject<'_>> {
        let Cached(_, Some(found)) = req.extensions().get::<Cached>()? else {
            return None;
        };
        let body = req.body().bytes();
        // The same buffer (kept alive by `found`), so the same bytes.
        let same = found.body.as_ptr() == body.as_ptr() && found.body.len() == body.len();
        same.then(|| RawObject::from_spans(body, &found.spans))?
    }

    /// The request's facts, read on first use and cached in its extensions. A layer that
    /// rewrites the body must call [`RequestFacts::invalidate`].
    pub fn of(req: &mut Request<ReplayBody>) -> Arc<RequestFacts> {
        if let Some(Cached(f, _)) = req.extensions().get::<Cached>() {
            return f.clone();
        }
        let facts = Arc::new(RequestFacts::parse(req.body().bytes()));
        req.extensions_mut().insert(Cached(facts.clone(), None));
        facts
    }

    /// The facts cached on the request, if a layer or the proxy read them already.
    pub fn cached<B>(req: &Request<B>) -> Option<Arc<RequestFacts>> {
        req.extensions()
            .get::<Cached>()
            .map(|Cached(f, _)| f.clone())
    }

    /// Drops the cached facts after a body rewrite.
    pub fn invalidate<B>(req: &mut Request<B>) {
        req.extensions_mut().remove::<Cached>();
    }
}

/// The session a request belongs to, for affinity and per-session accounting: the
/// `session_id` / `session-id` header, else `prompt_cache_key`.
pub fn session_key(headers: &http::HeaderMap, facts: &RequestFacts) -> Option<String> {
    ["session_id", "session-id"]
        .iter()
        .find_map(|h| headers.get(*h).and_then(|v| v.to_str().ok()))
        .filter(|s| !s.is_empty())
        .map(|s| s.chars().take(200).collect())
        .or_else(|| facts.prompt_cache_key.clone())
}

/// The body without `input` items of type `reasoning` that carry `encrypted_content`, and how
/// many were removed; `None` if the body is not an object with an `input` list. Everything
/// else is copied byte for byte.
pub fn without_encrypted_reasoning(body: &[u8]) -> Option<(bytes::Bytes, usize)> {
    use crate::json::{array_items, item_type, join_array};

    #[derive(Deserialize)]
    struct Encrypted<'a> {
        #[serde(borrow)]
        encrypted_content: Option<&'a serde_json::value::RawValue>,
    }

    let mut obj = RawObject::parse(body).ok()?;
    let items = array_items(obj.get("input")?)?;
    let before = items.len();
    let kept: Vec<&str> = items
        .into_iter()
        .filter(|item| {
            item_type(item) != Some("reasoning")
                || serde_json::from_str::<Encrypted<'_>>(item)
                    .ok()
                    .and_then(|e| e.encrypted_content)
                    .is_none_or(|c| c.get() == "null")
        })
        .collect();
    let removed = before - kept.len();
    let input = join_array(kept);
    obj.set("input", input);
    Some((obj.to_bytes(), removed))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The one pass the edge runs reads the same facts, and refuses the same bodies with the
    /// same message, as the whole-body parse; spans come only with bodies it read itself.
    #[test]
    fn reading_with_spans_agrees_with_the_whole_body_parse() {
        let bodies: &[&[u8]] = &[
            br#"{"model":"gpt-5.5","input":[{"role":"user","content":"hi"}],"stream":true}"#,
            br#" {"store":false,"previous_response_id":"resp_1","prompt_cache_key":"s"} "#,
            br#"{"model":"a","model":"b","stream":"yes","store":null}"#,
            br#"{"m\u006fdel":"escaped key","stream":1}"#,
            br#"{"model":1e400}"#,
            br#"{"model":"a\"b","prompt_cache_key":"\u00e9","stream":false,"store":true}"#,
            br#"{"model":"","previous_response_id":null,"stream":"true"}"#,
            br#"{"model":["nested"],"stream":{"a":true}}"#,
            b"{\"input\":\"\xff\",\"model\":\"x\"}",
            b"{\"model\":\"\xff\"}",
            br#"{"model":"gpt-5.5"} x"#,
            br#"{"model":"gpt-5.5","#,
            br#"{"a":[1,]}"#,
            br#"[1]"#,
            b"",
        ];
        for body in bodies {
            let whole = RequestFacts::try_parse(body).map_err(|e| e.to_string());
            let one = RequestFacts::try_parse_with_spans(body);
            let spans = one.as_ref().is_ok_and(|(_, s)| s.is_some());
            let one = one.map(|(f, _)| f).map_err(|e| e.to_string());
            assert_eq!(one, whole, "{}", String::from_utf8_lossy(body));
            if spans {
                let mut req = Request::new(ReplayBody::new(Bytes::copy_from_slice(body)));
                let (facts, spans) = RequestFacts::try_parse_with_spans(body).unwrap();
                RequestFacts::attach_parsed(&mut req, facts, spans);
                let obj = RequestFacts::raw_object(&req).unwrap();
                let parsed = RawObject::parse(body).unwrap();
                assert_eq!(obj.to_bytes(), parsed.to_bytes());
                // Another body on the request: the spans are not used for it.
                *req.body_mut() = ReplayBody::new(Bytes::copy_from_slice(body));
                assert!(RequestFacts::raw_object(&req).is_none());
            }
        }
        assert!(
            RequestFacts::try_parse_with_spans(bodies[0])
                .unwrap()
                .1
                .is_some()
        );
    }
}
