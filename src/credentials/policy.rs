//! What happens to a failed attempt: one pure decision, read as a table.
//!
//! Every upstream attempt ends in an outcome: answered, or a classified [`Failure`] with the
//! [`Phase`] it reached. [`decide`] maps that outcome (with the credential's kind and the
//! request's situation) to a [`Decision`]: what to cool and until when, whether the request
//! may go to another credential, and what the client gets when it stops. [`when_none_usable`]
//! decides what a request gets when no credential can be picked at all. Rotation asks these
//! two functions and does what they say; the pool only keeps state. The table test in this
//! module is their specification; the README shows the same table.
//!
//! | class | phase | cooldown | next | the client sees, when it stops |
//! |---|---|---|---|---|
//! | `RateLimited` | before content | the hinted reset, clamped to 1 s..24 h; else 2 s doubling to 120 s | another credential | the upstream's answer |
//! | `QuotaExhausted` | before content | the hinted reset, clamped to 60 s..8 d; else 1 h | another credential | the upstream's answer |
//! | `Auth`, a key (literal, `env:`, `file:`) | before content | 60 s doubling to 1 h; after it a probe request tries the key again | another credential, unless it is the request's second auth failure in a row: then stop and cool nothing more (the request is the likely cause) | the upstream's answer |
//! | `Auth`, a `codex-auth:` login (borrowed) | before content | until its file changes (`owner_refresh_needed`) | as above | the upstream's answer |
//! | `Auth`, a `codex-oauth:` login (owned) | before content | `refresh_wait` (2 s) while it is refreshed once; ended by the refresh | as above | the upstream's answer |
//! | `Overloaded`, `Transient` | before content | *soft* (the key is only tried last): the hint clamped to 1..30 s, else 1 s doubling to 30 s | another credential | the upstream's answer (never the proxy's 429) |
//! | `StaleConnection` | before content | none: the connection's fault | another credential | the upstream's answer |
//! | `Blocked`, `ModelUnsupported`, `RouteNotFound`, `ContextLength`, `InvalidRequest`, `ContentPolicy`, `PreviousResponseNotFound`, `Cancelled`, `Unknown` | before content | none: the request or the route is at fault | stop | the upstream's answer |
//! | any | after content | as before content (reported by the stream) | stop: the client has seen content | the stream as it came |
//! | transport error | unsent (never reached the upstream) | none | another credential | `502 upstream_unavailable` |
//! | transport error | sent (the upstream may have worked on it) | none | stop: sending it again could run it twice | `502 upstream_unavailable` |
//!
//! Two situations override the next step: a request pinned to its anchor's owner never goes
//! elsewhere, and a remote compaction attempt that failed for any reason but rate, quota or
//! auth stops at once without cooling (the compaction layer falls back to a local summary).
//!
//! Before a pick, [`before_use`] decides what a login's token expiry calls for (its own
//! table): a borrowed login leaves 5 minutes ahead, an owned one is refreshed 10 minutes
//! ahead.
//!
//! A pinned request whose owner is out ([`when_owner_out`]) waits for it within `max_wait`,
//! else gets `503 previous_response_owner_unavailable` with the owner's return. What an owner
//! search makes of each credential's answer and of the whole search ([`owner_answer`],
//! [`after_owner_search`]), and when a socket whose upstream lost the chained response sends
//! the full request ([`after_lost_chain`]), have their own table in [`anchors`].
//!
//! When no credential can be picked ([`when_none_usable`]): only hard cooldowns (rate limit,
//! quota, auth) take a credential out; soft ones never do. If the earliest returns within
//! `max_wait` (2 s by default), the request waits for it. Otherwise every credential cooling
//! for quota gives `429 usage_limit_reached` with `resets_at`; any rate limit or quota gives
//! `429 rate_limit_exceeded`; only auth gives `503 credentials_unavailable`. Each carries
//! `Retry-After` with the earliest real return.
//!
//! ```
//! use std::time::{Duration, SystemTime};
//! use tower_responses::classify::{Failure, FailureClass};
//! use tower_responses::credentials::policy::{self, Attempt, ClientSees, KeyKind, Next};
//! use tower_responses::marks::Phase;
//!
//! let now = SystemTime::now();
//! let failure = Failure::new(FailureClass::Transient);
//! let d = policy::decide(&Attempt::new(Some(&failure), Phase::BeforeContent, KeyKind::Key, now),
//!     &Default::default());
//! // A 500 rests the key only softly, moves on, and never becomes the proxy's own 429.
//! assert!(d.cooldown.as_ref().is_some_and(|c| !c.excludes()));
//! assert_eq!(d.next, Next::Elsewhere);
//! assert_eq!(d.client, ClientSees::Answer);
//! ```

