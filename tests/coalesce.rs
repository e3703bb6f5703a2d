//! `body::Coalesce` through the whole stack against the mock upstream over loopback: what
//! the upstream sent together reaches the client together, byte for byte, and an event on
//! its own is never held waiting for more.

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::BodyExt;
use serde_json::json;
use tower::ServiceExt;
use tower_responses::body::{COALESCE_MAX_BYTES, ReplayBody};
use tower_responses::connect::UpstreamClientBuilder;
use tower_responses::stack::ResponsesStack;
use tower_responses::testing::{MockUpstream, Reply, events};

fn request(mock: &MockUpstream) -> Request<ReplayBody> {
    let body = json!({"model": "gpt-5.5", "stream": true, "input": "hi"});
    Request::post(format!("{}/responses", mock.base_url()))
        .header("content-type", "application/json")
        .body(ReplayBody::new(Bytes::from(body.to_string())))
        .unwrap()
}

#[tokio::test]
async fn events_sent_together_arrive_together_and_byte_identical() {
    let mock = MockUpstream::start().await.unwrap();
    let mut evs = vec![
        events::created("resp_c"),
        events::in_progress("resp_c"),
        events::output_item_added(events::message_item_in_progress("msg_c")),
        events::content_part_added("msg_c"),
    ];
    let deltas = 200;
    for i in 0..deltas {
        evs.push(events::output_text_delta("msg_c", &format!(" w{i}")));
    }
    evs.push(events::completed(
        "resp_c",
        vec![],
        events::usage(3, deltas),
    ));
    let expected: Vec<u8> = evs
        .iter()
        .flat_map(|e| events::encode(e).to_vec())
        .collect();
    let sent = evs.len();
    mock.push(Reply::sse(evs));

    let svc = ResponsesStack::new().client(&UpstreamClientBuilder::new());
    let res = svc.oneshot(request(&mock)).await.unwrap();
    assert_eq!(res.status(), 200);
    let mut body = res.into_body();
    let (mut got, mut frames) = (Vec::new(), 0usize);
    let within = Duration::from_secs(20);
    while let Some(frame) = tokio::time::timeout(within, body.frame())
        .await
        .expect("the stream flows")
    {
        let data = frame.unwrap().into_data().unwrap();
        assert!(data.len() <= COALESCE_MAX_BYTES * 2, "frames stay bounded");
        got.extend_from_slice(&data);
        frames += 1;
    }
    assert_eq!(
        String::from_utf8_lossy(&got),
        String::from_utf8_lossy(&expected),
        "byte-identical"
    );
    // The mock writes each event as its own chunk; the client saw far fewer frames.
    assert!(
        frames < sent,
        "{frames} frames for {sent} events: nothing was coalesced"
    );
}

#[tokio::test]
async fn a_lone_event_is_not_held_waiting_for_more() {
    let mock = MockUpstream::start().await.unwrap();
    // The first content event, then silence on an open connection: a model thinking.
    mock.push(
        Reply::sse(vec![
            events::created("resp_l"),
            events::in_progress("resp_l"),
            events::output_item_added(events::message_item_in_progress("msg_l")),
        ])
        .hold_open(),
    );
    let svc = ResponsesStack::new().client(&UpstreamClientBuilder::new());
    let res = svc.oneshot(request(&mock)).await.unwrap();
    let mut body = res.into_body();
    let mut got = Vec::new();
    // Bounded wait: the upstream never sends more, so only a body that forwards what it
    // has (instead of waiting to fill a frame) lets the event through.
    while !String::from_utf8_lossy(&got).contains("response.output_item.added") {
        let frame = tokio::time::timeout(Duration::from_secs(20), body.frame())
            .await
            .expect("the lone content event is forwarded while the upstream stays silent")
            .expect("the stream is still open")
            .unwrap();
        got.extend_from_slice(&frame.into_data().unwrap());
    }
}
