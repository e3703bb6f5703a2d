use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use super::oauth::{Logins, OAuthSettings, OwnedLogin, RefreshTrigger};
use super::policy::{self, KeyKind, Readiness, Renewal, Reserve, Standing, TokenState};
use super::state::{Cooldown, MemoryState, PoolState, SessionBinding};
use super::usage::{CredentialUsage, PooledWindow};
use super::{Credential, CredentialHeaders, CredentialSource, LoadError};
use crate::classify::{CodexUsage, Failure, FailureClass};
use crate::metrics::Metrics;
use crate::profile::Profile;

pub use super::policy::CooldownPolicy;
pub use member::{PoolMember, Strategy};

use file_watch::{FILE_CHECK_EVERY, FileWatch, file_stamp, reload_file};

mod file_watch;
mod member;
#[cfg(test)]
mod tests;

/// How long the other requests keep away from a key while one request probes it.
const PROBE_WINDOW: Duration = Duration::from_secs(30);

/// The reason of the short cooldown that keeps other requests away from a probed key.
const PROBE_REASON: &str = "probing after an auth cooldown";

pub(crate) struct Entry {
    pub(crate) label: Arc<str>,
    pub(crate) member: PoolMember,
    pub(crate) kind: KeyKind,
    current: Arc<RwLock<Current>>,
    file: Option<Arc<FileWatch>>,
    /// For a `codex-oauth:` login: its tokens and refreshing.
    owned: Option<Arc<OwnedLogin>>,
}

impl Entry {
    pub(crate) fn credential(&self) -> Credential {
        self.current().credential.clone()
    }

    /// [`Credential::apply`] of the current credential, with its header values built when
    /// it was loaded instead of on each attempt.
    pub(crate) fn apply(&self, headers: &mut http::HeaderMap) {
        self.current().headers.apply(headers);
    }

    fn current(&self) -> std::sync::RwLockReadGuard<'_, Current> {
        self.current.read().unwrap_or_else(|p| p.into_inner())
    }
}

/// A member's credential as it is now (a refresh or a changed file replaces it), with its
/// header values.
pub(super) struct Current {
    credential: Credential,
    headers: CredentialHeaders,
}

impl From<Credential> for Current {
    fn from(credential: Credential) -> Self {
        Current {
            headers: CredentialHeaders::of(&credential),
            credential,
        }
    }
}

/// What a pick must respect.
#[derive(Debug, Clone, Copy, Default)]
pub struct PickRequest<'a> {
    /// Credentials already tried for this request.
    pub exclude: &'a [Arc<str>],
    /// The request must be served by this one (healthy or not: the caller decides what a
    /// cooling pin means).
    pub pinned: Option<&'a str>,
    /// The request's session key.
    pub session: Option<&'a str>,
    /// The request is anchored (`previous_response_id`) to an owner nobody knows: members on
    /// the `chatgpt-codex` profile store nothing, so they are picked only when no other
    /// member is left.
    pub anchored: bool,
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
    default_profile: Option<Profile>,
    cursor: AtomicUsize,
    metrics: Option<Metrics>,
    /// Each credential's last reported usage windows, by label.
    usage: Mutex<HashMap<Arc<str>, CredentialUsage>>,
    /// New sessions leave a credential once a window passes this percent.
    soft_limit: f64,
}

/// Where cooldowns go and are reported: what a refresh running beside the requests needs.
#[derive(Clone)]
struct Health {
    state: Arc<dyn PoolState>,
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

impl Pool {
    /// Loads every member now; fails on the first that cannot be loaded. `codex-oauth:`
    /// logins come from the default state directory and the real authority; see
    /// [`Pool::with_logins`].
    pub fn new(members: Vec<PoolMember>) -> Result<Pool, LoadError> {
        Self::with_logins(members, OAuthSettings::default())
    }

