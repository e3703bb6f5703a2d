//! Owned logins (`codex-oauth:NAME`) and borrowed ones (`codex-auth:PATH`), through real HTTP:
//! the proxy, the mock upstream and the mock authority on loopback, the `login` command
//! driven like a person. One global subscriber captures every log line at TRACE, so each
//! test also checks that no token of its own reached the log.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use serde_json::json;
use tower_responses::credentials::oauth::{LoginStore, parse_login, unsigned_jwt};
use tower_responses::proxy::ProxyConfig;
use tower_responses::proxy::login::{self, LoginArgs};
use tower_responses::testing::{IssuedLogin, MockAuthority, MockUpstream, TokenFault};

const DAY: Duration = Duration::from_secs(24 * 3600);

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

impl Capture {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// The log of the whole test binary, at TRACE.
fn log() -> &'static Capture {
    static LOG: OnceLock<Capture> = OnceLock::new();
    LOG.get_or_init(|| {
        let capture = Capture::default();
        let writer = capture.clone();
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .init();
        capture
    })
}

/// Asserts that no token of `logins` appears in the log.
fn assert_no_tokens_logged(logins: &[&IssuedLogin]) {
    let text = log().text();
    for l in logins {
        for (what, t) in [
            ("access token", &l.access_token),
            ("refresh token", &l.refresh_token),
            ("id token", &l.id_token),
        ] {
            assert!(!text.contains(t.as_str()), "a {what} reached the log");
        }
    }
}

fn state_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tr-owned-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Stores `issued` as login `name` (what `login --import` does).
fn store(dir: &Path, name: &str, issued: &IssuedLogin) {
    let login = parse_login(issued.auth_json().as_bytes()).unwrap();
    LoginStore::new(dir).write(name, &login).unwrap();
}

fn stored_refresh_token(dir: &Path, name: &str) -> String {
    LoginStore::new(dir)
        .read(name)
        .unwrap()
        .tokens
        .refresh_token
        .expose()
        .to_string()
}

fn config(
    upstream: &MockUpstream,
    auth: &MockAuthority,
    dir: &Path,
    creds: &[String],
) -> ProxyConfig {
    let mut cfg = config_for(upstream.base_url());
    cfg.credentials = creds.iter().map(|c| c.parse().unwrap()).collect();
    cfg.strategy = tower_responses::credentials::Strategy::FillFirst;
    cfg.state_dir = Some(dir.to_path_buf());
    cfg.auth_base_url = Some(auth.base_url());
    cfg.auth_timeout_secs = 1;
    cfg
}

async fn ask(proxy: &RunningProxy, c: &HttpClient) -> http::StatusCode {
    let body = json!({"model": "gpt-5", "stream": true, "input": "hi"});
    send_collect(c, json_req(&proxy.url("/v1/responses"), None, body))
        .await
        .0
}

