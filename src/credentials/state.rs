use std::collections::HashMap;
use std::sync::Mutex;
use std::time::SystemTime;

use super::ttl_map::TtlMap;
use crate::classify::FailureClass;

/// Why and until when a credential is out of rotation (or, for a soft cooldown, tried last).
#[derive(Debug, Clone, PartialEq)]
pub struct Cooldown {
    /// Back in rotation at this time (`None`: until its auth file changes or an operator
    /// clears it).
    pub until: Option<SystemTime>,
    /// The failure class that caused it.
    pub class: FailureClass,
    /// A short human reason (the upstream's code, the signal the time came from).
    pub reason: String,
}

impl Cooldown {
    /// Whether it still holds at `now`.
    pub fn active(&self, now: SystemTime) -> bool {
        self.until.is_none_or(|t| t > now)
    }

    /// Whether it takes the credential out of rotation. Rate limits, quota and auth do; an
    /// overload or a 5xx is the upstream's trouble, not the key's, so those only make the
    /// pool try the credential last (a *soft* cooldown).
    pub fn excludes(&self) -> bool {
        matches!(
            self.class,
            FailureClass::RateLimited | FailureClass::QuotaExhausted | FailureClass::Auth
        )
    }

    /// Whether this cooldown outlasts `other`: a hard one outlasts any soft one, and among
    /// equals the later end (an open end is the latest) wins. Cooldowns only grow by this
    /// order.
    pub fn outlasts(&self, other: &Cooldown) -> bool {
        let end = |c: &Cooldown| (c.excludes(), c.until.is_none(), c.until);
        end(self) > end(other)
    }
}

/// A session's credentials: the one it is bound to, the fallback it keeps while that one is
/// out, and the one that served its last turn.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SessionBinding {
    /// The credential the session was first served by; it returns there when it can.
    pub primary: String,
    /// Where the session stays while its primary is out of rotation.
    pub fallback: Option<String>,
    /// The credential that served the session's last turn (its encrypted items are that
    /// account's).
    pub last: Option<String>,
}

/// Where the pool keeps what it learns: cooldowns, use counts, repeat-failure strikes,
/// session bindings and response owners. The in-memory [`MemoryState`] serves one process; a
/// shared store for several replicas implements the same trait.
pub trait PoolState: Send + Sync + 'static {
    /// The credential's cooldown, if any was set (expired ones may be returned; callers check
    /// [`Cooldown::active`]).
    fn cooldown(&self, credential: &str) -> Option<Cooldown>;
    /// Sets a cooldown unless the credential's current one [outlasts](Cooldown::outlasts) it
    /// (cooldowns only grow); returns whether it was set.
    fn set_cooldown(&self, credential: &str, cooldown: Cooldown) -> bool;
    /// Clears a cooldown and the repeat-failure strikes.
    fn clear(&self, credential: &str);
    /// Counts a use; returns the new count.
    fn record_use(&self, credential: &str) -> u64;
    /// Uses so far.
    fn uses(&self, credential: &str) -> u64;
    /// Adds a strike for a repeated failure of `class`; returns the count of consecutive
    /// strikes of that class.
    fn strike(&self, credential: &str, class: FailureClass) -> u32;
    /// Forgets the strikes (a success).
    fn reset_strikes(&self, credential: &str);
    /// A session's binding.
    fn session(&self, session: &str) -> Option<SessionBinding>;
    /// Writes a session's binding.
    fn set_session(&self, session: &str, binding: SessionBinding);
    /// Records that `credential` owns `key` (a response id) until `expires`.
    fn put_owner(&self, key: &str, credential: &str, expires: SystemTime);
    /// The owner of `key`, if not expired.
    fn owner(&self, key: &str, now: SystemTime) -> Option<String>;

    /// The credential a session is bound to.
    fn affinity(&self, session: &str) -> Option<String> {
        self.session(session).map(|b| b.primary)
    }

    /// Binds a session to a credential (its primary).
    fn bind(&self, session: &str, credential: &str) {
        self.set_session(
            session,
            SessionBinding {
                primary: credential.to_string(),
                ..SessionBinding::default()
            },
        );
    }
}

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
            capacity: capacity.max(1),
        }
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
