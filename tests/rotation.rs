//! CredentialRotateLayer through the proxy, with several credentials against the mock.

mod common;

use std::time::SystemTime;

use common::*;
use http::StatusCode;
use serde_json::json;
use tower_responses::testing::{MockUpstream, Reply, events};

const KEY_A: &str = "sk-test-aaaaaaaaaaaaaaaaaaaa-AAAA";
const KEY_B: &str = "sk-test-bbbbbbbbbbbbbbbbbbbb-BBBB";
const KEY_C: &str = "sk-test-cccccccccccccccccccc-CCCC";
const LABEL_A: &str = "key-1";

fn body() -> serde_json::Value {
    json!({"model": "gpt-5.5", "stream": true, "input": [{"role": "user", "content": "hi"}]})
}

async fn proxy_with(mock: &MockUpstream, keys: &[&str]) -> RunningProxy {
    let mut cfg = config_for(mock.base_url());
    cfg.credentials = keys.iter().map(|k| k.parse().unwrap()).collect();
    start_proxy(cfg).await
}

fn hits(mock: &MockUpstream, key: &str) -> usize {
    mock.requests()
        .iter()
        .filter(|r| r.credential.as_deref() == Some(key))
        .count()
}

fn cooldown_secs(proxy: &RunningProxy, label: &str, class: &str) -> Option<f64> {
    let until = proxy.metrics.get(
        "tr_credential_cooldown_until_seconds",
        &[("credential", label), ("class", class)],
    )?;
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    Some(until - now)
}

fn failed_stream(code: &str, message: &str) -> Reply {
    Reply::sse(vec![
        events::created("resp_x"),
        events::in_progress("resp_x"),
        events::failed("resp_x", code, message),
    ])
}

async fn run_requests(proxy: &RunningProxy, n: usize) -> Vec<(StatusCode, String)> {
    let c = client();
    let mut out = Vec::new();
    for _ in 0..n {
        let (s, _, b) = send_collect(
            &c,
            json_req(
                &proxy.url("/v1/responses"),
                Some("client-key-never-upstream"),
                body(),
            ),
        )
        .await;
        out.push((s, String::from_utf8_lossy(&b).into_owned()));
    }
    out
}

fn assert_clean_streams(results: &[(StatusCode, String)]) {
    for (s, text) in results {
        assert_eq!(*s, StatusCode::OK, "{text}");
        assert_eq!(
            text.matches("event: response.created").count(),
            1,
            "exactly one response.created: {text}"
        );
        assert!(text.contains("response.completed"), "{text}");
        assert!(!text.contains("response.failed"), "{text}");
    }
}

#[tokio::test]
async fn an_exhausted_key_in_a_200_stream_is_hit_once_then_skipped() {
    let mock = MockUpstream::start().await.unwrap();
    mock.push_for(
        KEY_A,
        failed_stream("insufficient_quota", "You exceeded your current quota"),
    );
    let proxy = proxy_with(&mock, &[KEY_A, KEY_B]).await;
    let results = run_requests(&proxy, 4).await;
    assert_clean_streams(&results);
    assert_eq!(hits(&mock, KEY_A), 1, "the exhausted key is tried once");
    assert_eq!(hits(&mock, KEY_B), 4);
    let secs = cooldown_secs(&proxy, LABEL_A, "quota_exhausted").expect("A cooling");
    assert!(
        secs > 50.0 * 60.0,
        "no reset signal: the long default applies ({secs}s)"
    );
    assert!(
        mock.requests()
            .iter()
            .all(|r| r.credential.as_deref() != Some("client-key-never-upstream"))
    );
}

#[tokio::test]
async fn a_rate_limit_cools_for_the_hinted_time() {
    let mock = MockUpstream::start().await.unwrap();
    mock.push_for(
        KEY_A,
        failed_stream(
            "rate_limit_exceeded",
            "Rate limit reached for gpt-5.5. Please try again in 20s.",
        ),
    );
    let proxy = proxy_with(&mock, &[KEY_A, KEY_B]).await;
    assert_clean_streams(&run_requests(&proxy, 3).await);
    assert_eq!(hits(&mock, KEY_A), 1);
    let secs = cooldown_secs(&proxy, LABEL_A, "rate_limited").expect("A cooling");
    assert!(
        (15.0..=21.0).contains(&secs),
        "cooling follows the 20 s hint: {secs}"
    );
}

