//! One upstream Responses WebSocket: open it over the crate's connector, send text frames,
//! read events with liveness and a size budget.
//!
//! The handshake is an HTTP/1.1 upgrade sent through [`UpstreamConnector`] (the crate's
//! rustls roots and connect timeout), so `wss://` reaches the same hosts with the same TLS as
//! HTTP does. What ends a socket is said in the policy's words ([`SocketEnd`]), so the
//! carrier asks [`policy::after_socket_end`](crate::credentials::policy::after_socket_end)
//! instead of deciding.
//!
//! ```
//! use tower_responses::connect::UpstreamClientBuilder;
//! use tower_responses::testing::{MockUpstream, WsReply};
//! use tower_responses::websocket::upstream::{SocketConfig, UpstreamSocket, socket_uri};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let mock = MockUpstream::start().await.unwrap();
//! mock.push_ws(WsReply::text("hi back"));
//! let connector = UpstreamClientBuilder::new().connector();
//! let uri = socket_uri(&mock.base_url()).unwrap();
//! let mut headers = http::HeaderMap::new();
//! headers.insert("authorization", "Bearer sk-test".parse().unwrap());
//! let mut socket = UpstreamSocket::open(&connector, &uri, headers, &SocketConfig::default())
//!     .await
//!     .unwrap();
//! socket.send(r#"{"type":"response.create","model":"gpt-5","input":"hi"}"#.into()).await.unwrap();
//! loop {
//!     let ev = socket.next_event().await.unwrap();
//!     if ev.kind() == Some("response.completed") {
//!         assert!(ev.text.contains("hi back"));
//!         break;
//!     }
//! }
//! assert_eq!(mock.ws_sockets()[0].path, "/v1/responses");
//! # }
//! ```

use std::fmt;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, HeaderValue, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Empty, Limited};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::client::generate_key;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tower::ServiceExt;

use crate::classify::Failure;
use crate::connect::UpstreamConnector;
use crate::credentials::policy::SocketEnd;

/// The `OpenAI-Beta` value the Codex CLI sends on its WebSocket handshake.
pub const RESPONSES_WEBSOCKETS_BETA: &str = "responses_websockets=2026-02-06";

/// Most bytes of a refused upgrade's body read to classify it.
const REFUSAL_PEEK: usize = 64 * 1024;

/// Limits and clocks of an upstream socket (FIELD 2.2, 2.6).
#[derive(Debug, Clone)]
pub struct SocketConfig {
    /// Time allowed for connect, TLS and the upgrade answer.
    pub handshake_timeout: Duration,
    /// The largest upstream message read (default 16 MiB, the upstream's own frame budget);
    /// a bigger one ends the socket as [`SocketEnd::TooLarge`].
    pub max_message: usize,
    /// After this long without hearing from the upstream, a ping goes out.
    pub ping_interval: Duration,
    /// A ping unanswered (no frame at all) this long ends the socket as
    /// [`SocketEnd::Unresponsive`].
    pub pong_timeout: Duration,
    /// While waiting for an event, this long without one (pongs do not count) ends the socket
    /// as [`SocketEnd::Unresponsive`]: the Codex CLI's own `stream_idle_timeout`.
    pub idle_timeout: Duration,
}

impl Default for SocketConfig {
    fn default() -> Self {
        SocketConfig {
            handshake_timeout: Duration::from_secs(30),
            max_message: 16 * 1024 * 1024,
            ping_interval: Duration::from_secs(30),
            pong_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(300),
        }
    }
}

/// Why a socket could not be opened. Either way the turn's frame was never sent.
// A refusal carries the whole answer; opening fails rarely, so it is not boxed.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum OpenError {
    /// The upstream answered the upgrade with an HTTP status instead of `101` (`426`: it
    /// speaks only HTTP; a quota `429`, a `401`).
    Refused {
        /// The answer's status.
        status: StatusCode,
        /// The answer's headers.
        headers: HeaderMap,
        /// The first 64 KiB of its body.
        body: Bytes,
        /// The body classified, when it is a failure.
        failure: Option<Failure>,
    },
    /// No connection, no TLS, a timeout, or a `101` that is not a valid WebSocket answer.
    Transport(String),
}

