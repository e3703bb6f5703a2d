use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::compact::CompactConfig;
use crate::credentials::oauth::{DEFAULT_AUTH_BASE_URL, OAuthSettings, default_state_dir};
use crate::credentials::{CredentialSource, PoolMember, Secret, Strategy};
pub use crate::error::ConfigError;
use crate::normalize::NormalizeConfig;
use crate::profile::Profile;
use crate::websocket::WebSocketLimits;

/// Everything the proxy can be told, from flags or from a TOML file (flags win).
///
/// ```
/// use tower_responses::proxy::ProxyConfig;
///
/// let cfg = ProxyConfig::from_toml_str(r#"
///     listen = "127.0.0.1:9000"
///     upstream = "https://chatgpt.com/backend-api/codex"
///     strategy = "fill_first"
///     credentials = [
///         "codex-auth:/tmp/auth.json",
///         { source = "env:PLATFORM_KEY", base_url = "https://api.openai.com/v1", profile = "openai", weight = 2 },
///     ]
/// "#).unwrap();
/// assert_eq!(cfg.credentials[1].weight, 2);
/// assert_eq!(cfg.listen.port(), 9000);
/// assert_eq!(cfg.profile().as_str(), "chatgpt-codex");
/// assert!(ProxyConfig::from_toml_str("lisen = 1").is_err());
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProxyConfig {
    /// Address to listen on. Default `127.0.0.1:8787`.
    pub listen: SocketAddr,
    /// Upstream base URL with its prefix; client path `/v1/X` goes to `upstream/X`.
    pub upstream: String,
    /// Upstream profile; defaults from the URL.
    #[serde(rename = "profile")]
    pub profile_override: Option<Profile>,
    /// Upstream credentials. With any, the client's `Authorization` is replaced. Each is a
    /// source string or a table with its own `base_url`, `profile`, `weight`, `name` and
    /// `reserve` (`{ weekly = 30 }`: the percent of a window it keeps back).
    pub credentials: Vec<PoolMember>,
    /// How a credential is chosen: `round_robin`, `fill_first`, `least_used`, `random`,
    /// `weighted`, `headroom` (the most left in its tightest usage window).
    pub strategy: Strategy,
    /// Inbound bearer keys. Without any, only loopback clients addressing the proxy as
    /// `localhost`, `127.0.0.1` or `[::1]` are served. With any, upstream credentials are
    /// required: the client key is checked, then removed, and never goes upstream.
    pub client_keys: Vec<Secret>,
    /// Web origins (`https://app.example`, `http://localhost:3000`) whose pages may call the
    /// proxy. A request with any other `Origin` header gets 403. Default empty: no web page.
    pub allowed_origins: Vec<String>,
    /// Largest request body accepted, after decoding (bytes).
    pub body_limit: usize,
    /// How long each upstream attempt may wait for its response head (seconds); a folded
    /// `stream:false` answer or a local compaction summary is bounded by its idle timeout
    /// instead (`normalize.fold_idle_timeout_secs`, `compact.summary_idle_timeout_secs`).
    pub upstream_timeout_secs: u64,
    /// How long a response body may stay silent before it is cut (seconds). Codex itself
    /// waits 300 s.
    pub stream_idle_timeout_secs: u64,
    /// Upstream pool idle timeout (seconds), below the provider's own.
    pub pool_idle_timeout_secs: u64,
    /// How long a client has to send a request head (seconds). The same clock runs while a
    /// keep-alive connection waits for its next request, so it is also the client idle
    /// timeout. Cuts slowloris clients that trickle headers.
    pub header_read_timeout_secs: u64,
    /// How long a client has to send its request body (seconds).
    pub body_read_timeout_secs: u64,
    /// Most header lines a request may have.
    pub max_headers: usize,
    /// Most bytes a request head (request line and headers) may take; at least 8192.
    pub max_header_bytes: usize,
    /// Most client connections served at once; further ones wait in the listen backlog.
    pub max_connections: usize,
    /// Compaction routing (`[compact]`: `remote`, `compact_model`, per-model overrides).
    pub compact: CompactConfig,
    /// Body normalization (`[normalize]`: rules for a generic upstream, the
    /// `max_output_tokens` policy, learning); its profile is the proxy's.
    pub normalize: NormalizeConfig,
    /// Where `codex-oauth:NAME` logins live (`--state-dir`; default
    /// `$XDG_DATA_HOME/tower-responses`, else `~/.local/share/tower-responses`).
    pub state_dir: Option<PathBuf>,
    /// The authority owned logins are refreshed at (`--auth-base-url`; default
    /// `https://auth.openai.com`): an enterprise gateway, or a mock in tests.
    pub auth_base_url: Option<String>,
    /// How long one token call to the authority may take (seconds, default 30). A call that
    /// may have been sent and brought no answer is never repeated with the same token.
    pub auth_timeout_secs: u64,
    /// How the `tower-responses` binary writes its logs: `text` (default) or `json`. The
    /// library never installs a subscriber; this is read by the command line only.
    pub log_format: LogFormat,
    /// New sessions leave a credential once one of its usage windows passes this percent
    /// (default 95); sessions bound to it keep it, for their prompt cache, until the hard
    /// limit.
    pub soft_limit: f64,
    /// What the `x-codex-*` usage headers of a reply say: `pooled` (default: the pool's
    /// figures, the same as `GET /backend-api/wham/usage`) or `served` (the answering
    /// account's own, as the upstream sent them).
    pub usage_headers: UsageHeaders,
    /// Client WebSockets (`[websocket]`: `enabled`, `idle_timeout_secs`, `max_message_bytes`,
    /// `max_transcript_bytes`, `max_sockets`); see [`WebSocketLimits`].
    pub websocket: WebSocketLimits,
    /// Where the pool's state lives (`--state`, `TR_STATE`): `memory` (default, this process
    /// only) or `redis://HOST:PORT/DB` to share cooldowns, sessions, owners and refresh
    /// claims between replicas (feature `redis`).
    pub state: Option<String>,
    /// Prefix of every key in the shared state (`--state-prefix`; default `trs`).
    pub state_prefix: Option<String>,
}

