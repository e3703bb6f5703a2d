//! FreshConnectionLayer over real HTTP on loopback: stale pooled connections (seed 001) never
//! reach the client, and nothing else is retried.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use tower::{Service, ServiceExt};
use tower_responses::body::{ReplayBody, ResponseBody};
use tower_responses::connect::{Tagged, TaggingConnector, UpstreamClientBuilder};
use tower_responses::error::BoxError;
use tower_responses::fresh::{FreshConnection, FreshConnectionLayer, FreshRetry, RetryReason};
use tower_responses::metrics::Metrics;
use tower_responses::testing::{Fault, MockUpstream, Reply, StaleMode};

/// The mock treats a connection as stale after this much idleness.
const STALE_AFTER: Duration = Duration::from_millis(300);
/// Pauses between requests: longer than `STALE_AFTER` and than the layer's default 1 s idle
/// threshold for stale answers.
const PAUSE: Duration = Duration::from_millis(1200);

fn stream_request(base: &str) -> Request<ReplayBody> {
    let body = json!({"model": "gpt-5.5", "stream": true, "input": "hi"});
    Request::post(format!("{base}/responses"))
        .header("content-type", "application/json")
        .header("authorization", "Bearer sk-test")
        .body(ReplayBody::new(serde_json::to_vec(&body).unwrap()))
        .unwrap()
}

fn layered(
    metrics: &Metrics,
) -> FreshConnection<
    tower_responses::connect::ClientService<tower_responses::connect::UpstreamConnector>,
> {
    FreshConnectionLayer::new()
        .metrics(metrics.clone())
        .build(&UpstreamClientBuilder::new())
}

