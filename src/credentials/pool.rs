use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use super::state::{Cooldown, MemoryState, PoolState};
use super::{Credential, CredentialSource, LoadError};
use crate::classify::{CodexUsage, Failure, FailureClass};
use crate::metrics::Metrics;
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
}

/// One credential in the pool, with where it goes.
#[derive(Debug, Clone)]
pub struct PoolMember {
    /// Where it is loaded from (re-read when a `codex-auth:` file changes).
    pub source: CredentialSource,
    /// Its own upstream base URL, if it differs from the stack's.
    pub base_url: Option<String>,
    /// Its upstream's profile, if it differs.
    pub profile: Option<Profile>,
    /// Weight for [`Strategy::Weighted`] (default 1).
    pub weight: u32,
    /// Its label in logs and metrics; default: its kind and position, e.g. `key-1`.
    pub name: Option<String>,
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
        }
    }
}

/// Cooldown lengths where the upstream gave no time.
#[derive(Debug, Clone)]
pub struct CooldownPolicy {
    /// First backoff for a rate limit without a hint; doubles on repeats.
    pub rate_limit_floor: Duration,
    /// Cap of that backoff.
    pub rate_limit_max: Duration,
    /// Quota/billing exhaustion without a reset time.
    pub quota_default: Duration,
    /// First cooldown for overload / 5xx; doubles only on repeats.
    pub overload_floor: Duration,
    /// Cap of that.
    pub overload_max: Duration,
}

impl Default for CooldownPolicy {
    fn default() -> Self {
        CooldownPolicy {
            rate_limit_floor: Duration::from_secs(2),
            rate_limit_max: Duration::from_secs(120),
            quota_default: Duration::from_secs(60 * 60),
            overload_floor: Duration::from_secs(1),
            overload_max: Duration::from_secs(30),
        }
    }
}

pub(crate) struct Entry {
    pub(crate) label: Arc<str>,
    pub(crate) member: PoolMember,
    pub(crate) current: RwLock<Credential>,
    file_stamp: RwLock<Option<SystemTime>>,
}

impl Entry {
    pub(crate) fn credential(&self) -> Credential {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// A pool of credentials, their health, and the rules for choosing one.
///
/// ```
/// use tower_responses::credentials::{Pool, PoolMember, Strategy};
/// use tower_responses::classify::{Failure, FailureClass, RetryHint};
/// use std::time::{Duration, SystemTime};
///
/// let pool = Pool::new(vec![
///     PoolMember::new("sk-one-aaaaaaaaaaaaaaaaaaaa".parse().unwrap()),
///     PoolMember::new("sk-two-bbbbbbbbbbbbbbbbbbbb".parse().unwrap()),
/// ]).unwrap();
/// let first = pool.labels()[0].clone();
/// let mut quota = Failure::new(FailureClass::QuotaExhausted);
/// quota.retry = RetryHint { after: Some(Duration::from_secs(3600)), reset_at: None };
/// pool.record_failure(&first, &quota);
/// assert!(pool.cooldown_of(&first).is_some());
/// // The next pick skips the exhausted credential.
/// let next = pool.pick(&[], None, None).unwrap();
/// assert_ne!(&*next, &*first);
/// ```
pub struct Pool {
    pub(crate) entries: Vec<Entry>,
    state: Arc<dyn PoolState>,
    strategy: Strategy,
    policy: CooldownPolicy,
    cursor: AtomicUsize,
    metrics: Option<Metrics>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("credentials", &self.labels())
            .field("strategy", &self.strategy)
            .finish_non_exhaustive()
    }
}

fn file_stamp(source: &CredentialSource) -> Option<SystemTime> {
    source
        .path()
        .and_then(|p| std::fs::metadata(p).ok())
        .and_then(|m| m.modified().ok())
}

impl Pool {
    /// Loads every member now; fails on the first that cannot be loaded.
    pub fn new(members: Vec<PoolMember>) -> Result<Pool, LoadError> {
        let mut entries = Vec::with_capacity(members.len());
        for (i, member) in members.into_iter().enumerate() {
            let mut cred = member.source.load()?;
            // A configured name, else kind and position: never anything of the secret.
            let mut label: Arc<str> = match &member.name {
                Some(name) => Arc::from(name.as_str()),
                None => Arc::from(member.source.label_at(i + 1)),
            };
            // Two literal keys may share a label; keep labels unique.
            if entries.iter().any(|e: &Entry| e.label == label) {
                label = Arc::from(format!("{label}#{}", entries.len() + 1));
            }
            cred.label = label.to_string();
            entries.push(Entry {
                label,
                file_stamp: RwLock::new(file_stamp(&member.source)),
                member,
                current: RwLock::new(cred),
            });
        }
        Ok(Pool {
            entries,
            state: Arc::new(MemoryState::default()),
            strategy: Strategy::default(),
            policy: CooldownPolicy::default(),
            cursor: AtomicUsize::new(0),
            metrics: None,
        })
    }

