//! Reset and duration hints (`classify::hints`): Go durations, "try again in" phrases,
//! `Retry-After`, the rate-limit and Codex usage headers.
//!
//! Input: a byte choosing the form, numbers, then text. Checked: nothing panics on any text;
//! durations the hints are written in (Go's `1h2m3.5s`, `try again in 1m30s`, `35 seconds`,
//! delay-seconds and HTTP dates in `Retry-After`) read back as the duration written; and a
//! header hint's relative wait never ends before `now`.
#![no_main]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use tower_responses::classify::{
    CodexUsage, parse_go_duration, parse_retry_after, parse_try_again_in, retry_hint_from_headers,
};
use tower_responses_fuzz::Cursor;

const NAMES: [&str; 8] = [
    "retry-after",
    "retry-after-ms",
    "x-ratelimit-reset-requests",
    "x-ratelimit-reset-tokens",
    "x-ratelimit-remaining-requests",
    "x-codex-primary-used-percent",
    "x-codex-primary-reset-at",
    "x-codex-secondary-window-minutes",
];

/// Go's `time.Duration.String()` for whole milliseconds.
fn go_format(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".into();
    }
    let (h, m, s, frac) = (ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000);
    let mut out = String::new();
    if h > 0 {
        out += &format!("{h}h");
    }
    if h > 0 || m > 0 {
        out += &format!("{m}m");
    }
    match frac {
        0 => out += &format!("{s}s"),
        f => out += &format!("{s}.{f:03}s"),
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let mut input = Cursor::new(data);
    let form = input.byte();
    let ms = u64::from(input.u32()) * u64::from(input.byte().max(1));
    let written = Duration::from_millis(ms);
    let now = UNIX_EPOCH + Duration::from_secs(1_767_225_600);

    // Any text: no panic, and whatever comes out is a real duration.
    let text_bytes = input.piece();
    let text = String::from_utf8_lossy(text_bytes);
    let _ = parse_go_duration(&text);
    let _ = parse_try_again_in(&text);
    if let Ok(v) = HeaderValue::from_bytes(text_bytes) {
        let _ = parse_retry_after(&v, now);
        let _ = parse_retry_after(&v, UNIX_EPOCH);
        let _ = parse_retry_after(&v, UNIX_EPOCH + Duration::from_secs(u64::MAX / 4));
    }

    // Round trips of the forms upstreams write.
    match form % 5 {
        0 => assert_eq!(
            parse_go_duration(&go_format(written)),
            Some(written),
            "{}",
            go_format(written)
        ),
        1 => {
            let m = format!(
                "Rate limit reached. Please try again in {}.",
                go_format(written)
            );
            // The compound Go form reads like the spoken one.
            assert_eq!(parse_try_again_in(&m), Some(written), "{m}");
        }
        2 => {
            let secs = written.as_secs();
            let m = format!("TRY AGAIN IN {secs} seconds");
            assert_eq!(
                parse_try_again_in(&m),
                Some(Duration::from_secs(secs)),
                "{m}"
            );
        }
        3 => {
            let v = HeaderValue::from(written.as_secs());
            assert_eq!(
                parse_retry_after(&v, now),
                Some(Duration::from_secs(written.as_secs()))
            );
        }
        _ => {
            let secs = written.as_secs() % (100 * 365 * 86_400);
            let date = httpdate::fmt_http_date(now + Duration::from_secs(secs));
            let v = HeaderValue::from_str(&date).expect("an HTTP date is a header value");
            assert_eq!(
                parse_retry_after(&v, now),
                Some(Duration::from_secs(secs)),
                "{date}"
            );
        }
    }

    // Headers: any values, any mix.
    let mut headers = HeaderMap::new();
    while let [b, ..] = input.take(1) {
        let name = HeaderName::from_static(NAMES[usize::from(b % 8)]);
        if let Ok(value) = HeaderValue::from_bytes(input.piece()) {
            headers.append(name, value);
        }
    }
    let hint = retry_hint_from_headers(&headers, now);
    // A relative wait ends after `now` (or overflows to nothing); a `reset_at` may be in the
    // past (a stale window reset), which the policy's clamps handle.
    if let Some(after) = hint.after {
        let until = hint.until(now).expect("a hint with a wait has an end");
        let century = Duration::from_secs(100 * 365 * 86_400);
        assert!(
            until >= now + after.min(century),
            "{hint:?} ends at {until:?}"
        );
    }
    if let Some(usage) = CodexUsage::from_headers(&headers) {
        let _ = usage.exhausted_until();
        let _ = usage.longest_window();
        let _: Option<SystemTime> = usage.exhausted_until();
    }
});
