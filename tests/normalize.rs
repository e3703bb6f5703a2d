//! BodyNormalizeLayer over real HTTP on loopback, against a mock as strict as the Codex backend.

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::{ServiceBuilder, ServiceExt};
use tower_responses::body::{ReplayBody, ResponseBody};
use tower_responses::connect::UpstreamClientBuilder;
use tower_responses::metrics::Metrics;
use tower_responses::normalize::{BodyNormalizeLayer, NormalizeConfig, Rule, TokenCapPolicy};
use tower_responses::profile::Profile;
use tower_responses::soft_failure::SoftFailureDetectLayer;
use tower_responses::sse::SseDecoder;
use tower_responses::testing::{MockUpstream, RecordedRequest, Reply, codex_strict, events};

async fn strict_mock() -> MockUpstream {
    let mock = MockUpstream::start().await.unwrap();
    mock.set_handler(codex_strict());
    mock
}

fn post(mock: &MockUpstream, body: impl Into<Bytes>) -> Request<ReplayBody> {
    Request::post(format!("{}/responses", mock.base_url()))
        .header("content-type", "application/json")
        .body(ReplayBody::new(body.into()))
        .unwrap()
}

fn post_json(mock: &MockUpstream, body: &Value) -> Request<ReplayBody> {
    post(mock, body.to_string())
}

async fn call(layer: BodyNormalizeLayer, req: Request<ReplayBody>) -> Response<ResponseBody> {
    ServiceBuilder::new()
        .layer(layer)
        .service(UpstreamClientBuilder::new().service())
        .oneshot(req)
        .await
        .expect("an answer")
}

async fn collect(res: Response<ResponseBody>) -> (StatusCode, http::HeaderMap, Bytes) {
    let (parts, body) = res.into_parts();
    (
        parts.status,
        parts.headers,
        body.collect().await.unwrap().to_bytes(),
    )
}

/// Every event of a client-visible stream, each parsed as JSON (panics on a broken one).
fn sse_events(bytes: &Bytes) -> Vec<Value> {
    let mut d = SseDecoder::new();
    d.push(bytes.clone());
    let mut out = Vec::new();
    while let Some(ev) = d.next_event().unwrap() {
        out.push(serde_json::from_slice(&ev.data).unwrap_or_else(|e| {
            panic!(
                "event is not JSON ({e}): {}",
                String::from_utf8_lossy(&ev.data)
            )
        }));
    }
    assert!(d.finish().unwrap().is_none(), "an unterminated event");
    assert!(d.take_remainder().is_empty(), "half an event at the end");
    out
}

fn codex() -> BodyNormalizeLayer {
    BodyNormalizeLayer::for_profile(Profile::ChatgptCodex)
}

fn sent(mock: &MockUpstream) -> Vec<RecordedRequest> {
    mock.requests()
}

fn seed_body() -> Value {
    json!({
        "model": "gpt-5.5",
        "input": [{"role":"user","content":[{"type":"input_text","text":"hi"}]}],
        "stream": true,
        "store": false,
        "max_output_tokens": 8192,
        "reasoning": {"effort": "none"}
    })
}

#[tokio::test]
async fn the_strict_mock_refuses_the_seed_body_as_sent() {
    let mock = strict_mock().await;
    let res = UpstreamClientBuilder::new()
        .service()
        .oneshot(post_json(&mock, &seed_body()))
        .await
        .unwrap();
    let (status, _, body) = collect(res).await;
    assert_eq!(status, 400);
    assert_eq!(
        serde_json::from_slice::<Value>(&body).unwrap()["detail"],
        "Unsupported parameter: max_output_tokens"
    );
}

#[tokio::test]
async fn the_seed_body_streams_back_200() {
    let mock = strict_mock().await;
    let res = call(codex(), post_json(&mock, &seed_body())).await;
    let (status, headers, body) = collect(res).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(headers["content-type"], "text/event-stream");
    let evs = sse_events(&body);
    assert_eq!(evs.last().unwrap()["type"], "response.completed");

    let seen = sent(&mock);
    assert_eq!(seen.len(), 1);
    let up = seen[0].json().unwrap();
    assert!(up.get("max_output_tokens").is_none());
    assert_eq!(up["instructions"], "");
    assert_eq!(up["reasoning"], json!({"effort": "none"}));
    assert_eq!(
        seen[0].header("content-length").unwrap(),
        seen[0].body.len().to_string()
    );
}

fn sdk_body(stream: bool) -> Value {
    json!({
        "model": "gpt-5.5",
        "input": [
            {"role": "system", "content": "You answer in one word."},
            {"role": "user", "content": [{"type": "input_text", "text": "Say OK"}]}
        ],
        "temperature": 0.2,
        "stream": stream
    })
}

