//! Regression tests for what the fuzz targets in `fuzz/` found (README, "Reliability").
//! Each test names its target and says what a user saw before the fix.

mod common;

use common::*;
use http::StatusCode;
use serde_json::{Value, json};
use tower_responses::json::{scan_array_items, scan_field};
use tower_responses::profile::Profile;
use tower_responses::sse::sniff_type;
use tower_responses::testing::{MockUpstream, codex_strict};

/// A JSON value nested `depth` levels deep (objects and arrays alternating).
fn nested(depth: usize) -> Value {
    (0..depth).fold(json!("leaf"), |inner, level| match level % 2 {
        0 => json!([inner]),
        _ => json!({ "k": inner }),
    })
}

/// json_scan, normalize_body: the top-level scanner gave up on values nested more than 64
/// levels deep (serde_json reads 128), so a body the proxy had validated was forwarded untouched: the
/// Codex backend got `max_output_tokens` and its other refused fields and answered 400.
#[tokio::test]
async fn a_deeply_nested_body_is_still_normalized_through_the_proxy() {
    let mock = MockUpstream::start().await.unwrap();
    mock.set_handler(codex_strict());
    let mut cfg = config_for(mock.base_url());
    cfg.profile_override = Some(Profile::ChatgptCodex);
    cfg.credentials = vec!["codex-access-token-xxxxxxxxxxxx".parse().unwrap()];
    let proxy = start_proxy(cfg).await;
    let body = json!({
        "model": "gpt-5.5",
        "input": [{"role": "user", "content": [{"type": "input_text", "text": "hi"}]}],
        "tools": [{"type": "function", "name": "deep", "parameters": nested(100)}],
        "stream": true,
        "max_output_tokens": 8192,
        "temperature": 0.2
    });
    let (s, _, b) = send_collect(
        &client(),
        json_req(&proxy.url("/v1/responses"), None, body.clone()),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    let sent = mock.requests().last().unwrap().json().unwrap();
    assert!(
        sent.get("max_output_tokens").is_none(),
        "not normalized: {sent}"
    );
    assert!(sent.get("temperature").is_none(), "not normalized: {sent}");
    // The deep field went through byte for byte.
    assert_eq!(sent["tools"], body["tools"]);
}

/// json_scan: the scanners read any depth serde_json reads (128 levels).
#[test]
fn scanners_read_values_nested_past_64_levels() {
    for depth in [63, 64, 65, 100, 126] {
        let doc = json!({"type": "x", "deep": nested(depth), "role": "system"}).to_string();
        assert_eq!(
            &doc[scan_field(&doc, "role").unwrap()],
            "\"system\"",
            "depth {depth}"
        );
        let list = format!("[{doc},1]");
        assert_eq!(scan_array_items(&list).unwrap().len(), 2, "depth {depth}");
        let late = format!(
            r#"{{"deep":{},"type":"response.completed"}}"#,
            nested(depth)
        );
        assert_eq!(
            sniff_type(late.as_bytes()),
            Some("response.completed"),
            "depth {depth}"
        );
    }
    // Mismatched brackets past the 64th level are still caught.
    let bad = format!("{{\"a\":{}{}}}", "[".repeat(70), "]".repeat(69) + "}");
    assert_eq!(scan_field(&bad, "a"), None);
}

/// hints: a wait too long for `SystemTime` (`Retry-After: 18000000000000000000`) was lost in
/// `RetryHint::until`, so the credential cooled for the 2 s default backoff instead of the
/// 24 h clamp, and the next requests went straight back to a credential the upstream had
/// told to stay away.
#[test]
fn a_wait_past_the_end_of_time_cools_for_the_longest_clamp() {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};
    use tower_responses::classify::{Failure, FailureClass};
    use tower_responses::credentials::policy::{Attempt, KeyKind, decide};
    use tower_responses::marks::Phase;

    let now = UNIX_EPOCH + Duration::from_secs(1_767_225_600);
    for (name, value) in [
        ("retry-after", "18000000000000000000"),
        ("x-ratelimit-reset-tokens", "18000000000000000000s"),
    ] {
        let mut headers = http::HeaderMap::new();
        headers.insert(name, value.parse().unwrap());
        let body = br#"{"error":{"code":"rate_limit_exceeded","message":"Rate limit reached"}}"#;
        let f = Failure::from_http_at(StatusCode::TOO_MANY_REQUESTS, &headers, body, now).unwrap();
        assert_eq!(f.class, FailureClass::RateLimited);
        let attempt = Attempt::new(Some(&f), Phase::BeforeContent, KeyKind::Key, now);
        let until = decide(&attempt, &Default::default())
            .cooldown
            .unwrap()
            .until
            .unwrap();
        let cooled = until.duration_since(now).unwrap();
        assert_eq!(cooled, Duration::from_secs(24 * 3600), "{name}: {value}");
        assert!(f.retry.until(SystemTime::UNIX_EPOCH).is_some());
    }
}