use std::time::{Duration, SystemTime};

use http::StatusCode;

use super::state::Cooldown;
use super::usage::{CredentialUsage, WindowKind};
use crate::classify::{Failure, FailureClass, Origin};
use crate::error::ApiError;
use crate::marks::Phase;

/// What kind of credential failed: it decides how an auth failure ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// An API key (literal, `env:`, `file:`): nothing can renew it, so an auth cooldown is
    /// finite and a later request probes it again.
    Key,
    /// A login read from a Codex `auth.json` (`codex-auth:`), *borrowed*: the proxy never
    /// refreshes it, so it comes back when its file changes (its owner, the Codex CLI,
    /// refreshed it).
    Login,
    /// A login the proxy owns (`codex-oauth:`): the proxy alone refreshes it, once after a
    /// 401 and ahead of its expiry; a refusal for good takes it out until `login NAME`.
    Owned,
}

/// Cooldown lengths and bounds, per class.
#[derive(Debug, Clone)]
pub struct CooldownPolicy {
    /// First backoff for a rate limit without a hint; doubles on repeats.
    pub rate_limit_floor: Duration,
    /// Cap of that backoff.
    pub rate_limit_max: Duration,
    /// The longest rate-limit hint believed.
    pub rate_limit_hint_max: Duration,
    /// Quota/billing exhaustion without a reset time.
    pub quota_default: Duration,
    /// The shortest quota cooldown, whatever the hint (a reset in the past still cools).
    pub quota_min: Duration,
    /// The longest quota hint believed (the weekly window, and a day to spare).
    pub quota_max: Duration,
    /// First auth cooldown of an API key; doubles on repeats.
    pub auth_floor: Duration,
    /// Cap of that.
    pub auth_max: Duration,
    /// First soft cooldown for overload / 5xx; doubles only on repeats.
    pub overload_floor: Duration,
    /// Cap of that, and of any hint for those classes.
    pub overload_max: Duration,
    /// An owned login is refreshed when its access token expires within this long.
    pub refresh_lead: Duration,
    /// A borrowed login leaves rotation when its access token expires within this long (the
    /// Codex CLI refreshes its own file 5 minutes ahead).
    pub borrowed_lead: Duration,
    /// An access token this close to its expiry is not sent: requests wait for the refresh
    /// or go elsewhere.
    pub expiry_margin: Duration,
    /// How long an owned login stays out while a refresh it needs runs (after a 401, or with
    /// its token expired); the refresh's end brings it back sooner.
    pub refresh_wait: Duration,
}

impl Default for CooldownPolicy {
    fn default() -> Self {
        CooldownPolicy {
            rate_limit_floor: Duration::from_secs(2),
            rate_limit_max: Duration::from_secs(120),
            rate_limit_hint_max: Duration::from_secs(24 * 3600),
            quota_default: Duration::from_secs(3600),
            quota_min: Duration::from_secs(60),
            quota_max: Duration::from_secs(8 * 24 * 3600),
            auth_floor: Duration::from_secs(60),
            auth_max: Duration::from_secs(3600),
            overload_floor: Duration::from_secs(1),
            overload_max: Duration::from_secs(30),
            refresh_lead: Duration::from_secs(10 * 60),
            borrowed_lead: Duration::from_secs(5 * 60),
            expiry_margin: Duration::from_secs(60),
            refresh_wait: Duration::from_secs(2),
        }
    }
}

/// What the policy knows about one finished attempt.
#[derive(Debug, Clone)]
pub struct Attempt<'a> {
    /// The classified failure, or `None` when the attempt was answered.
    pub failure: Option<&'a Failure>,
    /// How far it got.
    pub phase: Phase,
    /// The credential's kind.
    pub kind: KeyKind,
    /// Earlier consecutive failures of the same class on this credential (0 the first time).
    pub strikes: u32,
    /// Auth failures earlier in this request, on other credentials.
    pub auth_before: u32,
    /// The request is pinned to its anchor's owner.
    pub pinned: bool,
    /// The request is a remote compaction attempt the compaction layer can fall back from.
    pub compaction: bool,
    /// The time cooldowns are measured from.
    pub now: SystemTime,
}