#[tokio::test]
async fn sdk_body_with_system_message_streams_and_keeps_positions() {
    let mock = strict_mock().await;
    let res = call(codex(), post_json(&mock, &sdk_body(true))).await;
    let (status, _, body) = collect(res).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(
        sse_events(&body).last().unwrap()["type"],
        "response.completed"
    );
    let up = sent(&mock)[0].json().unwrap();
    assert_eq!(up["input"][0]["role"], "developer");
    assert_eq!(up["input"][0]["content"], "You answer in one word.");
    assert_eq!(up["input"][1]["role"], "user");
    assert!(up.get("temperature").is_none());
}

#[tokio::test]
async fn string_input_is_sent_as_a_message_list() {
    let mock = strict_mock().await;
    let body = json!({"model": "gpt-5.5", "input": "Say OK", "temperature": 1, "stream": true});
    let (status, _, bytes) = collect(call(codex(), post_json(&mock, &body)).await).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&bytes));
    let up = sent(&mock)[0].json().unwrap();
    assert_eq!(
        up["input"],
        json!([{"role":"user","content":[{"type":"input_text","text":"Say OK"}]}])
    );
}

#[tokio::test]
async fn stream_false_gets_one_json_response_object() {
    let mock = strict_mock().await;
    let res = call(codex(), post_json(&mock, &sdk_body(false))).await;
    let (status, headers, body) = collect(res).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(headers["content-length"], body.len().to_string());
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["object"], "response");
    assert_eq!(v["status"], "completed");
    let text = v["output"][0]["content"][0]["text"].as_str().unwrap();
    assert!(text.contains("Say OK"), "{text}");
    assert!(v["usage"]["output_tokens"].as_u64().unwrap() > 0);
    assert!(sent(&mock)[0].wants_stream());
}

#[tokio::test]
async fn stream_false_rebuilds_output_from_done_items() {
    let mock = MockUpstream::start().await.unwrap();
    let item = events::message_item("msg_1", "rebuilt");
    mock.push(Reply::sse(vec![
        events::created("resp_1"),
        events::output_item_added(events::message_item_in_progress("msg_1")),
        events::output_text_delta("msg_1", "rebuilt"),
        events::output_item_done(item.clone()),
        events::completed("resp_1", vec![], events::usage(3, 1)),
    ]));
    let body = json!({"model": "m", "input": "hi"});
    let (status, _, bytes) = collect(call(codex(), post_json(&mock, &body)).await).await;
    assert_eq!(status, 200);
    let v: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(v["id"], "resp_1");
    assert_eq!(v["output"], json!([item]));
    assert_eq!(v["usage"]["output_tokens"], 1);
}

#[tokio::test]
async fn stream_false_failure_becomes_the_matching_http_error() {
    let mock = MockUpstream::start().await.unwrap();
    mock.push(Reply::sse(vec![
        events::created("resp_q"),
        events::failed(
            "resp_q",
            "insufficient_quota",
            "You exceeded your current quota.",
        ),
    ]));
    let body = json!({"model": "m", "input": "hi", "stream": false});
    let (status, _, bytes) = collect(call(codex(), post_json(&mock, &body)).await).await;
    assert_eq!(status, 429);
    let v: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(v["error"]["code"], "insufficient_quota");
    assert_eq!(v["error"]["message"], "You exceeded your current quota.");
}

