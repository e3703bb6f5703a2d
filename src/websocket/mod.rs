//! The Responses WebSocket transport (feature `websocket`): the proxy accepts the socket the
//! Codex CLI opens on `{base_url}/responses` and carries each `response.create` upstream.
//!
//! A client socket is a [`session`]: text frames in ([`frames`]), one response in flight, the
//! socket's [`transcript`] so an incremental frame (`previous_response_id` plus new items) can
//! always become a full request, and a [`carrier`] that takes each turn upstream.

pub mod carrier;
pub mod socket_carrier;
pub mod upstream;

pub use carrier::{Carrier, Delivery, Events, Turn};
pub use socket_carrier::SocketCarrier;
