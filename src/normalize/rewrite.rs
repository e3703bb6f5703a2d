use bytes::Bytes;

use super::config::TokenCapPolicy;
use super::rule::{Rule, strip};
use crate::error::ApiError;
use crate::json::RawObject;

/// The field whose policy is not a plain rule.
pub(crate) const MAX_OUTPUT_TOKENS: &str = "max_output_tokens";

/// What the layer does with one request body.
#[derive(Debug)]
pub(crate) enum Rewrite {
    /// Not a JSON object: forwarded untouched (the proxy rejects malformed bodies earlier).
    Untouched,
    /// Answered by the layer itself.
    Reject(ApiError),
    /// Forwarded, maybe rewritten.
    Plan(Plan),
}

#[derive(Debug, Default)]
pub(crate) struct Plan {
    /// The new body, when anything changed.
    pub(crate) body: Option<Bytes>,
    /// Labels of what changed (rule kinds and field names, never values).
    pub(crate) changed: Vec<String>,
    /// The client asked for a stream.
    pub(crate) client_stream: bool,
    /// The upstream is asked for a stream.
    pub(crate) upstream_stream: bool,
    /// The `max_output_tokens` to enforce on the way back.
    pub(crate) cap: Option<u64>,
}

/// Plans the rewrite of `body`: the cap policy first (it needs the client's value), then the
/// rules in order, then what the upstream was learnt to refuse.
///
/// `validated`: the body is known to be a JSON object (the proxy parsed it whole, and
/// [`RequestFacts`](crate::facts::RequestFacts) say so), so its top level is scanned instead
/// of parsed a second time. `parsed`: that pass's object already (see
/// [`RequestFacts::raw_object`](crate::facts::RequestFacts::raw_object)), so not even a scan.
pub(crate) fn rewrite(
    body: &[u8],
    validated: bool,
    parsed: Option<RawObject<'_>>,
    rules: &[Rule],
    policy: TokenCapPolicy,
    learned: &[String],
) -> Rewrite {
    let top = match (parsed, validated) {
        (Some(obj), _) => Some(obj),
        (None, true) => RawObject::scan_valid(body),
        (None, false) => RawObject::parse(body).ok(),
    };
    let Some(mut obj) = top else {
        return Rewrite::Untouched;
    };
    let mut plan = Plan {
        client_stream: obj.get("stream") == Some("true"),
        ..Plan::default()
    };
    // A cap the upstream was learnt to refuse is still the caller's cap: keep enforcing it.
    let policy = if policy == TokenCapPolicy::Pass && learned.iter().any(|p| p == MAX_OUTPUT_TOKENS)
    {
        TokenCapPolicy::Enforce
    } else {
        policy
    };
    if let Some(raw) = obj.get(MAX_OUTPUT_TOKENS) {
        match policy {
            TokenCapPolicy::Pass => {}
            TokenCapPolicy::Reject => {
                return Rewrite::Reject(
                    ApiError::invalid_request(
                        "Unsupported parameter: 'max_output_tokens' is not supported by this upstream.",
                    )
                    .with_code("unsupported_parameter")
                    .with_param(MAX_OUTPUT_TOKENS),
                );
            }
            TokenCapPolicy::Strip => {
                obj.remove(MAX_OUTPUT_TOKENS);
                plan.changed.push(format!("strip:{MAX_OUTPUT_TOKENS}"));
            }
            TokenCapPolicy::Enforce => {
                plan.cap = raw.parse::<u64>().ok();
                obj.remove(MAX_OUTPUT_TOKENS);
                plan.changed.push(format!("enforce:{MAX_OUTPUT_TOKENS}"));
            }
        }
    }
    for rule in rules {
        if rule.apply(&mut obj) {
            plan.changed.push(rule.to_string());
        }
    }
    for param in learned {
        if strip(&mut obj, param) {
            plan.changed.push(format!("learned:{param}"));
        }
    }
    plan.upstream_stream = obj.get("stream") == Some("true");
    if !plan.changed.is_empty() {
        plan.body = Some(obj.to_bytes());
    }
    Rewrite::Plan(plan)
}

