//! Every layer alone, directly over a client service (the reqwest adapter, or the crate's
//! hyper-util client), one request each against the mock, asserting the layer's own effect.
//! The last test mounts one layer alone in an axum app: the one body conversion is
//! `Forward`'s (it reads the app's request body into the stack's `ReplayBody`).

use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::util::BoxCloneSyncService;
use tower::{Layer, ServiceExt};
use tower_responses::body::{ReplayBody, ResponseBody};
use tower_responses::classify::FailureClass;
use tower_responses::compact::{CompactConfig, CompactMode, CompactRouteLayer, RemotePolicy};
use tower_responses::connect::{ReqwestService, UpstreamClientBuilder};
use tower_responses::continuity::ContinuityLayer;
use tower_responses::credentials::{CredentialRotateLayer, Pool, PoolMember, Strategy};
use tower_responses::fresh::{FreshConnectionLayer, FreshRetry, RetryReason};
use tower_responses::marks::{Compacted, ServedBy, SoftFailure};
use tower_responses::normalize::BodyNormalizeLayer;
use tower_responses::profile::Profile;
use tower_responses::soft_failure::SoftFailureDetectLayer;
use tower_responses::stack::Forward;
use tower_responses::testing::{Fault, MockUpstream, RecordedRequest, Reply, StaleMode, events};

const KEY_A: &str = "sk-alone-aaaaaaaaaaaaaaaaaaaa-AAAA";
const KEY_B: &str = "sk-alone-bbbbbbbbbbbbbbbbbbbb-BBBB";

fn reqwest_client() -> ReqwestService {
    ReqwestService::from_builder(reqwest::Client::builder).expect("client builds")
}

fn pool() -> Arc<Pool> {
    Arc::new(
        Pool::new(vec![
            PoolMember::new(KEY_A.parse().unwrap()),
            PoolMember::new(KEY_B.parse().unwrap()),
        ])
        .unwrap()
        .with_strategy(Strategy::FillFirst),
    )
}

fn post(mock: &MockUpstream, path: &str, body: &Value) -> Request<ReplayBody> {
    Request::post(format!("{}{path}", mock.base_url()))
        .header("content-type", "application/json")
        .header("authorization", "Bearer sk-alone-client")
        .body(ReplayBody::new(body.to_string()))
        .unwrap()
}

fn turn() -> Value {
    json!({"model": "gpt-5.5", "stream": true, "input": "hi"})
}

