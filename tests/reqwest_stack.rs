//! The stack on a user's `reqwest::Client` (the `reqwest` feature): rotation and stale
//! pooled connections behave as they do on the crate's own hyper-util client.

use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use serde_json::json;
use tower::{Layer, ServiceExt};
use tower_responses::body::{ReplayBody, ResponseBody};
use tower_responses::connect::ReqwestService;
use tower_responses::credentials::{Pool, PoolMember, Strategy};
use tower_responses::fresh::{FreshConnectionLayer, FreshRetry, RetryReason};
use tower_responses::marks::{AttemptError, Phase, ServedBy};
use tower_responses::metrics::Metrics;
use tower_responses::stack::ResponsesStack;
use tower_responses::testing::{Fault, MockUpstream, Reply, StaleMode, events};

const KEY_A: &str = "sk-test-aaaaaaaaaaaaaaaaaaaa-AAAA";
const KEY_B: &str = "sk-test-bbbbbbbbbbbbbbbbbbbb-BBBB";
/// The mock treats a connection as stale after this much idleness.
const STALE_AFTER: Duration = Duration::from_millis(300);
/// Pauses between requests: longer than `STALE_AFTER` and than the layer's default 1 s idle
/// threshold for stale answers.
const PAUSE: Duration = Duration::from_millis(1200);

fn reqwest_client() -> ReqwestService {
    ReqwestService::from_builder(|| {
        reqwest::Client::builder().pool_idle_timeout(Duration::from_secs(20))
    })
    .expect("client builds")
}

fn stream_request(base: &str) -> Request<ReplayBody> {
    let body = json!({"model": "gpt-5.5", "stream": true, "input": "hi"});
    Request::post(format!("{base}/responses"))
        .header("content-type", "application/json")
        .header("authorization", "Bearer sk-test")
        .body(ReplayBody::new(serde_json::to_vec(&body).unwrap()))
        .unwrap()
}

async fn body_text(res: Response<ResponseBody>) -> String {
    let bytes = res.into_body().collect().await.expect("body").to_bytes();
    String::from_utf8_lossy(&bytes).into_owned()
}

#[tokio::test]
async fn an_exhausted_key_in_a_200_stream_fails_over_and_is_skipped_after() {
    let mock = MockUpstream::start().await.unwrap();
    mock.push_for(
        KEY_A,
        Reply::sse(vec![
            events::created("resp_x"),
            events::in_progress("resp_x"),
            events::failed(
                "resp_x",
                "insufficient_quota",
                "You exceeded your current quota",
            ),
        ]),
    );
    let pool = Pool::new(vec![
        PoolMember::new(KEY_A.parse().unwrap()),
        PoolMember::new(KEY_B.parse().unwrap()),
    ])
    .unwrap()
    .with_strategy(Strategy::FillFirst);
    let stack = ResponsesStack::new()
        .pool(Arc::new(pool))
        .reqwest(reqwest_client());
    for i in 0..4 {
        let res = stack
            .clone()
            .oneshot(stream_request(&mock.base_url()))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        let served = res
            .extensions()
            .get::<ServedBy>()
            .expect("served by")
            .clone();
        assert_eq!(&*served.0, "key-2", "request {i}: {served:?}");
        let text = body_text(res).await;
        assert_eq!(text.matches("event: response.created").count(), 1, "{text}");
        assert!(text.contains("response.completed"), "{text}");
        assert!(!text.contains("response.failed"), "{text}");
    }
    let hits = |key: &str| {
        mock.requests()
            .iter()
            .filter(|r| r.credential.as_deref() == Some(key))
            .count()
    };
    assert_eq!(hits(KEY_A), 1, "the exhausted key is tried once");
    assert_eq!(hits(KEY_B), 4);
    mock.shutdown().await;
}

/// Four streaming requests with idle pauses through the layer over reqwest: every one
/// completes, and the requests that met a stale connection were retried once, invisibly.
async fn survives(mode: StaleMode, reason: RetryReason) {
    let mock = MockUpstream::start().await.unwrap();
    mock.set_stale(STALE_AFTER, mode);
    let metrics = Metrics::new();
    let client = FreshConnectionLayer::new()
        .metrics(metrics.clone())
        .layer(reqwest_client());
    let mut retries = Vec::new();
    for i in 0..4 {
        if i > 0 {
            tokio::time::sleep(PAUSE).await;
        }
        let res = client
            .clone()
            .oneshot(stream_request(&mock.base_url()))
            .await
            .unwrap_or_else(|e| panic!("{mode:?}: request {i} failed: {e:?}"));
        assert_eq!(res.status(), StatusCode::OK, "{mode:?}: request {i}");
        if let Some(r) = res.extensions().get::<FreshRetry>() {
            retries.push((i, r.clone()));
        }
        let text = body_text(res).await;
        assert!(text.contains("response.completed"), "{mode:?}: {text}");
    }
    // As on hyper-util: 0 opens a connection, 1 meets it stale and is retried on a fresh
    // (unpooled) connection; 2 opens a new pooled connection, which 3 meets stale.
    let seen: Vec<usize> = retries.iter().map(|(i, _)| *i).collect();
    assert_eq!(seen, [1, 3], "{mode:?}");
    for (_, r) in &retries {
        assert_eq!(r.reason, reason);
        // reqwest does not name its connections; the idle time is this service's estimate.
        assert_eq!(r.conn_id, None);
        assert!(r.idle.is_some_and(|idle| idle >= STALE_AFTER), "{r:?}");
        assert_eq!(r.status.is_some(), reason == RetryReason::StaleAnswer);
    }
    assert_eq!(
        metrics.get("tr_fresh_retries_total", &[("reason", reason.as_str())]),
        Some(2.0)
    );
    assert_eq!(mock.request_count(), 6);
    mock.shutdown().await;
}

