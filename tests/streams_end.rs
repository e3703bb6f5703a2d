//! Streams end when they are over, and no wait is unbounded (issue 14 item 7; REVIEW
//! findings 14, 15, 17): an `error` event after content ends the client's body; the head
//! timeout bounds each upstream attempt, not the folded answer; folds have an idle timeout;
//! error-body peeks are bounded in time; folded failures carry their real classification.
//!
//! Everything runs over real HTTP on loopback against `testing::MockUpstream` (or a raw TCP
//! listener that never answers). Waits are bounded (`tokio::time::timeout` around a
//! condition), never sleeps.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;
use tower::{ServiceBuilder, ServiceExt};
use tower_responses::body::{ReplayBody, ResponseBody};
use tower_responses::classify::FailureClass;
use tower_responses::connect::UpstreamClientBuilder;
use tower_responses::marks::{AttemptError, Phase};
use tower_responses::normalize::{BodyNormalizeLayer, NormalizeConfig};
use tower_responses::profile::Profile;
use tower_responses::soft_failure::{SoftFailure, SoftFailureConfig, SoftFailureDetectLayer};
use tower_responses::stack::{HeadTimeoutElapsed, HeadTimeoutLayer};
use tower_responses::testing::{MockUpstream, Reply, events};

/// Generous bound for conditions that should hold within a second or two.
const BOUND: Duration = Duration::from_secs(20);

fn request(mock: &MockUpstream, body: Value) -> Request<ReplayBody> {
    Request::post(format!("{}/responses", mock.base_url()))
        .header("content-type", "application/json")
        .body(ReplayBody::new(Bytes::from(body.to_string())))
        .unwrap()
}

fn streaming(mock: &MockUpstream) -> Request<ReplayBody> {
    request(
        mock,
        json!({"model": "gpt-5.5", "stream": true, "input": "hi"}),
    )
}

/// SoftFailureDetectLayer on a real client.
async fn detect(config: SoftFailureConfig, req: Request<ReplayBody>) -> Response<ResponseBody> {
    ServiceBuilder::new()
        .layer(SoftFailureDetectLayer::with_config(config))
        .service(UpstreamClientBuilder::new().service())
        .oneshot(req)
        .await
        .expect("an answer")
}

/// The Codex profile's normalize (it folds for `stream:false` clients) over soft-failure
/// detection, on a real client.
async fn folded(config: NormalizeConfig, req: Request<ReplayBody>) -> Response<ResponseBody> {
    ServiceBuilder::new()
        .layer(BodyNormalizeLayer::new(config))
        .layer(SoftFailureDetectLayer::new())
        .service(UpstreamClientBuilder::new().service())
        .oneshot(req)
        .await
        .expect("an answer")
}

fn codex_config() -> NormalizeConfig {
    NormalizeConfig::for_profile(Profile::ChatgptCodex)
}

/// Content, then a failure: what a model that broke mid-answer sends.
fn content_then(last: Value) -> Vec<Value> {
    vec![
        events::created("resp_e"),
        events::in_progress("resp_e"),
        events::output_item_added(events::message_item_in_progress("msg_e")),
        events::output_text_delta("msg_e", "partial "),
        last,
    ]
}

fn mark(res: &Response<ResponseBody>) -> SoftFailure {
    res.extensions()
        .get::<SoftFailure>()
        .expect("the answer carries a SoftFailure")
        .clone()
}

async fn json_body(res: Response<ResponseBody>) -> Value {
    let bytes = tokio::time::timeout(BOUND, res.into_body().collect())
        .await
        .expect("the body ends")
        .expect("the body reads")
        .to_bytes();
    serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&bytes)))
}

// ---- finding 15: an `error` event after content is terminal ----