async fn text(res: Response<ResponseBody>) -> String {
    let bytes = res.into_body().collect().await.expect("body").to_bytes();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Soft-failure detection alone: a quota failure inside a 200 stream is classified and
/// marked before the client saw any content.
#[tokio::test]
async fn soft_failure_detect_alone_marks_an_in_stream_failure() {
    let mock = MockUpstream::start().await.unwrap();
    mock.push(Reply::sse(vec![
        events::created("resp_x"),
        events::in_progress("resp_x"),
        events::failed(
            "resp_x",
            "insufficient_quota",
            "You exceeded your current quota",
        ),
    ]));
    let svc = SoftFailureDetectLayer::new().layer(reqwest_client());
    let res = svc
        .oneshot(post(&mock, "/responses", &turn()))
        .await
        .unwrap();
    let mark = res
        .extensions()
        .get::<SoftFailure>()
        .expect("marked")
        .clone();
    assert_eq!(mark.failure.class, FailureClass::QuotaExhausted);
    assert!(mark.before_content);
}

/// Rotation alone: the first key is rate limited, the request goes again with the second,
/// and the client's own key never goes upstream.
#[tokio::test]
async fn credential_rotate_alone_fails_over_to_the_next_key() {
    let mock = MockUpstream::start().await.unwrap();
    mock.push_for(
        KEY_A,
        Reply::json(
            StatusCode::TOO_MANY_REQUESTS,
            json!({"error": {"type": "rate_limit_error", "code": "rate_limit_exceeded", "message": "Rate limit reached"}}),
        ),
    );
    let svc = CredentialRotateLayer::new(pool()).layer(reqwest_client());
    let res = svc
        .oneshot(post(&mock, "/responses", &turn()))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let served = res
        .extensions()
        .get::<ServedBy>()
        .expect("served by")
        .clone();
    assert_eq!(&*served.0, "key-2", "the second key, by position");
    assert!(text(res).await.contains("response.completed"));
    let keys: Vec<_> = mock.requests().into_iter().map(|r| r.credential).collect();
    assert_eq!(keys, [Some(KEY_A.to_string()), Some(KEY_B.to_string())]);
}

/// An upstream that refuses the `x_extra` parameter the way OpenAI refuses unknown ones.
fn refuse_x_extra(mock: &MockUpstream) {
    mock.set_handler(|r: &RecordedRequest| {
        r.json()?.get("x_extra")?;
        Some(Reply::json(
            StatusCode::BAD_REQUEST,
            json!({"error": {"message": "Unsupported parameter: 'x_extra' is not supported with this model.", "type": "invalid_request_error", "param": "x_extra", "code": "unsupported_parameter"}}),
        ))
    });
}

/// Normalization alone: the upstream refuses a parameter, the layer learns it and sends the
/// request again without it.
#[tokio::test]
async fn body_normalize_alone_drops_a_refused_parameter() {
    let mock = MockUpstream::start().await.unwrap();
    refuse_x_extra(&mock);
    let svc = BodyNormalizeLayer::for_profile(Profile::Generic).layer(reqwest_client());
    let mut body = turn();
    body["x_extra"] = json!(1);
    let res = svc.oneshot(post(&mock, "/responses", &body)).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(text(res).await.contains("response.completed"));
    let seen = mock.requests();
    assert_eq!(seen.len(), 2, "refused once, then sent again");
    assert!(seen[0].json().unwrap().get("x_extra").is_some());
    assert!(seen[1].json().unwrap().get("x_extra").is_none());
}

/// Compaction routing alone: the upstream refuses remote compaction, the layer answers with
/// a local summary from `/responses` and says so.
#[tokio::test]
async fn compact_route_alone_falls_back_to_a_local_summary() {
    let mock = MockUpstream::start().await.unwrap();
    mock.set_handler(|r: &RecordedRequest| {
        r.path.ends_with("/responses/compact").then(|| {
            Reply::json(
                StatusCode::NOT_FOUND,
                json!({"error": {"message": "Not found", "type": "invalid_request_error", "code": "not_found"}}),
            )
        })
    });
    let config = CompactConfig {
        remote: RemotePolicy::Always,
        ..CompactConfig::default()
    };
    let svc = CompactRouteLayer::new(config)
        .profile(Profile::Openai)
        .layer(reqwest_client());
    let body = json!({"model": "gpt-5.5", "input": [
        {"role": "user", "content": "a long history"},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "ok"}]}
    ]});
    let res = svc
        .oneshot(post(&mock, "/responses/compact", &body))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let compacted = *res.extensions().get::<Compacted>().expect("marked");
    assert_eq!(compacted.mode, CompactMode::Local);
    let answer: Value = serde_json::from_str(&text(res).await).unwrap();
    assert!(answer["output"].is_array(), "{answer}");
    let paths: Vec<String> = mock.requests().iter().map(|r| r.path.clone()).collect();
    assert_eq!(paths.len(), 2, "{paths:?}");
    assert!(paths[0].ends_with("/responses/compact") && paths[1].ends_with("/responses"));
}

/// Continuity alone: an anchored follow-up whose connection is lost reaches the client as a
/// retryable 502 in the OpenAI envelope, never as a bare transport error.
#[tokio::test]
async fn continuity_alone_turns_a_lost_anchored_request_into_a_retryable_502() {
    let mock = MockUpstream::start().await.unwrap();
    mock.push(Reply::fault(Fault::CloseAfterRead));
    let svc = ContinuityLayer::new(pool()).layer(reqwest_client());
    let mut body = turn();
    body["previous_response_id"] = json!("resp_prev");
    let res = svc.oneshot(post(&mock, "/responses", &body)).await.unwrap();
    assert_eq!(res.status(), StatusCode::BAD_GATEWAY);
    let answer: Value = serde_json::from_str(&text(res).await).unwrap();
    assert_eq!(answer["error"]["code"], "upstream_unavailable", "{answer}");
    assert_eq!(mock.request_count(), 1);
}

/// The fresh-connection layer alone, over each client service: a pooled connection the
/// upstream forgot is retried on a new one.
async fn fresh_alone<S>(client: S)
where
    S: tower::Service<
            Request<ReplayBody>,
            Response = Response<ResponseBody>,
            Error = tower_responses::error::BoxError,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let mock = MockUpstream::start().await.unwrap();
    mock.set_stale(Duration::from_millis(300), StaleMode::Fin);
    let svc = FreshConnectionLayer::new().layer(client);
    let first = svc
        .clone()
        .oneshot(post(&mock, "/responses", &turn()))
        .await
        .unwrap();
    assert!(first.extensions().get::<FreshRetry>().is_none());
    text(first).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let res = svc
        .oneshot(post(&mock, "/responses", &turn()))
        .await
        .unwrap();
    let retry = res
        .extensions()
        .get::<FreshRetry>()
        .expect("retried")
        .clone();
    assert_eq!(retry.reason, RetryReason::BrokenConnection);
    assert!(text(res).await.contains("response.completed"));
    assert_eq!(mock.request_count(), 3);
}