    /// Loads every member now, `codex-oauth:` logins from `logins`' state directory, to be
    /// refreshed at its authority; fails on the first that cannot be loaded.
    pub fn with_logins(members: Vec<PoolMember>, logins: OAuthSettings) -> Result<Pool, LoadError> {
        let mut shared_logins: Option<Arc<Logins>> = None;
        let mut logins = Some(logins);
        let mut entries = Vec::with_capacity(members.len());
        for (i, mut member) in members.into_iter().enumerate() {
            let owned = match &member.source {
                CredentialSource::CodexOAuth(name) => {
                    let shared = match (&shared_logins, logins.take()) {
                        (Some(l), _) => l.clone(),
                        (None, settings) => {
                            let l = Arc::new(Logins::new(settings.unwrap_or_default()));
                            shared_logins = Some(l.clone());
                            l
                        }
                    };
                    Some(Arc::new(OwnedLogin::load(name, shared)?))
                }
                _ => None,
            };
            let mut cred = match &owned {
                Some(o) => o.credential(""),
                None => member.source.load()?,
            };
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
            if member.profile.is_none() {
                member.profile = member.base_url.as_deref().map(Profile::from_base_url);
            }
            let kind = match member.source {
                CredentialSource::CodexAuth(_) => KeyKind::Login,
                CredentialSource::CodexOAuth(_) => KeyKind::Owned,
                _ => KeyKind::Key,
            };
            let path = match &owned {
                Some(o) => Some(o.path()),
                None => member.source.path().map(std::path::Path::to_path_buf),
            };
            let file = path.map(|p| {
                Arc::new(FileWatch {
                    expires: Mutex::new(super::oauth::Claims::expiry_of(cred.token.expose())),
                    stamp: Mutex::new(file_stamp(&p)),
                    path: p,
                    checked: Mutex::new(Some(Instant::now())),
                    reloading: AtomicBool::new(false),
                    changed: AtomicBool::new(false),
                })
            });
            entries.push(Entry {
                label,
                kind,
                file,
                owned,
                member,
                current: Arc::new(RwLock::new(cred.into())),
            });
        }
        Ok(Pool {
            entries,
            state: Arc::new(MemoryState::default()),
            strategy: Strategy::default(),
            policy: CooldownPolicy::default(),
            default_profile: None,
            cursor: AtomicUsize::new(0),
            metrics: None,
            usage: Mutex::new(HashMap::new()),
            soft_limit: policy::DEFAULT_SOFT_LIMIT,
        })
    }

    /// Uses another state store (shared between replicas).
    pub fn with_state(mut self, state: Arc<dyn PoolState>) -> Self {
        let labels: Vec<&str> = self.entries.iter().map(|e| &*e.label).collect();
        state.watch_credentials(&labels);
        if state.is_shared() {
            for owned in self.entries.iter().filter_map(|e| e.owned.as_ref()) {
                owned.share_state(state.clone());
            }
        }
        self.state = state;
        self
    }

    /// Sets the strategy.
    pub fn with_strategy(mut self, strategy: Strategy) -> Self {
        self.strategy = strategy;
        self
    }

    /// New sessions leave a credential once one of its usage windows passes `percent`
    /// (default 95); sessions bound to it keep it until the hard limit.
    pub fn with_soft_limit(mut self, percent: f64) -> Self {
        if percent.is_finite() {
            self.soft_limit = percent.clamp(0.0, 100.0);
        }
        self
    }

    /// The soft limit, in percent.
    pub fn soft_limit(&self) -> f64 {
        self.soft_limit
    }

    /// Takes in a usage report for a credential (from a reply's headers or a
    /// `codex.rate_limits` event): its windows replace those of the same kind.
    pub fn record_usage(&self, label: &str, report: CredentialUsage) {
        let Some(e) = self.entry(label) else { return };
        let mut usage = self.usage.lock().unwrap_or_else(|p| p.into_inner());
        let merged = usage.entry(e.label.clone()).or_default();
        merged.merge(report);
        // Replicas share the latest snapshot: a window one of them saw full is full for all.
        if self.state.is_shared() {
            self.state.put_usage(label, merged);
        }
    }

