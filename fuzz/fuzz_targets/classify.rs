//! `classify` from status + headers + body, and the policy's decision on what it gives.
//!
//! Input: the status (two bytes), up to eight headers (a name picked from the ones the
//! classifier reads, a value), a byte for the credential kind and strikes, then the body.
//! Checked: nothing panics; a non-error status below 400 is never a failure, one from 400 up
//! always is; the same body as an SSE event classifies without panicking; and the policy's
//! cooldown for whatever came out stays inside its documented clamps.
#![no_main]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use libfuzzer_sys::fuzz_target;
use tower_responses::classify::{Failure, FailureClass};
use tower_responses::credentials::policy::{Attempt, KeyKind, decide};
use tower_responses::marks::Phase;
use tower_responses_fuzz::Cursor;

const NAMES: [&str; 16] = [
    "retry-after",
    "retry-after-ms",
    "x-ratelimit-reset-requests",
    "x-ratelimit-reset-tokens",
    "x-ratelimit-remaining-requests",
    "x-codex-primary-used-percent",
    "x-codex-primary-window-minutes",
    "x-codex-primary-reset-at",
    "x-codex-secondary-used-percent",
    "x-codex-secondary-window-minutes",
    "x-codex-secondary-reset-at",
    "x-codex-credits-has-credits",
    "x-codex-credits-unlimited",
    "x-codex-credits-balance",
    "content-type",
    "www-authenticate",
];

const DAY: Duration = Duration::from_secs(86_400);

fuzz_target!(|data: &[u8]| {
    let mut input = Cursor::new(data);
    let status = StatusCode::from_u16(100 + input.u16() % 900).expect("100..=999");
    let mut headers = HeaderMap::new();
    for _ in 0..input.byte() % 9 {
        let name = HeaderName::from_static(NAMES[usize::from(input.byte() % 16)]);
        if let Ok(value) = HeaderValue::from_bytes(input.piece()) {
            headers.append(name, value);
        }
    }
    let who = input.byte();
    let body = input.rest();
    let now = UNIX_EPOCH + Duration::from_secs(1_767_225_600);

    let failure = Failure::from_http_at(status, &headers, body, now);
    let code = status.as_u16();
    if code < 400 && !status.is_success() {
        assert!(failure.is_none(), "{code} classified as {failure:?}");
    }
    if code >= 400 {
        assert!(failure.is_some(), "{code} not classified");
    }
    let from_stream = Failure::from_sse_data(body);

    for f in failure.iter().chain(from_stream.iter()) {
        let _ = f.retry.until(now);
        let _ = f.retry.until(SystemTime::UNIX_EPOCH);
        let kind = match who % 3 {
            0 => KeyKind::Key,
            1 => KeyKind::Login,
            _ => KeyKind::Owned,
        };
        let mut attempt = Attempt::new(Some(f), Phase::BeforeContent, kind, now);
        attempt.strikes = u32::from(who >> 2) * 1_000_000;
        let d = decide(&attempt, &Default::default());
        let Some(cool) = d.cooldown else { continue };
        let Some(until) = cool.until else {
            assert!(
                matches!(cool.class, FailureClass::Auth),
                "an open-ended cooldown for {:?}",
                cool.class
            );
            continue;
        };
        let left = until.duration_since(now).unwrap_or_default();
        let bound = match cool.class {
            FailureClass::RateLimited => DAY,
            FailureClass::QuotaExhausted => 8 * DAY,
            FailureClass::Auth => Duration::from_secs(3_600),
            _ => Duration::from_secs(30),
        };
        assert!(
            left <= bound,
            "{:?} cools for {left:?}, more than {bound:?}",
            cool.class
        );
    }
});
