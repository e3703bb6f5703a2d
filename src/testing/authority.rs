//! A mock ChatGPT OAuth authority, for tests of owned logins.
//!
//! [`MockAuthority::start`] serves, on `127.0.0.1`, the endpoints the Codex CLI signs in and
//! refreshes with: `POST /oauth/token` (the JSON `refresh_token` grant and the form-encoded
//! `authorization_code` grant of the device flow), `POST /api/accounts/deviceauth/usercode`
//! and `POST /api/accounts/deviceauth/token`. Refresh tokens rotate and are single-use: a
//! spent one is answered `401 refresh_token_reused`, as the real authority does. Tokens are
//! unsigned JWTs whose claims the proxy reads (`exp`, the `https://api.openai.com/auth` claim).
//! The mock can be told to fail, to stall after reading a request, or to hand out an expiry
//! that does not advance; it records every call.
//!
//! ```
//! use tower_responses::testing::MockAuthority;
//! use tower_responses::credentials::Secret;
//! use tower_responses::credentials::oauth::{AuthorityClient, Claims, CODEX_CLIENT_ID};
//! use std::time::Duration;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let auth = MockAuthority::start().await.unwrap();
//! let login = auth.issue("acct-1", Duration::from_secs(3600));
//! let client = AuthorityClient::new(&auth.base_url(), CODEX_CLIENT_ID, Duration::from_secs(5));
//! let new = client.refresh(&Secret::new(login.refresh_token.clone())).await.unwrap();
//! let claims = Claims::read(new.access_token.as_deref().unwrap()).unwrap();
//! assert_eq!(claims.account_id.as_deref(), Some("acct-1"));
//! // The spent refresh token is refused, as reuse.
//! let again = client.refresh(&Secret::new(login.refresh_token.clone())).await;
//! assert!(again.unwrap_err().to_string().contains("refresh_token_reused"));
//! assert_eq!(auth.token_calls(), 2);
//! # }
//! ```

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::credentials::oauth::{CODEX_CLIENT_ID, unsigned_jwt};

/// A pair of tokens the mock issued.
#[derive(Debug, Clone)]
pub struct IssuedLogin {
    /// The account.
    pub account_id: String,
    /// An unsigned JWT with `exp` and the account's claims.
    pub access_token: String,
    /// A single-use refresh token.
    pub refresh_token: String,
    /// An unsigned JWT id token with the account's claims and e-mail.
    pub id_token: String,
    /// When the access token expires.
    pub expires: SystemTime,
}

impl IssuedLogin {
    /// The Codex CLI's `auth.json` holding this login.
    pub fn auth_json(&self) -> String {
        serde_json::json!({
            "OPENAI_API_KEY": null,
            "tokens": {
                "id_token": self.id_token,
                "access_token": self.access_token,
                "refresh_token": self.refresh_token,
                "account_id": self.account_id,
            },
            "last_refresh": "2026-01-01T00:00:00Z",
        })
        .to_string()
    }
}

/// One call the mock received.
#[derive(Debug, Clone)]
pub struct AuthorityCall {
    /// The request path.
    pub path: String,
    /// The grant of a token call (`refresh_token`, `authorization_code`).
    pub grant_type: Option<String>,
    /// The refresh token a refresh call presented.
    pub refresh_token: Option<String>,
    /// The client id the call named.
    pub client_id: Option<String>,
}

/// What the next token calls get instead of tokens.
#[derive(Debug, Clone)]
pub enum TokenFault {
    /// An error answer with this status and `error.code`.
    Refuse(StatusCode, &'static str),
    /// Read the request (and rotate nothing), then never answer.
    StallAfterReading,
    /// Answer as usual, but this much later.
    Delay(Duration),
}

type Hook = dyn Fn(&AuthorityCall) + Send + Sync;

#[derive(Default)]
struct State {
    /// Live refresh tokens: account, plan.
    live: HashMap<String, String>,
    /// Spent refresh tokens.
    spent: HashMap<String, String>,
    /// Expiry each account was last issued, for non-advancing answers.
    last_exp: HashMap<String, SystemTime>,
    lifetime: HashMap<String, Duration>,
    faults: Vec<TokenFault>,
    non_advancing: bool,
    calls: Vec<AuthorityCall>,
    /// Device codes: user code -> (device id, approved account).
    devices: HashMap<String, (String, Option<String>)>,
    /// Authorization codes handed out on approval: code -> (account, verifier).
    codes: HashMap<String, (String, String)>,
    hook: Option<Arc<Hook>>,
}

struct Shared {
    state: Mutex<State>,
    counter: AtomicU64,
    /// Token calls being answered now, and the most at once so far.
    in_flight: AtomicU64,
    most_in_flight: AtomicU64,
}

/// Counts a token call in flight for as long as it lives.
struct InFlight<'a>(&'a Shared);