impl<'a> Attempt<'a> {
    /// An attempt with no strikes, no pin, no earlier auth failure.
    pub fn new(failure: Option<&'a Failure>, phase: Phase, kind: KeyKind, now: SystemTime) -> Self {
        Attempt {
            failure,
            phase,
            kind,
            strikes: 0,
            auth_before: 0,
            pinned: false,
            compaction: false,
            now,
        }
    }
}

/// Where the request goes after this attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// It is done: the client gets [`Decision::client`].
    Stop,
    /// Try another credential (when none is left, stop with [`Decision::client`]).
    Elsewhere,
}

/// What the client gets when the request stops after this attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientSees {
    /// The upstream's answer, as it came.
    Answer,
    /// `502 upstream_unavailable`: no answer came, retry the same request.
    Unavailable,
}

/// The decision for one attempt.
#[derive(Debug, Clone)]
pub struct Decision {
    /// Cool the credential like this (`None`: it is fine).
    pub cooldown: Option<Cooldown>,
    /// Where the request goes.
    pub next: Next,
    /// What the client sees if the request stops here.
    pub client: ClientSees,
    /// Why, for the log line.
    pub why: &'static str,
}

/// Decides what one attempt's outcome means. Pure: the same inputs give the same decision.
pub fn decide(a: &Attempt<'_>, policy: &CooldownPolicy) -> Decision {
    let stop = |cooldown, why| Decision {
        cooldown,
        next: Next::Stop,
        client: ClientSees::Answer,
        why,
    };
    let Some(failure) = a.failure else {
        return stop(None, "answered");
    };
    match a.phase {
        Phase::Unsent | Phase::Sent if failure.origin == Origin::Transport => {
            let (next, why) = if a.phase == Phase::Unsent && !a.pinned {
                (
                    Next::Elsewhere,
                    "never reached the upstream: safe to send elsewhere",
                )
            } else if a.phase == Phase::Unsent {
                (
                    Next::Stop,
                    "never reached the upstream, but pinned to its owner",
                )
            } else {
                (
                    Next::Stop,
                    "the upstream may have worked on it: not sent again",
                )
            };
            return Decision {
                cooldown: None,
                next,
                client: ClientSees::Unavailable,
                why,
            };
        }
        _ => {}
    }
    if a.phase == Phase::BeforeContent && failure.origin == Origin::Transport {
        // The upstream answered (a head, lifecycle events: it created the response) and then
        // broke off before content: it worked on the request, so it is not sent again.
        return Decision {
            cooldown: None,
            next: Next::Stop,
            client: ClientSees::Unavailable,
            why: "the upstream broke off after it had started answering: not sent again",
        };
    }
    let class = failure.class;
    if a.compaction
        && !matches!(
            class,
            FailureClass::RateLimited | FailureClass::QuotaExhausted | FailureClass::Auth
        )
    {
        return stop(
            None,
            "remote compaction refused: the compaction layer falls back",
        );
    }
    if class == FailureClass::Auth && a.auth_before > 0 {
        return stop(
            None,
            "second auth failure in one request: the request is the likely cause",
        );
    }
    let cooldown = cooldown_for(failure, a.kind, a.strikes, policy, a.now);
    if a.phase == Phase::AfterContent {
        return stop(cooldown, "failed after content: the client has seen it");
    }
    if a.pinned {
        return stop(cooldown, "pinned to its anchor's owner: never elsewhere");
    }
    if class.retry_elsewhere() {
        Decision {
            cooldown,
            next: Next::Elsewhere,
            client: ClientSees::Answer,
            why: "another credential may succeed",
        }
    } else {
        stop(cooldown, "any credential would get the same answer")
    }
}