/// What a reply's `x-codex-*` usage headers say.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UsageHeaders {
    /// The pool's figures: a client hears "exhausted" only when every account is.
    #[default]
    Pooled,
    /// The answering account's own figures, as the upstream sent them.
    Served,
}

/// The log line format of the `tower-responses` binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines (`tracing-subscriber`'s default format).
    #[default]
    Text,
    /// One JSON object per line, with the request's span (its id) in every line.
    Json,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8787)),
            upstream: "https://api.openai.com/v1".to_string(),
            profile_override: None,
            credentials: Vec::new(),
            strategy: Strategy::default(),
            client_keys: Vec::new(),
            allowed_origins: Vec::new(),
            body_limit: crate::body::DEFAULT_BODY_LIMIT,
            upstream_timeout_secs: 600,
            stream_idle_timeout_secs: 300,
            pool_idle_timeout_secs: 20,
            header_read_timeout_secs: 30,
            body_read_timeout_secs: 120,
            max_headers: 100,
            max_header_bytes: 64 * 1024,
            max_connections: 512,
            compact: CompactConfig::default(),
            normalize: NormalizeConfig::default(),
            state_dir: None,
            auth_base_url: None,
            auth_timeout_secs: 30,
            log_format: LogFormat::default(),
            soft_limit: crate::credentials::policy::DEFAULT_SOFT_LIMIT,
            usage_headers: UsageHeaders::default(),
            websocket: WebSocketLimits::default(),
            state: None,
            state_prefix: None,
        }
    }
}

/// The warning to print when a command-line flag carries a secret literally (not `env:NAME`,
/// `file:PATH` or `codex-auth:PATH`): every user of the machine can read a process's
/// arguments (`ps`, `/proc/PID/cmdline`).
///
/// ```
/// use tower_responses::proxy::command_line_secret_warning;
///
/// assert!(command_line_secret_warning("--credential", "sk-live-123").unwrap().contains("process list"));
/// assert!(command_line_secret_warning("--credential", "env:OPENAI_API_KEY").is_none());
/// assert!(command_line_secret_warning("--client-key", "file:/run/secrets/client").is_none());
/// ```
pub fn command_line_secret_warning(flag: &str, value: &str) -> Option<String> {
    match value.parse::<CredentialSource>() {
        Ok(CredentialSource::Literal(_)) => Some(format!(
            "warning: {flag} was given a secret on the command line, where other users of this \
             machine can read it in the process list; use {flag} env:NAME or {flag} file:PATH, \
             or the configuration file"
        )),
        _ => None,
    }
}

