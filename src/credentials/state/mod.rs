//! Where the pool keeps what it learns: see [`PoolState`].

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, SystemTime};

use crate::classify::FailureClass;
use crate::credentials::usage::CredentialUsage;

mod memory;
#[cfg(feature = "redis")]
mod redis;
mod settle;

pub use memory::MemoryState;
#[cfg(feature = "redis")]
pub use redis::{RedisState, RedisStateConfig};
pub(crate) use settle::SettleOwners;

/// A store call that may wait for the backend (bounded by the store's own timeouts).
pub type StateFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

pub(crate) fn ready<'a, T: Send + 'a>(value: T) -> StateFuture<'a, T> {
    Box::pin(std::future::ready(value))
}

/// How asking for a login's refresh claim went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// This holder may refresh now; it releases the claim when done (or the claim expires).
    Granted,
    /// Another holder (a replica) is refreshing: wait for the pair it stores.
    Held,
    /// The store could not be asked: no refresh (claims fail closed).
    Unavailable,
}

/// How a shared store is doing, for the status page and `tower-responses status`.
#[derive(Debug, Clone, PartialEq)]
pub struct StoreHealth {
    /// The backend's name (`redis`).
    pub backend: &'static str,
    /// Whether the backend answered its last call (when not, this replica serves on its local
    /// view and catches up when it returns).
    pub up: bool,
    /// How old the local view is: time since the last successful read (`None`: never read).
    pub view_age: Option<std::time::Duration>,
}

/// A shared store could not answer in time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateError(pub String);

impl std::fmt::Display for StateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "shared state: {}", self.0)
    }
}

impl std::error::Error for StateError {}

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
/// session bindings, response owners, and owned logins' refresh claims and token pairs. The
/// in-memory [`MemoryState`] serves one process; `RedisState` (feature `redis`) several
/// replicas.
///
/// [`PoolState`] is the one store interface: cooldown deadlines (with class and reason), use
/// counts, repeat-failure strikes, session bindings, response-id owners, and the refresh
/// claims and token pairs of owned logins. Two stores implement it with the same semantics
/// (the contract suite in `tests/state_contract.rs` runs against both):
///
/// - [`MemoryState`], the default: one process, no I/O;
/// - `RedisState` (feature `redis`, `--state redis://HOST:PORT/DB`): several replicas on one
///   Redis behave as one proxy. Its docs say what is shared, what stays local,
///   and what happens when Redis is down.
///
/// The synchronous methods are on the hot path of every request and never wait for I/O: a
/// shared store answers them from a local view. The few calls where a late answer would be
/// wrong return a [`StateFuture`] the caller awaits (bounded): an owner looked up on a local
/// miss, owner writes settled before the answer carrying the id is released, refresh claims,
/// and the
/// compare-and-set of a rotated token pair.
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

    /// Whether other processes share this store (then refresh claims and token pairs
    /// coordinate replicas; in memory they only coordinate this process).
    fn is_shared(&self) -> bool {
        false
    }

    /// The shared backend's health (`None` for a store that lives in this process).
    fn health(&self) -> Option<StoreHealth> {
        None
    }

    /// The owner of `key`, asking the backend when the local view does not know it: for an
    /// anchored request that may have been answered by another replica.
    fn find_owner<'a>(&'a self, key: &'a str) -> StateFuture<'a, Option<String>> {
        ready(self.owner(key, SystemTime::now()))
    }

    /// A mark of the owner writes made so far (0: none are ever pending, as in memory).
    fn owner_mark(&self) -> u64 {
        0
    }

    /// Resolves when the owner writes up to `mark` are visible to every replica (bounded by
    /// the store's timeout): an answer that carries a new response id is held until then,
    /// so the client's next turn finds its owner on whichever replica it lands.
    fn owners_settled(&self, mark: u64) -> StateFuture<'static, ()> {
        let _ = mark;
        ready(())
    }

    /// Asks for the right to refresh `login` for up to `ttl` (`SET NX PX`).
    fn claim_refresh<'a>(
        &'a self,
        login: &'a str,
        holder: &'a str,
        ttl: Duration,
    ) -> StateFuture<'a, Claim>;

    /// Ends a claim, only if `holder` still holds it (compare-and-delete).
    fn release_refresh<'a>(&'a self, login: &'a str, holder: &'a str) -> StateFuture<'a, ()>;

    /// The login's last stored pair (the serialized login), if any replica stored one.
    fn token_pair<'a>(
        &'a self,
        login: &'a str,
    ) -> StateFuture<'a, Result<Option<String>, StateError>>;

    /// Stores a rotated pair only if the stored one is the pair that was refreshed (its
    /// refresh token is `refreshed`) or none is stored; returns whether it was written.
    fn swap_token_pair<'a>(
        &'a self,
        login: &'a str,
        refreshed: &'a str,
        next_refresh: &'a str,
        pair: &'a str,
    ) -> StateFuture<'a, Result<bool, StateError>>;

    /// Stores a credential's latest usage windows (the pool's merged view of its reports).
    fn put_usage(&self, credential: &str, usage: &CredentialUsage) {
        let _ = (credential, usage);
    }

    /// A credential's latest usage windows as the store has them (another replica's report
    /// included).
    fn usage(&self, credential: &str) -> Option<CredentialUsage> {
        let _ = credential;
        None
    }

    /// Records a fact learned from an upstream until `until`: `kind` names the family
    /// (`param`: a parameter the upstream refuses; `compact`: a model its compact endpoint
    /// refuses), `fact` the fact itself.
    fn learn_fact(&self, kind: &str, fact: &str, until: SystemTime) {
        let _ = (kind, fact, until);
    }

    /// The live facts of `kind` (bounded).
    fn facts(&self, kind: &str) -> Vec<String> {
        let _ = kind;
        Vec::new()
    }

    /// The pool's credentials, told once when the pool takes the store: a shared store reads
    /// their state back in its batched read.
    fn watch_credentials(&self, labels: &[&str]) {
        let _ = labels;
    }

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