impl<'a> InFlight<'a> {
    fn new(shared: &'a Shared) -> Self {
        let now = shared.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        shared.most_in_flight.fetch_max(now, Ordering::SeqCst);
        InFlight(shared)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A mock OAuth authority on `127.0.0.1`; clones share it, and it stops when the last clone
/// goes.
#[derive(Clone)]
pub struct MockAuthority {
    addr: SocketAddr,
    shared: Arc<Shared>,
    _stop: Arc<watch::Sender<bool>>,
}

impl std::fmt::Debug for MockAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockAuthority")
            .field("addr", &self.addr)
            .finish()
    }
}

/// A device-flow account the mock approves codes for.
const DEVICE_ACCOUNT_LIFETIME: Duration = Duration::from_secs(10 * 24 * 3600);

impl MockAuthority {
    /// Starts the mock on an OS-chosen port. Needs a tokio runtime.
    pub async fn start() -> std::io::Result<MockAuthority> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            counter: AtomicU64::new(1),
            in_flight: AtomicU64::new(0),
            most_in_flight: AtomicU64::new(0),
        });
        let (stop, mut stop_rx) = watch::channel(false);
        let serving = shared.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop_rx.changed() => break,
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        let shared = serving.clone();
                        let mut stop = stop_rx.clone();
                        tokio::spawn(async move {
                            let svc = service_fn(move |req| handle(shared.clone(), req));
                            let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), svc);
                            tokio::select! {
                                _ = conn => {}
                                _ = stop.changed() => {}
                            }
                        });
                    }
                }
            }
        });
        Ok(MockAuthority {
            addr,
            shared,
            _stop: Arc::new(stop),
        })
    }

    /// The base URL, `http://127.0.0.1:PORT` (what `--auth-base-url` takes).
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.shared.state)
    }

    /// Issues a login for `account_id` whose access tokens live `lifetime` (refreshes of it
    /// too).
    pub fn issue(&self, account_id: &str, lifetime: Duration) -> IssuedLogin {
        let mut state = self.state();
        state.lifetime.insert(account_id.to_string(), lifetime);
        issue(
            &self.shared,
            &mut state,
            account_id,
            SystemTime::now() + lifetime,
        )
    }

    /// Issues a login whose access token expires at `expires` (refreshes then last
    /// `lifetime`).
    pub fn issue_expiring(
        &self,
        account_id: &str,
        expires: SystemTime,
        lifetime: Duration,
    ) -> IssuedLogin {
        let mut state = self.state();
        state.lifetime.insert(account_id.to_string(), lifetime);
        issue(&self.shared, &mut state, account_id, expires)
    }

    /// The next token call gets `fault` (faults queue up, first in, first out).
    pub fn fail_next(&self, fault: TokenFault) {
        self.state().faults.push(fault);
    }

    /// Refreshes answer with an expiry no later than the last one issued (as accounts under
    /// advanced security see).
    pub fn set_non_advancing_exp(&self, on: bool) {
        self.state().non_advancing = on;
    }

    /// Runs `f` for every token call after it is read and before it is answered.
    pub fn on_token_call(&self, f: impl Fn(&AuthorityCall) + Send + Sync + 'static) {
        self.state().hook = Some(Arc::new(f));
    }

    /// Approves a device-flow `user_code` (what the person does in the browser); `false` for
    /// an unknown code. The login is for `account_id`.
    pub fn approve(&self, user_code: &str, account_id: &str) -> bool {
        let mut state = self.state();
        match state.devices.get_mut(user_code.trim()) {
            Some((_, approved)) => {
                *approved = Some(account_id.to_string());
                state
                    .lifetime
                    .entry(account_id.to_string())
                    .or_insert(DEVICE_ACCOUNT_LIFETIME);
                true
            }
            None => false,
        }
    }

    /// Every call, in order.
    pub fn calls(&self) -> Vec<AuthorityCall> {
        self.state().calls.clone()
    }

    /// Calls to `/oauth/token`.
    pub fn token_calls(&self) -> usize {
        self.state()
            .calls
            .iter()
            .filter(|c| c.path == "/oauth/token")
            .count()
    }

    /// The most token calls that were being answered at the same time.
    pub fn most_concurrent_token_calls(&self) -> u64 {
        self.shared.most_in_flight.load(Ordering::SeqCst)
    }

    /// Whether `refresh_token` is live (issued, not yet redeemed).
    pub fn is_live(&self, refresh_token: &str) -> bool {
        self.state().live.contains_key(refresh_token)
    }
}

