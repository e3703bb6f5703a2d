//! SoftFailureDetectLayer against the mock upstream over loopback, and against exact chunkings.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::{ServiceBuilder, ServiceExt, service_fn};
use tower_responses::body::{ReplayBody, ResponseBody};
use tower_responses::classify::{Failure, FailureClass};
use tower_responses::connect::UpstreamClientBuilder;
use tower_responses::credentials::CredentialLease;
use tower_responses::error::BoxError;
use tower_responses::metrics::Metrics;
use tower_responses::soft_failure::{SoftFailure, SoftFailureConfig, SoftFailureDetectLayer};
use tower_responses::testing::{MockUpstream, Reply, events};

fn request(mock: &MockUpstream) -> Request<ReplayBody> {
    let body = json!({"model": "gpt-5.5", "stream": true, "input": "hi"});
    Request::post(format!("{}/responses", mock.base_url()))
        .header("content-type", "application/json")
        .body(ReplayBody::new(Bytes::from(body.to_string())))
        .unwrap()
}

type Reports = Arc<Mutex<Vec<(String, FailureClass)>>>;

fn leased(mut req: Request<ReplayBody>) -> (Request<ReplayBody>, Reports) {
    let reports: Reports = Arc::default();
    let sink = reports.clone();
    req.extensions_mut().insert(CredentialLease::new(
        "key-a",
        move |c: &str, f: &Failure| {
            sink.lock().unwrap().push((c.to_string(), f.class));
        },
    ));
    (req, reports)
}

fn failed_stream(code: &str, message: &str) -> Vec<Value> {
    vec![
        events::created("resp_f"),
        events::in_progress("resp_f"),
        events::failed("resp_f", code, message),
    ]
}

async fn through_layer(
    mock: &MockUpstream,
    layer: SoftFailureDetectLayer,
) -> (Response<ResponseBody>, Reports) {
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service(UpstreamClientBuilder::new().service());
    let (req, reports) = leased(request(mock));
    (svc.oneshot(req).await.expect("answer"), reports)
}

#[tokio::test]
async fn quota_failure_after_lifecycle_events_is_marked_before_content() {
    let mock = MockUpstream::start().await.unwrap();
    mock.push(Reply::sse(failed_stream(
        "insufficient_quota",
        "You exceeded your current quota",
    )));
    let (res, reports) = through_layer(&mock, SoftFailureDetectLayer::new()).await;
    assert_eq!(res.status(), 200);
    let marked = res
        .extensions()
        .get::<SoftFailure>()
        .expect("marked")
        .clone();
    assert_eq!(marked.failure.class, FailureClass::QuotaExhausted);
    assert!(marked.before_content);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8_lossy(&body);
    assert!(
        text.contains("response.created") && text.contains("insufficient_quota"),
        "original bytes kept: {text}"
    );
    assert!(
        reports.lock().unwrap().is_empty(),
        "before content, the outer layer decides; nothing reported yet"
    );
}

#[tokio::test]
async fn failure_after_content_is_passed_through_once_and_reported_to_the_lease() {
    let mock = MockUpstream::start().await.unwrap();
    let mut evs = vec![
        events::created("resp_c"),
        events::in_progress("resp_c"),
        events::output_item_added(events::message_item_in_progress("msg_c")),
        events::output_text_delta("msg_c", "Hello"),
    ];
    evs.push(events::failed(
        "resp_c",
        "rate_limit_exceeded",
        "Rate limit reached. Please try again in 20s.",
    ));
    mock.push(Reply::sse(evs));
    let metrics = Metrics::new();
    let (res, reports) = through_layer(
        &mock,
        SoftFailureDetectLayer::new().metrics(metrics.clone()),
    )
    .await;
    assert!(
        res.extensions().get::<SoftFailure>().is_none(),
        "content went out: not retryable"
    );
    let body = res.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8_lossy(&body);
    assert_eq!(
        text.matches("response.failed").count(),
        2,
        "event: and type: of one failed event: {text}"
    );
    assert_eq!(text.matches("response.created").count(), 2);
    assert_eq!(
        *reports.lock().unwrap(),
        vec![("key-a".to_string(), FailureClass::RateLimited)]
    );
    assert_eq!(
        metrics.get(
            "tr_soft_failures_total",
            &[("class", "rate_limited"), ("phase", "after_content")]
        ),
        Some(1.0)
    );
}

