//! The mock upstream's Responses WebSocket: the Codex backend's native transport.
//!
//! A `GET /responses` (or `/v1/responses`) with `Upgrade: websocket` on the same port as the
//! HTTP mock is answered `101` and served as the real upstream does: JSON text frames, one
//! `{"type":"response.create", ...}` at a time, answered with the same events the HTTP mock
//! streams, one per text frame. Each `response.create` takes the next scripted [`WsReply`]
//! (per credential first, then the shared queue, then the default, [`WsReply::auto`]), so a
//! test scripts turns, soft failures (error frames before any output), cut sockets, clean
//! closes and the 60-minute close the way it scripts HTTP answers.
//!
//! What the real upstream keeps per socket, the mock keeps too: the id of the last response
//! the socket completed (its connection-local store). A `previous_response_id` a socket does
//! not know, one made on another socket included, gets `previous_response_not_found`; an
//! error evicts the id. `generate: false` (a prewarm) completes a response with no output
//! whose id later turns chain from. Upgrades without a bearer token get `401`. Every socket is
//! recorded ([`RecordedSocket`]): its handshake headers, credential and every text frame it
//! received, in order.
//!
//! ```
//! use futures_util::{SinkExt, StreamExt};
//! use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest};
//! use tower_responses::testing::{MockUpstream, WsReply};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let mock = MockUpstream::start().await.unwrap();
//! mock.push_ws(WsReply::text("over the socket"));
//!
//! let tcp = tokio::net::TcpStream::connect(mock.addr()).await.unwrap();
//! let mut req = format!("ws://{}/v1/responses", mock.addr()).into_client_request().unwrap();
//! req.headers_mut().insert("authorization", "Bearer sk-test".parse().unwrap());
//! let (mut ws, _) = tokio_tungstenite::client_async(req, tcp).await.unwrap();
//! ws.send(Message::text(r#"{"type":"response.create","model":"gpt-5","input":"hi"}"#))
//!     .await
//!     .unwrap();
//! let mut kinds = Vec::new();
//! while let Some(Ok(Message::Text(t))) = ws.next().await {
//!     let ev: serde_json::Value = serde_json::from_str(t.as_str()).unwrap();
//!     kinds.push(ev["type"].as_str().unwrap().to_owned());
//!     if ev["type"] == "response.completed" {
//!         assert!(t.as_str().contains("over the socket"));
//!         break;
//!     }
//! }
//! assert_eq!(kinds[0], "response.created");
//!
//! let sockets = mock.ws_sockets();
//! assert_eq!(sockets[0].credential.as_deref(), Some("sk-test"));
//! assert_eq!(sockets[0].creates()[0]["input"], "hi");
//! mock.shutdown().await;
//! # }
//! ```

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use super::record::bearer;
use super::server::{ConnState, MockUpstream, lock, stopped};
use super::stream::MockBody;
use super::{RecordedRequest, auto, events};
use crate::error::ApiError;

/// The largest message the mock reads, like the upstream's observed frame budget (16 MiB):
/// a bigger one closes the socket with `1009`.
pub const WS_MAX_MESSAGE: usize = 16 * 1024 * 1024;

/// The message of the upstream's 60-minute close, as the Codex backend words it.
pub const CONNECTION_LIMIT_MESSAGE: &str = "Responses websocket connection limit reached (60 minutes). Create a new websocket connection to continue.";

#[derive(Debug, Clone)]
enum Action {
    Auto,
    Text(String),
    Events(Vec<Value>),
    Error(Value),
    CutBefore,
    CutAfter(usize),
    CleanClose,
    ConnectionLimit,
    Unresponsive,
}

/// One scripted answer to a `response.create` on the mock's WebSocket.
///
/// ```
/// use std::time::Duration;
/// use tower_responses::testing::WsReply;
///
/// let _paced = WsReply::text("hello").paced(Duration::from_millis(5));
/// let _quota = WsReply::usage_limit_reached(3600);
/// let _cut = WsReply::cut_after(3);
/// ```
#[derive(Debug, Clone)]
pub struct WsReply {
    action: Action,
    gap: Option<Duration>,
}

impl WsReply {
    fn new(action: Action) -> WsReply {
        WsReply { action, gap: None }
    }

    /// A text answer quoting the request's last user message, with a fresh response id
    /// (`generate: false` gets an empty completed response). The mock's initial default.
    pub fn auto() -> WsReply {
        WsReply::new(Action::Auto)
    }

