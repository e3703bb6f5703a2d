//! Shared state on Redis: see [`RedisState`].

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, mpsc, watch};

use super::{Claim, Cooldown, MemoryState, PoolState, SessionBinding, StateError, StateFuture};
use crate::classify::FailureClass;
use crate::credentials::ttl_map::TtlMap;
use crate::credentials::usage::CredentialUsage;
use crate::metrics::Metrics;

/// Most credentials whose state is read back each second.
const MAX_LABELS: usize = 4096;
/// Most session keys re-read each second (the most recently used).
const MAX_WATCHED_SESSIONS: usize = 2048;
/// A session is re-read while it was used within this long.
const WATCH_FOR: Duration = Duration::from_secs(120);
/// Most writes kept while Redis is unreachable.
const MAX_BACKLOG: usize = 10_000;
/// Most writes in one pipeline.
const BATCH: usize = 256;
/// How long the writer gathers late-harmless writes into one pipeline: a few hundred requests'
/// writes cost one round trip and a couple of syscalls instead of one each. An awaited
/// owner write cuts it short.
const LINGER: Duration = Duration::from_millis(2);
/// Writes waiting for the writer task; past this, new ones go to the backlog.
const QUEUE: usize = 8192;
/// Keys longer than this (a hostile session header, a huge anchor id) stay local.
const MAX_KEY: usize = 512;
/// A family of learned facts lives this long after its last new fact.
const FACTS_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// A usage snapshot without a later reset lives this long.
const USAGE_TTL: Duration = Duration::from_secs(3600);
/// A use count lives this long after its last use.
const USES_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// "Set if later": keeps whichever cooldown outlasts the other, on Redis's clock.
const SET_IF_LATER: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local hard, open, untl = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
if open == 0 and untl <= now then return 0 end
local cur = redis.call('GET', KEYS[1])
if cur then
  local ok, c = pcall(cjson.decode, cur)
  if ok and type(c) == 'table' then
    local ch, co, cu = tonumber(c.hard) or 0, tonumber(c.open) or 0, tonumber(c.until_ms) or 0
    if co == 1 or cu > now then
      local later
      if hard ~= ch then later = hard > ch
      elseif open ~= co then later = open > co
      else later = untl > cu end
      if not later then return 0 end
    end
  end
end
if open == 1 then redis.call('SET', KEYS[1], ARGV[4])
else redis.call('SET', KEYS[1], ARGV[4], 'PX', untl - now) end
return 1
"#;

/// Deletes the stored cooldown unless it outlasts the one the caller saw.
const CLEAR_IF_SEEN: &str = r#"
local cur = redis.call('GET', KEYS[1])
if not cur then return 0 end
local hard, open, untl = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local ok, c = pcall(cjson.decode, cur)
if ok and type(c) == 'table' then
  local ch, co, cu = tonumber(c.hard) or 0, tonumber(c.open) or 0, tonumber(c.until_ms) or 0
  local outlasts
  if ch ~= hard then outlasts = ch > hard
  elseif co ~= open then outlasts = co > open
  else outlasts = cu > untl end
  if outlasts then return 0 end
end
redis.call('DEL', KEYS[1])
return 1
"#;

/// Compare-and-delete of a refresh claim.
const RELEASE_CLAIM: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"#;

/// Writes a token pair only if the stored one is the pair that was refreshed.
const SWAP_PAIR: &str = r#"
local cur = redis.call('GET', KEYS[1])
if cur then
  local ok, c = pcall(cjson.decode, cur)
  if ok and type(c) == 'table' and c.rt ~= ARGV[1] then return 0 end
end
redis.call('SET', KEYS[1], ARGV[2])
return 1
"#;

/// Where the shared store is and how it behaves.
#[derive(Debug, Clone)]
pub struct RedisStateConfig {
    /// `redis://HOST:PORT/DB` (`redis://:PASSWORD@HOST:PORT/DB` with a password).
    pub url: String,
    /// Prefix of every key (`trs`): one Redis can serve several proxies' pools.
    pub prefix: String,
    /// How long any one call may take before Redis counts as unreachable.
    pub call_timeout: Duration,
    /// How often the local view is read back (at most once a second is the design).
    pub refresh_every: Duration,
    /// How long a session binding is kept after its last change.
    pub session_ttl: Duration,
}

impl RedisStateConfig {
    /// Defaults for `url`: prefix `trs`, 250 ms per call, a read each second, sessions 24 h.
    pub fn new(url: impl Into<String>) -> Self {
        RedisStateConfig {
            url: url.into(),
            prefix: "trs".into(),
            call_timeout: Duration::from_millis(250),
            refresh_every: Duration::from_secs(1),
            session_ttl: Duration::from_secs(24 * 3600),
        }
    }

    /// Sets the key prefix.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }
}

/// The stored form of a cooldown.
#[derive(Serialize, Deserialize)]
struct StoredCooldown {
    /// 1 if it takes the credential out of rotation.
    hard: u8,
    /// 1 if it has no deadline.
    open: u8,
    until_ms: u64,
    class: String,
    reason: String,
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis().min(u64::MAX as u128) as u64)
}

/// The script's order: (hard, open, deadline).
fn rank(c: &Cooldown) -> (u8, u8, u64) {
    (
        u8::from(c.excludes()),
        u8::from(c.until.is_none()),
        c.until.map_or(0, unix_ms),
    )
}

