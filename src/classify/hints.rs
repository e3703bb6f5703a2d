//! When to try again: `Retry-After`, `x-ratelimit-reset-*`, the Codex usage headers, and the
//! reset fields and phrases of error bodies.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::header::AsHeaderName;
use http::{HeaderMap, HeaderName, HeaderValue};

const NANOS_PER_SEC: u128 = 1_000_000_000;

/// The longest relative wait [`RetryHint::until`] adds to "now"; every policy clamps far below.
const MAX_AFTER: Duration = Duration::from_secs(100 * 365 * 86_400);

/// When the upstream said it is worth trying again.
///
/// `after` is relative to when the answer arrived; `reset_at` is a wall-clock instant (a
/// `resets_at` field or a Codex window reset). Both empty means the upstream said nothing and
/// the caller applies its own default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetryHint {
    /// Wait at least this long (`Retry-After`, `x-ratelimit-reset-*`, `resets_in_seconds`,
    /// "try again in ...").
    pub after: Option<Duration>,
    /// Not before this instant (`resets_at`, an exhausted Codex usage window).
    pub reset_at: Option<SystemTime>,
}

impl RetryHint {
    /// The instant to wait for: the later of `now + after` and `reset_at`; `None` when the
    /// hint is empty.
    pub fn until(&self, now: SystemTime) -> Option<SystemTime> {
        // A wait past `SystemTime`'s range would be lost in the addition (and the credential
        // cooled by the default instead of the policy's longest clamp): a century is as long.
        let relative = self
            .after
            .and_then(|after| now.checked_add(after.min(MAX_AFTER)));
        match (relative, self.reset_at) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }

    /// True when the upstream gave no signal at all.
    pub fn is_empty(&self) -> bool {
        self.after.is_none() && self.reset_at.is_none()
    }

    /// Combines two hints, keeping the longer wait of each kind: honouring the stricter
    /// signal never brings a credential back early.
    pub fn merge(self, other: RetryHint) -> RetryHint {
        RetryHint {
            after: max_opt(self.after, other.after),
            reset_at: max_opt(self.reset_at, other.reset_at),
        }
    }
}

fn max_opt<T: Ord>(a: Option<T>, b: Option<T>) -> Option<T> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

/// Reads a leading unsigned decimal (`11`, `11.054`, `.5`), returning it scaled by 10^9 and
/// the rest of the input. Fractional digits past the ninth are dropped.
fn take_decimal(s: &str) -> Option<(u128, &str)> {
    let bytes = s.as_bytes();
    let mut i = 0;
    let mut whole: u128 = 0;
    let mut digits = 0;
    while let Some(d) = bytes.get(i).filter(|b| b.is_ascii_digit()) {
        whole = whole.checked_mul(10)?.checked_add(u128::from(d - b'0'))?;
        i += 1;
        digits += 1;
    }
    let mut frac: u128 = 0;
    if bytes.get(i) == Some(&b'.') && bytes.get(i + 1).is_some_and(u8::is_ascii_digit) {
        i += 1;
        let mut scale = NANOS_PER_SEC;
        while let Some(d) = bytes.get(i).filter(|b| b.is_ascii_digit()) {
            if scale > 1 {
                scale /= 10;
                frac += u128::from(d - b'0') * scale;
            }
            i += 1;
            digits += 1;
        }
    }
    if digits == 0 {
        return None;
    }
    let scaled = whole.checked_mul(NANOS_PER_SEC)?.checked_add(frac)?;
    Some((scaled, &s[i..]))
}

/// `scaled` (a decimal times 10^9) of a unit lasting `unit_nanos`, as nanoseconds.
fn scaled_to_nanos(scaled: u128, unit_nanos: u128) -> Option<u128> {
    Some(scaled.checked_mul(unit_nanos)? / NANOS_PER_SEC)
}

fn nanos_to_duration(nanos: u128) -> Option<Duration> {
    let secs = u64::try_from(nanos / NANOS_PER_SEC).ok()?;
    // The remainder is below 10^9 and fits.
    Some(Duration::new(secs, (nanos % NANOS_PER_SEC) as u32))
}

