//! The `stream:false` fold over real HTTP on loopback: a client gets the same answer (status,
//! headers that matter, body, and the retry-safety mark rotation reads) whether
//! `SoftFailureDetectLayer` sits below `BodyNormalizeLayer` (which then reads the events that
//! layer decodes anyway) or not (the fold decodes the stream itself), over many streams and
//! chunkings, streams that fail before and after content, break off, or carry a line too
//! long for the layer below to decode.

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::{ServiceBuilder, ServiceExt};
use tower_responses::body::{ReplayBody, ResponseBody};
use tower_responses::connect::UpstreamClientBuilder;
use tower_responses::normalize::BodyNormalizeLayer;
use tower_responses::profile::Profile;
use tower_responses::soft_failure::{SoftFailure, SoftFailureConfig, SoftFailureDetectLayer};
use tower_responses::testing::{MockUpstream, Reply, events};

#[path = "common/sse_text.rs"]
mod sse_text;
use sse_text::{STYLES, chunkings, text};

const ID: &str = "resp_fold_1";
const MSG: &str = "msg_fold_1";

fn request(mock: &MockUpstream) -> Request<ReplayBody> {
    // No `stream`: the Codex profile asks the upstream for a stream and folds it.
    let body = json!({"model": "gpt-5.5", "input": "hi"});
    Request::post(format!("{}/responses", mock.base_url()))
        .header("content-type", "application/json")
        .body(ReplayBody::new(body.to_string()))
        .unwrap()
}

/// What the client can tell of an answer: status, content type, body, and whether rotation
/// may try it again.
#[derive(Debug, PartialEq)]
struct Seen {
    status: u16,
    content_type: Option<String>,
    body: Bytes,
    retry_safe: Option<bool>,
}

async fn seen(res: Response<ResponseBody>) -> Seen {
    let status = res.status().as_u16();
    let content_type = res
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned());
    let retry_safe = res
        .extensions()
        .get::<SoftFailure>()
        .map(|s| s.before_content);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    Seen {
        status,
        content_type,
        body,
        retry_safe,
    }
}

async fn answer_of(mock: &MockUpstream, soft: Option<SoftFailureConfig>, reply: Reply) -> Seen {
    mock.push(reply);
    let client = UpstreamClientBuilder::new().service();
    let normalize = BodyNormalizeLayer::for_profile(Profile::ChatgptCodex);
    let res = match soft {
        Some(config) => ServiceBuilder::new()
            .layer(normalize)
            .layer(SoftFailureDetectLayer::with_config(config))
            .service(client)
            .oneshot(request(mock))
            .await
            .unwrap(),
        None => ServiceBuilder::new()
            .layer(normalize)
            .service(client)
            .oneshot(request(mock))
            .await
            .unwrap(),
    };
    seen(res).await
}

fn message(deltas: &[&str]) -> Vec<Value> {
    sse_text::message(ID, MSG, deltas)
}

