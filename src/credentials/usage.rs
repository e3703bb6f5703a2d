//! What each credential has left: its usage windows, as the upstream reports them.
//!
//! Three signals feed it, all of them already on the wire:
//! - the `x-codex-primary-*` / `x-codex-secondary-*` headers on every ChatGPT reply;
//! - the `codex.rate_limits` event at the start of a ChatGPT stream;
//! - `x-ratelimit-{limit,remaining,reset}-{requests,tokens}` on a platform reply.
//!
//! Which Codex window is the 5-hour one and which the weekly one is read from its length
//! ([`WindowKind::from_minutes`]), never from `primary`/`secondary`: the backend does not
//! promise an order.
//!
//! The pooled figures ([`pooled`]) are what a Codex client is told about the whole pool: the
//! average use of each window over the accounts in rotation, so the client hears
//! "exhausted" only when every account is.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderName};
use serde_json::Value;

use crate::classify::{CodexUsage, CodexWindow, has_header_prefix, parse_go_duration};

/// Which window a measurement belongs to, from the window's length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WindowKind {
    /// The short ChatGPT window (5 hours; anything from 1 to 24 hours long).
    FiveHour,
    /// The long ChatGPT window (a week; anything longer than a day).
    Weekly,
    /// A platform key's request limit (`x-ratelimit-*-requests`).
    Requests,
    /// A platform key's token limit (`x-ratelimit-*-tokens`).
    Tokens,
}

impl WindowKind {
    /// The ChatGPT window a length in minutes is: up to a day is the short one, longer the
    /// weekly one. `None` for a length under an hour, which no ChatGPT window has.
    pub fn from_minutes(minutes: u64) -> Option<WindowKind> {
        match minutes {
            0..60 => None,
            60..=1440 => Some(WindowKind::FiveHour),
            _ => Some(WindowKind::Weekly),
        }
    }

    /// Its name in `/status.json` and the page.
    pub fn as_str(self) -> &'static str {
        match self {
            WindowKind::FiveHour => "five_hour",
            WindowKind::Weekly => "weekly",
            WindowKind::Requests => "requests",
            WindowKind::Tokens => "tokens",
        }
    }
}

/// One usage window of one credential.
#[derive(Debug, Clone, PartialEq)]
pub struct UsageWindow {
    /// Which window.
    pub kind: WindowKind,
    /// How much of it is used, 0 to 100 (clamped).
    pub used_percent: f64,
    /// Its length, when the upstream says.
    pub window_minutes: Option<u64>,
    /// When it resets, when the upstream says.
    pub reset_at: Option<SystemTime>,
}

impl UsageWindow {
    /// Its use now: a window whose reset has passed is empty again.
    pub fn used_at(&self, now: SystemTime) -> f64 {
        match self.reset_at {
            Some(reset) if reset <= now => 0.0,
            _ => self.used_percent,
        }
    }
}

