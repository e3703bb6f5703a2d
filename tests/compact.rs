//! CompactRouteLayer over real HTTP on loopback: the layer around a bare upstream client,
//! against a mock upstream that refuses to compact `gpt-5.5`.

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::{Layer, ServiceExt};
use tower_responses::body::ReplayBody;
use tower_responses::compact::{
    CompactConfig, CompactForm, CompactMode, CompactRouteLayer, Compacted, MARKER_PREFIX,
    ModelOverride, RemotePolicy, SUMMARY_PREFIX,
};
use tower_responses::connect::UpstreamClientBuilder;
use tower_responses::metrics::Metrics;
use tower_responses::profile::Profile;
use tower_responses::sse::SseDecoder;
use tower_responses::testing::{MockUpstream, RecordedRequest, Reply, events};

const REFUSED: &str = "gpt-5.5";
const SUPPORTED: &str = "gpt-5.4";
const SUMMARY: &str = "The user is fixing the tokenizer; tests in tests/lex.rs still fail.";

fn is_trigger(req: &RecordedRequest) -> bool {
    req.json()
        .and_then(|b| b["input"].as_array()?.last().cloned())
        .is_some_and(|last| last["type"] == "compaction_trigger")
}

fn model_of(req: &RecordedRequest) -> String {
    req.json()
        .and_then(|b| b["model"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// The mock: v1 and v2 compaction refused for `gpt-5.5`, v2 compaction answered with one
/// compaction item for other models, every other `/responses` streams [`SUMMARY`].
async fn upstream() -> MockUpstream {
    let mock = MockUpstream::start().await.unwrap();
    mock.set_handler(|req| {
        let model = model_of(req);
        if req.path.ends_with("/responses/compact") {
            return (model == REFUSED)
                .then(|| Reply::raw(StatusCode::BAD_GATEWAY, "text/plain", "error code: 502"));
        }
        if is_trigger(req) {
            if model == REFUSED {
                return Some(Reply::json(
                    StatusCode::BAD_REQUEST,
                    json!({"error": {
                        "message": "The model gpt-5.5 is not supported for compaction",
                        "type": "invalid_request_error",
                        "code": "unsupported_model",
                    }}),
                ));
            }
            let item = events::compaction_item("remote-blob");
            let id = "resp_remote_compact";
            return Some(Reply::sse(vec![
                events::created(id),
                events::in_progress(id),
                events::output_item_added(item.clone()),
                events::output_item_done(item.clone()),
                events::completed(id, vec![item], events::usage(900, 40)),
            ]));
        }
        let (rid, mid) = events::next_ids();
        Some(Reply::sse(events::answer(
            &rid,
            &mid,
            SUMMARY,
            events::usage(321, 12),
        )))
    });
    mock
}

struct Harness {
    mock: MockUpstream,
    layer: CompactRouteLayer,
    metrics: Metrics,
}

async fn harness(config: CompactConfig, profile: Profile) -> Harness {
    let metrics = Metrics::new();
    let layer = CompactRouteLayer::new(config)
        .profile(profile)
        .metrics(metrics.clone());
    Harness {
        mock: upstream().await,
        layer,
        metrics,
    }
}

fn history() -> Vec<Value> {
    vec![
        json!({"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "You are Codex."}]}),
        json!({"type": "message", "role": "user", "content": [{"type": "input_text", "text": "<environment_context>cwd=/repo</environment_context>"}]}),
        json!({"type": "message", "role": "user", "content": [{"type": "input_text", "text": "fix the tokenizer"}]}),
        json!({"type": "function_call", "name": "shell", "arguments": "{\"cmd\":\"cargo test\"}", "call_id": "c1"}),
        json!({"type": "function_call_output", "call_id": "c1", "output": "2 failed"}),
        json!({"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Two tests fail."}]}),
    ]
}

fn body_for(model: &str, form: CompactForm, input: Vec<Value>) -> Value {
    let mut input = input;
    let mut body = json!({
        "model": model,
        "instructions": "",
        "tools": [{"type": "function", "name": "shell", "parameters": {"type": "object"}}],
        "parallel_tool_calls": true,
        "prompt_cache_key": "sess-123",
    });
    if form == CompactForm::V2 {
        input.push(json!({"type": "compaction_trigger"}));
        body["stream"] = json!(true);
        body["store"] = json!(false);
    }
    body["input"] = json!(input);
    body
}

struct Answer {
    status: StatusCode,
    content_type: String,
    compacted: Option<Compacted>,
    body: Bytes,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }

    fn events(&self) -> Vec<Value> {
        let mut decoder = SseDecoder::new();
        decoder.push(self.body.clone());
        let mut out = Vec::new();
        while let Some(ev) = decoder.next_event().unwrap() {
            out.push(serde_json::from_slice(&ev.data).unwrap());
        }
        assert!(decoder.finish().unwrap().is_none());
        out
    }

    /// The compaction items of a v2 stream's `response.output_item.done` events.
    fn v2_items(&self) -> Vec<Value> {
        assert!(
            self.content_type.starts_with("text/event-stream"),
            "{}",
            self.content_type
        );
        self.events()
            .into_iter()
            .filter(|e| e["type"] == "response.output_item.done")
            .map(|e| e["item"].clone())
            .filter(|i| i["type"] == "compaction")
            .collect()
    }

    fn completed(&self) -> Value {
        self.events()
            .into_iter()
            .find(|e| e["type"] == "response.completed")
            .expect("response.completed")
    }
}

impl Harness {
    async fn send(&self, form: CompactForm, body: &Value) -> Answer {
        let path = match form {
            CompactForm::V1 => "/responses/compact",
            CompactForm::V2 => "/responses",
        };
        self.send_to(path, body).await
    }

    async fn send_to(&self, path: &str, body: &Value) -> Answer {
        let svc = self.layer.layer(UpstreamClientBuilder::new().service());
        let req = Request::post(format!("{}{path}", self.mock.base_url()))
            .header("authorization", "Bearer sk-test")
            .header("content-type", "application/json")
            .header("session-id", "sess-123")
            .body(ReplayBody::new(Bytes::from(body.to_string())))
            .unwrap();
        let res = svc.oneshot(req).await.expect("an answer");
        let status = res.status();
        let content_type = res
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let compacted = res.extensions().get::<Compacted>().copied();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        Answer {
            status,
            content_type,
            compacted,
            body,
        }
    }

    fn compact_route_hits(&self) -> usize {
        self.mock
            .requests()
            .iter()
            .filter(|r| r.path.ends_with("/responses/compact"))
            .count()
    }

    fn trigger_hits(&self) -> usize {
        self.mock
            .requests()
            .iter()
            .filter(|r| is_trigger(r))
            .count()
    }

    /// Summary requests: `/responses` without a trigger, asking for the summary.
    fn summary_requests(&self) -> Vec<RecordedRequest> {
        self.mock
            .requests()
            .into_iter()
            .filter(|r| r.path.ends_with("/responses") && !is_trigger(r))
            .filter(|r| String::from_utf8_lossy(&r.body).contains("context checkpoint"))
            .collect()
    }

    fn compactions(&self, mode: &str, form: &str) -> f64 {
        self.metrics
            .get("tr_compactions_total", &[("mode", mode), ("form", form)])
            .unwrap_or(0.0)
    }

    /// No request the upstream ever received carries a marked item.
    fn assert_no_marker_upstream(&self) {
        for r in self.mock.requests() {
            let body = String::from_utf8_lossy(&r.body);
            assert!(
                !body.contains(MARKER_PREFIX),
                "marker reached the upstream: {body}"
            );
        }
    }
}

fn marked_summary(item: &Value) -> String {
    let content = item["encrypted_content"]
        .as_str()
        .expect("encrypted_content");
    tower_responses::compact::decode_summary(content).expect("a marked summary")
}

#[tokio::test]
async fn v1_refused_model_falls_back_to_local_then_skips_the_remote_attempt() {
    let h = harness(CompactConfig::default(), Profile::Openai).await;
    let body = body_for(REFUSED, CompactForm::V1, history());

    let first = h.send(CompactForm::V1, &body).await;
    assert_eq!(
        first.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&first.body)
    );
    assert!(first.content_type.starts_with("application/json"));
    assert_eq!(first.compacted.map(|c| c.mode), Some(CompactMode::Local));
    let json = first.json();
    let output = json["output"].as_array().unwrap();
    // The real user message is kept; Codex's injected context is not.
    assert_eq!(output.len(), 2, "{json}");
    assert_eq!(output[0]["content"][0]["text"], "fix the tokenizer");
    assert_eq!(output[1]["type"], "compaction");
    assert_eq!(marked_summary(&output[1]), SUMMARY);
    assert_eq!(json["usage"]["input_tokens"], 321);
    assert_eq!(h.compact_route_hits(), 1);

    // The summary went through the normal route: streamed, no tools, cache key and session kept.
    let summaries = h.summary_requests();
    assert_eq!(summaries.len(), 1);
    let s = summaries[0].json().unwrap();
    assert!(
        summaries[0].path.ends_with("/v1/responses"),
        "{}",
        summaries[0].path
    );
    assert_eq!(s["stream"], true);
    assert_eq!(s["model"], REFUSED);
    assert_eq!(s["prompt_cache_key"], "sess-123");
    assert!(s.get("tools").is_none());
    assert_eq!(summaries[0].header("session-id"), Some("sess-123"));
    assert_eq!(summaries[0].credential.as_deref(), Some("sk-test"));
    // The conversation comes first, unchanged, then the request for a summary.
    let input = s["input"].as_array().unwrap();
    assert_eq!(input[..history().len()], history()[..]);
    assert_eq!(input.len(), history().len() + 1);

    let second = h.send(CompactForm::V1, &body).await;
    assert_eq!(second.status, StatusCode::OK);
    assert_eq!(
        h.compact_route_hits(),
        1,
        "the refused model is not tried again"
    );
    assert_eq!(h.summary_requests().len(), 2);
    assert_eq!(h.layer.unsupported_models(), [REFUSED]);
    assert_eq!(h.compactions("local", "v1"), 2.0);
    assert_eq!(
        h.metrics.get("tr_compact_models_unsupported", &[]),
        Some(1.0)
    );
    h.assert_no_marker_upstream();
}

#[tokio::test]
async fn v2_refused_model_gets_exactly_one_compaction_item_with_usage() {
    let h = harness(CompactConfig::default(), Profile::Openai).await;
    let body = body_for(REFUSED, CompactForm::V2, history());

    let first = h.send(CompactForm::V2, &body).await;
    assert_eq!(
        first.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&first.body)
    );
    let items = first.v2_items();
    assert_eq!(items.len(), 1, "exactly one compaction item");
    assert_eq!(marked_summary(&items[0]), SUMMARY);
    let completed = first.completed();
    assert_eq!(completed["response"]["usage"]["input_tokens"], 321);
    assert_eq!(completed["response"]["usage"]["output_tokens"], 12);
    assert_eq!(completed["response"]["model"], REFUSED);
    let types: Vec<String> = first
        .events()
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        types,
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.output_item.done",
            "response.completed"
        ]
    );
    assert_eq!(h.trigger_hits(), 1);
    // The summary request does not carry the trigger.
    let s = h.summary_requests()[0].json().unwrap();
    assert!(
        s["input"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["type"] != "compaction_trigger")
    );

    let second = h.send(CompactForm::V2, &body).await;
    assert_eq!(second.v2_items().len(), 1);
    assert_eq!(h.trigger_hits(), 1, "the refused model is not tried again");
    assert_eq!(h.compactions("local", "v2"), 2.0);
    h.assert_no_marker_upstream();
}

