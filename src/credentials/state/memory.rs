//! The in-memory store: one process, no I/O.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use super::{Claim, Cooldown, PoolState, SessionBinding, StateError, StateFuture, ready};
use crate::classify::FailureClass;
use crate::credentials::usage::CredentialUsage;

/// Most learned facts kept (of all kinds together).
pub(super) const MAX_FACTS: usize = 1024;
use crate::credentials::ttl_map::TtlMap;

#[derive(Default)]
struct Counters {
    uses: HashMap<String, u64>,
    strikes: HashMap<String, (FailureClass, u32)>,
}

/// The in-memory [`PoolState`]. Session and owner maps are bounded: past `capacity` entries
/// the oldest go first, in O(1) per insert. Each map has its own lock, so recording an owner
/// never waits for a pick.
pub struct MemoryState {
    cooldowns: Mutex<HashMap<String, Cooldown>>,
    counters: Mutex<Counters>,
    sessions: Mutex<TtlMap<SessionBinding>>,
    owners: Mutex<TtlMap<String>>,
    /// Refresh claims: login -> (holder, until).
    claims: Mutex<HashMap<String, (String, Instant)>>,
    /// Token pairs: login -> (its refresh token, the serialized login).
    pairs: Mutex<HashMap<String, (String, String)>>,
    usage: Mutex<HashMap<String, CredentialUsage>>,
    /// Learned facts: (kind, fact) -> until.
    facts: Mutex<HashMap<(String, String), SystemTime>>,
    capacity: usize,
}

impl std::fmt::Debug for MemoryState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryState")
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

impl Default for MemoryState {
    fn default() -> Self {
        Self::with_capacity(100_000)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl MemoryState {
    /// A state whose session and owner maps hold at most `capacity` entries each.
    pub fn with_capacity(capacity: usize) -> Self {
        MemoryState {
            cooldowns: Mutex::default(),
            counters: Mutex::default(),
            sessions: Mutex::new(TtlMap::new(capacity)),
            owners: Mutex::new(TtlMap::new(capacity)),
            claims: Mutex::default(),
            pairs: Mutex::default(),
            usage: Mutex::default(),
            facts: Mutex::default(),
            capacity: capacity.max(1),
        }
    }
}

impl MemoryState {
    /// Replaces a cooldown whatever it was (a shared store's view taking the backend's word).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(super) fn replace_cooldown(&self, credential: &str, cooldown: Option<Cooldown>) {
        let mut g = lock(&self.cooldowns);
        match cooldown {
            Some(c) => {
                g.insert(credential.to_string(), c);
            }
            None => {
                g.remove(credential);
            }
        }
    }

    /// Raises a use count to at least `n` (the replicas' total).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(super) fn raise_uses(&self, credential: &str, n: u64) {
        let mut g = lock(&self.counters);
        match g.uses.get_mut(credential) {
            Some(u) => *u = (*u).max(n),
            None => {
                g.uses.insert(credential.to_string(), n);
            }
        }
    }

    /// Every cooldown held (a shared store re-sends them when its backend returns).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(super) fn cooldowns(&self) -> Vec<(String, Cooldown)> {
        lock(&self.cooldowns)
            .iter()
            .map(|(k, c)| (k.clone(), c.clone()))
            .collect()
    }
}

impl PoolState for MemoryState {
    fn cooldown(&self, credential: &str) -> Option<Cooldown> {
        lock(&self.cooldowns).get(credential).cloned()
    }

    fn set_cooldown(&self, credential: &str, cooldown: Cooldown) -> bool {
        let now = SystemTime::now();
        let mut g = lock(&self.cooldowns);
        if let Some(current) = g.get(credential) {
            if current.active(now) && !cooldown.outlasts(current) {
                return false;
            }
        }
        g.insert(credential.to_string(), cooldown);
        true
    }

    fn clear(&self, credential: &str) {
        lock(&self.cooldowns).remove(credential);
        lock(&self.counters).strikes.remove(credential);
    }

    fn record_use(&self, credential: &str) -> u64 {
        let mut g = lock(&self.counters);
        let n = match g.uses.get_mut(credential) {
            Some(n) => n,
            None => g.uses.entry(credential.to_string()).or_insert(0),
        };
        *n += 1;
        *n
    }

    fn uses(&self, credential: &str) -> u64 {
        lock(&self.counters)
            .uses
            .get(credential)
            .copied()
            .unwrap_or(0)
    }

    fn strike(&self, credential: &str, class: FailureClass) -> u32 {
        let mut g = lock(&self.counters);
        let e = g
            .strikes
            .entry(credential.to_string())
            .or_insert((class, 0));
        if e.0 != class {
            *e = (class, 0);
        }
        e.1 += 1;
        e.1
    }

    fn reset_strikes(&self, credential: &str) {
        let mut g = lock(&self.counters);
        if g.strikes.contains_key(credential) {
            g.strikes.remove(credential);
        }
    }

    fn session(&self, session: &str) -> Option<SessionBinding> {
        lock(&self.sessions).get(session, SystemTime::now())
    }

    fn set_session(&self, session: &str, binding: SessionBinding) {
        lock(&self.sessions).insert(session, binding, None, SystemTime::now());
    }

    fn put_owner(&self, key: &str, credential: &str, expires: SystemTime) {
        lock(&self.owners).insert(
            key,
            credential.to_string(),
            Some(expires),
            SystemTime::now(),
        );
    }