/// What one credential has left, as last reported.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CredentialUsage {
    /// Its windows, one per kind, in [`WindowKind`] order.
    pub windows: Vec<UsageWindow>,
    /// The account can go on past a window on purchased credits.
    pub has_credits: Option<bool>,
    /// The account has no limit.
    pub unlimited: Option<bool>,
    /// Its credit balance, as sent.
    pub balance: Option<String>,
    /// Its ChatGPT plan (`plus`, `pro`, ...), from the `codex.rate_limits` event.
    pub plan_type: Option<String>,
    /// When this was reported.
    pub seen_at: Option<SystemTime>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Snapshot {
    windows: Vec<SnapshotWindow>,
    #[serde(default)]
    has_credits: Option<bool>,
    #[serde(default)]
    unlimited: Option<bool>,
    #[serde(default)]
    balance: Option<String>,
    #[serde(default)]
    plan_type: Option<String>,
    #[serde(default)]
    seen_ms: Option<u64>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct SnapshotWindow {
    kind: String,
    used_percent: f64,
    #[serde(default)]
    window_minutes: Option<u64>,
    #[serde(default)]
    reset_ms: Option<u64>,
}

fn clamp_percent(p: f64) -> f64 {
    if p.is_finite() {
        p.clamp(0.0, 100.0)
    } else {
        0.0
    }
}

/// The platform's `x-ratelimit-{limit,remaining,reset}-*` names of one limit, built at
/// compile time (a lookup by `&str` parses the name first).
struct RateLimitNames {
    limit: HeaderName,
    remaining: HeaderName,
    reset: HeaderName,
}

static RATE_LIMIT_REQUESTS: RateLimitNames = RateLimitNames {
    limit: HeaderName::from_static("x-ratelimit-limit-requests"),
    remaining: HeaderName::from_static("x-ratelimit-remaining-requests"),
    reset: HeaderName::from_static("x-ratelimit-reset-requests"),
};

static RATE_LIMIT_TOKENS: RateLimitNames = RateLimitNames {
    limit: HeaderName::from_static("x-ratelimit-limit-tokens"),
    remaining: HeaderName::from_static("x-ratelimit-remaining-tokens"),
    reset: HeaderName::from_static("x-ratelimit-reset-tokens"),
};

impl CredentialUsage {
    /// The ChatGPT windows of the `x-codex-*` headers, placed by their length.
    pub fn from_codex(usage: &CodexUsage, now: SystemTime) -> CredentialUsage {
        let mut out = CredentialUsage {
            has_credits: usage.has_credits,
            unlimited: usage.unlimited,
            balance: usage.balance.clone(),
            seen_at: Some(now),
            ..Default::default()
        };
        for w in usage.primary.iter().chain(usage.secondary.iter()) {
            out.put(codex_window(w));
        }
        out
    }

    /// Reads the usage a reply's headers carry: the Codex headers, else the platform's
    /// `x-ratelimit-*`. `None` when they carry none.
    pub fn from_headers(headers: &HeaderMap, now: SystemTime) -> Option<CredentialUsage> {
        if let Some(codex) = CodexUsage::from_headers(headers) {
            let usage = CredentialUsage::from_codex(&codex, now);
            return (!usage.windows.is_empty()).then_some(usage);
        }
        if !has_header_prefix(headers, "x-ratelimit-") {
            return None;
        }
        let mut out = CredentialUsage {
            seen_at: Some(now),
            ..Default::default()
        };
        for (names, kind) in [
            (&RATE_LIMIT_REQUESTS, WindowKind::Requests),
            (&RATE_LIMIT_TOKENS, WindowKind::Tokens),
        ] {
            let num = |name: &HeaderName| {
                headers
                    .get(name)?
                    .to_str()
                    .ok()?
                    .trim()
                    .parse::<f64>()
                    .ok()
                    .filter(|f| f.is_finite() && *f >= 0.0)
            };
            let (Some(limit), Some(remaining)) = (num(&names.limit), num(&names.remaining)) else {
                continue;
            };
            if limit <= 0.0 {
                continue;
            }
            let reset = headers
                .get(&names.reset)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_go_duration);
            out.put(UsageWindow {
                kind,
                used_percent: clamp_percent((limit - remaining) / limit * 100.0),
                window_minutes: None,
                reset_at: reset.and_then(|d| now.checked_add(d)),
            });
        }
        (!out.windows.is_empty()).then_some(out)
    }

    /// Reads a `codex.rate_limits` event (`{"type":"codex.rate_limits","plan_type":..,
    /// "rate_limits":{"primary":{"used_percent":..,"window_minutes":..,"reset_at":..,
    /// "reset_after_seconds":..},"secondary":{..}},"credits":{..}}`). `None` for any other
    /// event, or one without a window.
    pub fn from_rate_limits_event(event: &Value, now: SystemTime) -> Option<CredentialUsage> {
        if event.get("type").and_then(Value::as_str) != Some("codex.rate_limits") {
            return None;
        }
        let limits = event.get("rate_limits")?;
        let mut out = CredentialUsage {
            plan_type: event
                .get("plan_type")
                .and_then(Value::as_str)
                .map(|s| s.chars().take(32).collect()),
            seen_at: Some(now),
            ..Default::default()
        };
        for which in ["primary", "secondary"] {
            let Some(w) = limits.get(which).filter(|w| w.is_object()) else {
                continue;
            };
            let Some(used) = w.get("used_percent").and_then(Value::as_f64) else {
                continue;
            };
            let minutes = w.get("window_minutes").and_then(Value::as_u64).or_else(|| {
                w.get("limit_window_seconds")
                    .and_then(Value::as_u64)
                    .map(|s| s / 60)
            });
            let reset_at = w
                .get("reset_at")
                .and_then(Value::as_f64)
                .and_then(unix)
                .or_else(|| {
                    let after = w.get("reset_after_seconds").and_then(Value::as_f64)?;
                    now.checked_add(Duration::try_from_secs_f64(after).ok()?)
                });
            out.put(codex_window(&CodexWindow {
                used_percent: used,
                window_minutes: minutes,
                reset_at,
            }));
        }
        if let Some(credits) = event.get("credits").filter(|c| c.is_object()) {
            out.has_credits = credits.get("has_credits").and_then(Value::as_bool);
            out.unlimited = credits.get("unlimited").and_then(Value::as_bool);
            out.balance = credits
                .get("balance")
                .and_then(Value::as_str)
                .map(|s| s.chars().take(32).collect());
        }
        (!out.windows.is_empty()).then_some(out)
    }

    /// Keeps one window per kind: a later report of a kind replaces the earlier one.
    fn put(&mut self, w: UsageWindow) {
        self.windows.retain(|old| old.kind != w.kind);
        self.windows.push(w);
        self.windows.sort_by_key(|w| w.kind);
    }

    /// Takes a newer report in: its windows replace those of the same kind; what it does not
    /// say is kept.
    pub fn merge(&mut self, newer: CredentialUsage) {
        for w in newer.windows {
            self.put(w);
        }
        self.has_credits = newer.has_credits.or(self.has_credits);
        self.unlimited = newer.unlimited.or(self.unlimited);
        self.balance = newer.balance.or(self.balance.take());
        self.plan_type = newer.plan_type.or(self.plan_type.take());
        self.seen_at = newer.seen_at.or(self.seen_at);
    }

    /// The snapshot replicas share: JSON with Unix-millisecond times.
    pub fn to_snapshot(&self) -> String {
        let ms = |t: SystemTime| {
            t.duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis().min(u64::MAX as u128) as u64)
        };
        let snap = Snapshot {
            windows: self
                .windows
                .iter()
                .map(|w| SnapshotWindow {
                    kind: w.kind.as_str().to_string(),
                    used_percent: w.used_percent,
                    window_minutes: w.window_minutes,
                    reset_ms: w.reset_at.map(ms),
                })
                .collect(),
            has_credits: self.has_credits,
            unlimited: self.unlimited,
            balance: self.balance.clone(),
            plan_type: self.plan_type.clone(),
            seen_ms: self.seen_at.map(ms),
        };
        serde_json::to_string(&snap).unwrap_or_default()
    }

    /// Reads a [snapshot](Self::to_snapshot) back; `None` if it is not one. Windows of an
    /// unknown kind are skipped and percentages clamped: another replica's data is input.
    pub fn from_snapshot(text: &str) -> Option<CredentialUsage> {
        let snap: Snapshot = serde_json::from_str(text).ok()?;
        let at = |ms: u64| UNIX_EPOCH.checked_add(Duration::from_millis(ms));
        let mut out = CredentialUsage {
            has_credits: snap.has_credits,
            unlimited: snap.unlimited,
            balance: snap.balance,
            plan_type: snap.plan_type,
            seen_at: snap.seen_ms.and_then(at),
            ..Default::default()
        };
        for w in snap.windows {
            let kind = [
                WindowKind::FiveHour,
                WindowKind::Weekly,
                WindowKind::Requests,
                WindowKind::Tokens,
            ]
            .into_iter()
            .find(|k| k.as_str() == w.kind);
            if let Some(kind) = kind {
                out.put(UsageWindow {
                    kind,
                    used_percent: clamp_percent(w.used_percent),
                    window_minutes: w.window_minutes,
                    reset_at: w.reset_ms.and_then(at),
                });
            }
        }
        Some(out)
    }

    /// The latest reset among its windows (a shared snapshot lives until then).
    pub fn last_reset(&self) -> Option<SystemTime> {
        self.windows.iter().filter_map(|w| w.reset_at).max()
    }

    /// The window of a kind.
    pub fn window(&self, kind: WindowKind) -> Option<&UsageWindow> {
        self.windows.iter().find(|w| w.kind == kind)
    }

    /// The use of its tightest window now (0 when nothing is known): what `headroom` ranks.
    pub fn tightest_used(&self, now: SystemTime) -> f64 {
        self.windows
            .iter()
            .map(|w| w.used_at(now))
            .fold(0.0, f64::max)
    }

    /// Whether credits or an unlimited plan let it go on past a full window.
    pub fn unbounded(&self) -> bool {
        self.unlimited == Some(true) || self.has_credits == Some(true)
    }
}