#[tokio::test]
async fn supported_model_still_compacts_remotely() {
    let h = harness(CompactConfig::default(), Profile::Openai).await;

    let v1 = h
        .send(
            CompactForm::V1,
            &body_for(SUPPORTED, CompactForm::V1, history()),
        )
        .await;
    assert_eq!(v1.status, StatusCode::OK);
    assert_eq!(v1.compacted.map(|c| c.mode), Some(CompactMode::Remote));
    let json = v1.json();
    let item = json["output"].as_array().unwrap().last().unwrap().clone();
    let content = item["encrypted_content"].as_str().unwrap();
    assert!(
        content.starts_with("mock-compaction-"),
        "the upstream's own blob: {content}"
    );

    let v2 = h
        .send(
            CompactForm::V2,
            &body_for(SUPPORTED, CompactForm::V2, history()),
        )
        .await;
    let items = v2.v2_items();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["encrypted_content"], "remote-blob");
    assert_eq!(v2.completed()["response"]["usage"]["input_tokens"], 900);

    assert!(h.summary_requests().is_empty());
    assert_eq!(h.compactions("remote", "v1"), 1.0);
    assert_eq!(h.compactions("remote", "v2"), 1.0);
    assert!(h.layer.unsupported_models().is_empty());
}

#[tokio::test]
async fn never_summarises_locally_without_asking_the_compact_route() {
    let config = CompactConfig {
        remote: RemotePolicy::Never,
        ..CompactConfig::default()
    };
    let h = harness(config, Profile::Openai).await;
    let v1 = h
        .send(
            CompactForm::V1,
            &body_for(SUPPORTED, CompactForm::V1, history()),
        )
        .await;
    assert_eq!(v1.compacted.map(|c| c.mode), Some(CompactMode::Local));
    let v2 = h
        .send(
            CompactForm::V2,
            &body_for(SUPPORTED, CompactForm::V2, history()),
        )
        .await;
    assert_eq!(v2.v2_items().len(), 1);
    assert_eq!(h.compact_route_hits(), 0);
    assert_eq!(h.trigger_hits(), 0);
    assert_eq!(h.summary_requests().len(), 2);
}