fn class_named(name: &str) -> FailureClass {
    [
        FailureClass::RateLimited,
        FailureClass::QuotaExhausted,
        FailureClass::Auth,
        FailureClass::Overloaded,
        FailureClass::Transient,
    ]
    .into_iter()
    .find(|c| c.as_str() == name)
    .unwrap_or(FailureClass::Unknown)
}

fn decode_cooldown(text: &str) -> Option<Cooldown> {
    let s: StoredCooldown = serde_json::from_str(text).ok()?;
    Some(Cooldown {
        until: (s.open == 0).then(|| UNIX_EPOCH + Duration::from_millis(s.until_ms)),
        class: class_named(&s.class),
        reason: s.reason,
    })
}

#[derive(Serialize, Deserialize)]
struct StoredSession {
    primary: String,
    #[serde(default)]
    fallback: Option<String>,
    #[serde(default)]
    last: Option<String>,
}

/// One write for the writer task.
#[derive(Debug, Clone)]
enum Write {
    Cooldown {
        key: String,
        rank: (u8, u8, u64),
        value: String,
    },
    Clear {
        key: String,
        seen: (u8, u8, u64),
    },
    /// `n` uses (the writer adds up a batch's uses of one credential).
    Use {
        key: String,
        n: u64,
    },
    Session {
        key: String,
        value: String,
        ttl: Duration,
    },
    Owner {
        key: String,
        credential: String,
        ttl: Duration,
    },
    Usage {
        key: String,
        snapshot: String,
        ttl: Duration,
    },
    Fact {
        key: String,
        fact: String,
        until_ms: u64,
    },
    /// Nothing to write: wakes the writer to send its backlog.
    Wake,
}

impl Write {
    fn add_to(&self, pipe: &mut redis::Pipeline) {
        let ms = |d: &Duration| d.as_millis().clamp(1, u64::MAX as u128) as u64;
        match self {
            Write::Cooldown { key, rank, value } => {
                pipe.cmd("EVAL")
                    .arg(SET_IF_LATER)
                    .arg(1)
                    .arg(key)
                    .arg(rank.0)
                    .arg(rank.1)
                    .arg(rank.2)
                    .arg(value)
                    .ignore();
            }
            Write::Clear { key, seen } => {
                pipe.cmd("EVAL")
                    .arg(CLEAR_IF_SEEN)
                    .arg(1)
                    .arg(key)
                    .arg(seen.0)
                    .arg(seen.1)
                    .arg(seen.2)
                    .ignore();
            }
            Write::Use { key, n } => {
                pipe.cmd("INCRBY").arg(key).arg(*n).ignore();
                pipe.cmd("PEXPIRE").arg(key).arg(ms(&USES_TTL)).ignore();
            }
            Write::Session { key, value, ttl } => {
                pipe.cmd("SET")
                    .arg(key)
                    .arg(value)
                    .arg("PX")
                    .arg(ms(ttl))
                    .ignore();
            }
            Write::Owner {
                key,
                credential,
                ttl,
            } => {
                pipe.cmd("SET")
                    .arg(key)
                    .arg(credential)
                    .arg("PX")
                    .arg(ms(ttl))
                    .ignore();
            }
            Write::Usage { key, snapshot, ttl } => {
                pipe.cmd("SET")
                    .arg(key)
                    .arg(snapshot)
                    .arg("PX")
                    .arg(ms(ttl))
                    .ignore();
            }
            Write::Fact {
                key,
                fact,
                until_ms,
            } => {
                pipe.cmd("HSET").arg(key).arg(fact).arg(until_ms).ignore();
                pipe.cmd("PEXPIRE").arg(key).arg(ms(&FACTS_TTL)).ignore();
            }
            Write::Wake => {}
        }
    }
}

struct Keys {
    prefix: String,
}

impl Keys {
    fn key(&self, kind: &str, name: &str) -> String {
        format!("{}:{kind}:{name}", self.prefix)
    }
}