/// A text delta as the platform writes it: `"type"` first (the mock's `events` sort keys).
fn platform_delta(n: usize, event_line: bool) -> String {
    let data = format!(
        r#"{{"type":"response.output_text.delta","sequence_number":{n},"item_id":"msg_p","output_index":0,"content_index":0,"delta":" word{n}"}}"#
    );
    match event_line {
        true => format!("event: response.output_text.delta\ndata: {data}\n\n"),
        false => format!("data: {data}\n\n"),
    }
}

/// After the first content event the watch steps over text deltas without decoding them:
/// what follows them (a failure, the end of the body) is still seen, and every byte passes.
#[tokio::test]
async fn what_follows_the_text_deltas_is_seen_however_they_arrive() {
    for (event_lines, per_event, then_fail) in [
        (true, false, true),
        (false, false, true),
        (true, true, true),
        (true, false, false),
        (false, true, false),
    ] {
        let mut chunks: Vec<Bytes> = [
            events::created("resp_p"),
            events::in_progress("resp_p"),
            events::output_item_added(events::message_item_in_progress("msg_p")),
        ]
        .iter()
        .map(events::encode)
        .collect();
        let mut rest: Vec<String> = (0..40).map(|n| platform_delta(n, event_lines)).collect();
        if then_fail {
            let failed = events::failed("resp_p", "rate_limit_exceeded", "Rate limit reached.");
            rest.push(String::from_utf8(events::encode(&failed).to_vec()).unwrap());
        }
        let mut sent: Vec<u8> = chunks.iter().flat_map(|b| b.to_vec()).collect();
        sent.extend_from_slice(rest.concat().as_bytes());
        match per_event {
            true => chunks.extend(rest.into_iter().map(Bytes::from)),
            false => chunks.push(Bytes::from(rest.concat())),
        }
        let mock = MockUpstream::start().await.unwrap();
        mock.push(Reply::sse_raw(chunks));
        let metrics = Metrics::new();
        let (res, reports) = through_layer(
            &mock,
            SoftFailureDetectLayer::new().metrics(metrics.clone()),
        )
        .await;
        let body = res.into_body().collect().await.unwrap().to_bytes();
        let case = format!("event lines {event_lines}, per event {per_event}, failed {then_fail}");
        assert!(body.starts_with(&sent), "{case}: every byte as sent");
        let after_content = metrics.get(
            "tr_soft_failures_total",
            &[("class", "rate_limited"), ("phase", "after_content")],
        );
        if then_fail {
            assert_eq!(
                body.len(),
                sent.len(),
                "{case}: the stream as sent, nothing added"
            );
            assert_eq!(
                *reports.lock().unwrap(),
                vec![("key-a".to_string(), FailureClass::RateLimited)],
                "{case}"
            );
            assert_eq!(after_content, Some(1.0), "{case}");
        } else {
            // No terminal event after the deltas: the client still gets one.
            let tail = String::from_utf8_lossy(&body[sent.len()..]).into_owned();
            assert!(
                tail.contains("response.failed") && tail.contains("upstream_unavailable"),
                "{case}: {tail}"
            );
            assert!(reports.lock().unwrap().is_empty(), "{case}");
            assert_eq!(after_content, None, "{case}");
        }
    }
}

