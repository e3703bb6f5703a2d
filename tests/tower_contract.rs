//! The tower contract: every layer calls the very service it readied in `poll_ready`, for its
//! first attempt and every further one (REVIEW, "tower contract and composition").
//!
//! A layer that readies its inner service and then calls a clone keeps the readied one
//! idle; beneath it, `ConcurrencyLimitLayer::new(1)` hands its only permit to the idle
//! instance and the clone waits for it forever. Each test puts that limit under one layer
//! (and under the whole stack), sends 8 concurrent requests through real HTTP to the mock,
//! each taking the layer's multi-attempt path where it has one, and requires every request
//! to complete within a bound: a deadlock fails instead of hanging.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tokio::task::JoinSet;
use tower::limit::ConcurrencyLimitLayer;
use tower::{Layer, ServiceExt};
use tower_responses::body::{ReplayBody, ResponseBody};
use tower_responses::compact::{CompactConfig, CompactRouteLayer, RemotePolicy};
use tower_responses::connect::UpstreamClientBuilder;
use tower_responses::continuity::ContinuityLayer;
use tower_responses::credentials::{CredentialRotateLayer, Pool, PoolMember, Strategy};
use tower_responses::error::BoxError;
use tower_responses::fresh::{FreshConnection, FreshConnectionLayer};
use tower_responses::normalize::BodyNormalizeLayer;
use tower_responses::profile::Profile;
use tower_responses::soft_failure::SoftFailureDetectLayer;
use tower_responses::stack::ResponsesStack;
use tower_responses::testing::{MockUpstream, RecordedRequest, Reply, ResponseStore};

const KEY_A: &str = "sk-contract-aaaaaaaaaaaaaaaaaaaa-AAAA";
const KEY_B: &str = "sk-contract-bbbbbbbbbbbbbbbbbbbb-BBBB";
const CONCURRENT: usize = 8;
/// Far beyond what 8 serialised requests to a local mock take.
const BOUND: Duration = Duration::from_secs(20);

fn client() -> FreshConnection<
    tower_responses::connect::ClientService<tower_responses::connect::UpstreamConnector>,
> {
    FreshConnectionLayer::new().build(&UpstreamClientBuilder::new())
}

fn pool(strategy: Strategy) -> Arc<Pool> {
    Arc::new(
        Pool::new(vec![
            PoolMember::new(KEY_A.parse().unwrap()),
            PoolMember::new(KEY_B.parse().unwrap()),
        ])
        .unwrap()
        .with_strategy(strategy),
    )
}

fn post(mock: &MockUpstream, path: &str, body: &Value) -> Request<ReplayBody> {
    Request::post(format!("{}{path}", mock.base_url()))
        .header("content-type", "application/json")
        .body(ReplayBody::new(body.to_string()))
        .unwrap()
}

fn turn(i: usize) -> Value {
    json!({"model": "gpt-5.5", "stream": true, "input": format!("request {i}")})
}

/// Sends every request at once through clones of `svc`; every one must be answered (body
/// and all) within [`BOUND`]. Returns the statuses and bodies in request order.
async fn all_complete<S>(svc: S, reqs: Vec<Request<ReplayBody>>) -> Vec<(StatusCode, Bytes)>
where
    S: tower::Service<Request<ReplayBody>, Response = Response<ResponseBody>, Error = BoxError>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let mut set = JoinSet::new();
    for (i, req) in reqs.into_iter().enumerate() {
        let svc = svc.clone();
        set.spawn(async move {
            let res = svc.oneshot(req).await?;
            let status = res.status();
            let body = res.into_body().collect().await?.to_bytes();
            Ok::<_, BoxError>((i, status, body))
        });
    }
    let done = tokio::time::timeout(BOUND, async {
        let mut out = Vec::new();
        while let Some(joined) = set.join_next().await {
            out.push(joined.expect("no panic").expect("answered"));
        }
        out
    })
    .await
    .expect("every request completes: a layer called a clone instead of its readied service");
    let mut out = done;
    out.sort_by_key(|(i, _, _)| *i);
    out.into_iter().map(|(_, s, b)| (s, b)).collect()
}

