//! The `max_output_tokens` cap over real HTTP on loopback: a client gets the same bytes
//! whether `SoftFailureDetectLayer` sits below `BodyNormalizeLayer` (which then applies the
//! cap to the events it decodes anyway) or not (the cap decodes the stream itself), and
//! those bytes are what the documented rule says: the upstream's exact bytes up to the event
//! that would pass the cap, then one `response.incomplete`.

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::{ServiceBuilder, ServiceExt, service_fn};
use tower_responses::body::{ReplayBody, ResponseBody};
use tower_responses::connect::UpstreamClientBuilder;
use tower_responses::error::BoxError;
use tower_responses::metrics::Metrics;
use tower_responses::normalize::BodyNormalizeLayer;
use tower_responses::profile::Profile;
use tower_responses::soft_failure::{SoftFailure, SoftFailureConfig, SoftFailureDetectLayer};
use tower_responses::sse::SseDecoder;
use tower_responses::testing::{MockUpstream, Reply, events};

#[path = "common/sse_text.rs"]
mod sse_text;
use sse_text::{chunkings, numbered, sse};

const ID: &str = "resp_cap_1";
const MSG: &str = "msg_cap_1";

fn request(mock: &MockUpstream, cap: u64) -> Request<ReplayBody> {
    let body = json!({"model": "gpt-5.5", "input": "hi", "stream": true, "max_output_tokens": cap});
    Request::post(format!("{}/responses", mock.base_url()))
        .header("content-type", "application/json")
        .body(ReplayBody::new(body.to_string()))
        .unwrap()
}

fn normalize() -> BodyNormalizeLayer {
    BodyNormalizeLayer::for_profile(Profile::ChatgptCodex)
}

async fn bytes_of(res: Response<ResponseBody>) -> Bytes {
    assert_eq!(res.status(), 200);
    res.into_body().collect().await.unwrap().to_bytes()
}

/// What a client gets for `chunks` under `cap`, with soft-failure detection (configured so)
/// below the cap, or none.
async fn client_bytes(
    mock: &MockUpstream,
    soft: Option<SoftFailureConfig>,
    cap: u64,
    chunks: &[Bytes],
) -> Bytes {
    mock.push(Reply::sse_raw(chunks.to_vec()));
    let client = UpstreamClientBuilder::new().service();
    let res = match soft {
        Some(config) => ServiceBuilder::new()
            .layer(normalize())
            .layer(SoftFailureDetectLayer::with_config(config))
            .service(client)
            .oneshot(request(mock, cap))
            .await
            .unwrap(),
        None => ServiceBuilder::new()
            .layer(normalize())
            .service(client)
            .oneshot(request(mock, cap))
            .await
            .unwrap(),
    };
    bytes_of(res).await
}

/// A message answer streamed as `deltas`, in `style`.
fn answer(deltas: &[&str], style: usize) -> Bytes {
    let text: String = deltas.concat();
    let mut evs = sse_text::message(ID, MSG, deltas);
    evs.push(events::completed(
        ID,
        vec![events::message_item(MSG, &text)],
        events::usage(12, 7),
    ));
    sse_text::text(evs, style)
}

