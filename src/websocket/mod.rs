//! The Responses WebSocket transport (feature `websocket`): the proxy accepts the socket the
//! Codex CLI opens on `{base_url}/responses` and carries each `response.create` upstream.
//!
//! A client socket is a [`session`]: JSON text frames in ([`frames`]), one response in
//! flight, the socket's [`transcript`] so an incremental frame (`previous_response_id` plus
//! only the new items) can always become a full request, and a [`carrier`] that takes each
//! turn upstream: the [`http_carrier`] sends it as an ordinary HTTP/SSE request through the
//! whole stack (rotation, soft-failure replay, continuity, compaction routing), so a WebSocket
//! client keeps every guarantee an HTTP client has. [`accept`] is the handshake.
//!
//! What the socket gains over HTTP for a long agent session: the client sends only the new
//! items of each turn (not its whole history), and a prewarm (`generate: false`) costs no
//! upstream request when the upstream is HTTP.
//!
//! ```
//! use tower_responses::websocket::WebSocketLimits;
//!
//! let limits = WebSocketLimits::default();
//! assert!(limits.enabled);
//! // The message budget is answered with a 400 error frame; only twice the budget is a
//! // frame the socket cannot read at all.
//! assert_eq!(limits.hard_message_bytes(), 2 * limits.max_message_bytes);
//! assert!(limits.idle_timeout().as_secs() >= 600, "longer than the gaps between turns");
//! ```

pub mod accept;
pub mod carrier;
pub mod choose;
pub mod frames;
pub mod http_carrier;
pub mod session;
pub mod socket_carrier;
pub mod transcript;
pub mod upstream;

pub use carrier::{Carrier, Delivery, Events, Turn};
pub use socket_carrier::SocketCarrier;

use std::time::Duration;

use serde::Deserialize;

/// The limits of client sockets (`[websocket]` in the proxy's configuration).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebSocketLimits {
    /// Accept WebSocket upgrades (default `true`). With `false` an upgrade gets `426`, on
    /// which the Codex CLI uses HTTP for the session at once.
    pub enabled: bool,
    /// How long a socket may stay silent with no response in flight before it is closed
    /// (seconds, default 1800): longer than the gaps between an agent's turns.
    pub idle_timeout_secs: u64,
    /// The message budget (bytes, default 32 MiB): a larger message gets a `400
    /// payload_too_large` error frame and the socket stays open. Twice this is the hard limit
    /// of what is read at all.
    pub max_message_bytes: usize,
    /// Most bytes of context a socket keeps to expand chained frames (default 32 MiB); past
    /// it the context is dropped and a chained frame gets `previous_response_not_found`, on
    /// which the client resends in full.
    pub max_transcript_bytes: usize,
    /// Most bytes all sockets' contexts hold together (default 1 GiB); a context that does not
    /// fit is dropped, as one over `max_transcript_bytes` is.
    pub max_transcripts_total_bytes: usize,
    /// Most client sockets served at once (default 1024); past it an upgrade gets `426`.
    pub max_sockets: usize,
    /// How turns reach the upstream: `auto` (default: an upstream socket for the
    /// `chatgpt-codex` and `openai` profiles when the proxy has credentials, else HTTP),
    /// `http`, or `socket`.
    pub upstream: choose::UpstreamTransport,
}

impl Default for WebSocketLimits {
    fn default() -> Self {
        WebSocketLimits {
            enabled: true,
            idle_timeout_secs: 1800,
            max_message_bytes: crate::body::DEFAULT_BODY_LIMIT,
            max_transcript_bytes: crate::body::DEFAULT_BODY_LIMIT,
            max_transcripts_total_bytes: 1 << 30,
            max_sockets: 1024,
            upstream: choose::UpstreamTransport::default(),
        }
    }
}

impl WebSocketLimits {
    /// The idle timeout.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_secs)
    }

    /// The largest message read at all: twice the budget, so anything between the budget and
    /// this is answered with an error frame and the socket goes on.
    pub fn hard_message_bytes(&self) -> usize {
        self.max_message_bytes.saturating_mul(2)
    }

    /// Refuses values the session cannot work with (hyper and tokio panic on overflowing
    /// deadlines; a zero limit serves nothing).
    pub fn check(&self) -> Result<(), crate::error::ConfigError> {
        let fail = |m: &str| Err(crate::error::ConfigError(format!("websocket.{m}")));
        if !(1..=24 * 60 * 60).contains(&self.idle_timeout_secs) {
            return fail("idle_timeout_secs must be between 1 and 86400");
        }
        if self.max_message_bytes < 1024 {
            return fail("max_message_bytes must be at least 1024");
        }
        if !(1..=1_000_000).contains(&self.max_sockets) {
            return fail("max_sockets must be between 1 and 1000000");
        }
        Ok(())
    }
}
