//! The retry and cooldown policy through the proxy, against the mock: what a client sees when
//! the upstream has ordinary trouble (issue 14's "what must hold", items 1-4 and 6).

mod common;

use std::time::{Duration, SystemTime};

use common::*;
use http::StatusCode;
use serde_json::json;
use tower_responses::credentials::{PoolMember, Strategy};
use tower_responses::testing::{Fault, MockUpstream, Reply, events};

const KEY_A: &str = "sk-test-aaaaaaaaaaaaaaaaaaaa-AAAA";
const KEY_B: &str = "sk-test-bbbbbbbbbbbbbbbbbbbb-BBBB";
const KEY_C: &str = "sk-test-cccccccccccccccccccc-CCCC";
const LABEL_A: &str = "key-1";
const LABEL_B: &str = "key-2";

fn body() -> serde_json::Value {
    json!({"model": "gpt-5.5", "stream": true, "input": [{"role": "user", "content": "hi"}]})
}

async fn proxy_with(mock: &MockUpstream, keys: &[&str], strategy: Strategy) -> RunningProxy {
    let mut cfg = config_for(mock.base_url());
    cfg.credentials = keys.iter().map(|k| k.parse().unwrap()).collect();
    cfg.strategy = strategy;
    start_proxy(cfg).await
}

fn hits(mock: &MockUpstream, key: &str) -> usize {
    mock.requests()
        .iter()
        .filter(|r| r.credential.as_deref() == Some(key))
        .count()
}

async fn ask(
    proxy: &RunningProxy,
    body: serde_json::Value,
) -> (StatusCode, http::HeaderMap, String) {
    let (s, h, b) =
        send_collect(&client(), json_req(&proxy.url("/v1/responses"), None, body)).await;
    (s, h, String::from_utf8_lossy(&b).into_owned())
}

fn server_error() -> Reply {
    Reply::json(
        StatusCode::INTERNAL_SERVER_ERROR,
        json!({"error": {"type": "server_error", "message": "The server had an error"}}),
    )
}

fn cooldown_secs(proxy: &RunningProxy, label: &str, class: &str) -> Option<f64> {
    let until = proxy.metrics.get(
        "tr_credential_cooldown_until_seconds",
        &[("credential", label), ("class", class)],
    )?;
    Some(until - now_secs())
}

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[tokio::test]
async fn one_500_with_one_credential_never_becomes_the_proxys_429() {
    let mock = MockUpstream::start().await.unwrap();
    mock.push(server_error());
    let proxy = proxy_with(&mock, &[KEY_A], Strategy::RoundRobin).await;
    let (s, _, text) = ask(&proxy, body()).await;
    assert_eq!(
        s,
        StatusCode::INTERNAL_SERVER_ERROR,
        "the upstream's own 500: {text}"
    );
    assert!(text.contains("The server had an error"), "{text}");
    // The Codex CLI retries 200 ms later: that request reaches the upstream and succeeds.
    tokio::time::sleep(Duration::from_millis(200)).await;
    for _ in 0..2 {
        let (s, _, text) = ask(&proxy, body()).await;
        assert_eq!(s, StatusCode::OK, "{text}");
        assert!(text.contains("response.completed"), "{text}");
    }
    assert_eq!(
        mock.request_count(),
        3,
        "every request reached the upstream"
    );
}