async fn body_text(res: Response<ResponseBody>) -> String {
    let bytes = res.into_body().collect().await.expect("body").to_bytes();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Four streaming requests with idle pauses through the layer: every one completes, and the
/// requests that met a stale connection were retried once, invisibly.
async fn survives(mode: StaleMode, reason: RetryReason) {
    let mock = MockUpstream::start().await.unwrap();
    mock.set_stale(STALE_AFTER, mode);
    let metrics = Metrics::new();
    let client = layered(&metrics);
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
    // Request 0 opens a connection, 1 meets it stale and is retried on a fresh (unpooled)
    // connection; 2 opens a new pooled connection, which 3 meets stale.
    let seen: Vec<usize> = retries.iter().map(|(i, _)| *i).collect();
    assert_eq!(seen, [1, 3], "{mode:?}");
    for (_, r) in &retries {
        assert_eq!(r.reason, reason);
        assert!(r.conn_id.is_some());
        assert!(r.idle.is_some_and(|idle| idle >= STALE_AFTER), "{r:?}");
        assert_eq!(r.status.is_some(), reason == RetryReason::StaleAnswer);
    }
    assert_eq!(
        metrics.get("tr_fresh_retries_total", &[("reason", reason.as_str())]),
        Some(2.0)
    );
    assert_eq!(metrics.total("tr_fresh_retries_total"), 2.0);
    assert_eq!(mock.request_count(), 6);
    mock.shutdown().await;
}

#[tokio::test]
async fn a_connection_closed_after_reading_the_request_is_retried() {
    survives(StaleMode::Fin, RetryReason::BrokenConnection).await;
}

#[tokio::test]
async fn a_connection_reset_after_reading_the_request_is_retried() {
    survives(StaleMode::Reset, RetryReason::BrokenConnection).await;
}

#[tokio::test]
async fn a_middlebox_400_on_an_idle_connection_is_retried() {
    survives(StaleMode::Html400, RetryReason::StaleAnswer).await;
}

/// The same traffic on a plain pooled client (the builder's default pool) fails: what the
/// layer hides is real.
async fn plain_client_fails(mode: StaleMode) {
    let mock = MockUpstream::start().await.unwrap();
    mock.set_stale(STALE_AFTER, mode);
    let client = UpstreamClientBuilder::new().build::<ReplayBody>();
    let first = client
        .request(stream_request(&mock.base_url()))
        .await
        .unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    first.into_body().collect().await.unwrap();
    tokio::time::sleep(PAUSE).await;
    let second = client.request(stream_request(&mock.base_url())).await;
    match mode {
        StaleMode::Html400 => assert_eq!(second.unwrap().status(), StatusCode::BAD_REQUEST),
        _ => assert!(second.is_err(), "{mode:?}: {second:?}"),
    }
    mock.shutdown().await;
}

#[tokio::test]
async fn without_the_layer_a_closed_stale_connection_fails() {
    plain_client_fails(StaleMode::Fin).await;
}

#[tokio::test]
async fn without_the_layer_a_reset_stale_connection_fails() {
    plain_client_fails(StaleMode::Reset).await;
}

#[tokio::test]
async fn without_the_layer_a_middlebox_400_reaches_the_client() {
    plain_client_fails(StaleMode::Html400).await;
}

#[tokio::test]
async fn a_fresh_connections_failure_is_passed_through() {
    let mock = MockUpstream::start().await.unwrap();
    mock.push(Reply::fault(Fault::CloseAfterRead));
    let metrics = Metrics::new();
    let err = layered(&metrics)
        .oneshot(stream_request(&mock.base_url()))
        .await
        .expect_err("the upstream closed without answering");
    // An attempt error that says the upstream had the request (it read it), with
    // hyper-util's own error as its source, so outer layers can still tell what happened.
    let attempt = tower_responses::marks::AttemptError::find(&*err).expect("typed");
    assert_eq!(attempt.phase, tower_responses::marks::Phase::Sent);
    assert!(
        std::error::Error::source(attempt)
            .and_then(|s| s.downcast_ref::<hyper_util::client::legacy::Error>())
            .is_some()
    );
    assert_eq!(mock.request_count(), 1);
    assert_eq!(metrics.total("tr_fresh_retries_total"), 0.0);
    mock.shutdown().await;
}

#[tokio::test]
async fn an_api_error_on_an_idle_reused_connection_is_passed_through() {
    let mock = MockUpstream::start().await.unwrap();
    let metrics = Metrics::new();
    let client = layered(&metrics);
    let first = client
        .clone()
        .oneshot(stream_request(&mock.base_url()))
        .await
        .unwrap();
    body_text(first).await;
    tokio::time::sleep(PAUSE).await;
    let envelope = json!({"error": {"message": "Unsupported parameter: 'foo'", "type": "invalid_request_error", "param": "foo", "code": null}});
    mock.push(Reply::json(StatusCode::BAD_REQUEST, envelope.clone()));
    let res = client
        .clone()
        .oneshot(stream_request(&mock.base_url()))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert!(res.extensions().get::<FreshRetry>().is_none());
    let body: serde_json::Value = serde_json::from_str(&body_text(res).await).unwrap();
    assert_eq!(body, envelope);
    let seen = mock.requests();
    assert_eq!(seen.len(), 2, "no retry");
    // The 400 really came on the reused, idle connection the layer scrutinises.
    assert_eq!(seen[1].conn_id, seen[0].conn_id);
    assert_eq!(metrics.total("tr_fresh_retries_total"), 0.0);
    mock.shutdown().await;
}

async fn two_requests_conn_ids(layer: FreshConnectionLayer, mock: &MockUpstream) -> (u64, u64) {
    let client = layer.build(&UpstreamClientBuilder::new());
    for _ in 0..2 {
        let res = client
            .clone()
            .oneshot(stream_request(&mock.base_url()))
            .await
            .unwrap();
        body_text(res).await;
        // Let hyper-util return the connection to its pool.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let seen = mock.requests();
    (seen[0].conn_id, seen[1].conn_id)
}

#[tokio::test]
async fn connections_past_the_maximum_age_are_not_reused() {
    let mock = MockUpstream::start().await.unwrap();
    let metrics = Metrics::new();
    let layer = FreshConnectionLayer::new()
        .max_age(Duration::ZERO)
        .metrics(metrics.clone());
    let (a, b) = two_requests_conn_ids(layer, &mock).await;
    assert_ne!(a, b);
    assert_eq!(mock.connections_accepted(), 2);
    assert_eq!(
        metrics.get("tr_fresh_connections_aged_out_total", &[]),
        Some(2.0)
    );
    assert_eq!(metrics.total("tr_fresh_retries_total"), 0.0);
    mock.shutdown().await;

    // With the default age the same traffic shares one connection.
    let mock = MockUpstream::start().await.unwrap();
    let (a, b) = two_requests_conn_ids(FreshConnectionLayer::new(), &mock).await;
    assert_eq!(a, b);
    assert_eq!(mock.connections_accepted(), 1);
    mock.shutdown().await;
}

/// An upstream that closes every connection cleanly (FIN) once it has idled a moment.
async fn closing_upstream() -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1/models", listener.local_addr().unwrap());
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req| async {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(sock), svc);
                tokio::pin!(conn);
                tokio::select! {
                    _ = conn.as_mut() => {}
                    _ = tokio::time::sleep(Duration::from_millis(150)) => {
                        // Finishes a request in flight, then closes: a clean close.
                        conn.as_mut().graceful_shutdown();
                        let _ = conn.await;
                    }
                }
            });
        }
    });
    (url, accepted)
}