/// The cooldown a failure calls for, whatever the phase (`None`: the credential is fine).
pub fn cooldown_for(
    failure: &Failure,
    kind: KeyKind,
    strikes: u32,
    p: &CooldownPolicy,
    now: SystemTime,
) -> Option<Cooldown> {
    if !failure.cools_credential() {
        return None;
    }
    let class = failure.class;
    let hinted = failure.retry.until(now);
    let code = failure.code.as_deref().unwrap_or(class.as_str());
    let within = |floor: Duration, max: Duration| {
        hinted.map(|t| {
            let d = t.duration_since(now).unwrap_or_default();
            now + d.clamp(floor, max)
        })
    };
    let (until, note) = match class {
        FailureClass::RateLimited => match within(Duration::from_secs(1), p.rate_limit_hint_max) {
            Some(t) => (Some(t), HINTED),
            None => (
                Some(now + backoff(p.rate_limit_floor, p.rate_limit_max, strikes)),
                BACKOFF,
            ),
        },
        FailureClass::QuotaExhausted => match within(p.quota_min, p.quota_max) {
            Some(t) => (Some(t), HINTED),
            None => (Some(now + p.quota_default), " (no reset signal; default)"),
        },
        FailureClass::Auth => match kind {
            KeyKind::Key => (
                Some(now + backoff(p.auth_floor, p.auth_max, strikes)),
                " (a later request probes the key again)",
            ),
            KeyKind::Login => (None, OWNER_REFRESH_NEEDED),
            KeyKind::Owned => (
                Some(now + p.refresh_wait),
                " (an owned login: refreshing it once, then it returns)",
            ),
        },
        FailureClass::Overloaded | FailureClass::Transient => {
            match within(p.overload_floor, p.overload_max) {
                Some(t) => (Some(t), HINTED),
                None => (
                    Some(now + backoff(p.overload_floor, p.overload_max, strikes)),
                    BACKOFF,
                ),
            }
        }
        _ => return None,
    };
    Some(Cooldown {
        until,
        class,
        reason: format!("{code}{note}"),
    })
}

const HINTED: &str = " (time from the upstream's reset signal)";
const OWNER_REFRESH_NEEDED: &str = ": owner_refresh_needed: out until its auth file changes; \
    run the Codex CLI on it once, or take it over with `login --import`";
const BACKOFF: &str = " (no reset signal; backoff)";

fn backoff(floor: Duration, max: Duration, strikes: u32) -> Duration {
    floor.saturating_mul(1u32 << strikes.min(16)).min(max)
}

/// Where an owned login's refreshing stands, for [`before_use`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    /// It may be refreshed now.
    Possible,
    /// A refresh failed for now; the next may start at this time.
    BackingOff(SystemTime),
    /// Refreshes no longer extend its expiry: it lasts until its token expires.
    Stopped,
    /// The authority refused it for good, or a refresh may have spent its refresh token
    /// without an answer: out until `login NAME`.
    ReauthRequired,
}

/// What [`before_use`] knows about a credential's token.
#[derive(Debug, Clone, Copy)]
pub struct TokenState<'a> {
    /// The credential's kind.
    pub kind: KeyKind,
    /// Its access token's expiry, when it is a JWT with `exp`.
    pub expires: Option<SystemTime>,
    /// For an owned login, where refreshing stands.
    pub renewal: Renewal,
    /// For an owned login, its name (for the command in the reason).
    pub login: &'a str,
}

/// What to do with a credential before a request uses it.
#[derive(Debug, Clone, PartialEq)]
pub enum Readiness {
    /// Use it.
    Use,
    /// Use it, and start a refresh beside (its token is still good for a while).
    Renew,
    /// Start a refresh and keep requests away until it ends (or this cooldown does).
    RenewAndWait(Cooldown),
    /// Out of rotation.
    Out(Cooldown),
}