    /// A credential's last reported usage (on a shared store, the latest any replica saw).
    pub fn usage_of(&self, label: &str) -> Option<CredentialUsage> {
        let local = self
            .usage
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(label)
            .cloned();
        if !self.state.is_shared() {
            return local;
        }
        match (local, self.state.usage(label)) {
            (Some(l), Some(r)) if r.seen_at > l.seen_at => Some(r),
            (None, r) => r,
            (l, _) => l,
        }
    }

    /// Where a credential stands for a new session (see [`policy::standing`]).
    pub fn standing_of(&self, label: &str) -> Standing {
        self.standing_for(label, false, SystemTime::now())
    }

    fn standing_for(&self, label: &str, bound: bool, now: SystemTime) -> Standing {
        let reserve = self.entry(label).and_then(|e| e.member.reserve);
        let usage = self.usage_of(label);
        policy::standing(
            usage.as_ref(),
            reserve.as_ref(),
            self.soft_limit,
            bound,
            now,
        )
    }

    /// The pool's usage windows over the credentials that can serve (all but those out for
    /// auth): what a Codex client is told, so it hears "exhausted" only when the pool is.
    pub fn pooled_usage(&self) -> Vec<PooledWindow> {
        let now = SystemTime::now();
        let serving: Vec<CredentialUsage> = self
            .entries
            .iter()
            .filter(|e| {
                !self
                    .cooldown_of(&e.label)
                    .is_some_and(|c| c.excludes() && c.class == FailureClass::Auth)
            })
            .filter_map(|e| self.usage_of(&e.label))
            .collect();
        let refs: Vec<&CredentialUsage> = serving.iter().collect();
        super::usage::pooled(&refs, now)
    }

    /// Sets the cooldown policy.
    pub fn with_policy(mut self, policy: CooldownPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// The stack's profile, which members without their own have (used to keep anchored
    /// requests off `chatgpt-codex` members).
    pub fn with_default_profile(mut self, profile: Profile) -> Self {
        self.default_profile = Some(profile);
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
            report_expiry(Some(&metrics), &e.label, self.expiry_of(e));
        }
        self.metrics = Some(metrics);
        self
    }

    /// What kind of credential a label is.
    pub fn kind_of(&self, label: &str) -> Option<KeyKind> {
        self.entry(label).map(|e| e.kind)
    }

    /// The state store.
    pub fn state(&self) -> &Arc<dyn PoolState> {
        &self.state
    }