/// The [`PoolState`] several replicas share through one Redis: they behave as one proxy.
///
/// ## What is shared
///
/// | what | key (under the prefix, default `trs`) | lifetime |
/// |---|---|---|
/// | cooldown deadline, class, reason | `PREFIX:cool:LABEL` | until its deadline (`PX` = remaining time on Redis's clock); open-ended ones until cleared |
/// | use count | `PREFIX:uses:LABEL` | 7 days after the last use |
/// | session binding (primary, fallback, last) | `PREFIX:sess:KEY` | 24 h after its last change |
/// | response-id owner | `PREFIX:owner:ID` | the owner TTL (as long as the anchor can be used) |
/// | refresh claim of an owned login | `PREFIX:refresh:LOGIN` | `SET NX PX`, at most the refresh timeout |
/// | token pair of an owned login | `PREFIX:pair:LOGIN` | until the next rotation |
///
/// Repeat-failure strikes stay local: they count *this* replica's failures in a row to pick
/// the next doubling step, and the cooldown they lead to is shared anyway (codex-lb keeps
/// error backoff replica-local for the same reason).
///
/// ## The hot path does not wait for Redis
///
/// Every synchronous [`PoolState`] call is answered from a local view (a [`MemoryState`]).
/// A background task refreshes the view once a second with one pipelined read (`MGET` of the
/// pool's cooldowns and use counts, and of the session keys used in the last two minutes), so
/// a cooldown taken on one replica keeps the others off that credential within a second
/// (LiteLLM's cooldowns reached siblings up to 10 s late until they got the same one-second
/// read, PR #40025). Writes whose lateness is harmless (uses, sessions, cooldowns) go into a
/// bounded queue that one writer task sends as pipelines; the request never waits.
///
/// Cooldowns only grow, across replicas too: the write is one Lua script that compares the
/// stored deadline with the new one on Redis's clock and keeps the one that outlasts (a hard
/// one beats a soft one, an open end beats any deadline, a later deadline beats an earlier),
/// so concurrent writers can never shorten a deadline (LiteLLM #40130 kept the first,
/// shorter one). A clear is a compare-and-delete: it removes a stored cooldown only if it
/// does not outlast the one this replica saw, so a success on one replica cannot end a quota
/// cooldown another replica took a moment ago.
///
/// ## Where a late write is not harmless
///
/// - **Owners.** A follow-up may reach another replica a moment after the answer. Owners are
///   stored in Redis, not carried in the response id: rewriting ids would touch every event,
///   every stored item and every path-addressed call (`GET /responses/{id}`) in both
///   directions, and an id the client sees would no longer be the upstream's. Instead the
///   answer is held until its owner is in Redis: a stream's frames wait, once an owner was
///   recorded for them, for the write's acknowledgement (one round trip; a real stream's
///   `response.created` is recorded while the model is still working, so by its first
///   content the write is long done), a JSON answer likewise
///   ([`PoolState::owners_settled`], bounded by the call timeout). An anchored request whose
///   owner is not in the local view reads it from Redis ([`PoolState::find_owner`]).
/// - **Refresh claims** (`SET NX PX` + compare-and-delete) and the **token pair**
///   (written only if the stored pair is the one that was refreshed) are awaited, bounded;
///   with Redis unreachable a claim is [`Claim::Unavailable`] and no refresh happens (fail
///   closed: two replicas redeeming one single-use refresh token can revoke the login).
///   Token pairs are secrets: the Redis must be as private as the state directory.
///
/// ## Redis down or slow
///
/// Every call has a short timeout. While Redis is unreachable, requests keep flowing on the
/// local view; writes wait in a bounded backlog (the oldest go first past 10,000). The change
/// is logged once each way and shown by `tr_state_backend_up` (0/1) and
/// `tr_state_view_age_seconds`. When Redis answers again, the backlog and every cooldown the
/// replica holds are sent (the script only lets them grow), and the next read brings the
/// others' state: the replicas converge within a second or two.
///
/// Deadlines are wall-clock Unix times (an upstream's `resets_at` is one anyway), so
/// replicas' clocks should agree to well under a second (NTP).
///
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::Arc;
/// use tower_responses::credentials::{Pool, PoolMember, RedisState, RedisStateConfig};
///
/// let state = RedisState::start(RedisStateConfig::new("redis://127.0.0.1:6379/0"), None)?;
/// let pool = Pool::new(vec![PoolMember::new("sk-one-aaaaaaaaaaaaaaaaaaaa".parse()?)])?
///     .with_state(Arc::new(state));
/// # let _ = pool; Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisState {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for RedisState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisState")
            .field("prefix", &self.shared.keys.prefix)
            .field("up", &self.shared.up.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

struct Shared {
    config: RedisStateConfig,
    keys: Keys,
    client: redis::Client,
    conn: Mutex<Option<ConnectionManager>>,
    local: MemoryState,
    labels: RwLock<Vec<Arc<str>>>,
    /// The fact families read back (`param`, `compact`).
    fact_kinds: RwLock<Vec<String>>,
    /// Usage snapshots as last read (or written here).
    usage: Mutex<HashMap<String, CredentialUsage>>,
    /// Session keys in use, with the time this replica last wrote them.
    watched: Mutex<TtlMap<Option<Instant>>>,
    /// When this replica last wrote each cooldown (a read back may predate the write).
    cool_written: Mutex<HashMap<String, Instant>>,
    queue: mpsc::Sender<(u64, Write)>,
    /// Someone waits for an owner write: the writer sends without lingering.
    urgent: Notify,
    backlog: Mutex<VecDeque<(u64, Write)>>,
    seq: AtomicU64,
    /// The last owner write's sequence number, and the last one Redis acknowledged.
    owner_seq: AtomicU64,
    flushed: watch::Sender<u64>,
    up: AtomicBool,
    /// Whether `up` was ever decided (the first state is logged too).
    known: AtomicBool,
    last_read: Mutex<Option<Instant>>,
    metrics: Option<Metrics>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl RedisState {
    /// Starts the store: parses the URL, then connects, reads and writes in background tasks
    /// on the current tokio runtime (a replica starts even while Redis is down, on its local
    /// view). Fails on a malformed URL or without a runtime.
    pub fn start(config: RedisStateConfig, metrics: Option<Metrics>) -> Result<Self, StateError> {
        let client = redis::Client::open(config.url.as_str())
            .map_err(|e| StateError(format!("invalid Redis URL: {e}")))?;
        let rt = tokio::runtime::Handle::try_current()
            .map_err(|_| StateError("the Redis store needs a tokio runtime".into()))?;
        let (queue, rx) = mpsc::channel(QUEUE);
        let shared = Arc::new(Shared {
            keys: Keys {
                prefix: config.prefix.clone(),
            },
            config,
            client,
            conn: Mutex::new(None),
            local: MemoryState::default(),
            labels: RwLock::default(),
            // The crate's own families are read from the start, before a layer first asks.
            fact_kinds: RwLock::new(vec!["param".into(), "compact".into()]),
            usage: Mutex::default(),
            watched: Mutex::new(TtlMap::new(MAX_WATCHED_SESSIONS)),
            cool_written: Mutex::default(),
            queue,
            urgent: Notify::new(),
            backlog: Mutex::default(),
            seq: AtomicU64::new(0),
            owner_seq: AtomicU64::new(0),
            flushed: watch::Sender::new(0),
            up: AtomicBool::new(false),
            known: AtomicBool::new(false),
            last_read: Mutex::new(None),
            metrics,
        });
        if let Some(m) = &shared.metrics {
            m.set(
                "tr_state_backend_up",
                "1 while the shared state store (Redis) answers, 0 while this replica runs on its local view.",
                &[("backend", "redis")],
                0.0,
            );
        }
        rt.spawn(write_loop(Arc::downgrade(&shared), rx));
        rt.spawn(read_loop(Arc::downgrade(&shared)));
        Ok(RedisState { shared })
    }

    /// Whether Redis answered the last call.
    pub fn is_up(&self) -> bool {
        self.shared.up.load(Ordering::Acquire)
    }

    /// How old the local view is (since the last successful read from Redis).
    pub fn view_age(&self) -> Option<Duration> {
        lock(&self.shared.last_read).map(|t| t.elapsed())
    }

    /// Waits (up to `timeout`) for the next successful read of the local view: tests and
    /// start-up checks use it instead of sleeping.
    pub async fn wait_for_read(&self, timeout: Duration) -> bool {
        let before = *lock(&self.shared.last_read);
        let deadline = tokio::time::Instant::now() + timeout;
        while tokio::time::Instant::now() < deadline {
            let now = *lock(&self.shared.last_read);
            if now.is_some() && now != before {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }
}

impl Shared {
    fn connection(&self) -> Option<ConnectionManager> {
        lock(&self.conn).clone()
    }

    fn watch_label(&self, label: &str) {
        if self
            .labels
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|l| &**l == label)
        {
            return;
        }
        let mut labels = self.labels.write().unwrap_or_else(|p| p.into_inner());
        if labels.len() < MAX_LABELS && !labels.iter().any(|l| &**l == label) {
            labels.push(Arc::from(label));
        }
    }

    fn send(&self, write: Write) -> u64 {
        let seq = self.seq.fetch_add(1, Ordering::AcqRel) + 1;
        if !self.up.load(Ordering::Acquire) {
            // No round trip that would only time out: it waits for Redis to return.
            self.keep(vec![(seq, write)]);
            return seq;
        }
        if let Err(e) = self.queue.try_send((seq, write)) {
            let (mpsc::error::TrySendError::Full(w) | mpsc::error::TrySendError::Closed(w)) = e;
            self.keep(vec![w]);
        }
        seq
    }

    fn keep(&self, writes: Vec<(u64, Write)>) {
        let mut backlog = lock(&self.backlog);
        for w in writes {
            if matches!(w.1, Write::Wake) {
                continue;
            }
            if backlog.len() >= MAX_BACKLOG {
                backlog.pop_front();
                if let Some(m) = &self.metrics {
                    m.inc(
                        "tr_state_writes_dropped_total",
                        "Shared-state writes dropped while Redis was unreachable (the backlog was full).",
                        &[],
                    );
                }
            }
            backlog.push_back(w);
        }
    }

    /// Records whether Redis answers; logs and reports each change once.
    fn set_up(&self, up: bool, why: Option<&str>) {
        let was = self.up.swap(up, Ordering::AcqRel);
        let first = !self.known.swap(true, Ordering::AcqRel);
        if was == up && !first {
            return;
        }
        if up {
            tracing::info!(
                prefix = %self.keys.prefix,
                "shared state: Redis answers; this replica shares cooldowns, sessions and owners"
            );
            // Catch up: what waited, and every cooldown held here (they only grow).
            for (label, c) in self.local.cooldowns() {
                if c.active(SystemTime::now()) {
                    self.send(self.cooldown_write(&label, &c));
                }
            }
            let _ = self.queue.try_send((0, Write::Wake));
        } else {
            tracing::warn!(
                prefix = %self.keys.prefix,
                error = why.unwrap_or("unreachable"),
                "shared state: Redis is unreachable; serving from this replica's local view \
                 (writes wait, refresh claims are refused) until it answers again"
            );
        }
        if let Some(m) = &self.metrics {
            m.set(
                "tr_state_backend_up",
                "1 while the shared state store (Redis) answers, 0 while this replica runs on its local view.",
                &[("backend", "redis")],
                if up { 1.0 } else { 0.0 },
            );
        }
    }

    fn cooldown_write(&self, label: &str, c: &Cooldown) -> Write {
        let r = rank(c);
        let value = serde_json::to_string(&StoredCooldown {
            hard: r.0,
            open: r.1,
            until_ms: r.2,
            class: c.class.as_str().to_string(),
            reason: c.reason.clone(),
        })
        .unwrap_or_default();
        Write::Cooldown {
            key: self.keys.key("cool", label),
            rank: r,
            value,
        }
    }

    /// Runs one call with the store's timeout; any failure marks Redis down.
    async fn call<T: redis::FromRedisValue>(
        &self,
        what: &redis::Pipeline,
        timeout: Duration,
    ) -> Result<T, StateError> {
        let Some(mut conn) = self.connection() else {
            return Err(StateError("not connected".into()));
        };
        let result = match tokio::time::timeout(timeout, what.query_async::<T>(&mut conn)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() => {
                Err(StateError(e.to_string()))
            }
            // Redis answered, with an error: it is up; the call failed.
            Ok(Err(e)) => return Err(StateError(e.to_string())),
            Err(_) => Err(StateError(format!(
                "no answer within {} ms",
                timeout.as_millis()
            ))),
        };
        match &result {
            Ok(_) => self.set_up(true, None),
            Err(e) => self.set_up(false, Some(&e.0)),
        }
        result
    }

    async fn connect(&self) -> bool {
        if self.connection().is_some() {
            return true;
        }
        let t = self.config.call_timeout;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(t)
            .set_response_timeout(t)
            .set_number_of_retries(2)
            .set_max_delay(1000);
        let attempt = ConnectionManager::new_with_config(self.client.clone(), config);
        match tokio::time::timeout(t * 4, attempt).await {
            Ok(Ok(conn)) => {
                *lock(&self.conn) = Some(conn);
                true
            }
            Ok(Err(e)) => {
                self.set_up(false, Some(&e.to_string()));
                false
            }
            Err(_) => {
                self.set_up(false, Some("connecting timed out"));
                false
            }
        }
    }

    /// One batched read: the pool's cooldowns and use counts, the sessions in use.
    async fn read(&self) {
        if !self.connect().await {
            return;
        }
        let labels: Vec<Arc<str>> = self
            .labels
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let now = SystemTime::now();
        let sessions = lock(&self.watched).live_keys(now, MAX_WATCHED_SESSIONS);
        let mut pipe = redis::pipe();
        // PING keeps the reply non-empty (and tells a live Redis from a dead one) when the
        // pool has no labels yet.
        pipe.cmd("PING").ignore();
        if !labels.is_empty() {
            let cool: Vec<String> = labels.iter().map(|l| self.keys.key("cool", l)).collect();
            let uses: Vec<String> = labels.iter().map(|l| self.keys.key("uses", l)).collect();
            let usage: Vec<String> = labels.iter().map(|l| self.keys.key("usage", l)).collect();
            pipe.cmd("MGET")
                .arg(cool)
                .cmd("MGET")
                .arg(uses)
                .cmd("MGET")
                .arg(usage);
        }
        if !sessions.is_empty() {
            let keys: Vec<String> = sessions.iter().map(|s| self.keys.key("sess", s)).collect();
            pipe.cmd("MGET").arg(keys);
        }
        let kinds: Vec<String> = self
            .fact_kinds
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for kind in &kinds {
            pipe.cmd("HGETALL").arg(self.keys.key("facts", kind));
        }
        let started = Instant::now();
        let Ok(replies) = self
            .call::<Vec<Vec<Option<String>>>>(&pipe, self.config.call_timeout * 2)
            .await
        else {
            return;
        };
        let mut replies = replies.into_iter();
        if !labels.is_empty() {
            let cool = replies.next().unwrap_or_default();
            let uses = replies.next().unwrap_or_default();
            let usage = replies.next().unwrap_or_default();
            self.apply_cooldowns(&labels, cool, started, now);
            self.apply_usage(&labels, usage);
            for (label, n) in labels.iter().zip(uses) {
                if let Some(n) = n.and_then(|n| n.parse::<u64>().ok()) {
                    self.local.raise_uses(label, n);
                }
            }
        }
        if !sessions.is_empty() {
            let values = replies.next().unwrap_or_default();
            self.apply_sessions(&sessions, values, started, now);
        }
        for kind in &kinds {
            let flat = replies.next().unwrap_or_default();
            for pair in flat.chunks(2) {
                let (Some(Some(fact)), Some(Some(until))) = (pair.first(), pair.get(1)) else {
                    continue;
                };
                if let Ok(ms) = until.parse::<u64>() {
                    let until = UNIX_EPOCH + Duration::from_millis(ms);
                    if until > now {
                        self.local.learn_fact(kind, fact, until);
                    }
                }
            }
        }
        *lock(&self.last_read) = Some(Instant::now());
        if let Some(m) = &self.metrics {
            m.inc(
                "tr_state_reads_total",
                "Batched reads of the shared state that refreshed this replica's local view.",
                &[("backend", "redis")],
            );
        }
        self.report_age();
    }

    fn apply_cooldowns(
        &self,
        labels: &[Arc<str>],
        values: Vec<Option<String>>,
        started: Instant,
        now: SystemTime,
    ) {
        let written = lock(&self.cool_written).clone();
        for (label, value) in labels.iter().zip(values) {
            // A write of ours sent after this read began may not be in it: keep ours.
            let pending = written
                .get(&**label)
                .is_some_and(|t| *t + self.config.call_timeout * 4 > started || *t > started);
            let remote = value.as_deref().and_then(decode_cooldown);
            let local = self.local.cooldown(label);
            match (remote, local) {
                (Some(r), Some(l)) if r == l => {}
                (Some(r), Some(l)) if pending && !r.outlasts(&l) => {}
                (Some(r), _) => self.local.replace_cooldown(label, Some(r)),
                // Gone from Redis: expired (keep the expired one: an auth cooldown's end is
                // what starts a probe) or cleared by another replica.
                (None, Some(l)) if l.active(now) && !pending => {
                    self.local.replace_cooldown(label, None)
                }
                (None, _) => {}
            }
        }
    }

    fn apply_usage(&self, labels: &[Arc<str>], values: Vec<Option<String>>) {
        let mut usage = lock(&self.usage);
        for (label, value) in labels.iter().zip(values) {
            let Some(remote) = value.as_deref().and_then(CredentialUsage::from_snapshot) else {
                continue;
            };
            let newer = usage
                .get(&**label)
                .is_none_or(|local| remote.seen_at >= local.seen_at);
            if newer {
                usage.insert(label.to_string(), remote);
            }
        }
    }

    fn watch_kind(&self, kind: &str) {
        if self
            .fact_kinds
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|k| k == kind)
        {
            return;
        }
        let mut kinds = self.fact_kinds.write().unwrap_or_else(|p| p.into_inner());
        if kinds.len() < 16 && !kinds.iter().any(|k| k == kind) {
            kinds.push(kind.to_string());
        }
    }

    fn apply_sessions(
        &self,
        keys: &[Arc<str>],
        values: Vec<Option<String>>,
        started: Instant,
        now: SystemTime,
    ) {
        let watched = lock(&self.watched);
        let mut updates = Vec::new();
        for (key, value) in keys.iter().zip(values) {
            let pending = watched
                .get(key, now)
                .flatten()
                .is_some_and(|t| t + self.config.call_timeout * 4 > started);
            if pending {
                continue;
            }
            if let Some(s) = value.and_then(|v| serde_json::from_str::<StoredSession>(&v).ok()) {
                updates.push((
                    key.clone(),
                    SessionBinding {
                        primary: s.primary,
                        fallback: s.fallback,
                        last: s.last,
                    },
                ));
            }
        }
        drop(watched);
        for (key, b) in updates {
            if self.local.session(&key).as_ref() != Some(&b) {
                self.local.set_session(&key, b);
            }
        }
    }

    fn report_age(&self) {
        let Some(m) = &self.metrics else { return };
        let age = lock(&self.last_read).map_or(f64::INFINITY, |t| t.elapsed().as_secs_f64());
        m.set(
            "tr_state_view_age_seconds",
            "Seconds since this replica last read the shared state (its local view's age; +Inf: never).",
            &[("backend", "redis")],
            age,
        );
    }

    /// Sends a batch (the backlog first, once Redis answers).
    async fn flush(&self, mut batch: Vec<(u64, Write)>) {
        if self.up.load(Ordering::Acquire) {
            let mut backlog = lock(&self.backlog);
            if !backlog.is_empty() {
                let mut all: Vec<(u64, Write)> = backlog.drain(..).collect();
                all.append(&mut batch);
                batch = all;
            }
        }
        batch.retain(|(_, w)| !matches!(w, Write::Wake));
        let batch = coalesce(batch);
        // The batch counts as sent once all of it is: coalescing moved writes around, so a
        // chunk's highest sequence number says nothing about the writes before it.
        let top = batch.iter().map(|(s, _)| *s).max().unwrap_or(0);
        for (i, chunk) in batch.chunks(BATCH).enumerate() {
            let mut pipe = redis::pipe();
            for (_, w) in chunk {
                w.add_to(&mut pipe);
            }
            match self.call::<()>(&pipe, self.config.call_timeout).await {
                Ok(()) => {}
                Err(e) if self.up.load(Ordering::Acquire) => {
                    // Redis answered with an error (a script failed): nothing to retry.
                    tracing::warn!(error = %e, "shared state: a write was refused");
                }
                Err(_) => {
                    self.keep(batch[i * BATCH..].to_vec());
                    return;
                }
            }
        }
        self.flushed.send_if_modified(|f| {
            let moved = top > *f;
            *f = (*f).max(top);
            moved
        });
    }

    async fn owner_from_redis(&self, id: &str) -> Option<(String, Duration)> {
        if id.len() > MAX_KEY {
            return None;
        }
        let key = self.keys.key("owner", id);
        let mut pipe = redis::pipe();
        pipe.cmd("GET").arg(&key).cmd("PTTL").arg(&key);
        let (owner, ttl): (Option<String>, i64) =
            self.call(&pipe, self.config.call_timeout).await.ok()?;
        let ttl = Duration::from_millis(u64::try_from(ttl).unwrap_or(60_000));
        owner.map(|o| (o, ttl))
    }
}

/// One `INCRBY` per credential for a batch's uses, and the last of a batch's writes of one
/// session: most requests' writes cost a fraction of a command.
fn coalesce(batch: Vec<(u64, Write)>) -> Vec<(u64, Write)> {
    let mut uses: HashMap<String, (u64, u64)> = HashMap::new();
    let mut sessions: HashMap<String, usize> = HashMap::new();
    let mut out: Vec<(u64, Write)> = Vec::with_capacity(batch.len());
    for (seq, w) in batch {
        match w {
            Write::Use { key, n } => {
                let e = uses.entry(key).or_insert((0, 0));
                e.0 = e.0.max(seq);
                e.1 += n;
            }
            Write::Session { ref key, .. } => match sessions.get(key) {
                Some(&at) => out[at] = (seq, w),
                None => {
                    sessions.insert(key.clone(), out.len());
                    out.push((seq, w));
                }
            },
            w => out.push((seq, w)),
        }
    }
    out.extend(
        uses.into_iter()
            .map(|(key, (seq, n))| (seq, Write::Use { key, n })),
    );
    out
}

async fn write_loop(shared: Weak<Shared>, mut rx: mpsc::Receiver<(u64, Write)>) {
    while let Some(first) = rx.recv().await {
        let Some(shared) = shared.upgrade() else {
            return;
        };
        if !matches!(first.1, Write::Wake) {
            tokio::select! {
                _ = tokio::time::sleep(LINGER) => {}
                _ = shared.urgent.notified() => {}
            }
        }
        let mut batch = vec![first];
        while batch.len() < QUEUE {
            match rx.try_recv() {
                Ok(w) => batch.push(w),
                Err(_) => break,
            }
        }
        shared.flush(batch).await;
    }
}

async fn read_loop(shared: Weak<Shared>) {
    let every = match shared.upgrade() {
        Some(s) => s.config.refresh_every.max(Duration::from_millis(10)),
        None => return,
    };
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(s) = shared.upgrade() else { return };
        s.read().await;
        s.report_age();
    }
}

impl PoolState for RedisState {
    fn cooldown(&self, credential: &str) -> Option<Cooldown> {
        self.shared.local.cooldown(credential)
    }

    fn set_cooldown(&self, credential: &str, cooldown: Cooldown) -> bool {
        let s = &self.shared;
        s.watch_label(credential);
        if !s.local.set_cooldown(credential, cooldown.clone()) {
            return false;
        }
        lock(&s.cool_written).insert(credential.to_string(), Instant::now());
        s.send(s.cooldown_write(credential, &cooldown));
        true
    }

    fn clear(&self, credential: &str) {
        let s = &self.shared;
        let seen = s.local.cooldown(credential);
        s.local.clear(credential);
        if let Some(seen) = seen {
            lock(&s.cool_written).insert(credential.to_string(), Instant::now());
            s.send(Write::Clear {
                key: s.keys.key("cool", credential),
                seen: rank(&seen),
            });
        }
    }

    fn record_use(&self, credential: &str) -> u64 {
        let s = &self.shared;
        s.send(Write::Use {
            key: s.keys.key("uses", credential),
            n: 1,
        });
        s.local.record_use(credential)
    }

    fn uses(&self, credential: &str) -> u64 {
        self.shared.local.uses(credential)
    }

    fn strike(&self, credential: &str, class: FailureClass) -> u32 {
        self.shared.local.strike(credential, class)
    }

    fn reset_strikes(&self, credential: &str) {
        self.shared.local.reset_strikes(credential)
    }

    fn session(&self, session: &str) -> Option<SessionBinding> {
        let s = &self.shared;
        if session.len() <= MAX_KEY {
            let now = SystemTime::now();
            let mut watched = lock(&s.watched);
            let written = watched.get(session, now).flatten();
            watched.insert(session, written, Some(now + WATCH_FOR), now);
        }
        s.local.session(session)
    }

    fn set_session(&self, session: &str, binding: SessionBinding) {
        let s = &self.shared;
        if session.len() <= MAX_KEY {
            let now = SystemTime::now();
            lock(&s.watched).insert(session, Some(Instant::now()), Some(now + WATCH_FOR), now);
            let value = serde_json::to_string(&StoredSession {
                primary: binding.primary.clone(),
                fallback: binding.fallback.clone(),
                last: binding.last.clone(),
            })
            .unwrap_or_default();
            s.send(Write::Session {
                key: s.keys.key("sess", session),
                value,
                ttl: s.config.session_ttl,
            });
        }
        s.local.set_session(session, binding);
    }

    fn put_owner(&self, key: &str, credential: &str, expires: SystemTime) {
        let s = &self.shared;
        // A stream names its id twice (created, completed): one write is enough.
        let known = s.local.owner(key, SystemTime::now()).as_deref() == Some(credential);
        s.local.put_owner(key, credential, expires);
        if known {
            return;
        }
        if key.len() > MAX_KEY {
            return;
        }
        let Ok(ttl) = expires.duration_since(SystemTime::now()) else {
            return;
        };
        let seq = s.send(Write::Owner {
            key: s.keys.key("owner", key),
            credential: credential.to_string(),
            ttl,
        });
        s.owner_seq.fetch_max(seq, Ordering::AcqRel);
    }

    fn owner(&self, key: &str, now: SystemTime) -> Option<String> {
        self.shared.local.owner(key, now)
    }

    fn is_shared(&self) -> bool {
        true
    }

    fn health(&self) -> Option<super::StoreHealth> {
        Some(super::StoreHealth {
            backend: "redis",
            up: self.is_up(),
            view_age: self.view_age(),
        })
    }

    fn find_owner<'a>(&'a self, key: &'a str) -> StateFuture<'a, Option<String>> {
        Box::pin(async move {
            if let Some(o) = self.shared.local.owner(key, SystemTime::now()) {
                return Some(o);
            }
            let (owner, ttl) = self.shared.owner_from_redis(key).await?;
            self.shared
                .local
                .put_owner(key, &owner, SystemTime::now() + ttl);
            Some(owner)
        })
    }

    fn owner_mark(&self) -> u64 {
        self.shared.owner_seq.load(Ordering::Acquire)
    }

    fn owners_settled(&self, mark: u64) -> StateFuture<'static, ()> {
        let s = self.shared.clone();
        let settled = mark == 0 || *s.flushed.borrow() >= mark || !s.up.load(Ordering::Acquire);
        if settled {
            return super::ready(());
        }
        s.urgent.notify_one();
        Box::pin(async move {
            let mut rx = s.flushed.subscribe();
            let _ = tokio::time::timeout(s.config.call_timeout, rx.wait_for(|f| *f >= mark)).await;
        })
    }

    fn claim_refresh<'a>(
        &'a self,
        login: &'a str,
        holder: &'a str,
        ttl: Duration,
    ) -> StateFuture<'a, Claim> {
        Box::pin(async move {
            let s = &self.shared;
            if !s.connect().await {
                return Claim::Unavailable;
            }
            let mut pipe = redis::pipe();
            pipe.cmd("SET")
                .arg(s.keys.key("refresh", login))
                .arg(holder)
                .arg("NX")
                .arg("PX")
                .arg(ttl.as_millis().clamp(1, u64::MAX as u128) as u64);
            match s
                .call::<(Option<String>,)>(&pipe, s.config.call_timeout)
                .await
            {
                Ok((Some(_),)) => Claim::Granted,
                Ok((None,)) => Claim::Held,
                Err(_) => Claim::Unavailable,
            }
        })
    }

    fn release_refresh<'a>(&'a self, login: &'a str, holder: &'a str) -> StateFuture<'a, ()> {
        Box::pin(async move {
            let s = &self.shared;
            let mut pipe = redis::pipe();
            pipe.cmd("EVAL")
                .arg(RELEASE_CLAIM)
                .arg(1)
                .arg(s.keys.key("refresh", login))
                .arg(holder)
                .ignore();
            // Not released: the claim expires by its own PX.
            let _ = s.call::<()>(&pipe, s.config.call_timeout).await;
        })
    }

    fn token_pair<'a>(
        &'a self,
        login: &'a str,
    ) -> StateFuture<'a, Result<Option<String>, StateError>> {
        Box::pin(async move {
            let s = &self.shared;
            if !s.connect().await {
                return Err(StateError("Redis is unreachable".into()));
            }
            let mut pipe = redis::pipe();
            pipe.cmd("GET").arg(s.keys.key("pair", login));
            let (v,): (Option<String>,) = s.call(&pipe, s.config.call_timeout).await?;
            Ok(v.and_then(|v| {
                serde_json::from_str::<serde_json::Value>(&v)
                    .ok()
                    .and_then(|j| j["login"].as_str().map(str::to_string))
            }))
        })
    }

    fn swap_token_pair<'a>(
        &'a self,
        login: &'a str,
        refreshed: &'a str,
        next_refresh: &'a str,
        pair: &'a str,
    ) -> StateFuture<'a, Result<bool, StateError>> {
        Box::pin(async move {
            let s = &self.shared;
            if !s.connect().await {
                return Err(StateError("Redis is unreachable".into()));
            }
            let value = serde_json::json!({ "rt": next_refresh, "login": pair }).to_string();
            let mut pipe = redis::pipe();
            pipe.cmd("EVAL")
                .arg(SWAP_PAIR)
                .arg(1)
                .arg(s.keys.key("pair", login))
                .arg(refreshed)
                .arg(value);
            let (written,): (i64,) = s.call(&pipe, s.config.call_timeout).await?;
            Ok(written == 1)
        })
    }

    fn put_usage(&self, credential: &str, usage: &CredentialUsage) {
        let s = &self.shared;
        lock(&s.usage).insert(credential.to_string(), usage.clone());
        let ttl = usage
            .last_reset()
            .and_then(|t| t.duration_since(SystemTime::now()).ok())
            .unwrap_or(USAGE_TTL)
            .max(USAGE_TTL);
        s.send(Write::Usage {
            key: s.keys.key("usage", credential),
            snapshot: usage.to_snapshot(),
            ttl,
        });
    }

    fn usage(&self, credential: &str) -> Option<CredentialUsage> {
        lock(&self.shared.usage).get(credential).cloned()
    }

    fn learn_fact(&self, kind: &str, fact: &str, until: SystemTime) {
        let s = &self.shared;
        s.watch_kind(kind);
        s.local.learn_fact(kind, fact, until);
        if fact.len() <= MAX_KEY {
            s.send(Write::Fact {
                key: s.keys.key("facts", kind),
                fact: fact.to_string(),
                until_ms: unix_ms(until),
            });
        }
    }

    fn facts(&self, kind: &str) -> Vec<String> {
        self.shared.watch_kind(kind);
        self.shared.local.facts(kind)
    }

    fn watch_credentials(&self, labels: &[&str]) {
        for l in labels {
            self.shared.watch_label(l);
        }
    }
}
