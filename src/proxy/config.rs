use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::compact::CompactConfig;
use crate::credentials::{PoolMember, Secret, Strategy};
pub use crate::error::ConfigError;
use crate::normalize::NormalizeConfig;
use crate::profile::Profile;

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
    /// source string or a table with its own `base_url`, `profile` and `weight`.
    pub credentials: Vec<PoolMember>,
    /// How a credential is chosen: `round_robin`, `fill_first`, `least_used`, `random`,
    /// `weighted`.
    pub strategy: Strategy,
    /// Inbound bearer keys. Without any, only loopback clients are served.
    pub client_keys: Vec<Secret>,
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
    /// Compaction routing (`[compact]`: `remote`, `compact_model`, per-model overrides).
    pub compact: CompactConfig,
    /// Body normalization (`[normalize]`: rules for a generic upstream, the
    /// `max_output_tokens` policy, learning); its profile is the proxy's.
    pub normalize: NormalizeConfig,
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
            body_limit: crate::body::DEFAULT_BODY_LIMIT,
            upstream_timeout_secs: 600,
            stream_idle_timeout_secs: 300,
            pool_idle_timeout_secs: 20,
            compact: CompactConfig::default(),
            normalize: NormalizeConfig::default(),
        }
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

    /// The silent-body timeout.
    pub fn stream_idle_timeout(&self) -> Duration {
        Duration::from_secs(self.stream_idle_timeout_secs)
    }
}