#[tokio::test]
async fn an_error_event_after_content_ends_the_body_on_an_open_connection() {
    let mock = MockUpstream::start().await.unwrap();
    mock.push(Reply::sse(content_then(events::error("server_error", "x"))).hold_open());
    let res = detect(SoftFailureConfig::default(), streaming(&mock)).await;
    assert_eq!(res.status(), 200);
    // The upstream never closes: only the layer can end the body.
    let body = tokio::time::timeout(BOUND, res.into_body().collect())
        .await
        .expect("the body ends after the error event")
        .unwrap()
        .to_bytes();
    let text = String::from_utf8_lossy(&body);
    assert!(text.contains("partial "), "content passed: {text}");
    assert!(
        text.trim_end().ends_with(r#""type":"error"}"#),
        "the error event is the last thing the client gets: {text}"
    );
}

#[tokio::test]
async fn an_error_event_after_content_ends_the_body_through_the_proxy() {
    let mock = MockUpstream::start().await.unwrap();
    mock.push(Reply::sse(content_then(events::error("server_error", "x"))).hold_open());
    let proxy = start_proxy(config_for(mock.base_url())).await;
    let client = client();
    let req = json_req(
        &proxy.url("/v1/responses"),
        None,
        json!({"model": "gpt-5.5", "stream": true, "input": "hi"}),
    );
    let (status, _, body) = tokio::time::timeout(BOUND, send_collect(&client, req))
        .await
        .expect("the client's body ends");
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&body).contains(r#""type":"error""#));
}

// ---- finding 14: the head timeout is per attempt; folds and peeks are bounded otherwise ----

#[tokio::test]
async fn a_stream_false_answer_longer_than_the_head_timeout_completes() {
    let mock = MockUpstream::start().await.unwrap();
    // Ten events 300 ms apart: 3 s of answer against a 1 s head timeout.
    let mut evs = events::answer(
        "resp_long",
        "msg_long",
        "one two three",
        events::usage(3, 3),
    );
    evs.truncate(evs.len() - 1);
    while evs.len() < 9 {
        evs.insert(2, events::in_progress("resp_long"));
    }
    evs.push(events::completed(
        "resp_long",
        vec![events::message_item("msg_long", "one two three")],
        events::usage(3, 3),
    ));
    assert!(evs.len() >= 10);
    mock.push(Reply::sse(evs).paced(Duration::from_millis(300)));
    let mut config = config_for(mock.base_url());
    config.profile_override = Some(Profile::ChatgptCodex);
    config.upstream_timeout_secs = 1;
    let proxy = start_proxy(config).await;
    let req = json_req(
        &proxy.url("/v1/responses"),
        None,
        json!({"model": "gpt-5.5", "input": "hi"}),
    );
    let (status, headers, body) = tokio::time::timeout(BOUND, send_collect(&client(), req))
        .await
        .expect("answered");
    let text = String::from_utf8_lossy(&body);
    assert_eq!(status, 200, "{text}");
    assert_eq!(headers["content-type"], "application/json");
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["id"], "resp_long");
    assert_eq!(v["output"][0]["content"][0]["text"], "one two three");
}

#[tokio::test]
async fn a_local_compaction_summary_longer_than_the_head_timeout_completes() {
    let mock = MockUpstream::start().await.unwrap();
    // The summary streams for ~3 s, an event every 300 ms, against a 1 s head timeout.
    mock.push(
        Reply::text("the tokenizer fix is in progress and two tests still fail")
            .paced(Duration::from_millis(300)),
    );
    let mut config = config_for(mock.base_url());
    config.profile_override = Some(Profile::Openai);
    config.compact.remote = tower_responses::compact::RemotePolicy::Never;
    config.upstream_timeout_secs = 1;
    let proxy = start_proxy(config).await;
    let req = json_req(
        &proxy.url("/v1/responses/compact"),
        None,
        json!({"model": "gpt-5.5", "input": [
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "fix the tokenizer"}]}
        ]}),
    );
    let (status, _, body) = tokio::time::timeout(BOUND, send_collect(&client(), req))
        .await
        .expect("answered");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["object"], "response.compaction");
    assert_eq!(
        v["output"].as_array().unwrap().last().unwrap()["type"],
        "compaction"
    );
    assert_eq!(mock.request_count(), 1, "one summary request");
}