    /// A streamed text answer carrying `text`: the events of [`Reply::text`](super::Reply::text),
    /// one per text frame.
    pub fn text(text: &str) -> WsReply {
        WsReply::new(Action::Text(text.to_owned()))
    }

    /// Exactly these events, one per text frame (see [`events`] for builders). A
    /// `response.completed` among them stores its response id on the socket.
    pub fn events(events: Vec<Value>) -> WsReply {
        WsReply::new(Action::Events(events))
    }

    /// One error frame before any output, then the socket stays open:
    /// `{"type":"error","status":<status>,"error":<error>}`.
    pub fn error_frame(status: StatusCode, error: Value) -> WsReply {
        WsReply::new(Action::Error(json!({
            "type": "error",
            "status": status.as_u16(),
            "error": error,
        })))
    }

    /// The Codex backend's quota error frame: `429 usage_limit_reached` with
    /// `resets_in_seconds`.
    pub fn usage_limit_reached(resets_in_seconds: u64) -> WsReply {
        WsReply::error_frame(
            StatusCode::TOO_MANY_REQUESTS,
            json!({
                "type": "usage_limit_reached",
                "code": "usage_limit_reached",
                "message": "The usage limit has been reached",
                "plan_type": "pro",
                "resets_in_seconds": resets_in_seconds,
            }),
        )
    }

    /// The platform's quota error frame: `429 insufficient_quota`.
    pub fn quota() -> WsReply {
        WsReply::error_frame(
            StatusCode::TOO_MANY_REQUESTS,
            json!({
                "type": "insufficient_quota",
                "code": "insufficient_quota",
                "message": "You exceeded your current quota, please check your plan and billing details.",
            }),
        )
    }

    /// A rate-limit error frame: `429 rate_limit_exceeded`, "Please try again in Ns".
    pub fn rate_limited(retry_after_secs: u64) -> WsReply {
        WsReply::error_frame(
            StatusCode::TOO_MANY_REQUESTS,
            json!({
                "type": "requests",
                "code": "rate_limit_exceeded",
                "message": format!("Rate limit reached. Please try again in {retry_after_secs}s."),
            }),
        )
    }

    /// Reads the `response.create`, then drops the TCP connection without a close frame and
    /// before any event (a lost socket).
    pub fn cut_before_output() -> WsReply {
        WsReply::new(Action::CutBefore)
    }

    /// Sends the first `events` events of the auto answer, then drops the TCP connection
    /// without a close frame.
    pub fn cut_after(events: usize) -> WsReply {
        WsReply::new(Action::CutAfter(events))
    }

    /// Closes the socket cleanly (`1000`) before any event: what the Codex backend does with
    /// some inputs it refuses.
    pub fn clean_close() -> WsReply {
        WsReply::new(Action::CleanClose)
    }

    /// The 60-minute close: a `websocket_connection_limit_reached` error frame, then a close.
    pub fn connection_limit() -> WsReply {
        WsReply::new(Action::ConnectionLimit)
    }

    /// Never answers and stops reading the socket, pings included (no pong comes back), until
    /// the client goes away or the mock stops: an upstream that went silent mid-turn.
    pub fn unresponsive() -> WsReply {
        WsReply::new(Action::Unresponsive)
    }

    /// Waits `gap` between event frames.
    pub fn paced(mut self, gap: Duration) -> WsReply {
        self.gap = Some(gap);
        self
    }
}

/// One WebSocket the mock accepted (or refused), as recorded.
#[derive(Debug, Clone)]
pub struct RecordedSocket {
    /// 0 for the first upgrade request the mock saw, then 1, 2, ...
    pub id: u64,
    /// The bearer token of the upgrade request.
    pub credential: Option<String>,
    /// The `ChatGPT-Account-ID` header of the upgrade request.
    pub account_id: Option<String>,
    /// The upgrade request's path (`/v1/responses`, `/responses`).
    pub path: String,
    /// The upgrade request's headers.
    pub headers: HeaderMap,
    /// The upgrade was answered `101` (else it was refused with an HTTP error).
    pub accepted: bool,
    /// Every text frame received, in order.
    pub frames: Vec<String>,
    /// How many binary frames were received (each answered with an error frame).
    pub binary_frames: usize,
    /// The socket is still open.
    pub open: bool,
}