#[tokio::test]
async fn a_stream_without_content_within_the_bound_is_released_as_is() {
    let mock = MockUpstream::start().await.unwrap();
    let mut evs: Vec<Value> = (0..6).map(|_| events::in_progress("resp_slow")).collect();
    evs.insert(0, events::created("resp_slow"));
    evs.extend(events::text_answer("late answer").into_iter().skip(2));
    let expected: String = evs
        .iter()
        .map(|e| format!("event: {}\ndata: {}\n\n", e["type"].as_str().unwrap(), e))
        .collect();
    mock.push(Reply::sse(evs));
    let layer = SoftFailureDetectLayer::with_config(SoftFailureConfig {
        max_held_events: 3,
        ..Default::default()
    });
    let (res, _) = through_layer(&mock, layer).await;
    assert!(res.extensions().get::<SoftFailure>().is_none());
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(String::from_utf8_lossy(&body), expected, "byte-identical");
}

#[tokio::test]
async fn a_slow_start_is_released_after_the_time_bound_not_held_forever() {
    let mock = MockUpstream::start().await.unwrap();
    // Lifecycle events, then silence on an open connection: a model still queueing.
    mock.push(
        Reply::sse(vec![
            events::created("resp_q"),
            events::in_progress("resp_q"),
        ])
        .hold_open(),
    );
    let layer = SoftFailureDetectLayer::with_config(SoftFailureConfig {
        max_hold: Duration::from_millis(300),
        ..Default::default()
    });
    // Bounded wait: without the time bound the layer would hold the head as long as the
    // upstream stays silent.
    let (res, _) = tokio::time::timeout(Duration::from_secs(20), through_layer(&mock, layer))
        .await
        .expect("the held answer is released after max_hold");
    assert!(
        res.extensions().get::<SoftFailure>().is_none(),
        "slow is not failed"
    );
    let mut body = res.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    let text = String::from_utf8_lossy(&first);
    assert!(
        text.contains("response.created") && text.contains("response.in_progress"),
        "the held events go out together: {text}"
    );
}

#[tokio::test]
async fn a_terminal_event_ends_the_body_even_if_the_upstream_stays_open() {
    let mock = MockUpstream::start().await.unwrap();
    mock.push(Reply::text("all done").hold_open());
    let (res, _) = through_layer(&mock, SoftFailureDetectLayer::new()).await;
    // Bounded wait: the upstream never closes, so only the layer can end the body.
    let body = tokio::time::timeout(Duration::from_secs(20), res.into_body().collect())
        .await
        .expect("the body ends after response.completed")
        .unwrap()
        .to_bytes();
    assert!(String::from_utf8_lossy(&body).contains("response.completed"));
}

#[tokio::test]
async fn a_stream_cut_before_content_is_marked_retryable() {
    let mock = MockUpstream::start().await.unwrap();
    mock.push(Reply::sse(vec![
        events::created("resp_cut"),
        events::in_progress("resp_cut"),
    ]));
    let (res, _) = through_layer(&mock, SoftFailureDetectLayer::new()).await;
    let marked = res
        .extensions()
        .get::<SoftFailure>()
        .expect("marked")
        .clone();
    assert!(marked.before_content);
    assert!(marked.failure.class.retry_elsewhere());
}

#[tokio::test]
async fn http_errors_and_failed_json_objects_are_classified() {
    let mock = MockUpstream::start().await.unwrap();
    let cases = [
        (
            Reply::json(
                http::StatusCode::TOO_MANY_REQUESTS,
                json!({"error": {"type": "usage_limit_reached", "message": "The usage limit has been reached", "resets_at": 4_102_444_800u64}}),
            ),
            FailureClass::QuotaExhausted,
        ),
        (
            Reply::json(
                http::StatusCode::OK,
                json!({"id": "resp_j", "object": "response", "status": "failed", "error": {"code": "server_is_overloaded", "message": "busy"}}),
            ),
            FailureClass::Overloaded,
        ),
        (
            Reply::raw(
                http::StatusCode::BAD_GATEWAY,
                "text/plain",
                "error code: 502",
            ),
            FailureClass::Transient,
        ),
    ];
    for (reply, class) in cases {
        mock.push(reply);
        let (res, _) = through_layer(&mock, SoftFailureDetectLayer::new()).await;
        let marked = res
            .extensions()
            .get::<SoftFailure>()
            .unwrap_or_else(|| panic!("{class:?} not marked"))
            .clone();
        assert_eq!(marked.failure.class, class);
        let body = res.into_body().collect().await.unwrap().to_bytes();
        assert!(!body.is_empty(), "body kept for the client");
    }
}

