//! The specification of [`decide`](super::decide) and [`when_none_usable`](super::when_none_usable):
//! one row per failure class and phase.

use std::time::{Duration, SystemTime};

use super::*;
use crate::classify::{Failure, FailureClass::*, RetryHint};
use crate::marks::Phase::*;

/// How a row expects the credential to be cooled.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Cool {
    /// Not at all.
    No,
    /// Softly (tried last), for this long.
    Soft(u64),
    /// Out of rotation for this long.
    Hard(u64),
    /// Out of rotation until its file changes.
    Open,
}
use ClientSees::{Answer, Unavailable};
use Cool::*;
use Next::{Elsewhere, Stop};

const H: u64 = 3600;

fn seen(d: &Decision, now: SystemTime) -> Cool {
    match &d.cooldown {
        None => No,
        Some(c) => match c.until {
            None => Open,
            Some(t) => {
                let secs = t.duration_since(now).unwrap().as_secs();
                if c.excludes() { Hard(secs) } else { Soft(secs) }
            }
        },
    }
}

#[test]
fn every_class_and_phase() {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let key = KeyKind::Key;
    let login = KeyKind::Login;
    let owned = KeyKind::Owned;
    #[rustfmt::skip]
    let rows: Vec<(FailureClass, Phase, KeyKind, Cool, Next, ClientSees)> = vec![
        // class            phase          kind   cooldown     next       client sees
        (RateLimited,       BeforeContent, key,   Hard(2),     Elsewhere, Answer),
        (QuotaExhausted,    BeforeContent, key,   Hard(H),     Elsewhere, Answer),
        (Auth,              BeforeContent, key,   Hard(60),    Elsewhere, Answer),
        (Auth,              BeforeContent, login, Open,        Elsewhere, Answer),
        // An owned login is refreshed once; the refresh's end brings it back.
        (Auth,              BeforeContent, owned, Hard(2),     Elsewhere, Answer),
        (Overloaded,        BeforeContent, key,   Soft(1),     Elsewhere, Answer),
        (Transient,         BeforeContent, key,   Soft(1),     Elsewhere, Answer),
        (StaleConnection,   BeforeContent, key,   No,          Elsewhere, Answer),
        (Blocked,           BeforeContent, key,   No,          Stop,      Answer),
        (ModelUnsupported,  BeforeContent, key,   No,          Stop,      Answer),
        (RouteNotFound,     BeforeContent, key,   No,          Stop,      Answer),
        (ContextLength,     BeforeContent, key,   No,          Stop,      Answer),
        (InvalidRequest,    BeforeContent, key,   No,          Stop,      Answer),
        (ContentPolicy,     BeforeContent, key,   No,          Stop,      Answer),
        (PreviousResponseNotFound, BeforeContent, key, No,     Stop,      Answer),
        (Cancelled,         BeforeContent, key,   No,          Stop,      Answer),
        (Unknown,           BeforeContent, key,   No,          Stop,      Answer),
        // After content nothing is retried; the reported failure still cools.
        (RateLimited,       AfterContent,  key,   Hard(2),     Stop,      Answer),
        (QuotaExhausted,    AfterContent,  key,   Hard(H),     Stop,      Answer),
        (Auth,              AfterContent,  login, Open,        Stop,      Answer),
        (Auth,              AfterContent,  owned, Hard(2),     Stop,      Answer),
        (QuotaExhausted,    BeforeContent, owned, Hard(H),     Elsewhere, Answer),
        (Overloaded,        AfterContent,  key,   Soft(1),     Stop,      Answer),
        (Transient,         AfterContent,  key,   Soft(1),     Stop,      Answer),
        (StaleConnection,   AfterContent,  key,   No,          Stop,      Answer),
        (InvalidRequest,    AfterContent,  key,   No,          Stop,      Answer),
        (ContentPolicy,     AfterContent,  key,   No,          Stop,      Answer),
    ];
    for (class, phase, kind, cool, next, client) in rows {
        let failure = Failure::new(class);
        let d = decide(
            &Attempt::new(Some(&failure), phase, kind, now),
            &CooldownPolicy::default(),
        );
        let row = format!("{class} {phase} {kind:?}");
        assert_eq!(seen(&d, now), cool, "cooldown of {row}");
        assert_eq!(d.next, next, "next of {row}");
        assert_eq!(d.client, client, "client of {row}");
    }

    // Transport errors: only a request that never reached the upstream goes again. One that
    // broke off mid-answer, before content (the hold-back saw `response.created`), was
    // worked on: it stops too (found by the chaos soak: it used to go elsewhere).
    #[rustfmt::skip]
    let transport_rows = [
        (Unsent,        false, Elsewhere),
        (Sent,          false, Stop),
        (Unsent,        true,  Stop),
        (Sent,          true,  Stop),
        (BeforeContent, false, Stop),
        (BeforeContent, true,  Stop),
    ];
    for (phase, pinned, next) in transport_rows {
        let failure = Failure::transport(false, "connection reset");
        let mut a = Attempt::new(Some(&failure), phase, key, now);
        a.pinned = pinned;
        let d = decide(&a, &CooldownPolicy::default());
        assert_eq!(seen(&d, now), No, "transport {phase} pinned={pinned}");
        assert_eq!(d.next, next, "transport {phase} pinned={pinned}");
        assert_eq!(d.client, Unavailable, "transport {phase} pinned={pinned}");
    }
}