/// Decides, before a pick, what a credential's token expiry calls for. Pure.
///
/// | kind | token | readiness |
/// |---|---|---|
/// | a key | any | use |
/// | `codex-auth:` (borrowed) | expires within `borrowed_lead` (5 min) | out until its file changes, `owner_refresh_needed` |
/// | `codex-oauth:` (owned) | refused for good or unanswered refresh | out until `login NAME`, `reauth_required` |
/// | owned | within `refresh_lead` (10 min) of expiry | use, and refresh beside |
/// | owned | within `expiry_margin` (1 min) of expiry | refresh; out up to `refresh_wait` (requests wait or go elsewhere) |
/// | owned, refresh backing off | within `expiry_margin` | out until the next attempt |
/// | owned, refreshes no longer extend it | within `expiry_margin` | out until `login NAME`, `reauth_required` |
pub fn before_use(t: &TokenState<'_>, now: SystemTime, p: &CooldownPolicy) -> Readiness {
    let left = t.expires.map(|e| e.duration_since(now).unwrap_or_default());
    let reauth = |why: &str| {
        Readiness::Out(Cooldown {
            until: None,
            class: FailureClass::Auth,
            reason: format!(
                "reauth_required: {why}; out until `login {}` signs it in again",
                t.login
            ),
        })
    };
    match t.kind {
        KeyKind::Key => Readiness::Use,
        KeyKind::Login => match left {
            Some(l) if l < p.borrowed_lead => Readiness::Out(Cooldown {
                until: None,
                class: FailureClass::Auth,
                reason: format!(
                    "its access token expires within {} minutes{OWNER_REFRESH_NEEDED}",
                    p.borrowed_lead.as_secs() / 60
                ),
            }),
            _ => Readiness::Use,
        },
        KeyKind::Owned => {
            if t.renewal == Renewal::ReauthRequired {
                return reauth(
                    "the authority refused its refresh token, or a refresh went unanswered",
                );
            }
            let Some(left) = left else {
                return Readiness::Use;
            };
            let expiring = left <= p.expiry_margin;
            match t.renewal {
                Renewal::Stopped if expiring => {
                    reauth("its refreshes no longer extend its expiry and it expires now")
                }
                Renewal::BackingOff(next) if expiring => Readiness::Out(Cooldown {
                    until: Some(next.max(now + Duration::from_secs(1))),
                    class: FailureClass::Auth,
                    reason: "its access token expires and its refresh failed for now; retrying"
                        .into(),
                }),
                Renewal::Possible if expiring => Readiness::RenewAndWait(Cooldown {
                    until: Some(now + p.refresh_wait),
                    class: FailureClass::Auth,
                    reason: "its access token expires: refreshing it".into(),
                }),
                Renewal::Possible if left < p.refresh_lead => Readiness::Renew,
                _ => Readiness::Use,
            }
        }
    }
}

/// What a request gets when no credential can be picked.
#[derive(Debug, Clone)]
pub enum NoneUsable {
    /// Wait this long, then pick again: the earliest credential returns within `max_wait`.
    Wait(Duration),
    /// Answer the client with this error.
    Refuse(ApiError),
}

/// Decides for a request pinned to its anchor's owner while that owner is out of rotation
/// (`cooldown`): the request never goes elsewhere (no other account can see the anchor), so it
/// waits when the owner returns within `max_wait`, else gets `503
/// previous_response_owner_unavailable` with the owner's return as `Retry-After` (never a 429:
/// the Codex CLI gives up on those).
pub fn when_owner_out(cooldown: &Cooldown, now: SystemTime, max_wait: Duration) -> NoneUsable {
    let wait = cooldown
        .until
        .map(|t| t.duration_since(now).unwrap_or_default())
        .unwrap_or(Duration::from_secs(60));
    if wait <= max_wait {
        return NoneUsable::Wait(wait);
    }
    NoneUsable::Refuse(
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            format!(
                "the credential that owns previous_response_id is cooling ({}); retry later",
                cooldown.reason
            ),
        )
        .with_code("previous_response_owner_unavailable")
        .with_retry_after(wait.max(Duration::from_secs(1))),
    )
}

/// Decides for a request that found every credential out of rotation. `cooling` holds the
/// active cooldowns of the pool's credentials.
pub fn when_none_usable(cooling: &[Cooldown], now: SystemTime, max_wait: Duration) -> NoneUsable {
    let hard: Vec<&Cooldown> = cooling.iter().filter(|c| c.excludes()).collect();
    let earliest = hard.iter().filter_map(|c| c.until).min();
    let wait = earliest.map(|t| t.duration_since(now).unwrap_or_default());
    if let Some(w) = wait.filter(|w| *w <= max_wait) {
        return NoneUsable::Wait(w);
    }
    let retry = wait
        .unwrap_or(Duration::from_secs(60))
        .max(Duration::from_secs(1));
    let all_quota =
        !hard.is_empty() && hard.iter().all(|c| c.class == FailureClass::QuotaExhausted);
    let limited = hard.iter().any(|c| {
        matches!(
            c.class,
            FailureClass::QuotaExhausted | FailureClass::RateLimited
        )
    });
    let err = if all_quota {
        let mut e = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "usage_limit_reached",
            "The usage limit has been reached on every configured credential",
        )
        .with_code("usage_limit_reached");
        e.resets_at = earliest
            .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
            .map(|d| d.as_secs());
        e
    } else if limited {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            format!(
                "every configured credential is rate limited or out of quota; try again in {}s",
                retry.as_secs()
            ),
        )
        .with_code("rate_limit_exceeded")
    } else {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "the upstream refused every configured credential (auth); see the proxy's log and /metrics",
        )
        .with_code("credentials_unavailable")
    };
    NoneUsable::Refuse(err.with_retry_after(retry))
}