#[tokio::test]
async fn an_http_429_usage_limit_cools_until_resets_at() {
    let mock = MockUpstream::start().await.unwrap();
    let resets_at = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3 * 3600;
    mock.push_for(
        KEY_A,
        Reply::json(
            StatusCode::TOO_MANY_REQUESTS,
            json!({"error": {"type": "usage_limit_reached", "message": "The usage limit has been reached", "plan_type": "plus", "resets_at": resets_at}}),
        ),
    );
    let proxy = proxy_with(&mock, &[KEY_A, KEY_B]).await;
    assert_clean_streams(&run_requests(&proxy, 3).await);
    assert_eq!(hits(&mock, KEY_A), 1);
    let secs = cooldown_secs(&proxy, LABEL_A, "quota_exhausted").expect("A cooling");
    assert!(
        (3.0 * 3600.0 - 10.0..=3.0 * 3600.0 + 1.0).contains(&secs),
        "until resets_at: {secs}"
    );
}

#[tokio::test]
async fn a_401_takes_a_key_out_for_a_finite_time() {
    let mock = MockUpstream::start().await.unwrap();
    mock.push_for(KEY_A, Reply::json(StatusCode::UNAUTHORIZED, json!({"error": {"message": "Incorrect API key provided", "type": "invalid_request_error", "code": "invalid_api_key"}})));
    let proxy = proxy_with(&mock, &[KEY_A, KEY_B]).await;
    assert_clean_streams(&run_requests(&proxy, 3).await);
    assert_eq!(hits(&mock, KEY_A), 1);
    // A literal key cannot be renewed: it rests (60 s, doubling on repeats) and is probed
    // again, instead of leaving the pool until a restart.
    let secs = cooldown_secs(&proxy, LABEL_A, "auth").expect("A cooling");
    assert!((55.0..=60.5).contains(&secs), "finite: {secs}");
}

#[tokio::test]
async fn a_failure_after_content_is_seen_once_and_the_next_request_goes_elsewhere() {
    let mock = MockUpstream::start().await.unwrap();
    let mut evs: Vec<_> = events::text_answer("partial answer")
        .into_iter()
        .take(5)
        .collect();
    evs.push(events::failed(
        "resp_p",
        "insufficient_quota",
        "You exceeded your current quota",
    ));
    mock.push_for(KEY_A, Reply::sse(evs));
    let proxy = proxy_with(&mock, &[KEY_A, KEY_B]).await;
    let results = run_requests(&proxy, 3).await;
    let (s, first) = &results[0];
    assert_eq!(*s, StatusCode::OK);
    assert_eq!(
        first.matches("event: response.failed").count(),
        1,
        "passed through once: {first}"
    );
    assert_eq!(first.matches("event: response.created").count(), 1);
    assert_clean_streams(&results[1..]);
    assert_eq!(
        hits(&mock, KEY_A),
        1,
        "reported to the pool, so later requests skip A"
    );
}

#[tokio::test]
async fn a_404_on_the_compact_route_cools_nothing() {
    let mock = MockUpstream::start().await.unwrap();
    mock.push(Reply::raw(
        StatusCode::NOT_FOUND,
        "application/json",
        r#"{"detail":"Not Found"}"#,
    ));
    let proxy = proxy_with(&mock, &[KEY_A, KEY_B]).await;
    let c = client();
    let (s, _, _) = send_collect(
        &c,
        json_req(
            &proxy.url("/v1/responses/compact"),
            None,
            json!({"model": "gpt-5.5", "input": []}),
        ),
    )
    .await;
    assert_eq!(
        s,
        StatusCode::NOT_FOUND,
        "the route's answer passes through"
    );
    assert_eq!(
        mock.request_count(),
        1,
        "a route error is not retried on another key"
    );
    assert_eq!(proxy.metrics.total("tr_credential_cooldowns_total"), 0.0);
    assert_clean_streams(&run_requests(&proxy, 2).await);
}

#[tokio::test]
async fn with_every_key_exhausted_the_client_gets_a_429_with_retry_after() {
    let mock = MockUpstream::start().await.unwrap();
    let resets_at = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    for key in [KEY_A, KEY_B, KEY_C] {
        mock.push_for(
            key,
            Reply::json(
                StatusCode::TOO_MANY_REQUESTS,
                json!({"error": {"type": "usage_limit_reached", "message": "The usage limit has been reached", "resets_at": resets_at}}),
            ),
        );
    }
    let proxy = proxy_with(&mock, &[KEY_A, KEY_B, KEY_C]).await;
    let c = client();
    // First request: every key fails in turn; the client gets the last upstream answer as it was.
    let (s, _, b) = send_collect(&c, json_req(&proxy.url("/v1/responses"), None, body())).await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS);
    assert!(String::from_utf8_lossy(&b).contains("The usage limit has been reached"));
    assert_eq!(mock.request_count(), 3);
    // Second request: nothing left to try; the proxy answers itself.
    let (s, h, b) = send_collect(&c, json_req(&proxy.url("/v1/responses"), None, body())).await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        mock.request_count(),
        3,
        "no upstream request while all are cooling"
    );
    let retry_after: u64 = h["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((590..=601).contains(&retry_after), "{retry_after}");
    let v = assert_envelope(&b);
    assert_eq!(v["error"]["code"], "usage_limit_reached");
    assert_eq!(v["error"]["resets_at"], resets_at);
}

