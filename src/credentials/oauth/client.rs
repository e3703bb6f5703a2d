//! The calls to the authority: the refresh grant, and the device-code flow's three calls.
//!
//! Every call goes on a new connection (token calls come days apart, and a pooled connection
//! the authority closed would turn a request that was never sent into one that might have
//! been), within a timeout, with a bounded answer. A failure says whether the request can have
//! reached the authority: only one that never left may be sent again with the same refresh
//! token.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use serde::Deserialize;

use crate::connect::{UpstreamClientBuilder, UpstreamConnector};
use crate::credentials::Secret;

/// The largest answer read from the authority.
const MAX_ANSWER: usize = 256 * 1024;

/// What a token call can end in, short of new tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenError {
    /// The request never left (a connect error): safe to send again.
    Unsent(String),
    /// The request was sent and no complete answer came within the timeout (or the connection
    /// broke): the authority may have rotated the refresh token.
    Unanswered(String),
    /// The authority refused the login for good: 401, or `refresh_token_reused`,
    /// `refresh_token_expired`, `refresh_token_invalidated`, `token_expired`. The code, or
    /// `unauthorized` for a bare 401.
    Permanent(String),
    /// Any other refusal (5xx, 429, an unknown 4xx): try again later.
    Transient(String),
}

impl TokenError {
    /// A short name for logs and metrics.
    pub fn outcome(&self) -> &'static str {
        match self {
            TokenError::Unsent(_) | TokenError::Transient(_) => "transient",
            TokenError::Unanswered(_) => "unanswered",
            TokenError::Permanent(_) => "permanent",
        }
    }
}

impl std::fmt::Display for TokenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenError::Unsent(e) => write!(f, "not sent: {e}"),
            TokenError::Unanswered(e) => write!(f, "sent, no answer: {e}"),
            TokenError::Permanent(code) => write!(f, "refused for good: {code}"),
            TokenError::Transient(e) => write!(f, "refused for now: {e}"),
        }
    }
}

/// The tokens a token call answers with; every field is optional, as in the Codex CLI.
#[derive(Deserialize)]
pub struct TokenAnswer {
    /// A new access token.
    pub access_token: Option<String>,
    /// The next refresh token (the one sent is spent).
    pub refresh_token: Option<String>,
    /// A new id token.
    pub id_token: Option<String>,
    /// Seconds the access token lives (used when it carries no `exp`).
    pub expires_in: Option<u64>,
}

impl std::fmt::Debug for TokenAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenAnswer")
            .field("expires_in", &self.expires_in)
            .finish_non_exhaustive()
    }
}

/// A client for the authority at one base URL.
#[derive(Clone)]
pub struct AuthorityClient {
    base: String,
    client_id: String,
    timeout: Duration,
    http: hyper_util::client::legacy::Client<UpstreamConnector, Full<Bytes>>,
}

impl std::fmt::Debug for AuthorityClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthorityClient")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

/// The body of an answer, or how it failed.
struct Answer {
    status: StatusCode,
    body: Bytes,
}

impl AuthorityClient {
    /// A client for `base` (`https://auth.openai.com`), with `client_id`, each call bounded by
    /// `timeout`.
    pub fn new(base: &str, client_id: &str, timeout: Duration) -> Self {
        let http = UpstreamClientBuilder::new()
            .max_idle_per_host(0)
            .connect_timeout(timeout)
            .build();
        AuthorityClient {
            base: base.trim_end_matches('/').to_string(),
            client_id: client_id.to_string(),
            timeout,
            http,
        }
    }

