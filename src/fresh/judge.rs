//! Which failures came from a stale connection.

use std::error::Error as _;
use std::io;
use std::time::Duration;

use hyper_util::client::legacy::Error as ClientError;

use super::RetryReason;
use crate::classify::Failure;
use crate::connect::ConnTag;
use crate::marks::{AttemptError, Phase};

/// Why a failed attempt may be retried, if it may. `tag` is the connection it went out on,
/// when known; a reused one that broke counts only when it broke within `window` of the
/// request's last write, before the upstream could have started on it (Pingora's
/// `fail_to_connect` versus `error_while_proxy`). Later, the upstream may be working on it.
pub(crate) fn error_reason(
    err: &ClientError,
    tag: Option<&ConnTag>,
    window: Duration,
) -> Option<RetryReason> {
    if err.is_connect() {
        return Some(RetryReason::NotSent);
    }
    let hyper_err = err.source().and_then(|s| s.downcast_ref::<hyper::Error>());
    // hyper marks a request canceled only when it hands the unsent request back.
    if hyper_err.is_some_and(hyper::Error::is_canceled) {
        return Some(RetryReason::NotSent);
    }
    let Some(tag) = tag.filter(|t| t.is_reused()) else {
        // A fresh connection that fails is the upstream's doing, not the pool's.
        return None;
    };
    if tag.since_last_write() > window {
        return None;
    }
    if hyper_err.is_some_and(|e| e.is_incomplete_message() || e.is_closed()) {
        return Some(RetryReason::BrokenConnection);
    }
    let mut source = err.source();
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<io::Error>() {
            if broken_kind(io.kind()) {
                return Some(RetryReason::BrokenConnection);
            }
        }
        source = e.source();
    }
    None
}

/// The error an attempt ends with, saying how far it got: a request that was never written
/// (or handed back unsent) is [`Phase::Unsent`]; any other may have reached the upstream.
pub(crate) fn attempt_error(err: ClientError) -> AttemptError {
    let unsent = err.is_connect()
        || err
            .source()
            .and_then(|s| s.downcast_ref::<hyper::Error>())
            .is_some_and(hyper::Error::is_canceled);
    let phase = if unsent { Phase::Unsent } else { Phase::Sent };
    let failure = Failure::transport(false, err.to_string());
    AttemptError::new(phase, failure).with_source(err)
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
