//! ContinuityLayer through the proxy: two credentials, a mock that stores responses per
//! credential (as the OpenAI platform does), and injected upstream losses.

mod common;

use common::*;
use http::StatusCode;
use serde_json::{Value, json};
use tower_responses::testing::{Fault, MockUpstream, Reply, ResponseStore, events};

const KEY_A: &str = "sk-cont-aaaaaaaaaaaaaaaaaaaa-AAAA";
const KEY_B: &str = "sk-cont-bbbbbbbbbbbbbbbbbbbb-BBBB";
/// What one input item costs, in tokens, in this simulation.
const ITEM_TOKENS: u64 = 2300;

fn response_id(sse: &str) -> Option<String> {
    sse.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .find(|v| v["type"] == "response.created")
        .and_then(|v| v["response"]["id"].as_str().map(str::to_string))
}

async fn proxy(mock: &MockUpstream) -> RunningProxy {
    let mut cfg = config_for(mock.base_url());
    cfg.credentials = vec![KEY_A.parse().unwrap(), KEY_B.parse().unwrap()];
    start_proxy(cfg).await
}

fn turn(prev: Option<&str>, input: Vec<Value>) -> Value {
    let mut b = json!({"model": "gpt-5.5", "stream": true, "store": true, "input": input, "prompt_cache_key": "sess-1"});
    if let Some(p) = prev {
        b["previous_response_id"] = json!(p);
    }
    b
}

fn user(text: &str) -> Value {
    json!({"role": "user", "content": text})
}

