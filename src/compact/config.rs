use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

/// Whether compaction requests are sent to the upstream's own compaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RemotePolicy {
    /// Remote when the profile can compact and the model is not known to be refused (listed
    /// in [`CompactConfig::remote_models`], or probed when
    /// [`CompactConfig::probe_unknown_models`]); refusals are remembered.
    #[default]
    Auto,
    /// Always try the upstream first, whatever the profile and model; a refusal still falls
    /// back (and is not remembered).
    Always,
    /// Never ask the upstream to compact: always summarise locally.
    Never,
}

impl RemotePolicy {
    /// The policy's name as written in configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            RemotePolicy::Auto => "auto",
            RemotePolicy::Always => "always",
            RemotePolicy::Never => "never",
        }
    }
}

/// Settings for one model, overriding the global ones.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelOverride {
    /// The policy for this model.
    pub remote: Option<RemotePolicy>,
    /// The model that compacts for this model remotely.
    pub compact_model: Option<String>,
}

/// The configuration of [`CompactRouteLayer`](super::CompactRouteLayer); see the
/// [module docs](super) for the TOML shape.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CompactConfig {
    /// The policy for models without an override. Default `auto`.
    pub remote: RemotePolicy,
    /// A model to compact with remotely when the session's model is refused (or skipped); the
    /// local summary still uses the session's model, which the upstream is known to serve.
    pub compact_model: Option<String>,
    /// Models known to support remote compaction (`auto`), matched case-insensitively; a
    /// trailing `*` matches any suffix.
    pub remote_models: Vec<String>,
    /// In `auto`, whether a model in neither list is tried remotely once (and remembered if
    /// refused) rather than summarised locally at once. Default `true`: a new model that the
    /// upstream does compact keeps remote compaction.
    pub probe_unknown_models: bool,
    /// How long a refused model is remembered, in seconds. Default 6 hours.
    pub unsupported_ttl_secs: u64,
    /// Per-model overrides, by exact model name.
    pub models: BTreeMap<String, ModelOverride>,
    /// Budget of the most recent user messages kept in a v1 local answer, in tokens
    /// (estimated at 4 bytes each). Default 20 000, as the Codex CLI keeps.
    pub keep_user_tokens: usize,
    /// The summarisation request sent as the last user message (default:
    /// [`DEFAULT_SUMMARY_PROMPT`]).
    pub summary_prompt: Option<String>,
    /// Longest summary kept, in bytes; a longer one is cut (on a character boundary).
    pub max_summary_bytes: usize,
    /// Longest silence of the upstream while it writes a local summary, in seconds; a summary
    /// that keeps coming is never cut. Default 300.
    pub summary_idle_timeout_secs: u64,
}

/// The default summarisation request of a local compaction.
pub const DEFAULT_SUMMARY_PROMPT: &str = "You are performing a context checkpoint. Write a \
handoff summary of the conversation so far for another model that will continue the work \
without seeing it. Include: the user's objective and explicit instructions; decisions made and \
why; what was done (files, functions, commands and their results); what was tried and failed \
or must be avoided; the current state; and the concrete next steps. Be specific and concise. \
Reply with the summary only; do not call tools.";

/// The models the layer expects to support remote compaction by default: the GPT-5 family up
/// to 5.4, codex variants included. Newer models are probed (see
/// [`CompactConfig::probe_unknown_models`]).
pub const DEFAULT_REMOTE_MODELS: &[&str] = &[
    "gpt-5",
    "gpt-5-*",
    "gpt-5.1",
    "gpt-5.1-*",
    "gpt-5.2",
    "gpt-5.2-*",
    "gpt-5.3",
    "gpt-5.3-*",
    "gpt-5.4",
    "gpt-5.4-*",
    "codex-mini-latest",
];

impl Default for CompactConfig {
    fn default() -> Self {
        CompactConfig {
            remote: RemotePolicy::Auto,
            compact_model: None,
            remote_models: DEFAULT_REMOTE_MODELS
                .iter()
                .map(|s| s.to_string())
                .collect(),
            probe_unknown_models: true,
            unsupported_ttl_secs: 6 * 60 * 60,
            models: BTreeMap::new(),
            keep_user_tokens: 20_000,
            summary_prompt: None,
            max_summary_bytes: 256 * 1024,
            summary_idle_timeout_secs: 300,
        }
    }
}

impl CompactConfig {
    /// [`summary_idle_timeout_secs`](Self::summary_idle_timeout_secs) as a duration.
    pub fn summary_idle_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.summary_idle_timeout_secs)
    }

    /// The policy that applies to `model`.
    pub fn policy_for(&self, model: &str) -> RemotePolicy {
        self.models
            .get(model)
            .and_then(|o| o.remote)
            .unwrap_or(self.remote)
    }

    /// The remote compact model that applies to `model`, if any.
    pub fn compact_model_for(&self, model: &str) -> Option<&str> {
        self.models
            .get(model)
            .and_then(|o| o.compact_model.as_deref())
            .or(self.compact_model.as_deref())
    }

    /// Whether `model` is in [`remote_models`](Self::remote_models).
    pub fn is_listed(&self, model: &str) -> bool {
        self.remote_models.iter().any(|p| pattern_matches(p, model))
    }

    pub(crate) fn unsupported_ttl(&self) -> Duration {
        Duration::from_secs(self.unsupported_ttl_secs)
    }

    pub(crate) fn summary_prompt(&self) -> &str {
        self.summary_prompt
            .as_deref()
            .unwrap_or(DEFAULT_SUMMARY_PROMPT)
    }
}

fn pattern_matches(pattern: &str, model: &str) -> bool {
    let (pattern, model) = (pattern.to_ascii_lowercase(), model.to_ascii_lowercase());
    match pattern.strip_suffix('*') {
        Some(prefix) => model.starts_with(prefix),
        None => pattern == model,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_list_gpt5_up_to_5_4() {
        let c = CompactConfig::default();
        for m in [
            "gpt-5",
            "gpt-5-codex",
            "gpt-5.1-codex-max",
            "GPT-5.4",
            "gpt-5.4-mini",
        ] {
            assert!(c.is_listed(m), "{m}");
        }
        for m in ["gpt-5.5", "gpt-5.10", "gpt-4.1", "o3"] {
            assert!(!c.is_listed(m), "{m}");
        }
    }

    #[test]
    fn overrides_win() {
        let c: CompactConfig = serde_json::from_value(serde_json::json!({
            "remote": "always",
            "compact_model": "gpt-5.4",
            "models": {"gpt-5.5": {"remote": "never"}, "x": {"compact_model": "y"}},
        }))
        .unwrap();
        assert_eq!(c.policy_for("gpt-5.5"), RemotePolicy::Never);
        assert_eq!(c.policy_for("x"), RemotePolicy::Always);
        assert_eq!(c.compact_model_for("x"), Some("y"));
        assert_eq!(c.compact_model_for("gpt-5.5"), Some("gpt-5.4"));
        assert!(serde_json::from_str::<CompactConfig>(r#"{"remot":"auto"}"#).is_err());
    }
}