fn secs_f64_to_duration(secs: f64) -> Option<Duration> {
    if secs.is_finite() && secs >= 0.0 {
        Duration::try_from_secs_f64(secs).ok()
    } else {
        None
    }
}

/// Unix seconds to an instant. Values past the year 5000 are rejected rather than turned into
/// an effectively permanent cooldown (they are most likely milliseconds or garbage).
pub(super) fn unix_secs(secs: f64) -> Option<SystemTime> {
    if !(0.0..1e11).contains(&secs) {
        return None;
    }
    UNIX_EPOCH.checked_add(secs_f64_to_duration(secs)?)
}

/// A plain decimal number of `unit_nanos` units (`"1.5"` seconds, `"250"` ms).
fn plain_decimal(s: &str, unit_nanos: u128) -> Option<Duration> {
    match take_decimal(s.trim())? {
        (scaled, "") => nanos_to_duration(scaled_to_nanos(scaled, unit_nanos)?),
        _ => None,
    }
}

/// Parses a `Retry-After` value: delay-seconds (`"30"`; a decimal is accepted too) or an
/// HTTP date, which is turned into the time left from `now` (zero when it is past).
///
/// ```
/// use std::time::{Duration, UNIX_EPOCH};
/// use http::HeaderValue;
/// use tower_responses::classify::parse_retry_after;
///
/// let now = UNIX_EPOCH + Duration::from_secs(784_111_777);
/// assert_eq!(parse_retry_after(&HeaderValue::from_static("120"), now), Some(Duration::from_secs(120)));
/// let date = HeaderValue::from_static("Sun, 06 Nov 1994 08:49:47 GMT");
/// assert_eq!(parse_retry_after(&date, now), Some(Duration::from_secs(10)));
/// ```
pub fn parse_retry_after(value: &HeaderValue, now: SystemTime) -> Option<Duration> {
    let s = value.to_str().ok()?.trim();
    if let Some(d) = plain_decimal(s, NANOS_PER_SEC) {
        return Some(d);
    }
    let at = httpdate::parse_http_date(s).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

fn go_unit_nanos(unit: &str) -> Option<u128> {
    Some(match unit {
        "ns" => 1,
        "us" | "µs" | "μs" => 1_000,
        "ms" => 1_000_000,
        "s" => NANOS_PER_SEC,
        "m" => 60 * NANOS_PER_SEC,
        "h" => 3_600 * NANOS_PER_SEC,
        _ => return None,
    })
}

/// Parses a Go `time.Duration` string, the format of `x-ratelimit-reset-requests` and
/// `x-ratelimit-reset-tokens`: `"6m0s"`, `"1.5s"`, `"20ms"`, `"1h2m3s"`, `"0"`. Negative or
/// malformed values give `None`.
///
/// ```
/// use std::time::Duration;
/// use tower_responses::classify::parse_go_duration;
///
/// assert_eq!(parse_go_duration("6m0s"), Some(Duration::from_secs(360)));
/// assert_eq!(parse_go_duration("20ms"), Some(Duration::from_millis(20)));
/// assert_eq!(parse_go_duration("soon"), None);
/// ```
pub fn parse_go_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let mut rest = s.strip_prefix('+').unwrap_or(s);
    if rest == "0" {
        return Some(Duration::ZERO);
    }
    if rest.is_empty() {
        return None;
    }
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let (scaled, after_number) = take_decimal(rest)?;
        let unit_len = after_number
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after_number.len());
        let unit_nanos = go_unit_nanos(&after_number[..unit_len])?;
        total = total.checked_add(scaled_to_nanos(scaled, unit_nanos)?)?;
        rest = &after_number[unit_len..];
    }
    nanos_to_duration(total)
}

fn word_unit_nanos(unit: &str) -> Option<u128> {
    Some(match unit {
        "ms" | "msec" | "msecs" | "millisecond" | "milliseconds" => 1_000_000,
        "s" | "sec" | "secs" | "second" | "seconds" => NANOS_PER_SEC,
        "m" | "min" | "mins" | "minute" | "minutes" => 60 * NANOS_PER_SEC,
        "h" | "hr" | "hrs" | "hour" | "hours" => 3_600 * NANOS_PER_SEC,
        "d" | "day" | "days" => 86_400 * NANOS_PER_SEC,
        _ => return None,
    })
}