/// A function call whose arguments stream, after a short message.
fn tool_answer() -> Bytes {
    let call = json!({"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "f", "arguments": "", "status": "in_progress"});
    let args = |d: &str| json!({"type": "response.function_call_arguments.delta", "item_id": "fc_1", "output_index": 1, "delta": d});
    let evs = vec![
        events::created(ID),
        events::output_item_added(events::message_item_in_progress(MSG)),
        events::output_text_delta(MSG, "Calling."),
        events::output_item_done(events::message_item(MSG, "Calling.")),
        {
            let mut added = events::output_item_added(call.clone());
            added["output_index"] = json!(1);
            added
        },
        args("{\"city\":"),
        args("\"Paris\"}"),
        events::completed(ID, vec![], events::usage(3, 9)),
    ];
    Bytes::from(
        numbered(evs)
            .iter()
            .map(|ev| sse(ev, 0, 0))
            .collect::<String>(),
    )
}

/// Where the `n`th event of `bytes` (LF endings) ends.
fn nth_event_end(bytes: &[u8], n: usize) -> usize {
    let mut seen = 0;
    bytes
        .windows(2)
        .position(|w| {
            seen += usize::from(w == b"\n\n");
            seen == n
        })
        .unwrap()
        + 2
}

/// What the documented rule gives for `upstream` under `cap`: `None` when the stream passes
/// untouched, else the upstream bytes the client gets before the closing event.
fn expected_prefix(upstream: &Bytes, cap: u64) -> Option<Bytes> {
    let mut d = SseDecoder::new();
    d.push(upstream.clone());
    let mut chars = 0u64;
    let mut sent = 0;
    while let Some(ev) = d.next_event().unwrap() {
        let v: Value = serde_json::from_slice(&ev.data).unwrap();
        let ty = v["type"].as_str().unwrap();
        if matches!(
            ty,
            "response.completed" | "response.incomplete" | "response.failed"
        ) {
            return None;
        }
        if ty.ends_with(".delta") {
            chars += v["delta"].as_str().unwrap().chars().count() as u64;
            if chars.div_ceil(4) > cap {
                return Some(upstream.slice(..sent));
            }
        }
        sent += ev.raw.len();
    }
    None
}

/// Checks `got` against the rule: the upstream untouched, or its prefix then one
/// `response.incomplete` for `ID`.
fn assert_capped(got: &Bytes, upstream: &Bytes, cap: u64, case: &str) {
    let Some(prefix) = expected_prefix(upstream, cap) else {
        assert_eq!(
            got, upstream,
            "{case}: under the cap, the bytes pass untouched"
        );
        return;
    };
    assert!(
        got.starts_with(&prefix),
        "{case}: the events before the cut go out as the upstream sent them"
    );
    let mut d = SseDecoder::new();
    d.push(got.slice(prefix.len()..));
    let closing = d.next_event().unwrap().expect("a closing event");
    assert!(d.next_event().unwrap().is_none() && d.take_remainder().is_empty());
    let v: Value = serde_json::from_slice(&closing.data).unwrap();
    assert_eq!(v["type"], "response.incomplete", "{case}");
    assert_eq!(v["response"]["id"], ID, "{case}");
    assert_eq!(
        v["response"]["incomplete_details"]["reason"], "max_output_tokens",
        "{case}"
    );
}

fn small_hold() -> SoftFailureConfig {
    // The hold-back releases after one event: a cut then comes after the release, with the
    // held bytes possibly ending inside the event that is cut.
    SoftFailureConfig {
        max_held_events: 1,
        ..SoftFailureConfig::default()
    }
}

#[tokio::test]
async fn the_cap_gives_the_same_bytes_with_and_without_soft_failure_below() {
    let mock = MockUpstream::start().await.unwrap();
    let streams: Vec<(String, Bytes)> = [
        &["Hello", " world", ",", " how", " are", " you?"][..],
        &["héllo", " 🚀🚀", " naïve", " café"][..],
        &["a\"b", "line\nbreak", "tab\there", "\\"][..],
    ]
    .iter()
    .enumerate()
    .flat_map(|(n, deltas)| {
        (0..sse_text::STYLES)
            .map(move |style| (format!("deltas {n} style {style}"), answer(deltas, style)))
    })
    .chain([("tool call".to_owned(), tool_answer())])
    .collect();
    // 0 and 1 cut at the first content event (still in the hold-back), 1000 is never reached.
    let caps = [0u64, 1, 2, 3, 5, 8, 1000];
    for (name, upstream) in &streams {
        for (c, chunks) in chunkings(upstream).iter().enumerate() {
            for cap in caps {
                let case = format!("{name}, chunking {c}, cap {cap}");
                let alone = client_bytes(&mock, None, cap, chunks).await;
                assert_capped(&alone, upstream, cap, &case);
                for soft in [SoftFailureConfig::default(), small_hold()] {
                    let below = client_bytes(&mock, Some(soft), cap, chunks).await;
                    assert_eq!(
                        below,
                        alone,
                        "{case}: with soft-failure detection below\n{}\n---\n{}",
                        String::from_utf8_lossy(&below),
                        String::from_utf8_lossy(&alone)
                    );
                }
            }
        }
    }
}

/// A retry between the two layers, as rotation does: a failure before content is tried
/// again.
async fn retried(
    req: Request<ReplayBody>,
    inner: impl tower::Service<Request<ReplayBody>, Response = Response<ResponseBody>, Error = BoxError>
    + Clone,
) -> Result<Response<ResponseBody>, BoxError> {
    let again = tower_responses::body::clone_request(&req);
    let res = inner.clone().oneshot(req).await?;
    if res
        .extensions()
        .get::<SoftFailure>()
        .is_some_and(|s| s.before_content)
    {
        return inner.oneshot(again).await;
    }
    Ok(res)
}

#[tokio::test]
async fn a_retried_attempt_is_capped_afresh() {
    let mock = MockUpstream::start().await.unwrap();
    // The first attempt fails before content, after a response whose usage the second's
    // lacks: a gate carried over from it would report that usage in the closing event.
    let mut created = events::created("resp_first");
    created["response"]["usage"] = events::usage(999, 0);
    let failing = Bytes::from(
        numbered(vec![
            created,
            events::failed("resp_first", "server_error", "boom"),
        ])
        .iter()
        .map(events::encode)
        .collect::<Vec<_>>()
        .concat(),
    );
    let upstream = answer(&["abcd", "efgh", "ijkl", "mnop"], 0);
    let cap = 2;
    mock.push(Reply::sse_raw(vec![failing]));
    mock.push(Reply::sse_raw(vec![upstream.clone()]));
    let client = UpstreamClientBuilder::new().service();
    let inner = ServiceBuilder::new()
        .layer(SoftFailureDetectLayer::new())
        .service(client);
    let svc = ServiceBuilder::new()
        .layer(normalize())
        .service(service_fn(move |req| retried(req, inner.clone())));
    let got = bytes_of(svc.oneshot(request(&mock, cap)).await.unwrap()).await;
    assert_capped(&got, &upstream, cap, "retried");
    assert!(!String::from_utf8_lossy(&got).contains("999"));
    let alone = client_bytes(&mock, None, cap, std::slice::from_ref(&upstream)).await;
    assert_eq!(got, alone);
    assert_eq!(mock.requests().len(), 3);
}

#[tokio::test]
async fn a_stream_too_long_to_decode_is_not_capped_either_way() {
    let mock = MockUpstream::start().await.unwrap();
    // After the first delta, a line past every decoder's bound (4 MiB): both stop enforcing
    // there and pass the rest as it came, deltas past the cap included.
    let answer = answer(&["abcd", "efgh", "ijkl", "mnop"], 0);
    let events_end = nth_event_end(&answer, 5);
    let long = format!(
        ": {}\n\n",
        "x".repeat(tower_responses::sse::DEFAULT_MAX_LINE + 1)
    );
    let mut upstream = answer[..events_end].to_vec();
    upstream.extend_from_slice(long.as_bytes());
    upstream.extend_from_slice(&answer[events_end..]);
    let upstream = Bytes::from(upstream);
    let chunks = vec![upstream.slice(..events_end), upstream.slice(events_end..)];
    let alone = client_bytes(&mock, None, 1, &chunks).await;
    assert_eq!(alone, upstream, "no longer capped");
    let below = client_bytes(&mock, Some(SoftFailureConfig::default()), 1, &chunks).await;
    assert_eq!(below, upstream, "no longer capped");
}

/// What a client gets under `cap` when the upstream sends `upstream[..half]`, then drops the
/// connection, soft-failure detection below the cap.
async fn broken_off(mock: &MockUpstream, upstream: &Bytes, half: usize, cap: u64) -> Bytes {
    mock.push(
        Reply::sse_raw(vec![upstream.slice(..half), upstream.slice(half..)]).close_mid_stream(1),
    );
    let res = ServiceBuilder::new()
        .layer(normalize())
        .layer(SoftFailureDetectLayer::new())
        .service(UpstreamClientBuilder::new().service())
        .oneshot(request(mock, cap))
        .await
        .unwrap();
    bytes_of(res).await
}

#[tokio::test]
async fn a_capped_stream_that_breaks_off_still_ends_with_response_failed() {
    let mock = MockUpstream::start().await.unwrap();
    let upstream = answer(&["ab", "cd", "ef", "gh"], 0);
    // The connection drops halfway through the third delta: under the cap so far.
    let half = nth_event_end(&upstream, 6) + 30;
    let got = broken_off(&mock, &upstream, half, 1000).await;
    assert!(
        got.starts_with(&upstream[..half]),
        "the whole events, then the half one"
    );
    let mut d = SseDecoder::new();
    d.push(got.slice(half..));
    let mut last = None;
    while let Some(ev) = d.next_event().unwrap() {
        last = Some(ev);
    }
    let v: Value = serde_json::from_slice(&last.expect("a closing event").data).unwrap();
    assert_eq!(v["type"], "response.failed");
    assert_eq!(v["response"]["id"], ID);
    assert_eq!(v["response"]["error"]["code"], "upstream_unavailable");

    // The same break after the cap cut the first delta: the cap's close is the end.
    let got = broken_off(&mock, &upstream, half, 0).await;
    assert_capped(&got, &upstream, 0, "broken and capped");
}

#[tokio::test]
async fn a_cut_below_is_counted_once() {
    let mock = MockUpstream::start().await.unwrap();
    let upstream = answer(&["abcd", "efgh", "ijkl"], 0);
    mock.push(Reply::sse_raw(vec![upstream.clone()]));
    let metrics = Metrics::new();
    let res = ServiceBuilder::new()
        .layer(normalize().metrics(metrics.clone()))
        .layer(SoftFailureDetectLayer::new())
        .service(UpstreamClientBuilder::new().service())
        .oneshot(request(&mock, 1))
        .await
        .unwrap();
    let got = bytes_of(res).await;
    assert_capped(&got, &upstream, 1, "counted");
    assert_eq!(
        metrics.get("tr_normalize_capped_total", &[("profile", "chatgpt-codex")]),
        Some(1.0)
    );
}