    /// The base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    async fn post(
        &self,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> Result<Answer, TokenError> {
        let url = format!("{}{path}", self.base);
        let req = Request::post(&url)
            .header(header::CONTENT_TYPE, content_type)
            .header(header::ACCEPT, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| TokenError::Unsent(format!("bad authority URL {url}: {e}")))?;
        let call = async {
            let res = self.http.request(req).await.map_err(|e| {
                if e.is_connect() {
                    TokenError::Unsent(format!("cannot connect to {}: {e}", self.base))
                } else {
                    TokenError::Unanswered(format!("{e}"))
                }
            })?;
            let status = res.status();
            let body = Limited::new(res.into_body(), MAX_ANSWER)
                .collect()
                .await
                .map_err(|e| TokenError::Unanswered(format!("reading the answer: {e}")))?
                .to_bytes();
            Ok(Answer { status, body })
        };
        match tokio::time::timeout(self.timeout, call).await {
            Ok(r) => r,
            Err(_) => Err(TokenError::Unanswered(format!(
                "no answer from {} within {:?}",
                self.base, self.timeout
            ))),
        }
    }

    /// Redeems `refresh_token` (`POST {base}/oauth/token`, JSON, as the Codex CLI sends it).
    pub async fn refresh(&self, refresh_token: &Secret) -> Result<TokenAnswer, TokenError> {
        let body = serde_json::json!({
            "client_id": self.client_id,
            "grant_type": "refresh_token",
            "refresh_token": refresh_token.expose(),
        });
        let answer = self
            .post(
                "/oauth/token",
                "application/json",
                body.to_string().into_bytes(),
            )
            .await?;
        tokens_from(answer)
    }

    /// Asks for a device code (`POST {base}/api/accounts/deviceauth/usercode`).
    pub async fn device_code(&self) -> Result<DeviceCode, TokenError> {
        let body = serde_json::json!({ "client_id": self.client_id });
        let a = self
            .post(
                "/api/accounts/deviceauth/usercode",
                "application/json",
                body.to_string().into_bytes(),
            )
            .await?;
        if a.status == StatusCode::NOT_FOUND {
            return Err(TokenError::Permanent(
                "device-code login is not enabled for this authority".into(),
            ));
        }
        if !a.status.is_success() {
            return Err(refusal(a.status, &a.body));
        }
        #[derive(Deserialize)]
        struct Form {
            device_auth_id: String,
            #[serde(alias = "usercode")]
            user_code: String,
            #[serde(default)]
            interval: Option<serde_json::Value>,
        }
        let f: Form = serde_json::from_slice(&a.body)
            .map_err(|e| TokenError::Transient(format!("unreadable device-code answer: {e}")))?;
        // The interval comes as a number or a string of one.
        let interval = f
            .interval
            .and_then(|v| {
                v.as_u64()
                    .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
            })
            .unwrap_or(5)
            .clamp(1, 60);
        Ok(DeviceCode {
            device_auth_id: f.device_auth_id,
            user_code: f.user_code,
            interval: Duration::from_secs(interval),
            verification_url: format!("{}/codex/device", self.base),
        })
    }

    /// Polls once for the person's approval (`POST {base}/api/accounts/deviceauth/token`):
    /// `Ok(None)` while pending.
    pub async fn poll_device(&self, code: &DeviceCode) -> Result<Option<DeviceGrant>, TokenError> {
        let body = serde_json::json!({
            "device_auth_id": code.device_auth_id,
            "user_code": code.user_code,
        });
        let a = self
            .post(
                "/api/accounts/deviceauth/token",
                "application/json",
                body.to_string().into_bytes(),
            )
            .await?;
        if matches!(a.status, StatusCode::FORBIDDEN | StatusCode::NOT_FOUND) {
            return Ok(None);
        }
        if !a.status.is_success() {
            return Err(refusal(a.status, &a.body));
        }
        serde_json::from_slice(&a.body)
            .map(Some)
            .map_err(|e| TokenError::Transient(format!("unreadable device-code grant: {e}")))
    }

