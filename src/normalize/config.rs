use std::time::Duration;

use serde::Deserialize;

use super::rule::{Rule, codex_rules};
use crate::profile::Profile;

/// What to do with a client's `max_output_tokens`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TokenCapPolicy {
    /// Send it upstream as it is.
    Pass,
    /// Remove it; the client's spend cap is lost.
    Strip,
    /// Answer 400 (`param: "max_output_tokens"`) without calling the upstream.
    Reject,
    /// Remove it upstream and enforce it on the stream coming back: once the estimated visible
    /// output passes the cap, the stream ends with `response.incomplete`
    /// (`incomplete_details.reason = "max_output_tokens"`).
    Enforce,
}

/// How [`BodyNormalizeLayer`](super::BodyNormalizeLayer) rewrites bodies.
///
/// Deserialises from the proxy's `[normalize]` table (see the [module docs](super)); every
/// key is optional.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NormalizeConfig {
    /// The profile when the request carries no [`Profile`] extension. Default `generic`.
    pub profile: Profile,
    /// The rules of the `generic` profile, applied in order. Default none.
    pub rules: Vec<Rule>,
    /// The `max_output_tokens` policy for every profile but `openai` (which passes bodies
    /// as they are). `None`: the profile's default, `enforce` for `chatgpt-codex`, `pass`
    /// for `generic`.
    pub max_output_tokens: Option<TokenCapPolicy>,
    /// Learn from `400 Unsupported parameter: X` answers (retry once without X and remember
    /// it). Default `true`.
    pub learn: bool,
    /// How long a learned parameter stays stripped, in seconds. Default one hour.
    #[serde(rename = "learn_ttl_secs", with = "secs")]
    pub learn_ttl: Duration,
    /// Most bytes of upstream stream held while folding it into one JSON answer for a
    /// `stream:false` client. Default 16 MiB.
    pub max_buffered: usize,
    /// Most bytes of a 400 answer read to look for `Unsupported parameter`. Default 64 KiB.
    pub max_error_body: usize,
    /// Longest silence of the upstream while a `stream:false` answer is folded, in seconds;
    /// a long answer that keeps coming is never cut. Default 300 (what Codex waits).
    #[serde(rename = "fold_idle_timeout_secs", with = "secs")]
    pub fold_idle_timeout: Duration,
}

mod secs {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_secs(u64::deserialize(d)?))
    }
}

impl Default for NormalizeConfig {
    fn default() -> Self {
        NormalizeConfig {
            profile: Profile::Generic,
            rules: Vec::new(),
            max_output_tokens: None,
            learn: true,
            learn_ttl: Duration::from_secs(3600),
            max_buffered: 16 * 1024 * 1024,
            max_error_body: 64 * 1024,
            fold_idle_timeout: Duration::from_secs(300),
        }
    }
}

impl NormalizeConfig {
    /// The defaults with this profile.
    pub fn for_profile(profile: Profile) -> Self {
        NormalizeConfig {
            profile,
            ..Self::default()
        }
    }

    /// The rules a profile applies.
    pub fn rules_for(&self, profile: Profile) -> Vec<Rule> {
        match profile {
            Profile::Openai => Vec::new(),
            Profile::ChatgptCodex => codex_rules(),
            Profile::Generic => self.rules.clone(),
        }
    }

    /// The `max_output_tokens` policy a profile applies.
    pub fn cap_policy(&self, profile: Profile) -> TokenCapPolicy {
        match (profile, self.max_output_tokens) {
            (Profile::Openai, _) => TokenCapPolicy::Pass,
            (_, Some(p)) => p,
            (Profile::ChatgptCodex, None) => TokenCapPolicy::Enforce,
            (Profile::Generic, None) => TokenCapPolicy::Pass,
        }
    }
}