#[tokio::test]
async fn a_5xx_burst_over_every_key_gives_the_upstreams_5xx_then_recovers() {
    let mock = MockUpstream::start().await.unwrap();
    for _ in 0..3 {
        mock.push(
            Reply::json(
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"error": {"type": "server_error", "code": "server_is_overloaded", "message": "overloaded"}}),
            )
            .with_header("retry-after", "999999999"),
        );
    }
    let proxy = proxy_with(&mock, &[KEY_A, KEY_B, KEY_C], Strategy::RoundRobin).await;
    let (s, _, text) = ask(&proxy, body()).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{text}");
    assert!(
        text.contains("server_is_overloaded"),
        "the upstream's answer: {text}"
    );
    assert_eq!(mock.request_count(), 3, "tried every key once");
    // Retry-After: 999999999 is not 31 years: an overload cools (softly) for 30 s at most.
    let secs = cooldown_secs(&proxy, LABEL_A, "overloaded").expect("soft cooldown exported");
    assert!(secs <= 30.5, "clamped to 30 s: {secs}");
    // Soft cooldowns never take a key out: the next request goes upstream and succeeds.
    let (s, _, text) = ask(&proxy, body()).await;
    assert_eq!(s, StatusCode::OK, "{text}");
    assert_eq!(mock.request_count(), 4);
}

#[tokio::test]
async fn every_key_rate_limited_gives_the_proxys_429_with_the_earliest_reset() {
    let mock = MockUpstream::start().await.unwrap();
    let limited = |secs: &str| {
        Reply::json(
            StatusCode::TOO_MANY_REQUESTS,
            json!({"error": {"type": "requests", "code": "rate_limit_exceeded", "message": "Rate limit reached"}}),
        )
        .with_header("retry-after", secs)
    };
    mock.push_for(KEY_A, limited("40"));
    mock.push_for(KEY_B, limited("90"));
    let proxy = proxy_with(&mock, &[KEY_A, KEY_B], Strategy::FillFirst).await;
    let (s, _, text) = ask(&proxy, body()).await;
    assert_eq!(
        s,
        StatusCode::TOO_MANY_REQUESTS,
        "the last upstream answer: {text}"
    );
    assert_eq!(mock.request_count(), 2);
    let (s, h, text) = ask(&proxy, body()).await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{text}");
    assert_eq!(
        error_code(text.as_bytes()).as_deref(),
        Some("rate_limit_exceeded")
    );
    let after: u64 = h["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(
        (38..=40).contains(&after),
        "the earliest real reset: {after}"
    );
    assert_eq!(
        mock.request_count(),
        2,
        "the proxy answered without calling the upstream"
    );
}

#[tokio::test]
async fn a_request_waits_for_a_credential_that_returns_within_max_wait() {
    let mock = MockUpstream::start().await.unwrap();
    mock.push(
        Reply::json(
            StatusCode::TOO_MANY_REQUESTS,
            json!({"error": {"code": "rate_limit_exceeded", "message": "Rate limit reached"}}),
        )
        .with_header("retry-after", "1"),
    );
    let proxy = proxy_with(&mock, &[KEY_A], Strategy::RoundRobin).await;
    let (s, _, _) = ask(&proxy, body()).await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS);
    // The only key returns in 1 s, within the 2 s max_wait: the request waits and goes.
    let (s, _, text) = ask(&proxy, body()).await;
    assert_eq!(s, StatusCode::OK, "{text}");
    assert_eq!(mock.request_count(), 2);
}

#[tokio::test]
async fn a_challenge_page_403_passes_and_cools_nothing() {
    let mock = MockUpstream::start().await.unwrap();
    mock.push(Reply::raw(
        StatusCode::FORBIDDEN,
        "text/html",
        "<!DOCTYPE html><html><head><title>Just a moment...</title></head><body>cf</body></html>",
    ));
    let proxy = proxy_with(&mock, &[KEY_A, KEY_B], Strategy::FillFirst).await;
    let (s, _, text) = ask(&proxy, body()).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert!(
        text.contains("Just a moment"),
        "the page as it came: {text}"
    );
    assert_eq!(mock.request_count(), 1, "not tried on the other key");
    let (s, _, _) = ask(&proxy, body()).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(hits(&mock, KEY_A), 2, "A was never cooled");
}

