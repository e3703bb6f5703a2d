//! An upstream that breaks off a stream after content (FIN or RST mid-body, or an end with
//! no terminal event) still gives the client a stream that ends: the events so far, then one
//! `response.failed` (`upstream_unavailable`, naming the response) and a clean end of body,
//! never a cut connection. Found by the chaos soak (`loadgen chaos`): before, the client got
//! "error reading a body from connection" and no end event.

mod common;

use common::*;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower_responses::sse::SseDecoder;
use tower_responses::testing::{MockUpstream, Reply, events};

/// The stream's events, read to a clean end (a cut body fails the test).
async fn events_through_proxy(reply: Reply) -> (Vec<Value>, MockUpstream) {
    let mock = MockUpstream::start().await.unwrap();
    mock.push(reply);
    let mut cfg = config_for(mock.base_url());
    cfg.credentials = vec!["sk-a".parse().unwrap()];
    let proxy = start_proxy(cfg).await;
    let res = send(
        &client(),
        json_req(
            &proxy.url("/v1/responses"),
            None,
            json!({"model": "gpt-5", "stream": true, "input": "hi"}),
        ),
    )
    .await;
    assert_eq!(res.status(), 200);
    let body = res
        .into_body()
        .collect()
        .await
        .expect("the body ends cleanly, not cut")
        .to_bytes();
    let mut d = SseDecoder::new();
    d.push(body);
    let mut out = Vec::new();
    while let Some(ev) = d.next_event().unwrap() {
        out.push(serde_json::from_slice(&ev.data).unwrap());
    }
    assert!(d.finish().unwrap().is_none(), "a partial event at the end");
    (out, mock)
}

fn assert_ends_with_failure(evs: &[Value], id: &str) {
    let types: Vec<&str> = evs.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        types.iter().filter(|t| **t == "response.created").count(),
        1,
        "{types:?}"
    );
    assert!(
        types.contains(&"response.output_text.delta"),
        "content came: {types:?}"
    );
    let last = evs.last().unwrap();
    assert_eq!(last["type"], "response.failed", "{types:?}");
    assert_eq!(last["response"]["id"], id);
    assert_eq!(last["response"]["error"]["code"], "upstream_unavailable");
    assert!(
        last["response"]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("broke off"),
        "{last}"
    );
    assert_eq!(
        types.iter().filter(|t| **t == "response.failed").count(),
        1,
        "one end: {types:?}"
    );
}

fn answer(id: &str) -> Vec<Value> {
    events::answer(
        id,
        "msg_cut",
        "one two three four five",
        events::usage(5, 5),
    )
}

#[tokio::test]
async fn a_fin_after_content_ends_the_stream_with_response_failed() {
    let (evs, _mock) =
        events_through_proxy(Reply::sse(answer("resp_fin")).close_mid_stream(5)).await;
    assert_ends_with_failure(&evs, "resp_fin");
}

#[tokio::test]
async fn a_reset_after_content_ends_the_stream_with_response_failed() {
    let (evs, _mock) =
        events_through_proxy(Reply::sse(answer("resp_rst")).reset_mid_stream(5)).await;
    assert_ends_with_failure(&evs, "resp_rst");
}

#[tokio::test]
async fn a_stream_that_stops_without_a_terminal_event_ends_with_response_failed() {
    let mut evs = answer("resp_stop");
    evs.truncate(5); // created .. the first deltas; no response.completed
    let (evs, mock) = events_through_proxy(Reply::sse(evs)).await;
    assert_ends_with_failure(&evs, "resp_stop");
    assert_eq!(mock.request_count(), 1, "after content nothing is retried");
}

#[tokio::test]
async fn a_complete_stream_is_passed_unchanged() {
    let (evs, _mock) = events_through_proxy(Reply::sse(answer("resp_ok"))).await;
    let last = evs.last().unwrap();
    assert_eq!(last["type"], "response.completed");
    assert!(!evs.iter().any(|e| e["type"] == "response.failed"));
}

/// The client's answer and the requests the mock saw, with two credentials (so a retry
/// elsewhere would be possible).
async fn answer_with_two_credentials(reply: Reply) -> (http::StatusCode, Value, usize) {
    let mock = MockUpstream::start().await.unwrap();
    mock.push(reply);
    let mut cfg = config_for(mock.base_url());
    cfg.credentials = vec!["sk-a".parse().unwrap(), "sk-b".parse().unwrap()];
    let proxy = start_proxy(cfg).await;
    let (status, _, body) = send_collect(
        &client(),
        json_req(
            &proxy.url("/v1/responses"),
            None,
            json!({"model": "gpt-5", "stream": true, "input": "hi"}),
        ),
    )
    .await;
    (status, assert_envelope(&body), mock.request_count())
}