    /// Uses another state store (shared between replicas).
    pub fn with_state(mut self, state: Arc<dyn PoolState>) -> Self {
        self.state = state;
        self
    }

    /// Sets the strategy.
    pub fn with_strategy(mut self, strategy: Strategy) -> Self {
        self.strategy = strategy;
        self
    }

    /// Sets the cooldown policy.
    pub fn with_policy(mut self, policy: CooldownPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Reports credential state into `metrics`.
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        for e in &self.entries {
            metrics.set(
                "tr_credential_healthy",
                "1 if the credential is in rotation, 0 while cooling.",
                &[("credential", &e.label)],
                1.0,
            );
        }
        self.metrics = Some(metrics);
        self
    }

    /// The state store.
    pub fn state(&self) -> &Arc<dyn PoolState> {
        &self.state
    }

    /// The credentials' labels, in configuration order.
    pub fn labels(&self) -> Vec<Arc<str>> {
        self.entries.iter().map(|e| e.label.clone()).collect()
    }

    /// How many credentials.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the pool is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub(crate) fn entry(&self, label: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| &*e.label == label)
    }

    /// The active cooldown of a credential, if any.
    pub fn cooldown_of(&self, label: &str) -> Option<Cooldown> {
        self.refresh_file(label);
        self.state
            .cooldown(label)
            .filter(|c| c.active(SystemTime::now()))
    }

    /// An operator puts a credential back in rotation.
    pub fn clear(&self, label: &str) {
        self.state.clear(label);
        self.set_health(label, true, None);
    }

    /// Re-reads a `codex-auth:` file that changed, and clears an auth cooldown (a new login).
    fn refresh_file(&self, label: &str) {
        let Some(entry) = self.entry(label) else {
            return;
        };
        if entry.member.source.path().is_none() {
            return;
        }
        let stamp = file_stamp(&entry.member.source);
        let old = *entry.file_stamp.read().unwrap_or_else(|p| p.into_inner());
        if stamp == old {
            return;
        }
        match entry.member.source.load() {
            Ok(mut cred) => {
                cred.label = entry.label.to_string();
                *entry.current.write().unwrap_or_else(|p| p.into_inner()) = cred;
                *entry.file_stamp.write().unwrap_or_else(|p| p.into_inner()) = stamp;
                if self
                    .state
                    .cooldown(label)
                    .is_some_and(|c| c.class == FailureClass::Auth)
                {
                    tracing::info!(
                        credential = label,
                        "auth file changed; credential back in rotation"
                    );
                    self.clear(label);
                }
            }
            Err(e) => {
                tracing::warn!(credential = label, error = %e, "auth file changed but cannot be read")
            }
        }
    }

    /// Picks a healthy credential not in `exclude`: the pinned one if given (healthy or not:
    /// the caller decides what a cooling pin means), else the session's bound one while it is
    /// healthy, else by the strategy.
    pub fn pick(
        &self,
        exclude: &[Arc<str>],
        pinned: Option<&str>,
        session: Option<&str>,
    ) -> Option<Arc<str>> {
        if let Some(pin) = pinned {
            return self.entry(pin).map(|e| e.label.clone());
        }
        let healthy: Vec<&Entry> = self
            .entries
            .iter()
            .filter(|e| !exclude.contains(&e.label) && self.cooldown_of(&e.label).is_none())
            .collect();
        if healthy.is_empty() {
            return None;
        }
        if let Some(session) = session {
            if let Some(bound) = self.state.affinity(session) {
                if let Some(e) = healthy.iter().find(|e| *e.label == *bound) {
                    return Some(e.label.clone());
                }
            }
        }
        let n = self.cursor.fetch_add(1, Ordering::Relaxed);
        let chosen = match self.strategy {
            Strategy::RoundRobin => {
                // Rotate over the whole pool so the order is stable when some are cooling.
                let start = n % self.entries.len();
                (0..self.entries.len())
                    .map(|i| &self.entries[(start + i) % self.entries.len()])
                    .find(|e| healthy.iter().any(|h| h.label == e.label))
                    .unwrap_or(healthy[0])
            }
            Strategy::FillFirst => healthy[0],
            Strategy::LeastUsed => healthy
                .iter()
                .min_by_key(|e| self.state.uses(&e.label))
                .copied()
                .unwrap_or(healthy[0]),
            Strategy::Random => healthy[random_below(n, healthy.len() as u64) as usize],
            Strategy::Weighted => {
                let total: u64 = healthy
                    .iter()
                    .map(|e| u64::from(e.member.weight.max(1)))
                    .sum();
                let mut roll = random_below(n, total);
                let mut pick = healthy[0];
                for e in &healthy {
                    let w = u64::from(e.member.weight.max(1));
                    if roll < w {
                        pick = e;
                        break;
                    }
                    roll -= w;
                }
                pick
            }
        };
        Some(chosen.label.clone())
    }