/// How an upstream WebSocket turn ended without its answer: the socket transport's own
/// outcomes, beside the classified failures of error frames (those go to [`decide`] as
/// [`Phase::BeforeContent`] answers, like HTTP errors).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketEnd {
    /// `websocket_connection_limit_reached`: the upstream's 60-minute cap on a socket.
    ConnectionLimit,
    /// A close frame with `1000` before any event of the turn.
    CleanClose,
    /// The socket broke: EOF or reset without a close frame, a close other than `1000`, a
    /// protocol error.
    Lost,
    /// The socket was already gone when the frame was to be written: the upstream never had it.
    SendUnsent,
    /// The write failed partway: the upstream may have the frame.
    SendAmbiguous,
    /// No pong within the pong timeout, or no event within the idle timeout, after the frame
    /// was sent: the socket may still be alive and the upstream still working.
    Unresponsive,
    /// An upstream message over the size budget.
    TooLarge,
}

impl SocketEnd {
    /// A `snake_case` label for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            SocketEnd::ConnectionLimit => "connection_limit",
            SocketEnd::CleanClose => "clean_close",
            SocketEnd::Lost => "lost",
            SocketEnd::SendUnsent => "send_unsent",
            SocketEnd::SendAmbiguous => "send_ambiguous",
            SocketEnd::Unresponsive => "unresponsive",
            SocketEnd::TooLarge => "too_large",
        }
    }
}

/// What a WebSocket turn does after its socket ended ([`after_socket_end`]).
#[derive(Debug, Clone, PartialEq)]
pub enum SocketNext {
    /// Open a fresh socket on the same credential and send the full request there (the old
    /// socket's connection-local store is gone). Nothing cools: the socket's end says nothing
    /// about the account.
    Reopen,
    /// Stop; the client gets this error frame, on which the Codex CLI resends the full request.
    Stop(ApiError),
}

/// The decision for a WebSocket turn whose socket ended.
#[derive(Debug, Clone, PartialEq)]
pub struct SocketDecision {
    /// What happens next.
    pub next: SocketNext,
    /// Why, for the log line.
    pub why: &'static str,
}

/// Decides what a turn does when its upstream socket ended without an answer. Pure.
///
/// A response lives on its socket: when the socket is gone, the upstream abandons the
/// response and its connection-local store with it, and nothing of it can reach anyone. So a
/// socket that ended before the client saw anything may carry the full request again on a
/// fresh socket. What may still be running is different: an unanswered ping or a silent
/// upstream after the send, or a write that failed partway, leave the frame's fate unknown,
/// and a second send could run the turn twice.
///
/// | end | before the client saw output | after |
/// |---|---|---|
/// | `ConnectionLimit` | reopen, full request | stop, `502 upstream_unavailable` |
/// | `CleanClose` | reopen once; a second clean close for the turn stops with `502 upstream_rejected_input` | stop, `502` |
/// | `Lost`, `SendUnsent` | reopen (account-neutral: nothing cools) | stop, `502` |
/// | `SendAmbiguous` | stop, `502 upstream_unavailable` (delivery ambiguous) | stop, `502` |
/// | `Unresponsive` | stop, `504 upstream_timeout` (delivery ambiguous) | stop, `504` |
/// | `TooLarge` | stop, `502 upstream_message_too_large` (a replay gets the same) | stop, `502` |
///
/// `clean_closes` is how many clean closes this turn already had. Every stop is a 5xx error
/// frame: the Codex CLI retries it with its full history, never dropping context.
pub fn after_socket_end(end: SocketEnd, visible: bool, clean_closes: u32) -> SocketDecision {
    let stop = |err: ApiError, why| SocketDecision {
        next: SocketNext::Stop(err),
        why,
    };
    let lost = || {
        ApiError::upstream_unavailable(
            "the upstream WebSocket broke off mid-response; resend the request",
        )
    };
    if visible && end != SocketEnd::Unresponsive {
        return stop(lost(), "the client has seen output: not sent again");
    }
    match end {
        SocketEnd::ConnectionLimit => SocketDecision {
            next: SocketNext::Reopen,
            why: "the upstream's socket age limit: a new socket takes the full request",
        },
        SocketEnd::CleanClose if clean_closes == 0 => SocketDecision {
            next: SocketNext::Reopen,
            why: "closed cleanly before any event: one more try on a fresh socket",
        },
        SocketEnd::CleanClose => stop(
            ApiError::upstream_unavailable(
                "the upstream closed the WebSocket before any event, twice: it likely refuses this input",
            )
            .with_code("upstream_rejected_input"),
            "closed cleanly before any event again: the input is the likely cause",
        ),
        SocketEnd::Lost | SocketEnd::SendUnsent => SocketDecision {
            next: SocketNext::Reopen,
            why: "the socket ended before any output: a fresh socket takes the full request",
        },
        SocketEnd::SendAmbiguous => stop(
            lost(),
            "the write failed partway: delivery ambiguous, not sent again",
        ),
        SocketEnd::TooLarge => stop(
            ApiError::upstream_unavailable(
                "the upstream sent a WebSocket message over the proxy's size budget",
            )
            .with_code("upstream_message_too_large"),
            "over the size budget: a replay would get the same",
        ),
        SocketEnd::Unresponsive => stop(
            ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "server_error",
                "the upstream WebSocket stopped answering after the request was sent; resend the request",
            )
            .with_code("upstream_timeout"),
            "no pong or event after the send: delivery ambiguous, not sent again",
        ),
    }
}