fn unix(secs: f64) -> Option<SystemTime> {
    if !(0.0..1e11).contains(&secs) {
        return None;
    }
    UNIX_EPOCH.checked_add(Duration::try_from_secs_f64(secs).ok()?)
}

fn codex_window(w: &CodexWindow) -> UsageWindow {
    // Without a length, the position is all there is: the backend sends the short window
    // first when it sends a length-less pair.
    let kind = w
        .window_minutes
        .and_then(WindowKind::from_minutes)
        .unwrap_or(WindowKind::FiveHour);
    UsageWindow {
        kind,
        used_percent: clamp_percent(w.used_percent),
        window_minutes: w.window_minutes,
        reset_at: w.reset_at,
    }
}

/// One window over the whole pool.
#[derive(Debug, Clone, PartialEq)]
pub struct PooledWindow {
    /// Which window.
    pub kind: WindowKind,
    /// The average use over the accounts that report this window.
    pub used_percent: f64,
    /// The window's length (the longest reported).
    pub window_minutes: Option<u64>,
    /// When capacity next returns: the earliest reset among the accounts.
    pub reset_at: Option<SystemTime>,
    /// Every account reporting it has used it up.
    pub exhausted: bool,
    /// How many accounts report it.
    pub accounts: usize,
}

/// The pool's windows: per kind, the average over `accounts` (each the usage of one
/// credential in rotation). Accounts that go on on credits count as unused.
pub fn pooled(accounts: &[&CredentialUsage], now: SystemTime) -> Vec<PooledWindow> {
    let mut out: Vec<PooledWindow> = Vec::new();
    for kind in [
        WindowKind::FiveHour,
        WindowKind::Weekly,
        WindowKind::Requests,
        WindowKind::Tokens,
    ] {
        let windows: Vec<(&UsageWindow, bool)> = accounts
            .iter()
            .filter_map(|a| a.window(kind).map(|w| (w, a.unbounded())))
            .collect();
        if windows.is_empty() {
            continue;
        }
        let used: Vec<f64> = windows
            .iter()
            .map(|(w, unbounded)| if *unbounded { 0.0 } else { w.used_at(now) })
            .collect();
        let n = used.len();
        out.push(PooledWindow {
            kind,
            used_percent: used.iter().sum::<f64>() / n as f64,
            window_minutes: windows.iter().filter_map(|(w, _)| w.window_minutes).max(),
            reset_at: windows
                .iter()
                .filter_map(|(w, _)| w.reset_at.filter(|r| *r > now))
                .min(),
            exhausted: used.iter().all(|u| *u >= 100.0),
            accounts: n,
        });
    }
    out
}