#[tokio::test]
async fn auth_on_two_keys_in_a_row_stops_and_cools_nothing_more() {
    let mock = MockUpstream::start().await.unwrap();
    let refused = || {
        Reply::json(
            StatusCode::UNAUTHORIZED,
            json!({"error": {"message": "Incorrect API key provided", "type": "invalid_request_error", "code": "invalid_api_key"}}),
        )
    };
    mock.push_for(KEY_A, refused());
    mock.push_for(KEY_B, refused());
    let proxy = proxy_with(&mock, &[KEY_A, KEY_B, KEY_C], Strategy::FillFirst).await;
    let (s, _, text) = ask(&proxy, body()).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{text}");
    assert_eq!(
        hits(&mock, KEY_C),
        0,
        "the request is the likely cause: stopped"
    );
    // A cools for a finite, doubling time (a literal key cannot be renewed; a probe later
    // brings it back); B, the second refusal, is not cooled.
    let a = cooldown_secs(&proxy, LABEL_A, "auth").expect("A cooling");
    assert!((55.0..=60.5).contains(&a), "finite: {a}");
    assert!(cooldown_secs(&proxy, LABEL_B, "auth").is_none());
    let (s, _, _) = ask(&proxy, body()).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(hits(&mock, KEY_B), 2, "B stayed in rotation");
}

#[tokio::test]
async fn the_clients_organization_and_project_never_reach_a_pool_credential() {
    let mock = MockUpstream::start().await.unwrap();
    let proxy = proxy_with(&mock, &[KEY_A], Strategy::RoundRobin).await;
    let mut req = json_req(&proxy.url("/v1/responses"), None, body());
    req.headers_mut()
        .insert("openai-organization", "org-client".parse().unwrap());
    req.headers_mut()
        .insert("openai-project", "proj_client".parse().unwrap());
    let (s, _, _) = send_collect(&client(), req).await;
    assert_eq!(s, StatusCode::OK);
    let seen = &mock.requests()[0];
    assert_eq!(seen.header("openai-organization"), None);
    assert_eq!(seen.header("openai-project"), None);
}

#[tokio::test]
async fn a_shorter_cooldown_never_replaces_a_longer_one() {
    let mock = MockUpstream::start().await.unwrap();
    // Request 1 is served by A slowly and fails after content with a short rate limit;
    // meanwhile request 2 finds A out of quota for a day.
    let mut slow = events::text_answer("partial");
    slow.truncate(4);
    slow.push(events::failed(
        "resp_x",
        "rate_limit_exceeded",
        "Rate limit reached. Please try again in 1s.",
    ));
    mock.push_for(KEY_A, Reply::sse(slow).paced(Duration::from_millis(400)));
    let resets_at = now_secs() as u64 + 86_400;
    mock.push_for(
        KEY_A,
        Reply::json(
            StatusCode::TOO_MANY_REQUESTS,
            json!({"error": {"type": "usage_limit_reached", "message": "The usage limit has been reached", "resets_at": resets_at}}),
        ),
    );
    let proxy = proxy_with(&mock, &[KEY_A, KEY_B], Strategy::FillFirst).await;
    let c = client();
    let first = send(&c, json_req(&proxy.url("/v1/responses"), None, body())).await;
    assert_eq!(first.status(), StatusCode::OK, "content reached the client");
    let (s, _, _) = ask(&proxy, body()).await;
    assert_eq!(s, StatusCode::OK, "request 2 failed over to B");
    let day = cooldown_secs(&proxy, LABEL_A, "quota_exhausted").expect("A out of quota");
    assert!(day > 86_000.0, "{day}");
    // Request 1's after-content rate limit arrives now and must not shorten the day.
    let text = http_body_util::BodyExt::collect(first.into_body())
        .await
        .unwrap()
        .to_bytes();
    assert!(String::from_utf8_lossy(&text).contains("response.failed"));
    let still = cooldown_secs(&proxy, LABEL_A, "quota_exhausted").expect("still out of quota");
    assert!(still > 86_000.0, "the day stands: {still}");
    let (s, _, _) = ask(&proxy, body()).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(hits(&mock, KEY_A), 2, "A stayed out");
}