// Found by the chaos soak: a stream that broke while the lifecycle events were held went to
// the next credential (a request the upstream had started on, sent twice), and when none was
// left the client got the held `response.created` and a stream that just stopped.

#[tokio::test]
async fn a_fin_before_content_is_a_502_and_not_sent_again() {
    let (status, err, sent) =
        answer_with_two_credentials(Reply::sse(answer("resp_early")).close_mid_stream(2)).await;
    assert_eq!(status, 502);
    assert_eq!(err["error"]["code"], "upstream_unavailable");
    assert_eq!(sent, 1, "the upstream had started on it: not sent again");
}

#[tokio::test]
async fn a_reset_before_content_is_a_502_and_not_sent_again() {
    let (status, err, sent) =
        answer_with_two_credentials(Reply::sse(answer("resp_early")).reset_mid_stream(1)).await;
    assert_eq!(status, 502);
    assert_eq!(err["error"]["code"], "upstream_unavailable");
    assert_eq!(sent, 1);
}

#[tokio::test]
async fn a_stream_of_lifecycle_events_only_is_a_502() {
    let mut evs = answer("resp_idle");
    evs.truncate(2); // created, in_progress, then the end
    let (status, err, sent) = answer_with_two_credentials(Reply::sse(evs)).await;
    assert_eq!(status, 502);
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("before any content"),
        "{err}"
    );
    assert_eq!(sent, 1);
}

#[tokio::test]
async fn a_cut_before_content_on_a_reused_client_connection_is_answered() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tower_responses::testing::ResponseStore;
    let mock = MockUpstream::start().await.unwrap();
    let store = ResponseStore::new(10);
    let n = Arc::new(AtomicUsize::new(0));
    {
        let (store, n) = (store.clone(), n.clone());
        mock.set_handler(move |r| {
            let reply = store.answer(r)?;
            Some(match n.fetch_add(1, Ordering::Relaxed) {
                1 => reply.close_mid_stream(1),
                2 => reply.reset_mid_stream(2),
                _ => reply,
            })
        });
    }
    let mut cfg = config_for(mock.base_url());
    cfg.credentials = vec![
        "sk-a".parse().unwrap(),
        "sk-b".parse().unwrap(),
        "sk-c".parse().unwrap(),
    ];
    let proxy = start_proxy(cfg).await;
    let c = client();
    let body = json!({"model": "gpt-5", "stream": true, "store": true, "input": "hi",
        "prompt_cache_key": "s1"});
    for expect in [200, 502, 502, 200] {
        let res = c
            .request(json_req(&proxy.url("/v1/responses"), None, body.clone()))
            .await
            .expect("an answer on the kept-alive connection");
        assert_eq!(res.status(), expect);
        let _ = res.into_body().collect().await.expect("a whole body");
    }
}

// Found by the chaos soak: a JSON answer (`stream:false`) whose connection broke after its
// bytes made the proxy panic (a size hint whose lower bound passed its upper one), and the
// client's connection closed with no answer at all.
#[tokio::test]
async fn a_json_answer_that_breaks_off_is_a_502_not_a_closed_connection() {
    let mock = MockUpstream::start().await.unwrap();
    let resp = events::response("resp_json", "completed", vec![], Some(events::usage(1, 1)));
    mock.push(Reply::json(http::StatusCode::OK, resp).close_mid_stream(1));
    let mut cfg = config_for(mock.base_url());
    cfg.credentials = vec!["sk-a".parse().unwrap(), "sk-b".parse().unwrap()];
    let proxy = start_proxy(cfg).await;
    let c = client();
    let (status, _, body) = send_collect(
        &c,
        json_req(
            &proxy.url("/v1/responses"),
            None,
            json!({"model": "gpt-5", "stream": false, "input": "hi"}),
        ),
    )
    .await;
    assert_eq!(status, 502, "{}", String::from_utf8_lossy(&body));
    assert_eq!(
        assert_envelope(&body)["error"]["code"],
        "upstream_unavailable"
    );
    assert_eq!(
        mock.request_count(),
        1,
        "the upstream had answered: not sent again"
    );
    // The proxy is still there for the next request.
    let (status, _, _) = send_collect(
        &c,
        json_req(
            &proxy.url("/v1/responses"),
            None,
            json!({"model": "gpt-5", "stream": false, "input": "again"}),
        ),
    )
    .await;
    assert_eq!(status, 200);
}
