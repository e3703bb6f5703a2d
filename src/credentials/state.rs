use std::collections::HashMap;
use std::sync::Mutex;
use std::time::SystemTime;

use crate::classify::FailureClass;

/// Why and until when a credential is out of rotation.
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
}

/// Where the pool keeps what it learns: cooldowns, use counts, repeat-failure strikes and
/// session affinity. The in-memory [`MemoryState`] serves one process; a shared store for
/// several replicas implements the same trait.
pub trait PoolState: Send + Sync + 'static {
    /// The credential's cooldown, if any was set (expired ones may be returned; callers check
    /// [`Cooldown::active`]).
    fn cooldown(&self, credential: &str) -> Option<Cooldown>;
    /// Sets a cooldown.
    fn set_cooldown(&self, credential: &str, cooldown: Cooldown);
    /// Clears a cooldown and the repeat-failure strikes.
    fn clear(&self, credential: &str);
    /// Counts a use; returns the new count.
    fn record_use(&self, credential: &str) -> u64;
    /// Uses so far.
    fn uses(&self, credential: &str) -> u64;
    /// Adds a strike for a repeated failure of `class`; returns the count of consecutive
    /// strikes of that class.
    fn strike(&self, credential: &str, class: FailureClass) -> u32;
    /// The credential a session is bound to.
    fn affinity(&self, session: &str) -> Option<String>;
    /// Binds a session to a credential.
    fn bind(&self, session: &str, credential: &str);
    /// Anything else keyed by a string with a TTL (response id → owner, for continuity).
    fn put_owner(&self, key: &str, credential: &str, expires: SystemTime);
    /// The owner of `key`, if not expired.
    fn owner(&self, key: &str, now: SystemTime) -> Option<String>;
}

#[derive(Default)]
struct Inner {
    cooldowns: HashMap<String, Cooldown>,
    uses: HashMap<String, u64>,
    strikes: HashMap<String, (FailureClass, u32)>,
    affinity: HashMap<String, String>,
    owners: HashMap<String, (String, SystemTime)>,
}

/// The in-memory [`PoolState`]. Session and owner maps are bounded: past `capacity` entries
/// the oldest expired (or, failing that, arbitrary) entries are dropped.
pub struct MemoryState {
    inner: Mutex<Inner>,
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

impl MemoryState {
    /// A state whose session and owner maps hold at most `capacity` entries each.
    pub fn with_capacity(capacity: usize) -> Self {
        MemoryState {
            inner: Mutex::new(Inner::default()),
            capacity: capacity.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl PoolState for MemoryState {
    fn cooldown(&self, credential: &str) -> Option<Cooldown> {
        self.lock().cooldowns.get(credential).cloned()
    }

    fn set_cooldown(&self, credential: &str, cooldown: Cooldown) {
        self.lock()
            .cooldowns
            .insert(credential.to_string(), cooldown);
    }

    fn clear(&self, credential: &str) {
        let mut g = self.lock();
        g.cooldowns.remove(credential);
        g.strikes.remove(credential);
    }

    fn record_use(&self, credential: &str) -> u64 {
        let mut g = self.lock();
        let n = g.uses.entry(credential.to_string()).or_insert(0);
        *n += 1;
        *n
    }

    fn uses(&self, credential: &str) -> u64 {
        self.lock().uses.get(credential).copied().unwrap_or(0)
    }

    fn strike(&self, credential: &str, class: FailureClass) -> u32 {
        let mut g = self.lock();
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

    fn affinity(&self, session: &str) -> Option<String> {
        self.lock().affinity.get(session).cloned()
    }

    fn bind(&self, session: &str, credential: &str) {
        let mut g = self.lock();
        if g.affinity.len() >= self.capacity && !g.affinity.contains_key(session) {
            // Sessions carry no time; drop an arbitrary one rather than grow without bound.
            if let Some(k) = g.affinity.keys().next().cloned() {
                g.affinity.remove(&k);
            }
        }
        g.affinity
            .insert(session.to_string(), credential.to_string());
    }

    fn put_owner(&self, key: &str, credential: &str, expires: SystemTime) {
        let mut g = self.lock();
        if g.owners.len() >= self.capacity && !g.owners.contains_key(key) {
            let now = SystemTime::now();
            g.owners.retain(|_, (_, exp)| *exp > now);
            if g.owners.len() >= self.capacity {
                let oldest = g
                    .owners
                    .iter()
                    .min_by_key(|(_, (_, exp))| *exp)
                    .map(|(k, _)| k.clone());
                if let Some(k) = oldest {
                    g.owners.remove(&k);
                }
            }
        }
        g.owners
            .insert(key.to_string(), (credential.to_string(), expires));
    }

    fn owner(&self, key: &str, now: SystemTime) -> Option<String> {
        self.lock()
            .owners
            .get(key)
            .filter(|(_, exp)| *exp > now)
            .map(|(c, _)| c.clone())
    }
}