#[tokio::test]
async fn enforce_cuts_a_long_stream_with_a_valid_incomplete() {
    let mock = strict_mock().await;
    let long = "word ".repeat(400);
    mock.push(Reply::text(&long));
    let mut body = seed_body();
    body["max_output_tokens"] = json!(20);
    let metrics = Metrics::new();
    let res = call(codex().metrics(metrics.clone()), post_json(&mock, &body)).await;
    let (status, _, bytes) = collect(res).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&bytes));
    let evs = sse_events(&bytes);
    let created_id = evs[0]["response"]["id"].clone();
    let last = evs.last().unwrap();
    assert_eq!(last["type"], "response.incomplete");
    assert_eq!(last["response"]["id"], created_id);
    assert_eq!(last["response"]["status"], "incomplete");
    assert_eq!(
        last["response"]["incomplete_details"]["reason"],
        "max_output_tokens"
    );
    assert!(!evs.iter().any(|e| e["type"] == "response.completed"));
    let visible: String = evs
        .iter()
        .filter(|e| e["type"] == "response.output_text.delta")
        .map(|e| e["delta"].as_str().unwrap())
        .collect();
    assert!(!visible.is_empty());
    assert!(visible.chars().count() <= 20 * 4, "{} chars", visible.len());
    assert_eq!(
        last["response"]["output"][0]["content"][0]["text"],
        visible.as_str()
    );
    assert_eq!(
        metrics.get("tr_normalize_capped_total", &[("profile", "chatgpt-codex")]),
        Some(1.0)
    );
    assert_eq!(
        metrics.get(
            "tr_normalize_rewrites_total",
            &[
                ("profile", "chatgpt-codex"),
                ("rule", "enforce:max_output_tokens")
            ]
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn a_short_answer_under_the_cap_is_untouched() {
    let mock = strict_mock().await;
    mock.push(Reply::text("short"));
    let (status, _, bytes) = collect(call(codex(), post_json(&mock, &seed_body())).await).await;
    assert_eq!(status, 200);
    assert_eq!(
        sse_events(&bytes).last().unwrap()["type"],
        "response.completed"
    );
}

#[tokio::test]
async fn reject_answers_400_naming_the_field() {
    let mock = strict_mock().await;
    let config = NormalizeConfig {
        max_output_tokens: Some(TokenCapPolicy::Reject),
        ..NormalizeConfig::for_profile(Profile::ChatgptCodex)
    };
    let res = call(
        BodyNormalizeLayer::new(config),
        post_json(&mock, &seed_body()),
    )
    .await;
    let (status, _, bytes) = collect(res).await;
    assert_eq!(status, 400);
    let v: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(v["error"]["param"], "max_output_tokens");
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert_eq!(mock.request_count(), 0);
}

/// An upstream that refuses `foo_bar` the way the platform does.
fn refuses_foo_bar(
    detail_envelope: bool,
) -> impl Fn(&RecordedRequest) -> Option<Reply> + Send + Sync {
    move |req: &RecordedRequest| {
        let body = req.json()?;
        body.get("foo_bar")?;
        Some(if detail_envelope {
            Reply::json(
                StatusCode::BAD_REQUEST,
                json!({"detail": "Unsupported parameter: foo_bar"}),
            )
        } else {
            Reply::json(
                StatusCode::BAD_REQUEST,
                json!({"error": {"message": "Unsupported parameter: 'foo_bar' is not supported with this model.", "type": "invalid_request_error", "param": "foo_bar", "code": "unsupported_parameter"}}),
            )
        })
    }
}

async fn learning_case(detail_envelope: bool, soft_failure_inside: bool) {
    let mock = MockUpstream::start().await.unwrap();
    mock.set_handler(refuses_foo_bar(detail_envelope));
    let metrics = Metrics::new();
    let layer = BodyNormalizeLayer::for_profile(Profile::Generic).metrics(metrics.clone());
    let svc = ServiceBuilder::new()
        .layer(layer)
        .option_layer(soft_failure_inside.then(SoftFailureDetectLayer::new))
        .service(UpstreamClientBuilder::new().service());
    let body = json!({"model": "m", "input": "hi", "foo_bar": 1, "stream": true});

    let res = svc.clone().oneshot(post_json(&mock, &body)).await.unwrap();
    let (status, _, bytes) = collect(res).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&bytes));
    let seen = mock.requests();
    assert_eq!(seen.len(), 2, "one learning retry");
    assert!(seen[0].json().unwrap().get("foo_bar").is_some());
    assert!(seen[1].json().unwrap().get("foo_bar").is_none());
    assert_eq!(seen[1].json().unwrap()["input"], "hi");

    let res = svc.oneshot(post_json(&mock, &body)).await.unwrap();
    assert_eq!(res.status(), 200);
    let seen = mock.requests();
    assert_eq!(
        seen.len(),
        3,
        "the second request goes out clean the first time"
    );
    assert!(seen[2].json().unwrap().get("foo_bar").is_none());
    assert_eq!(
        metrics.get("tr_normalize_learned_total", &[("param", "foo_bar")]),
        Some(1.0)
    );
}

#[tokio::test]
async fn learns_an_unsupported_parameter_from_the_error_envelope() {
    learning_case(false, false).await;
}

#[tokio::test]
async fn learns_an_unsupported_parameter_from_detail_through_soft_failure() {
    learning_case(true, true).await;
}

#[tokio::test]
async fn learning_retries_at_most_once() {
    let mock = MockUpstream::start().await.unwrap();
    // Refuses every body, naming a different parameter each time.
    mock.set_handler(|req: &RecordedRequest| {
        let body = req.json()?;
        let name = if body.get("a").is_some() { "a" } else { "b" };
        Some(Reply::json(
            StatusCode::BAD_REQUEST,
            json!({"detail": format!("Unsupported parameter: {name}")}),
        ))
    });
    let body = json!({"model": "m", "input": "hi", "a": 1, "b": 2});
    let res = call(
        BodyNormalizeLayer::for_profile(Profile::Generic),
        post_json(&mock, &body),
    )
    .await;
    let (status, _, bytes) = collect(res).await;
    assert_eq!(status, 400);
    assert_eq!(
        serde_json::from_slice::<Value>(&bytes).unwrap()["detail"],
        "Unsupported parameter: b"
    );
    assert_eq!(mock.request_count(), 2);
}