impl RecordedSocket {
    /// The received text frames that parse as JSON objects.
    pub fn json_frames(&self) -> Vec<Value> {
        self.frames
            .iter()
            .filter_map(|f| serde_json::from_str::<Value>(f).ok())
            .filter(Value::is_object)
            .collect()
    }

    /// The `response.create` frames received, in order.
    pub fn creates(&self) -> Vec<Value> {
        self.json_frames()
            .into_iter()
            .filter(|f| f["type"] == "response.create")
            .collect()
    }
}

struct SocketLog {
    id: u64,
    credential: Option<String>,
    account_id: Option<String>,
    path: String,
    headers: HeaderMap,
    accepted: bool,
    frames: Mutex<Vec<String>>,
    binary: AtomicUsize,
    open: AtomicBool,
}

impl SocketLog {
    fn snapshot(&self) -> RecordedSocket {
        RecordedSocket {
            id: self.id,
            credential: self.credential.clone(),
            account_id: self.account_id.clone(),
            path: self.path.clone(),
            headers: self.headers.clone(),
            accepted: self.accepted,
            frames: lock(&self.frames).clone(),
            binary_frames: self.binary.load(Ordering::Relaxed),
            open: self.open.load(Ordering::Relaxed),
        }
    }
}

/// Marks a socket closed when its task ends, however it ends.
struct OpenGuard(Arc<SocketLog>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.store(false, Ordering::Relaxed);
    }
}

struct WsScript {
    queue: VecDeque<WsReply>,
    per_credential: HashMap<String, VecDeque<WsReply>>,
    default: WsReply,
    refusals: VecDeque<(StatusCode, Value)>,
    enabled: bool,
    max_age: Option<Duration>,
    handshake_headers: Vec<(http::HeaderName, HeaderValue)>,
}

/// The WebSocket side of the mock's shared state.
pub(crate) struct WsShared {
    script: Mutex<WsScript>,
    sockets: Mutex<Vec<Arc<SocketLog>>>,
    next_id: AtomicU64,
    stop: watch::Sender<bool>,
    kick: watch::Sender<Kick>,
}

/// What [`MockUpstream::close_ws_sockets`] and [`MockUpstream::cut_ws_sockets`] do to the
/// sockets waiting between turns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kick {
    None,
    Close,
    Cut,
}

impl Default for WsShared {
    fn default() -> Self {
        WsShared {
            script: Mutex::new(WsScript {
                queue: VecDeque::new(),
                per_credential: HashMap::new(),
                default: WsReply::auto(),
                refusals: VecDeque::new(),
                enabled: true,
                max_age: None,
                handshake_headers: Vec::new(),
            }),
            sockets: Mutex::new(Vec::new()),
            next_id: AtomicU64::new(0),
            stop: watch::channel(false).0,
            kick: watch::channel(Kick::None).0,
        }
    }
}

impl WsShared {
    /// Ends every socket (they drop without a close frame, as the HTTP connections do).
    pub(crate) fn shutdown(&self) {
        self.stop.send_replace(true);
    }

    fn next_reply(&self, credential: Option<&str>) -> WsReply {
        let mut script = lock(&self.script);
        let scripted = credential
            .and_then(|c| script.per_credential.get_mut(c))
            .and_then(VecDeque::pop_front);
        scripted
            .or_else(|| script.queue.pop_front())
            .unwrap_or_else(|| script.default.clone())
    }
}

/// WebSocket scripting and records (feature `websocket`): [`WsReply`] scripts a turn,
/// [`RecordedSocket`] is what a socket received.
impl MockUpstream {
    fn ws(&self) -> &WsShared {
        &self.shared().ws
    }

    /// Queues an answer for the next `response.create` on any socket, whatever its credential.
    pub fn push_ws(&self, reply: WsReply) {
        lock(&self.ws().script).queue.push_back(reply);
    }

    /// Queues an answer for the next `response.create` on a socket opened with this bearer
    /// token; consulted before the shared queue.
    pub fn push_ws_for(&self, credential: &str, reply: WsReply) {
        lock(&self.ws().script)
            .per_credential
            .entry(credential.to_owned())
            .or_default()
            .push_back(reply);
    }

    /// The answer for `response.create` frames no script matches (initially
    /// [`WsReply::auto`]).
    pub fn set_ws_default(&self, reply: WsReply) {
        lock(&self.ws().script).default = reply;
    }