#[tokio::test]
async fn always_tries_remote_every_time_and_still_falls_back() {
    let config = CompactConfig {
        remote: RemotePolicy::Always,
        ..CompactConfig::default()
    };
    // Even on a generic upstream, `always` asks it first.
    let h = harness(config, Profile::Generic).await;
    let body = body_for(REFUSED, CompactForm::V1, history());
    for _ in 0..2 {
        let res = h.send(CompactForm::V1, &body).await;
        assert_eq!(res.status, StatusCode::OK);
        assert_eq!(res.compacted.map(|c| c.mode), Some(CompactMode::Local));
    }
    assert_eq!(h.compact_route_hits(), 2);
    assert!(h.layer.unsupported_models().is_empty());
}

#[tokio::test]
async fn compact_model_compacts_for_a_refused_model() {
    let config = CompactConfig {
        compact_model: Some(SUPPORTED.into()),
        ..CompactConfig::default()
    };
    let h = harness(config, Profile::Openai).await;
    let body = body_for(REFUSED, CompactForm::V1, history());

    let first = h.send(CompactForm::V1, &body).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(
        first.compacted.map(|c| c.mode),
        Some(CompactMode::CompactModel)
    );
    let models: Vec<String> = h
        .mock
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("/responses/compact"))
        .map(model_of)
        .collect();
    assert_eq!(models, [REFUSED, SUPPORTED]);
    // Only the model changed.
    let sent = h.mock.requests()[1].json().unwrap();
    assert_eq!(sent["prompt_cache_key"], "sess-123");
    assert_eq!(sent["input"], body["input"]);

    let second = h.send(CompactForm::V1, &body).await;
    assert_eq!(
        second.compacted.map(|c| c.mode),
        Some(CompactMode::CompactModel)
    );
    assert_eq!(
        h.compact_route_hits(),
        3,
        "only the compact model is asked the second time"
    );
    assert!(h.summary_requests().is_empty());
    assert_eq!(h.compactions("compact_model", "v1"), 2.0);

    // v2 goes the same way.
    let v2 = h
        .send(
            CompactForm::V2,
            &body_for(REFUSED, CompactForm::V2, history()),
        )
        .await;
    assert_eq!(
        v2.compacted.map(|c| c.mode),
        Some(CompactMode::CompactModel)
    );
    assert_eq!(v2.v2_items()[0]["encrypted_content"], "remote-blob");
}