pub mod anchors;
pub use anchors::{
    LostChain, OWNER_SEARCH_DEFAULT_WAIT, OwnerAnswer, SearchTally, after_lost_chain,
    after_owner_search, anchored_transport_loss, owner_answer,
};

#[cfg(test)]
mod tests;

/// What a credential keeps back: this percent of each window stays unused while other
/// credentials have quota (`reserve = { weekly = 30 }` keeps 30 % of the weekly window).
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reserve {
    /// Percent of the 5-hour window kept back.
    #[serde(default)]
    pub five_hour: Option<f64>,
    /// Percent of the weekly window kept back.
    #[serde(default)]
    pub weekly: Option<f64>,
}

impl Reserve {
    fn keep(&self, kind: WindowKind) -> Option<f64> {
        match kind {
            WindowKind::FiveHour => self.five_hour,
            WindowKind::Weekly => self.weekly,
            _ => None,
        }
    }
}

/// Where a credential stands for rotation, best first: the pick takes the best standing
/// any credential has, so a worse one is used only when no better one is left.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Standing {
    /// Below every limit.
    Open,
    /// A window passed `soft_limit`: new sessions go elsewhere; sessions bound to it keep it
    /// (their prompt cache lives there) until the hard limit.
    SoftLimited,
    /// It reached its reserve: out while others have quota, the last resort.
    Reserved,
}

impl Standing {
    /// Its name in `/status.json` and the page.
    pub fn as_str(self) -> &'static str {
        match self {
            Standing::Open => "open",
            Standing::SoftLimited => "soft_limited",
            Standing::Reserved => "reserved",
        }
    }
}

/// The default `soft_limit`, in percent of a window.
pub const DEFAULT_SOFT_LIMIT: f64 = 95.0;

/// Decides a credential's [`Standing`] from its last reported usage. Pure.
///
/// | usage | for | standing |
/// |---|---|---|
/// | unknown, or credits / unlimited | any | open |
/// | a window's use at or past `100 - reserve` of that window | any | reserved |
/// | a window's use at or past `soft_limit` | a new session | soft limited |
/// | a window's use at or past `soft_limit` | the session bound to it | open |
/// | otherwise | any | open |
///
/// A window whose reset has passed counts as empty. A window at 100 % is the hard limit:
/// the pool cools the credential until its reset (see [`CodexUsage::exhausted_until`](crate::classify::CodexUsage::exhausted_until)).
pub fn standing(
    usage: Option<&CredentialUsage>,
    reserve: Option<&Reserve>,
    soft_limit: f64,
    bound: bool,
    now: SystemTime,
) -> Standing {
    let Some(usage) = usage.filter(|u| !u.unbounded()) else {
        return Standing::Open;
    };
    let reserved = reserve.is_some_and(|r| {
        usage.windows.iter().any(|w| {
            r.keep(w.kind)
                .is_some_and(|keep| w.used_at(now) >= 100.0 - keep.clamp(0.0, 100.0))
        })
    });
    if reserved {
        Standing::Reserved
    } else if !bound && usage.windows.iter().any(|w| w.used_at(now) >= soft_limit) {
        Standing::SoftLimited
    } else {
        Standing::Open
    }
}