    /// Binds a session to a credential unless it is already bound (failover does not
    /// overwrite a binding: the session returns to its credential when that one recovers).
    pub fn bind_session(&self, session: &str, label: &str) {
        if self.state.affinity(session).is_none() {
            self.state.bind(session, label);
        }
    }

    /// Counts a use.
    pub fn record_use(&self, label: &str) {
        self.state.record_use(label);
    }

    /// Learns from a successful answer's headers: Codex usage windows at 100% cool the
    /// credential before it fails; a success clears repeat-failure strikes.
    pub fn record_success(&self, label: &str, headers: &http::HeaderMap) {
        if let Some(until) = CodexUsage::from_headers(headers).and_then(|u| u.exhausted_until()) {
            if until > SystemTime::now() {
                self.cool(
                    label,
                    Cooldown {
                        until: Some(until),
                        class: FailureClass::QuotaExhausted,
                        reason: "usage window at 100% (x-codex usage headers)".into(),
                    },
                );
            }
        }
    }

    /// Cools a credential as the failure class calls for; returns the cooldown if one was set.
    pub fn record_failure(&self, label: &str, failure: &Failure) -> Option<Cooldown> {
        if !failure.cools_credential() {
            // A route, model, request or connection fault: the key is fine.
            return None;
        }
        let now = SystemTime::now();
        let hinted = failure.retry.until(now);
        let code = failure.code.as_deref().unwrap_or(failure.class.as_str());
        let cooldown = match failure.class {
            FailureClass::RateLimited => {
                let strikes = self.state.strike(label, failure.class);
                let until = hinted.unwrap_or_else(|| {
                    now + backoff(
                        self.policy.rate_limit_floor,
                        self.policy.rate_limit_max,
                        strikes,
                    )
                });
                Some(Cooldown {
                    until: Some(until),
                    class: failure.class,
                    reason: format!("{code}{}", hint_note(hinted.is_some())),
                })
            }
            FailureClass::QuotaExhausted => {
                let until = hinted.unwrap_or(now + self.policy.quota_default);
                Some(Cooldown {
                    until: Some(until),
                    class: failure.class,
                    reason: format!("{code}{}", hint_note(hinted.is_some())),
                })
            }
            FailureClass::Auth => Some(Cooldown {
                until: None,
                class: failure.class,
                reason: format!("{code}: out until its auth file changes or an operator clears it"),
            }),
            FailureClass::Overloaded | FailureClass::Transient => {
                let strikes = self.state.strike(label, failure.class);
                let until = hinted.unwrap_or_else(|| {
                    now + backoff(
                        self.policy.overload_floor,
                        self.policy.overload_max,
                        strikes,
                    )
                });
                Some(Cooldown {
                    until: Some(until),
                    class: failure.class,
                    reason: format!("{code}{}", hint_note(hinted.is_some())),
                })
            }
            // The route, the model, the connection or the request is at fault, not the key.
            _ => None,
        };
        if let Some(c) = &cooldown {
            self.cool(label, c.clone());
        }
        cooldown
    }

    fn cool(&self, label: &str, cooldown: Cooldown) {
        let secs = cooldown
            .until
            .and_then(|u| u.duration_since(SystemTime::now()).ok())
            .map(|d| d.as_secs_f64());
        tracing::info!(
            credential = label,
            class = cooldown.class.as_str(),
            reason = %cooldown.reason,
            cooling_secs = secs.unwrap_or(f64::INFINITY),
            "credential cooling"
        );
        self.set_health(label, false, Some(&cooldown));
        self.state.set_cooldown(label, cooldown);
    }

