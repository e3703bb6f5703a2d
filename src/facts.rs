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

use http::Request;
use serde::Deserialize;

use crate::body::ReplayBody;

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

/// Cached facts, shared by reference between the layers of one request.
#[derive(Debug, Clone)]
struct Cached(Arc<RequestFacts>);

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

    /// Caches facts already read (by [`try_parse`](Self::try_parse)) on a request.
    pub fn attach<B>(req: &mut Request<B>, facts: RequestFacts) {
        req.extensions_mut().insert(Cached(Arc::new(facts)));
    }

    /// The request's facts, read on first use and cached in its extensions. A layer that
    /// rewrites the body must call [`RequestFacts::invalidate`].
    pub fn of(req: &mut Request<ReplayBody>) -> Arc<RequestFacts> {
        if let Some(Cached(f)) = req.extensions().get::<Cached>() {
            return f.clone();
        }
        let facts = Arc::new(RequestFacts::parse(req.body().bytes()));
        req.extensions_mut().insert(Cached(facts.clone()));
        facts
    }

    /// The facts cached on the request, if a layer or the proxy read them already.
    pub fn cached<B>(req: &Request<B>) -> Option<Arc<RequestFacts>> {
        req.extensions().get::<Cached>().map(|Cached(f)| f.clone())
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
    use crate::json::{RawObject, array_items, item_type, join_array};

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