/// The body without `param`, and the `max_output_tokens` it carried when that is the param;
/// `None` when the body does not hold it.
pub(crate) fn without_param(body: &[u8], param: &str) -> Option<(Bytes, Option<u64>)> {
    let mut obj = RawObject::parse(body).ok()?;
    let cap = (param == MAX_OUTPUT_TOKENS)
        .then(|| obj.get(MAX_OUTPUT_TOKENS).and_then(|r| r.parse().ok()))
        .flatten();
    strip(&mut obj, param).then(|| (obj.to_bytes(), cap))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::normalize::rule::codex_rules;
    use serde_json::{Value, json};

    fn plan(body: &Value, rules: &[Rule], policy: TokenCapPolicy) -> Plan {
        match rewrite(body.to_string().as_bytes(), false, None, rules, policy, &[]) {
            Rewrite::Plan(p) => p,
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn codex_rules_make_the_seed_body_acceptable() {
        let body = json!({
            "model": "gpt-5.5",
            "input": [{"role":"user","content":[{"type":"input_text","text":"hi"}]}],
            "stream": true, "store": false, "max_output_tokens": 8192,
            "reasoning": {"effort": "none"}
        });
        let p = plan(&body, &codex_rules(), TokenCapPolicy::Enforce);
        assert_eq!(p.cap, Some(8192));
        assert!(p.client_stream && p.upstream_stream);
        let out: Value = serde_json::from_slice(&p.body.unwrap()).unwrap();
        assert!(out.get("max_output_tokens").is_none());
        assert_eq!(out["instructions"], "");
        assert_eq!(out["reasoning"], body["reasoning"]);
        assert_eq!(
            p.changed,
            ["enforce:max_output_tokens", "default:instructions"]
        );
    }

    #[test]
    fn sdk_body_is_reshaped_for_codex() {
        let body = json!({
            "model": "gpt-5.5", "instructions": "mine", "input": "hello",
            "temperature": 0.3, "top_p": 1, "user": "u", "metadata": {"a": "b"},
            "previous_response_id": "resp_1", "service_tier": "flex", "store": true
        });
        let p = plan(&body, &codex_rules(), TokenCapPolicy::Enforce);
        assert!(!p.client_stream && p.upstream_stream);
        let out: Value = serde_json::from_slice(&p.body.unwrap()).unwrap();
        for gone in [
            "temperature",
            "top_p",
            "user",
            "metadata",
            "previous_response_id",
            "service_tier",
        ] {
            assert!(out.get(gone).is_none(), "{gone} kept");
        }
        assert_eq!(out["instructions"], "mine");
        assert_eq!(out["store"], false);
        assert_eq!(out["stream"], true);
        assert_eq!(out["input"][0]["content"][0]["text"], "hello");
    }

    #[test]
    fn reject_and_strip_policies() {
        let body = json!({"max_output_tokens": 5});
        match rewrite(
            body.to_string().as_bytes(),
            false,
            None,
            &[],
            TokenCapPolicy::Reject,
            &[],
        ) {
            Rewrite::Reject(e) => {
                assert_eq!(e.status, 400);
                assert_eq!(e.param.as_deref(), Some("max_output_tokens"));
            }
            other => panic!("unexpected {other:?}"),
        }
        let p = plan(&body, &[], TokenCapPolicy::Strip);
        assert_eq!(p.cap, None);
        assert_eq!(&p.body.unwrap()[..], b"{}");
        let p = plan(&body, &[], TokenCapPolicy::Pass);
        assert!(p.body.is_none());
    }

    #[test]
    fn learned_params_are_stripped_and_a_learned_cap_is_enforced() {
        let body = br#"{"foo_bar":1,"max_output_tokens":7}"#;
        let learned = vec!["foo_bar".to_string(), "max_output_tokens".to_string()];
        let Rewrite::Plan(p) = rewrite(body, false, None, &[], TokenCapPolicy::Pass, &learned)
        else {
            panic!()
        };
        assert_eq!(&p.body.unwrap()[..], b"{}");
        assert_eq!(p.cap, Some(7));
        assert_eq!(
            without_param(br#"{"a":1,"max_output_tokens":9}"#, "max_output_tokens"),
            Some((Bytes::from_static(br#"{"a":1}"#), Some(9)))
        );
        assert_eq!(without_param(br#"{"a":1}"#, "b"), None);
    }

    #[test]
    fn malformed_bodies_are_untouched() {
        for body in [&b"{\"a\":"[..], b"[1,2]", b"", b"\xff\xfe"] {
            assert!(matches!(
                rewrite(
                    body,
                    false,
                    None,
                    &codex_rules(),
                    TokenCapPolicy::Enforce,
                    &[]
                ),
                Rewrite::Untouched
            ));
        }
    }
}