fn assert_all_ok(results: &[(StatusCode, Bytes)]) {
    assert_eq!(results.len(), CONCURRENT);
    for (status, body) in results {
        assert_eq!(*status, StatusCode::OK, "{}", String::from_utf8_lossy(body));
    }
}

/// Continuity's first attempt and its owner search (a restart: the owner is unknown, A says
/// "not found", B owns the anchor) go through the readied instance.
#[tokio::test]
async fn continuity_over_a_concurrency_limit() {
    let mock = MockUpstream::start().await.unwrap();
    let store = ResponseStore::new(1);
    store.insert("resp_old", KEY_B);
    store.install(&mock);
    let pool = pool(Strategy::FillFirst);
    let svc = ContinuityLayer::new(pool.clone()).layer(ConcurrencyLimitLayer::new(1).layer(
        CredentialRotateLayer::new(pool).layer(SoftFailureDetectLayer::new().layer(client())),
    ));
    let reqs = (0..CONCURRENT)
        .map(|i| {
            let mut body = turn(i);
            body["previous_response_id"] = json!("resp_old");
            body["store"] = json!(true);
            post(&mock, "/responses", &body)
        })
        .collect();
    assert_all_ok(&all_complete(svc, reqs).await);
    let searched = mock
        .requests()
        .iter()
        .any(|r| r.credential.as_deref() == Some(KEY_A));
    assert!(searched, "at least the first request took the search path");
}

/// Rotation's failover (A is rate limited, B answers) readies the same instance again.
#[tokio::test]
async fn rotation_over_a_concurrency_limit() {
    let mock = MockUpstream::start().await.unwrap();
    mock.set_handler(|r: &RecordedRequest| {
        (r.credential.as_deref() == Some(KEY_A)).then(|| {
            Reply::json(
                StatusCode::TOO_MANY_REQUESTS,
                json!({"error": {"type": "rate_limit_error", "code": "rate_limit_exceeded", "message": "Rate limit reached"}}),
            )
        })
    });
    let svc = CredentialRotateLayer::new(pool(Strategy::FillFirst))
        .layer(ConcurrencyLimitLayer::new(1).layer(SoftFailureDetectLayer::new().layer(client())));
    let reqs = (0..CONCURRENT)
        .map(|i| post(&mock, "/responses", &turn(i)))
        .collect();
    assert_all_ok(&all_complete(svc, reqs).await);
    let first = mock.requests();
    assert_eq!(first[0].credential.as_deref(), Some(KEY_A));
    assert_eq!(first[1].credential.as_deref(), Some(KEY_B), "failed over");
}

/// Normalize's learning retry (the upstream refuses a parameter, the request goes again
/// without it) readies the same instance again.
#[tokio::test]
async fn normalize_over_a_concurrency_limit() {
    let mock = MockUpstream::start().await.unwrap();
    mock.set_handler(|r: &RecordedRequest| {
        let body = r.json()?;
        let param = body
            .as_object()?
            .keys()
            .find(|k| k.starts_with("x_"))?
            .clone();
        Some(Reply::json(
            StatusCode::BAD_REQUEST,
            json!({"error": {"message": format!("Unsupported parameter: '{param}' is not supported with this model."), "type": "invalid_request_error", "param": param, "code": "unsupported_parameter"}}),
        ))
    });
    let svc = BodyNormalizeLayer::for_profile(Profile::Generic)
        .layer(ConcurrencyLimitLayer::new(1).layer(SoftFailureDetectLayer::new().layer(client())));
    // A parameter of its own per request, so every one is refused once and retried.
    let reqs = (0..CONCURRENT)
        .map(|i| {
            let mut body = turn(i);
            body[format!("x_{i}")] = json!(1);
            post(&mock, "/responses", &body)
        })
        .collect();
    assert_all_ok(&all_complete(svc, reqs).await);
    assert_eq!(
        mock.request_count(),
        2 * CONCURRENT,
        "each refused once, then sent again"
    );
}