/// An upstream that accepts the connection, reads the request and never answers.
async fn silent_upstream() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut sock, _)) = listener.accept().await {
            let mut buf = [0u8; 4096];
            let _ = sock.read(&mut buf).await;
            held.push(sock);
        }
    });
    format!("http://{addr}/v1")
}

#[tokio::test]
async fn the_head_timeout_fails_the_attempt_as_sent() {
    let base = silent_upstream().await;
    let svc = ServiceBuilder::new()
        .layer(HeadTimeoutLayer::new(Duration::from_millis(300)))
        .service(UpstreamClientBuilder::new().service());
    let req = Request::post(format!("{base}/responses"))
        .header("content-type", "application/json")
        .body(ReplayBody::new(r#"{"model":"gpt-5.5","input":"hi"}"#))
        .unwrap();
    let err = tokio::time::timeout(BOUND, svc.oneshot(req))
        .await
        .expect("the attempt gives up")
        .expect_err("no head, no answer");
    let attempt = AttemptError::find(&*err).expect("an AttemptError");
    assert_eq!(attempt.phase, Phase::Sent, "the upstream had the request");
    assert_eq!(attempt.failure.class, FailureClass::Transient);
    assert!(
        attempt
            .failure
            .message
            .as_deref()
            .unwrap_or("")
            .contains("no response head within"),
        "{:?}",
        attempt.failure
    );
    assert_eq!(
        HeadTimeoutElapsed::find(&*err),
        Some(HeadTimeoutElapsed(Duration::from_millis(300)))
    );
}

#[tokio::test]
async fn the_proxy_answers_504_when_no_head_comes_in_time() {
    let mut config = config_for(silent_upstream().await);
    config.upstream_timeout_secs = 1;
    let proxy = start_proxy(config).await;
    let req = json_req(
        &proxy.url("/v1/responses"),
        None,
        json!({"model": "gpt-5.5", "stream": true, "input": "hi"}),
    );
    let (status, _, body) = tokio::time::timeout(BOUND, send_collect(&client(), req))
        .await
        .expect("answered");
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(error_code(&body).as_deref(), Some("upstream_timeout"));
}

#[tokio::test]
async fn a_fold_whose_upstream_goes_silent_is_cut_by_its_idle_timeout() {
    let mock = MockUpstream::start().await.unwrap();
    mock.push(Reply::sse(content_then(events::output_text_delta("msg_e", "more"))).hold_open());
    let config = NormalizeConfig {
        fold_idle_timeout: Duration::from_millis(500),
        ..codex_config()
    };
    let res = tokio::time::timeout(
        BOUND,
        folded(
            config,
            request(&mock, json!({"model": "gpt-5.5", "input": "hi"})),
        ),
    )
    .await
    .expect("the fold gives up on a silent upstream");
    assert_eq!(res.status(), StatusCode::GATEWAY_TIMEOUT);
    let m = mark(&res);
    assert!(!m.before_content, "content had been generated");
    let v = json_body(res).await;
    assert_eq!(v["error"]["code"], "upstream_timeout");
}

#[tokio::test]
async fn a_500_whose_body_stalls_is_answered_within_the_peek_bound() {
    let mock = MockUpstream::start().await.unwrap();
    let partial = r#"{"error":{"message":"boom","type":"server_error""#;
    mock.push(
        Reply::raw(
            StatusCode::INTERNAL_SERVER_ERROR,
            "application/json",
            partial,
        )
        .hold_open(),
    );
    let config = SoftFailureConfig {
        peek_timeout: Duration::from_millis(300),
        ..Default::default()
    };
    let res = tokio::time::timeout(BOUND, detect(config, streaming(&mock)))
        .await
        .expect("the peek gives up");
    assert_eq!(res.status(), 500);
    assert_eq!(mark(&res).failure.class, FailureClass::Transient);
    let body = tokio::time::timeout(BOUND, res.into_body().collect())
        .await
        .expect("the client's body ends with what was read")
        .unwrap()
        .to_bytes();
    assert_eq!(&body[..], partial.as_bytes());
}

#[tokio::test]
async fn a_slow_json_success_body_is_passed_whole_not_cut_at_the_peek_bound() {
    let mock = MockUpstream::start().await.unwrap();
    let answer = json!({"id": "resp_j", "object": "response", "status": "completed", "output": []});
    let text = answer.to_string();
    let (head, tail) = text.split_at(10);
    mock.push(
        Reply::sse_raw(vec![
            Bytes::from(head.to_owned()),
            Bytes::from(tail.to_owned()),
        ])
        .with_header("content-type", "application/json")
        .first_event_then_wait(Duration::from_millis(600)),
    );
    let config = SoftFailureConfig {
        peek_timeout: Duration::from_millis(200),
        ..Default::default()
    };
    let res = detect(config, streaming(&mock)).await;
    assert_eq!(res.status(), 200);
    assert_eq!(json_body(res).await, answer);
}

// ---- finding 17: folded failures carry their real classification ----

#[tokio::test]
async fn a_folded_failure_after_content_is_marked_after_content_with_its_class() {
    let mock = MockUpstream::start().await.unwrap();
    mock.push(Reply::sse(content_then(events::failed(
        "resp_e",
        "rate_limit_exceeded",
        "Rate limit reached. Please try again in 20s.",
    ))));
    let res = folded(
        codex_config(),
        request(&mock, json!({"model": "gpt-5.5", "input": "hi"})),
    )
    .await;
    assert_eq!(res.status(), 429);
    let m = mark(&res);
    assert!(!m.before_content, "the upstream had generated content");
    assert_eq!(m.failure.class, FailureClass::RateLimited);
    assert_eq!(m.failure.code.as_deref(), Some("rate_limit_exceeded"));
    assert_eq!(
        m.failure.retry.after,
        Some(Duration::from_secs(20)),
        "the real failure's hint, not a bare status"
    );
    assert_eq!(json_body(res).await["error"]["code"], "rate_limit_exceeded");
}

#[tokio::test]
async fn a_folded_failure_before_content_stays_before_content() {
    let mock = MockUpstream::start().await.unwrap();
    mock.push(Reply::sse(vec![
        events::created("resp_b"),
        events::failed("resp_b", "server_is_overloaded", "busy"),
    ]));
    let res = folded(
        codex_config(),
        request(&mock, json!({"model": "gpt-5.5", "input": "hi"})),
    )
    .await;
    assert_eq!(res.status(), 503);
    let m = mark(&res);
    assert!(m.before_content);
    assert_eq!(m.failure.class, FailureClass::Overloaded);
}

#[tokio::test]
async fn the_folds_response_too_large_is_never_worth_a_retry() {
    let mock = MockUpstream::start().await.unwrap();
    let long = "word ".repeat(2000);
    mock.push(Reply::text(&long));
    let config = NormalizeConfig {
        max_buffered: 4096,
        ..codex_config()
    };
    let res = folded(
        config,
        request(&mock, json!({"model": "gpt-5.5", "input": "hi"})),
    )
    .await;
    assert_eq!(res.status(), StatusCode::BAD_GATEWAY);
    let m = mark(&res);
    assert!(!m.before_content, "never retried: the answer was generated");
    assert!(
        !m.failure.retry_elsewhere(),
        "any credential would get it again"
    );
    assert!(!m.failure.cools_credential(), "not the credential's fault");
    assert_eq!(m.failure.code.as_deref(), Some("response_too_large"));
    assert_eq!(json_body(res).await["error"]["code"], "response_too_large");
}
