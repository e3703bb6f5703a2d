use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use crate::credentials::PoolState;

/// Most upstreams remembered, and most parameters per upstream: the names come from upstream
/// messages, so the memory they take must stay bounded whatever an upstream says.
const MAX_UPSTREAMS: usize = 256;
const MAX_PARAMS: usize = 64;
const MAX_PARAM_LEN: usize = 64;
/// The longest a learned refusal is kept, whatever the configuration says.
const MAX_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

/// Parameters upstreams refused, remembered per upstream for a while.
///
/// Shared by clones; keyed by the request's scheme, authority and profile. With a shared
/// store ([`LearnedParams::shared`]) what one replica learns every replica drops, so an
/// upstream refuses a parameter once per fleet rather than once per replica.
#[derive(Clone, Default)]
pub struct LearnedParams {
    inner: Arc<Mutex<HashMap<String, HashMap<String, Instant>>>>,
    shared: Option<Arc<dyn PoolState>>,
}

impl std::fmt::Debug for LearnedParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LearnedParams")
            .field("shared", &self.shared.is_some())
            .finish_non_exhaustive()
    }
}

/// The family of learned parameters in a shared store.
const FACT_KIND: &str = "param";

impl LearnedParams {
    /// An empty memory.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty memory that also learns from, and teaches, the replicas sharing `state`.
    pub fn shared(state: Arc<dyn PoolState>) -> Self {
        LearnedParams {
            shared: Some(state),
            ..Self::default()
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, HashMap<String, Instant>>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Remembers that `upstream` refuses `param` until `ttl` from now.
    pub fn learn(&self, upstream: &str, param: &str, ttl: Duration) {
        if let Some(state) = &self.shared {
            if param.len() <= MAX_PARAM_LEN {
                let until = SystemTime::now() + ttl.min(MAX_TTL);
                state.learn_fact(FACT_KIND, &format!("{upstream} {param}"), until);
            }
        }
        let now = Instant::now();
        // A configured TTL of centuries must not overflow the clock: cap it at a year.
        let until = now + ttl.min(MAX_TTL);
        let mut map = self.lock();
        if !map.contains_key(upstream) && map.len() >= MAX_UPSTREAMS {
            map.retain(|_, params| {
                params.retain(|_, t| *t > now);
                !params.is_empty()
            });
            if map.len() >= MAX_UPSTREAMS {
                return;
            }
        }
        let params = map.entry(upstream.to_string()).or_default();
        params.retain(|_, t| *t > now);
        if params.len() < MAX_PARAMS || params.contains_key(param) {
            params.insert(param.to_string(), until);
        }
    }

    /// The parameters `upstream` currently refuses (another replica's findings included).
    pub fn params(&self, upstream: &str) -> Vec<String> {
        let now = Instant::now();
        let mut out = self.lock().get(upstream).map_or_else(Vec::new, |params| {
            params
                .iter()
                .filter(|(_, t)| **t > now)
                .map(|(p, _)| p.clone())
                .collect::<Vec<_>>()
        });
        if let Some(state) = &self.shared {
            for fact in state.facts(FACT_KIND) {
                if let Some(param) = fact
                    .strip_prefix(upstream)
                    .and_then(|rest| rest.strip_prefix(' '))
                {
                    if !out.iter().any(|p| p == param) && out.len() < MAX_PARAMS {
                        out.push(param.to_string());
                    }
                }
            }
        }
        out
    }
}

/// The parameter named by an `Unsupported parameter: X` message, in either quoting
/// (`'X'`, `"X"`, or bare), if it looks like a field name.
pub(crate) fn unsupported_param(message: &str) -> Option<String> {
    const NEEDLE: &str = "unsupported parameter";
    let lower = message.to_ascii_lowercase();
    let at = lower.find(NEEDLE)? + NEEDLE.len();
    let rest = message.get(at..)?.trim_start_matches([':', ' ']);
    let rest = rest.trim_start_matches(['\'', '"', '`']);
    let end = rest
        .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
        .unwrap_or(rest.len());
    let name = rest[..end].trim_end_matches('.');
    (!name.is_empty() && name.len() <= MAX_PARAM_LEN).then(|| name.to_string())
}

/// The message of a 400 body in either envelope: `{"error":{"message"}}` or `{"detail"}`.
pub(crate) fn error_message(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Body {
        error: Option<Inner>,
        detail: Option<serde_json::Value>,
        message: Option<String>,
    }
    #[derive(serde::Deserialize)]
    struct Inner {
        message: Option<String>,
    }
    let b: Body = serde_json::from_slice(body).ok()?;
    b.error
        .and_then(|e| e.message)
        .or(match b.detail {
            Some(serde_json::Value::String(s)) => Some(s),
            Some(serde_json::Value::Object(m)) => m
                .get("message")
                .and_then(|v| v.as_str())
                .map(str::to_string),
            _ => None,
        })
        .or(b.message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learned_on_one_shared_store_is_everyones() {
        let state: Arc<dyn PoolState> = Arc::new(crate::credentials::MemoryState::default());
        let (a, b) = (
            LearnedParams::shared(state.clone()),
            LearnedParams::shared(state),
        );
        a.learn("http://up", "foo_bar", Duration::from_secs(60));
        assert_eq!(b.params("http://up"), ["foo_bar"]);
        assert!(b.params("http://other").is_empty());
        assert!(
            b.params("http://u").is_empty(),
            "a prefix of the upstream is another upstream"
        );
        assert!(LearnedParams::new().params("http://up").is_empty());
    }

    #[test]
    fn a_huge_ttl_does_not_panic() {
        let m = LearnedParams::new();
        m.learn("https://up", "temperature", Duration::MAX);
    }

    #[test]
    fn parses_both_envelopes_and_quotings() {
        let a = br#"{"error":{"message":"Unsupported parameter: 'temperature' is not supported with this model.","type":"invalid_request_error","param":"temperature","code":"unsupported_parameter"}}"#;
        let m = error_message(a).unwrap();
        assert_eq!(unsupported_param(&m).as_deref(), Some("temperature"));
        let b = br#"{"detail":"Unsupported parameter: max_output_tokens"}"#;
        let m = error_message(b).unwrap();
        assert_eq!(unsupported_param(&m).as_deref(), Some("max_output_tokens"));
        assert_eq!(
            unsupported_param("unsupported parameter: \"reasoning.summary\".").as_deref(),
            Some("reasoning.summary")
        );
        assert_eq!(unsupported_param("Instructions are required"), None);
        assert_eq!(unsupported_param("Unsupported parameter: "), None);
        assert_eq!(
            unsupported_param(&format!("Unsupported parameter: {}", "x".repeat(100))),
            None
        );
        assert_eq!(error_message(b"not json"), None);
    }

    #[test]
    fn remembers_per_upstream_and_forgets() {
        let l = LearnedParams::new();
        l.learn("http://a#generic", "foo", Duration::from_secs(60));
        l.learn("http://a#generic", "bar", Duration::ZERO);
        assert_eq!(l.params("http://a#generic"), ["foo"]);
        assert!(l.params("http://b#generic").is_empty());
    }

    #[test]
    fn memory_is_bounded() {
        let l = LearnedParams::new();
        for i in 0..(MAX_PARAMS + 10) {
            l.learn("u", &format!("p{i}"), Duration::from_secs(60));
        }
        assert_eq!(l.params("u").len(), MAX_PARAMS);
    }
}