    /// Refuses the next upgrade request with this HTTP status and JSON body instead of `101`
    /// (a quota `429`, a `401`), recorded with `accepted: false`.
    pub fn refuse_next_ws(&self, status: StatusCode, body: Value) {
        lock(&self.ws().script).refusals.push_back((status, body));
    }

    /// `false`: answer every upgrade `426 Upgrade Required`, like an upstream that speaks only
    /// HTTP (the Codex CLI then stays on HTTP for the session).
    pub fn set_ws_enabled(&self, enabled: bool) {
        lock(&self.ws().script).enabled = enabled;
    }

    /// Sockets older than `age` answer their next `response.create` with the 60-minute close
    /// ([`WsReply::connection_limit`]), as the upstream does after an hour.
    pub fn set_ws_max_age(&self, age: Duration) {
        lock(&self.ws().script).max_age = Some(age);
    }

    /// Adds a header to every `101` answer (rate-limit headers such as
    /// `x-codex-primary-used-percent`, `x-codex-turn-state`).
    ///
    /// # Panics
    /// When `name` or `value` is not a valid header name or value.
    pub fn set_ws_handshake_header(&self, name: &str, value: &str) {
        let name = http::HeaderName::from_bytes(name.as_bytes()).expect("invalid header name");
        let value = HeaderValue::from_str(value).expect("invalid header value");
        lock(&self.ws().script)
            .handshake_headers
            .push((name, value));
    }

    /// Closes every open socket that is waiting between turns with a clean `1000` close, as
    /// an upstream does with sockets it let idle too long.
    pub fn close_ws_sockets(&self) {
        self.ws().kick.send_replace(Kick::Close);
    }

    /// Drops the connection of every open socket that is waiting between turns, without a
    /// close frame (a load balancer that forgot them).
    pub fn cut_ws_sockets(&self) {
        self.ws().kick.send_replace(Kick::Cut);
    }

    /// Every upgrade request so far, accepted or refused, in arrival order.
    pub fn ws_sockets(&self) -> Vec<RecordedSocket> {
        lock(&self.ws().sockets)
            .iter()
            .map(|s| s.snapshot())
            .collect()
    }

    /// How many accepted sockets are still open.
    pub fn ws_open(&self) -> usize {
        lock(&self.ws().sockets)
            .iter()
            .filter(|s| s.open.load(Ordering::Relaxed))
            .count()
    }
}

/// Whether a request asks for the WebSocket on the responses route.
pub(crate) fn is_upgrade<B>(req: &Request<B>) -> bool {
    let path = req.uri().path();
    let route = path.strip_prefix("/v1").unwrap_or(path);
    req.method() == Method::GET
        && matches!(route, "/responses" | "/responses/")
        && req
            .headers()
            .get(header::UPGRADE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// Answers an upgrade request: `101` and a socket task, or an HTTP refusal.
pub(crate) fn answer(
    ws: &Arc<WsShared>,
    conn: &Arc<ConnState>,
    mut req: Request<Incoming>,
) -> Response<MockBody> {
    let headers = req.headers().clone();
    let credential = bearer(&headers);
    let (refusal, enabled, extra) = {
        let mut script = lock(&ws.script);
        (
            script.refusals.pop_front(),
            script.enabled,
            script.handshake_headers.clone(),
        )
    };
    let key = headers
        .get("sec-websocket-key")
        .map(|k| derive_accept_key(k.as_bytes()));
    let refused = if !enabled {
        Some(ApiError::new(
            StatusCode::UPGRADE_REQUIRED,
            "invalid_request_error",
            "This upstream does not speak WebSocket; use HTTP.",
        ))
    } else if key.is_none() {
        Some(ApiError::invalid_request(
            "A WebSocket upgrade needs Sec-WebSocket-Key.",
        ))
    } else if credential.is_none() {
        Some(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            "Missing bearer authentication in header",
        ))
    } else {
        None
    };
    let log = Arc::new(SocketLog {
        id: ws.next_id.fetch_add(1, Ordering::Relaxed),
        credential: credential.clone(),
        account_id: headers
            .get("chatgpt-account-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        path: req.uri().path().to_owned(),
        headers,
        accepted: refused.is_none() && refusal.is_none(),
        frames: Mutex::new(Vec::new()),
        binary: AtomicUsize::new(0),
        open: AtomicBool::new(false),
    });
    lock(&ws.sockets).push(log.clone());
    let json = |status: StatusCode, body: Bytes| {
        let mut res = Response::new(MockBody::full(body, conn.clone()));
        *res.status_mut() = status;
        res.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        res
    };
    if let Some(err) = refused {
        return json(err.status, err.to_json());
    }
    if let Some((status, body)) = refusal {
        return json(status, Bytes::from(body.to_string()));
    }
    let on_upgrade = hyper::upgrade::on(&mut req);
    log.open.store(true, Ordering::Relaxed);
    let task = Socket {
        ws: ws.clone(),
        log: log.clone(),
        opened: Instant::now(),
        last_response: None,
    };
    let mut stop = ws.stop.subscribe();
    let kick = ws.kick.subscribe();
    tokio::spawn(async move {
        let guard = OpenGuard(log);
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let config = WebSocketConfig::default()
            .max_message_size(Some(WS_MAX_MESSAGE))
            .max_frame_size(Some(WS_MAX_MESSAGE));
        let stream =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config))
                .await;
        tokio::select! {
            _ = task.serve(stream, kick) => {}
            _ = stopped(&mut stop) => {}
        }
        drop(guard);
    });
    let mut res = Response::new(MockBody::full(Bytes::new(), conn.clone()));
    *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = res.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    if let Some(Ok(accept)) = key.map(|k| HeaderValue::from_str(&k)) {
        h.insert("sec-websocket-accept", accept);
    }
    if let Ok(id) = HeaderValue::from_str(&auto::request_id()) {
        h.insert("x-request-id", id);
    }
    for (name, value) in extra {
        h.insert(name, value);
    }
    res
}