#[tokio::test]
async fn a_stale_connection_closed_after_reading_the_request_is_retried() {
    survives(StaleMode::Fin, RetryReason::BrokenConnection).await;
}

#[tokio::test]
async fn a_stale_connection_reset_after_reading_the_request_is_retried() {
    survives(StaleMode::Reset, RetryReason::BrokenConnection).await;
}

#[tokio::test]
async fn a_middlebox_400_on_an_idle_connection_is_retried() {
    survives(StaleMode::Html400, RetryReason::StaleAnswer).await;
}

/// What the layer hides over reqwest is real: the same traffic on the bare client fails.
#[tokio::test]
async fn without_the_layer_reqwest_meets_the_stale_connection() {
    let mock = MockUpstream::start().await.unwrap();
    mock.set_stale(STALE_AFTER, StaleMode::Fin);
    let client = reqwest_client();
    let first = client
        .clone()
        .oneshot(stream_request(&mock.base_url()))
        .await
        .unwrap();
    body_text(first).await;
    tokio::time::sleep(PAUSE).await;
    let err = client
        .oneshot(stream_request(&mock.base_url()))
        .await
        .expect_err("the stale connection fails the request");
    let attempt = AttemptError::find(&*err).expect("typed");
    assert_eq!(attempt.phase, Phase::Sent);
    assert!(
        std::error::Error::source(attempt)
            .and_then(|s| s.downcast_ref::<reqwest::Error>())
            .is_some()
    );
    mock.shutdown().await;
}

/// The whole stack on reqwest through a stale connection: the client never notices.
#[tokio::test]
async fn the_stack_on_reqwest_hides_a_stale_connection() {
    let mock = MockUpstream::start().await.unwrap();
    mock.set_stale(STALE_AFTER, StaleMode::Reset);
    let metrics = Metrics::new();
    let stack = ResponsesStack::new()
        .metrics(metrics.clone())
        .reqwest(reqwest_client());
    for i in 0..2 {
        if i > 0 {
            tokio::time::sleep(PAUSE).await;
        }
        let res = stack
            .clone()
            .oneshot(stream_request(&mock.base_url()))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert!(body_text(res).await.contains("response.completed"));
    }
    assert_eq!(metrics.total("tr_fresh_retries_total"), 1.0);
    assert_eq!(mock.request_count(), 3);
    mock.shutdown().await;
}

#[tokio::test]
async fn a_fresh_connections_failure_is_passed_through() {
    let mock = MockUpstream::start().await.unwrap();
    mock.push(Reply::fault(Fault::CloseAfterRead));
    let metrics = Metrics::new();
    let err = FreshConnectionLayer::new()
        .metrics(metrics.clone())
        .layer(reqwest_client())
        .oneshot(stream_request(&mock.base_url()))
        .await
        .expect_err("the upstream closed without answering");
    let attempt = AttemptError::find(&*err).expect("typed");
    assert_eq!(attempt.phase, Phase::Sent, "the upstream read it");
    assert_eq!(mock.request_count(), 1, "not sent twice");
    assert_eq!(metrics.total("tr_fresh_retries_total"), 0.0);
    mock.shutdown().await;
}

#[tokio::test]
async fn a_connect_failure_is_unsent() {
    // A port nobody listens on: bind one, learn it, close it.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}/v1", listener.local_addr().unwrap());
    drop(listener);
    let err = reqwest_client()
        .oneshot(stream_request(&base))
        .await
        .expect_err("nothing listens");
    let attempt = AttemptError::find(&*err).expect("typed");
    assert_eq!(attempt.phase, Phase::Unsent);
    let source = std::error::Error::source(attempt)
        .and_then(|s| s.downcast_ref::<reqwest::Error>())
        .expect("reqwest's error kept");
    assert!(source.is_connect());
}

/// A client the user built and handed over whole: it serves, and nothing is known about its
/// connections, so a stale one is not retried (the documented limit of `new`).
#[tokio::test]
async fn a_finished_client_serves_but_cannot_tell_reuse() {
    let mock = MockUpstream::start().await.unwrap();
    mock.set_stale(STALE_AFTER, StaleMode::Fin);
    let client = FreshConnectionLayer::new().layer(ReqwestService::new(reqwest::Client::new()));
    let first = client
        .clone()
        .oneshot(stream_request(&mock.base_url()))
        .await
        .unwrap();
    assert!(body_text(first).await.contains("response.completed"));
    tokio::time::sleep(PAUSE).await;
    let err = client
        .oneshot(stream_request(&mock.base_url()))
        .await
        .expect_err("not known to be reused: not retried");
    assert_eq!(AttemptError::find(&*err).expect("typed").phase, Phase::Sent);
    assert_eq!(mock.request_count(), 2);
    mock.shutdown().await;
}