impl OpenError {
    /// The upstream does not speak WebSocket on this route (`426`, `404`, `405`): carry the
    /// turn over HTTP instead.
    pub fn http_only(&self) -> bool {
        matches!(
            self,
            OpenError::Refused { status, .. } if matches!(status.as_u16(), 404 | 405 | 426)
        )
    }
}

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpenError::Refused {
                status, failure, ..
            } => match failure {
                Some(failure) => write!(f, "upgrade refused with {status}: {failure}"),
                None => write!(f, "upgrade refused with {status}"),
            },
            OpenError::Transport(why) => write!(f, "upgrade failed: {why}"),
        }
    }
}

impl std::error::Error for OpenError {}

/// How a socket ended, in the policy's words, and what the transport said.
#[derive(Debug, Clone)]
pub struct SocketError {
    /// What ended it.
    pub end: SocketEnd,
    /// The close code, when a close frame came.
    pub close_code: Option<u16>,
    /// What the transport said, for logs.
    pub detail: String,
}

impl SocketError {
    fn new(end: SocketEnd, detail: impl Into<String>) -> SocketError {
        SocketError {
            end,
            close_code: None,
            detail: detail.into(),
        }
    }
}

impl fmt::Display for SocketError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "upstream socket {}: {}", self.end.as_str(), self.detail)
    }
}

impl std::error::Error for SocketError {}

/// One upstream event: the JSON text as it came (what SSE carries in `data:`) and parsed.
#[derive(Debug, Clone)]
pub struct UpstreamEvent {
    /// The frame's text, forwarded as it came.
    pub text: String,
    /// The same, parsed (`Value::Null` when it is not JSON).
    pub value: Value,
}

impl UpstreamEvent {
    /// The event's `type`.
    pub fn kind(&self) -> Option<&str> {
        self.value.get("type").and_then(Value::as_str)
    }
}

/// The socket URI for an upstream base URL: `{base}/responses`, with `ws`/`wss` read as
/// `http`/`https` (the connector takes HTTP schemes; the upgrade makes it a WebSocket).
///
/// ```
/// use tower_responses::websocket::upstream::socket_uri;
///
/// let uri = socket_uri("wss://chatgpt.com/backend-api/codex/").unwrap();
/// assert_eq!(uri.to_string(), "https://chatgpt.com/backend-api/codex/responses");
/// assert_eq!(socket_uri("http://127.0.0.1:9/v1").unwrap().path(), "/v1/responses");
/// assert!(socket_uri("ftp://x").is_none());
/// ```
pub fn socket_uri(base: &str) -> Option<Uri> {
    let base = base.trim_end_matches('/');
    let (scheme, rest) = base.split_once("://")?;
    let scheme = match scheme.to_ascii_lowercase().as_str() {
        "ws" | "http" => "http",
        "wss" | "https" => "https",
        _ => return None,
    };
    format!("{scheme}://{rest}/responses").parse().ok()
}

type Stream = WebSocketStream<TokioIo<Upgraded>>;

/// An open upstream socket. Dropping it closes the connection.
pub struct UpstreamSocket {
    stream: Stream,
    handshake: HeaderMap,
    opened: Instant,
    config: SocketConfig,
    /// Last time any frame came (pongs included).
    heard: Instant,
    /// Last time an event came.
    evented: Instant,
    ping_sent: Option<Instant>,
}

impl fmt::Debug for UpstreamSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamSocket")
            .field("age", &self.opened.elapsed())
            .finish_non_exhaustive()
    }
}

impl UpstreamSocket {
    /// Opens a socket to `uri` (see [`socket_uri`]) with these request headers (the
    /// credential's already applied; the upgrade headers are added here).
    pub async fn open(
        connector: &UpstreamConnector,
        uri: &Uri,
        headers: HeaderMap,
        config: &SocketConfig,
    ) -> Result<UpstreamSocket, OpenError> {
        match tokio::time::timeout(config.handshake_timeout, handshake(connector, uri, headers))
            .await
        {
            Ok(Ok((upgraded, handshake))) => {
                let ws_config = WebSocketConfig::default()
                    .max_message_size(Some(config.max_message))
                    .max_frame_size(Some(config.max_message));
                let stream = WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    Role::Client,
                    Some(ws_config),
                )
                .await;
                let now = Instant::now();
                Ok(UpstreamSocket {
                    stream,
                    handshake,
                    opened: now,
                    config: config.clone(),
                    heard: now,
                    evented: now,
                    ping_sent: None,
                })
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(OpenError::Transport(format!(
                "no upgrade answer within {:?}",
                config.handshake_timeout
            ))),
        }
    }