/// Reads `<number><space?><unit>` pairs (`11.054s`, `35 seconds`, `1m30s`, `2 days 3 hours`)
/// from the start of `s`, lower-cased.
fn take_spoken_duration(mut s: &str) -> Option<Duration> {
    let mut total: u128 = 0;
    let mut pairs = 0;
    while let Some((scaled, rest)) = take_decimal(s.trim_start()) {
        let rest = rest.trim_start();
        let unit_len = rest
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(rest.len());
        let Some(unit_nanos) = word_unit_nanos(&rest[..unit_len]) else {
            break;
        };
        total = total.checked_add(scaled_to_nanos(scaled, unit_nanos)?)?;
        pairs += 1;
        s = rest[unit_len..].trim_start_matches([' ', ',']);
        s = s.strip_prefix("and ").unwrap_or(s);
    }
    if pairs == 0 {
        return None;
    }
    nanos_to_duration(total)
}

/// Parses the delay out of a message saying `try again in <n><unit>` (case-insensitive), the
/// way the Codex CLI reads rate-limit messages: `"11.054s"`, `"28ms"`, `"35 seconds"`, and
/// also compound forms (`"1m30s"`, `"2 days 3 hours"`) and `retry in`/`retry after`.
///
/// ```
/// use std::time::Duration;
/// use tower_responses::classify::parse_try_again_in;
///
/// let m = "Rate limit reached for gpt-5 on tokens per min. Please try again in 11.054s.";
/// assert_eq!(parse_try_again_in(m), Some(Duration::from_millis(11_054)));
/// assert_eq!(parse_try_again_in("Try again in 35 seconds"), Some(Duration::from_secs(35)));
/// assert_eq!(parse_try_again_in("try again later"), None);
/// ```
pub fn parse_try_again_in(message: &str) -> Option<Duration> {
    let lower = message.to_ascii_lowercase();
    ["try again in", "retry in", "retry after"]
        .iter()
        .filter_map(|needle| {
            let at = lower.find(needle)?;
            take_spoken_duration(&lower[at + needle.len()..])
        })
        .next()
}

