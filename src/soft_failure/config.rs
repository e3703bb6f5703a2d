use std::time::Duration;

/// Bounds of the hold-back and of what is read to classify.
///
/// The defaults add no visible delay: a real answer's first content event
/// (`response.output_item.added`) follows its lifecycle events at once, so holding them
/// until then costs nothing, while a failure that comes instead is caught.
#[derive(Debug, Clone)]
pub struct SoftFailureConfig {
    /// Most events held before content; past it, the held bytes are released.
    pub max_held_events: usize,
    /// Most bytes held before content.
    pub max_held_bytes: usize,
    /// Longest hold before content (a slow model's queueing must not look like a stall).
    pub max_hold: Duration,
    /// Longest SSE line accepted while parsing; past it, parsing stops and bytes flow through.
    pub max_line: usize,
    /// Most bytes of an error or non-streaming JSON body read to classify it.
    pub max_json_peek: usize,
    /// Longest wait for the body of an error or JSON answer read to classify it; an error
    /// body that stalls is answered with what arrived.
    pub peek_timeout: Duration,
}

impl Default for SoftFailureConfig {
    fn default() -> Self {
        SoftFailureConfig {
            max_held_events: 32,
            max_held_bytes: 256 * 1024,
            max_hold: Duration::from_secs(10),
            max_line: 1024 * 1024,
            max_json_peek: 4 * 1024 * 1024,
            peek_timeout: crate::body::DEFAULT_PEEK_TIMEOUT,
        }
    }
}