#[tokio::test]
async fn sessions_stay_on_their_credential_while_it_is_healthy() {
    let mock = MockUpstream::start().await.unwrap();
    let proxy = proxy_with(&mock, &[KEY_A, KEY_B]).await;
    let c = client();
    for session in ["s-1", "s-2"] {
        for _ in 0..3 {
            let req = http::Request::post(proxy.url("/v1/responses"))
                .header("content-type", "application/json")
                .header("session-id", session)
                .body(http_body_util::Full::new(bytes::Bytes::from(
                    body().to_string(),
                )))
                .unwrap();
            let (s, _, _) = send_collect(&c, req).await;
            assert_eq!(s, StatusCode::OK);
        }
    }
    for session in ["s-1", "s-2"] {
        let creds: std::collections::HashSet<_> = mock
            .requests()
            .iter()
            .filter(|r| r.header("session-id") == Some(session))
            .map(|r| r.credential.clone())
            .collect();
        assert_eq!(
            creds.len(),
            1,
            "session {session} kept one credential: {creds:?}"
        );
    }
}

#[tokio::test]
async fn a_credential_with_its_own_base_url_goes_to_its_own_upstream() {
    let platform = MockUpstream::start().await.unwrap();
    let other = MockUpstream::start().await.unwrap();
    let mut cfg = config_for(platform.base_url());
    cfg.strategy = tower_responses::credentials::Strategy::RoundRobin;
    cfg.credentials = vec![
        KEY_A.parse().unwrap(),
        toml::from_str::<Wrap>(&format!(
            "m = {{ source = \"{KEY_B}\", base_url = \"{}\", profile = \"generic\" }}",
            other.base_url()
        ))
        .unwrap()
        .m,
    ];
    let proxy = start_proxy(cfg).await;
    assert_clean_streams(&run_requests(&proxy, 4).await);
    assert_eq!(hits(&platform, KEY_A), 2);
    assert_eq!(
        hits(&platform, KEY_B),
        0,
        "B never goes to the default upstream"
    );
    assert_eq!(hits(&other, KEY_B), 2);
    assert!(other.requests().iter().all(|r| r.path == "/v1/responses"));
}

#[derive(serde::Deserialize)]
struct Wrap {
    m: tower_responses::credentials::PoolMember,
}

/// Every attempt carries the client's request as it came: the last one the loop can make is
/// the request itself (no copy), the others are copies; the upstream cannot tell them apart.
#[tokio::test]
async fn the_last_attempt_carries_the_same_request_as_the_first() {
    for keys in [&[KEY_A][..], &[KEY_A, KEY_B, KEY_C][..]] {
        let mock = MockUpstream::start().await.unwrap();
        // With three keys, the first two answer with a failure before content: the request
        // goes to the third, the last attempt.
        if keys.len() == 3 {
            for key in [KEY_A, KEY_B] {
                mock.push_for(
                    key,
                    failed_stream("insufficient_quota", "You exceeded your current quota"),
                );
            }
        }
        let proxy = proxy_with(&mock, keys).await;
        let mut req = json_req(&proxy.url("/v1/responses"), None, body());
        req.headers_mut()
            .insert("x-client-trace", "trace-7".parse().unwrap());
        let (status, _, text) = send_collect(&client(), req).await;
        assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&text));
        let seen = mock.requests();
        assert_eq!(seen.len(), keys.len(), "one attempt per key");
        for (r, key) in seen.iter().zip(keys) {
            assert_eq!(r.credential.as_deref(), Some(*key));
            assert_eq!(r.json().unwrap(), seen[0].json().unwrap());
            assert_eq!(r.body, seen[0].body);
            assert_eq!(r.path, seen[0].path);
            assert_eq!(r.headers["x-client-trace"], "trace-7");
            let mut headers = r.headers.clone();
            let mut first = seen[0].headers.clone();
            headers.remove("authorization");
            first.remove("authorization");
            assert_eq!(headers, first);
        }
        mock.shutdown().await;
    }
}
