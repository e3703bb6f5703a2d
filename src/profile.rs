//! Which kind of upstream a request goes to.
//!
//! The ChatGPT Codex backend accepts a narrower request shape than the OpenAI platform, and
//! OpenAI-compatible providers differ again; layers that shape requests or decide on routes
//! read the profile instead of guessing from URLs themselves.

use std::fmt;
use std::str::FromStr;

/// The upstream's kind.
///
/// ```
/// use tower_responses::profile::Profile;
///
/// assert_eq!(Profile::from_base_url("https://chatgpt.com/backend-api/codex"), Profile::ChatgptCodex);
/// assert_eq!(Profile::from_base_url("https://api.openai.com/v1"), Profile::Openai);
/// assert_eq!(Profile::from_base_url("http://127.0.0.1:8080/v1"), Profile::Generic);
/// assert_eq!("chatgpt-codex".parse::<Profile>().unwrap(), Profile::ChatgptCodex);
/// ```
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Deserialize, serde::Serialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Profile {
    /// The OpenAI platform (`https://api.openai.com/v1`): bodies pass as they are.
    Openai,
    /// The ChatGPT Codex backend (`https://chatgpt.com/backend-api/codex`): strict bodies,
    /// SSE only, no `/responses/compact`.
    ChatgptCodex,
    /// Any other OpenAI-compatible provider.
    #[default]
    Generic,
}

impl Profile {
    /// The profile a base URL implies: the ChatGPT backend by its `/backend-api/codex` path on
    /// chatgpt.com, the platform by `api.openai.com`, anything else generic.
    pub fn from_base_url(url: &str) -> Profile {
        let lower = url.to_ascii_lowercase();
        let host = lower
            .split_once("://")
            .map_or(lower.as_str(), |(_, rest)| rest)
            .split(['/', '?'])
            .next()
            .unwrap_or("");
        let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
        let host = host.split(':').next().unwrap_or(host);
        if (host == "chatgpt.com" || host.ends_with(".chatgpt.com"))
            && lower.contains("/backend-api/codex")
        {
            Profile::ChatgptCodex
        } else if host == "api.openai.com" {
            Profile::Openai
        } else {
            Profile::Generic
        }
    }

    /// The profile's name as written in configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Profile::Openai => "openai",
            Profile::ChatgptCodex => "chatgpt-codex",
            Profile::Generic => "generic",
        }
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown profile name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownProfile(pub String);

impl fmt::Display for UnknownProfile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown profile `{}` (expected openai, chatgpt-codex or generic)",
            self.0
        )
    }
}

impl std::error::Error for UnknownProfile {}

impl FromStr for Profile {
    type Err = UnknownProfile;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "openai" => Ok(Profile::Openai),
            "chatgpt-codex" | "chatgpt_codex" | "codex" => Ok(Profile::ChatgptCodex),
            "generic" => Ok(Profile::Generic),
            _ => Err(UnknownProfile(s.to_string())),
        }
    }
}