/// Soft-failure detection calls its readied service.
#[tokio::test]
async fn soft_failure_over_a_concurrency_limit() {
    let mock = MockUpstream::start().await.unwrap();
    let svc = SoftFailureDetectLayer::new().layer(ConcurrencyLimitLayer::new(1).layer(client()));
    let reqs = (0..CONCURRENT)
        .map(|i| post(&mock, "/responses", &turn(i)))
        .collect();
    assert_all_ok(&all_complete(svc, reqs).await);
}

/// A model the upstream will not compact remotely: the remote attempt is refused and the
/// local summary is a second request, both through the readied instance.
fn refuses_remote_compaction(mock: &MockUpstream) {
    mock.set_handler(|r: &RecordedRequest| {
        r.path.ends_with("/responses/compact").then(|| {
            Reply::json(
                StatusCode::NOT_FOUND,
                json!({"error": {"message": "Not found", "type": "invalid_request_error", "code": "not_found"}}),
            )
        })
    });
}

fn compaction(i: usize) -> Value {
    json!({"model": "gpt-5.5", "input": [
        {"role": "user", "content": format!("long history {i}")},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "ok"}]}
    ]})
}

/// Compaction's remote attempt and local fallback go through the readied instance.
#[tokio::test]
async fn compact_route_over_a_concurrency_limit() {
    let mock = MockUpstream::start().await.unwrap();
    refuses_remote_compaction(&mock);
    let config = CompactConfig {
        remote: RemotePolicy::Always,
        ..CompactConfig::default()
    };
    let svc = CompactRouteLayer::new(config)
        .profile(Profile::Openai)
        .layer(ConcurrencyLimitLayer::new(1).layer(SoftFailureDetectLayer::new().layer(client())));
    let reqs = (0..CONCURRENT)
        .map(|i| post(&mock, "/responses/compact", &compaction(i)))
        .collect();
    assert_all_ok(&all_complete(svc, reqs).await);
    let paths: Vec<String> = mock.requests().iter().map(|r| r.path.clone()).collect();
    let remote = paths.iter().filter(|p| p.ends_with("/compact")).count();
    assert_eq!(remote, CONCURRENT, "each tried remotely: {paths:?}");
    assert_eq!(paths.len(), 2 * CONCURRENT, "each then summarised locally");
}

/// The whole stack over one permit: plain turns, anchored turns whose owner must be
/// searched, and compactions that fall back to a local summary, all at once.
#[tokio::test]
async fn the_whole_stack_over_a_concurrency_limit() {
    let mock = MockUpstream::start().await.unwrap();
    let store = ResponseStore::new(1);
    store.insert("resp_old", KEY_B);
    let platform = store.clone();
    mock.set_handler(move |r: &RecordedRequest| {
        if r.path.ends_with("/responses/compact") {
            return Some(Reply::json(
                StatusCode::NOT_FOUND,
                json!({"error": {"message": "Not found", "type": "invalid_request_error", "code": "not_found"}}),
            ));
        }
        platform.answer(r)
    });
    let stack = ResponsesStack::new()
        .pool(pool(Strategy::FillFirst))
        .profile(Profile::Openai)
        .compact(CompactConfig {
            remote: RemotePolicy::Always,
            ..CompactConfig::default()
        })
        .service(ConcurrencyLimitLayer::new(1).layer(client()));
    let reqs = (0..CONCURRENT)
        .map(|i| match i % 3 {
            0 => post(&mock, "/responses", &turn(i)),
            1 => {
                let mut body = turn(i);
                body["previous_response_id"] = json!("resp_old");
                post(&mock, "/responses", &body)
            }
            _ => post(&mock, "/responses/compact", &compaction(i)),
        })
        .collect();
    let results = all_complete(stack, reqs).await;
    assert_all_ok(&results);
}
