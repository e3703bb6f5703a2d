//! ChatGPT logins the proxy owns (`codex-oauth:NAME`): stored, refreshed, signed in.
//!
//! A refresh token is single-use and rotating: redeeming it burns it, and presenting a burnt
//! one (`refresh_token_reused`) can revoke the whole login. So a login is refreshed by one
//! owner only. A borrowed `codex-auth:` file belongs to the Codex CLI, which refreshes it; the
//! proxy never does. A login the proxy owns lives in its state directory
//! ([`OAuthSettings::state_dir`], one file per account, see [`LoginStore`]) and is refreshed
//! by the proxy alone:
//!
//! - ahead of its access token's expiry (`refresh_lead`, 10 minutes) while requests keep
//!   using the old token, and once after a 401;
//! - one refresh at a time per login (a hundred requests cause one token call), at most
//!   [`OAuthSettings::max_concurrent_refreshes`] across the pool;
//! - never twice with one refresh token: before the call, the stored file records that a
//!   refresh was sent; a call that may have reached the authority but brought no answer
//!   re-reads the file and, unchanged, leaves the login `reauth_required`; a restart that
//!   finds the record does the same;
//! - refusals for good (`refresh_token_reused`, `_expired`, `_invalidated`, a 401) take the
//!   login out until `login NAME` signs it in again; refusals for now back off and retry;
//! - a refresh whose new expiry is no later than the old one stops the refreshing.
//!
//! Tokens are JWTs read without verification ([`Claims`]). The authority is configuration
//! ([`OAuthSettings::auth_base_url`]).

mod client;
mod jwt;
mod owned;
mod store;

pub use client::{AuthorityClient, DeviceCode, DeviceGrant, TokenAnswer, TokenError};
pub use jwt::{Claims, unsigned_jwt};
pub(crate) use owned::{Logins, OwnedLogin, RefreshTrigger};
pub use store::{LoginState, LoginStore, StoredLogin, Tokens, parse_login, rfc3339, valid_name};

use std::path::PathBuf;
use std::time::Duration;

/// The authority the Codex CLI signs in with.
pub const DEFAULT_AUTH_BASE_URL: &str = "https://auth.openai.com";

/// The Codex CLI's OAuth client id: logins made or refreshed by the proxy are the Codex
/// CLI's logins.
pub const CODEX_CLIENT_ID: &str = "app_EMoamEEZ73f0CkXaXp7hrann";

/// Where owned logins live and whom they are refreshed with.
#[derive(Debug, Clone)]
pub struct OAuthSettings {
    /// The state directory (one `NAME.json` per login, mode 0600).
    pub state_dir: PathBuf,
    /// The authority's base URL (token and device-code endpoints under it).
    pub auth_base_url: String,
    /// The OAuth client id.
    pub client_id: String,
    /// How long one token call may take, connection included.
    pub refresh_timeout: Duration,
    /// Most refreshes running at once across the pool.
    pub max_concurrent_refreshes: usize,
}

impl Default for OAuthSettings {
    fn default() -> Self {
        OAuthSettings {
            state_dir: default_state_dir(),
            auth_base_url: DEFAULT_AUTH_BASE_URL.to_string(),
            client_id: CODEX_CLIENT_ID.to_string(),
            refresh_timeout: Duration::from_secs(30),
            max_concurrent_refreshes: 2,
        }
    }
}

/// The default state directory: `$XDG_DATA_HOME/tower-responses`, else
/// `~/.local/share/tower-responses`, else `./tower-responses-state`.
pub fn default_state_dir() -> PathBuf {
    let from = |var: &str| {
        std::env::var_os(var)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(data) = from("XDG_DATA_HOME") {
        return data.join("tower-responses");
    }
    match from("HOME") {
        Some(home) => home.join(".local/share/tower-responses"),
        None => PathBuf::from("tower-responses-state"),
    }
}