fn header_str(headers: &HeaderMap, name: impl AsHeaderName) -> Option<&str> {
    headers
        .get(name)?
        .to_str()
        .ok()
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

fn header_f64(headers: &HeaderMap, name: impl AsHeaderName) -> Option<f64> {
    header_str(headers, name)?
        .parse::<f64>()
        .ok()
        .filter(|f| f.is_finite())
}

fn header_bool(headers: &HeaderMap, name: impl AsHeaderName) -> Option<bool> {
    match header_str(headers, name)?.to_ascii_lowercase().as_str() {
        "true" | "1" => Some(true),
        "false" | "0" => Some(false),
        _ => None,
    }
}

/// One usage window of a ChatGPT account, from the `x-codex-{primary,secondary}-*` headers.
#[derive(Debug, Clone, PartialEq)]
pub struct CodexWindow {
    /// How much of the window is used, in percent; 100 or more means exhausted.
    pub used_percent: f64,
    /// The window's length (300 for the 5-hour window, 10080 for the weekly one).
    pub window_minutes: Option<u64>,
    /// When the window resets.
    pub reset_at: Option<SystemTime>,
}

/// Whether any header's name starts with `prefix` (lower-case, as header names are): one walk
/// over the names, none hashed, so a reply without usage headers (every reply of most
/// upstreams) costs no lookups.
pub(crate) fn has_header_prefix(headers: &HeaderMap, prefix: &str) -> bool {
    headers.keys().any(|name| name.as_str().starts_with(prefix))
}

/// The header names of one Codex usage window, built at compile time: a lookup by a
/// `HeaderName` hashes it, one by `&str` parses it first.
struct WindowNames {
    used_percent: HeaderName,
    window_minutes: HeaderName,
    reset_at: HeaderName,
}

static PRIMARY: WindowNames = WindowNames {
    used_percent: HeaderName::from_static("x-codex-primary-used-percent"),
    window_minutes: HeaderName::from_static("x-codex-primary-window-minutes"),
    reset_at: HeaderName::from_static("x-codex-primary-reset-at"),
};

static SECONDARY: WindowNames = WindowNames {
    used_percent: HeaderName::from_static("x-codex-secondary-used-percent"),
    window_minutes: HeaderName::from_static("x-codex-secondary-window-minutes"),
    reset_at: HeaderName::from_static("x-codex-secondary-reset-at"),
};

static HAS_CREDITS: HeaderName = HeaderName::from_static("x-codex-credits-has-credits");
static UNLIMITED: HeaderName = HeaderName::from_static("x-codex-credits-unlimited");
static BALANCE: HeaderName = HeaderName::from_static("x-codex-credits-balance");

impl CodexWindow {
    fn from_headers(headers: &HeaderMap, names: &WindowNames) -> Option<CodexWindow> {
        Some(CodexWindow {
            used_percent: header_f64(headers, &names.used_percent)?,
            window_minutes: header_str(headers, &names.window_minutes).and_then(|s| s.parse().ok()),
            reset_at: header_f64(headers, &names.reset_at).and_then(unix_secs),
        })
    }

    /// True when the window is used up.
    pub fn is_exhausted(&self) -> bool {
        self.used_percent >= 100.0
    }
}

/// A ChatGPT account's usage as the Codex backend reports it on every reply.
///
/// Which of `primary` and `secondary` is the 5-hour window and which the weekly one is not
/// fixed; [`CodexWindow::window_minutes`] says, and [`CodexUsage::exhausted_until`] does not
/// depend on the position.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CodexUsage {
    /// `x-codex-primary-*`.
    pub primary: Option<CodexWindow>,
    /// `x-codex-secondary-*`.
    pub secondary: Option<CodexWindow>,
    /// `x-codex-credits-has-credits`: usage can continue on purchased credits.
    pub has_credits: Option<bool>,
    /// `x-codex-credits-unlimited`.
    pub unlimited: Option<bool>,
    /// `x-codex-credits-balance`, as sent.
    pub balance: Option<String>,
}

impl CodexUsage {
    /// Reads the `x-codex-*` usage headers; `None` when the reply carries none of them.
    pub fn from_headers(headers: &HeaderMap) -> Option<CodexUsage> {
        if !has_header_prefix(headers, "x-codex-") {
            return None;
        }
        let usage = CodexUsage {
            primary: CodexWindow::from_headers(headers, &PRIMARY),
            secondary: CodexWindow::from_headers(headers, &SECONDARY),
            has_credits: header_bool(headers, &HAS_CREDITS),
            unlimited: header_bool(headers, &UNLIMITED),
            balance: header_str(headers, &BALANCE).map(str::to_owned),
        };
        (usage != CodexUsage::default()).then_some(usage)
    }

    fn windows(&self) -> impl Iterator<Item = &CodexWindow> {
        self.primary.iter().chain(self.secondary.iter())
    }

    /// True when some window is used up (whether or not its reset is known).
    pub fn is_exhausted(&self) -> bool {
        self.windows().any(CodexWindow::is_exhausted)
    }

    /// The window with the longest `window_minutes` (the weekly one), whatever its position.
    pub fn longest_window(&self) -> Option<&CodexWindow> {
        self.windows()
            .filter(|w| w.window_minutes.is_some())
            .max_by_key(|w| w.window_minutes)
    }

    /// Until when the account cannot be used: the reset of the exhausted window, and when both
    /// are exhausted the **later** of the two resets — never the earlier, which would bring a
    /// weekly-exhausted account back after five hours.
    ///
    /// `None` when nothing is exhausted, when credits or an unlimited plan let usage continue,
    /// or when an exhausted window does not say when it resets (then any known reset might be
    /// too early; check [`CodexUsage::is_exhausted`] and apply a default).
    pub fn exhausted_until(&self) -> Option<SystemTime> {
        if self.unlimited == Some(true) || self.has_credits == Some(true) {
            return None;
        }
        let mut until = None;
        for window in self.windows().filter(|w| w.is_exhausted()) {
            until = max_opt(until, Some(window.reset_at?));
        }
        until
    }
}