#[tokio::test]
async fn a_success_resets_the_backoff_and_a_past_reset_still_cools() {
    let mock = MockUpstream::start().await.unwrap();
    mock.push(server_error());
    mock.push(server_error());
    mock.push(Reply::auto());
    mock.push(server_error());
    let proxy = proxy_with(&mock, &[KEY_A], Strategy::RoundRobin).await;
    for _ in 0..2 {
        ask(&proxy, body()).await;
    }
    let doubled = cooldown_secs(&proxy, LABEL_A, "transient").unwrap();
    assert!(doubled > 1.2, "the second 500 in a row doubles: {doubled}");
    let (s, _, _) = ask(&proxy, body()).await;
    assert_eq!(s, StatusCode::OK);
    ask(&proxy, body()).await;
    let fresh = cooldown_secs(&proxy, LABEL_A, "transient").unwrap();
    assert!(fresh <= 1.05, "a success reset the strikes: {fresh}");

    // A quota reset in the past is not "no cooldown": the class minimum holds.
    let mock = MockUpstream::start().await.unwrap();
    mock.push(Reply::json(
        StatusCode::TOO_MANY_REQUESTS,
        json!({"error": {"type": "usage_limit_reached", "message": "The usage limit has been reached", "resets_at": now_secs() as u64 - 100}}),
    ));
    let proxy = proxy_with(&mock, &[KEY_A], Strategy::RoundRobin).await;
    ask(&proxy, body()).await;
    let secs = cooldown_secs(&proxy, LABEL_A, "quota_exhausted").expect("cooling");
    assert!((55.0..=60.5).contains(&secs), "floored at 60 s: {secs}");
}

#[tokio::test]
async fn a_request_the_upstream_may_have_run_is_never_sent_twice() {
    let mock = MockUpstream::start().await.unwrap();
    // The upstream reads the request, works on it for 3 s, and loses the connection.
    mock.push(Reply::fault(Fault::CloseAfterWorking(Duration::from_secs(
        3,
    ))));
    let proxy = proxy_with(&mock, &[KEY_A, KEY_B], Strategy::RoundRobin).await;
    let non_streaming =
        json!({"model": "gpt-5.5", "stream": false, "input": [{"role": "user", "content": "hi"}]});
    let (s, _, text) = ask(&proxy, non_streaming).await;
    assert_eq!(s, StatusCode::BAD_GATEWAY, "{text}");
    assert_eq!(
        error_code(text.as_bytes()).as_deref(),
        Some("upstream_unavailable")
    );
    assert_eq!(mock.request_count(), 1, "exactly one upstream execution");
}

#[tokio::test]
async fn a_request_that_was_never_sent_goes_to_the_next_credential() {
    let mock = MockUpstream::start().await.unwrap();
    // A's own upstream refuses connections: the request never left.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("http://{}/v1", closed.local_addr().unwrap());
    drop(closed);
    let mut a = PoolMember::new(KEY_A.parse().unwrap());
    a.base_url = Some(dead);
    let mut cfg = config_for(mock.base_url());
    cfg.credentials = vec![a, PoolMember::new(KEY_B.parse().unwrap())];
    cfg.strategy = Strategy::FillFirst;
    let proxy = start_proxy(cfg).await;
    let (s, _, text) = ask(&proxy, body()).await;
    assert_eq!(s, StatusCode::OK, "{text}");
    assert_eq!(hits(&mock, KEY_B), 1);
}

fn reasoning(encrypted: &str) -> serde_json::Value {
    json!({"type": "reasoning", "id": format!("rs_{encrypted}"), "summary": [], "encrypted_content": encrypted})
}

