//! Reading a JWT's claims without verifying it.
//!
//! The authority signs access and id tokens; the upstream verifies them. The proxy only needs
//! to know when a token expires and which account it names, so it decodes the payload and
//! trusts nothing in it beyond scheduling and display: a forged token only fools the proxy
//! about when to refresh, and the upstream still refuses it.

use std::time::{Duration, SystemTime};

use base64::Engine as _;
use serde::Deserialize;

/// The largest token decoded: real ones are a few kilobytes.
const MAX_TOKEN: usize = 64 * 1024;

/// What the proxy reads from a token.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Claims {
    /// When it expires.
    pub expires: Option<SystemTime>,
    /// The ChatGPT account id (`chatgpt_account_id`).
    pub account_id: Option<String>,
    /// The plan (`chatgpt_plan_type`: `plus`, `pro`, `team`, ...).
    pub plan: Option<String>,
    /// The user (`chatgpt_user_id`, else `user_id`).
    pub user_id: Option<String>,
    /// The e-mail address, in id tokens.
    pub email: Option<String>,
}

#[derive(Deserialize)]
struct Payload {
    exp: Option<f64>,
    email: Option<String>,
    #[serde(rename = "https://api.openai.com/auth")]
    auth: Option<AuthClaim>,
}

#[derive(Deserialize)]
struct AuthClaim {
    chatgpt_account_id: Option<String>,
    chatgpt_plan_type: Option<String>,
    chatgpt_user_id: Option<String>,
    user_id: Option<String>,
}

impl Claims {
    /// Reads the claims of `token`, or `None` when it is not a JWT (an API key, garbage).
    /// Never fails loudly and never echoes the token: callers log only that it was unreadable.
    ///
    /// ```
    /// use tower_responses::credentials::oauth::Claims;
    /// assert!(Claims::read("sk-not-a-jwt").is_none());
    /// ```
    pub fn read(token: &str) -> Option<Claims> {
        if token.len() > MAX_TOKEN {
            return None;
        }
        let mut parts = token.split('.');
        let (_header, payload, _signature) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        // Base64url without padding, as RFC 7515 says; tolerate padding all the same.
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload.trim_end_matches('='))
            .ok()?;
        let p: Payload = serde_json::from_slice(&bytes).ok()?;
        let expires = p
            .exp
            .filter(|e| e.is_finite() && *e >= 0.0 && *e < 1e12)
            .map(|e| SystemTime::UNIX_EPOCH + Duration::from_secs(e as u64));
        let auth = p.auth;
        let non_empty = |s: Option<String>| s.filter(|s| !s.is_empty());
        Some(Claims {
            expires,
            account_id: non_empty(auth.as_ref().and_then(|a| a.chatgpt_account_id.clone())),
            plan: non_empty(auth.as_ref().and_then(|a| a.chatgpt_plan_type.clone())),
            user_id: non_empty(
                auth.as_ref()
                    .and_then(|a| a.chatgpt_user_id.clone().or_else(|| a.user_id.clone())),
            ),
            email: non_empty(p.email),
        })
    }

    /// The expiry of `token`, if it is a JWT that has one.
    pub fn expiry_of(token: &str) -> Option<SystemTime> {
        Claims::read(token).and_then(|c| c.expires)
    }
}

/// An unsigned JWT with these claims, as the mock authority issues them (tests only read
/// claims, so the signature part is a placeholder).
pub fn unsigned_jwt(claims: &serde_json::Value) -> String {
    let b64 = |v: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
    format!(
        "{}.{}.{}",
        b64(br#"{"alg":"none","typ":"JWT"}"#),
        b64(claims.to_string().as_bytes()),
        b64(b"unsigned")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_exp_and_the_codex_auth_claim() {
        let token = unsigned_jwt(&serde_json::json!({
            "exp": 1_900_000_000u64,
            "email": "a@example.com",
            "https://api.openai.com/auth": {"chatgpt_account_id": "acct-1", "chatgpt_plan_type": "pro", "user_id": "u-1"}
        }));
        let c = Claims::read(&token).unwrap();
        assert_eq!(
            c.expires,
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_900_000_000))
        );
        assert_eq!(c.account_id.as_deref(), Some("acct-1"));
        assert_eq!(c.plan.as_deref(), Some("pro"));
        assert_eq!(c.user_id.as_deref(), Some("u-1"));
        assert_eq!(c.email.as_deref(), Some("a@example.com"));
        // Not JWTs: no claims, no panic.
        for bad in [
            "",
            "a.b",
            "a.b.c.d",
            "x.!!!.y",
            "x.e30.y.z",
            &"a.".repeat(40_000),
        ] {
            assert!(
                Claims::read(bad).is_none_or(|c| c.expires.is_none()),
                "{bad:.20}"
            );
        }
        assert_eq!(Claims::read("x.e30.y"), Some(Claims::default()));
    }
}