/// The hint carried by the headers of an HTTP answer:
/// - `Retry-After` (seconds or HTTP date) and `retry-after-ms`;
/// - `x-ratelimit-reset-requests` and `x-ratelimit-reset-tokens` (Go durations or plain
///   seconds), the longer of the two. The requests reset is skipped when
///   `x-ratelimit-remaining-requests` is above zero: that limit is not what stopped the
///   request. The tokens reset is always kept, since a request can need more tokens than
///   remain;
/// - the Codex usage headers: [`CodexUsage::exhausted_until`] as `reset_at`.
///
/// Body fields (`resets_at`, `resets_in_seconds`, "try again in" in the message) are added by
/// [`Failure::from_http`](super::Failure::from_http), which sees the body.
pub fn retry_hint_from_headers(headers: &HeaderMap, now: SystemTime) -> RetryHint {
    let retry_after = headers
        .get(http::header::RETRY_AFTER)
        .and_then(|v| parse_retry_after(v, now));
    let retry_after_ms =
        header_str(headers, "retry-after-ms").and_then(|s| plain_decimal(s, 1_000_000));
    let reset = |name: &str| {
        header_str(headers, name)
            .and_then(|s| parse_go_duration(s).or_else(|| plain_decimal(s, NANOS_PER_SEC)))
    };
    let requests_left = header_f64(headers, "x-ratelimit-remaining-requests");
    let reset_requests = if requests_left.is_some_and(|n| n > 0.0) {
        None
    } else {
        reset("x-ratelimit-reset-requests")
    };
    let reset_tokens = reset("x-ratelimit-reset-tokens");

    let after = [retry_after, retry_after_ms, reset_requests, reset_tokens]
        .into_iter()
        .flatten()
        .max();
    let reset_at = CodexUsage::from_headers(headers).and_then(|u| u.exhausted_until());
    RetryHint { after, reset_at }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn at(unix: u64) -> SystemTime {
        UNIX_EPOCH + secs(unix)
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn go_durations() {
        let cases: &[(&str, Option<Duration>)] = &[
            ("6m0s", Some(secs(360))),
            ("1.5s", Some(Duration::from_millis(1500))),
            ("20ms", Some(Duration::from_millis(20))),
            ("1h2m3s", Some(secs(3723))),
            ("0", Some(Duration::ZERO)),
            ("0s", Some(Duration::ZERO)),
            ("250us", Some(Duration::from_micros(250))),
            (" 7s ", Some(secs(7))),
            ("", None),
            ("-1s", None),
            ("5", None),
            ("5x", None),
            ("s", None),
            ("1.s", None),
            ("99999999999999999999999999999999999999h", None),
        ];
        for (input, want) in cases {
            assert_eq!(parse_go_duration(input), *want, "{input:?}");
        }
    }

    #[test]
    fn try_again_in_forms() {
        let cases: &[(&str, Option<Duration>)] = &[
            (
                "Please try again in 11.054s.",
                Some(Duration::from_millis(11_054)),
            ),
            ("Please try again in 28ms.", Some(Duration::from_millis(28))),
            ("Please try again in 35 seconds.", Some(secs(35))),
            ("TRY AGAIN IN 2S", Some(secs(2))),
            ("try again in 1m30s", Some(secs(90))),
            ("try again in 1 hour and 5 minutes", Some(secs(3900))),
            (
                "or try again in 2 days 3 hours 20 minutes.",
                Some(secs(2 * 86_400 + 3 * 3_600 + 1_200)),
            ),
            ("retry after 3 seconds", Some(secs(3))),
            ("try again later", None),
            ("try again in a moment", None),
            ("try again in 5 parsecs", None),
            ("", None),
        ];
        for (input, want) in cases {
            assert_eq!(parse_try_again_in(input), *want, "{input:?}");
        }
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        let now = httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        let value = |s: &'static str| HeaderValue::from_static(s);
        assert_eq!(parse_retry_after(&value("30"), now), Some(secs(30)));
        assert_eq!(parse_retry_after(&value(" 0 "), now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after(&value("Sun, 06 Nov 1994 08:50:37 GMT"), now),
            Some(secs(60))
        );
        // A date in the past means "now", not "never".
        assert_eq!(
            parse_retry_after(&value("Sun, 06 Nov 1994 08:00:00 GMT"), now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after(&value("tomorrow"), now), None);
        assert_eq!(parse_retry_after(&value("-5"), now), None);
        let opaque = HeaderValue::from_bytes(b"\xff\xfe").unwrap();
        assert_eq!(parse_retry_after(&opaque, now), None);
    }

    #[test]
    fn hint_until_takes_the_later() {
        let now = at(1_000);
        let hint = RetryHint {
            after: Some(secs(10)),
            reset_at: Some(at(2_000)),
        };
        assert_eq!(hint.until(now), Some(at(2_000)));
        let hint = RetryHint {
            after: Some(secs(5_000)),
            reset_at: Some(at(2_000)),
        };
        assert_eq!(hint.until(now), Some(at(6_000)));
        assert_eq!(
            RetryHint {
                after: Some(secs(1)),
                reset_at: None
            }
            .until(now),
            Some(at(1_001))
        );
        assert_eq!(RetryHint::default().until(now), None);
        assert!(RetryHint::default().is_empty());
    }

    #[test]
    fn header_signals() {
        let now = httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        let hint = |pairs: &[(&'static str, &str)]| retry_hint_from_headers(&headers(pairs), now);

        assert_eq!(hint(&[("retry-after", "17")]).after, Some(secs(17)));
        assert_eq!(
            hint(&[("retry-after", "Sun, 06 Nov 1994 08:49:47 GMT")]).after,
            Some(secs(10))
        );
        assert_eq!(
            hint(&[("retry-after-ms", "1500")]).after,
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            hint(&[("x-ratelimit-reset-requests", "6m0s")]).after,
            Some(secs(360))
        );
        // The longer of the two resets.
        let h = hint(&[
            ("x-ratelimit-reset-requests", "1s"),
            ("x-ratelimit-reset-tokens", "6m0s"),
        ]);
        assert_eq!(h.after, Some(secs(360)));
        let h = hint(&[
            ("x-ratelimit-reset-requests", "2m"),
            ("x-ratelimit-reset-tokens", "20ms"),
        ]);
        assert_eq!(h.after, Some(secs(120)));
        // Requests remain: their reset is not what the caller waits for.
        let h = hint(&[
            ("x-ratelimit-remaining-requests", "42"),
            ("x-ratelimit-reset-requests", "2m"),
            ("x-ratelimit-reset-tokens", "20ms"),
        ]);
        assert_eq!(h.after, Some(Duration::from_millis(20)));
        // Retry-After and the resets: the longest wins.
        let h = hint(&[("retry-after", "30"), ("x-ratelimit-reset-tokens", "1.5s")]);
        assert_eq!(h.after, Some(secs(30)));
        assert!(hint(&[]).is_empty());
        assert!(
            hint(&[
                ("retry-after", "whenever"),
                ("x-ratelimit-reset-tokens", "soon")
            ])
            .is_empty()
        );
    }

    fn codex(primary: (&str, &str, &str), secondary: (&str, &str, &str)) -> HeaderMap {
        headers(&[
            ("x-codex-primary-used-percent", primary.0),
            ("x-codex-primary-window-minutes", primary.1),
            ("x-codex-primary-reset-at", primary.2),
            ("x-codex-secondary-used-percent", secondary.0),
            ("x-codex-secondary-window-minutes", secondary.1),
            ("x-codex-secondary-reset-at", secondary.2),
        ])
    }

    #[test]
    fn codex_two_window_rule() {
        // 5-hour window exhausted, weekly at 40%: the 5-hour reset.
        let usage =
            CodexUsage::from_headers(&codex(("100", "300", "5000"), ("40", "10080", "900000")))
                .unwrap();
        assert_eq!(usage.exhausted_until(), Some(at(5000)));
        // Swapped positions: the weekly window is primary, read from window-minutes.
        let usage =
            CodexUsage::from_headers(&codex(("40", "10080", "900000"), ("100", "300", "5000")))
                .unwrap();
        assert_eq!(usage.exhausted_until(), Some(at(5000)));
        assert_eq!(usage.longest_window().unwrap().window_minutes, Some(10080));
        // Both exhausted: the later reset, never the earlier.
        let usage =
            CodexUsage::from_headers(&codex(("100", "300", "5000"), ("100", "10080", "900000")))
                .unwrap();
        assert_eq!(usage.exhausted_until(), Some(at(900_000)));
        let usage =
            CodexUsage::from_headers(&codex(("100", "10080", "900000"), ("100.0", "300", "5000")))
                .unwrap();
        assert_eq!(usage.exhausted_until(), Some(at(900_000)));
        // Weekly exhausted alone (the 5-hour one is fine): the weekly reset.
        let usage =
            CodexUsage::from_headers(&codex(("12", "300", "5000"), ("100", "10080", "900000")))
                .unwrap();
        assert_eq!(usage.exhausted_until(), Some(at(900_000)));
        // Nothing exhausted.
        let usage =
            CodexUsage::from_headers(&codex(("99.9", "300", "5000"), ("40", "10080", "900000")))
                .unwrap();
        assert_eq!(usage.exhausted_until(), None);
        assert!(!usage.is_exhausted());
    }

    #[test]
    fn codex_unknown_reset_and_credits() {
        // An exhausted window without a reset: the other window's reset might be too early.
        let map = headers(&[
            ("x-codex-primary-used-percent", "100"),
            ("x-codex-primary-window-minutes", "300"),
            ("x-codex-primary-reset-at", "5000"),
            ("x-codex-secondary-used-percent", "100"),
            ("x-codex-secondary-window-minutes", "10080"),
        ]);
        let usage = CodexUsage::from_headers(&map).unwrap();
        assert!(usage.is_exhausted());
        assert_eq!(usage.exhausted_until(), None);

        let mut map = codex(("100", "300", "5000"), ("40", "10080", "900000"));
        map.insert(
            "x-codex-credits-has-credits",
            HeaderValue::from_static("True"),
        );
        map.insert("x-codex-credits-balance", HeaderValue::from_static("12.50"));
        let usage = CodexUsage::from_headers(&map).unwrap();
        assert_eq!(usage.has_credits, Some(true));
        assert_eq!(usage.balance.as_deref(), Some("12.50"));
        assert_eq!(usage.exhausted_until(), None);

        let mut map = codex(("100", "300", "5000"), ("40", "10080", "900000"));
        map.insert(
            "x-codex-credits-unlimited",
            HeaderValue::from_static("true"),
        );
        assert_eq!(
            CodexUsage::from_headers(&map).unwrap().exhausted_until(),
            None
        );

        assert_eq!(CodexUsage::from_headers(&HeaderMap::new()), None);
        let junk = headers(&[
            ("x-codex-primary-used-percent", "lots"),
            ("x-codex-primary-reset-at", "NaN"),
        ]);
        assert_eq!(CodexUsage::from_headers(&junk), None);
    }

    #[test]
    fn codex_headers_feed_the_hint() {
        let map = codex(("100", "300", "5000"), ("100", "10080", "900000"));
        assert_eq!(
            retry_hint_from_headers(&map, at(1)).reset_at,
            Some(at(900_000))
        );
    }

    #[test]
    fn unix_seconds_bounds() {
        assert_eq!(
            unix_secs(1_700_000_000.5),
            Some(UNIX_EPOCH + Duration::from_millis(1_700_000_000_500))
        );
        assert_eq!(unix_secs(-1.0), None);
        assert_eq!(unix_secs(f64::NAN), None);
        assert_eq!(unix_secs(1.7e12), None);
    }
}