/// The plans the Codex CLI knows (`PlanType` of its backend models): any other string would
/// fail its parse of the whole payload.
const CODEX_PLANS: &[&str] = &[
    "guest",
    "free",
    "go",
    "plus",
    "pro",
    "free_workspace",
    "team",
    "business",
    "education",
    "quorum",
    "k12",
    "enterprise",
    "edu",
];

fn secs_i32(d: u64) -> i64 {
    d.min(i32::MAX as u64) as i64
}

/// The body of `GET /backend-api/wham/usage` (and `/api/codex/usage`) for the pool: the
/// Codex CLI's `RateLimitStatusPayload`, with the pooled 5-hour window as `primary_window`
/// and the weekly one as `secondary_window`. `limit_reached` only when a pooled window is
/// exhausted, that is, on every account. `accounts` gives the plan and credits.
pub fn codex_usage_payload(
    pooled: &[PooledWindow],
    accounts: &[&CredentialUsage],
    now: SystemTime,
) -> Value {
    let window = |kind: WindowKind| {
        let w = pooled.iter().find(|w| w.kind == kind)?;
        // Whole percents, as the CLI reads them; 100 only when the pool is used up.
        let mut used = w.used_percent.ceil();
        if !w.exhausted {
            used = used.min(99.0);
        }
        let reset_at = w.reset_at.unwrap_or(now);
        let after = reset_at.duration_since(now).unwrap_or_default().as_secs();
        let at = reset_at
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        Some(serde_json::json!({
            "used_percent": used as i64,
            "limit_window_seconds": secs_i32(w.window_minutes.unwrap_or(0).saturating_mul(60)),
            "reset_after_seconds": secs_i32(after),
            "reset_at": secs_i32(at),
        }))
    };
    let reached = pooled
        .iter()
        .filter(|w| matches!(w.kind, WindowKind::FiveHour | WindowKind::Weekly))
        .any(|w| w.exhausted);
    let plan = accounts
        .iter()
        .filter_map(|a| a.plan_type.as_deref())
        .find(|p| CODEX_PLANS.contains(p))
        .unwrap_or("plus");
    let mut body = serde_json::json!({
        "plan_type": plan,
        "rate_limit": {
            "allowed": !reached,
            "limit_reached": reached,
            "primary_window": window(WindowKind::FiveHour),
            "secondary_window": window(WindowKind::Weekly),
        },
    });
    if accounts.iter().any(|a| a.has_credits.is_some()) {
        body["credits"] = serde_json::json!({
            "has_credits": accounts.iter().any(|a| a.has_credits == Some(true)),
            "unlimited": accounts.iter().any(|a| a.unlimited == Some(true)),
        });
    }
    body
}

