//! The continuity policy through the proxy: the owner search after a restart (REVIEW
//! finding 3), path-addressed response calls (finding 13), the Codex backend's synthetic
//! "not found" (finding 10) and where owners are recorded.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use common::*;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};
use tower::{Layer, ServiceExt};
use tower_responses::body::ReplayBody;
use tower_responses::connect::UpstreamClientBuilder;
use tower_responses::continuity::ContinuityLayer;
use tower_responses::credentials::{Pool, PoolMember, Strategy};
use tower_responses::normalize::BodyNormalizeLayer;
use tower_responses::profile::Profile;
use tower_responses::soft_failure::SoftFailure;
use tower_responses::stack::ResponsesStack;
use tower_responses::testing::{Fault, MockUpstream, RecordedRequest, Reply, ResponseStore};

const KEY_A: &str = "sk-policy-aaaaaaaaaaaaaaaaaaaa-AAAA";
const KEY_B: &str = "sk-policy-bbbbbbbbbbbbbbbbbbbb-BBBB";
const KEY_C: &str = "sk-policy-cccccccccccccccccccc-CCCC";

/// The platform (a [`ResponseStore`]) with answers forced per credential: a key listed in
/// `forced` gets its reply for every request, whatever it asks.
#[derive(Clone, Default)]
struct Platform {
    store: Option<ResponseStore>,
    forced: Arc<Mutex<HashMap<String, Reply>>>,
}

impl Platform {
    fn install(mock: &MockUpstream) -> Platform {
        let platform = Platform {
            store: Some(ResponseStore::new(100)),
            ..Platform::default()
        };
        let me = platform.clone();
        mock.set_handler(move |r: &RecordedRequest| {
            let forced = r
                .credential
                .as_ref()
                .and_then(|c| me.forced.lock().unwrap().get(c).cloned());
            forced.or_else(|| me.store().answer(r))
        });
        platform
    }

    fn store(&self) -> &ResponseStore {
        self.store.as_ref().unwrap()
    }

    fn force(&self, key: &str, reply: Reply) {
        self.forced.lock().unwrap().insert(key.into(), reply);
    }

    fn release(&self, key: &str) {
        self.forced.lock().unwrap().remove(key);
    }
}

async fn proxy_with(
    mock: &MockUpstream,
    members: Vec<PoolMember>,
    strategy: Strategy,
) -> RunningProxy {
    let mut cfg = config_for(mock.base_url());
    cfg.credentials = members;
    cfg.strategy = strategy;
    start_proxy(cfg).await
}

fn keys(keys: &[&str]) -> Vec<PoolMember> {
    keys.iter()
        .map(|k| PoolMember::new(k.parse().unwrap()))
        .collect()
}

fn anchored(prev: &str) -> Value {
    json!({"model": "gpt-5.5", "stream": true, "store": true, "previous_response_id": prev,
           "input": [{"role": "user", "content": "next"}]})
}

fn server_error() -> Reply {
    Reply::json(
        StatusCode::INTERNAL_SERVER_ERROR,
        json!({"error": {"type": "server_error", "message": "The server had an error"}}),
    )
}