    /// The `101` answer's headers (rate-limit windows, `x-codex-turn-state`, ...).
    pub fn handshake_headers(&self) -> &HeaderMap {
        &self.handshake
    }

    /// How long the socket has been open.
    pub fn age(&self) -> Duration {
        self.opened.elapsed()
    }

    /// Sends one text frame. A socket the upstream closed while it idled between turns (its
    /// close frame or end already here) is found before the write: the frame was never sent
    /// ([`SocketEnd::SendUnsent`]).
    pub async fn send(&mut self, text: String) -> Result<(), SocketError> {
        self.drain_idle()?;
        self.evented = Instant::now();
        match self.stream.send(Message::text(text)).await {
            Ok(()) => Ok(()),
            // Closed before this frame was written: the upstream never had it.
            Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => Err(SocketError::new(
                SocketEnd::SendUnsent,
                "the socket was closed before the frame was written",
            )),
            Err(e) => Err(SocketError::new(SocketEnd::SendAmbiguous, e.to_string())),
        }
    }

    /// The next event, answering pings on the way and sending its own when the upstream is
    /// quiet (see [`SocketConfig`]).
    pub async fn next_event(&mut self) -> Result<UpstreamEvent, SocketError> {
        loop {
            let deadline = match self.ping_sent {
                Some(sent) => sent + self.config.pong_timeout,
                None => self.heard + self.config.ping_interval,
            }
            .min(self.evented + self.config.idle_timeout);
            let msg = tokio::select! {
                msg = self.stream.next() => msg,
                _ = tokio::time::sleep_until(deadline.into()) => {
                    self.on_quiet().await?;
                    continue;
                }
            };
            self.heard = Instant::now();
            self.ping_sent = None;
            match msg {
                Some(Ok(Message::Text(text))) => {
                    self.evented = self.heard;
                    let text = text.as_str().to_owned();
                    let value = serde_json::from_str(&text).unwrap_or(Value::Null);
                    return Ok(UpstreamEvent { text, value });
                }
                Some(Ok(Message::Binary(_))) => {
                    return Err(SocketError::new(
                        SocketEnd::Lost,
                        "the upstream sent a binary frame",
                    ));
                }
                Some(Ok(Message::Close(frame))) => {
                    let code = frame.as_ref().map(|f| u16::from(f.code));
                    let end = match frame.as_ref().map(|f| f.code) {
                        Some(CloseCode::Normal) => SocketEnd::CleanClose,
                        Some(CloseCode::Size) => SocketEnd::TooLarge,
                        _ => SocketEnd::Lost,
                    };
                    let reason = frame.map(|f| f.reason.as_str().to_owned());
                    return Err(SocketError {
                        end,
                        close_code: code,
                        detail: format!(
                            "closed by the upstream ({}{})",
                            code.map_or("no code".into(), |c| c.to_string()),
                            reason
                                .filter(|r| !r.is_empty())
                                .map_or(String::new(), |r| format!(": {r}"))
                        ),
                    });
                }
                Some(Ok(_)) => {}
                Some(Err(WsError::Capacity(e))) => {
                    return Err(SocketError::new(SocketEnd::TooLarge, e.to_string()));
                }
                Some(Err(e)) => return Err(SocketError::new(SocketEnd::Lost, e.to_string())),
                None => {
                    return Err(SocketError::new(
                        SocketEnd::Lost,
                        "the connection ended without a close frame",
                    ));
                }
            }
        }
    }