#[tokio::test]
async fn the_fold_answers_the_same_with_and_without_soft_failure_below() {
    let mock = MockUpstream::start().await.unwrap();
    let done = |deltas: &[&str]| {
        let text: String = deltas.concat();
        let mut evs = message(deltas);
        evs.push(events::completed(
            ID,
            vec![events::message_item(MSG, &text)],
            events::usage(12, 7),
        ));
        evs
    };
    let long: String = "long ".repeat(400);
    let mut streams: Vec<(String, Vec<Value>)> = vec![
        ("message".into(), done(&["Hello", " world", "!"])),
        ("escapes".into(), done(&["a\"b", "line\nbreak", "🚀 café"])),
        ("long delta".into(), done(&[&long, "end"])),
        ("empty output, rebuilt from the items".into(), {
            let mut evs = message(&["Hi"]);
            evs.push(events::completed(ID, vec![], events::usage(1, 1)));
            evs
        }),
        ("incomplete".into(), {
            let evs = message(&["cut"]);
            let mut end = events::completed(ID, vec![], events::usage(1, 1));
            end["type"] = json!("response.incomplete");
            end["response"]["status"] = json!("incomplete");
            evs.into_iter().chain([end]).collect()
        }),
        (
            "failed before content".into(),
            vec![
                events::created(ID),
                events::failed(ID, "server_error", "boom"),
            ],
        ),
        ("failed after content".into(), {
            let mut evs = message(&["partial"]);
            evs.push(events::failed(ID, "server_error", "boom"));
            evs
        }),
        (
            "error event".into(),
            vec![
                events::created(ID),
                json!({"type": "error", "code": "rate_limit_exceeded", "message": "slow down"}),
            ],
        ),
    ];
    // A message whose every event is past the layer below's line bound (set small here).
    streams.push((
        "lines past the bound below".into(),
        done(&[&"x".repeat(3000)]),
    ));
    let tight = SoftFailureConfig {
        max_line: 2048,
        ..SoftFailureConfig::default()
    };
    let one_event = SoftFailureConfig {
        max_held_events: 1,
        ..SoftFailureConfig::default()
    };
    let mut answers = 0;
    for (name, evs) in &streams {
        for style in 0..STYLES {
            let upstream = text(evs.clone(), style);
            for (c, chunks) in chunkings(&upstream).into_iter().enumerate() {
                let case = format!("{name}, style {style}, chunking {c}");
                let alone = answer_of(&mock, None, Reply::sse_raw(chunks.clone())).await;
                answers += usize::from(alone.status == 200);
                for soft in [
                    SoftFailureConfig::default(),
                    one_event.clone(),
                    tight.clone(),
                ] {
                    let below = answer_of(&mock, Some(soft), Reply::sse_raw(chunks.clone())).await;
                    // The layer below marks failures it classified itself; the answer the
                    // client reads and whether it may be retried are the fold's.
                    assert_eq!(
                        (below.status, &below.content_type, &below.body),
                        (alone.status, &alone.content_type, &alone.body),
                        "{case}\n{}\n---\n{}",
                        String::from_utf8_lossy(&below.body),
                        String::from_utf8_lossy(&alone.body)
                    );
                    if alone.retry_safe.is_some() {
                        assert_eq!(below.retry_safe, alone.retry_safe, "{case}");
                    }
                }
            }
        }
    }
    assert!(
        answers >= 6 * 9,
        "most streams fold into an answer: {answers}"
    );

    // A stream that ends without a terminal event after content: the layer below answers
    // it with its own error event, which the fold turns into an error that must not be
    // retried (the output was generated), read from the gate or not.
    let upstream = text(message(&["never", " done"]), 0);
    for chunks in chunkings(&upstream) {
        for soft in [
            SoftFailureConfig::default(),
            one_event.clone(),
            tight.clone(),
        ] {
            let below = answer_of(&mock, Some(soft), Reply::sse_raw(chunks.clone())).await;
            assert!(below.status >= 500, "{below:?}");
            assert_eq!(below.retry_safe, Some(false), "{below:?}");
        }
        let alone = answer_of(&mock, None, Reply::sse_raw(chunks.clone())).await;
        assert_eq!((alone.status, alone.retry_safe), (502, Some(false)));
    }
}

#[tokio::test]
async fn a_stream_that_breaks_after_content_is_not_retried_with_or_without_the_layer_below() {
    let mock = MockUpstream::start().await.unwrap();
    let upstream = text(message(&["partial", " answer"]), 0);
    let per_event: Vec<Bytes> = upstream
        .split_inclusive(|&b| b == b'\n')
        .collect::<Vec<_>>()
        .chunks(3)
        .map(|lines| Bytes::from(lines.concat()))
        .collect();
    for after in [2, 5] {
        let reply = || Reply::sse_raw(per_event.clone()).reset_mid_stream(after);
        let alone = answer_of(&mock, None, reply()).await;
        let below = answer_of(&mock, Some(SoftFailureConfig::default()), reply()).await;
        // (The layer below words a break itself: before content as a 502, after content as
        // the error event the fold answers with a 500.)
        assert_eq!(alone.status, 502, "after {after} events");
        assert!(below.status >= 500, "after {after} events: {below:?}");
        // Content had gone by after five events, not after two.
        assert_eq!(alone.retry_safe, Some(after < 5), "after {after} events");
        assert_eq!(below.retry_safe, alone.retry_safe, "after {after} events");
    }
}
