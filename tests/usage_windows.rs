//! Usage windows through the running proxy: the mock's replies carry the Codex usage headers
//! (and the `codex.rate_limits` event); afterwards `GET /backend-api/wham/usage` and
//! `/api/codex/usage` give the pooled figures in the payload the Codex CLI parses, and the
//! replies' own `x-codex-*` headers say the same. Then 50 requests over 3 accounts with
//! scripted windows show `headroom`, `soft_limit` and `reserve` at work.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use common::*;
use http::{Request, StatusCode};
use http_body_util::Full;
use serde_json::{Value, json};
use tower_responses::credentials::policy::Reserve;
use tower_responses::credentials::{PoolMember, Strategy};
use tower_responses::proxy::UsageHeaders;
use tower_responses::testing::{MockUpstream, Reply, events};

const KEYS: [&str; 3] = [
    "sk-test-aaaaaaaaaaaaaaaaaaaa-AAAA",
    "sk-test-bbbbbbbbbbbbbbbbbbbb-BBBB",
    "sk-test-cccccccccccccccccccc-CCCC",
];

/// The Codex CLI's own types for the `wham/usage` answer, field for field and type for type,
/// from `openai/codex` `codex-rs/codex-backend-openapi-models/src/models/`
/// (`rate_limit_status_payload.rs`, `rate_limit_status_details.rs`,
/// `rate_limit_window_snapshot.rs`, `credit_status_details.rs`, commit 0396dc5c).
/// `tests/fixtures/codex_wham_usage.json` is a payload of that shape. Every field is kept, read
/// or not: the parse must fail where the CLI's would.
#[allow(dead_code)]
mod codex {
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    pub struct RateLimitStatusPayload {
        pub plan_type: PlanType,
        #[serde(default)]
        pub rate_limit: Option<RateLimitStatusDetails>,
        #[serde(default)]
        pub credits: Option<CreditStatusDetails>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(rename_all = "snake_case")]
    pub enum PlanType {
        Guest,
        Free,
        Go,
        Plus,
        Pro,
        FreeWorkspace,
        Team,
        Business,
        Education,
        Quorum,
        K12,
        Enterprise,
        Edu,
    }

    #[derive(Debug, Deserialize)]
    pub struct RateLimitStatusDetails {
        pub allowed: bool,
        pub limit_reached: bool,
        #[serde(default)]
        pub primary_window: Option<RateLimitWindowSnapshot>,
        #[serde(default)]
        pub secondary_window: Option<RateLimitWindowSnapshot>,
    }

    #[derive(Debug, Deserialize)]
    pub struct RateLimitWindowSnapshot {
        pub used_percent: i32,
        pub limit_window_seconds: i32,
        pub reset_after_seconds: i32,
        pub reset_at: i32,
    }

    #[derive(Debug, Deserialize)]
    pub struct CreditStatusDetails {
        pub has_credits: bool,
        pub unlimited: bool,
        #[serde(default)]
        pub balance: Option<String>,
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A streamed answer whose head carries both Codex windows.
fn with_windows(five: f64, weekly: f64) -> Reply {
    let now = unix_now();
    Reply::text("ok")
        .with_header("x-codex-primary-used-percent", &five.to_string())
        .with_header("x-codex-primary-window-minutes", "300")
        .with_header("x-codex-primary-reset-at", &(now + 3600).to_string())
        .with_header("x-codex-secondary-used-percent", &weekly.to_string())
        .with_header("x-codex-secondary-window-minutes", "10080")
        .with_header("x-codex-secondary-reset-at", &(now + 5 * 86400).to_string())
}

fn body() -> Value {
    json!({"model": "gpt-5.5", "stream": true, "input": [{"role": "user", "content": "hi"}]})
}

fn pool_config(
    mock: &MockUpstream,
    n: usize,
    strategy: Strategy,
) -> tower_responses::proxy::ProxyConfig {
    let mut cfg = config_for(mock.base_url());
    cfg.credentials = KEYS[..n]
        .iter()
        .map(|k| PoolMember::new(k.parse().unwrap()))
        .collect();
    cfg.strategy = strategy;
    cfg
}

async fn get_json(proxy: &RunningProxy, path: &str) -> Value {
    let req = Request::get(proxy.url(path)).body(Full::default()).unwrap();
    let (status, _, bytes) = send_collect(&client(), req).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&bytes)
    );
    serde_json::from_slice(&bytes).unwrap()
}

/// The keys of every object, by path: two payloads of one shape have the same set.
fn shape(v: &Value, at: &str, out: &mut Vec<String>) {
    if let Value::Object(m) = v {
        for (k, v) in m {
            let path = format!("{at}/{k}");
            out.push(path.clone());
            shape(v, &path, out);
        }
    }
}

#[test]
fn the_fixture_is_the_codex_clis_shape() {
    let fixture: Value =
        serde_json::from_str(include_str!("fixtures/codex_wham_usage.json")).unwrap();
    let parsed: codex::RateLimitStatusPayload = serde_json::from_value(fixture).unwrap();
    assert_eq!(parsed.plan_type, codex::PlanType::Pro);
    let rl = parsed.rate_limit.unwrap();
    assert_eq!(rl.primary_window.unwrap().limit_window_seconds, 18000);
    assert!(!parsed.credits.unwrap().has_credits);
}