    fn owner(&self, key: &str, now: SystemTime) -> Option<String> {
        lock(&self.owners).get(key, now)
    }

    fn put_usage(&self, credential: &str, usage: &CredentialUsage) {
        let mut g = lock(&self.usage);
        if g.len() < self.capacity || g.contains_key(credential) {
            g.insert(credential.to_string(), usage.clone());
        }
    }

    fn usage(&self, credential: &str) -> Option<CredentialUsage> {
        lock(&self.usage).get(credential).cloned()
    }

    fn learn_fact(&self, kind: &str, fact: &str, until: SystemTime) {
        let now = SystemTime::now();
        let mut g = lock(&self.facts);
        g.retain(|_, t| *t > now);
        let key = (kind.to_string(), fact.to_string());
        if g.len() < MAX_FACTS || g.contains_key(&key) {
            let t = g.entry(key).or_insert(until);
            *t = (*t).max(until);
        }
    }

    fn facts(&self, kind: &str) -> Vec<String> {
        let now = SystemTime::now();
        lock(&self.facts)
            .iter()
            .filter(|((k, _), t)| k == kind && **t > now)
            .map(|((_, f), _)| f.clone())
            .collect()
    }

    fn claim_refresh<'a>(
        &'a self,
        login: &'a str,
        holder: &'a str,
        ttl: Duration,
    ) -> StateFuture<'a, Claim> {
        let now = Instant::now();
        let mut claims = lock(&self.claims);
        let claim = match claims.get(login) {
            Some((_, until)) if *until > now => Claim::Held,
            _ => {
                let until = now.checked_add(ttl).unwrap_or(now);
                claims.insert(login.to_string(), (holder.to_string(), until));
                Claim::Granted
            }
        };
        ready(claim)
    }

    fn release_refresh<'a>(&'a self, login: &'a str, holder: &'a str) -> StateFuture<'a, ()> {
        let mut claims = lock(&self.claims);
        if claims.get(login).is_some_and(|(h, _)| h == holder) {
            claims.remove(login);
        }
        ready(())
    }

    fn token_pair<'a>(
        &'a self,
        login: &'a str,
    ) -> StateFuture<'a, Result<Option<String>, StateError>> {
        ready(Ok(lock(&self.pairs).get(login).map(|(_, p)| p.clone())))
    }

    fn swap_token_pair<'a>(
        &'a self,
        login: &'a str,
        refreshed: &'a str,
        next_refresh: &'a str,
        pair: &'a str,
    ) -> StateFuture<'a, Result<bool, StateError>> {
        let mut pairs = lock(&self.pairs);
        let written = match pairs.get(login) {
            Some((rt, _)) if rt != refreshed => false,
            _ => {
                pairs.insert(
                    login.to_string(),
                    (next_refresh.to_string(), pair.to_string()),
                );
                true
            }
        };
        ready(Ok(written))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn cool(class: FailureClass, secs: Option<u64>) -> Cooldown {
        Cooldown {
            until: secs.map(|s| SystemTime::now() + Duration::from_secs(s)),
            class,
            reason: String::new(),
        }
    }

    #[test]
    fn cooldowns_only_grow() {
        let s = MemoryState::default();
        assert!(s.set_cooldown("k", cool(FailureClass::QuotaExhausted, Some(7 * 86400))));
        // A rate limit's 2 s, a 5xx's 1 s: neither shortens the week.
        assert!(!s.set_cooldown("k", cool(FailureClass::RateLimited, Some(2))));
        assert!(!s.set_cooldown("k", cool(FailureClass::Transient, Some(1))));
        assert_eq!(s.cooldown("k").unwrap().class, FailureClass::QuotaExhausted);
        // An open-ended auth cooldown outlasts everything.
        assert!(s.set_cooldown("k", cool(FailureClass::Auth, None)));
        assert!(!s.set_cooldown("k", cool(FailureClass::QuotaExhausted, Some(30 * 86400))));
        // A soft one never replaces a hard one, even a later soft one.
        assert!(s.set_cooldown("j", cool(FailureClass::RateLimited, Some(5))));
        assert!(!s.set_cooldown("j", cool(FailureClass::Overloaded, Some(30))));
        // An expired cooldown is replaced by anything.
        s.set_cooldown(
            "e",
            Cooldown {
                until: Some(SystemTime::now() - Duration::from_secs(1)),
                ..cool(FailureClass::Auth, None)
            },
        );
        assert!(s.set_cooldown("e", cool(FailureClass::Transient, Some(1))));
    }

    #[test]
    fn sessions_evict_the_oldest() {
        let s = MemoryState::with_capacity(2);
        s.bind("s1", "a");
        s.bind("s2", "b");
        s.bind("s1", "a"); // s1 written again: s2 is now the oldest
        s.bind("s3", "c");
        assert_eq!(s.affinity("s2"), None);
        assert_eq!(s.affinity("s1").as_deref(), Some("a"));
        assert_eq!(s.affinity("s3").as_deref(), Some("c"));
    }

    #[test]
    fn strikes_reset() {
        let s = MemoryState::default();
        assert_eq!(s.strike("k", FailureClass::Transient), 1);
        assert_eq!(s.strike("k", FailureClass::Transient), 2);
        s.reset_strikes("k");
        assert_eq!(s.strike("k", FailureClass::Transient), 1);
    }
}
