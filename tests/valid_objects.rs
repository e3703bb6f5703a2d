//! What the proxy writes itself is a valid Responses object (issue 14 item 10): the
//! `response.incomplete` that ends a stream cut at `max_output_tokens`, local compaction
//! answers (v1 JSON and the v2 stream), and the 502 that replaces a `200 text/event-stream`
//! of garbage. Through the proxy over loopback against `testing::MockUpstream`; the
//! end-to-end suite (tests/e2e_sdk.rs) validates the same answers with the SDKs' own types.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::{ServiceBuilder, ServiceExt};
use tower_responses::body::ReplayBody;
use tower_responses::classify::FailureClass;
use tower_responses::compact::RemotePolicy;
use tower_responses::connect::UpstreamClientBuilder;
use tower_responses::profile::Profile;
use tower_responses::proxy::ProxyConfig;
use tower_responses::soft_failure::{SoftFailure, SoftFailureDetectLayer};
use tower_responses::sse::SseDecoder;
use tower_responses::testing::{MockUpstream, Reply};

const BOUND: Duration = Duration::from_secs(20);

/// The fields every Response object has (the SDKs' `Response` type requires most of them;
/// the rest it reads as nullable).
const RESPONSE_FIELDS: &[&str] = &[
    "id",
    "object",
    "created_at",
    "status",
    "model",
    "output",
    "usage",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "error",
    "incomplete_details",
    "instructions",
    "metadata",
    "temperature",
    "top_p",
];

fn assert_complete_usage(usage: &Value) {
    for key in ["input_tokens", "output_tokens", "total_tokens"] {
        assert!(usage[key].is_u64(), "usage.{key} in {usage}");
    }
    assert_eq!(
        usage["total_tokens"].as_u64(),
        Some(usage["input_tokens"].as_u64().unwrap() + usage["output_tokens"].as_u64().unwrap()),
        "{usage}"
    );
    assert!(
        usage["input_tokens_details"]["cached_tokens"].is_u64(),
        "{usage}"
    );
    assert!(
        usage["output_tokens_details"]["reasoning_tokens"].is_u64(),
        "{usage}"
    );
}

fn sse_events(body: &Bytes) -> Vec<Value> {
    let mut d = SseDecoder::new();
    d.push(body.clone());
    let mut out = Vec::new();
    while let Some(ev) = d.next_event().unwrap() {
        out.push(serde_json::from_slice(&ev.data).expect("every event is JSON"));
    }
    assert!(d.take_remainder().is_empty(), "half an event at the end");
    out
}

async fn post(
    config: ProxyConfig,
    path: &str,
    body: Value,
) -> (StatusCode, http::HeaderMap, Bytes) {
    let proxy = start_proxy(config).await;
    let req = json_req(&proxy.url(path), None, body);
    tokio::time::timeout(BOUND, send_collect(&client(), req))
        .await
        .expect("answered")
}

#[tokio::test]
async fn a_capped_stream_ends_with_incomplete_carrying_usage() {
    let mock = MockUpstream::start().await.unwrap();
    mock.push(Reply::text(
        "one two three four five six seven eight nine ten eleven twelve",
    ));
    let mut config = config_for(mock.base_url());
    config.profile_override = Some(Profile::ChatgptCodex);
    let (status, _, body) = post(
        config,
        "/v1/responses",
        json!({"model": "gpt-5.5", "stream": true, "max_output_tokens": 3, "input": "count"}),
    )
    .await;
    assert_eq!(status, 200);
    let evs = sse_events(&body);
    let last = evs.last().expect("events");
    assert_eq!(last["type"], "response.incomplete", "{last}");
    let resp = &last["response"];
    assert_eq!(resp["status"], "incomplete");
    assert_eq!(resp["incomplete_details"]["reason"], "max_output_tokens");
    assert_complete_usage(&resp["usage"]);
    let output = resp["usage"]["output_tokens"].as_u64().unwrap();
    assert!(
        (1..=3).contains(&output),
        "counted within the cap: {output}"
    );
    let text: String = evs
        .iter()
        .filter(|e| e["type"] == "response.output_text.delta")
        .map(|e| e["delta"].as_str().unwrap())
        .collect();
    assert!(
        !text.is_empty() && text.len() <= 12,
        "cut at ~3 tokens: {text:?}"
    );
}

fn local_compaction(mock: &MockUpstream) -> ProxyConfig {
    let mut config = config_for(mock.base_url());
    config.profile_override = Some(Profile::Openai);
    config.compact.remote = RemotePolicy::Never;
    config
}

fn history() -> Vec<Value> {
    vec![
        json!({"type": "message", "role": "user", "content": [{"type": "input_text", "text": "fix the tokenizer"}]}),
        json!({"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Two tests fail."}]}),
    ]
}