/// Waits, boundedly, until `cond` holds; `false` if it never did.
async fn eventually(mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

fn action_required(proxy: &RunningProxy, credential: &str, reason: &str) -> bool {
    proxy.metrics.get(
        "tr_credential_action_required",
        &[("credential", credential), ("reason", reason)],
    ) == Some(1.0)
}

fn refreshes(proxy: &RunningProxy, credential: &str, outcome: &str) -> f64 {
    proxy
        .metrics
        .get(
            "tr_credential_refresh_total",
            &[("credential", credential), ("outcome", outcome)],
        )
        .unwrap_or(0.0)
}

fn upstream_saw(upstream: &MockUpstream, token: &str) -> usize {
    upstream
        .requests()
        .iter()
        .filter(|r| r.credential.as_deref() == Some(token))
        .count()
}

/// A writer a test can read while `login` writes to it.
#[derive(Clone, Default)]
struct Terminal(Arc<Mutex<Vec<u8>>>);

impl Write for Terminal {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Terminal {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_device_flow_signs_in_like_a_person_and_the_login_serves() {
    log();
    let auth = MockAuthority::start().await.unwrap();
    let upstream = MockUpstream::start().await.unwrap();
    let dir = state_dir("device");
    let terminal = Terminal::default();
    let mut screen = terminal.clone();
    let args = LoginArgs::new("alice", &dir, &auth.base_url());
    let running = tokio::spawn(async move { login::run_with(args, &mut screen).await });

    // The person reads the code off the screen and approves it in the browser.
    let mut code = None;
    assert!(
        eventually(|| {
            code = terminal
                .text()
                .lines()
                .find(|l| l.starts_with("    ") && !l.trim().is_empty())
                .map(|l| l.trim().to_string());
            code.is_some()
        })
        .await,
        "no code printed: {}",
        terminal.text()
    );
    let text = terminal.text();
    assert!(
        text.contains(&format!("{}/codex/device", auth.base_url())),
        "{text}"
    );
    assert!(auth.approve(code.as_deref().unwrap(), "acct-alice"));
    assert_eq!(running.await.unwrap(), std::process::ExitCode::SUCCESS);

    let text = terminal.text();
    assert!(
        text.contains("login alice: account acct-alice, plan pro"),
        "{text}"
    );
    assert!(text.contains("access token expires 20"), "{text}");
    assert!(text.contains("--credential codex-oauth:alice"), "{text}");
    let path = dir.join("alice.json");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the login file is private");
    }
    let saved = LoginStore::new(&dir).read("alice").unwrap();
    assert!(auth.is_live(saved.tokens.refresh_token.expose()));

    // The saved account serves requests with its token and account id.
    let proxy = start_proxy(config(
        &upstream,
        &auth,
        &dir,
        &["codex-oauth:alice".into()],
    ))
    .await;
    assert_eq!(ask(&proxy, &client()).await, http::StatusCode::OK);
    let seen = upstream.requests();
    assert_eq!(
        seen[0].credential.as_deref(),
        Some(saved.tokens.access_token.expose())
    );
    assert_eq!(seen[0].account_id.as_deref(), Some("acct-alice"));
    assert!(!log().text().contains(saved.tokens.refresh_token.expose()));
    assert!(!log().text().contains(saved.tokens.access_token.expose()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_takes_over_an_auth_json_and_says_not_to_use_it_again() {
    log();
    let auth = MockAuthority::start().await.unwrap();
    let dir = state_dir("import");
    let issued = auth.issue("acct-imp", 10 * DAY);
    let source = dir.join("codex-auth.json");
    std::fs::write(&source, issued.auth_json()).unwrap();
    let mut args = LoginArgs::new("imp", dir.join("state"), &auth.base_url());
    args.import = Some(source.clone());
    let mut screen = Terminal::default();
    assert_eq!(
        login::run_with(args, &mut screen.clone()).await,
        std::process::ExitCode::SUCCESS
    );
    let text = screen.text();
    assert!(text.contains("login imp: account acct-imp"), "{text}");
    assert!(
        text.contains(&format!("Do not use {} again", source.display())),
        "{text}"
    );
    assert_eq!(
        stored_refresh_token(&dir.join("state"), "imp"),
        issued.refresh_token
    );
    assert_eq!(auth.token_calls(), 0, "an import redeems nothing");
    let _ = screen.flush();
    assert_no_tokens_logged(&[&issued]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_requests_due_for_refresh_make_one_token_call() {
    log();
    let auth = MockAuthority::start().await.unwrap();
    let upstream = MockUpstream::start().await.unwrap();
    let dir = state_dir("hundred");
    // Due: the token expires in 5 minutes, inside the 10-minute lead.
    let old = auth.issue_expiring(
        "acct-h",
        SystemTime::now() + Duration::from_secs(300),
        10 * DAY,
    );
    store(&dir, "h", &old);
    let proxy = start_proxy(config(&upstream, &auth, &dir, &["codex-oauth:h".into()])).await;
    let c = client();
    let answers = futures_join_all((0..100).map(|_| {
        let c = c.clone();
        let url = proxy.url("/v1/responses");
        async move {
            let body = json!({"model": "gpt-5", "stream": true, "input": "hi"});
            send_collect(&c, json_req(&url, None, body)).await.0
        }
    }))
    .await;
    assert!(
        answers.iter().all(|s| *s == http::StatusCode::OK),
        "{answers:?}"
    );
    assert!(eventually(|| refreshes(&proxy, "codex-oauth-1", "ok") == 1.0).await);
    assert_eq!(
        auth.token_calls(),
        1,
        "one token call for a hundred requests"
    );
    // The stored pair is the new one: live at the authority, the old one spent.
    let stored = LoginStore::new(&dir).read("h").unwrap();
    assert_ne!(stored.tokens.refresh_token.expose(), old.refresh_token);
    assert!(auth.is_live(stored.tokens.refresh_token.expose()));
    assert!(!auth.is_live(&old.refresh_token));
    assert_eq!(stored.state.refresh_sent_at, None);
    // Later requests carry the new access token, and the expiry metric moved ahead.
    assert_eq!(ask(&proxy, &c).await, http::StatusCode::OK);
    assert_eq!(
        upstream.requests().last().unwrap().credential.as_deref(),
        Some(stored.tokens.access_token.expose())
    );
    let exp = proxy
        .metrics
        .get(
            "tr_credential_token_expires_seconds",
            &[("credential", "codex-oauth-1")],
        )
        .unwrap();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(exp > now + 9.0 * 86_400.0, "{exp} {now}");
    assert_eq!(auth.token_calls(), 1);
    let new = IssuedLogin {
        access_token: stored.tokens.access_token.expose().into(),
        refresh_token: stored.tokens.refresh_token.expose().into(),
        id_token: stored.tokens.id_token.unwrap().expose().into(),
        ..old.clone()
    };
    assert_no_tokens_logged(&[&old, &new]);
}

async fn futures_join_all<F: std::future::Future + Send + 'static>(
    futures: impl Iterator<Item = F>,
) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let tasks: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reuse_takes_the_login_out_and_the_others_keep_serving() {
    log();
    let auth = MockAuthority::start().await.unwrap();
    let upstream = MockUpstream::start().await.unwrap();
    let dir = state_dir("reuse");
    let bob = auth.issue_expiring(
        "acct-bob",
        SystemTime::now() + Duration::from_secs(300),
        10 * DAY,
    );
    store(&dir, "bob", &bob);
    auth.fail_next(TokenFault::Refuse(
        http::StatusCode::UNAUTHORIZED,
        "refresh_token_reused",
    ));
    let creds = [
        "codex-oauth:bob".to_string(),
        "sk-other-key-0000".to_string(),
    ];
    let proxy = start_proxy(config(&upstream, &auth, &dir, &creds)).await;
    let c = client();
    assert_eq!(ask(&proxy, &c).await, http::StatusCode::OK);
    assert!(
        eventually(|| action_required(&proxy, "codex-oauth-1", "reauth_required")).await,
        "{}",
        proxy.metrics.render()
    );
    assert_eq!(refreshes(&proxy, "codex-oauth-1", "permanent"), 1.0);
    let bob_before = upstream_saw(&upstream, &bob.access_token);
    for _ in 0..5 {
        assert_eq!(ask(&proxy, &c).await, http::StatusCode::OK);
    }
    // Its access token is not used either; the other credential serves; no second call.
    assert_eq!(upstream_saw(&upstream, &bob.access_token), bob_before);
    assert_eq!(upstream_saw(&upstream, "sk-other-key-0000"), 5);
    assert_eq!(auth.token_calls(), 1);
    let stored = LoginStore::new(&dir).read("bob").unwrap();
    assert_eq!(
        stored.state.reauth_required.as_deref(),
        Some("refresh_token_reused")
    );
    assert!(
        log().text().contains("`login bob`"),
        "the log names the command"
    );
    assert!(proxy.metrics.render().contains("reauth_required"));

    // `login bob` again (here: an import of a new login) brings it back in the running proxy.
    let again = auth.issue("acct-bob", 10 * DAY);
    let source = dir.join("fresh-auth.json");
    std::fs::write(&source, again.auth_json()).unwrap();
    let mut args = LoginArgs::new("bob", &dir, &auth.base_url());
    args.import = Some(source);
    let mut screen = Terminal::default();
    assert_eq!(
        login::run_with(args, &mut screen).await,
        std::process::ExitCode::SUCCESS
    );
    let mut back = false;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !back && Instant::now() < deadline {
        assert_eq!(ask(&proxy, &c).await, http::StatusCode::OK);
        back = upstream_saw(&upstream, &again.access_token) > 0;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(back, "the new login serves");
    assert!(!action_required(&proxy, "codex-oauth-1", "reauth_required"));
    assert_no_tokens_logged(&[&bob, &again]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_makes_requests_wait_for_the_refresh() {
    log();
    let auth = MockAuthority::start().await.unwrap();
    let upstream = MockUpstream::start().await.unwrap();
    let dir = state_dir("expired");
    // Expired while the proxy was down.
    let gus = auth.issue_expiring(
        "acct-gus",
        SystemTime::now() - Duration::from_secs(60),
        10 * DAY,
    );
    store(&dir, "gus", &gus);
    let proxy = start_proxy(config(&upstream, &auth, &dir, &["codex-oauth:gus".into()])).await;
    let c = client();
    // The only credential: the request waits (bounded) for the refresh instead of failing,
    // and never goes out with the expired token.
    assert_eq!(ask(&proxy, &c).await, http::StatusCode::OK);
    assert_eq!(upstream_saw(&upstream, &gus.access_token), 0);
    let new = LoginStore::new(&dir).read("gus").unwrap();
    assert_eq!(
        upstream.requests().last().unwrap().credential.as_deref(),
        Some(new.tokens.access_token.expose())
    );
    assert_eq!(auth.token_calls(), 1);
    assert_no_tokens_logged(&[&gus]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_most_two_refreshes_run_at_once_across_the_pool() {
    log();
    let auth = MockAuthority::start().await.unwrap();
    let upstream = MockUpstream::start().await.unwrap();
    let dir = state_dir("two");
    let mut creds = Vec::new();
    for i in 0..4 {
        let l = auth.issue_expiring(
            &format!("acct-two-{i}"),
            SystemTime::now() + Duration::from_secs(300),
            10 * DAY,
        );
        store(&dir, &format!("two{i}"), &l);
        creds.push(format!("codex-oauth:two{i}"));
        auth.fail_next(TokenFault::Delay(Duration::from_millis(200)));
    }
    let proxy = start_proxy(config(&upstream, &auth, &dir, &creds)).await;
    let c = client();
    // One pick looks at every member: all four are due at once.
    assert_eq!(ask(&proxy, &c).await, http::StatusCode::OK);
    assert!(
        eventually(|| (1..=4).all(|i| refreshes(&proxy, &format!("codex-oauth-{i}"), "ok") == 1.0))
            .await,
        "{}",
        proxy.metrics.render()
    );
    assert_eq!(auth.token_calls(), 4);
    assert_eq!(auth.most_concurrent_token_calls(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_never_answered_is_never_retried_with_the_same_token() {
    log();
    let auth = MockAuthority::start().await.unwrap();
    let upstream = MockUpstream::start().await.unwrap();
    let dir = state_dir("stall");
    let carol = auth.issue_expiring(
        "acct-carol",
        SystemTime::now() + Duration::from_secs(300),
        10 * DAY,
    );
    store(&dir, "carol", &carol);
    auth.fail_next(TokenFault::StallAfterReading);
    let creds = [
        "codex-oauth:carol".to_string(),
        "sk-other-key-1111".to_string(),
    ];
    let proxy = start_proxy(config(&upstream, &auth, &dir, &creds)).await;
    let c = client();
    assert_eq!(ask(&proxy, &c).await, http::StatusCode::OK);
    assert!(eventually(|| refreshes(&proxy, "codex-oauth-1", "unanswered") == 1.0).await);
    assert!(action_required(&proxy, "codex-oauth-1", "reauth_required"));
    for _ in 0..5 {
        assert_eq!(ask(&proxy, &c).await, http::StatusCode::OK);
    }
    drop(proxy);
    // Nor after a restart on the same directory.
    let proxy = start_proxy(config(&upstream, &auth, &dir, &creds)).await;
    for _ in 0..3 {
        assert_eq!(ask(&proxy, &c).await, http::StatusCode::OK);
    }
    assert!(action_required(&proxy, "codex-oauth-1", "reauth_required"));
    let with_carols = auth
        .calls()
        .iter()
        .filter(|c| c.refresh_token.as_deref() == Some(carol.refresh_token.as_str()))
        .count();
    assert_eq!(with_carols, 1, "the refresh token was sent once");
    assert_eq!(auth.token_calls(), 1);
    assert_no_tokens_logged(&[&carol]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_write_after_the_refresh_leaves_a_whole_pair_and_says_so_on_restart() {
    log();
    let auth = MockAuthority::start().await.unwrap();
    let upstream = MockUpstream::start().await.unwrap();
    let dir = state_dir("crash");
    let dave = auth.issue_expiring(
        "acct-dave",
        SystemTime::now() + Duration::from_secs(300),
        10 * DAY,
    );
    store(&dir, "dave", &dave);
    // Between the authority's rotation and the proxy's write, the write stops working: the
    // temporary file's path is taken by a directory.
    let blocker = dir.join(".dave.json.tmp").join("blocker");
    let block = blocker.clone();
    auth.on_token_call(move |_| std::fs::create_dir_all(&block).unwrap());
    let creds = ["codex-oauth:dave".to_string()];
    let proxy = start_proxy(config(&upstream, &auth, &dir, &creds)).await;
    let c = client();
    assert_eq!(ask(&proxy, &c).await, http::StatusCode::OK);
    assert!(eventually(|| refreshes(&proxy, "codex-oauth-1", "store_failed") == 1.0).await);
    // The running proxy serves with the new pair from memory.
    assert_eq!(ask(&proxy, &c).await, http::StatusCode::OK);
    let served = upstream
        .requests()
        .last()
        .unwrap()
        .credential
        .clone()
        .unwrap();
    assert_ne!(
        served, dave.access_token,
        "the new access token, from memory"
    );
    drop(proxy);

    // The stored file is the old pair, whole, marked as sent.
    std::fs::remove_dir_all(dir.join(".dave.json.tmp")).unwrap();
    let stored = LoginStore::new(&dir).read("dave").unwrap();
    assert_eq!(stored.tokens.refresh_token.expose(), dave.refresh_token);
    assert_eq!(stored.tokens.access_token.expose(), dave.access_token);
    assert!(stored.state.refresh_sent_at.is_some());

    // A restart says what happened and never redeems the spent token.
    let proxy = start_proxy(config(&upstream, &auth, &dir, &creds)).await;
    let text = log().text();
    assert!(
        text.lines()
            .any(|l| l.contains("login=\"dave\"") || l.contains("login=dave"))
            && text.contains("its answer was never stored"),
        "the restart's log says what happened"
    );
    assert!(text.contains("run `login dave`"));
    let _ = ask(&proxy, &c).await;
    assert!(action_required(&proxy, "codex-oauth-1", "reauth_required"));
    assert_eq!(auth.token_calls(), 1);
    assert_no_tokens_logged(&[&dave]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_401_refreshes_an_owned_login_once_and_it_serves_again() {
    log();
    let auth = MockAuthority::start().await.unwrap();
    let upstream = MockUpstream::start().await.unwrap();
    let dir = state_dir("401");
    let erin = auth.issue("acct-erin", 10 * DAY);
    store(&dir, "erin", &erin);
    let revoked = erin.access_token.clone();
    upstream.set_handler(move |r| {
        (r.credential.as_deref() == Some(revoked.as_str())).then(|| {
            tower_responses::testing::Reply::json(
                http::StatusCode::UNAUTHORIZED,
                json!({"error": {"message": "token revoked", "type": "invalid_request_error", "code": "token_invalidated"}}),
            )
        })
    });
    let creds = [
        "codex-oauth:erin".to_string(),
        "sk-other-key-2222".to_string(),
    ];
    let proxy = start_proxy(config(&upstream, &auth, &dir, &creds)).await;
    let c = client();
    // The 401 goes elsewhere at once, and the login is refreshed beside.
    assert_eq!(ask(&proxy, &c).await, http::StatusCode::OK);
    assert!(eventually(|| refreshes(&proxy, "codex-oauth-1", "ok") == 1.0).await);
    assert!(
        eventually(|| {
            proxy
                .metrics
                .get("tr_credential_healthy", &[("credential", "codex-oauth-1")])
                == Some(1.0)
        })
        .await
    );
    assert_eq!(ask(&proxy, &c).await, http::StatusCode::OK);
    let new = LoginStore::new(&dir).read("erin").unwrap();
    assert_eq!(
        upstream.requests().last().unwrap().credential.as_deref(),
        Some(new.tokens.access_token.expose()),
        "back on the refreshed login"
    );
    assert_eq!(auth.token_calls(), 1);
    assert_no_tokens_logged(&[&erin]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_that_does_not_extend_the_expiry_stops_the_refreshing() {
    log();
    let auth = MockAuthority::start().await.unwrap();
    let upstream = MockUpstream::start().await.unwrap();
    let dir = state_dir("aas");
    let fay = auth.issue_expiring(
        "acct-fay",
        SystemTime::now() + Duration::from_secs(300),
        10 * DAY,
    );
    store(&dir, "fay", &fay);
    auth.set_non_advancing_exp(true);
    let proxy = start_proxy(config(&upstream, &auth, &dir, &["codex-oauth:fay".into()])).await;
    let c = client();
    assert_eq!(ask(&proxy, &c).await, http::StatusCode::OK);
    assert!(eventually(|| refreshes(&proxy, "codex-oauth-1", "not_extended") == 1.0).await);
    for _ in 0..20 {
        assert_eq!(ask(&proxy, &c).await, http::StatusCode::OK);
    }
    assert_eq!(auth.token_calls(), 1, "no refresh loop");
    assert!(
        LoginStore::new(&dir)
            .read("fay")
            .unwrap()
            .state
            .not_extending
    );
    assert!(log().text().contains("did not extend"));
}

/// A Codex `auth.json` whose access token expires at `exp`.
fn borrowed_file(token_tag: &str, exp: SystemTime) -> (String, String) {
    let secs = exp.duration_since(UNIX_EPOCH).unwrap().as_secs();
    let token = unsigned_jwt(&json!({"exp": secs, "tag": token_tag}));
    let file = json!({
        "OPENAI_API_KEY": null,
        "tokens": {"access_token": token, "refresh_token": format!("rt-{token_tag}"), "account_id": "acct-borrowed"},
    })
    .to_string();
    (token, file)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_borrowed_file_near_expiry_leaves_rotation_and_is_back_when_it_changes() {
    log();
    let auth = MockAuthority::start().await.unwrap();
    let upstream = MockUpstream::start().await.unwrap();
    let dir = state_dir("borrowed");
    let path = dir.join("auth.json");
    let (old_token, old_file) = borrowed_file("old", SystemTime::now() + Duration::from_secs(120));
    std::fs::write(&path, &old_file).unwrap();
    let creds = [
        format!("codex-auth:{}", path.display()),
        "sk-other-key-3333".to_string(),
    ];
    let proxy = start_proxy(config(&upstream, &auth, &dir, &creds)).await;
    let c = client();
    for _ in 0..3 {
        assert_eq!(ask(&proxy, &c).await, http::StatusCode::OK);
    }
    assert_eq!(
        upstream_saw(&upstream, &old_token),
        0,
        "out 5 minutes before expiry"
    );
    assert!(action_required(
        &proxy,
        "codex-auth-1",
        "owner_refresh_needed"
    ));
    assert!(log().text().contains("owner_refresh_needed"));
    assert!(
        log().text().contains("login --import"),
        "the log says what to do"
    );

    // Its owner (the Codex CLI) refreshes the file: it is back as soon as the proxy sees it.
    let (new_token, new_file) = borrowed_file("new", SystemTime::now() + 10 * DAY);
    std::fs::write(&path, &new_file).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(SystemTime::now() + Duration::from_secs(5))
        .unwrap();
    let mut served = false;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !served && Instant::now() < deadline {
        assert_eq!(ask(&proxy, &c).await, http::StatusCode::OK);
        served = upstream_saw(&upstream, &new_token) > 0;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(served, "back in rotation after the file changed");
    assert!(!action_required(
        &proxy,
        "codex-auth-1",
        "owner_refresh_needed"
    ));
    // Borrowed stays borrowed: never refreshed, never written, nothing created beside it.
    assert_eq!(auth.token_calls(), 0);
    assert_eq!(std::fs::read_to_string(&path).unwrap(), new_file);
    let beside: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(beside, vec![std::ffi::OsString::from("auth.json")]);
    let text = log().text();
    assert!(!text.contains(&old_token) && !text.contains(&new_token));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transient_refusal_backs_off_and_keeps_the_refresh_token_usable() {
    log();
    let auth = MockAuthority::start().await.unwrap();
    let upstream = MockUpstream::start().await.unwrap();
    let dir = state_dir("transient");
    let hal = auth.issue_expiring(
        "acct-hal",
        SystemTime::now() + Duration::from_secs(300),
        10 * DAY,
    );
    store(&dir, "hal", &hal);
    auth.fail_next(TokenFault::Refuse(
        http::StatusCode::BAD_GATEWAY,
        "server_error",
    ));
    let creds = ["codex-oauth:hal".to_string()];
    let proxy = start_proxy(config(&upstream, &auth, &dir, &creds)).await;
    let c = client();
    assert_eq!(ask(&proxy, &c).await, http::StatusCode::OK);
    assert!(eventually(|| refreshes(&proxy, "codex-oauth-1", "transient") == 1.0).await);
    // Backing off: no second call now, and the still-valid token keeps serving.
    for _ in 0..5 {
        assert_eq!(ask(&proxy, &c).await, http::StatusCode::OK);
    }
    assert_eq!(auth.token_calls(), 1);
    assert_eq!(upstream_saw(&upstream, &hal.access_token), 6);
    // The refresh token was not spent, and the file no longer says it may be.
    let stored = LoginStore::new(&dir).read("hal").unwrap();
    assert_eq!(stored.tokens.refresh_token.expose(), hal.refresh_token);
    assert_eq!(stored.state.refresh_sent_at, None);
    assert!(auth.is_live(&hal.refresh_token));
    drop(proxy);
    // So a later attempt (here: after a restart) refreshes with it.
    let proxy = start_proxy(config(&upstream, &auth, &dir, &creds)).await;
    assert_eq!(ask(&proxy, &c).await, http::StatusCode::OK);
    assert!(eventually(|| refreshes(&proxy, "codex-oauth-1", "ok") == 1.0).await);
    assert_eq!(auth.token_calls(), 2);
    assert_no_tokens_logged(&[&hal]);
}