#[tokio::test]
async fn pooled_usage_says_not_exhausted_while_one_account_of_two_is_at_100() {
    let mock = MockUpstream::start().await.unwrap();
    mock.push_for(KEYS[0], with_windows(20.0, 10.0));
    mock.push_for(KEYS[0], with_windows(20.0, 10.0));
    mock.push_for(KEYS[1], with_windows(100.0, 40.0));
    let proxy = start_proxy(pool_config(&mock, 2, Strategy::RoundRobin)).await;
    let c = client();
    let used =
        |h: &http::HeaderMap, name: &str| -> f64 { h[name].to_str().unwrap().parse().unwrap() };
    let url = proxy.url("/v1/responses");
    let (status, first, _) = send_collect(&c, json_req(&url, None, body())).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(used(&first, "x-codex-primary-used-percent"), 20.0);
    // key-2 says 100 %: its reply tells the client the pool's figure, not its own wall:
    // (20 + 100) / 2 and (10 + 40) / 2.
    let (_, second, _) = send_collect(&c, json_req(&url, None, body())).await;
    assert_eq!(mock.requests()[1].credential.as_deref(), Some(KEYS[1]));
    assert_eq!(used(&second, "x-codex-primary-used-percent"), 60.0);
    assert_eq!(used(&second, "x-codex-secondary-used-percent"), 25.0);
    // key-2 is cooling until its reset: the next request goes to key-1.
    let (status, _, _) = send_collect(&c, json_req(&url, None, body())).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(mock.requests()[2].credential.as_deref(), Some(KEYS[0]));

    for path in ["/backend-api/wham/usage", "/api/codex/usage"] {
        let v = get_json(&proxy, path).await;
        let fixture: Value =
            serde_json::from_str(include_str!("fixtures/codex_wham_usage.json")).unwrap();
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        shape(&v["rate_limit"], "", &mut ours);
        shape(&fixture["rate_limit"], "", &mut theirs);
        assert_eq!(ours, theirs, "{v}");
        let parsed: codex::RateLimitStatusPayload =
            serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("{e}: {v}"));
        let rl = parsed.rate_limit.unwrap();
        assert!(rl.allowed && !rl.limit_reached, "{v}");
        let primary = rl.primary_window.unwrap();
        assert_eq!(primary.used_percent, 60);
        assert_eq!(primary.limit_window_seconds, 300 * 60);
        assert!(primary.reset_after_seconds > 3500 && primary.reset_after_seconds <= 3600);
        let weekly = rl.secondary_window.unwrap();
        assert_eq!(
            (weekly.used_percent, weekly.limit_window_seconds),
            (25, 10080 * 60)
        );
    }

    // With `served`, the headers are the answering account's own.
    let mut cfg = pool_config(&mock, 2, Strategy::FillFirst);
    cfg.usage_headers = UsageHeaders::Served;
    let served = start_proxy(cfg).await;
    mock.push_for(KEYS[0], with_windows(33.0, 10.0));
    let (_, h, _) = send_collect(&c, json_req(&served.url("/v1/responses"), None, body())).await;
    assert_eq!(used(&h, "x-codex-primary-used-percent"), 33.0);
}

#[tokio::test]
async fn every_account_at_100_is_limit_reached() {
    let mock = MockUpstream::start().await.unwrap();
    mock.push_for(KEYS[0], with_windows(100.0, 40.0));
    let proxy = start_proxy(pool_config(&mock, 1, Strategy::FillFirst)).await;
    send_collect(
        &client(),
        json_req(&proxy.url("/v1/responses"), None, body()),
    )
    .await;
    let v = get_json(&proxy, "/backend-api/wham/usage").await;
    let parsed: codex::RateLimitStatusPayload = serde_json::from_value(v.clone()).unwrap();
    let rl = parsed.rate_limit.unwrap();
    assert!(!rl.allowed && rl.limit_reached, "{v}");
    assert_eq!(rl.primary_window.unwrap().used_percent, 100);
}