/// Each code/phrase class of PROTOCOL.md section 3, as it arrives inside a 200 stream.
#[tokio::test]
async fn in_stream_codes_map_to_their_classes() {
    let table = [
        ("insufficient_quota", "x", FailureClass::QuotaExhausted),
        ("usage_limit_reached", "x", FailureClass::QuotaExhausted),
        ("usage_not_included", "x", FailureClass::QuotaExhausted),
        ("rate_limit_exceeded", "x", FailureClass::RateLimited),
        ("server_is_overloaded", "x", FailureClass::Overloaded),
        ("server_error", "x", FailureClass::Transient),
        ("context_length_exceeded", "x", FailureClass::ContextLength),
        ("invalid_prompt", "x", FailureClass::InvalidRequest),
        ("cyber_policy", "x", FailureClass::ContentPolicy),
        (
            "unknown_code_zz",
            "Your credit balance is too low",
            FailureClass::QuotaExhausted,
        ),
        (
            "unknown_code_zz",
            "Too many requests, slow down",
            FailureClass::RateLimited,
        ),
    ];
    for (code, message, class) in table {
        let body = sse_bytes(&failed_stream(code, message));
        let res = run_chunked(vec![body]).await;
        let marked = res
            .extensions()
            .get::<SoftFailure>()
            .unwrap_or_else(|| panic!("{code} not marked"))
            .clone();
        assert_eq!(marked.failure.class, class, "{code} / {message}");
    }
}

fn sse_bytes(evs: &[Value]) -> Bytes {
    let s: String = evs
        .iter()
        .map(|e| format!("event: {}\ndata: {}\n\n", e["type"].as_str().unwrap(), e))
        .collect();
    Bytes::from(s)
}

/// A response body delivered in exactly these chunks.
struct Chunks(VecDeque<Bytes>);

impl http_body::Body for Chunks {
    type Data = Bytes;
    type Error = BoxError;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        Poll::Ready(self.0.pop_front().map(|b| Ok(http_body::Frame::data(b))))
    }
}

async fn run_chunked(chunks: Vec<Bytes>) -> Response<ResponseBody> {
    let chunks = Arc::new(Mutex::new(Some(chunks)));
    let upstream = service_fn(move |_req: Request<ReplayBody>| {
        let chunks = chunks.lock().unwrap().take().unwrap();
        async move {
            let body: ResponseBody = Chunks(chunks.into()).boxed_unsync();
            Ok::<_, BoxError>(
                Response::builder()
                    .header("content-type", "text/event-stream")
                    .body(body)
                    .unwrap(),
            )
        }
    });
    let svc = ServiceBuilder::new()
        .layer(SoftFailureDetectLayer::new())
        .service(upstream);
    svc.oneshot(Request::new(ReplayBody::default()))
        .await
        .unwrap()
}

#[tokio::test]
async fn any_chunking_gives_the_same_verdict() {
    let streams = [
        (
            sse_bytes(&failed_stream("insufficient_quota", "no quota")),
            Some(FailureClass::QuotaExhausted),
        ),
        (
            sse_bytes(&events::text_answer("a fine answer with several words")),
            None,
        ),
    ];
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    for (bytes, verdict) in streams {
        for case in 0..200 {
            let mut cuts = Vec::new();
            let mut at = 0usize;
            while at < bytes.len() {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let step = if case == 0 {
                    1
                } else {
                    1 + (seed % 97) as usize
                };
                let end = (at + step).min(bytes.len());
                cuts.push(bytes.slice(at..end));
                at = end;
            }
            let res = run_chunked(cuts).await;
            let got = res
                .extensions()
                .get::<SoftFailure>()
                .map(|m| m.failure.class);
            assert_eq!(got, verdict, "case {case}");
            let body = res.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(body, bytes, "case {case}: bytes unchanged");
        }
    }
}
