//! The pool's members: where each credential comes from and goes, and how one is chosen.

use super::super::{CredentialSource, LoadError};
use super::Reserve;
use crate::profile::Profile;

/// How the pool picks among healthy credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Each in turn.
    #[default]
    RoundRobin,
    /// The first healthy one, so the others stay fresh for when it runs out.
    FillFirst,
    /// The one used least so far.
    LeastUsed,
    /// Any, at random.
    Random,
    /// At random, in proportion to each credential's weight.
    Weighted,
    /// The one with the most quota left in its tightest usage window (ties: in turn), so
    /// accounts wear down evenly and none hits its wall while another sits idle.
    Headroom,
}

impl Strategy {
    /// Its name in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::RoundRobin => "round_robin",
            Strategy::FillFirst => "fill_first",
            Strategy::LeastUsed => "least_used",
            Strategy::Random => "random",
            Strategy::Weighted => "weighted",
            Strategy::Headroom => "headroom",
        }
    }
}

/// One credential in the pool, with where it goes.
#[derive(Debug, Clone)]
pub struct PoolMember {
    /// Where it is loaded from (re-read when a `codex-auth:` file changes).
    pub source: CredentialSource,
    /// Its own upstream base URL, if it differs from the stack's.
    pub base_url: Option<String>,
    /// Its upstream's profile, if it differs. Unset with a `base_url`, it is the profile of
    /// that URL (a platform key beside Codex logins must not get the Codex rules).
    pub profile: Option<Profile>,
    /// Weight for [`Strategy::Weighted`] (default 1).
    pub weight: u32,
    /// Its label in logs and metrics; default: its kind and position, e.g. `key-1`.
    pub name: Option<String>,
    /// What of its usage windows it keeps back: once reached, it is out of rotation while
    /// others have quota, and the last resort when none has (`reserve = { weekly = 30 }`).
    pub reserve: Option<Reserve>,
}

impl PoolMember {
    /// A member with no overrides and weight 1.
    pub fn new(source: CredentialSource) -> Self {
        PoolMember {
            source,
            base_url: None,
            profile: None,
            weight: 1,
            name: None,
            reserve: None,
        }
    }
}

impl std::str::FromStr for PoolMember {
    type Err = LoadError;

    /// A member from its source alone (`sk-...`, `env:NAME`, `codex-auth:PATH`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse().map(PoolMember::new)
    }
}

/// In TOML a member is either its source as a string, or a table:
/// `{ source = "codex-auth:~/.codex/auth.json", base_url = "...", profile = "chatgpt-codex", weight = 2, name = "alice" }`.
impl<'de> serde::Deserialize<'de> for PoolMember {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Table {
            source: CredentialSource,
            base_url: Option<String>,
            profile: Option<Profile>,
            #[serde(default = "one")]
            weight: u32,
            name: Option<String>,
            reserve: Option<Reserve>,
        }
        fn one() -> u32 {
            1
        }
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Form {
            Source(CredentialSource),
            Table(Table),
        }
        Ok(match Form::deserialize(d)? {
            Form::Source(source) => PoolMember::new(source),
            Form::Table(t) => PoolMember {
                source: t.source,
                base_url: t.base_url,
                profile: t.profile,
                weight: t.weight,
                name: t.name.filter(|n| !n.trim().is_empty()),
                reserve: t.reserve,
            },
        })
    }
}