#[tokio::test]
async fn the_local_v2_compaction_stream_carries_whole_response_objects() {
    let mock = MockUpstream::start().await.unwrap();
    let mut input = history();
    input.push(json!({"type": "compaction_trigger"}));
    let (status, headers, body) = post(
        local_compaction(&mock),
        "/v1/responses",
        json!({"model": "gpt-5.5", "stream": true, "store": false, "input": input}),
    )
    .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(headers["content-type"], "text/event-stream");
    let evs = sse_events(&body);
    let mut responses = 0;
    for ev in &evs {
        if let Some(resp) = ev.get("response") {
            responses += 1;
            for field in RESPONSE_FIELDS {
                assert!(
                    resp.get(*field).is_some(),
                    "{} lacks {field}: {resp}",
                    ev["type"]
                );
            }
            assert_eq!(resp["object"], "response");
            assert!(resp["tools"].is_array() && resp["parallel_tool_calls"].is_boolean());
        }
        if let Some(item) = ev.get("item") {
            assert_eq!(item["type"], "compaction");
            assert!(
                item["id"].as_str().is_some_and(|id| !id.is_empty()),
                "{item}"
            );
        }
    }
    assert_eq!(responses, 3, "created, in_progress, completed");
    let completed = evs.last().unwrap();
    assert_eq!(completed["type"], "response.completed");
    assert_complete_usage(&completed["response"]["usage"]);
    assert_eq!(completed["response"]["output"][0]["type"], "compaction");
    assert!(completed["response"]["output"][0]["id"].is_string());
}

#[tokio::test]
async fn the_local_v1_compaction_answer_has_item_ids_and_usage() {
    let mock = MockUpstream::start().await.unwrap();
    let (status, _, body) = post(
        local_compaction(&mock),
        "/v1/responses/compact",
        json!({"model": "gpt-5.5", "input": history()}),
    )
    .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["object"], "response.compaction");
    assert!(v["id"].is_string() && v["created_at"].is_u64());
    let item = v["output"].as_array().unwrap().last().unwrap();
    assert_eq!(item["type"], "compaction");
    assert!(
        item["id"].as_str().is_some_and(|id| !id.is_empty()),
        "{item}"
    );
    assert_complete_usage(&v["usage"]);
}

#[tokio::test]
async fn a_200_event_stream_of_garbage_becomes_a_502_in_the_envelope() {
    let mock = MockUpstream::start().await.unwrap();
    mock.push(Reply::sse_raw(vec![Bytes::from_static(
        b"<html><body>upstream maintenance</body></html>\n",
    )]));
    let mut config = config_for(mock.base_url());
    config.credentials = vec!["sk-only-one-credential-aaaaaaaaaaaa".parse().unwrap()];
    let (status, headers, body) = post(
        config,
        "/v1/responses",
        json!({"model": "gpt-5.5", "stream": true, "input": "hi"}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(headers["content-type"], "application/json");
    let v = assert_envelope(&body);
    assert_eq!(v["error"]["code"], "invalid_upstream_stream");
    assert!(!String::from_utf8_lossy(&body).contains("<html>"));
}

#[tokio::test]
async fn garbage_is_marked_transient_before_content_at_the_end_or_at_the_hold_bound() {
    let garbage = Bytes::from(
        vec![b'x'; 1024]
            .into_iter()
            .chain(*b"\n")
            .collect::<Vec<u8>>(),
    );
    for reply in [
        // Ends before any event.
        Reply::sse_raw(vec![garbage.clone()]),
        // Keeps coming on an open connection: the byte bound decides.
        Reply::sse_raw(vec![garbage.clone(); 300]).hold_open(),
    ] {
        let mock = MockUpstream::start().await.unwrap();
        mock.push(reply);
        let svc = ServiceBuilder::new()
            .layer(SoftFailureDetectLayer::new())
            .service(UpstreamClientBuilder::new().service());
        let req = Request::post(format!("{}/responses", mock.base_url()))
            .header("content-type", "application/json")
            .body(ReplayBody::new(
                r#"{"model":"gpt-5.5","stream":true,"input":"hi"}"#,
            ))
            .unwrap();
        let res = tokio::time::timeout(BOUND, svc.oneshot(req))
            .await
            .expect("decided within the bound")
            .unwrap();
        assert_eq!(res.status(), StatusCode::BAD_GATEWAY);
        let mark = res
            .extensions()
            .get::<SoftFailure>()
            .expect("marked")
            .clone();
        assert_eq!(mark.failure.class, FailureClass::Transient);
        assert!(mark.before_content);
        let body = tokio::time::timeout(BOUND, res.into_body().collect())
            .await
            .expect("the body ends")
            .unwrap()
            .to_bytes();
        assert_eq!(
            error_code(&body).as_deref(),
            Some("invalid_upstream_stream")
        );
    }
}