/// Which credentials the mock saw, in order, from request `from` on.
fn seen_from(mock: &MockUpstream, from: usize) -> Vec<String> {
    mock.requests()[from..]
        .iter()
        .map(|r| r.credential.clone().unwrap_or_default())
        .collect()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Finding 3 (a): A says "not found", B cannot tell (a 500, then a lost connection), C owns
/// the anchor: the client gets C's answer, and C is remembered as the owner.
#[tokio::test]
async fn the_owner_is_found_behind_a_credential_that_could_not_tell() {
    for could_not_tell in [server_error(), Reply::fault(Fault::CloseAfterRead)] {
        let mock = MockUpstream::start().await.unwrap();
        let platform = Platform::install(&mock);
        platform.store().insert("resp_C", KEY_C);
        platform.force(KEY_B, could_not_tell);
        let proxy = proxy_with(&mock, keys(&[KEY_A, KEY_B, KEY_C]), Strategy::FillFirst).await;
        let c = client();
        let url = proxy.url("/v1/responses");

        let (s, _, b) = send_collect(&c, json_req(&url, None, anchored("resp_C"))).await;
        assert_eq!(s, StatusCode::OK, "{}", text(&b));
        assert!(text(&b).contains("response.completed"));
        let seen = seen_from(&mock, 0);
        assert_eq!(seen.first().map(String::as_str), Some(KEY_A));
        assert!(seen.iter().any(|k| k == KEY_B), "B was asked: {seen:?}");
        assert_eq!(seen.last().map(String::as_str), Some(KEY_C));

        // The owner was recorded: the next turn goes straight to C.
        let before = mock.request_count();
        let (s, _, b) = send_collect(&c, json_req(&url, None, anchored("resp_C"))).await;
        assert_eq!(s, StatusCode::OK, "{}", text(&b));
        assert_eq!(seen_from(&mock, before), vec![KEY_C.to_string()]);
    }
}

/// Finding 3 (a): "not found" on A and C but B could not tell: B may own it, so the client
/// gets a retryable 502, never the 400 that would make it drop its anchor.
#[tokio::test]
async fn not_found_with_an_inconclusive_credential_is_a_retryable_502() {
    let mock = MockUpstream::start().await.unwrap();
    let platform = Platform::install(&mock);
    platform.force(KEY_B, server_error());
    let proxy = proxy_with(&mock, keys(&[KEY_A, KEY_B, KEY_C]), Strategy::FillFirst).await;
    let c = client();
    let (s, _, b) = send_collect(
        &c,
        json_req(&proxy.url("/v1/responses"), None, anchored("resp_lost")),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_GATEWAY, "{}", text(&b));
    assert_envelope(&b);
    assert_eq!(error_code(&b).as_deref(), Some("upstream_unavailable"));
    assert_eq!(
        seen_from(&mock, 0),
        vec![KEY_A.to_string(), KEY_B.to_string(), KEY_C.to_string()],
        "every credential asked once"
    );

    // When every credential can tell, a genuine not-found reaches the client as it came.
    platform.release(KEY_B);
    let mock2 = MockUpstream::start().await.unwrap();
    Platform::install(&mock2);
    let proxy2 = proxy_with(&mock2, keys(&[KEY_A, KEY_B, KEY_C]), Strategy::FillFirst).await;
    let (s, _, b) = send_collect(
        &c,
        json_req(&proxy2.url("/v1/responses"), None, anchored("resp_gone")),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{}", text(&b));
    assert_eq!(
        error_code(&b).as_deref(),
        Some("previous_response_not_found")
    );
    assert_eq!(mock2.request_count(), 3);
}

/// Finding 3 (b): a cooling credential is not asked (its synthetic 503 is no answer), the
/// real owner later in the list is; and when only cooling credentials could not tell, the
/// client gets a 503 with `Retry-After`, not the 400.
#[tokio::test]
async fn cooling_credentials_are_skipped_and_only_waiting_ones_give_a_503() {
    let mock = MockUpstream::start().await.unwrap();
    let platform = Platform::install(&mock);
    platform.store().insert("resp_C", KEY_C);
    let tomorrow = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 86_400;
    platform.force(
        KEY_A,
        Reply::json(
            StatusCode::TOO_MANY_REQUESTS,
            json!({"error": {"type": "usage_limit_reached", "message": "The usage limit has been reached", "resets_at": tomorrow}}),
        ),
    );
    let proxy = proxy_with(&mock, keys(&[KEY_A, KEY_B, KEY_C]), Strategy::FillFirst).await;
    let c = client();
    let url = proxy.url("/v1/responses");
    // A plain request exhausts A (it fails over to B).
    let plain = json!({"model": "gpt-5.5", "stream": true, "input": "hi"});
    let (s, _, b) = send_collect(&c, json_req(&url, None, plain)).await;
    assert_eq!(s, StatusCode::OK, "{}", text(&b));
    platform.release(KEY_A);

    let before = mock.request_count();
    let (s, _, b) = send_collect(&c, json_req(&url, None, anchored("resp_C"))).await;
    assert_eq!(s, StatusCode::OK, "{}", text(&b));
    assert_eq!(
        seen_from(&mock, before),
        vec![KEY_B.to_string(), KEY_C.to_string()],
        "the cooling A was not asked; C was"
    );

    // Nobody has resp_nowhere, but A, cooling, could not be asked.
    let before = mock.request_count();
    let (s, h, b) = send_collect(&c, json_req(&url, None, anchored("resp_nowhere"))).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{}", text(&b));
    assert_envelope(&b);
    assert_eq!(
        error_code(&b).as_deref(),
        Some("previous_response_owner_unavailable")
    );
    let retry_after: u64 = h["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(
        retry_after > 3600,
        "the cooling owner's reset: {retry_after}"
    );
    assert_eq!(
        seen_from(&mock, before),
        vec![KEY_B.to_string(), KEY_C.to_string()]
    );
}

/// Finding 3 (b): a credential that answers 429 during the search cannot tell either. Only
/// waiting ones: a 503 with that credential's `Retry-After`; with a 500 among them, a 502.
#[tokio::test]
async fn a_rate_limited_answer_in_the_search_is_inconclusive() {
    let rate_limited = Reply::json(
        StatusCode::TOO_MANY_REQUESTS,
        json!({"error": {"type": "rate_limit_error", "code": "rate_limit_exceeded", "message": "Rate limit reached"}}),
    )
    .with_header("retry-after", "7");
    let mock = MockUpstream::start().await.unwrap();
    let platform = Platform::install(&mock);
    platform.force(KEY_B, rate_limited.clone());
    let proxy = proxy_with(&mock, keys(&[KEY_A, KEY_B, KEY_C]), Strategy::FillFirst).await;
    let c = client();
    let url = proxy.url("/v1/responses");
    let (s, h, b) = send_collect(&c, json_req(&url, None, anchored("resp_x"))).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{}", text(&b));
    assert_eq!(
        error_code(&b).as_deref(),
        Some("previous_response_owner_unavailable")
    );
    let retry_after: u64 = h["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(
        (1..=7).contains(&retry_after),
        "B's own wait: {retry_after}"
    );
    assert_eq!(seen_from(&mock, 0).len(), 3, "A, B and C asked");

    let mock = MockUpstream::start().await.unwrap();
    let platform = Platform::install(&mock);
    platform.force(KEY_B, rate_limited);
    platform.force(KEY_C, server_error());
    let proxy = proxy_with(&mock, keys(&[KEY_A, KEY_B, KEY_C]), Strategy::FillFirst).await;
    let (s, _, b) = send_collect(
        &c,
        json_req(&proxy.url("/v1/responses"), None, anchored("resp_x")),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_GATEWAY, "{}", text(&b));
    assert_eq!(error_code(&b).as_deref(), Some("upstream_unavailable"));
}

fn addressed(method: Method, url: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri(url)
        .body(Full::new(Bytes::new()))
        .unwrap()
}

/// Finding 13: with two platform keys in round robin, every call that names a response in
/// its path goes to the credential that created it.
#[tokio::test]
async fn path_addressed_calls_reach_the_owner() {
    let mock = MockUpstream::start().await.unwrap();
    Platform::install(&mock);
    let proxy = proxy_with(&mock, keys(&[KEY_A, KEY_B]), Strategy::RoundRobin).await;
    let c = client();
    let created = json!({"model": "gpt-5.5", "background": true, "store": true, "input": "work"});
    let (s, _, b) = send_collect(&c, json_req(&proxy.url("/v1/responses"), None, created)).await;
    assert_eq!(s, StatusCode::OK, "{}", text(&b));
    let body: Value = serde_json::from_slice(&b).unwrap();
    assert_eq!(body["status"], "queued");
    let id = body["id"].as_str().unwrap().to_string();
    let owner = mock.requests()[0].credential.clone().unwrap();

    let calls = [
        (Method::GET, format!("/v1/responses/{id}")),
        (Method::GET, format!("/v1/responses/{id}/input_items")),
        (Method::GET, format!("/v1/responses/{id}")),
        (Method::POST, format!("/v1/responses/{id}/cancel")),
        (Method::DELETE, format!("/v1/responses/{id}")),
    ];
    for (method, path) in calls {
        let before = mock.request_count();
        let (s, _, b) = send_collect(&c, addressed(method.clone(), &proxy.url(&path))).await;
        assert_eq!(s, StatusCode::OK, "{method} {path}: {}", text(&b));
        assert_eq!(
            seen_from(&mock, before),
            vec![owner.clone()],
            "{method} {path}"
        );
    }
}

/// Finding 13, after a restart: the owner of a path-addressed response is unknown, the first
/// credential answers 404, and the others are asked.
#[tokio::test]
async fn an_unknown_owner_of_a_path_addressed_response_is_searched() {
    let mock = MockUpstream::start().await.unwrap();
    let platform = Platform::install(&mock);
    platform.store().insert("resp_old", KEY_B);
    let proxy = proxy_with(&mock, keys(&[KEY_A, KEY_B]), Strategy::FillFirst).await;
    let c = client();
    let (s, _, b) = send_collect(
        &c,
        addressed(Method::GET, &proxy.url("/v1/responses/resp_old")),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{}", text(&b));
    assert_eq!(
        seen_from(&mock, 0),
        vec![KEY_A.to_string(), KEY_B.to_string()]
    );
    // Nobody has it: the 404 passes as it came.
    let (s, _, _) = send_collect(
        &c,
        addressed(Method::GET, &proxy.url("/v1/responses/resp_none")),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

/// Finding 10: the ChatGPT Codex backend cannot resolve anchors, so normalize answers
/// `previous_response_not_found` itself; the answer carries its classified failure.
#[tokio::test]
async fn normalize_marks_its_synthetic_not_found() {
    let mock = MockUpstream::start().await.unwrap();
    let svc = BodyNormalizeLayer::for_profile(Profile::ChatgptCodex)
        .layer(UpstreamClientBuilder::new().service());
    let req = Request::post(format!("{}/responses", mock.base_url()))
        .header("content-type", "application/json")
        .body(ReplayBody::new(anchored("resp_x").to_string()))
        .unwrap();
    let res = svc.oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let mark = res
        .extensions()
        .get::<SoftFailure>()
        .expect("marked")
        .clone();
    assert!(mark.before_content);
    assert_eq!(
        mark.failure.class,
        tower_responses::classify::FailureClass::PreviousResponseNotFound
    );
    let b = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        error_code(&b).as_deref(),
        Some("previous_response_not_found")
    );
    assert_eq!(mock.request_count(), 0, "nothing went upstream");
}

fn member(key: &str, profile: Profile) -> PoolMember {
    PoolMember {
        profile: Some(profile),
        ..PoolMember::new(key.parse().unwrap())
    }
}

/// Finding 10 in a mixed pool: an anchored request that lands on the Codex member gets the
/// synthetic not-found there, and the platform key that owns the anchor is asked.
#[tokio::test]
async fn a_codex_members_synthetic_not_found_does_not_hide_the_platform_owner() {
    let mock = MockUpstream::start().await.unwrap();
    let platform = Platform::install(&mock);
    platform.store().insert("resp_P", KEY_B);
    let members = vec![
        member(KEY_A, Profile::ChatgptCodex),
        member(KEY_B, Profile::Openai),
    ];
    let proxy = proxy_with(&mock, members, Strategy::FillFirst).await;
    let c = client();
    let (s, _, b) = send_collect(
        &c,
        json_req(&proxy.url("/v1/responses"), None, anchored("resp_P")),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{}", text(&b));
    assert_eq!(seen_from(&mock, 0), vec![KEY_B.to_string()]);
}

fn response_id(sse: &[u8]) -> String {
    text(sse)
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .find(|v| v["type"] == "response.created")
        .and_then(|v| v["response"]["id"].as_str().map(str::to_string))
        .expect("a response id")
}

/// Owners are recorded only where anchors can exist: not for what a ChatGPT Codex member
/// answers (it stores nothing over HTTP), but for the platform member's answers.
#[tokio::test]
async fn owners_are_not_recorded_for_codex_members() {
    let mock = MockUpstream::start().await.unwrap();
    let pool = Arc::new(
        Pool::new(vec![
            member(KEY_A, Profile::ChatgptCodex),
            member(KEY_B, Profile::Openai),
        ])
        .unwrap(),
    );
    let stack = ResponsesStack::new()
        .pool(pool.clone())
        .client(&UpstreamClientBuilder::new());
    let owners = ContinuityLayer::new(pool);
    let mut served = HashMap::new();
    for _ in 0..2 {
        let body = json!({"model": "gpt-5.5", "stream": true, "store": false, "input": "hi"});
        let req = Request::post(format!("{}/responses", mock.base_url()))
            .header("content-type", "application/json")
            .body(ReplayBody::new(body.to_string()))
            .unwrap();
        let res = stack.clone().oneshot(req).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        let b = res.into_body().collect().await.unwrap().to_bytes();
        let by = mock.requests().last().unwrap().credential.clone().unwrap();
        served.insert(by, response_id(&b));
    }
    assert_eq!(served.len(), 2, "round robin used both members");
    let codex_id = &served[KEY_A];
    let platform_id = &served[KEY_B];
    assert_eq!(
        owners.owner_of(codex_id),
        None,
        "nothing recorded for Codex"
    );
    assert!(
        owners.owner_of(platform_id).is_some(),
        "the platform's id is recorded"
    );
    tokio::time::timeout(Duration::from_secs(1), mock.shutdown())
        .await
        .unwrap();
}
