//! Which failures came from a stale connection.

use std::error::Error as _;
use std::io;

use hyper_util::client::legacy::Error as ClientError;

use super::RetryReason;

/// Why a failed attempt may be retried, if it may. `reused` is whether the attempt went out on
/// a connection from the pool.
pub(crate) fn error_reason(err: &ClientError, reused: bool) -> Option<RetryReason> {
    if err.is_connect() {
        return Some(RetryReason::NotSent);
    }
    let hyper_err = err.source().and_then(|s| s.downcast_ref::<hyper::Error>());
    // hyper marks a request canceled only when it hands the unsent request back.
    if hyper_err.is_some_and(hyper::Error::is_canceled) {
        return Some(RetryReason::NotSent);
    }
    if !reused {
        // A fresh connection that fails is the upstream's doing, not the pool's.
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
