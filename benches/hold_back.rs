//! What soft-failure detection adds per event: a realistic 58-event Responses stream, one
//! event per frame, read to the end straight from the upstream service and through
//! `SoftFailureDetectLayer` (hold-back until the first content event, then watching every
//! event for failures and ending the body after the terminal one). The difference between
//! the two, divided by the events, is the layer's cost per event (aim: under 5 µs).
// `criterion_group!` generates a public function without docs.
#![allow(missing_docs)]

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use tower::{ServiceExt, service_fn};
use tower_layer::Layer;
use tower_responses::body::{ReplayBody, ResponseBody};
use tower_responses::error::BoxError;
use tower_responses::soft_failure::SoftFailureDetectLayer;

/// Frames that are all ready at once, as when the upstream is faster than the client.
struct Frames(VecDeque<Bytes>);

impl Body for Frames {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.pop_front().map(|b| Ok(Frame::data(b))))
    }
}

/// The platform's shape: `type` first, then `sequence_number`, ids and the payload.
fn events() -> Vec<Bytes> {
    let resp = |status: &str, extra: &str| {
        format!(
            r#"{{"id":"resp_68a1f0c2e9b88190a4c1d2e3f4a5b6c7","object":"response","created_at":1755426498,"status":"{status}","background":false,"error":null,"incomplete_details":null,"instructions":null,"max_output_tokens":null,"model":"gpt-5-codex","output":[],"parallel_tool_calls":false,"previous_response_id":null,"reasoning":{{"effort":"medium","summary":null}},"store":false,"temperature":1.0,"text":{{"format":{{"type":"text"}}}},"tool_choice":"auto","tools":[],"top_p":1.0,"truncation":"disabled","usage":{extra},"metadata":{{}}}}"#
        )
    };
    let msg = "msg_68a1f0c5d2e08190b7c6a5b4c3d2e1f0";
    let mut out = Vec::new();
    let mut seq = 0;
    let mut push = |ty: &str, rest: String| {
        out.push(Bytes::from(format!(
            "event: {ty}\ndata: {{\"type\":\"{ty}\",\"sequence_number\":{seq},{rest}}}\n\n"
        )));
        seq += 1;
    };
    push(
        "response.created",
        format!(r#""response":{}"#, resp("in_progress", "null")),
    );
    push(
        "response.in_progress",
        format!(r#""response":{}"#, resp("in_progress", "null")),
    );
    push(
        "response.output_item.added",
        format!(
            r#""output_index":0,"item":{{"id":"{msg}","type":"message","status":"in_progress","content":[],"role":"assistant"}}"#
        ),
    );
    push(
        "response.content_part.added",
        format!(
            r#""item_id":"{msg}","output_index":0,"content_index":0,"part":{{"type":"output_text","annotations":[],"logprobs":[],"text":""}}"#
        ),
    );
    for i in 0..50 {
        push(
            "response.output_text.delta",
            format!(
                r#""item_id":"{msg}","output_index":0,"content_index":0,"delta":" word{i}","logprobs":[],"obfuscation":"aB3dE5gH""#
            ),
        );
    }
    push(
        "response.output_text.done",
        format!(
            r#""item_id":"{msg}","output_index":0,"content_index":0,"text":"...","logprobs":[]"#
        ),
    );
    push(
        "response.content_part.done",
        format!(
            r#""item_id":"{msg}","output_index":0,"content_index":0,"part":{{"type":"output_text","annotations":[],"logprobs":[],"text":"..."}}"#
        ),
    );
    push(
        "response.output_item.done",
        format!(
            r#""output_index":0,"item":{{"id":"{msg}","type":"message","status":"completed","content":[],"role":"assistant"}}"#
        ),
    );
    push(
        "response.completed",
        format!(
            r#""response":{}"#,
            resp(
                "completed",
                r#"{"input_tokens":1843,"input_tokens_details":{"cached_tokens":1536},"output_tokens":50,"output_tokens_details":{"reasoning_tokens":0},"total_tokens":1893}"#
            )
        ),
    );
    out
}

fn hold_back(c: &mut Criterion) {
    let events = events();
    let n = events.len();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let upstream = move |events: Vec<Bytes>| {
        service_fn(move |_req: http::Request<ReplayBody>| {
            let body: ResponseBody = Frames(events.clone().into())
                .map_err(|e| match e {})
                .boxed_unsync();
            async move {
                Ok::<_, BoxError>(
                    http::Response::builder()
                        .header("content-type", "text/event-stream")
                        .body(body)
                        .expect("response"),
                )
            }
        })
    };
    let read_all = |res: http::Response<ResponseBody>| async move {
        let mut body = res.into_body();
        let mut bytes = 0;
        while let Some(frame) = body.frame().await {
            bytes += frame.expect("frame").into_data().map_or(0, |d| d.len());
        }
        bytes
    };

    let mut group = c.benchmark_group("hold_back");
    group.throughput(Throughput::Elements(n as u64));
    let svc = upstream(events.clone());
    group.bench_function("passthrough_58_events", |b| {
        b.iter(|| {
            rt.block_on(async {
                let res = svc
                    .clone()
                    .oneshot(http::Request::new(ReplayBody::default()))
                    .await;
                read_all(res.expect("answer")).await
            })
        })
    });
    let layered = SoftFailureDetectLayer::new().layer(upstream(events.clone()));
    let total: usize = events.iter().map(Bytes::len).sum();
    group.bench_function("soft_failure_58_events", |b| {
        b.iter(|| {
            rt.block_on(async {
                let res = layered
                    .clone()
                    .oneshot(http::Request::new(ReplayBody::default()))
                    .await;
                let got = read_all(res.expect("answer")).await;
                assert_eq!(got, total, "the layer must pass every byte");
                got
            })
        })
    });
    group.finish();
}

criterion_group!(benches, hold_back);
criterion_main!(benches);