#[tokio::test]
async fn per_model_override_and_unknown_models_without_probing() {
    let mut config = CompactConfig {
        probe_unknown_models: false,
        ..CompactConfig::default()
    };
    config.models.insert(
        SUPPORTED.into(),
        ModelOverride {
            remote: Some(RemotePolicy::Never),
            compact_model: None,
        },
    );
    let h = harness(config, Profile::Openai).await;
    for model in [SUPPORTED, "gpt-7-experimental"] {
        let res = h
            .send(
                CompactForm::V1,
                &body_for(model, CompactForm::V1, history()),
            )
            .await;
        assert_eq!(
            res.compacted.map(|c| c.mode),
            Some(CompactMode::Local),
            "{model}"
        );
    }
    assert_eq!(h.compact_route_hits(), 0);
    let res = h
        .send(
            CompactForm::V1,
            &body_for("gpt-5.1-codex", CompactForm::V1, history()),
        )
        .await;
    assert_eq!(res.compacted.map(|c| c.mode), Some(CompactMode::Remote));
}

#[tokio::test]
async fn profiles_that_cannot_compact_go_straight_to_the_fallback() {
    let h = harness(CompactConfig::default(), Profile::Generic).await;
    let v1 = h
        .send(
            CompactForm::V1,
            &body_for(SUPPORTED, CompactForm::V1, history()),
        )
        .await;
    let v2 = h
        .send(
            CompactForm::V2,
            &body_for(SUPPORTED, CompactForm::V2, history()),
        )
        .await;
    assert_eq!(v1.compacted.map(|c| c.mode), Some(CompactMode::Local));
    assert_eq!(v2.v2_items().len(), 1);
    assert_eq!(h.compact_route_hits() + h.trigger_hits(), 0);

    // The Codex backend has no /responses/compact but compacts through v2.
    let h = harness(CompactConfig::default(), Profile::ChatgptCodex).await;
    let v1 = h
        .send(
            CompactForm::V1,
            &body_for(SUPPORTED, CompactForm::V1, history()),
        )
        .await;
    assert_eq!(v1.compacted.map(|c| c.mode), Some(CompactMode::Local));
    assert_eq!(h.compact_route_hits(), 0);
    let v2 = h
        .send(
            CompactForm::V2,
            &body_for(SUPPORTED, CompactForm::V2, history()),
        )
        .await;
    assert_eq!(v2.compacted.map(|c| c.mode), Some(CompactMode::Remote));
}