#[tokio::test]
async fn a_session_stays_on_one_fallback_while_its_credential_cools() {
    let mock = MockUpstream::start().await.unwrap();
    let proxy = proxy_with(&mock, &[KEY_A, KEY_B, KEY_C], Strategy::RoundRobin).await;
    let turn = |items: Vec<serde_json::Value>| {
        let mut input = vec![json!({"role": "user", "content": "hi"})];
        input.extend(items);
        let mut req = json_req(
            &proxy.url("/v1/responses"),
            None,
            json!({"model": "gpt-5.5", "stream": true, "input": input}),
        );
        req.headers_mut().insert("session_id", "S".parse().unwrap());
        req
    };
    let c = client();
    let (s, _, _) = send_collect(&c, turn(vec![])).await;
    assert_eq!(s, StatusCode::OK);
    let bound = mock.requests()[0].credential.clone().unwrap();
    // The bound account runs out of quota for a day.
    mock.push_for(
        &bound,
        Reply::json(
            StatusCode::TOO_MANY_REQUESTS,
            json!({"error": {"type": "usage_limit_reached", "message": "The usage limit has been reached", "resets_in_seconds": 86400}}),
        ),
    );
    let mut served = Vec::new();
    for n in 2..=5 {
        // From turn 3 on, the input carries the reasoning the fallback produced.
        let items = if n > 2 {
            vec![reasoning("from-fallback")]
        } else {
            vec![]
        };
        let (s, _, text) = send_collect(&c, turn(items)).await;
        assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&text));
        let last = mock.requests().last().cloned().unwrap();
        served.push(last.credential.clone().unwrap());
        if n > 2 {
            let kept = last.json().unwrap()["input"].as_array().unwrap().len();
            assert_eq!(
                kept, 2,
                "the fallback's own reasoning is not stripped (turn {n})"
            );
        }
    }
    assert!(
        served.iter().all(|k| *k == served[0]),
        "one fallback: {served:?}"
    );
    assert_ne!(served[0], bound);
}

#[tokio::test]
async fn an_anchored_request_with_an_unknown_owner_skips_codex_members() {
    // The README's mixed pool: a Codex login (the stack's chatgpt-codex profile) and a
    // platform key with its own base_url and no profile written.
    let mock = MockUpstream::start().await.unwrap();
    let mut platform = PoolMember::new(KEY_B.parse().unwrap());
    platform.base_url = Some(mock.base_url());
    let mut cfg = config_for(mock.base_url());
    cfg.profile_override = Some(tower_responses::profile::Profile::ChatgptCodex);
    cfg.credentials = vec![PoolMember::new(KEY_A.parse().unwrap()), platform];
    cfg.strategy = Strategy::FillFirst;
    let proxy = start_proxy(cfg).await;
    let anchored = json!({"model": "gpt-5.5", "stream": true, "previous_response_id": "resp_P",
        "input": [{"role": "user", "content": "next"}]});
    let (s, _, text) = ask(&proxy, anchored).await;
    assert_eq!(s, StatusCode::OK, "{text}");
    assert_eq!(
        hits(&mock, KEY_A),
        0,
        "the Codex backend stores nothing: never asked"
    );
    let seen = mock.requests();
    assert_eq!(seen.len(), 1);
    // The platform key went out with its own URL's (generic) rules: the anchor is kept.
    assert_eq!(seen[0].json().unwrap()["previous_response_id"], "resp_P");
    // Unanchored requests still fill the Codex login first.
    let (s, _, _) = ask(&proxy, body()).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(hits(&mock, KEY_A), 1);
}

#[tokio::test]
async fn a_folded_failure_after_content_is_not_sent_again() {
    // A `stream:false` client on a backend that only streams: the proxy folds the stream
    // into one JSON object. The upstream fails after content: generating it again on the
    // other key would pay twice for an answer the upstream already started.
    let mock = MockUpstream::start().await.unwrap();
    let mut evs = events::text_answer("partial answer");
    evs.truncate(5);
    evs.push(events::failed(
        "resp_x",
        "server_error",
        "The server had an error",
    ));
    mock.push(Reply::sse(evs));
    let mut cfg = config_for(mock.base_url());
    cfg.profile_override = Some(tower_responses::profile::Profile::ChatgptCodex);
    cfg.credentials = vec![KEY_A.parse().unwrap(), KEY_B.parse().unwrap()];
    let proxy = start_proxy(cfg).await;
    let folded =
        json!({"model": "gpt-5.5", "stream": false, "input": [{"role": "user", "content": "hi"}]});
    let (s, _, text) = ask(&proxy, folded).await;
    assert!(s.is_server_error(), "{s} {text}");
    assert_envelope(text.as_bytes());
    assert_eq!(mock.request_count(), 1, "one upstream execution");
}