type Stream = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// What the socket does after a frame.
enum Flow {
    Continue,
    /// Close with this frame (`None`: drop the connection without one).
    End(Option<CloseFrame>),
    /// Stop reading and answering; keep the connection open.
    Hang,
}

struct Socket {
    ws: Arc<WsShared>,
    log: Arc<SocketLog>,
    opened: Instant,
    /// The connection-local store: the last response this socket completed.
    last_response: Option<String>,
}

impl Socket {
    async fn serve(mut self, mut stream: Stream, mut kick: watch::Receiver<Kick>) {
        loop {
            let msg = tokio::select! {
                msg = stream.next() => msg,
                changed = kick.changed() => {
                    let kind = *kick.borrow_and_update();
                    match (changed, kind) {
                        (Ok(()), Kick::Close) => {
                            let _ = stream.close(Some(normal_close(""))).await;
                            return;
                        }
                        (Ok(()), Kick::Cut) => return,
                        // The mock is going away; its stop ends this task.
                        _ => std::future::pending().await,
                    }
                }
            };
            let Some(msg) = msg else { return };
            let flow = match msg {
                Ok(Message::Text(text)) => {
                    lock(&self.log.frames).push(text.as_str().to_owned());
                    self.on_text(&mut stream, text).await
                }
                Ok(Message::Binary(_)) => {
                    self.log.binary.fetch_add(1, Ordering::Relaxed);
                    let err = error_frame(
                        StatusCode::BAD_REQUEST,
                        "invalid_request_error",
                        "unsupported_frame",
                        "Binary frames are not supported; send JSON text frames.",
                    );
                    send(&mut stream, &err).await
                }
                Ok(Message::Close(_)) => Flow::End(None),
                // Pings are answered by tungstenite itself on the next read or write.
                Ok(_) => Flow::Continue,
                Err(_) => Flow::End(None),
            };
            match flow {
                Flow::Continue => {}
                Flow::End(Some(frame)) => {
                    let _ = stream.close(Some(frame)).await;
                    return;
                }
                Flow::End(None) => return,
                Flow::Hang => return std::future::pending().await,
            }
        }
    }

    async fn on_text(&mut self, stream: &mut Stream, text: Utf8Bytes) -> Flow {
        let Ok(frame) = serde_json::from_str::<Value>(text.as_str()) else {
            let err = error_frame(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "invalid_json",
                "We could not parse the JSON body of your request.",
            );
            return send(stream, &err).await;
        };
        match frame.get("type").and_then(Value::as_str) {
            Some("response.create") => self.on_create(stream, frame, text).await,
            // The client's acknowledgement; no answer is expected.
            Some("response.processed") => Flow::Continue,
            other => {
                let err = error_frame(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    "unknown_event_type",
                    &format!("Unknown event type {other:?}."),
                );
                send(stream, &err).await
            }
        }
    }