    /// The cooldown lengths.
    pub fn policy(&self) -> &CooldownPolicy {
        &self.policy
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

    /// The profile a member's requests go out with (its own, else the stack's).
    pub fn profile_of(&self, label: &str) -> Option<Profile> {
        self.entry(label)
            .and_then(|e| e.member.profile)
            .or(self.default_profile)
    }

    /// The active cooldown of a credential, if any (soft ones included).
    pub fn cooldown_of(&self, label: &str) -> Option<Cooldown> {
        self.refresh_file(label);
        self.state
            .cooldown(label)
            .filter(|c| c.active(SystemTime::now()))
    }

    /// The active cooldowns of every credential.
    pub fn active_cooldowns(&self) -> Vec<Cooldown> {
        self.entries
            .iter()
            .filter_map(|e| self.cooldown_of(&e.label))
            .collect()
    }

    /// An operator puts a credential back in rotation.
    pub fn clear(&self, label: &str) {
        self.health().clear(label);
    }

    fn health(&self) -> Health {
        Health {
            state: self.state.clone(),
            metrics: self.metrics.clone(),
        }
    }

    /// The access token's expiry of a login, if its token is a JWT with `exp`.
    fn expiry_of(&self, e: &Entry) -> Option<SystemTime> {
        match (&e.owned, &e.file) {
            (Some(o), _) => o.expires(),
            (None, Some(w)) if e.kind == KeyKind::Login => {
                *w.expires.lock().unwrap_or_else(|p| p.into_inner())
            }
            _ => None,
        }
    }

    /// Asks the policy what a login's token expiry calls for, and does it: leave rotation,
    /// or start a refresh (beside the requests, or with them kept away meanwhile).
    fn check_token(&self, e: &Entry, now: SystemTime) {
        let (expires, renewal, login) = match (e.kind, &e.owned) {
            (KeyKind::Key, _) => return,
            (KeyKind::Login, _) => (self.expiry_of(e), Renewal::Possible, ""),
            (KeyKind::Owned, Some(o)) => {
                let (expires, renewal) = o.token_state(now);
                (expires, renewal, o.name())
            }
            (KeyKind::Owned, None) => return,
        };
        let token = TokenState {
            kind: e.kind,
            expires,
            renewal,
            login,
        };
        let out_already = || {
            self.state
                .cooldown(&e.label)
                .is_some_and(|c| c.excludes() && c.active(now))
        };
        match policy::before_use(&token, now, &self.policy) {
            Readiness::Use => {}
            Readiness::Renew => self.start_refresh(e, RefreshTrigger::Expiring),
            Readiness::RenewAndWait(c) => {
                if !out_already() {
                    self.health().cool(&e.label, c);
                }
                self.start_refresh(e, RefreshTrigger::Expiring);
            }
            Readiness::Out(c) => {
                if !out_already() {
                    self.health().cool(&e.label, c);
                }
            }
        }
    }

    /// Starts a refresh of an owned login beside the requests, unless one runs (single
    /// flight) or there is no runtime to run it on.
    fn start_refresh(&self, e: &Entry, trigger: RefreshTrigger) {
        let Some(owned) = &e.owned else { return };
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if !owned.begin() {
            return;
        }
        let refresh = Refreshed {
            owned: owned.clone(),
            current: e.current.clone(),
            label: e.label.clone(),
            health: self.health(),
            policy: self.policy.clone(),
        };
        rt.spawn(async move {
            let outcome = refresh.owned.refresh(trigger).await;
            refresh.settle(outcome.as_str());
        });
    }

    /// A 401 on an owned login: refresh it once (see `OwnedLogin::wants_refresh_after_401`).
    fn after_unauthorized(&self, label: &str) {
        let Some(e) = self.entry(label) else { return };
        let Some(owned) = &e.owned else { return };
        match owned.wants_refresh_after_401() {
            Ok(true) => self.start_refresh(e, RefreshTrigger::Unauthorized),
            Ok(false) => {}
            Err(_) => Refreshed {
                owned: owned.clone(),
                current: e.current.clone(),
                label: e.label.clone(),
                health: self.health(),
                policy: self.policy.clone(),
            }
            // No refresh ran; the policy takes the login out (`reauth_required`).
            .settle("skipped"),
        }
    }

    /// Notices a changed `codex-auth:` file: at most one `stat` per file per second, and the
    /// re-read happens off the async workers. A new login clears an auth cooldown.
    fn refresh_file(&self, label: &str) {
        let Some(entry) = self.entry(label) else {
            return;
        };
        let Some(watch) = &entry.file else {
            return;
        };
        self.take_file_change(label, watch);
        {
            let mut checked = watch.checked.lock().unwrap_or_else(|p| p.into_inner());
            if checked.is_some_and(|t| t.elapsed() < FILE_CHECK_EVERY) {
                return;
            }
            *checked = Some(Instant::now());
        }
        if watch.reloading.swap(true, Ordering::AcqRel) {
            return;
        }
        let reload = {
            let watch = watch.clone();
            let current = entry.current.clone();
            let source = entry.member.source.clone();
            let label = entry.label.clone();
            let owned = entry.owned.clone();
            let metrics = self.metrics.clone();
            move || {
                reload_file(&watch, &current, &source, owned.as_deref(), &label);
                let expires = match &owned {
                    Some(o) => o.expires(),
                    None => *watch.expires.lock().unwrap_or_else(|p| p.into_inner()),
                };
                report_expiry(metrics.as_ref(), &label, expires);
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn_blocking(reload);
            }
            Err(_) => reload(),
        }
        // A reload that finished already (no runtime) is seen now, not a second later.
        self.take_file_change(label, watch);
    }

    /// After a reload changed the credential: a new login ends an auth cooldown.
    fn take_file_change(&self, label: &str, watch: &FileWatch) {
        let auth_cooling = || {
            self.state
                .cooldown(label)
                .is_some_and(|c| c.class == FailureClass::Auth)
        };
        if watch.changed.swap(false, Ordering::AcqRel) && auth_cooling() {
            tracing::info!(
                credential = label,
                "auth file changed; credential back in rotation"
            );
            self.clear(label);
        }
    }

    /// Picks a healthy credential not in `exclude`: the pinned one if given (healthy or not:
    /// the caller decides what a cooling pin means), else the session's own while it is
    /// healthy, else by the strategy. See [`Pool::pick_for`].
    pub fn pick(
        &self,
        exclude: &[Arc<str>],
        pinned: Option<&str>,
        session: Option<&str>,
    ) -> Option<Arc<str>> {
        self.pick_for(&PickRequest {
            exclude,
            pinned,
            session,
            anchored: false,
        })
    }

    /// Picks a credential for a request: its pin; else, among credentials not excluded and
    /// not out of rotation, the session's primary, then the session's fallback, then one by
    /// the strategy. Credentials under a soft cooldown (overload, 5xx) are picked only when
    /// every other usable one is too; `chatgpt-codex` members only when an anchored request
    /// has nowhere else to go.
    pub fn pick_for(&self, req: &PickRequest<'_>) -> Option<Arc<str>> {
        if let Some(pin) = req.pinned {
            return self.entry(pin).map(|e| e.label.clone());
        }
        let now = SystemTime::now();
        let binding = req.session.and_then(|s| self.state.session(s));
        let bound_to = |label: &str| {
            binding
                .as_ref()
                .is_some_and(|b| b.primary == label || b.fallback.as_deref() == Some(label))
        };
        // Rank 0 is best. The usage standing comes first (open, past the soft limit, at its
        // reserve), then fresh before softly cooled, then (anchored) Codex members last.
        let rank = |e: &Entry| -> Option<u8> {
            if req.exclude.contains(&e.label) {
                return None;
            }
            self.check_token(e, now);
            let soft = match self.cooldown_of(&e.label) {
                Some(c) if c.excludes() => return None,
                Some(c) => c.active(now),
                None => false,
            };
            let codex = req.anchored && self.profile_of(&e.label) == Some(Profile::ChatgptCodex);
            let standing = self.standing_for(&e.label, bound_to(&e.label), now) as u8;
            Some(4 * standing + u8::from(soft) + 2 * u8::from(codex))
        };
        let ranked: Vec<(&Entry, u8)> = self
            .entries
            .iter()
            .filter_map(|e| rank(e).map(|r| (e, r)))
            .collect();
        let best = ranked.iter().map(|(_, r)| *r).min()?;
        let healthy: Vec<&Entry> = ranked
            .iter()
            .filter(|(_, r)| *r == best)
            .map(|(e, _)| *e)
            .collect();
        if let Some(binding) = &binding {
            for bound in std::iter::once(&binding.primary).chain(binding.fallback.as_ref()) {
                if let Some(e) = healthy.iter().find(|e| *e.label == **bound) {
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
            Strategy::Headroom => {
                // The most left in the tightest window; ties go in turn from the cursor.
                let start = n % healthy.len();
                let used = |e: &Entry| {
                    self.usage_of(&e.label)
                        .filter(|u| !u.unbounded())
                        .map_or(0.0, |u| u.tightest_used(now))
                };
                (0..healthy.len())
                    .map(|i| healthy[(start + i) % healthy.len()])
                    .min_by(|a, b| used(a).total_cmp(&used(b)))
                    .unwrap_or(healthy[0])
            }
        };
        self.begin_probe(&chosen.label, now);
        Some(chosen.label.clone())
    }

    /// A key whose auth cooldown just ended is tried by one request, the probe: the others
    /// keep away from it for [`PROBE_WINDOW`] until that request says how it went (a success
    /// clears it, another refusal doubles the cooldown).
    fn begin_probe(&self, label: &str, now: SystemTime) {
        // Logins come back through their file or their refresh, never through a probe.
        if self.entry(label).is_some_and(|e| e.kind != KeyKind::Key) {
            return;
        }
        let Some(c) = self.state.cooldown(label) else {
            return;
        };
        if c.class != FailureClass::Auth || c.active(now) {
            return;
        }
        tracing::info!(
            credential = label,
            "auth cooldown over; one request probes the key"
        );
        self.state.set_cooldown(
            label,
            Cooldown {
                until: Some(now + PROBE_WINDOW),
                class: FailureClass::Auth,
                reason: PROBE_REASON.into(),
            },
        );
    }

    /// Records which credential served a session's turn: the first one becomes its primary;
    /// another one (the primary was out) becomes its fallback, where it stays until the
    /// primary returns; either way it is the session's last account.
    pub fn record_served(&self, session: &str, label: &str) {
        let mut b = self
            .state
            .session(session)
            .unwrap_or_else(|| SessionBinding {
                primary: label.to_string(),
                ..SessionBinding::default()
            });
        let before = b.clone();
        if b.primary != label {
            b.fallback = Some(label.to_string());
        }
        b.last = Some(label.to_string());
        if b != before {
            self.state.set_session(session, b);
        }
    }

    /// The credential that served a session's last turn.
    pub fn last_served(&self, session: &str) -> Option<String> {
        self.state
            .session(session)
            .map(|b| b.last.unwrap_or(b.primary))
    }

    /// Counts a use.
    pub fn record_use(&self, label: &str) {
        self.state.record_use(label);
    }

    /// Learns from a successful answer: repeat-failure strikes, a soft cooldown and an auth
    /// probe end, and
    /// Codex usage windows at 100% cool the credential before it fails.
    pub fn record_success(&self, label: &str, headers: &http::HeaderMap) {
        if let Some(owned) = self.entry(label).and_then(|e| e.owned.as_ref()) {
            owned.served();
        }
        if self.state.cooldown(label).is_some_and(|c| {
            (!c.excludes() || c.reason == PROBE_REASON) && c.active(SystemTime::now())
        }) {
            // A soft cooldown only said "recently troubled", and an auth probe asked whether the
            // key works: an answer says it is fine now. Any other auth cooldown stands: an
            // owned login whose refresh was refused for good still answers on its old access
            // token for a while, and that says nothing about the login.
            self.clear(label);
        } else {
            self.state.reset_strikes(label);
        }
        if let Some(usage) = CredentialUsage::from_headers(headers, SystemTime::now()) {
            self.record_usage(label, usage);
        }
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

    /// Cools a credential as [`policy::cooldown_for`] says for this failure; returns the
    /// cooldown it asked for (a longer one already in place is kept).
    pub fn record_failure(&self, label: &str, failure: &Failure) -> Option<Cooldown> {
        if !failure.cools_credential() {
            tracing::debug!(
                credential = label,
                class = failure.class.as_str(),
                "not cooled: the route, the model, the request or the connection is at fault"
            );
            return None;
        }
        let strikes = self.state.strike(label, failure.class).saturating_sub(1);
        let kind = self.entry(label).map_or(KeyKind::Key, |e| e.kind);
        let cooldown =
            policy::cooldown_for(failure, kind, strikes, &self.policy, SystemTime::now())?;
        self.cool(label, cooldown.clone());
        Some(cooldown)
    }

    /// Applies a cooldown (cooldowns only grow) and says so in the log and the metrics. An
    /// auth failure of an owned login also starts its one refresh.
    pub(crate) fn cool(&self, label: &str, cooldown: Cooldown) {
        let unauthorized = cooldown.class == FailureClass::Auth;
        self.health().cool(label, cooldown);
        if unauthorized && self.entry(label).is_some_and(|e| e.kind == KeyKind::Owned) {
            self.after_unauthorized(label);
        }
    }
}

impl Health {
    fn clear(&self, label: &str) {
        self.state.clear(label);
        self.set_health(label, true, None);
    }

    fn cool(&self, label: &str, cooldown: Cooldown) {
        let secs = cooldown
            .until
            .and_then(|u| u.duration_since(SystemTime::now()).ok())
            .map(|d| d.as_secs_f64());
        if !self.state.set_cooldown(label, cooldown.clone()) {
            tracing::info!(
                credential = label,
                class = cooldown.class.as_str(),
                reason = %cooldown.reason,
                "not cooled again: a longer cooldown already holds"
            );
            return;
        }
        tracing::info!(
            credential = label,
            class = cooldown.class.as_str(),
            reason = %cooldown.reason,
            cooling_secs = secs.unwrap_or(f64::INFINITY),
            out_of_rotation = cooldown.excludes(),
            "credential cooling"
        );
        self.set_health(label, !cooldown.excludes(), Some(&cooldown));
    }

    fn set_health(&self, label: &str, healthy: bool, cooldown: Option<&Cooldown>) {
        let Some(m) = &self.metrics else { return };
        m.remove_matching("tr_credential_action_required", "credential", label);
        if let Some(reason) = cooldown.and_then(|c| {
            ["owner_refresh_needed", "reauth_required"]
                .into_iter()
                .find(|r| c.reason.contains(r))
        }) {
            m.set(
                "tr_credential_action_required",
                "1 while a credential waits for a person. owner_refresh_needed: run the Codex CLI \
                 on its auth.json once, or take it over with `login --import PATH --name NAME`; \
                 reauth_required: run `login NAME` for it.",
                &[("credential", label), ("reason", reason)],
                1.0,
            );
        }
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
}

/// A refresh running beside the requests, and what it reports when it ends.
struct Refreshed {
    owned: Arc<OwnedLogin>,
    current: Arc<RwLock<Current>>,
    label: Arc<str>,
    health: Health,
    policy: CooldownPolicy,
}

impl Refreshed {
    /// Takes the refresh's result: the new credential, the metrics, and the policy's word
    /// on the login now (back in rotation, or out until `login NAME`).
    fn settle(&self, outcome: &str) {
        let label = &*self.label;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) =
            self.owned.credential(label).into();
        let m = self.health.metrics.as_ref();
        if outcome != "skipped" {
            if let Some(m) = m {
                m.inc(
                    "tr_credential_refresh_total",
                    "Refreshes of owned logins, by outcome: ok, not_extended, store_failed, \
                     adopted, transient, permanent, unanswered.",
                    &[("credential", label), ("outcome", outcome)],
                );
            }
        }
        report_expiry(m, label, self.owned.expires());
        let now = SystemTime::now();
        let (expires, renewal) = self.owned.token_state(now);
        let token = TokenState {
            kind: KeyKind::Owned,
            expires,
            renewal,
            login: self.owned.name(),
        };
        match policy::before_use(&token, now, &self.policy) {
            // A refresh that did not run changes nothing: a 401's cooldown runs its course.
            Readiness::Use | Readiness::Renew if outcome == "skipped" => {}
            Readiness::Use | Readiness::Renew => {
                let auth_cooling = self
                    .health
                    .state
                    .cooldown(label)
                    .is_some_and(|c| c.class == FailureClass::Auth);
                if auth_cooling {
                    tracing::info!(credential = label, "login refreshed; back in rotation");
                    self.health.clear(label);
                }
            }
            Readiness::RenewAndWait(c) | Readiness::Out(c) => self.health.cool(label, c),
        }
    }
}

fn report_expiry(metrics: Option<&Metrics>, label: &str, expires: Option<SystemTime>) {
    let (Some(m), Some(t)) = (metrics, expires) else {
        return;
    };
    m.set(
        "tr_credential_token_expires_seconds",
        "Unix time a login's access token expires (from its JWT exp).",
        &[("credential", label)],
        t.duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64()),
    );
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