fn issue(shared: &Shared, state: &mut State, account: &str, expires: SystemTime) -> IssuedLogin {
    let n = shared.counter.fetch_add(1, Ordering::Relaxed);
    let exp = expires
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let auth = serde_json::json!({
        "chatgpt_account_id": account,
        "chatgpt_plan_type": "pro",
        "chatgpt_user_id": format!("user-{account}"),
    });
    let access_token = unsigned_jwt(&serde_json::json!({
        "exp": exp, "jti": n, "https://api.openai.com/auth": auth,
    }));
    let id_token = unsigned_jwt(&serde_json::json!({
        "exp": exp, "email": format!("{account}@example.com"), "https://api.openai.com/auth": auth,
    }));
    let refresh_token = format!("rt-{account}-{n}");
    state
        .live
        .insert(refresh_token.clone(), account.to_string());
    state.last_exp.insert(account.to_string(), expires);
    IssuedLogin {
        account_id: account.to_string(),
        access_token,
        refresh_token,
        id_token,
        expires,
    }
}

fn json(status: StatusCode, v: serde_json::Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(v.to_string())))
        .unwrap_or_default()
}

fn refusal(status: StatusCode, code: &str) -> Response<Full<Bytes>> {
    json(
        status,
        serde_json::json!({"error": {
            "message": format!("mock authority: {code}"),
            "type": "invalid_request_error",
            "param": null,
            "code": code,
        }}),
    )
}

fn tokens(login: &IssuedLogin) -> Response<Full<Bytes>> {
    let expires_in = login
        .expires
        .duration_since(SystemTime::now())
        .map_or(0, |d| d.as_secs());
    json(
        StatusCode::OK,
        serde_json::json!({
            "access_token": login.access_token,
            "refresh_token": login.refresh_token,
            "id_token": login.id_token,
            "token_type": "Bearer",
            "expires_in": expires_in,
        }),
    )
}

fn form_value(body: &[u8], key: &str) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    text.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == key).then(|| percent_decode(v))
    })
}