    async fn on_create(&mut self, stream: &mut Stream, frame: Value, text: Utf8Bytes) -> Flow {
        let max_age = lock(&self.ws.script).max_age;
        if max_age.is_some_and(|age| self.opened.elapsed() >= age) {
            return connection_limit(stream).await;
        }
        if let Some(prev) = frame.get("previous_response_id").and_then(Value::as_str) {
            if self.last_response.as_deref() != Some(prev) {
                self.last_response = None;
                let err = json!({
                    "type": "error",
                    "status": 400,
                    "error": {
                        "type": "invalid_request_error",
                        "code": "previous_response_not_found",
                        "message": format!("Previous response with id '{prev}' not found."),
                        "param": "previous_response_id",
                    },
                });
                return send(stream, &err).await;
            }
        }
        let reply = self.ws.next_reply(self.log.credential.as_deref());
        let req = as_request(&self.log, text);
        let prewarm = frame.get("generate").and_then(Value::as_bool) == Some(false);
        let (evs, cut) = match reply.action {
            Action::Auto if prewarm => (prewarm_events(), None),
            Action::Auto => (auto::answer_events(&req), None),
            Action::Text(t) => (auto::text_events(&req, &t), None),
            Action::Events(evs) => (evs, None),
            Action::CutAfter(n) => (auto::answer_events(&req), Some(n)),
            Action::Error(err) => {
                self.last_response = None;
                return send(stream, &err).await;
            }
            Action::CutBefore => return Flow::End(None),
            Action::CleanClose => return Flow::End(Some(normal_close(""))),
            Action::ConnectionLimit => return connection_limit(stream).await,
            Action::Unresponsive => return Flow::Hang,
        };
        for (i, ev) in evs.iter().enumerate() {
            if cut == Some(i) {
                return Flow::End(None);
            }
            if i > 0 {
                if let Some(gap) = reply.gap {
                    tokio::time::sleep(gap).await;
                }
            }
            if let Flow::End(f) = send(stream, ev).await {
                return Flow::End(f);
            }
            match ev.get("type").and_then(Value::as_str) {
                Some("response.completed") => {
                    self.last_response = ev["response"]["id"].as_str().map(str::to_owned);
                }
                Some("response.failed" | "error") => self.last_response = None,
                _ => {}
            }
        }
        if cut.is_some_and(|n| n >= evs.len()) {
            return Flow::End(None);
        }
        Flow::Continue
    }
}

/// The frame as the HTTP mock's auto answers expect a request.
fn as_request(log: &SocketLog, text: Utf8Bytes) -> RecordedRequest {
    RecordedRequest {
        conn_id: log.id,
        conn_request_index: 0,
        credential: log.credential.clone(),
        account_id: log.account_id.clone(),
        method: Method::POST,
        path: "/v1/responses".into(),
        headers: HeaderMap::new(),
        body: Bytes::from(text),
        idle_before: None,
    }
}

/// A prewarm's answer: a response with no output, completed at once.
fn prewarm_events() -> Vec<Value> {
    let (id, _) = events::next_ids();
    vec![
        events::created(&id),
        events::completed(&id, vec![], events::usage(0, 0)),
    ]
}

fn error_frame(status: StatusCode, kind: &str, code: &str, message: &str) -> Value {
    json!({
        "type": "error",
        "status": status.as_u16(),
        "error": {"type": kind, "code": code, "message": message},
    })
}

async fn connection_limit(stream: &mut Stream) -> Flow {
    let err = error_frame(
        StatusCode::BAD_REQUEST,
        "invalid_request_error",
        "websocket_connection_limit_reached",
        CONNECTION_LIMIT_MESSAGE,
    );
    if let Flow::End(f) = send(stream, &err).await {
        return Flow::End(f);
    }
    Flow::End(Some(normal_close("connection limit reached")))
}

fn normal_close(reason: &'static str) -> CloseFrame {
    CloseFrame {
        code: CloseCode::Normal,
        reason: Utf8Bytes::from_static(reason),
    }
}

async fn send(stream: &mut Stream, ev: &Value) -> Flow {
    match stream.send(Message::text(ev.to_string())).await {
        Ok(()) => Flow::Continue,
        Err(_) => Flow::End(None),
    }
}