#[test]
fn situations_override_the_next_step() {
    let now = SystemTime::now();
    let p = CooldownPolicy::default();
    // Pinned: cools as the class says, never elsewhere.
    let quota = Failure::new(QuotaExhausted);
    let mut a = Attempt::new(Some(&quota), BeforeContent, KeyKind::Key, now);
    a.pinned = true;
    let d = decide(&a, &p);
    assert!(d.cooldown.is_some());
    assert_eq!(d.next, Stop);
    // A refused remote compaction: the route's fault, no cooldown, stop.
    let overloaded = Failure::new(Transient);
    let mut a = Attempt::new(Some(&overloaded), BeforeContent, KeyKind::Key, now);
    a.compaction = true;
    let d = decide(&a, &p);
    assert!(d.cooldown.is_none());
    assert_eq!(d.next, Stop);
    // ...but quota on a compaction attempt rotates like any request.
    let mut a = Attempt::new(Some(&quota), BeforeContent, KeyKind::Key, now);
    a.compaction = true;
    assert_eq!(decide(&a, &p).next, Elsewhere);
    // The second auth failure in a request stops there and cools nothing more.
    let auth = Failure::new(Auth);
    let mut a = Attempt::new(Some(&auth), BeforeContent, KeyKind::Key, now);
    a.auth_before = 1;
    let d = decide(&a, &p);
    assert!(d.cooldown.is_none());
    assert_eq!(d.next, Stop);
    // Success decides nothing.
    let d = decide(&Attempt::new(None, BeforeContent, KeyKind::Key, now), &p);
    assert!(d.cooldown.is_none());
    assert_eq!((d.next, d.client), (Stop, Answer));
}

#[test]
fn hints_are_clamped_per_class_and_backoff_doubles() {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let p = CooldownPolicy::default();
    let with_hint = |class, after: Option<u64>, reset_at: Option<SystemTime>| {
        let mut f = Failure::new(class);
        f.status = Some(http::StatusCode::SERVICE_UNAVAILABLE);
        f.retry = RetryHint {
            after: after.map(Duration::from_secs),
            reset_at,
        };
        f
    };
    let secs = |c: Option<Cooldown>| {
        c.unwrap()
            .until
            .unwrap()
            .duration_since(now)
            .unwrap()
            .as_secs()
    };
    #[rustfmt::skip]
    let rows = [
        // class,         after,              reset_at,               strikes, want seconds
        (Overloaded,      Some(999_999_999),  None,                   0, 30),
        (Transient,       Some(5),            None,                   0, 5),
        (Transient,       None,               None,                   0, 1),
        (Transient,       None,               None,                   3, 8),
        (Transient,       None,               None,                   9, 30),
        (RateLimited,     Some(999_999_999),  None,                   0, 24 * H),
        (RateLimited,     None,               None,                   0, 2),
        (RateLimited,     None,               None,                   2, 8),
        (RateLimited,     None,               None,                   10, 120),
        (QuotaExhausted,  None,               Some(now - Duration::from_secs(10)), 0, 60),
        (QuotaExhausted,  None,               Some(now + Duration::from_secs(3 * H)), 0, 3 * H),
        (QuotaExhausted,  Some(999_999_999),  None,                   0, 8 * 24 * H),
        (Auth,            None,               None,                   0, 60),
        (Auth,            None,               None,                   1, 120),
        (Auth,            None,               None,                   12, H),
    ];
    for (class, after, reset_at, strikes, want) in rows {
        let f = with_hint(class, after, reset_at);
        let got = secs(cooldown_for(&f, KeyKind::Key, strikes, &p, now));
        assert_eq!(
            got, want,
            "{class} after={after:?} reset_at={reset_at:?} strikes={strikes}"
        );
    }
}

