//! Upstream credentials, and [`CredentialRotateLayer`]: a pool that rotates on every kind of
//! exhaustion (seed 004).
//!
//! With several accounts, an agent must leave an exhausted one at once, however the
//! exhaustion arrives: an HTTP 429/402, a 401, or a `response.failed` inside a 200 stream
//! (found by `SoftFailureDetectLayer`, which must sit inside this layer). The layer picks a
//! credential per attempt ([`Strategy`], a [`PinnedCredential`] from the continuity layer, or
//! the session's bound credential), sets its headers (the client's `Authorization` and
//! `ChatGPT-Account-ID` never go upstream), and while the client has seen nothing, retries on
//! the next credential, within attempts, a retry budget and a total time.
//!
//! What happens to each failed attempt (what cools, for how long, whether the request goes
//! elsewhere, what the client sees) is one pure decision, [`policy::decide`], whose table is
//! in the [`policy`] module docs and the README. In short: rate limits, quota and auth take a
//! credential out of rotation until the upstream's reset (clamped per class); an overload or a
//! 5xx only makes the pool try that credential last, so it never turns into the proxy's own
//! 429; route, model and request faults cool nothing; a request that may already have run
//! upstream is never sent again. Cooldowns only grow: a shorter one never replaces a longer
//! one.
//!
//! A successful answer whose `x-codex-*-used-percent` headers show a window at 100% cools
//! the credential before it fails. Every cooldown is logged with its reason and exported as
//! `tr_credential_healthy` and `tr_credential_cooldown_until_seconds`.
//!
//! ## Where credentials come from
//!
//! A credential is written as a literal key, `env:NAME`, `file:PATH` (a file holding the key
//! alone), `codex-auth:PATH` (the Codex CLI's `auth.json`: an OAuth access token plus the
//! `ChatGPT-Account-ID`, borrowed: never refreshed by the proxy), or `codex-oauth:NAME` (a
//! ChatGPT login the proxy owns and refreshes, see [`oauth`]). In a pool each is labelled by its configured `name`, else by kind and
//! position (`key-1`, `codex-auth-2`), never by any part of the secret. Secrets never print:
//! [`Secret`]'s `Debug` and `Display` are redacted and the header values it makes are marked
//! sensitive, so neither logs nor HTTP/2 header compression see them.
//!
//! ```
//! use tower_responses::credentials::{Credential, CredentialSource};
//!
//! let source: CredentialSource = "sk-test-123".parse().unwrap();
//! let cred = source.load().unwrap();
//! assert_eq!(cred.token.expose(), "sk-test-123");
//! assert!(!format!("{cred:?}").contains("sk-test-123"));
//! let mut headers = http::HeaderMap::new();
//! cred.apply(&mut headers);
//! assert!(headers["authorization"].is_sensitive());
//! ```

mod lease;
pub mod oauth;
pub mod policy;
mod pool;
mod rotate;
mod source;
mod state;
pub(crate) mod ttl_map;
pub mod usage;

pub use crate::marks::{EncryptedOwner, PinnedCredential, ServedBy};
pub use lease::{CredentialLease, LeaseReporter};
pub use pool::{CooldownPolicy, PickRequest, Pool, PoolMember, Strategy};
pub use rotate::{CredentialRotate, CredentialRotateLayer, RotateConfig};
pub use source::{CredentialSource, LoadError};
pub(crate) use state::SettleOwners;
pub use state::{
    Claim, Cooldown, MemoryState, PoolState, SessionBinding, StateError, StateFuture, StoreHealth,
};
#[cfg(feature = "redis")]
pub use state::{RedisState, RedisStateConfig};

use std::fmt;
use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue, header};

/// The header that names the ChatGPT account a Codex-backend token acts for.
pub static CHATGPT_ACCOUNT_ID: HeaderName = HeaderName::from_static("chatgpt-account-id");

/// A secret string whose `Debug`/`Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Arc<str>);

impl Secret {
    /// Wraps a secret.
    pub fn new(s: impl Into<Arc<str>>) -> Self {
        Secret(s.into())
    }

    /// The secret itself; call only where it must leave the process (a header, a comparison).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Compares with `other` in time that does not depend on where they differ.
    pub fn ct_eq(&self, other: &[u8]) -> bool {
        constant_time_eq(self.0.as_bytes(), other)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Byte comparison whose time depends only on the lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// One upstream credential.
#[derive(Clone, Debug)]
pub struct Credential {
    /// A stable, non-secret name for logs and metrics: in a pool its configured `name` or
    /// kind and position (`key-1`, `file-2`); loaded alone, its source's description (`key`,
    /// `env:OPENAI_API_KEY`).
    pub label: String,
    /// The bearer token: an API key or an OAuth access token.
    pub token: Secret,
    /// The ChatGPT account id, for Codex-backend logins.
    pub account_id: Option<Secret>,
}

impl Credential {
    /// A bearer API key.
    pub fn api_key(label: impl Into<String>, key: impl Into<Arc<str>>) -> Self {
        Credential {
            label: label.into(),
            token: Secret::new(key),
            account_id: None,
        }
    }

    /// Replaces the client's `Authorization` and `ChatGPT-Account-ID` with this credential's,
    /// as sensitive header values. The client's `OpenAI-Organization` and `OpenAI-Project`
    /// go too: they name the client's account, and a mismatch with this key is a 401 that
    /// would cool a healthy credential.
    pub fn apply(&self, headers: &mut HeaderMap) {
        CredentialHeaders::of(self).apply(headers);
    }
}

/// A credential's header values, built once: a pool keeps them beside each credential, so
/// an attempt copies two reference-counted values instead of formatting `Bearer ...`.
#[derive(Clone, Debug)]
pub(crate) struct CredentialHeaders {
    authorization: Option<HeaderValue>,
    account_id: Option<HeaderValue>,
}

impl CredentialHeaders {
    pub(crate) fn of(credential: &Credential) -> Self {
        let sensitive = |v: &str| {
            HeaderValue::from_str(v).ok().map(|mut v| {
                v.set_sensitive(true);
                v
            })
        };
        CredentialHeaders {
            authorization: sensitive(&format!("Bearer {}", credential.token.expose())),
            account_id: credential
                .account_id
                .as_ref()
                .and_then(|a| sensitive(a.expose())),
        }
    }

    /// What [`Credential::apply`] does, with the values already built.
    pub(crate) fn apply(&self, headers: &mut HeaderMap) {
        headers.remove(header::AUTHORIZATION);
        headers.remove(&CHATGPT_ACCOUNT_ID);
        headers.remove("openai-organization");
        headers.remove("openai-project");
        if let Some(v) = &self.authorization {
            headers.insert(header::AUTHORIZATION, v.clone());
        }
        if let Some(v) = &self.account_id {
            headers.insert(CHATGPT_ACCOUNT_ID.clone(), v.clone());
        }
    }
}

/// The bearer token of a request's `Authorization` header, if any.
pub fn bearer_token(headers: &HeaderMap) -> Option<&[u8]> {
    let v = headers.get(header::AUTHORIZATION)?.as_bytes();
    let (scheme, rest) = v.split_at(v.iter().position(|b| *b == b' ')?);
    scheme
        .eq_ignore_ascii_case(b"bearer")
        .then(|| rest.trim_ascii())
}

impl<'de> serde::Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret::new)
    }
}