#[tokio::test]
async fn a_400_about_something_absent_is_passed_on_as_it_was() {
    let mock = MockUpstream::start().await.unwrap();
    mock.push(Reply::json(
        StatusCode::BAD_REQUEST,
        json!({"detail": "Unsupported parameter: not_in_body"}),
    ));
    let body = json!({"model": "m", "input": "hi"});
    let res = call(
        BodyNormalizeLayer::for_profile(Profile::Generic),
        post_json(&mock, &body),
    )
    .await;
    let (status, _, bytes) = collect(res).await;
    assert_eq!(status, 400);
    assert_eq!(
        &bytes[..],
        br#"{"detail":"Unsupported parameter: not_in_body"}"#
    );
    assert_eq!(mock.request_count(), 1);
}

#[tokio::test]
async fn openai_profile_leaves_bodies_byte_identical() {
    let mock = MockUpstream::start().await.unwrap();
    let body = Bytes::from_static(
        b"{ \"model\" : \"gpt-5.5\", \"input\":\"hi\", \"temperature\": 0.20,\n \"max_output_tokens\": 5, \"stream\": true }",
    );
    let (status, _, _) = collect(
        call(
            BodyNormalizeLayer::for_profile(Profile::Openai),
            post(&mock, body.clone()),
        )
        .await,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(mock.requests()[0].body, body);
}

#[tokio::test]
async fn the_request_profile_overrides_the_configured_one() {
    let mock = strict_mock().await;
    let mut req = post_json(&mock, &seed_body());
    req.extensions_mut().insert(Profile::ChatgptCodex);
    let (status, _, _) =
        collect(call(BodyNormalizeLayer::for_profile(Profile::Openai), req).await).await;
    assert_eq!(status, 200);

    let mut req = post_json(&mock, &seed_body());
    req.extensions_mut().insert(Profile::Openai);
    let (status, _, _) = collect(call(codex(), req).await).await;
    assert_eq!(status, 400, "the openai profile sends the body as it is");
}

#[tokio::test]
async fn malformed_json_passes_through_untouched() {
    let mock = MockUpstream::start().await.unwrap();
    for body in [
        &b"{\"model\": \"m\", \"input\": "[..],
        b"[1,2,3]",
        b"\xff\xfe{",
        b"",
    ] {
        let body = Bytes::from_static(body);
        let res = call(codex(), post(&mock, body.clone())).await;
        let (status, _, _) = collect(res).await;
        assert_eq!(status, 400, "the mock rejects it, the layer does not panic");
        assert_eq!(mock.requests().last().unwrap().body, body);
    }
}

#[tokio::test]
async fn other_routes_are_left_alone() {
    let mock = MockUpstream::start().await.unwrap();
    let body = Bytes::from(seed_body().to_string());
    let req = Request::post(format!("{}/responses/compact", mock.base_url()))
        .body(ReplayBody::new(body.clone()))
        .unwrap();
    let (status, _, _) = collect(call(codex(), req).await).await;
    assert_eq!(status, 200);
    assert_eq!(mock.requests()[0].body, body);
}

#[tokio::test]
async fn generic_rules_from_toml() {
    #[derive(serde::Deserialize)]
    struct File {
        normalize: NormalizeConfig,
    }
    let file: File = toml::from_str(
        r#"
        [normalize]
        profile = "generic"
        max_output_tokens = "strip"
        learn_ttl_secs = 60

        [[normalize.rules]]
        strip = "temperature"
        [[normalize.rules]]
        rename = { from = "max_tokens", to = "max_completion_tokens" }
        [[normalize.rules]]
        default = { field = "instructions", value = "" }
        [[normalize.rules]]
        convert = { field = "input", conversion = "system-to-developer" }
        "#,
    )
    .unwrap();
    assert_eq!(file.normalize.rules[0], Rule::strip("temperature"));
    assert_eq!(file.normalize.learn_ttl.as_secs(), 60);

    let mock = MockUpstream::start().await.unwrap();
    let body = json!({"model":"m","input":[{"role":"system","content":"x"}],"temperature":1,"max_tokens":5,"max_output_tokens":9});
    let (status, _, _) = collect(
        call(
            BodyNormalizeLayer::new(file.normalize),
            post_json(&mock, &body),
        )
        .await,
    )
    .await;
    assert_eq!(status, 200);
    let up = mock.requests()[0].json().unwrap();
    assert_eq!(
        up,
        json!({"model":"m","input":[{"role":"developer","content":"x"}],"max_completion_tokens":5,"instructions":""})
    );
}
