//! No secret (client key, credential, account id) appears in any log line at any level.
//! Runs in its own test binary so the global subscriber captures every thread at TRACE.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::Full;
use serde_json::json;
use tower_responses::credentials::Secret;
use tower_responses::testing::{Fault, MockUpstream, Reply};

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_reach_the_logs_at_trace() {
    let capture = Capture::default();
    let writer = capture.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .init();

    const CLIENT_KEY: &str = "ck-SECRET-client-7f3a9";
    const UPSTREAM_KEY: &str = "sk-SECRET-upstream-91c2";
    const OAUTH: &str = "oauth-SECRET-token-55aa";
    const ACCOUNT: &str = "acct-SECRET-id-0b1d";
    let dir = std::env::temp_dir().join(format!("tr-logs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let auth = dir.join("auth.json");
    std::fs::write(
        &auth,
        json!({"tokens": {"access_token": OAUTH, "account_id": ACCOUNT}}).to_string(),
    )
    .unwrap();

    let mock = MockUpstream::start().await.unwrap();
    mock.push(Reply::fault(Fault::CloseAfterRead));
    let mut cfg = config_for(mock.base_url());
    cfg.client_keys = vec![Secret::new(CLIENT_KEY)];
    cfg.credentials = vec![
        UPSTREAM_KEY.parse().unwrap(),
        format!("codex-auth:{}", auth.display()).parse().unwrap(),
    ];
    let proxy = start_proxy(cfg).await;
    let c = client();
    let body = json!({"model": "m", "stream": true, "input": "hi"});
    // Success, upstream failure, a wrong key that contains the real one, and a bad body.
    for _ in 0..3 {
        send_collect(
            &c,
            json_req(&proxy.url("/v1/responses"), Some(CLIENT_KEY), body.clone()),
        )
        .await;
    }
    send_collect(
        &c,
        json_req(
            &proxy.url("/v1/responses"),
            Some(&format!("{CLIENT_KEY}x")),
            body.clone(),
        ),
    )
    .await;
    let bad = Request::post(proxy.url("/v1/responses"))
        .header("authorization", format!("Bearer {CLIENT_KEY}"))
        .header("chatgpt-account-id", ACCOUNT)
        .body(Full::new(Bytes::from_static(b"{not json")))
        .unwrap();
    send_collect(&c, bad).await;
    assert!(mock.request_count() >= 3);

    let logs = String::from_utf8_lossy(&capture.0.lock().unwrap()).into_owned();
    assert!(
        logs.len() > 1000,
        "the capture saw the traffic: {} bytes",
        logs.len()
    );
    assert!(logs.contains("TRACE") || logs.contains("DEBUG"));
    for secret in [CLIENT_KEY, UPSTREAM_KEY, OAUTH, ACCOUNT] {
        assert!(!logs.contains(secret), "{secret} leaked into the logs");
        // Not even the tail that once made a credential's label.
        let tail = &secret[secret.len() - 6..];
        assert!(!logs.contains(tail), "{tail} (of {secret}) in the logs");
    }
    // Credentials are named by kind and position.
    assert!(
        logs.contains("key-1"),
        "the first credential's label is logged"
    );
    assert!(!logs.contains("key-…"));
    std::fs::remove_dir_all(&dir).ok();
}
