//! The seam between a client socket and the way its turns reach the upstream.
//!
//! A client socket's [`session`](super::session) turns each `response.create` frame into a
//! [`Turn`] and hands it to its [`Carrier`]; the carrier answers with the upstream's events,
//! which the session sends back as text frames. Two carriers exist: the
//! [`HttpCarrier`](super::http_carrier::HttpCarrier) (each turn a full HTTP/SSE request
//! through the proxy's stack, for upstreams without WebSocket and as the fallback), and the
//! socket carrier (an upstream socket per client socket).

use std::pin::Pin;

use futures_util::Stream;
use futures_util::future::BoxFuture;

use crate::error::ApiError;

/// One `response.create` ready to go upstream.
#[derive(Debug, Clone)]
pub struct Turn {
    /// The frame as the client sent it (may be incremental: `previous_response_id` + new
    /// items), WebSocket-only fields included (`generate`), `type` included.
    pub frame: serde_json::Value,
    /// The same request expanded from the socket's transcript into a full input, with no
    /// `previous_response_id`, no `type` and no WebSocket-only fields: what an HTTP request
    /// would carry (`stream: true`).
    pub full: serde_json::Value,
    /// Headers from the client's handshake that a request upstream carries (session ids,
    /// `OpenAI-Beta`, ...), with the client's key already removed by the edge.
    pub headers: http::HeaderMap,
}

/// What a carrier yields for a turn, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// An upstream event's JSON text (what SSE carried in `data:`), sent as one text frame.
    Event(String),
    /// The turn failed: sent as an error frame (`{"type":"error","status",..}`, see
    /// [`frames::error_frame`](super::frames::error_frame)); nothing follows it.
    Error(ApiError),
}

/// The events of one turn: ends after a terminal event (`response.completed`, `.failed`,
/// `.incomplete`, `error`) or a [`Delivery::Error`]. Dropping it cancels the turn upstream.
pub type Events = Pin<Box<dyn Stream<Item = Delivery> + Send>>;

/// Carries turns upstream for one client socket (its state: an upstream socket, a credential).
///
/// The session sends one turn at a time and drains (or drops) its [`Events`] before the next.
pub trait Carrier: Send {
    /// Sends one turn. `Err` is what the client sees as an error frame when nothing at all
    /// could be started (for example no credential is usable).
    fn send(&mut self, turn: Turn) -> BoxFuture<'_, Result<Events, ApiError>>;

    /// Whether the upstream answers a `generate: false` prewarm itself. When `false` (an HTTP
    /// upstream), the session answers it locally and keeps its items for the next turn.
    fn takes_prewarm(&self) -> bool {
        false
    }
}