#[tokio::test]
async fn idle_connections_the_server_closed_cleanly_are_simply_not_reused() {
    let (url, accepted) = closing_upstream().await;
    let metrics = Metrics::new();
    let client = layered(&metrics);
    for i in 0..2 {
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(600)).await;
        }
        let req = Request::get(&url).body(ReplayBody::default()).unwrap();
        let res = client.clone().oneshot(req).await.expect("no error");
        assert_eq!(res.status(), StatusCode::OK);
        assert!(res.extensions().get::<FreshRetry>().is_none());
        assert_eq!(body_text(res).await, "ok");
    }
    assert_eq!(accepted.load(Ordering::Relaxed), 2);
    assert_eq!(metrics.total("tr_fresh_retries_total"), 0.0);
}

/// A tagged plain-TCP connector whose first connection attempt fails.
#[derive(Clone)]
struct FailFirst {
    inner: TaggingConnector<HttpConnector>,
    failed: Arc<AtomicBool>,
}

type ConnFuture =
    Pin<Box<dyn Future<Output = Result<Tagged<TokioIo<tokio::net::TcpStream>>, BoxError>> + Send>>;

impl Service<Uri> for FailFirst {
    type Response = Tagged<TokioIo<tokio::net::TcpStream>>;
    type Error = BoxError;
    type Future = ConnFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        if !self.failed.swap(true, Ordering::Relaxed) {
            return Box::pin(async { Err("connection refused (scripted)".into()) });
        }
        let fut = self.inner.call(uri);
        Box::pin(async move { fut.await.map_err(Into::into) })
    }
}

#[tokio::test]
async fn a_request_that_never_left_is_retried() {
    let mock = MockUpstream::start().await.unwrap();
    let connector = FailFirst {
        inner: TaggingConnector::new(HttpConnector::new()),
        failed: Arc::new(AtomicBool::new(false)),
    };
    let pooled = Client::builder(TokioExecutor::new()).build(connector.clone());
    let metrics = Metrics::new();
    let client = FreshConnectionLayer::new()
        .metrics(metrics.clone())
        .service(pooled, connector);
    let res = client
        .oneshot(stream_request(&mock.base_url()))
        .await
        .expect("retried after the failed connect");
    assert_eq!(res.status(), StatusCode::OK);
    let retry = res
        .extensions()
        .get::<FreshRetry>()
        .expect("marked")
        .clone();
    assert_eq!(retry.reason, RetryReason::NotSent);
    assert_eq!(retry.conn_id, None);
    assert!(body_text(res).await.contains("response.completed"));
    assert_eq!(mock.request_count(), 1);
    assert_eq!(
        metrics.get("tr_fresh_retries_total", &[("reason", "not_sent")]),
        Some(1.0)
    );
    mock.shutdown().await;
}