    fn set_health(&self, label: &str, healthy: bool, cooldown: Option<&Cooldown>) {
        let Some(m) = &self.metrics else { return };
        m.set(
            "tr_credential_healthy",
            "1 if the credential is in rotation, 0 while cooling.",
            &[("credential", label)],
            if healthy { 1.0 } else { 0.0 },
        );
        m.remove_matching("tr_credential_cooldown_until_seconds", "credential", label);
        if let Some(c) = cooldown {
            let until = c
                .until
                .and_then(|u| u.duration_since(SystemTime::UNIX_EPOCH).ok())
                .map_or(f64::INFINITY, |d| d.as_secs_f64());
            m.set(
                "tr_credential_cooldown_until_seconds",
                "Unix time a cooling credential returns (+Inf: until its auth changes), with the reason.",
                &[("credential", label), ("class", c.class.as_str())],
                until,
            );
            m.inc(
                "tr_credential_cooldowns_total",
                "Cooldowns started, by credential and class.",
                &[("credential", label), ("class", c.class.as_str())],
            );
        }
    }

    /// The earliest time any credential returns, and whether every cooldown is quota.
    pub fn earliest_return(&self) -> (Option<SystemTime>, bool) {
        let now = SystemTime::now();
        let cools: Vec<Cooldown> = self
            .entries
            .iter()
            .filter_map(|e| self.state.cooldown(&e.label).filter(|c| c.active(now)))
            .collect();
        let all_quota = !cools.is_empty()
            && cools
                .iter()
                .all(|c| c.class == FailureClass::QuotaExhausted);
        (cools.iter().filter_map(|c| c.until).min(), all_quota)
    }
}

fn hint_note(hinted: bool) -> &'static str {
    if hinted {
        " (time from the upstream's reset signal)"
    } else {
        " (no reset signal; default backoff)"
    }
}

fn backoff(floor: Duration, max: Duration, strikes: u32) -> Duration {
    floor
        .saturating_mul(1u32 << strikes.saturating_sub(1).min(16))
        .min(max)
}