/// Rewrites a reply's `x-codex-{primary,secondary}-*` usage headers to the pool's figures
/// (the 5-hour window as primary, the weekly as secondary), so a Codex client never sees one
/// account's wall as its own. Headers of a window the pool has no figure for are left.
pub fn rewrite_codex_headers(headers: &mut HeaderMap, pooled: &[PooledWindow], now: SystemTime) {
    if CodexUsage::from_headers(headers).is_none() {
        return;
    }
    for (which, kind) in [
        ("primary", WindowKind::FiveHour),
        ("secondary", WindowKind::Weekly),
    ] {
        let Some(w) = pooled.iter().find(|w| w.kind == kind) else {
            continue;
        };
        let mut used = w.used_percent;
        if !w.exhausted {
            used = used.min(99.9);
        }
        let mut set = |field: &str, value: String| {
            if let (Ok(name), Ok(value)) = (
                http::HeaderName::from_bytes(format!("x-codex-{which}-{field}").as_bytes()),
                http::HeaderValue::from_str(&value),
            ) {
                headers.insert(name, value);
            }
        };
        set("used-percent", format!("{:.1}", used));
        if let Some(m) = w.window_minutes {
            set("window-minutes", m.to_string());
        }
        if let Some(r) = w.reset_at {
            let at = r.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
            set("reset-at", at.to_string());
            let after = r.duration_since(now).unwrap_or_default().as_secs();
            set("reset-after-seconds", after.to_string());
        }
    }
}

/// How many sessions the ledger keeps; past it, the one with the smallest input leaves.
const LEDGER_SESSIONS: usize = 512;
/// How many turns of a session the ledger keeps (the latest).
const LEDGER_TURNS: usize = 100;

/// Requests and tokens per credential today (UTC), and each session's input tokens per turn:
/// what the status page shows beside the windows. Bounded: at most 512 sessions of 100
/// turns each.
#[derive(Debug, Default)]
pub struct UsageLedger {
    inner: std::sync::Mutex<Ledger>,
}

#[derive(Debug, Default)]
struct Ledger {
    day: u64,
    credentials: std::collections::HashMap<String, Today>,
    sessions: std::collections::HashMap<String, Vec<u64>>,
}

/// One credential's figures for today (UTC).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Today {
    /// Answers it gave.
    pub requests: u64,
    /// Input plus output tokens of those answers that reported usage.
    pub tokens: u64,
}

/// Runs `f` on the entry of `key`, made with its default if new: the key is copied only then
/// (a credential's or a session's entry usually exists; the ledger is updated per request).
fn with_entry<V: Default>(
    map: &mut std::collections::HashMap<String, V>,
    key: &str,
    f: impl FnOnce(&mut V),
) {
    match map.get_mut(key) {
        Some(v) => f(v),
        None => f(map.entry(key.to_owned()).or_default()),
    }
}

