//! Reading what the upstream said out of bodies and SSE events.

use std::time::SystemTime;

use http::{HeaderMap, StatusCode};
use serde_json::Value;

use super::hints::{self, RetryHint};
use super::{Failure, FailureClass, Origin, classify_error, parse_try_again_in};

/// How much of an HTTP body is looked at. Error bodies are small; a longer one is not an
/// API error envelope anyway.
const MAX_BODY: usize = 64 * 1024;
/// How much of a message is kept (and matched against phrases).
const MAX_MESSAGE: usize = 1024;

/// The fields of an error, as found. The first value found for a field is kept, so callers
/// read the most specific place first.
#[derive(Default)]
struct Said {
    code: Option<String>,
    kind: Option<String>,
    message: Option<String>,
    hint: RetryHint,
    status: Option<StatusCode>,
}

fn bounded(mut s: String) -> String {
    if s.len() > MAX_MESSAGE {
        let mut end = MAX_MESSAGE;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

/// A string field, or a number written as one (some upstreams send numeric codes).
fn text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) if !s.trim().is_empty() => Some(bounded(s.trim().to_owned())),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn number(v: Option<&Value>) -> Option<f64> {
    match v? {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
    .filter(|f: &f64| f.is_finite())
}

impl Said {
    /// Reads an error object: `code`, `type` (when `with_type`), `message`, reset fields.
    fn read_error(&mut self, v: &Value, with_type: bool) {
        if !v.is_object() {
            return;
        }
        if self.code.is_none() {
            self.code = text(v.get("code"));
        }
        if with_type && self.kind.is_none() {
            self.kind = text(v.get("type"));
        }
        if self.message.is_none() {
            self.message = text(v.get("message")).or_else(|| text(v.get("msg")));
        }
        self.read_resets(v);
    }

    /// `resets_at` (unix seconds) and `resets_in_seconds`.
    fn read_resets(&mut self, v: &Value) {
        let reset_at = number(v.get("resets_at")).and_then(hints::unix_secs);
        let after = number(v.get("resets_in_seconds"))
            .filter(|s| *s >= 0.0)
            .and_then(|s| std::time::Duration::try_from_secs_f64(s).ok());
        self.hint = self.hint.merge(RetryHint { after, reset_at });
    }

    /// Reads any of the envelopes: `{"error":{..}}`, `{"error":"..."}`, `{"detail":..}`, or
    /// the fields at the top level.
    fn read_envelope(&mut self, v: &Value) {
        match v.get("error") {
            Some(e @ Value::Object(_)) => self.read_error(e, true),
            Some(Value::String(_)) if self.message.is_none() => self.message = text(v.get("error")),
            _ => {}
        }
        match v.get("detail") {
            Some(d @ Value::Object(_)) => self.read_error(d, true),
            Some(Value::Array(items)) => {
                if let Some(first) = items.first() {
                    self.read_error(first, true);
                }
            }
            Some(Value::String(_)) if self.message.is_none() => {
                self.message = text(v.get("detail"));
            }
            _ => {}
        }
        // At the top level, `type` names an event or an envelope, not the error's kind.
        let top_type = v.get("type").and_then(Value::as_str).unwrap_or_default();
        let with_type = top_type != "error" && !top_type.starts_with("response.");
        self.read_error(v, with_type);
    }

    fn into_failure(self, status: Option<StatusCode>, origin: Origin) -> Failure {
        let status = status.or(self.status);
        let class = classify_error(
            status,
            self.code.as_deref(),
            self.kind.as_deref(),
            self.message.as_deref(),
        );
        self.with_class(class, status, origin)
    }

    fn with_class(
        self,
        class: FailureClass,
        status: Option<StatusCode>,
        origin: Origin,
    ) -> Failure {
        let spoken = RetryHint {
            after: self.message.as_deref().and_then(parse_try_again_in),
            reset_at: None,
        };
        Failure {
            class,
            status,
            code: self.code,
            kind: self.kind,
            message: self.message,
            retry: self.hint.merge(spoken),
            origin,
        }
    }
}

/// The `<title>` of an HTML page, which is all an error page usually says.
fn html_title(text: &str) -> Option<String> {
    let lower = text.to_ascii_lowercase();
    let start = lower.find("<title")?;
    let open_end = start + lower[start..].find('>')? + 1;
    let close = open_end + lower[open_end..].find("</title")?;
    let title = text
        .get(open_end..close)?
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    (!title.is_empty()).then(|| bounded(title))
}

fn text_body(body: &[u8]) -> Said {
    let text = String::from_utf8_lossy(body);
    let text = text.trim_start_matches('\u{feff}').trim();
    let message = if text.starts_with('<') {
        html_title(text)
    } else if text.is_empty() {
        None
    } else {
        Some(bounded(text.to_owned()))
    };
    Said {
        message,
        ..Said::default()
    }
}

/// Whether a non-JSON body is an HTML page or nothing at all.
fn is_page_or_empty(body: &[u8]) -> bool {
    let t = body.trim_ascii();
    t.is_empty() || t.starts_with(b"<")
}

/// A `response.incomplete` (or `status: incomplete` object) is a credential's failure only
/// when its reason is quota- or rate-limit-shaped.
fn incomplete(response: &Value, status: Option<StatusCode>, origin: Origin) -> Option<Failure> {
    let reason = text(response.get("incomplete_details")?.get("reason"))?;
    if matches!(reason.as_str(), "max_output_tokens" | "content_filter") {
        return None;
    }
    let mut said = Said::default();
    if let Some(error) = response.get("error") {
        said.read_error(error, true);
    }
    // The reason stands in for a code: it is what the upstream named.
    let code = said.code.take().unwrap_or(reason);
    let class = classify_error(
        None,
        Some(&code),
        said.kind.as_deref(),
        said.message.as_deref(),
    );
    said.code = Some(code);
    matches!(
        class,
        FailureClass::QuotaExhausted | FailureClass::RateLimited
    )
    .then(|| said.with_class(class, status, origin))
}

/// A 2xx JSON body that is nevertheless a failure.
fn failed_success(v: &Value, status: StatusCode) -> Option<Failure> {
    let mut said = Said::default();
    match v.get("status").and_then(Value::as_str) {
        Some("failed") => {
            if let Some(error) = v.get("error") {
                said.read_error(error, true);
            }
            said.read_resets(v);
            Some(said.into_failure(Some(status), Origin::Http))
        }
        Some("cancelled") => {
            if let Some(error) = v.get("error") {
                said.read_error(error, true);
            }
            Some(said.with_class(FailureClass::Cancelled, Some(status), Origin::Http))
        }
        Some("incomplete") => incomplete(v, Some(status), Origin::Http),
        Some(_) => None,
        None if v.get("error").is_some_and(Value::is_object) => {
            said.read_envelope(v);
            Some(said.into_failure(Some(status), Origin::Http))
        }
        None => None,
    }
}

pub(super) fn from_http(
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    now: SystemTime,
) -> Option<Failure> {
    let body = &body[..body.len().min(MAX_BODY)];
    let json = serde_json::from_slice::<Value>(body)
        .ok()
        .filter(Value::is_object);

    let mut failure = if status.is_success() {
        failed_success(&json?, status)?
    } else if status.as_u16() < 400 {
        return None;
    } else {
        let said = match &json {
            Some(v) => {
                let mut said = Said::default();
                said.read_envelope(v);
                said
            }
            // Plain text, HTML, or JSON cut short by the caller's bound: the text is the message.
            None => text_body(body),
        };
        let page = json.is_none() && is_page_or_empty(body);
        let failure = said.into_failure(Some(status), Origin::Http);
        if page && status == StatusCode::FORBIDDEN && failure.class == FailureClass::Auth {
            // Only the status said "auth": a challenge page in front of the API, not a key
            // the API refused (which always answers in its JSON envelope).
            let auth_phrase = failure
                .message
                .as_deref()
                .is_some_and(|m| classify_error(None, None, None, Some(m)) == FailureClass::Auth);
            if !auth_phrase {
                return Some(Failure {
                    class: FailureClass::Blocked,
                    ..failure
                });
            }
        }
        failure
    };
    failure.retry = hints::retry_hint_from_headers(headers, now).merge(failure.retry);
    Some(failure)
}

pub(super) fn from_sse_data(data: &[u8]) -> Option<Failure> {
    // Every stream ends with `response.completed`, which carries the whole output: building
    // a `Value` of it only to learn it is not a failure cost more than the rest of the
    // event handling. The type is read without parsing first; when it cannot be sniffed
    // the full parse below decides, as before.
    if let Some(ty) = crate::sse::sniff_type(data) {
        if !matches!(ty, "response.failed" | "error" | "response.incomplete") {
            return None;
        }
    }
    let v = serde_json::from_slice::<Value>(data).ok()?;
    let mut said = Said::default();
    match v.get("type")?.as_str()? {
        "response.failed" => {
            let response = v.get("response");
            if let Some(error) = response.and_then(|r| r.get("error")) {
                said.read_error(error, true);
            }
            if let Some(response) = response {
                said.read_resets(response);
            }
            Some(said.into_failure(None, Origin::Stream))
        }
        "error" => {
            said.status = v
                .get("status")
                .or_else(|| v.get("status_code"))
                .and_then(Value::as_u64)
                .and_then(|s| u16::try_from(s).ok())
                .and_then(|s| StatusCode::from_u16(s).ok());
            said.read_envelope(&v);
            Some(said.into_failure(None, Origin::Stream))
        }
        "response.incomplete" => incomplete(v.get("response")?, None, Origin::Stream),
        _ => None,
    }
}