#[tokio::test]
async fn failover_without_a_session_strips_reasoning_the_next_account_cannot_read() {
    let mock = MockUpstream::start().await.unwrap();
    mock.push_for(
        KEY_A,
        Reply::json(
            StatusCode::TOO_MANY_REQUESTS,
            json!({"error": {"type": "usage_limit_reached", "message": "The usage limit has been reached", "resets_in_seconds": 3600}}),
        ),
    );
    let proxy = proxy_with(&mock, &[KEY_A, KEY_B], Strategy::FillFirst).await;
    let with_reasoning = json!({"model": "gpt-5.5", "stream": true,
        "input": [{"role": "user", "content": "hi"}, reasoning("someones")]});
    let (s, _, text) = ask(&proxy, with_reasoning).await;
    assert_eq!(s, StatusCode::OK, "{text}");
    let seen = mock.requests();
    let items = |i: usize| seen[i].json().unwrap()["input"].as_array().unwrap().len();
    assert_eq!(items(0), 2, "the first pick gets the request as sent");
    assert_eq!(
        items(1),
        1,
        "the other account gets it without the encrypted item"
    );
}

#[tokio::test]
async fn a_pin_to_a_credential_this_pool_lacks_is_not_a_429() {
    use tower::ServiceExt;
    use tower_responses::body::ReplayBody;
    use tower_responses::credentials::{CredentialRotateLayer, Pool};
    use tower_responses::marks::PinnedCredential;
    let mock = MockUpstream::start().await.unwrap();
    let pool = std::sync::Arc::new(Pool::new(vec![KEY_A.parse().unwrap()]).unwrap());
    let svc = tower::ServiceBuilder::new()
        .layer(CredentialRotateLayer::new(pool))
        .service(tower_responses::connect::UpstreamClientBuilder::new().service());
    let mut req = http::Request::post(format!("{}/responses", mock.base_url()))
        .header("content-type", "application/json")
        .body(ReplayBody::new(serde_json::to_vec(&body()).unwrap()))
        .unwrap();
    // A replica sharing state with this one pinned the anchor to its own credential.
    req.extensions_mut()
        .insert(PinnedCredential("elsewhere-7".into()));
    let res = svc.oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(mock.request_count(), 1);
}

#[tokio::test]
async fn a_reused_connection_lost_after_the_upstream_worked_is_not_retried_fresh() {
    let mock = MockUpstream::start().await.unwrap();
    let proxy = proxy_with(&mock, &[KEY_A], Strategy::RoundRobin).await;
    // The first request leaves a pooled connection behind...
    let (s, _, _) = ask(&proxy, body()).await;
    assert_eq!(s, StatusCode::OK);
    // ...which the second reuses; the upstream works on it for 1 s, then the connection dies.
    mock.push(Reply::fault(Fault::CloseAfterWorking(Duration::from_secs(
        1,
    ))));
    let (s, _, text) = ask(&proxy, body()).await;
    assert_eq!(s, StatusCode::BAD_GATEWAY, "{text}");
    assert_eq!(
        mock.request_count(),
        2,
        "no silent second execution on a fresh connection"
    );
    assert_eq!(proxy.metrics.total("tr_fresh_retries_total"), 0.0);
    assert!(
        mock.requests()[1].idle_before.is_some(),
        "the second request reused the connection"
    );
}