#[tokio::test]
async fn fresh_connection_alone_over_reqwest_retries_a_stale_connection() {
    fresh_alone(reqwest_client()).await;
}

#[tokio::test]
async fn fresh_connection_alone_over_hyper_util_retries_a_stale_connection() {
    fresh_alone(UpstreamClientBuilder::new().service()).await;
}

/// One layer alone in an axum app beside the app's own route, over reqwest: the client
/// sends a parameter the upstream refuses and gets an answer anyway.
#[tokio::test]
async fn a_layer_alone_mounts_in_an_axum_app() {
    let mock = MockUpstream::start().await.unwrap();
    refuse_x_extra(&mock);
    let layer = BodyNormalizeLayer::for_profile(Profile::Generic).layer(reqwest_client());
    let responses = Forward::new(BoxCloneSyncService::new(layer), &mock.base_url()).unwrap();
    let app = axum::Router::new()
        .route("/", axum::routing::get(|| async { "own page" }))
        .nest_service("/v1", responses);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });

    let http = reqwest::Client::new();
    let own = http.get(format!("http://{addr}/")).send().await.unwrap();
    assert_eq!(own.text().await.unwrap(), "own page");
    let mut body = turn();
    body["x_extra"] = json!(1);
    let res = http
        .post(format!("http://{addr}/v1/responses"))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.text().await.unwrap().contains("response.completed"));
    let seen = mock.requests();
    assert_eq!(seen.len(), 2, "refused once, then sent again");
    assert!(seen[1].path.ends_with("/responses"));
    assert!(seen[1].json().unwrap().get("x_extra").is_none());
}

/// Sends every request at once through clones of `svc`; each must be answered, body and all,
/// within a bound (a deadlock fails instead of hanging). Returns each retry reason and body.
async fn all_complete<S>(
    svc: S,
    reqs: Vec<Request<ReplayBody>>,
) -> Vec<(Option<RetryReason>, String)>
where
    S: tower::Service<
            Request<ReplayBody>,
            Response = Response<ResponseBody>,
            Error = tower_responses::error::BoxError,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let mut set = tokio::task::JoinSet::new();
    for req in reqs {
        let svc = svc.clone();
        set.spawn(async move {
            let res = svc.oneshot(req).await?;
            let retry = res.extensions().get::<FreshRetry>().map(|r| r.reason);
            let body = text(res).await;
            Ok::<_, tower_responses::error::BoxError>((retry, body))
        });
    }
    tokio::time::timeout(Duration::from_secs(20), async {
        let mut out = Vec::new();
        while let Some(joined) = set.join_next().await {
            out.push(joined.expect("no panic").expect("answered"));
        }
        out
    })
    .await
    .expect("no deadlock")
}

/// A client service that refuses, unsent, every request not asking for a new connection.
async fn refuse_unless_new(
    client: ReqwestService,
    req: Request<ReplayBody>,
) -> Result<Response<ResponseBody>, tower_responses::error::BoxError> {
    use tower_responses::classify::Failure;
    use tower_responses::connect::NewConnection;
    use tower_responses::marks::{AttemptError, Phase};

    if req.extensions().get::<NewConnection>().is_none() {
        let refused = Failure::transport(false, "connection refused (scripted)");
        return Err(AttemptError::new(Phase::Unsent, refused).into());
    }
    client.oneshot(req).await
}

/// The tower contract: the first attempt goes through the very instance `poll_ready` readied
/// (a concurrency limit of one beneath the layer would otherwise deadlock), and the retry
/// readies it again. Every first attempt
/// is refused unsent, so each of 8 concurrent requests takes the retry path.
#[tokio::test]
async fn fresh_connection_retries_through_the_readied_service() {
    let mock = MockUpstream::start().await.unwrap();
    let client = reqwest_client();
    let refuse_first = tower::service_fn(move |req| refuse_unless_new(client.clone(), req));
    let limited = tower::limit::ConcurrencyLimitLayer::new(1).layer(refuse_first);
    let svc = FreshConnectionLayer::new().layer(BoxCloneSyncService::new(limited));
    let reqs = (0..8).map(|_| post(&mock, "/responses", &turn())).collect();
    let all = all_complete(svc, reqs).await;
    assert_eq!(all.len(), 8);
    for (retry, body) in &all {
        assert_eq!(*retry, Some(RetryReason::NotSent));
        assert!(body.contains("response.completed"));
    }
    assert_eq!(mock.request_count(), 8);
}
