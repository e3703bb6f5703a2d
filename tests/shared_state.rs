//! Two full proxies (replicas A and B) on one real `redis-server` (`--state redis://…`),
//! one mock upstream, real HTTP on loopback: what one replica learns, the other acts on.

mod common;
#[path = "common/redis_server.rs"]
mod redis_server;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use common::*;
use http::StatusCode;
use redis_server::RedisServer;
use serde_json::{Value, json};
use tower_responses::credentials::oauth::{LoginStore, parse_login};
use tower_responses::proxy::ProxyConfig;
use tower_responses::testing::{MockAuthority, MockUpstream, Reply, ResponseStore};

const KEY_A: &str = "sk-test-aaaaaaaaaaaaaaaaaaaa-AAAA";
const KEY_B: &str = "sk-test-bbbbbbbbbbbbbbbbbbbb-BBBB";

fn replica_config(upstream: &MockUpstream, redis: &RedisServer, prefix: &str) -> ProxyConfig {
    let mut cfg = config_for(upstream.base_url());
    cfg.credentials = [KEY_A, KEY_B].iter().map(|c| c.parse().unwrap()).collect();
    cfg.strategy = tower_responses::credentials::Strategy::FillFirst;
    cfg.state = Some(redis.url());
    cfg.state_prefix = Some(prefix.into());
    cfg
}

/// Waits until the replica's store has read Redis (its `tr_state_backend_up` is 1).
async fn until_up(p: &RunningProxy, up: bool) {
    let want = if up { 1.0 } else { 0.0 };
    let ok = eventually(Duration::from_secs(10), || {
        p.metrics
            .get("tr_state_backend_up", &[("backend", "redis")])
            .is_some_and(|v| v == want)
    })
    .await;
    assert!(ok, "tr_state_backend_up never became {want}");
}

async fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while !cond() {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

fn body() -> Value {
    json!({"model": "gpt-5", "input": "hi", "stream": true})
}

/// Sends one request through `p`; returns the status and the credential the upstream saw.
async fn ask(p: &RunningProxy, upstream: &MockUpstream, c: &HttpClient) -> (StatusCode, String) {
    let before = upstream.request_count();
    let (status, _, _) = send_collect(c, json_req(&p.url("/v1/responses"), None, body())).await;
    let seen = upstream.requests();
    let cred = seen[before..]
        .last()
        .and_then(|r| r.credential.clone())
        .unwrap_or_default();
    (status, cred)
}

fn quota_reply() -> Reply {
    let resets_at = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3 * 3600;
    Reply::json(
        StatusCode::TOO_MANY_REQUESTS,
        json!({"error": {"type": "usage_limit_reached", "message": "The usage limit has been reached", "resets_at": resets_at}}),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quota_cooldown_taken_by_one_replica_keeps_the_other_off_within_a_second() {
    let redis = RedisServer::start();
    let upstream = MockUpstream::start().await.unwrap();
    let a = start_proxy(replica_config(&upstream, &redis, "cool")).await;
    let b = start_proxy(replica_config(&upstream, &redis, "cool")).await;
    until_up(&a, true).await;
    until_up(&b, true).await;
    let c = client();
    // Both fill key 1 first.
    assert_eq!(ask(&b, &upstream, &c).await, (StatusCode::OK, KEY_A.into()));

    // A meets key 1's exhausted quota and moves on to key 2.
    upstream.push_for(KEY_A, quota_reply());
    assert_eq!(ask(&a, &upstream, &c).await, (StatusCode::OK, KEY_B.into()));
    let cooled = Instant::now();

    // B stops using key 1 within a second, without ever being refused by it.
    let mut moved = None;
    while cooled.elapsed() < Duration::from_secs(2) {
        let (status, cred) = ask(&b, &upstream, &c).await;
        assert_eq!(status, StatusCode::OK);
        if cred == KEY_B {
            moved = Some(cooled.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let moved = moved.expect("B kept using the exhausted key for 2 s");
    // One read a second, plus its round trip and scheduling on a busy machine.
    assert!(
        moved <= Duration::from_millis(1250),
        "B moved after {moved:?}"
    );
    for _ in 0..5 {
        assert_eq!(ask(&b, &upstream, &c).await, (StatusCode::OK, KEY_B.into()));
    }
    eprintln!("B moved off the cooled key {moved:?} after A cooled it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_anchor_created_through_one_replica_follows_up_through_the_other_to_its_owner() {
    let redis = RedisServer::start();
    let upstream = MockUpstream::start().await.unwrap();
    ResponseStore::new(100).install(&upstream);
    let mut cfg_a = replica_config(&upstream, &redis, "anchor");
    cfg_a.strategy = tower_responses::credentials::Strategy::RoundRobin;
    let cfg_b = cfg_a.clone();
    let a = start_proxy(cfg_a).await;
    let b = start_proxy(cfg_b).await;
    until_up(&a, true).await;
    until_up(&b, true).await;
    let c = client();
    // Turns alternate replicas, each sent the moment the last answer arrived; streamed and
    // JSON answers both. Round robin would send every other turn to the wrong account.
    let mut prev: Option<String> = None;
    for turn in 0..12 {
        let (via, stream) = match turn % 4 {
            0 => (&a, true),
            1 => (&b, true),
            2 => (&a, false),
            _ => (&b, false),
        };
        let mut req = json!({"model": "gpt-5", "input": format!("turn {turn}"), "stream": stream});
        if let Some(p) = &prev {
            req["previous_response_id"] = json!(p);
        }
        let before = upstream.request_count();
        let (status, _, bytes) =
            send_collect(&c, json_req(&via.url("/v1/responses"), None, req)).await;
        let text = String::from_utf8_lossy(&bytes).into_owned();
        assert_eq!(status, StatusCode::OK, "turn {turn}: {text}");
        let sent = &upstream.requests()[before..];
        assert_eq!(
            sent.len(),
            1,
            "turn {turn}: one upstream request, straight to the owner (no search)"
        );
        let id = if stream {
            text.lines()
                .filter_map(|l| l.strip_prefix("data: "))
                .filter_map(|d| serde_json::from_str::<Value>(d).ok())
                .find_map(|v| v["response"]["id"].as_str().map(str::to_string))
        } else {
            serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v["id"].as_str().map(str::to_string))
        };
        prev = Some(id.unwrap_or_else(|| panic!("turn {turn}: no response id in {text}")));
    }
}

fn state_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tr-shared-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn refreshes(p: &RunningProxy, outcome: &str) -> f64 {
    p.metrics
        .get(
            "tr_credential_refresh_total",
            &[("credential", "codex-oauth-1"), ("outcome", outcome)],
        )
        .unwrap_or(0.0)
}

fn stored(dir: &Path) -> String {
    LoginStore::new(dir)
        .read("h")
        .unwrap()
        .tokens
        .refresh_token
        .expose()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owned_login_due_for_refresh_under_load_on_both_replicas_gets_one_token_call() {
    let redis = RedisServer::start();
    let auth = MockAuthority::start().await.unwrap();
    let upstream = MockUpstream::start().await.unwrap();
    // Due: the access token expires in 5 minutes, inside the 10-minute lead. Each replica
    // has its own state directory holding the same login (two hosts).
    let old = auth.issue_expiring(
        "acct-h",
        SystemTime::now() + Duration::from_secs(300),
        Duration::from_secs(10 * 24 * 3600),
    );
    let login = parse_login(old.auth_json().as_bytes()).unwrap();
    let (dir_a, dir_b) = (state_dir("a"), state_dir("b"));
    let mut proxies = Vec::new();
    for dir in [&dir_a, &dir_b] {
        LoginStore::new(dir).write("h", &login).unwrap();
        let mut cfg = config_for(upstream.base_url());
        cfg.credentials = vec!["codex-oauth:h".parse().unwrap()];
        cfg.state_dir = Some(dir.clone());
        cfg.auth_base_url = Some(auth.base_url());
        cfg.auth_timeout_secs = 2;
        cfg.state = Some(redis.url());
        cfg.state_prefix = Some("owned".into());
        proxies.push(start_proxy(cfg).await);
    }
    for p in &proxies {
        until_up(p, true).await;
    }
    let c = client();
    // Fifty requests on each replica at once.
    let mut tasks = Vec::new();
    for p in &proxies {
        for _ in 0..50 {
            let c = c.clone();
            let url = p.url("/v1/responses");
            tasks.push(tokio::spawn(async move {
                send_collect(&c, json_req(&url, None, body())).await.0
            }));
        }
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::OK);
    }
    let settled = eventually(Duration::from_secs(10), || {
        proxies
            .iter()
            .map(|p| refreshes(p, "ok") + refreshes(p, "adopted"))
            .sum::<f64>()
            == 2.0
    })
    .await;
    assert!(settled, "both replicas end on the new pair");
    assert_eq!(auth.token_calls(), 1, "one token call across both replicas");
    let refreshed = proxies.iter().map(|p| refreshes(p, "ok")).sum::<f64>();
    assert_eq!(refreshed, 1.0, "one replica refreshed, the other adopted");
    // Both state directories hold the new, live pair; the old one is spent.
    let (a_rt, b_rt) = (stored(&dir_a), stored(&dir_b));
    assert_eq!(a_rt, b_rt);
    assert_ne!(a_rt, old.refresh_token);
    assert!(auth.is_live(&a_rt));
    // And both serve with the new access token.
    let new_access = LoginStore::new(&dir_a)
        .read("h")
        .unwrap()
        .tokens
        .access_token
        .expose()
        .to_string();
    for p in &proxies {
        let before = upstream.request_count();
        let (s, _, _) = send_collect(&c, json_req(&p.url("/v1/responses"), None, body())).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(
            upstream.requests()[before].credential.as_deref(),
            Some(new_access.as_str())
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_stopped_both_replicas_serve_and_converge_when_it_returns() {
    let mut redis = RedisServer::start();
    let upstream = MockUpstream::start().await.unwrap();
    let a = start_proxy(replica_config(&upstream, &redis, "outage")).await;
    let b = start_proxy(replica_config(&upstream, &redis, "outage")).await;
    until_up(&a, true).await;
    until_up(&b, true).await;
    let c = client();

    redis.stop();
    // Requests keep succeeding on both while Redis is gone.
    for _ in 0..5 {
        assert_eq!(ask(&a, &upstream, &c).await.0, StatusCode::OK);
        assert_eq!(ask(&b, &upstream, &c).await.0, StatusCode::OK);
    }
    until_up(&a, false).await;
    until_up(&b, false).await;
    // The operator sees it on the status page's data too.
    let state = status_state(&a, &c).await;
    assert_eq!(state["backend"], "redis", "{state}");
    assert_eq!(state["up"], false, "{state}");
    for _ in 0..3 {
        assert_eq!(ask(&a, &upstream, &c).await.0, StatusCode::OK);
        assert_eq!(ask(&b, &upstream, &c).await.0, StatusCode::OK);
    }
    // A takes a quota cooldown on key 1 while Redis is down: B cannot know yet.
    upstream.push_for(KEY_A, quota_reply());
    assert_eq!(ask(&a, &upstream, &c).await, (StatusCode::OK, KEY_B.into()));
    assert_eq!(ask(&b, &upstream, &c).await, (StatusCode::OK, KEY_A.into()));
    let age = b
        .metrics
        .get("tr_state_view_age_seconds", &[("backend", "redis")])
        .unwrap();
    assert!(age > 0.0, "the view ages while Redis is down: {age}");

    // Redis returns (empty: no persistence). A sends what it holds; B reads it.
    redis.restart();
    until_up(&a, true).await;
    until_up(&b, true).await;
    let converged = eventually(Duration::from_secs(5), || {
        b.metrics
            .get("tr_state_view_age_seconds", &[("backend", "redis")])
            .is_some_and(|v| v < 1.5)
    })
    .await;
    assert!(converged, "B's view is fresh again");
    let state = status_state(&b, &c).await;
    assert_eq!(state["up"], true, "{state}");
    assert!(
        state["view_age_secs"].as_f64().is_some_and(|a| a < 1.5),
        "{state}"
    );
    let mut off = false;
    for _ in 0..100 {
        if ask(&b, &upstream, &c).await.1 == KEY_B {
            off = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(off, "B learned A's cooldown after Redis returned");
    for _ in 0..3 {
        assert_eq!(ask(&b, &upstream, &c).await, (StatusCode::OK, KEY_B.into()));
    }
}

/// The `state` object of a replica's `GET /status.json`.
async fn status_state(p: &RunningProxy, c: &HttpClient) -> Value {
    let req = http::Request::get(p.url("/status.json"))
        .body(http_body_util::Full::default())
        .unwrap();
    let (status, _, body) = send_collect(c, req).await;
    assert_eq!(status, StatusCode::OK);
    serde_json::from_slice::<Value>(&body).unwrap()["state"].clone()
}

fn reads(p: &RunningProxy) -> f64 {
    p.metrics
        .get("tr_state_reads_total", &[("backend", "redis")])
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parameter_one_replica_learned_is_dropped_by_the_other() {
    let redis = RedisServer::start();
    let upstream = MockUpstream::start().await.unwrap();
    upstream.set_handler(|req| {
        req.json()?.get("foo_bar")?;
        Some(Reply::json(
            StatusCode::BAD_REQUEST,
            json!({"error": {"message": "Unsupported parameter: 'foo_bar' is not supported with this model.", "type": "invalid_request_error", "param": "foo_bar", "code": "unsupported_parameter"}}),
        ))
    });
    let a = start_proxy(replica_config(&upstream, &redis, "learn")).await;
    let b = start_proxy(replica_config(&upstream, &redis, "learn")).await;
    until_up(&a, true).await;
    until_up(&b, true).await;
    let c = client();
    let req = json!({"model": "m", "input": "hi", "foo_bar": 1, "stream": true});
    let (status, _, _) =
        send_collect(&c, json_req(&a.url("/v1/responses"), None, req.clone())).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        upstream.request_count(),
        2,
        "A met the refusal and retried without it"
    );
    // Once B has read the shared state after A learned, its first attempt goes out clean.
    let seen_reads = reads(&b);
    assert!(eventually(Duration::from_secs(5), || reads(&b) >= seen_reads + 2.0).await);
    let (status, _, _) = send_collect(&c, json_req(&b.url("/v1/responses"), None, req)).await;
    assert_eq!(status, StatusCode::OK);
    let seen = upstream.requests();
    assert_eq!(seen.len(), 3, "B sent one request, never refused");
    assert!(seen[2].json().unwrap().get("foo_bar").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_starts_and_serves_while_redis_is_down_and_joins_when_it_comes() {
    let mut redis = RedisServer::start();
    redis.stop();
    let upstream = MockUpstream::start().await.unwrap();
    let a = start_proxy(replica_config(&upstream, &redis, "late")).await;
    let c = client();
    assert_eq!(ask(&a, &upstream, &c).await, (StatusCode::OK, KEY_A.into()));
    until_up(&a, false).await;
    // A cooldown taken meanwhile reaches Redis once it is there.
    upstream.push_for(KEY_A, quota_reply());
    assert_eq!(ask(&a, &upstream, &c).await, (StatusCode::OK, KEY_B.into()));
    redis.restart();
    until_up(&a, true).await;
    let stored = eventually(Duration::from_secs(5), || {
        redis
            .command(&["GET", "late:cool:key-1"])
            .contains("quota_exhausted")
    })
    .await;
    assert!(
        stored,
        "the cooldown taken while Redis was down was sent when it returned"
    );
}