#[tokio::test]
async fn the_rate_limits_event_updates_the_serving_accounts_windows() {
    let mock = MockUpstream::start().await.unwrap();
    let now = unix_now();
    let mut stream = vec![json!({
        "type": "codex.rate_limits", "plan_type": "team",
        "rate_limits": {"allowed": true, "limit_reached": false,
            "primary": {"used_percent": 7, "window_minutes": 300, "reset_at": now + 1000},
            "secondary": {"used_percent": 29, "window_minutes": 10080, "reset_at": now + 90000}},
    })];
    stream.extend(events::text_answer("hello"));
    mock.push(Reply::sse(stream));
    let proxy = start_proxy(pool_config(&mock, 1, Strategy::FillFirst)).await;
    let (status, _, bytes) = send_collect(
        &client(),
        json_req(&proxy.url("/v1/responses"), None, body()),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(String::from_utf8_lossy(&bytes).contains("hello"));
    let v = get_json(&proxy, "/api/codex/usage").await;
    let parsed: codex::RateLimitStatusPayload = serde_json::from_value(v.clone()).unwrap();
    assert_eq!(parsed.plan_type, codex::PlanType::Team);
    let rl = parsed.rate_limit.unwrap();
    assert_eq!(rl.primary_window.unwrap().used_percent, 7);
    assert_eq!(rl.secondary_window.unwrap().used_percent, 29);
}

/// The pool's view of one account before a request: what its last answer said (nothing
/// before its first).
#[derive(Debug, Clone, Copy)]
struct Seen {
    five: f64,
    weekly: f64,
    known: bool,
}

/// One request: the pool's view before it, and who served it.
type Turn = (Vec<Seen>, usize);

const STEP_FIVE: f64 = 5.0;
const SOFT: f64 = 95.0;
/// key-1 keeps 30 % of its week: out of rotation from 70 % on.
const RESERVED_FROM: f64 = 70.0;

impl Seen {
    /// 0 open, 1 past the soft limit, 2 at its reserve (key-1 only), 3 at the wall.
    fn standing(&self, account: usize) -> u8 {
        if !self.known {
            return 0;
        }
        if self.five >= 100.0 || self.weekly >= 100.0 {
            3
        } else if account == 0 && self.weekly >= RESERVED_FROM {
            2
        } else if self.five >= SOFT || self.weekly >= SOFT {
            1
        } else {
            0
        }
    }

    fn tightest(&self) -> f64 {
        if self.known {
            self.five.max(self.weekly)
        } else {
            0.0
        }
    }
}

#[tokio::test]
async fn fifty_requests_over_three_accounts_follow_headroom_soft_limit_and_reserve() {
    let mock = MockUpstream::start().await.unwrap();
    // key-1 starts at 65 % of its week; each answer adds 5 % to the serving account's
    // 5-hour window and 1 % to its weekly one.
    let state = Arc::new(Mutex::new(vec![
        Seen {
            five: 0.0,
            weekly: 65.0,
            known: false,
        },
        Seen {
            five: 0.0,
            weekly: 0.0,
            known: false,
        },
        Seen {
            five: 0.0,
            weekly: 0.0,
            known: false,
        },
    ]));
    // Each request's view of the pool, and who served it.
    let log: Arc<Mutex<Vec<Turn>>> = Arc::default();
    let (windows, served_log) = (state.clone(), log.clone());
    mock.set_handler(move |req| {
        let key = req.credential.as_deref()?;
        let i = KEYS.iter().position(|k| *k == key)?;
        let mut w = windows.lock().unwrap();
        served_log.lock().unwrap().push((w.clone(), i));
        w[i].five += STEP_FIVE;
        w[i].weekly += 1.0;
        w[i].known = true;
        Some(with_windows(w[i].five, w[i].weekly))
    });
    let mut cfg = pool_config(&mock, 3, Strategy::Headroom);
    cfg.credentials[0].reserve = Some(Reserve {
        weekly: Some(100.0 - RESERVED_FROM),
        five_hour: None,
    });
    cfg.usage_headers = UsageHeaders::Served;
    let proxy = start_proxy(cfg).await;
    let c = client();
    for i in 0..50 {
        let (status, _, body) =
            send_collect(&c, json_req(&proxy.url("/v1/responses"), None, body())).await;
        assert_eq!(
            status,
            StatusCode::OK,
            "request {i}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    let log = log.lock().unwrap().clone();
    assert_eq!(log.len(), 50, "one attempt per request: no account failed");
    for (i, (view, chosen)) in log.iter().enumerate() {
        let best = (0..3).map(|a| view[a].standing(a)).min().unwrap();
        let standing = view[*chosen].standing(*chosen);
        assert!(
            standing < 3,
            "request {i} went to an account at its wall: {view:?}"
        );
        assert_eq!(
            standing, best,
            "request {i}: a better standing was left: {view:?} -> {chosen}"
        );
        let headroom = (0..3)
            .filter(|a| view[*a].standing(*a) == best)
            .map(|a| view[a].tightest())
            .fold(f64::INFINITY, f64::min);
        assert_eq!(
            view[*chosen].tightest(),
            headroom,
            "request {i}: not the most headroom: {view:?} -> {chosen}"
        );
    }
    let served: Vec<usize> = log.iter().map(|(_, c)| *c).collect();
    let count = |a: usize| served.iter().filter(|s| **s == a).count();
    // What that means here: key-2 and key-3 carry the load evenly to their wall (20 answers
    // each: 100 %); key-1 serves until its reserve (5 answers), then as the last resort.
    assert_eq!((count(1), count(2)), (20, 20), "{served:?}");
    assert_eq!(count(0), 10, "{served:?}");
    let end = state.lock().unwrap().clone();
    assert!(
        end[0].weekly > RESERVED_FROM,
        "the reserve served last: {end:?}"
    );
    let last_before_reserve = served.iter().rposition(|s| *s != 0).unwrap();
    assert!(served[last_before_reserve + 1..].iter().all(|s| *s == 0));
}