    /// Reads what arrived while nobody was reading (between turns), without waiting: pings are
    /// answered by the next write, a close or an end means the socket is gone.
    fn drain_idle(&mut self) -> Result<(), SocketError> {
        use futures_util::FutureExt;
        let gone = |detail: String| Err(SocketError::new(SocketEnd::SendUnsent, detail));
        // Bounded: a socket has only so much buffered, and each pass consumes a frame.
        for _ in 0..64 {
            match self.stream.next().now_or_never() {
                None => return Ok(()),
                Some(Some(Ok(Message::Close(frame)))) => {
                    let code = frame.map_or(1005, |f| u16::from(f.code));
                    return gone(format!("the upstream closed the idle socket ({code})"));
                }
                Some(Some(Ok(Message::Text(t)))) => {
                    tracing::debug!(bytes = t.len(), "upstream event between turns, dropped");
                }
                Some(Some(Ok(_))) => {}
                Some(Some(Err(e))) => return gone(format!("the idle socket broke: {e}")),
                Some(None) => return gone("the idle socket ended".into()),
            }
        }
        Ok(())
    }

    /// A deadline passed with nothing heard: ping, or give up.
    async fn on_quiet(&mut self) -> Result<(), SocketError> {
        let now = Instant::now();
        if now >= self.evented + self.config.idle_timeout {
            return Err(SocketError::new(
                SocketEnd::Unresponsive,
                format!("no event for {:?}", self.config.idle_timeout),
            ));
        }
        if self.ping_sent.is_some() {
            return Err(SocketError::new(
                SocketEnd::Unresponsive,
                format!("no pong within {:?}", self.config.pong_timeout),
            ));
        }
        self.ping_sent = Some(now);
        match self.stream.send(Message::Ping(Bytes::new())).await {
            Ok(()) => Ok(()),
            Err(e) => Err(SocketError::new(SocketEnd::Lost, e.to_string())),
        }
    }

    /// Closes the socket with `1000` (bounded: a peer that never answers the close is dropped).
    pub async fn close(&mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(1), self.stream.close(None)).await;
    }
}

async fn handshake(
    connector: &UpstreamConnector,
    uri: &Uri,
    mut headers: HeaderMap,
) -> Result<(Upgraded, HeaderMap), OpenError> {
    let transport = |e: &dyn fmt::Display| OpenError::Transport(e.to_string());
    let io = connector
        .clone()
        .oneshot(uri.clone())
        .await
        .map_err(|e| transport(&e))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(io)
        .await
        .map_err(|e| transport(&e))?;
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    let key = generate_key();
    let host = uri.authority().map(|a| a.as_str()).unwrap_or_default();
    for (name, value) in [
        (header::HOST, host),
        (header::CONNECTION, "Upgrade"),
        (header::UPGRADE, "websocket"),
        (header::SEC_WEBSOCKET_VERSION, "13"),
        (header::SEC_WEBSOCKET_KEY, key.as_str()),
    ] {
        if let Ok(v) = HeaderValue::from_str(value) {
            headers.insert(name, v);
        }
    }
    // The upstream socket takes no request body or encoding of its own.
    headers.remove(header::CONTENT_LENGTH);
    headers.remove(header::CONTENT_TYPE);
    headers.remove(header::CONTENT_ENCODING);
    headers.remove(header::TRANSFER_ENCODING);
    headers.remove(header::SEC_WEBSOCKET_EXTENSIONS);
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let mut req = Request::get(path)
        .body(Empty::<Bytes>::new())
        .map_err(|e| transport(&e))?;
    *req.headers_mut() = headers;
    let res = sender.send_request(req).await.map_err(|e| transport(&e))?;
    if res.status() != StatusCode::SWITCHING_PROTOCOLS {
        let (parts, body) = res.into_parts();
        let body = match Limited::new(body, REFUSAL_PEEK).collect().await {
            Ok(c) => c.to_bytes(),
            Err(_) => Bytes::new(),
        };
        let failure = Failure::from_http(parts.status, &parts.headers, &body);
        return Err(OpenError::Refused {
            status: parts.status,
            headers: parts.headers,
            body,
            failure,
        });
    }
    let accept = res
        .headers()
        .get(header::SEC_WEBSOCKET_ACCEPT)
        .map(|v| v.as_bytes());
    if accept != Some(derive_accept_key(key.as_bytes()).as_bytes()) {
        return Err(OpenError::Transport(
            "the 101 answer's Sec-WebSocket-Accept does not match".into(),
        ));
    }
    let headers = res.headers().clone();
    let upgraded = hyper::upgrade::on(res).await.map_err(|e| transport(&e))?;
    Ok((upgraded, headers))
}
