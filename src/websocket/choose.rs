//! Which way a client socket's turns go upstream: [`UpstreamTransport`] (the `[websocket]
//! upstream` setting) and [`ChosenCarrier`], which carries turns over an upstream socket and
//! falls back to HTTP per client socket.
//!
//! With an upstream socket ([`SocketCarrier`]), some turns still go over HTTP through the
//! stack ([`HttpCarrier`]): compaction requests (a `compaction_trigger` last item), so
//! compaction routing (`remote`, `compact_model`, the local fallback) applies to them as to
//! HTTP clients; turns that carry the route's own local summary item, which only the route
//! expands; and every turn once the upstream has refused a socket (`426`, `404`,
//! `405`). A prewarm that cannot go up a socket is answered locally, since an HTTP upstream
//! would generate a whole response for it.

use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use futures_util::stream;
use serde::Deserialize;
use serde_json::Value;

use super::carrier::{Carrier, Delivery, Events, Turn};
use super::frames;
use super::http_carrier::HttpCarrier;
use super::socket_carrier::SocketCarrier;
use crate::error::ApiError;
use crate::profile::Profile;

/// How client sockets' turns reach the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamTransport {
    /// An upstream socket where the upstream speaks WebSocket (the `chatgpt-codex` and
    /// `openai` profiles) and the proxy has credentials; HTTP otherwise.
    #[default]
    Auto,
    /// Every turn as an HTTP/SSE request through the stack.
    Http,
    /// An upstream socket per client socket (needs credentials), HTTP where refused.
    Socket,
}

impl UpstreamTransport {
    /// Whether client sockets get an upstream socket, for this profile, with or without a
    /// credential pool (a socket needs the pool's credential).
    ///
    /// ```
    /// use tower_responses::profile::Profile;
    /// use tower_responses::websocket::choose::UpstreamTransport;
    ///
    /// assert!(UpstreamTransport::Auto.uses_socket(Profile::ChatgptCodex, true));
    /// assert!(!UpstreamTransport::Auto.uses_socket(Profile::Generic, true));
    /// assert!(!UpstreamTransport::Socket.uses_socket(Profile::ChatgptCodex, false));
    /// assert!(!UpstreamTransport::Http.uses_socket(Profile::ChatgptCodex, true));
    /// ```
    pub fn uses_socket(self, profile: Profile, pooled: bool) -> bool {
        pooled
            && match self {
                UpstreamTransport::Auto => {
                    matches!(profile, Profile::ChatgptCodex | Profile::Openai)
                }
                UpstreamTransport::Http => false,
                UpstreamTransport::Socket => true,
            }
    }

    /// A `snake_case` label for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamTransport::Auto => "auto",
            UpstreamTransport::Http => "http",
            UpstreamTransport::Socket => "socket",
        }
    }
}

/// An upstream socket while the upstream takes one, HTTP for compactions and after a refusal.
pub struct ChosenCarrier {
    socket: Option<SocketCarrier>,
    http: HttpCarrier,
}

impl std::fmt::Debug for ChosenCarrier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChosenCarrier")
            .field("socket", &self.socket.is_some())
            .finish_non_exhaustive()
    }
}

impl ChosenCarrier {
    /// Turns over HTTP only.
    pub fn http(http: HttpCarrier) -> Self {
        ChosenCarrier { socket: None, http }
    }

    /// Turns over `socket`, with `http` for compactions and as the fallback.
    pub fn socket(socket: SocketCarrier, http: HttpCarrier) -> Self {
        ChosenCarrier {
            socket: Some(socket),
            http,
        }
    }
}

/// A turn the compaction route must see: a v2 compaction request (its last input item is a
/// `compaction_trigger`), or one carrying the proxy's own local summary item, which only the
/// route can expand (the upstream cannot decrypt it and must never receive it).
fn needs_compaction_route(turn: &Turn) -> bool {
    let Some(items) = turn.full["input"].as_array() else {
        return false;
    };
    let trigger = items
        .last()
        .is_some_and(|i| i["type"] == "compaction_trigger");
    trigger
        || items.iter().any(|i| {
            i["type"] == "compaction"
                && i["encrypted_content"]
                    .as_str()
                    .is_some_and(|c| c.starts_with(crate::compact::MARKER_PREFIX))
        })
}

fn is_prewarm(turn: &Turn) -> bool {
    turn.frame.get("generate") == Some(&Value::Bool(false))
}

/// A prewarm answered here, as the session does for an HTTP upstream.
fn local_prewarm(turn: &Turn) -> Events {
    let id = super::session::prewarm_id();
    let model = turn.frame.get("model").and_then(Value::as_str);
    let events = frames::prewarm_events(&id, model).map(Delivery::Event);
    Box::pin(stream::iter(events))
}

impl Carrier for ChosenCarrier {
    fn send(&mut self, turn: Turn) -> BoxFuture<'_, Result<Events, ApiError>> {
        Box::pin(async move {
            let Some(socket) = self
                .socket
                .as_mut()
                .filter(|_| !needs_compaction_route(&turn))
            else {
                if is_prewarm(&turn) {
                    return Ok(local_prewarm(&turn));
                }
                return self.http.send(turn).await;
            };
            let mut events = socket.send(turn.clone()).await?;
            let first = events.next().await;
            if let Some(Delivery::Error(e)) = &first {
                if e.code.as_deref() == Some("upstream_websocket_unsupported") {
                    tracing::info!(
                        "the upstream refused a WebSocket: this client socket's turns go over HTTP"
                    );
                    self.socket = None;
                    if is_prewarm(&turn) {
                        return Ok(local_prewarm(&turn));
                    }
                    return self.http.send(turn).await;
                }
            }
            Ok(Box::pin(stream::iter(first).chain(events)) as Events)
        })
    }

    fn takes_prewarm(&self) -> bool {
        // The socket path answers prewarms itself (upstream, or locally after a refusal).
        self.socket.is_some()
    }
}