impl ProxyConfig {
    /// Parses a TOML configuration.
    pub fn from_toml_str(text: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError(format!("invalid configuration: {e}")))
    }

    /// Reads a TOML configuration file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("cannot read {}: {e}", path.display())))?;
        Self::from_toml_str(&text)
    }

    /// The upstream profile: the configured one, else the one the URL implies.
    pub fn profile(&self) -> Profile {
        self.profile_override
            .unwrap_or_else(|| Profile::from_base_url(&self.upstream))
    }

    /// The response-head timeout.
    pub fn upstream_timeout(&self) -> Duration {
        Duration::from_secs(self.upstream_timeout_secs)
    }

    /// The request-head (and client idle) timeout.
    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_secs(self.header_read_timeout_secs)
    }

    /// The request-body timeout.
    pub fn body_read_timeout(&self) -> Duration {
        Duration::from_secs(self.body_read_timeout_secs)
    }

    /// Where owned logins live and whom they are refreshed with.
    ///
    /// ```
    /// use tower_responses::proxy::ProxyConfig;
    /// let cfg = ProxyConfig::from_toml_str(r#"
    ///     state_dir = "/var/lib/tower-responses"
    ///     auth_base_url = "https://auth.example.internal/"
    /// "#).unwrap();
    /// let s = cfg.oauth_settings();
    /// assert_eq!(s.state_dir.to_str(), Some("/var/lib/tower-responses"));
    /// assert_eq!(s.auth_base_url, "https://auth.example.internal");
    /// ```
    pub fn oauth_settings(&self) -> OAuthSettings {
        OAuthSettings {
            state_dir: self.state_dir.clone().unwrap_or_else(default_state_dir),
            auth_base_url: self
                .auth_base_url
                .as_deref()
                .unwrap_or(DEFAULT_AUTH_BASE_URL)
                .trim_end_matches('/')
                .to_string(),
            refresh_timeout: Duration::from_secs(self.auth_timeout_secs.clamp(1, 600)),
            ..OAuthSettings::default()
        }
    }

    /// The pool's state store as configured: `None` for the in-memory default, a started
    /// `RedisState` for `redis://…` (it connects in the background: a replica starts while
    /// Redis is down, on its local view).
    ///
    /// ```
    /// use tower_responses::proxy::ProxyConfig;
    /// let cfg = ProxyConfig::from_toml_str(r#"state = "memory""#).unwrap();
    /// assert!(cfg.shared_state(None).unwrap().is_none());
    /// let bad = ProxyConfig::from_toml_str(r#"state = "postgres://db""#).unwrap();
    /// assert!(bad.shared_state(None).is_err());
    /// ```
    pub fn shared_state(
        &self,
        metrics: Option<crate::metrics::Metrics>,
    ) -> Result<Option<std::sync::Arc<dyn crate::credentials::PoolState>>, ConfigError> {
        let url = match self.state.as_deref().map(str::trim) {
            None | Some("") | Some("memory") => return Ok(None),
            Some(url) => url,
        };
        if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
            return Err(ConfigError(format!(
                "state: expected `memory` or redis://HOST:PORT/DB, got {url:?}"
            )));
        }
        #[cfg(feature = "redis")]
        {
            use crate::credentials::{RedisState, RedisStateConfig};
            let mut config = RedisStateConfig::new(url);
            if let Some(prefix) = self.state_prefix.as_deref().filter(|p| !p.is_empty()) {
                config = config.prefix(prefix);
            }
            let state = RedisState::start(config, metrics)
                .map_err(|e| ConfigError(format!("state: {e}")))?;
            Ok(Some(std::sync::Arc::new(state)))
        }
        #[cfg(not(feature = "redis"))]
        {
            let _ = metrics;
            Err(ConfigError(
                "state: this build has no Redis support; build with `--features redis`".into(),
            ))
        }
    }

    /// The silent-body timeout.
    pub fn stream_idle_timeout(&self) -> Duration {
        Duration::from_secs(self.stream_idle_timeout_secs)
    }
}