fn percent_decode(v: &str) -> String {
    let b = v.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(x) => out.push(x),
                    Err(_) => out.extend_from_slice(&b[i..i + 3]),
                }
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_string();
    let form = req.headers().get(header::CONTENT_TYPE).is_some_and(|v| {
        v.as_bytes()
            .starts_with(b"application/x-www-form-urlencoded")
    });
    let body = match Limited::new(req.into_body(), 64 * 1024).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return Ok(refusal(StatusCode::BAD_REQUEST, "invalid_request")),
    };
    let v: serde_json::Value = if form {
        serde_json::Value::Null
    } else {
        serde_json::from_slice(&body).unwrap_or_default()
    };
    let field = |k: &str| {
        if form {
            form_value(&body, k)
        } else {
            v[k].as_str().map(str::to_string)
        }
    };
    let call = AuthorityCall {
        path: path.clone(),
        grant_type: field("grant_type"),
        refresh_token: field("refresh_token"),
        client_id: field("client_id"),
    };
    let (fault, hook) = {
        let mut state = lock(&shared.state);
        state.calls.push(call.clone());
        let fault = if path == "/oauth/token" && !state.faults.is_empty() {
            Some(state.faults.remove(0))
        } else {
            None
        };
        (fault, state.hook.clone())
    };
    let _counted = (path == "/oauth/token").then(|| InFlight::new(&shared));
    if path == "/oauth/token" {
        if let Some(hook) = hook {
            hook(&call);
        }
    }
    match fault {
        Some(TokenFault::StallAfterReading) => {
            std::future::pending::<()>().await;
        }
        Some(TokenFault::Refuse(status, code)) => return Ok(refusal(status, code)),
        Some(TokenFault::Delay(d)) => tokio::time::sleep(d).await,
        None => {}
    }
    if call.client_id.as_deref() != Some(CODEX_CLIENT_ID)
        && path != "/api/accounts/deviceauth/token"
    {
        return Ok(refusal(StatusCode::BAD_REQUEST, "invalid_client"));
    }
    let mut state = lock(&shared.state);
    let answer = match (path.as_str(), call.grant_type.as_deref()) {
        ("/oauth/token", Some("refresh_token")) => {
            let presented = call.refresh_token.unwrap_or_default();
            if let Some(account) = state.live.remove(&presented) {
                state.spent.insert(presented, account.clone());
                let lifetime = state
                    .lifetime
                    .get(&account)
                    .copied()
                    .unwrap_or(DEVICE_ACCOUNT_LIFETIME);
                let mut expires = SystemTime::now() + lifetime;
                if state.non_advancing {
                    if let Some(last) = state.last_exp.get(&account) {
                        expires = *last;
                    }
                }
                tokens(&issue(&shared, &mut state, &account, expires))
            } else if state.spent.contains_key(&presented) {
                // Reuse revokes the whole family, as the real authority does.
                let account = state.spent[&presented].clone();
                state.live.retain(|_, a| *a != account);
                refusal(StatusCode::UNAUTHORIZED, "refresh_token_reused")
            } else {
                refusal(StatusCode::UNAUTHORIZED, "refresh_token_invalidated")
            }
        }
        ("/oauth/token", Some("authorization_code")) => {
            let code = field("code").unwrap_or_default();
            let verifier = field("code_verifier").unwrap_or_default();
            match state.codes.remove(&code) {
                Some((account, want)) if want == verifier => {
                    let lifetime = state
                        .lifetime
                        .get(&account)
                        .copied()
                        .unwrap_or(DEVICE_ACCOUNT_LIFETIME);
                    tokens(&issue(
                        &shared,
                        &mut state,
                        &account,
                        SystemTime::now() + lifetime,
                    ))
                }
                _ => refusal(StatusCode::BAD_REQUEST, "invalid_grant"),
            }
        }
        ("/api/accounts/deviceauth/usercode", _) => {
            let n = shared.counter.fetch_add(1, Ordering::Relaxed);
            let user_code = format!("MOCK-{:04}", n % 10_000);
            let device = format!("deviceauth-{n}");
            state
                .devices
                .insert(user_code.clone(), (device.clone(), None));
            json(
                StatusCode::OK,
                serde_json::json!({"device_auth_id": device, "user_code": user_code, "interval": "1"}),
            )
        }
        ("/api/accounts/deviceauth/token", _) => {
            let user_code = v["user_code"].as_str().unwrap_or_default().to_string();
            let device = v["device_auth_id"].as_str().unwrap_or_default();
            match state.devices.get(&user_code).cloned() {
                Some((id, Some(account))) if id == device => {
                    state.devices.remove(&user_code);
                    let n = shared.counter.fetch_add(1, Ordering::Relaxed);
                    let code = format!("authcode-{n}");
                    let verifier = format!("verifier-{n}");
                    state
                        .codes
                        .insert(code.clone(), (account, verifier.clone()));
                    json(
                        StatusCode::OK,
                        serde_json::json!({
                            "authorization_code": code,
                            "code_challenge": "mock-challenge",
                            "code_verifier": verifier,
                        }),
                    )
                }
                Some((id, None)) if id == device => {
                    refusal(StatusCode::FORBIDDEN, "deviceauth_authorization_pending")
                }
                _ => refusal(StatusCode::BAD_REQUEST, "invalid_device_code"),
            }
        }
        _ => refusal(StatusCode::NOT_FOUND, "not_found"),
    };
    Ok(answer)
}