#[tokio::test]
async fn follow_ups_land_on_the_owner_and_a_loss_is_a_retryable_502() {
    let mock = MockUpstream::start().await.unwrap();
    ResponseStore::new(ITEM_TOKENS).install(&mock);
    let proxy = proxy(&mock).await;
    let c = client();
    let url = proxy.url("/v1/responses");
    let (s, _, b) = send_collect(&c, json_req(&url, None, turn(None, vec![user("first")]))).await;
    assert_eq!(s, StatusCode::OK);
    let mut prev = response_id(&String::from_utf8_lossy(&b)).expect("id");
    let owner = mock.requests()[0].credential.clone().unwrap();
    for i in 0..4 {
        let (s, _, b) = send_collect(
            &c,
            json_req(
                &url,
                None,
                turn(Some(&prev), vec![user(&format!("next {i}"))]),
            ),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
        prev = response_id(&String::from_utf8_lossy(&b)).expect("id");
    }
    assert!(
        mock.requests()
            .iter()
            .all(|r| r.credential.as_ref() == Some(&owner)),
        "every turn on the owner"
    );

    // The upstream drops the connection on the next follow-up, and again on the fresh
    // connection FreshConnectionLayer retries on: a real loss, not a stale connection.
    mock.set_handler(|_| None);
    mock.push(Reply::fault(Fault::CloseAfterRead));
    mock.push(Reply::fault(Fault::CloseAfterRead));
    let before = mock.request_count();
    let (s, _, b) = send_collect(
        &c,
        json_req(&url, None, turn(Some(&prev), vec![user("lost")])),
    )
    .await;
    assert_eq!(
        s,
        StatusCode::BAD_GATEWAY,
        "{}",
        String::from_utf8_lossy(&b)
    );
    assert_eq!(error_code(&b).as_deref(), Some("upstream_unavailable"));
    let during: Vec<_> = mock.requests()[before..].to_vec();
    assert_eq!(during.len(), 2, "one stale-connection retry, nothing more");
    assert!(
        during.iter().all(|r| r.credential.as_ref() == Some(&owner)),
        "never re-sent with another key"
    );

    // The client retries with the anchor intact, and the owner answers.
    let platform = ResponseStore::new(ITEM_TOKENS);
    platform.insert(&prev, &owner);
    platform.install(&mock);
    let (s, _, b) = send_collect(
        &c,
        json_req(&url, None, turn(Some(&prev), vec![user("lost")])),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    assert_eq!(
        mock.requests().last().unwrap().credential.as_ref(),
        Some(&owner)
    );
}

#[tokio::test]
async fn a_stream_cut_before_content_on_an_anchored_request_is_a_502_not_a_400() {
    let mock = MockUpstream::start().await.unwrap();
    let platform = ResponseStore::new(ITEM_TOKENS);
    platform.install(&mock);
    let proxy = proxy(&mock).await;
    let c = client();
    let url = proxy.url("/v1/responses");
    let (_, _, b) = send_collect(&c, json_req(&url, None, turn(None, vec![user("first")]))).await;
    let prev = response_id(&String::from_utf8_lossy(&b)).unwrap();
    mock.set_handler(|_| None);
    mock.push(Reply::sse(vec![
        events::created("resp_cut"),
        events::in_progress("resp_cut"),
    ]));
    let (s, _, b) =
        send_collect(&c, json_req(&url, None, turn(Some(&prev), vec![user("x")]))).await;
    assert_eq!(
        s,
        StatusCode::BAD_GATEWAY,
        "{}",
        String::from_utf8_lossy(&b)
    );
    assert_eq!(error_code(&b).as_deref(), Some("upstream_unavailable"));
}

#[tokio::test]
async fn an_unknown_owner_is_found_on_another_credential_before_the_client_hears_not_found() {
    let mock = MockUpstream::start().await.unwrap();
    let platform = ResponseStore::new(ITEM_TOKENS);
    // A response created by B before this proxy started (the owner map is empty).
    platform.insert("resp_old", KEY_B);
    platform.install(&mock);
    let proxy = proxy(&mock).await;
    let c = client();
    for _ in 0..2 {
        let (s, _, b) = send_collect(
            &c,
            json_req(
                &proxy.url("/v1/responses"),
                None,
                turn(Some("resp_old"), vec![user("x")]),
            ),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    }
    // A genuine not-found (no key owns it) still reaches the client as it came.
    let (s, _, b) = send_collect(
        &c,
        json_req(
            &proxy.url("/v1/responses"),
            None,
            turn(Some("resp_gone"), vec![user("x")]),
        ),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(
        error_code(&b).as_deref(),
        Some("previous_response_not_found")
    );
}

/// The seed's scenario: a client that resends its whole history only when told
/// previous_response_not_found (as Codex does), for 20 turns, with the upstream lost once.
#[tokio::test]
async fn a_twenty_turn_session_keeps_its_per_turn_input_flat_through_an_upstream_loss() {
    let mock = MockUpstream::start().await.unwrap();
    let platform = ResponseStore::new(ITEM_TOKENS);
    platform.install(&mock);
    let proxy = proxy(&mock).await;
    let c = client();
    let url = proxy.url("/v1/responses");
    let mut history: Vec<Value> = Vec::new();
    let mut prev: Option<String> = None;
    let mut sent_items = Vec::new();
    let mut saw_400 = 0;
    let mut saw_502 = 0;
    for t in 0..20 {
        let msg = user(&format!("turn {t}"));
        history.push(msg.clone());
        if t == 9 {
            // The upstream connection is lost mid-session: the scripted fault is served while
            // the platform handler steps aside.
            mock.set_handler(|_| None);
            mock.push(Reply::fault(Fault::CloseAfterRead));
            mock.push(Reply::fault(Fault::CloseAfterRead));
        }
        loop {
            let input = if prev.is_some() {
                vec![msg.clone()]
            } else {
                history.clone()
            };
            let n = input.len();
            let (s, _, b) =
                send_collect(&c, json_req(&url, None, turn(prev.as_deref(), input))).await;
            if t == 9 && s == StatusCode::BAD_GATEWAY {
                saw_502 += 1;
                platform.install(&mock);
                continue; // Codex retries 5xx with the same request
            }
            if s == StatusCode::BAD_REQUEST
                && error_code(&b).as_deref() == Some("previous_response_not_found")
            {
                saw_400 += 1;
                prev = None; // the blow-up: the anchor is dropped, the full history goes next
                continue;
            }
            assert_eq!(
                s,
                StatusCode::OK,
                "turn {t}: {}",
                String::from_utf8_lossy(&b)
            );
            sent_items.push(n);
            prev = response_id(&String::from_utf8_lossy(&b));
            break;
        }
    }
    assert_eq!(
        saw_400, 0,
        "the client never heard previous_response_not_found"
    );
    assert_eq!(
        saw_502, 1,
        "the injected loss reached the client once, as a retryable 502"
    );
    let total_tokens: u64 = sent_items.iter().map(|n| *n as u64 * ITEM_TOKENS).sum();
    // First turn sends one item, each later turn one new item: flat at 2.3K tokens per turn.
    assert_eq!(sent_items, vec![1; 20]);
    assert_eq!(total_tokens, 20 * ITEM_TOKENS);
    // The proxy's own accounting shows the same flat line.
    assert_eq!(
        proxy
            .metrics
            .get("tr_session_input_tokens_max", &[("session", "sess-1")]),
        Some(ITEM_TOKENS as f64)
    );
    assert_eq!(
        proxy
            .metrics
            .get("tr_session_turns", &[("session", "sess-1")]),
        Some(20.0)
    );
}

#[tokio::test]
async fn encrypted_reasoning_is_stripped_only_when_the_session_must_move_to_another_account() {
    let mock = MockUpstream::start().await.unwrap();
    let proxy = proxy(&mock).await;
    let c = client();
    let send = |body: Value| {
        http::Request::post(proxy.url("/v1/responses"))
            .header("content-type", "application/json")
            .header("session-id", "enc-1")
            .body(http_body_util::Full::new(bytes::Bytes::from(
                body.to_string(),
            )))
            .unwrap()
    };
    let (s, _, _) = send_collect(
        &c,
        send(json!({"model": "m", "stream": true, "input": [user("hi")]})),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let bound = mock.requests()[0].credential.clone().unwrap();
    let with_reasoning = json!({"model": "m", "stream": true, "input": [
        user("hi"),
        {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "gAAAAABencrypted-by-the-first-account"},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "hello"}]},
        user("more")
    ]});
    // Same account: the item goes as it is.
    let (s, _, _) = send_collect(&c, send(with_reasoning.clone())).await;
    assert_eq!(s, StatusCode::OK);
    assert!(mock.requests()[1].json().unwrap()["input"][1]["encrypted_content"].is_string());
    // The bound account runs out; the request has to go to the other one.
    mock.push_for(&bound, Reply::json(StatusCode::TOO_MANY_REQUESTS, json!({"error": {"type": "usage_limit_reached", "message": "The usage limit has been reached"}})));
    let (s, _, _) = send_collect(&c, send(with_reasoning.clone())).await;
    assert_eq!(s, StatusCode::OK);
    let reqs = mock.requests();
    let moved = reqs.last().unwrap();
    assert_ne!(moved.credential.as_ref(), Some(&bound));
    let input = moved.json().unwrap()["input"].as_array().unwrap().clone();
    assert_eq!(input.len(), 3, "the reasoning item was removed: {input:?}");
    assert!(input.iter().all(|i| i["type"] != "reasoning"));
    assert_eq!(
        input[1]["content"][0]["text"], "hello",
        "everything else kept"
    );
    assert_eq!(
        proxy.metrics.get("tr_encrypted_items_stripped_total", &[]),
        Some(1.0)
    );
}

/// Without SoftFailureDetectLayer nobody else parses the stream: continuity reads it itself.
#[tokio::test]
async fn owners_are_learned_without_soft_failure_detection_too() {
    use std::sync::Arc;
    use tower::ServiceExt;
    use tower_responses::body::ReplayBody;
    use tower_responses::connect::UpstreamClientBuilder;
    use tower_responses::credentials::{Pool, PoolMember};
    use tower_responses::stack::ResponsesStack;

    let mock = MockUpstream::start().await.unwrap();
    ResponseStore::new(ITEM_TOKENS).install(&mock);
    let pool = Arc::new(
        Pool::new(vec![
            PoolMember::new(KEY_A.parse().unwrap()),
            PoolMember::new(KEY_B.parse().unwrap()),
        ])
        .unwrap(),
    );
    let stack = ResponsesStack::new()
        .pool(pool)
        .without_soft_failure()
        .client(&UpstreamClientBuilder::new());
    let url = format!("{}/responses", mock.base_url());
    let call = |body: Value| {
        let stack = stack.clone();
        let url = url.clone();
        async move {
            let req = http::Request::post(url)
                .header("content-type", "application/json")
                .body(ReplayBody::new(body.to_string()))
                .unwrap();
            let res = stack.oneshot(req).await.unwrap();
            let status = res.status();
            let body = http_body_util::BodyExt::collect(res.into_body())
                .await
                .unwrap()
                .to_bytes();
            (status, String::from_utf8_lossy(&body).into_owned())
        }
    };
    let (s, text) = call(turn(None, vec![user("first")])).await;
    assert_eq!(s, StatusCode::OK);
    let mut prev = response_id(&text).unwrap();
    for i in 0..3 {
        let (s, text) = call(turn(Some(&prev), vec![user(&format!("n{i}"))])).await;
        assert_eq!(s, StatusCode::OK, "{text}");
        prev = response_id(&text).unwrap();
    }
}
