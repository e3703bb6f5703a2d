//! Seed 002 through the proxy: ordinary Responses bodies against a Codex-strict upstream.

mod common;

use common::*;
use http::StatusCode;
use serde_json::{Value, json};
use tower_responses::profile::Profile;
use tower_responses::testing::{MockUpstream, codex_strict};

async fn codex_proxy(mock: &MockUpstream) -> RunningProxy {
    let mut cfg = config_for(mock.base_url());
    cfg.profile_override = Some(Profile::ChatgptCodex);
    cfg.credentials = vec!["codex-access-token-xxxxxxxxxxxx".parse().unwrap()];
    start_proxy(cfg).await
}

/// The body from the seed's curl reproduction.
fn seed_body() -> Value {
    json!({
        "model": "gpt-5.5",
        "input": [{"role": "user", "content": [{"type": "input_text", "text": "hi"}]}],
        "stream": true,
        "store": false,
        "max_output_tokens": 8192,
        "reasoning": {"effort": "none"}
    })
}

#[tokio::test]
async fn the_seed_body_is_refused_straight_and_streams_through_the_proxy() {
    let mock = MockUpstream::start().await.unwrap();
    mock.set_handler(codex_strict());
    let c = client();
    let (s, _, b) = send_collect(
        &c,
        json_req(
            &format!("{}/responses", mock.base_url()),
            Some("t"),
            seed_body(),
        ),
    )
    .await;
    assert_eq!(
        s,
        StatusCode::BAD_REQUEST,
        "the strict mock refuses it: {}",
        String::from_utf8_lossy(&b)
    );
    let proxy = codex_proxy(&mock).await;
    let (s, h, b) =
        send_collect(&c, json_req(&proxy.url("/v1/responses"), None, seed_body())).await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    assert!(
        h["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    assert!(String::from_utf8_lossy(&b).contains("response.completed"));
    let sent = mock.requests().last().unwrap().json().unwrap();
    assert_eq!(sent["instructions"], "");
    assert!(sent.get("max_output_tokens").is_none());
}

#[tokio::test]
async fn sdk_style_bodies_stream_or_fold_into_one_json_object() {
    let mock = MockUpstream::start().await.unwrap();
    mock.set_handler(codex_strict());
    let proxy = codex_proxy(&mock).await;
    let c = client();
    let body = |stream: bool| {
        json!({
            "model": "gpt-5.5",
            "input": [
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": "Say hi"}
            ],
            "temperature": 0.2,
            "stream": stream
        })
    };
    let (s, _, b) = send_collect(&c, json_req(&proxy.url("/v1/responses"), None, body(true))).await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    let sent = mock.requests().last().unwrap().json().unwrap();
    assert_eq!(
        sent["input"][0]["role"], "developer",
        "system became developer in place"
    );
    assert!(sent.get("temperature").is_none());

    let (s, h, b) =
        send_collect(&c, json_req(&proxy.url("/v1/responses"), None, body(false))).await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    assert!(
        h["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    let v: Value = serde_json::from_slice(&b).unwrap();
    assert_eq!(v["object"], "response");
    assert_eq!(v["status"], "completed");
    assert!(
        v["output"][0]["content"][0]["text"]
            .as_str()
            .unwrap()
            .contains("mock answer")
    );
    assert!(v["usage"]["input_tokens"].is_u64());
    assert_eq!(
        mock.requests().last().unwrap().json().unwrap()["stream"],
        true
    );
}

#[tokio::test]
async fn string_input_becomes_a_message_list() {
    let mock = MockUpstream::start().await.unwrap();
    mock.set_handler(codex_strict());
    let proxy = codex_proxy(&mock).await;
    let (s, _, b) = send_collect(
        &client(),
        json_req(
            &proxy.url("/v1/responses"),
            None,
            json!({"model": "gpt-5.5", "input": "hello", "stream": true}),
        ),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    let sent = mock.requests().last().unwrap().json().unwrap();
    assert_eq!(sent["input"][0]["role"], "user");
}

#[tokio::test]
async fn an_anchor_the_codex_backend_cannot_resolve_is_refused_without_an_upstream_call() {
    let mock = MockUpstream::start().await.unwrap();
    mock.set_handler(codex_strict());
    let proxy = codex_proxy(&mock).await;
    let body = json!({"model": "gpt-5.5", "input": "next", "stream": true, "previous_response_id": "resp_1"});
    let (s, _, b) =
        send_collect(&client(), json_req(&proxy.url("/v1/responses"), None, body)).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let v = assert_envelope(&b);
    assert_eq!(v["error"]["code"], "previous_response_not_found");
    assert_eq!(v["error"]["param"], "previous_response_id");
    assert_eq!(mock.request_count(), 0);
}
