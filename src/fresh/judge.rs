//! Which failures came from a stale connection.

use std::error::Error;
use std::io;
use std::time::Duration;

use hyper_util::client::legacy::Error as ClientError;

use super::RetryReason;
use crate::classify::Failure;
use crate::connect::ConnectionInfo;
use crate::error::BoxError;
use crate::marks::{AttemptError, Phase};

/// Why a failed attempt may be retried, if it may. `conn` is what the client service reported
/// about the connection it went out on; a reused one that broke counts only when it broke
/// within `window` of the request's last write, before the upstream could have started on it
/// (Pingora's `fail_to_connect` versus `error_while_proxy`). Later, the upstream may be
/// working on it.
///
/// The error is judged from its chain of sources, so it holds for any client service: an
/// [`AttemptError`] states its phase; hyper-util's and hyper's errors (also under reqwest's)
/// say whether the request was sent and how the connection broke.
pub(crate) fn error_reason(
    err: &(dyn Error + 'static),
    conn: Option<&ConnectionInfo>,
    window: Duration,
) -> Option<RetryReason> {
    if never_sent(err) {
        return Some(RetryReason::NotSent);
    }
    // A fresh connection that fails (or one nothing is known about) is the upstream's doing,
    // not the pool's.
    let conn = conn.filter(|c| c.is_reused())?;
    if conn.since_last_write().is_none_or(|since| since > window) {
        return None;
    }
    chain(err)
        .any(|e| {
            e.downcast_ref::<hyper::Error>()
                .is_some_and(|h| h.is_incomplete_message() || h.is_closed())
                || e.downcast_ref::<io::Error>()
                    .is_some_and(|io| broken_kind(io.kind()))
        })
        .then_some(RetryReason::BrokenConnection)
}

/// Whether the request never left: a phase that says so, a connect error, or a request hyper
/// handed back unwritten (hyper marks a request canceled only then).
fn never_sent(err: &(dyn Error + 'static)) -> bool {
    chain(err).any(|e| {
        e.downcast_ref::<AttemptError>()
            .is_some_and(|a| a.phase == Phase::Unsent)
            || e.downcast_ref::<ClientError>()
                .is_some_and(ClientError::is_connect)
            || e.downcast_ref::<hyper::Error>()
                .is_some_and(hyper::Error::is_canceled)
    })
}

fn chain<'a>(
    err: &'a (dyn Error + 'static),
) -> impl Iterator<Item = &'a (dyn Error + 'static)> + 'a {
    std::iter::successors(Some(err), |e: &&'a (dyn Error + 'static)| (*e).source())
}

/// The error an attempt ends with: the client service's own [`AttemptError`] when it gave
/// one, else one saying the request may have reached the upstream (or never left, when its
/// chain says so), with the error as its source.
pub(crate) fn attempt_error(err: BoxError) -> BoxError {
    if AttemptError::find(&*err).is_some() {
        return err;
    }
    let phase = if never_sent(&*err) {
        Phase::Unsent
    } else {
        Phase::Sent
    };
    let failure = Failure::transport(false, err.to_string());
    Box::new(AttemptError::new(phase, failure).with_source(err))
}

fn broken_kind(kind: io::ErrorKind) -> bool {
    matches!(
        kind,
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::UnexpectedEof
            | io::ErrorKind::NotConnected
    )
}

/// Whether a body prefix is the API's JSON error envelope (`{"error": ..}`, or FastAPI-style
/// `{"detail": ..}`). `complete` says the prefix is the whole body; a cut-off prefix cannot
/// parse, so it is judged by its shape.
pub(crate) fn is_api_envelope(prefix: &[u8], complete: bool) -> bool {
    let trimmed = prefix.trim_ascii_start();
    if !trimmed.starts_with(b"{") {
        return false;
    }
    if complete {
        return match serde_json::from_slice::<serde_json::Value>(trimmed) {
            Ok(serde_json::Value::Object(map)) => {
                map.contains_key("error") || map.contains_key("detail")
            }
            _ => false,
        };
    }
    memchr::memmem::find(trimmed, b"\"error\"").is_some()
        || memchr::memmem::find(trimmed, b"\"detail\"").is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_errors_are_recognised() {
        assert!(is_api_envelope(
            br#"{"error":{"message":"bad","type":"invalid_request_error"}}"#,
            true
        ));
        assert!(is_api_envelope(b"\n {\"detail\":\"Not Found\"}", true));
        assert!(is_api_envelope(br#"{"error":{"message":"very long"#, false));
    }

    #[test]
    fn middlebox_pages_are_not_api_errors() {
        assert!(!is_api_envelope(
            b"<html><head><title>400 Bad Request</title></head></html>",
            true
        ));
        assert!(!is_api_envelope(b"", true));
        assert!(!is_api_envelope(br#"{"status":"bad"}"#, true));
        // Mentions "error" but is cut JSON that claims to be complete: not the envelope.
        assert!(!is_api_envelope(br#"{"error": "#, true));
        assert!(!is_api_envelope(b"Bad Request: error", false));
    }
}