fn utc_day(now: SystemTime) -> u64 {
    now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() / 86_400
}

impl UsageLedger {
    fn ledger(&self, now: SystemTime) -> std::sync::MutexGuard<'_, Ledger> {
        let mut l = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let day = utc_day(now);
        if l.day != day {
            l.day = day;
            l.credentials.clear();
        }
        l
    }

    /// Counts an answer of `credential`.
    pub fn record_request(&self, credential: &str, now: SystemTime) {
        let mut l = self.ledger(now);
        with_entry(&mut l.credentials, credential, |t| t.requests += 1);
    }

    /// Records a finished turn's usage: tokens for the credential, input tokens as the
    /// session's next turn.
    pub fn record_turn(
        &self,
        credential: Option<&str>,
        session: Option<&str>,
        input: u64,
        output: u64,
        now: SystemTime,
    ) {
        let mut l = self.ledger(now);
        if let Some(c) = credential {
            with_entry(&mut l.credentials, c, |t| {
                t.tokens = t.tokens.saturating_add(input.saturating_add(output));
            });
        }
        let Some(session) = session else { return };
        // Sessions are kept by their first 128 characters.
        let session = session
            .char_indices()
            .nth(128)
            .map_or(session, |(end, _)| &session[..end]);
        if !l.sessions.contains_key(session) && l.sessions.len() >= LEDGER_SESSIONS {
            let smallest = l
                .sessions
                .iter()
                .min_by_key(|(_, turns)| turns.iter().max().copied().unwrap_or(0))
                .map(|(k, _)| k.clone());
            if let Some(k) = smallest {
                l.sessions.remove(&k);
            }
        }
        with_entry(&mut l.sessions, session, |turns| {
            if turns.len() >= LEDGER_TURNS {
                turns.remove(0);
            }
            turns.push(input);
        });
    }

    /// A credential's figures today.
    pub fn today(&self, credential: &str, now: SystemTime) -> Today {
        self.ledger(now)
            .credentials
            .get(credential)
            .copied()
            .unwrap_or_default()
    }

    /// The `n` sessions with the largest input, largest first, each with its turns' input
    /// tokens in order.
    pub fn top_sessions(&self, n: usize) -> Vec<(String, Vec<u64>)> {
        let l = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut all: Vec<(String, Vec<u64>)> = l
            .sessions
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        all.sort_by_key(|(k, turns)| {
            (
                std::cmp::Reverse(turns.iter().max().copied().unwrap_or(0)),
                k.clone(),
            )
        });
        all.truncate(n);
        all
    }
}

/// Learns usage from the events `SoftFailureDetectLayer` already parses (no second reader
/// of the stream): a `codex.rate_limits` event updates the serving account's windows, and the
/// terminal event's usage (input and output tokens) goes to the ledger for the account and the
/// session. Add it to a request with
/// [`StreamObservers::add`](crate::soft_failure::StreamObservers::add).
pub struct UsageObserver {
    pool: Option<std::sync::Arc<super::Pool>>,
    ledger: std::sync::Arc<UsageLedger>,
    session: Option<String>,
}

impl UsageObserver {
    /// An observer that reports windows to `pool` and turns to `ledger`.
    pub fn new(
        pool: Option<std::sync::Arc<super::Pool>>,
        ledger: std::sync::Arc<UsageLedger>,
        session: Option<String>,
    ) -> Self {
        UsageObserver {
            pool,
            ledger,
            session,
        }
    }
}

impl crate::soft_failure::StreamObserver for UsageObserver {
    fn event(&self, credential: Option<&str>, event_type: &str, data: &[u8]) {
        match event_type {
            "codex.rate_limits" => {
                let (Some(pool), Some(label)) = (&self.pool, credential) else {
                    return;
                };
                // A small event, sent once at the stream's start: parsing it whole is cheap.
                let usage = serde_json::from_slice::<Value>(data)
                    .ok()
                    .and_then(|v| CredentialUsage::from_rate_limits_event(&v, SystemTime::now()));
                if let Some(u) = usage {
                    pool.record_usage(label, u);
                }
            }
            "response.completed" | "response.incomplete" | "response.failed" => {
                // Scanned, not parsed: `response.completed` carries the whole output.
                if let Some(usage) = crate::soft_failure::terminal_usage(data) {
                    self.record_turn(credential, usage);
                }
            }
            _ => {}
        }
    }