    /// Exchanges an approved device code for tokens (`POST {base}/oauth/token`, form-encoded
    /// `authorization_code` grant with the PKCE verifier the authority handed out).
    pub async fn exchange(&self, grant: &DeviceGrant) -> Result<TokenAnswer, TokenError> {
        let redirect = format!("{}/deviceauth/callback", self.base);
        let body = form_encode(&[
            ("grant_type", "authorization_code"),
            ("code", &grant.authorization_code),
            ("redirect_uri", &redirect),
            ("client_id", &self.client_id),
            ("code_verifier", &grant.code_verifier),
        ]);
        let a = self
            .post(
                "/oauth/token",
                "application/x-www-form-urlencoded",
                body.into_bytes(),
            )
            .await?;
        tokens_from(a)
    }
}

/// A device code the person enters at the verification URL.
#[derive(Debug, Clone)]
pub struct DeviceCode {
    /// The authority's handle on this login attempt.
    pub device_auth_id: String,
    /// The code the person types.
    pub user_code: String,
    /// How often to poll.
    pub interval: Duration,
    /// Where the person goes.
    pub verification_url: String,
}

/// The authority's answer once the person approved.
#[derive(Deserialize)]
pub struct DeviceGrant {
    /// The authorization code to exchange.
    pub authorization_code: String,
    /// The PKCE verifier that goes with it.
    pub code_verifier: String,
}

fn tokens_from(a: Answer) -> Result<TokenAnswer, TokenError> {
    if !a.status.is_success() {
        return Err(refusal(a.status, &a.body));
    }
    serde_json::from_slice(&a.body)
        .map_err(|e| TokenError::Transient(format!("unreadable token answer: {e}")))
}

/// Codes that end a login: the Codex CLI's permanent refresh failures, and `token_expired`
/// from the token endpoint.
const PERMANENT: [&str; 4] = [
    "refresh_token_reused",
    "refresh_token_expired",
    "refresh_token_invalidated",
    "token_expired",
];

/// Classifies a refusal as the Codex CLI does: the code from `error.code`, a string `error`,
/// or a top-level `code`; permanent when it is one of [`PERMANENT`] or the status is 401.
fn refusal(status: StatusCode, body: &[u8]) -> TokenError {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let code = v["error"]["code"]
        .as_str()
        .or_else(|| v["error"].as_str())
        .or_else(|| v["code"].as_str())
        .filter(|c| c.len() <= 100)
        .map(str::to_string);
    match code {
        Some(c) if PERMANENT.contains(&c.as_str()) => TokenError::Permanent(c),
        _ if status == StatusCode::UNAUTHORIZED => {
            TokenError::Permanent(code.unwrap_or_else(|| "unauthorized".into()))
        }
        Some(c) => TokenError::Transient(format!("{} {c}", status.as_u16())),
        None => TokenError::Transient(format!("status {}", status.as_u16())),
    }
}

fn form_encode(pairs: &[(&str, &str)]) -> String {
    let mut out = String::new();
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        for (j, s) in [k, v].into_iter().enumerate() {
            if j == 1 {
                out.push('=');
            }
            for b in s.bytes() {
                match b {
                    b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                        out.push(b as char)
                    }
                    _ => out.push_str(&format!("%{b:02X}")),
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_classified_like_the_codex_cli() {
        let body = br#"{"error":{"message":"already used","type":"invalid_request_error","code":"refresh_token_reused"}}"#;
        assert_eq!(
            refusal(StatusCode::BAD_REQUEST, body),
            TokenError::Permanent("refresh_token_reused".into())
        );
        assert_eq!(
            refusal(StatusCode::UNAUTHORIZED, b"nope"),
            TokenError::Permanent("unauthorized".into())
        );
        assert_eq!(
            refusal(
                StatusCode::BAD_REQUEST,
                br#"{"error":"refresh_token_expired"}"#
            ),
            TokenError::Permanent("refresh_token_expired".into())
        );
        assert!(matches!(
            refusal(StatusCode::BAD_GATEWAY, b""),
            TokenError::Transient(_)
        ));
        assert_eq!(form_encode(&[("a b", "c&d/é")]), "a%20b=c%26d%2F%C3%A9");
    }
}
