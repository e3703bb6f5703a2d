//! The status page, `GET /status`, and its data, `GET /status.json`, from a running proxy
//! after real traffic: every credential with its kind, state and window bars; behind the
//! client key when keys are set; never a secret. A real browser (Debian's headless
//! `chromium`) renders the page: its DOM has every credential row and the bars, and a
//! screenshot is saved as `target/status.png`.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use common::*;
use http::{Request, StatusCode};
use http_body_util::Full;
use serde_json::{Value, json};
use tower_responses::credentials::{PoolMember, Secret};
use tower_responses::testing::{MockUpstream, Reply, events};

const KEYS: [&str; 3] = [
    "sk-test-aaaaaaaaaaaaaaaaaaaa-AAAA",
    "sk-test-bbbbbbbbbbbbbbbbbbbb-BBBB",
    "sk-test-cccccccccccccccccccc-CCCC",
];
const CLIENT_KEY: &str = "client-key-for-the-status-test-XYZ";

fn with_windows(five: u32, weekly: u32) -> Reply {
    turn(five, weekly, 1000)
}

/// A streamed answer whose head carries both windows and whose usage says `input` tokens
/// in, 10 out.
fn turn(five: u32, weekly: u32, input: u64) -> Reply {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let (resp, msg) = events::next_ids();
    Reply::sse(events::answer(&resp, &msg, "ok", events::usage(input, 10)))
        .with_header("x-codex-primary-used-percent", &five.to_string())
        .with_header("x-codex-primary-window-minutes", "300")
        .with_header("x-codex-primary-reset-at", &(now + 3600).to_string())
        .with_header("x-codex-secondary-used-percent", &weekly.to_string())
        .with_header("x-codex-secondary-window-minutes", "10080")
        .with_header("x-codex-secondary-reset-at", &(now + 4 * 86400).to_string())
}