    /// Windows come from `codex.rate_limits`, tokens from the terminal event only.
    fn reads_content(&self) -> bool {
        false
    }

    /// The turn's tokens, from the usage read once for every observer.
    fn terminal(
        &self,
        credential: Option<&str>,
        terminal: &crate::soft_failure::TerminalEvent<'_>,
    ) {
        if let Some(usage) = terminal.usage {
            self.record_turn(credential, usage);
        }
    }
}

impl UsageObserver {
    fn record_turn(&self, credential: Option<&str>, usage: crate::soft_failure::TerminalUsage) {
        if let Some((input, output)) = usage.tokens() {
            self.ledger.record_turn(
                credential,
                self.session.as_deref(),
                input,
                output,
                SystemTime::now(),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ledger_counts_per_credential_and_keeps_sessions_by_their_first_128_characters() {
        let ledger = UsageLedger::default();
        let now = SystemTime::now();
        ledger.record_request("key-1", now);
        ledger.record_request("key-1", now);
        ledger.record_request("key-2", now);
        ledger.record_turn(Some("key-1"), None, 10, 5, now);
        ledger.record_turn(Some("key-1"), None, 1, 1, now);
        let one = ledger.today("key-1", now);
        assert_eq!((one.requests, one.tokens), (2, 17));
        assert_eq!(ledger.today("key-2", now).requests, 1);
        // Multi-byte characters: the key is cut at a character, never inside one.
        let long = "\u{e9}".repeat(200);
        let same_start = format!("{}x", "\u{e9}".repeat(128));
        ledger.record_turn(None, Some(&long), 7, 0, now);
        ledger.record_turn(None, Some(&long), 8, 0, now);
        ledger.record_turn(None, Some(&same_start), 9, 0, now);
        ledger.record_turn(None, Some("short"), 3, 0, now);
        let top = ledger.top_sessions(10);
        assert_eq!(top.len(), 2, "{top:?}");
        assert_eq!(top[0].0, "\u{e9}".repeat(128));
        assert_eq!(top[0].1, vec![7, 8, 9]);
        assert_eq!(top[1], ("short".to_string(), vec![3]));
        // A full table: a long session already there is not a new one (nothing is evicted).
        for i in 0..LEDGER_SESSIONS - 2 {
            ledger.record_turn(None, Some(&format!("s{i}")), 1000, 0, now);
        }
        ledger.record_turn(None, Some(&long), 1, 0, now);
        let all = ledger.top_sessions(usize::MAX);
        assert_eq!(all.len(), LEDGER_SESSIONS);
        assert!(all.iter().any(|(k, _)| k == "short"));
    }

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    /// The length decides the window, whatever the position; one table.
    #[test]
    fn windows_are_placed_by_their_length_not_their_name() {
        let now = at(1_000_000);
        // (headers, then per window: kind, used, reset as Unix seconds)
        type Case<'a> = (
            &'a [(&'a str, &'a str)],
            &'a [(WindowKind, f64, Option<u64>)],
        );
        let cases: &[Case] = &[
            // The usual order.
            (
                &[
                    ("x-codex-primary-used-percent", "40"),
                    ("x-codex-primary-window-minutes", "300"),
                    ("x-codex-primary-reset-at", "1003600"),
                    ("x-codex-secondary-used-percent", "10"),
                    ("x-codex-secondary-window-minutes", "10080"),
                    ("x-codex-secondary-reset-at", "1500000"),
                ],
                &[
                    (WindowKind::FiveHour, 40.0, Some(1_003_600)),
                    (WindowKind::Weekly, 10.0, Some(1_500_000)),
                ],
            ),
            // Swapped: the weekly window sent as primary.
            (
                &[
                    ("x-codex-primary-used-percent", "70"),
                    ("x-codex-primary-window-minutes", "10080"),
                    ("x-codex-secondary-used-percent", "5.5"),
                    ("x-codex-secondary-window-minutes", "300"),
                ],
                &[
                    (WindowKind::FiveHour, 5.5, None),
                    (WindowKind::Weekly, 70.0, None),
                ],
            ),
            // A weekly-only plan.
            (
                &[
                    ("x-codex-primary-used-percent", "120"),
                    ("x-codex-primary-window-minutes", "10080"),
                ],
                &[(WindowKind::Weekly, 100.0, None)],
            ),
            // The platform: used is (limit - remaining) / limit.
            (
                &[
                    ("x-ratelimit-limit-requests", "500"),
                    ("x-ratelimit-remaining-requests", "125"),
                    ("x-ratelimit-reset-requests", "6m0s"),
                    ("x-ratelimit-limit-tokens", "1000"),
                    ("x-ratelimit-remaining-tokens", "1000"),
                ],
                &[
                    (WindowKind::Requests, 75.0, Some(1_000_360)),
                    (WindowKind::Tokens, 0.0, None),
                ],
            ),
        ];
        for (pairs, want) in cases {
            let got = CredentialUsage::from_headers(&headers(pairs), now).unwrap();
            let got: Vec<(WindowKind, f64, Option<u64>)> = got
                .windows
                .iter()
                .map(|w| {
                    (
                        w.kind,
                        w.used_percent,
                        w.reset_at
                            .map(|r| r.duration_since(UNIX_EPOCH).unwrap().as_secs()),
                    )
                })
                .collect();
            assert_eq!(&got, want, "{pairs:?}");
        }
        assert_eq!(CredentialUsage::from_headers(&HeaderMap::new(), now), None);
        let zero_limit = headers(&[
            ("x-ratelimit-limit-requests", "0"),
            ("x-ratelimit-remaining-requests", "0"),
        ]);
        assert_eq!(CredentialUsage::from_headers(&zero_limit, now), None);
    }

    #[test]
    fn the_rate_limits_event_gives_the_same_windows() {
        let now = at(1_000_000);
        let event = serde_json::json!({
            "type": "codex.rate_limits", "plan_type": "pro",
            "rate_limits": {"allowed": true, "limit_reached": false,
                "primary": {"used_percent": 7, "window_minutes": 300, "reset_after_seconds": 600},
                "secondary": {"used_percent": 29, "window_minutes": 10080, "reset_at": 1_400_000}},
            "credits": {"has_credits": false, "unlimited": false, "balance": "0"}
        });
        let u = CredentialUsage::from_rate_limits_event(&event, now).unwrap();
        assert_eq!(u.plan_type.as_deref(), Some("pro"));
        let five = u.window(WindowKind::FiveHour).unwrap();
        assert_eq!(
            (five.used_percent, five.reset_at),
            (7.0, Some(at(1_000_600)))
        );
        assert_eq!(u.window(WindowKind::Weekly).unwrap().used_percent, 29.0);
        assert_eq!(u.tightest_used(now), 29.0);
        // Past its reset, a window is empty again.
        assert_eq!(u.tightest_used(at(1_500_000)), 0.0);
        let other = serde_json::json!({"type": "response.created"});
        assert_eq!(CredentialUsage::from_rate_limits_event(&other, now), None);
    }

    #[test]
    fn the_pool_is_exhausted_only_when_every_account_is() {
        let now = at(1_000_000);
        let account = |five: f64, weekly: f64, reset: u64| CredentialUsage {
            windows: vec![
                UsageWindow {
                    kind: WindowKind::FiveHour,
                    used_percent: five,
                    window_minutes: Some(300),
                    reset_at: Some(at(reset)),
                },
                UsageWindow {
                    kind: WindowKind::Weekly,
                    used_percent: weekly,
                    window_minutes: Some(10080),
                    reset_at: Some(at(reset + 100_000)),
                },
            ],
            ..Default::default()
        };
        let full = account(100.0, 50.0, 1_010_000);
        let fresh = account(20.0, 10.0, 1_005_000);
        let p = pooled(&[&full, &fresh], now);
        assert_eq!(p[0].kind, WindowKind::FiveHour);
        assert_eq!(p[0].used_percent, 60.0);
        assert!(!p[0].exhausted);
        assert_eq!(p[0].reset_at, Some(at(1_005_000)));
        assert_eq!(p[1].used_percent, 30.0);
        let p = pooled(&[&full, &account(100.0, 10.0, 1_020_000)], now);
        assert!(p[0].exhausted);
    }
}