/// A cheap, well-spread pseudo-random number below `n` (SplitMix64 of a counter and the clock):
/// choosing a credential needs no cryptographic randomness.
fn random_below(counter: usize, n: u64) -> u64 {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() as u64);
    let mut z = (counter as u64)
        .wrapping_add(nanos)
        .wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    if n == 0 { 0 } else { z % n }
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
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(keys: &[&str], strategy: Strategy) -> Pool {
        Pool::new(
            keys.iter()
                .map(|k| PoolMember::new(k.parse().unwrap()))
                .collect(),
        )
        .unwrap()
        .with_strategy(strategy)
    }

    const KEYS: [&str; 3] = [
        "sk-unit-aaaaaaaaaaaaaaaa-AAAA",
        "sk-unit-bbbbbbbbbbbbbbbb-BBBB",
        "sk-unit-cccccccccccccccc-CCCC",
    ];

    fn picks(p: &Pool, n: usize) -> Vec<String> {
        (0..n)
            .map(|_| p.pick(&[], None, None).unwrap().to_string())
            .collect()
    }

    #[test]
    fn strategies_choose_as_documented() {
        let rr = pool(&KEYS, Strategy::RoundRobin);
        assert_eq!(
            picks(&rr, 3)
                .iter()
                .collect::<std::collections::HashSet<_>>()
                .len(),
            3
        );

        let ff = pool(&KEYS, Strategy::FillFirst);
        assert!(picks(&ff, 5).iter().all(|l| l == "key-1"));

        let lu = pool(&KEYS, Strategy::LeastUsed);
        lu.record_use("key-1");
        lu.record_use("key-2");
        assert_eq!(&*lu.pick(&[], None, None).unwrap(), "key-3");

        let mut members: Vec<PoolMember> = KEYS
            .iter()
            .map(|k| PoolMember::new(k.parse().unwrap()))
            .collect();
        members[0].weight = 8;
        let w = Pool::new(members)
            .unwrap()
            .with_strategy(Strategy::Weighted);
        let got = picks(&w, 1000);
        let heavy = got.iter().filter(|l| *l == "key-1").count();
        assert!(
            heavy > 650,
            "weight 8 of 10 should take most picks, took {heavy}"
        );

        let r = pool(&KEYS, Strategy::Random);
        assert_eq!(
            picks(&r, 200)
                .iter()
                .collect::<std::collections::HashSet<_>>()
                .len(),
            3
        );
    }

    #[test]
    fn a_pin_overrides_and_exclusions_and_cooldowns_are_skipped() {
        let p = pool(&KEYS, Strategy::FillFirst);
        assert_eq!(&*p.pick(&[], Some("key-3"), None).unwrap(), "key-3");
        let a: Arc<str> = Arc::from("key-1");
        assert_eq!(&*p.pick(&[a], None, None).unwrap(), "key-2");
        p.record_failure("key-2", &Failure::new(FailureClass::Overloaded));
        let a: Arc<str> = Arc::from("key-1");
        assert_eq!(&*p.pick(&[a], None, None).unwrap(), "key-3");
    }

    #[test]
    fn failover_does_not_overwrite_a_session_binding() {
        let p = pool(&KEYS, Strategy::RoundRobin);
        p.bind_session("s", "key-2");
        assert_eq!(&*p.pick(&[], None, Some("s")).unwrap(), "key-2");
        p.record_failure("key-2", &Failure::new(FailureClass::RateLimited));
        let other = p.pick(&[], None, Some("s")).unwrap();
        assert_ne!(&*other, "key-2");
        p.bind_session("s", &other);
        assert_eq!(p.state().affinity("s").as_deref(), Some("key-2"));
    }

    #[test]
    fn cooldowns_follow_the_class() {
        let p = pool(&KEYS, Strategy::RoundRobin);
        for class in [
            FailureClass::ModelUnsupported,
            FailureClass::RouteNotFound,
            FailureClass::StaleConnection,
            FailureClass::InvalidRequest,
            FailureClass::ContentPolicy,
            FailureClass::ContextLength,
        ] {
            assert!(
                p.record_failure("key-1", &Failure::new(class)).is_none(),
                "{class:?}"
            );
        }
        // Overload: short, and longer only on repeats.
        let first = p
            .record_failure("key-2", &Failure::new(FailureClass::Overloaded))
            .unwrap();
        let second = p
            .record_failure("key-2", &Failure::new(FailureClass::Overloaded))
            .unwrap();
        let now = SystemTime::now();
        let d1 = first.until.unwrap().duration_since(now).unwrap_or_default();
        let d2 = second
            .until
            .unwrap()
            .duration_since(now)
            .unwrap_or_default();
        assert!(
            d1 <= Duration::from_secs(1) && d2 > d1 && d2 <= Duration::from_secs(2),
            "{d1:?} {d2:?}"
        );
        // A transport failure is never the credential's fault.
        assert!(
            p.record_failure("key-3", &Failure::transport(false, "reset"))
                .is_none()
        );
    }

    #[test]
    fn usage_headers_at_100_percent_cool_before_failure() {
        let p = pool(&KEYS, Strategy::RoundRobin);
        let reset = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 7 * 24 * 3600;
        let mut h = http::HeaderMap::new();
        h.insert("x-codex-primary-used-percent", "40".parse().unwrap());
        h.insert("x-codex-primary-window-minutes", "300".parse().unwrap());
        h.insert(
            "x-codex-primary-reset-at",
            (reset - 6 * 24 * 3600).to_string().parse().unwrap(),
        );
        h.insert("x-codex-secondary-used-percent", "100".parse().unwrap());
        h.insert("x-codex-secondary-window-minutes", "10080".parse().unwrap());
        h.insert(
            "x-codex-secondary-reset-at",
            reset.to_string().parse().unwrap(),
        );
        p.record_success("key-1", &h);
        let c = p.cooldown_of("key-1").expect("cooling");
        let until = c
            .until
            .unwrap()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert_eq!(
            until, reset,
            "the weekly window's reset, not the 5-hour one"
        );
    }

    #[test]
    fn an_auth_cooldown_ends_when_the_auth_file_changes() {
        let dir = std::env::temp_dir().join(format!("tr-pool-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("auth.json");
        std::fs::write(
            &path,
            r#"{"tokens":{"access_token":"old-token","account_id":"acct"}}"#,
        )
        .unwrap();
        let p = Pool::new(vec![PoolMember::new(
            format!("codex-auth:{}", path.display()).parse().unwrap(),
        )])
        .unwrap();
        let label = p.labels()[0].to_string();
        p.record_failure(&label, &Failure::new(FailureClass::Auth));
        assert!(
            p.pick(&[], None, None).is_none(),
            "out until the file changes"
        );
        // A new login rewrites the file (a later mtime).
        let later = std::time::SystemTime::now() + Duration::from_secs(5);
        std::fs::write(
            &path,
            r#"{"tokens":{"access_token":"new-token","account_id":"acct"}}"#,
        )
        .unwrap();
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(later)
            .unwrap();
        assert_eq!(p.pick(&[], None, None).as_deref(), Some(label.as_str()));
        assert_eq!(
            p.entry(&label).unwrap().credential().token.expose(),
            "new-token"
        );
        std::fs::remove_dir_all(&dir).ok();
    }
}