/// A proxy over three named keys, with a client key, after one answer from each: `alice`
/// at 35 % / 12 %, `bob` at 100 % of its 5-hour window (cooling), `carol` at 80 % / 60 %.
async fn proxy_after_traffic(mock: &MockUpstream) -> RunningProxy {
    mock.push_for(KEYS[0], with_windows(35, 12));
    mock.push_for(KEYS[1], with_windows(100, 50));
    mock.push_for(KEYS[2], with_windows(80, 60));
    let mut cfg = config_for(mock.base_url());
    cfg.credentials = KEYS
        .iter()
        .zip(["alice", "bob", "carol"])
        .map(|(k, name)| PoolMember {
            name: Some(name.to_string()),
            ..PoolMember::new(k.parse().unwrap())
        })
        .collect();
    cfg.client_keys = vec![Secret::new(CLIENT_KEY.to_string())];
    let proxy = start_proxy(cfg).await;
    let c = client();
    for _ in 0..3 {
        let body = json!({"model": "gpt-5.5", "stream": true, "input": "hi"});
        let (status, _, _) = send_collect(
            &c,
            json_req(&proxy.url("/v1/responses"), Some(CLIENT_KEY), body),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
    }
    proxy
}

async fn get(
    proxy: &RunningProxy,
    path: &str,
    key: Option<&str>,
    accept: &str,
) -> (StatusCode, String) {
    let mut b = Request::get(proxy.url(path)).header("accept", accept);
    if let Some(k) = key {
        b = b.header("authorization", format!("Bearer {k}"));
    }
    let (status, _, body) = send_collect(&client(), b.body(Full::default()).unwrap()).await;
    (status, String::from_utf8(body.to_vec()).unwrap())
}

fn assert_no_secret(text: &str) {
    for secret in KEYS.iter().chain([&CLIENT_KEY]) {
        assert!(!text.contains(secret), "a secret in: {text}");
    }
    assert!(!text.contains("sk-test"), "part of a key in: {text}");
}

#[tokio::test]
async fn the_page_and_its_json_show_every_credential_and_window() {
    let mock = MockUpstream::start().await.unwrap();
    let proxy = proxy_after_traffic(&mock).await;

    let (status, json) = get(&proxy, "/status.json", Some(CLIENT_KEY), "*/*").await;
    assert_eq!(status, StatusCode::OK, "{json}");
    assert_no_secret(&json);
    let v: Value = serde_json::from_str(&json).unwrap();
    let creds = v["credentials"].as_array().unwrap();
    let labels: Vec<&str> = creds.iter().map(|c| c["label"].as_str().unwrap()).collect();
    assert_eq!(labels, ["alice", "bob", "carol"]);
    let used = |c: &Value, w: &str| {
        c["windows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["window"] == w)
            .and_then(|x| x["used_percent"].as_f64())
    };
    assert_eq!(used(&creds[0], "five_hour"), Some(35.0));
    assert_eq!(used(&creds[0], "weekly"), Some(12.0));
    assert_eq!(creds[0]["state"], "ready");
    assert_eq!(creds[0]["kind"], "key");
    assert_eq!(creds[1]["state"], "cooling", "bob is at 100 %: {v}");
    assert_eq!(creds[1]["class"], "quota_exhausted");
    assert_eq!(creds[2]["standing"], "open");
    assert_eq!(creds[0]["requests_today"], 1);
    assert_eq!(creds[0]["tokens_today"], 1010, "1000 in, 10 out: {v}");
    // The pool: (35 + 100 + 80) / 3 of the 5-hour window.
    let pool_five = v["pool"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["window"] == "five_hour")
        .unwrap();
    assert!(
        (pool_five["used_percent"].as_f64().unwrap() - 215.0 / 3.0).abs() < 0.01,
        "{v}"
    );
    assert_eq!(pool_five["exhausted"], false);

    let (status, page) = get(&proxy, "/status", Some(CLIENT_KEY), "text/html").await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.starts_with("<!doctype html>"), "{page}");
    assert_no_secret(&page);
    for label in ["alice", "bob", "carol"] {
        assert!(
            page.contains(&format!("data-label=\"{label}\"")),
            "{label}: {page}"
        );
    }
    assert!(page.contains("cooling: quota_exhausted until"), "{page}");
    assert!(page.contains("aria-valuenow=\"35\""), "{page}");
    // Offline: no script, no stylesheet or image fetched from anywhere.
    for fetches in ["<script", "<link", "src=", "url("] {
        assert!(!page.contains(fetches), "{fetches}: {page}");
    }

    // A JSON-only client still gets JSON from /status (the status command of 0.x).
    let (_, old) = get(&proxy, "/status", Some(CLIENT_KEY), "application/json").await;
    assert!(serde_json::from_str::<Value>(&old).is_ok(), "{old}");
}

#[tokio::test]
async fn the_page_refuses_a_request_without_the_client_key() {
    let mock = MockUpstream::start().await.unwrap();
    let proxy = proxy_after_traffic(&mock).await;
    for path in [
        "/status",
        "/status.json",
        "/backend-api/wham/usage",
        "/api/codex/usage",
    ] {
        let (status, body) = get(&proxy, path, None, "text/html").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}: {body}");
        assert_envelope(body.as_bytes());
        assert!(!body.contains("alice"), "{path}: {body}");
        let (status, _) = get(&proxy, path, Some("wrong-key"), "text/html").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}");
    }
}

fn chromium() -> Option<PathBuf> {
    ["chromium", "chromium-browser"].iter().find_map(|name| {
        let out = Command::new("sh")
            .args(["-c", &format!("command -v {name}")])
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
    })
}

/// Runs headless chromium on `url` with `extra` flags, within a bounded time.
fn run_chromium(bin: &PathBuf, url: &str, extra: &[&str]) -> std::process::Output {
    let profile = tempfile_dir();
    let mut cmd = Command::new("timeout");
    cmd.arg("120").arg(bin).args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--hide-scrollbars",
    ]);
    cmd.arg(format!("--user-data-dir={}", profile.display()));
    cmd.args(extra).arg(url);
    let out = cmd.output().expect("chromium runs");
    std::fs::remove_dir_all(&profile).ok();
    out
}