#[tokio::test]
async fn a_quota_failure_is_not_a_refusal() {
    let h = harness(CompactConfig::default(), Profile::Openai).await;
    let quota = json!({"error": {"type": "usage_limit_reached", "message": "The usage limit has been reached", "resets_at": 1_900_000_000u64}});
    h.mock
        .set_handler(move |_| Some(Reply::json(StatusCode::TOO_MANY_REQUESTS, quota.clone())));
    let res = h
        .send(
            CompactForm::V1,
            &body_for(SUPPORTED, CompactForm::V1, history()),
        )
        .await;
    assert_eq!(res.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(res.json()["error"]["type"], "usage_limit_reached");
    assert_eq!(
        h.mock.request_count(),
        1,
        "no local attempt behind the client's back"
    );
    assert!(h.layer.unsupported_models().is_empty());
}

#[tokio::test]
async fn a_whole_session_never_shows_the_upstream_a_marked_item() {
    let h = harness(CompactConfig::default(), Profile::Openai).await;
    let mut conversation = history();

    // A v1 local compaction replaces the history.
    let compacted = h
        .send(
            CompactForm::V1,
            &body_for(REFUSED, CompactForm::V1, conversation.clone()),
        )
        .await;
    conversation = compacted.json()["output"].as_array().unwrap().clone();
    assert!(conversation.iter().any(|i| i["type"] == "compaction"));

    // The next turn sends it back; the upstream sees the summary as a user message.
    conversation.push(json!({"type": "message", "role": "user", "content": [{"type": "input_text", "text": "carry on"}]}));
    let mut turn = body_for(REFUSED, CompactForm::V2, conversation.clone());
    turn["input"].as_array_mut().unwrap().pop(); // a normal turn, not a compaction
    let before = h.mock.request_count();
    let res = h.send_to("/responses", &turn).await;
    assert_eq!(res.status, StatusCode::OK);
    let seen = h.mock.requests()[before].json().unwrap();
    let input = seen["input"].as_array().unwrap();
    assert_eq!(input.len(), conversation.len());
    let expanded = input.iter().find(|i| {
        i["content"][0]["text"]
            .as_str()
            .is_some_and(|t| t.starts_with(SUMMARY_PREFIX))
    });
    let expanded = expanded.expect("the summary as a user message");
    assert_eq!(expanded["role"], "user");
    assert!(
        expanded["content"][0]["text"]
            .as_str()
            .unwrap()
            .ends_with(SUMMARY)
    );
    assert_eq!(
        h.metrics.get("tr_compact_summaries_expanded_total", &[]),
        Some(1.0)
    );

    // Compacting again (v2, with the marked item still in the history) expands it too.
    let again = h
        .send(
            CompactForm::V2,
            &body_for(REFUSED, CompactForm::V2, conversation.clone()),
        )
        .await;
    let item = again.v2_items().remove(0);
    conversation = vec![item, json!({"role": "user", "content": "and now?"})];
    // The supported model compacts remotely; the marked item is still expanded first.
    let remote = h
        .send(
            CompactForm::V1,
            &body_for(SUPPORTED, CompactForm::V1, conversation),
        )
        .await;
    assert_eq!(remote.compacted.map(|c| c.mode), Some(CompactMode::Remote));

    assert!(h.mock.request_count() >= 6);
    h.assert_no_marker_upstream();
}