#[test]
fn none_usable() {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let cool = |class, secs: Option<u64>| Cooldown {
        until: secs.map(|s| now + Duration::from_secs(s)),
        class,
        reason: String::new(),
    };
    let max_wait = Duration::from_secs(2);
    let refused = |cooling: &[Cooldown]| match when_none_usable(cooling, now, max_wait) {
        NoneUsable::Refuse(e) => e,
        NoneUsable::Wait(w) => panic!("waits {w:?}"),
    };
    // The earliest returns within max_wait: wait for it.
    let w = when_none_usable(
        &[cool(RateLimited, Some(1)), cool(QuotaExhausted, Some(H))],
        now,
        max_wait,
    );
    assert!(matches!(w, NoneUsable::Wait(d) if d == Duration::from_secs(1)));
    // Every credential out of quota: 429 usage_limit_reached with the earliest reset.
    let e = refused(&[
        cool(QuotaExhausted, Some(2 * H)),
        cool(QuotaExhausted, Some(H)),
    ]);
    assert_eq!(e.status, http::StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(e.code.as_deref(), Some("usage_limit_reached"));
    assert_eq!(e.retry_after, Some(Duration::from_secs(H)));
    assert_eq!(e.resets_at, Some(1_800_000_000 + H));
    // Rate limits (with quota or auth beside them): 429 rate_limit_exceeded.
    let e = refused(&[cool(RateLimited, Some(30)), cool(Auth, None)]);
    assert_eq!(e.status, http::StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(e.code.as_deref(), Some("rate_limit_exceeded"));
    assert_eq!(e.retry_after, Some(Duration::from_secs(30)));
    // Only auth: not a 429 (the Codex CLI would give up on a quota it has), a 503.
    let e = refused(&[cool(Auth, Some(600)), cool(Auth, None)]);
    assert_eq!(e.status, http::StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(e.code.as_deref(), Some("credentials_unavailable"));
    assert_eq!(e.retry_after, Some(Duration::from_secs(600)));
    // Soft cooldowns never make a credential unusable, so they never reach here; if they
    // did, they would not count as a reason.
    let e = refused(&[cool(Transient, Some(1)), cool(Auth, None)]);
    assert_eq!(e.status, http::StatusCode::SERVICE_UNAVAILABLE);
}

#[test]
fn token_expiry_before_use() {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let p = CooldownPolicy::default();
    let min = |m: u64| Some(now + Duration::from_secs(m * 60));
    let later = now + Duration::from_secs(90);
    /// What a row expects.
    #[derive(Debug, PartialEq)]
    enum Want {
        Use,
        Renew,
        /// Refresh, out for this many seconds meanwhile.
        Wait(u64),
        /// Out for this many seconds.
        OutFor(u64),
        /// Out until a person acts, with this reason code.
        OutOpen(&'static str),
    }
    use Renewal::*;
    use Want::*;
    #[rustfmt::skip]
    let rows: Vec<(KeyKind, Option<SystemTime>, Renewal, Want)> = vec![
        // kind           expires    renewal             readiness
        (KeyKind::Key,    min(0),    Possible,           Use),
        (KeyKind::Login,  None,      Possible,           Use),
        (KeyKind::Login,  min(60),   Possible,           Use),
        (KeyKind::Login,  min(4),    Possible,           OutOpen("owner_refresh_needed")),
        (KeyKind::Login,  Some(now - Duration::from_secs(5)), Possible, OutOpen("owner_refresh_needed")),
        (KeyKind::Owned,  None,      Possible,           Use),
        (KeyKind::Owned,  min(60),   Possible,           Use),
        (KeyKind::Owned,  min(9),    Possible,           Renew),
        (KeyKind::Owned,  min(0),    Possible,           Wait(2)),
        (KeyKind::Owned,  min(9),    BackingOff(later),  Use),
        (KeyKind::Owned,  min(0),    BackingOff(later),  OutFor(90)),
        (KeyKind::Owned,  min(9),    Stopped,            Use),
        (KeyKind::Owned,  min(0),    Stopped,            OutOpen("reauth_required")),
        (KeyKind::Owned,  min(60),   ReauthRequired,     OutOpen("reauth_required")),
    ];
    for (kind, expires, renewal, want) in rows {
        let t = TokenState {
            kind,
            expires,
            renewal,
            login: "alice",
        };
        let got = match before_use(&t, now, &p) {
            Readiness::Use => Use,
            Readiness::Renew => Renew,
            Readiness::RenewAndWait(c) => {
                assert!(c.excludes());
                Wait(c.until.unwrap().duration_since(now).unwrap().as_secs())
            }
            Readiness::Out(c) => match c.until {
                Some(t) => OutFor(t.duration_since(now).unwrap().as_secs()),
                None => {
                    let code = ["owner_refresh_needed", "reauth_required"]
                        .into_iter()
                        .find(|code| c.reason.contains(code))
                        .unwrap_or("?");
                    if code == "reauth_required" {
                        assert!(c.reason.contains("`login alice`"), "{}", c.reason);
                    } else {
                        assert!(c.reason.contains("login --import"), "{}", c.reason);
                    }
                    OutOpen(code)
                }
            },
        };
        assert_eq!(got, want, "{kind:?} {expires:?} {renewal:?}");
    }
}

/// The specification of [`standing`](super::standing): one row per situation.
#[test]
fn standing_follows_soft_limit_and_reserve() {
    use crate::credentials::usage::{CredentialUsage, UsageWindow, WindowKind};
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
    let usage = |five: f64, weekly: f64| CredentialUsage {
        windows: vec![
            UsageWindow {
                kind: WindowKind::FiveHour,
                used_percent: five,
                window_minutes: Some(300),
                reset_at: Some(now + Duration::from_secs(H)),
            },
            UsageWindow {
                kind: WindowKind::Weekly,
                used_percent: weekly,
                window_minutes: Some(10080),
                reset_at: Some(now + Duration::from_secs(100 * H)),
            },
        ],
        ..Default::default()
    };
    let keep_weekly_30 = Reserve {
        weekly: Some(30.0),
        five_hour: None,
    };
    let credits = CredentialUsage {
        has_credits: Some(true),
        ..usage(99.0, 99.0)
    };
    let mut past_reset = usage(99.0, 10.0);
    past_reset.windows[0].reset_at = Some(now - Duration::from_secs(1));
    // (usage, reserve, bound, expected)
    let rows: Vec<(Option<CredentialUsage>, Option<Reserve>, bool, Standing)> = vec![
        (None, None, false, Standing::Open),
        (None, Some(keep_weekly_30), false, Standing::Open),
        (Some(usage(10.0, 10.0)), None, false, Standing::Open),
        (Some(usage(94.9, 10.0)), None, false, Standing::Open),
        (Some(usage(95.0, 10.0)), None, false, Standing::SoftLimited),
        (Some(usage(10.0, 97.0)), None, false, Standing::SoftLimited),
        // A bound session keeps its account past the soft limit.
        (Some(usage(99.0, 10.0)), None, true, Standing::Open),
        // The reserve: 70 % of the weekly window used leaves the 30 % kept back.
        (
            Some(usage(10.0, 69.9)),
            Some(keep_weekly_30),
            false,
            Standing::Open,
        ),
        (
            Some(usage(10.0, 70.0)),
            Some(keep_weekly_30),
            false,
            Standing::Reserved,
        ),
        (
            Some(usage(10.0, 70.0)),
            Some(keep_weekly_30),
            true,
            Standing::Reserved,
        ),
        // A reserve on the weekly window ignores the 5-hour one (up to the soft limit).
        (
            Some(usage(80.0, 10.0)),
            Some(keep_weekly_30),
            false,
            Standing::Open,
        ),
        // Credits let it go on: no limit applies.
        (Some(credits), Some(keep_weekly_30), false, Standing::Open),
        // A window past its reset is empty again.
        (Some(past_reset), None, false, Standing::Open),
    ];
    for (i, (u, r, bound, want)) in rows.iter().enumerate() {
        let got = standing(u.as_ref(), r.as_ref(), DEFAULT_SOFT_LIMIT, *bound, now);
        assert_eq!(got, *want, "row {i}");
    }
    assert!(Standing::Open < Standing::SoftLimited && Standing::SoftLimited < Standing::Reserved);
}

#[test]
fn a_pinned_request_whose_owner_is_out() {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let max_wait = Duration::from_secs(2);
    let out = |class, secs: Option<u64>| Cooldown {
        until: secs.map(|s| now + Duration::from_secs(s)),
        class,
        reason: "r".into(),
    };
    #[rustfmt::skip]
    let rows = [
        // owner's cooldown,                 waits,   or: status, Retry-After
        (out(RateLimited, Some(1)),          Some(1), None),
        (out(QuotaExhausted, Some(3600)),    None,    Some((503, 3600))),
        (out(Auth, None),                    None,    Some((503, 60))),
    ];
    for (c, waits, refused) in rows {
        match when_owner_out(&c, now, max_wait) {
            NoneUsable::Wait(d) => assert_eq!(Some(d.as_secs()), waits, "{c:?}"),
            NoneUsable::Refuse(e) => {
                assert_eq!(waits, None, "{c:?}");
                let (status, after) = refused.unwrap();
                assert_eq!(e.status.as_u16(), status);
                assert_eq!(
                    e.code.as_deref(),
                    Some("previous_response_owner_unavailable")
                );
                assert_eq!(e.retry_after, Some(Duration::from_secs(after)));
            }
        }
    }
}

#[test]
fn websocket_socket_ends() {
    use super::{SocketEnd, SocketNext, after_socket_end};
    // (end, visible, clean closes so far) -> reopen, or the stop's status and code.
    // The stop's status and code; `None`: reopen.
    type Stop = Option<(u16, &'static str)>;
    let rows: &[(SocketEnd, bool, u32, Stop)] = &[
        (SocketEnd::ConnectionLimit, false, 0, None),
        (
            SocketEnd::ConnectionLimit,
            true,
            0,
            Some((502, "upstream_unavailable")),
        ),
        (SocketEnd::CleanClose, false, 0, None),
        (
            SocketEnd::CleanClose,
            false,
            1,
            Some((502, "upstream_rejected_input")),
        ),
        (
            SocketEnd::CleanClose,
            true,
            0,
            Some((502, "upstream_unavailable")),
        ),
        (SocketEnd::Lost, false, 0, None),
        (SocketEnd::Lost, false, 1, None),
        (
            SocketEnd::Lost,
            true,
            0,
            Some((502, "upstream_unavailable")),
        ),
        (SocketEnd::SendUnsent, false, 0, None),
        (
            SocketEnd::SendAmbiguous,
            false,
            0,
            Some((502, "upstream_unavailable")),
        ),
        (
            SocketEnd::Unresponsive,
            false,
            0,
            Some((504, "upstream_timeout")),
        ),
        (
            SocketEnd::Unresponsive,
            true,
            0,
            Some((504, "upstream_timeout")),
        ),
        (
            SocketEnd::TooLarge,
            false,
            0,
            Some((502, "upstream_message_too_large")),
        ),
    ];
    for &(end, visible, cleans, want) in rows {
        let d = after_socket_end(end, visible, cleans);
        let got = match &d.next {
            SocketNext::Reopen => None,
            SocketNext::Stop(e) => Some((e.status.as_u16(), e.code.clone().unwrap_or_default())),
        };
        let want = want.map(|(s, c)| (s, c.to_owned()));
        assert_eq!(
            got, want,
            "{end:?} visible={visible} clean_closes={cleans}: {}",
            d.why
        );
        if let SocketNext::Stop(e) = &d.next {
            // Every stop is a server error the Codex CLI retries with its full history.
            assert!(e.status.is_server_error(), "{end:?}");
        }
    }
}

/// The specification of [`owner_answer`], [`after_owner_search`] and [`after_lost_chain`]
/// (the `anchors` table).
#[test]
fn anchored_requests_whose_anchor_is_missing() {
    use super::anchors::*;
    // (status, class, path anchor) -> what the answer says about the anchor.
    let answers: &[(u16, Option<FailureClass>, bool, OwnerAnswer)] = &[
        (
            400,
            Some(PreviousResponseNotFound),
            false,
            OwnerAnswer::Missing,
        ),
        (404, Some(RouteNotFound), true, OwnerAnswer::Missing),
        (404, None, true, OwnerAnswer::Missing),
        (429, Some(RateLimited), false, OwnerAnswer::Waiting),
        (429, None, false, OwnerAnswer::Waiting),
        (200, Some(QuotaExhausted), false, OwnerAnswer::Waiting),
        (500, Some(Transient), false, OwnerAnswer::Unavailable),
        (502, None, true, OwnerAnswer::Unavailable),
        (200, Some(Transient), false, OwnerAnswer::Unavailable),
        (401, Some(Auth), false, OwnerAnswer::Unavailable),
        (200, None, false, OwnerAnswer::Found),
        (400, Some(InvalidRequest), false, OwnerAnswer::Found),
        // A 404 is not a missing previous_response_id.
        (404, Some(RouteNotFound), false, OwnerAnswer::Found),
    ];
    for &(status, class, path, want) in answers {
        let status = http::StatusCode::from_u16(status).unwrap();
        assert_eq!(
            owner_answer(status, class, path),
            want,
            "{status} {class:?} path={path}"
        );
    }

    // (unavailable, waiting, earliest return) -> status, code, Retry-After; None: the first answer.
    let s = Duration::from_secs;
    type End = Option<(u16, &'static str, Option<u64>)>;
    let ends: &[(usize, usize, Option<Duration>, End)] = &[
        (0, 0, None, None),
        (1, 0, None, Some((502, "upstream_unavailable", None))),
        (1, 2, Some(s(30)), Some((502, "upstream_unavailable", None))),
        (
            0,
            1,
            Some(s(30)),
            Some((503, "previous_response_owner_unavailable", Some(30))),
        ),
        (
            0,
            2,
            None,
            Some((503, "previous_response_owner_unavailable", Some(5))),
        ),
        (
            0,
            1,
            Some(Duration::from_millis(200)),
            Some((503, "previous_response_owner_unavailable", Some(1))),
        ),
    ];
    for &(unavailable, waiting, earliest_return, want) in ends {
        let tally = SearchTally {
            unavailable,
            waiting,
            earliest_return,
        };
        let got = after_owner_search(&tally, "previous_response_id");
        let got = got.as_ref().map(|e| {
            (
                e.status.as_u16(),
                e.code.as_deref().unwrap_or_default(),
                e.retry_after.map(|d| d.as_secs()),
            )
        });
        assert_eq!(got, want, "{tally:?}");
    }

    // (chained, visible, resent) -> resend the full request on the same socket?
    let chains: &[(bool, bool, bool, LostChain)] = &[
        (true, false, false, LostChain::ResendFull),
        (true, false, true, LostChain::Failure),
        (true, true, false, LostChain::Failure),
        (false, false, false, LostChain::Failure),
    ];
    for &(chained, visible, resent, want) in chains {
        assert_eq!(
            after_lost_chain(chained, visible, resent),
            want,
            "chained={chained} visible={visible} resent={resent}"
        );
    }
}