fn tempfile_dir() -> PathBuf {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let dir = std::env::temp_dir().join(format!("tr-chromium-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The browser sends no `Authorization`; the page is checked on a proxy without client keys
/// (loopback only), where it needs none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_browser_renders_the_page() {
    let Some(bin) = chromium() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set but chromium is missing: .ci/run installs it (apt-get install -y chromium)"
        );
        eprintln!(
            "SKIPPED a_real_browser_renders_the_page: no chromium on PATH (apt-get install -y chromium)"
        );
        return;
    };
    let mock = MockUpstream::start().await.unwrap();
    mock.push_for(KEYS[0], with_windows(35, 12));
    mock.push_for(KEYS[1], with_windows(100, 50));
    let mut cfg = config_for(mock.base_url());
    cfg.credentials = KEYS[..2]
        .iter()
        .zip(["alice", "bob"])
        .map(|(k, name)| PoolMember {
            name: Some(name.to_string()),
            ..PoolMember::new(k.parse().unwrap())
        })
        .collect();
    let proxy = start_proxy(cfg).await;
    let c = client();
    for _ in 0..2 {
        let body = json!({"model": "gpt-5.5", "stream": true, "input": "hi"});
        send_collect(&c, json_req(&proxy.url("/v1/responses"), None, body)).await;
    }
    // A session whose context blows up: its input climbs turn after turn (on alice).
    for (i, input) in [2_000, 9_000, 30_000, 80_000, 150_000]
        .into_iter()
        .enumerate()
    {
        mock.push_for(KEYS[0], turn(36 + i as u32, 12, input));
        let body = json!({"model": "gpt-5.5", "stream": true, "input": "hi",
                          "prompt_cache_key": "session-blowup"});
        let (status, _, _) =
            send_collect(&c, json_req(&proxy.url("/v1/responses"), None, body)).await;
        assert_eq!(status, StatusCode::OK);
    }
    let url = proxy.url("/status");
    let dom = {
        let (bin, url) = (bin.clone(), url.clone());
        tokio::task::spawn_blocking(move || run_chromium(&bin, &url, &["--dump-dom"]))
            .await
            .unwrap()
    };
    let html = String::from_utf8_lossy(&dom.stdout).to_string();
    assert!(
        dom.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&dom.stderr)
    );
    for label in ["alice", "bob"] {
        assert!(
            html.contains(&format!("<tr class=\"credential\" data-label=\"{label}\">")),
            "{label}: {html}"
        );
    }
    assert_eq!(
        html.matches("role=\"meter\"").count(),
        2 * 2 + 2,
        "two bars per credential and two for the pool: {html}"
    );
    assert!(html.contains("cooling: quota_exhausted"), "{html}");
    assert!(
        html.contains("<td>session-blowup</td><td>5</td><td>150000</td>"),
        "{html}"
    );
    assert!(html.contains("<polyline"), "the per-turn chart: {html}");
    assert_no_secret(&html);

    let target = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target");
    std::fs::create_dir_all(&target).unwrap();
    let png = target.join("status.png");
    std::fs::remove_file(&png).ok();
    let shot = {
        let arg = format!("--screenshot={}", png.display());
        tokio::task::spawn_blocking(move || {
            run_chromium(&bin, &url, &[&arg, "--window-size=1200,700"])
        })
        .await
        .unwrap()
    };
    assert!(
        shot.status.success(),
        "{}",
        String::from_utf8_lossy(&shot.stderr)
    );
    let bytes = std::fs::read(&png).expect("the screenshot is written");
    assert!(bytes.starts_with(b"\x89PNG"), "a PNG");
    assert!(
        bytes.len() > 5_000,
        "a page, not a blank: {} bytes",
        bytes.len()
    );
}
