//! The socket carrier: one upstream WebSocket per client socket, with the credential the
//! pool picks, and every guarantee the HTTP path has.
//!
//! Each client socket gets a [`SocketCarrier`]. Its upstream socket lives across turns, so
//! while the socket and its account stay the same the client's incremental frame
//! (`previous_response_id` plus new items) goes up as it came; on a fresh socket (the first
//! turn, another account, a lost or aged-out socket) the turn goes up as the full request
//! ([`Turn::full`] plus the WebSocket-only fields), since a new socket knows no response id.
//!
//! A turn that fails before the client saw output is carried again, invisibly:
//! - an error frame (quota, rate limit, `usage_limit_reached`, auth) is classified and handed
//!   to [`policy::decide`] like an HTTP answer: the credential cools as it says, and the full
//!   request goes to another credential on a fresh socket when it says so;
//! - a socket that ended (lost, closed cleanly before any event, the 60-minute
//!   `websocket_connection_limit_reached`) is decided by [`policy::after_socket_end`]: a fresh
//!   socket on the same credential takes the full request, nothing cools;
//! - a silent upstream after the send (no pong, no event) is delivery-ambiguous: never sent
//!   again.
//!
//! Lifecycle events (`response.created`, `response.in_progress`, `codex.rate_limits`) are held
//! back until the first content event, so a turn retried elsewhere shows the client one clean
//! response. When a turn cannot be carried again, the client gets a 5xx error frame, on which
//! the Codex CLI resends its full history: never a reason to drop context.
//!
//! The handshake's rate-limit headers and `codex.rate_limits` events feed the pool's usage
//! windows as HTTP replies do; a session's turns keep to its credential (session affinity).
//!
//! Between turns nobody reads the upstream socket: a close or an end the upstream sent
//! meanwhile is found before the next frame is written, and that frame goes, full, to a fresh
//! socket (it was never sent). Encrypted reasoning items go only to the account that made
//! them: a turn moved to another account goes without them.
//!
//! ```
//! use std::sync::Arc;
//! use futures_util::StreamExt;
//! use serde_json::json;
//! use tower_responses::connect::UpstreamClientBuilder;
//! use tower_responses::credentials::{Pool, PoolMember};
//! use tower_responses::testing::{MockUpstream, WsReply};
//! use tower_responses::websocket::{Carrier, Delivery, SocketCarrier, Turn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let mock = MockUpstream::start().await.unwrap();
//! // The first account is out of quota; the second answers.
//! mock.push_ws_for("sk-one-aaaaaaaaaaaaaaaa", WsReply::usage_limit_reached(3600));
//! let pool = Arc::new(Pool::new(vec![
//!     PoolMember::new("sk-one-aaaaaaaaaaaaaaaa".parse().unwrap()),
//!     PoolMember::new("sk-two-bbbbbbbbbbbbbbbb".parse().unwrap()),
//! ]).unwrap());
//! let connector = UpstreamClientBuilder::new().connector();
//! let mut carrier = SocketCarrier::new(pool, connector, &mock.base_url()).unwrap();
//!
//! let body = json!({"model": "gpt-5", "input": [{"role": "user", "content": "hi"}], "stream": true});
//! let mut frame = body.clone();
//! frame["type"] = json!("response.create");
//! let turn = Turn { frame, full: body, headers: http::HeaderMap::new() };
//! let events: Vec<Delivery> = carrier.send(turn).await.unwrap().collect().await;
//! let Delivery::Event(last) = events.last().unwrap() else { panic!("{events:?}") };
//! assert!(last.contains("response.completed"));
//! // The client saw one response: the quota frame never reached it.
//! assert!(events.iter().all(|d| !matches!(d, Delivery::Event(t) if t.contains("usage_limit"))));
//! assert_eq!(mock.ws_sockets().len(), 2);
//! # }
//! ```

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use futures_util::Stream;
use futures_util::future::BoxFuture;
use http::{HeaderMap, HeaderValue, Uri};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::carrier::{Carrier, Delivery, Events, Turn};
use super::upstream::{
    OpenError, RESPONSES_WEBSOCKETS_BETA, SocketConfig, SocketError, UpstreamEvent, UpstreamSocket,
    socket_uri,
};
use crate::classify::{Failure, FailureClass};
use crate::connect::UpstreamConnector;
use crate::credentials::policy::{self, Next, NoneUsable, SocketEnd, SocketNext};
use crate::credentials::usage::CredentialUsage;
use crate::credentials::{PickRequest, Pool};
use crate::error::{ApiError, ConfigError};
use crate::metrics::Metrics;

/// Lifecycle events held back before the first content event; past this many the turn counts
/// as visible (an upstream that never gets to content must not grow the buffer).
const MAX_HELD: usize = 32;

/// Events buffered between the upstream socket and the client socket.
const CHANNEL: usize = 64;

/// The error code of the upstream's 60-minute close.
const CONNECTION_LIMIT: &str = "websocket_connection_limit_reached";

/// Carries a client socket's turns over one upstream WebSocket. See the
/// [module docs](self).
pub struct SocketCarrier {
    shared: Arc<Shared>,
    /// The upstream socket between turns (a turn takes it and puts it back when it ends well).
    slot: Arc<Mutex<Option<Open>>>,
    /// The credential that served the last turn: encrypted reasoning items are its alone.
    last_served: Arc<Mutex<Option<Arc<str>>>>,
}

struct Shared {
    pool: Arc<Pool>,
    connector: UpstreamConnector,
    base: Arc<str>,
    uri: Uri,
    config: SocketConfig,
    metrics: Option<Metrics>,
    max_wait: Duration,
}

impl std::fmt::Debug for SocketCarrier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SocketCarrier")
            .field("upstream", &self.shared.uri)
            .finish_non_exhaustive()
    }
}

impl SocketCarrier {
    /// A carrier to `base_url`'s socket (`{base_url}/responses`, `http`/`ws`/`https`/`wss`),
    /// with credentials from `pool` (members with a `base_url` of their own use theirs).
    pub fn new(
        pool: Arc<Pool>,
        connector: UpstreamConnector,
        base_url: &str,
    ) -> Result<SocketCarrier, ConfigError> {
        let uri = socket_uri(base_url)
            .ok_or_else(|| ConfigError(format!("not an upstream base URL: {base_url:?}")))?;
        Ok(SocketCarrier {
            shared: Arc::new(Shared {
                pool,
                connector,
                base: Arc::from(base_url.trim_end_matches('/')),
                uri,
                config: SocketConfig::default(),
                metrics: None,
                max_wait: Duration::from_secs(2),
            }),
            slot: Arc::default(),
            last_served: Arc::default(),
        })
    }

    fn shared_mut(&mut self) -> &mut Shared {
        // Configured before the first turn, while no turn holds a clone.
        Arc::get_mut(&mut self.shared).expect("configure the carrier before its first turn")
    }

    /// The upstream socket's limits and clocks.
    ///
    /// # Panics
    /// When a turn is running (configure before the first turn).
    pub fn socket_config(mut self, config: SocketConfig) -> Self {
        self.shared_mut().config = config;
        self
    }

    /// Reports upstream sockets opened and closed, and replays, into `metrics`.
    ///
    /// # Panics
    /// When a turn is running (configure before the first turn).
    pub fn metrics(mut self, metrics: Metrics) -> Self {
        self.shared_mut().metrics = Some(metrics);
        self
    }

    /// When every credential is out and the first returns within this long, a turn waits for
    /// it (default 2 s, like HTTP rotation).
    ///
    /// # Panics
    /// When a turn is running (configure before the first turn).
    pub fn max_wait(mut self, wait: Duration) -> Self {
        self.shared_mut().max_wait = wait;
        self
    }

    /// The credential of the upstream socket kept between turns, if one is open.
    pub fn credential(&self) -> Option<Arc<str>> {
        lock(&self.slot).as_ref().map(|o| o.label.clone())
    }
}

impl Carrier for SocketCarrier {
    fn send(&mut self, turn: Turn) -> BoxFuture<'_, Result<Events, ApiError>> {
        let (tx, rx) = mpsc::channel(CHANNEL);
        let run = TurnRun {
            shared: self.shared.clone(),
            slot: self.slot.clone(),
            last_served: self.last_served.clone(),
            session: session_of(&turn.headers),
            turn,
            tx,
        };
        let task = tokio::spawn(run.run());
        Box::pin(async move { Ok(Box::pin(TurnEvents { rx, task }) as Events) })
    }

    fn takes_prewarm(&self) -> bool {
        true
    }
}

/// A turn's events; dropping it ends the turn and closes its upstream socket.
struct TurnEvents {
    rx: mpsc::Receiver<Delivery>,
    task: JoinHandle<()>,
}

impl Stream for TurnEvents {
    type Item = Delivery;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Delivery>> {
        self.rx.poll_recv(cx)
    }
}

impl Drop for TurnEvents {
    fn drop(&mut self) {
        // The client went away or the session moved on: the socket the task holds goes too.
        self.task.abort();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn session_of(headers: &HeaderMap) -> Option<String> {
    ["session_id", "session-id"]
        .iter()
        .find_map(|h| headers.get(*h).and_then(|v| v.to_str().ok()))
        .map(str::to_owned)
}

/// An open upstream socket and what it knows.
struct Open {
    socket: UpstreamSocket,
    label: Arc<str>,
    /// The connection-local store: the last response this socket completed.
    last_response: Option<String>,
    /// Its handshake headers were reported with a success already.
    reported: bool,
    metrics: Option<Metrics>,
    /// Why it is closing, for the metric; set before it is dropped.
    close_reason: &'static str,
}

impl Drop for Open {
    fn drop(&mut self) {
        tracing::debug!(
            credential = &*self.label,
            reason = self.close_reason,
            "upstream socket closed"
        );
        if let Some(m) = &self.metrics {
            m.inc(
                "tr_ws_upstream_sockets_closed_total",
                "Upstream WebSockets closed, by why (a socket end, replaced, cancelled, dropped).",
                &[("reason", self.close_reason)],
            );
            m.gauge_add(
                "tr_ws_upstream_sockets_open",
                "Upstream WebSockets open now.",
                &[],
                -1.0,
            );
        }
    }
}

/// What the turn does after an attempt.
enum Step {
    /// The turn is over (its last delivery was sent, or the client is gone).
    Done,
    /// Carry the full request again on a fresh socket.
    Again,
}

struct TurnRun {
    shared: Arc<Shared>,
    slot: Arc<Mutex<Option<Open>>>,
    last_served: Arc<Mutex<Option<Arc<str>>>>,
    session: Option<String>,
    turn: Turn,
    tx: mpsc::Sender<Delivery>,
}

/// What one turn has learned across its attempts.
#[derive(Default)]
struct Tries {
    /// Credentials that failed and must not be picked again for this turn.
    excluded: Vec<Arc<str>>,
    /// Reopen on this credential (the socket ended, not the account).
    prefer: Option<Arc<str>>,
    clean_closes: u32,
    auth_before: u32,
    /// The upstream answered `previous_response_not_found` to a chained frame already.
    anchor_lost: bool,
    /// The last upstream answer that stopped an attempt (an error frame), for when no
    /// credential is left.
    last_answer: Option<String>,
    /// What to tell the client when no attempt got an answer.
    last_error: Option<ApiError>,
    waited: Duration,
}

impl TurnRun {
    async fn run(mut self) {
        let mut tries = Tries::default();
        let max_attempts = self.shared.pool.len() + 3;
        for _ in 0..max_attempts {
            match self.attempt(&mut tries).await {
                Step::Done => return,
                Step::Again => {}
            }
        }
        self.give_up(tries).await;
    }

    async fn deliver(&self, d: Delivery) -> bool {
        self.tx.send(d).await.is_ok()
    }

    async fn give_up(&self, tries: Tries) {
        let d = match (tries.last_answer, tries.last_error) {
            (Some(frame), _) => Delivery::Event(frame),
            (None, Some(err)) => Delivery::Error(err),
            (None, None) => Delivery::Error(ApiError::upstream_unavailable(
                "no upstream socket could carry the request",
            )),
        };
        self.deliver(d).await;
    }

    fn count(&self, name: &'static str, help: &'static str, labels: &[(&str, &str)]) {
        if let Some(m) = &self.shared.metrics {
            m.inc(name, help, labels);
        }
    }

    fn count_replay(&self, reason: &str) {
        self.count(
            "tr_ws_upstream_replays_total",
            "WebSocket turns carried again as the full request on a fresh upstream socket, by why.",
            &[("reason", reason)],
        );
    }

    /// The socket kept from the last turn if it may serve this one, else a fresh one.
    async fn socket(&self, tries: &mut Tries) -> Result<Open, Step> {
        let kept = lock(&self.slot).take();
        if let Some(mut open) = kept {
            let out = self
                .shared
                .pool
                .cooldown_of(&open.label)
                .is_some_and(|c| c.excludes() && c.active(SystemTime::now()));
            let refused = tries.excluded.contains(&open.label)
                || tries.prefer.as_ref().is_some_and(|p| *p != open.label);
            if !out && !refused {
                return Ok(open);
            }
            open.close_reason = "replaced";
            open.socket.close().await;
        }
        loop {
            let Some(label) = self.pick(tries) else {
                if !tries.excluded.is_empty() {
                    self.give_up(std::mem::take(tries)).await;
                    return Err(Step::Done);
                }
                let left = self.shared.max_wait.saturating_sub(tries.waited);
                let cooling = self.shared.pool.active_cooldowns();
                match policy::when_none_usable(&cooling, SystemTime::now(), left) {
                    NoneUsable::Wait(d) => {
                        tokio::time::sleep(d).await;
                        tries.waited += d.max(Duration::from_millis(1));
                        continue;
                    }
                    NoneUsable::Refuse(err) => {
                        tracing::warn!(
                            status = err.status.as_u16(),
                            code = err.code.as_deref(),
                            "no credential can serve the WebSocket turn"
                        );
                        self.deliver(Delivery::Error(err)).await;
                        return Err(Step::Done);
                    }
                }
            };
            return self.open(label, tries).await;
        }
    }

    fn pick(&self, tries: &Tries) -> Option<Arc<str>> {
        let pool = &self.shared.pool;
        if let Some(p) = &tries.prefer {
            let out = pool
                .cooldown_of(p)
                .is_some_and(|c| c.excludes() && c.active(SystemTime::now()));
            if !out && pool.entry(p).is_some() {
                return Some(p.clone());
            }
        }
        pool.pick_for(&PickRequest {
            exclude: &tries.excluded,
            pinned: None,
            session: self.session.as_deref(),
            anchored: false,
        })
    }

    async fn open(&self, label: Arc<str>, tries: &mut Tries) -> Result<Open, Step> {
        let sh = &self.shared;
        let Some(entry) = sh.pool.entry(&label) else {
            tries.excluded.push(label);
            return Err(Step::Again);
        };
        let uri = match &entry.member.base_url {
            Some(base) if base.trim_end_matches('/') != &*sh.base => socket_uri(base),
            _ => None,
        }
        .unwrap_or_else(|| sh.uri.clone());
        let mut headers = self.turn.headers.clone();
        crate::upstream::strip_hop_by_hop(&mut headers);
        headers.remove(http::header::HOST);
        entry.credential().apply(&mut headers);
        if !headers.contains_key("openai-beta") {
            headers.insert(
                "openai-beta",
                HeaderValue::from_static(RESPONSES_WEBSOCKETS_BETA),
            );
        }
        let kind = entry.kind;
        sh.pool.record_use(&label);
        match UpstreamSocket::open(&sh.connector, &uri, headers, &sh.config).await {
            Ok(socket) => {
                tracing::debug!(credential = &*label, "upstream socket opened");
                if let Some(m) = &sh.metrics {
                    m.inc(
                        "tr_ws_upstream_sockets_opened_total",
                        "Upstream WebSockets opened, by credential.",
                        &[("credential", &label)],
                    );
                    m.gauge_add(
                        "tr_ws_upstream_sockets_open",
                        "Upstream WebSockets open now.",
                        &[],
                        1.0,
                    );
                }
                if let Some(usage) =
                    CredentialUsage::from_headers(socket.handshake_headers(), SystemTime::now())
                {
                    sh.pool.record_usage(&label, usage);
                }
                Ok(Open {
                    socket,
                    label,
                    last_response: None,
                    reported: false,
                    metrics: sh.metrics.clone(),
                    close_reason: "dropped",
                })
            }
            Err(err) if err.http_only() => {
                tracing::warn!(credential = &*label, error = %err, "upstream refused the WebSocket");
                let e = ApiError::upstream_unavailable(format!(
                    "the upstream does not take WebSocket connections ({err}); use HTTP"
                ))
                .with_code("upstream_websocket_unsupported");
                self.deliver(Delivery::Error(e)).await;
                Err(Step::Done)
            }
            Err(OpenError::Refused {
                status,
                body,
                failure: Some(failure),
                ..
            }) => {
                let frame = refusal_frame(status, &body);
                Err(self.failed(&label, kind, &failure, frame, tries).await)
            }
            Err(err) => {
                // Nothing reached the upstream's model: safe to try elsewhere.
                tracing::info!(credential = &*label, error = %err, "upstream socket not opened");
                tries.last_error = Some(ApiError::upstream_unavailable(format!(
                    "could not open the upstream WebSocket: {err}"
                )));
                tries.prefer = None;
                tries.excluded.push(label);
                Err(Step::Again)
            }
        }
    }

    /// An answered failure before the client saw output (an error frame, a refused upgrade):
    /// the policy decides, as for HTTP.
    async fn failed(
        &self,
        label: &Arc<str>,
        kind: policy::KeyKind,
        failure: &Failure,
        frame: String,
        tries: &mut Tries,
    ) -> Step {
        let pool = &self.shared.pool;
        let strikes = if failure.cools_credential() {
            pool.state().strike(label, failure.class).saturating_sub(1)
        } else {
            0
        };
        let decision = policy::decide(
            &policy::Attempt {
                failure: Some(failure),
                phase: crate::marks::Phase::BeforeContent,
                kind,
                strikes,
                auth_before: tries.auth_before,
                pinned: false,
                compaction: false,
                now: SystemTime::now(),
            },
            pool.policy(),
        );
        tracing::info!(
            credential = &**label,
            class = failure.class.as_str(),
            next = ?decision.next,
            why = decision.why,
            "upstream WebSocket attempt failed"
        );
        self.count(
            "tr_credential_attempts_total",
            "Upstream attempts, by credential and outcome (ok, a failure class, or transport).",
            &[("credential", label), ("outcome", failure.class.as_str())],
        );
        if let Some(c) = decision.cooldown {
            pool.cool(label, c);
        }
        if failure.class == FailureClass::Auth {
            tries.auth_before += 1;
        }
        tries.last_answer = Some(frame.clone());
        if decision.next == Next::Elsewhere {
            self.count_replay(failure.class.as_str());
            tries.prefer = None;
            tries.excluded.push(label.clone());
            return Step::Again;
        }
        self.deliver(Delivery::Event(frame)).await;
        Step::Done
    }

    /// The frame this socket gets: the client's incremental frame while this socket holds its
    /// anchor, else the full request; encrypted reasoning stripped on another account.
    fn frame_for(&self, open: &Open) -> (String, bool) {
        let anchor = self
            .turn
            .frame
            .get("previous_response_id")
            .and_then(Value::as_str);
        let chained = anchor.is_some() && anchor == open.last_response.as_deref();
        (self.text_for(open, chained), chained)
    }

    fn text_for(&self, open: &Open, chained: bool) -> String {
        let unanchored = self.turn.frame.get("previous_response_id").is_none();
        let text = if chained || unanchored && self.turn.frame.is_object() {
            self.turn.frame.to_string()
        } else {
            full_frame(&self.turn).to_string()
        };
        let owner = lock(&self.last_served).clone();
        if owner.is_some_and(|o| o != open.label) {
            if let Some((body, removed)) =
                crate::facts::without_encrypted_reasoning(text.as_bytes())
            {
                if removed > 0 {
                    tracing::info!(
                        credential = &*open.label,
                        removed,
                        "turn moved to another credential; stripped encrypted reasoning items it cannot decrypt"
                    );
                    if let Ok(s) = String::from_utf8(body.to_vec()) {
                        return s;
                    }
                }
            }
        }
        text
    }

    async fn attempt(&mut self, tries: &mut Tries) -> Step {
        let mut open = match self.socket(tries).await {
            Ok(open) => open,
            Err(step) => return step,
        };
        let (text, chained) = self.frame_for(&open);
        if let Err(e) = open.socket.send(text).await {
            return self.socket_ended(open, e, false, tries).await;
        }
        let mut held: Vec<String> = Vec::new();
        let mut visible = false;
        loop {
            let ev = match open.socket.next_event().await {
                Ok(ev) => ev,
                Err(e) => return self.socket_ended(open, e, visible, tries).await,
            };
            match ev.kind() {
                Some("codex.rate_limits") => {
                    if let Some(u) =
                        CredentialUsage::from_rate_limits_event(&ev.value, SystemTime::now())
                    {
                        self.shared.pool.record_usage(&open.label, u);
                    }
                    if !self.hold_or_send(&mut held, &mut visible, ev.text).await {
                        return Step::Done;
                    }
                }
                Some("response.created" | "response.in_progress" | "response.queued") => {
                    if !self.hold_or_send(&mut held, &mut visible, ev.text).await {
                        return Step::Done;
                    }
                }
                Some("error" | "response.failed") => {
                    open.last_response = None;
                    return self
                        .error_event(open, ev, held, visible, chained, tries)
                        .await;
                }
                Some("response.completed" | "response.incomplete") => {
                    let completed = ev.kind() == Some("response.completed");
                    open.last_response = completed
                        .then(|| ev.value["response"]["id"].as_str().map(str::to_owned))
                        .flatten();
                    self.served(&mut open);
                    *lock(&self.slot) = Some(open);
                    for h in held {
                        if !self.deliver(Delivery::Event(h)).await {
                            return Step::Done;
                        }
                    }
                    self.deliver(Delivery::Event(ev.text)).await;
                    return Step::Done;
                }
                _ => {
                    visible = true;
                    for h in held.drain(..) {
                        if !self.deliver(Delivery::Event(h)).await {
                            return Step::Done;
                        }
                    }
                    if !self.deliver(Delivery::Event(ev.text)).await {
                        return Step::Done;
                    }
                }
            }
        }
    }

    /// Holds a lifecycle event back until content, or sends it once content was seen (or the
    /// buffer is full). `false`: the client is gone.
    async fn hold_or_send(&self, held: &mut Vec<String>, visible: &mut bool, text: String) -> bool {
        if !*visible && held.len() < MAX_HELD {
            held.push(text);
            return true;
        }
        *visible = true;
        for h in held.drain(..) {
            if !self.deliver(Delivery::Event(h)).await {
                return false;
            }
        }
        self.deliver(Delivery::Event(text)).await
    }

    /// Bookkeeping of a turn the upstream answered.
    fn served(&self, open: &mut Open) {
        let pool = &self.shared.pool;
        let headers = if open.reported {
            HeaderMap::new()
        } else {
            open.socket.handshake_headers().clone()
        };
        open.reported = true;
        pool.record_success(&open.label, &headers);
        if let Some(s) = &self.session {
            pool.record_served(s, &open.label);
        }
        *lock(&self.last_served) = Some(open.label.clone());
        self.count(
            "tr_credential_attempts_total",
            "Upstream attempts, by credential and outcome (ok, a failure class, or transport).",
            &[("credential", &open.label), ("outcome", "ok")],
        );
    }

    async fn error_event(
        &self,
        mut open: Open,
        ev: UpstreamEvent,
        held: Vec<String>,
        visible: bool,
        chained: bool,
        tries: &mut Tries,
    ) -> Step {
        let code = ev.value["error"]["code"]
            .as_str()
            .or_else(|| ev.value["response"]["error"]["code"].as_str());
        if code == Some(CONNECTION_LIMIT) {
            let e = SocketError {
                end: SocketEnd::ConnectionLimit,
                close_code: None,
                detail: "websocket_connection_limit_reached".into(),
            };
            return self.socket_ended(open, e, visible, tries).await;
        }
        let failure = Failure::from_sse_data(ev.text.as_bytes());
        let lost_anchor = failure
            .as_ref()
            .is_some_and(|f| f.class == FailureClass::PreviousResponseNotFound);
        if lost_anchor
            && policy::after_lost_chain(chained, visible, tries.anchor_lost)
                == policy::LostChain::ResendFull
        {
            tracing::info!(
                credential = &*open.label,
                "upstream lost the chained response; sending the full request"
            );
            tries.anchor_lost = true;
            self.count_replay("previous_response_not_found");
            *lock(&self.slot) = Some(open);
            return Step::Again;
        }
        if let (false, Some(failure)) = (visible, &failure) {
            let kind = self
                .shared
                .pool
                .entry(&open.label)
                .map_or(policy::KeyKind::Key, |e| e.kind);
            let label = open.label.clone();
            let step = self.failed(&label, kind, failure, ev.text, tries).await;
            match step {
                Step::Again => {
                    open.close_reason = "credential_failed";
                    open.socket.close().await;
                }
                // The upstream's answer reached the client; the socket stays usable.
                Step::Done => *lock(&self.slot) = Some(open),
            }
            return step;
        }
        if let Some(f) = &failure {
            // After content: the stream reported it; the credential cools for later turns.
            self.shared.pool.record_failure(&open.label, f);
        }
        *lock(&self.slot) = Some(open);
        for h in held {
            if !self.deliver(Delivery::Event(h)).await {
                return Step::Done;
            }
        }
        self.deliver(Delivery::Event(ev.text)).await;
        Step::Done
    }

    async fn socket_ended(
        &self,
        mut open: Open,
        e: SocketError,
        visible: bool,
        tries: &mut Tries,
    ) -> Step {
        let decision = policy::after_socket_end(e.end, visible, tries.clean_closes);
        tracing::info!(
            credential = &*open.label,
            end = e.end.as_str(),
            detail = %e.detail,
            visible,
            why = decision.why,
            "upstream socket ended mid-turn"
        );
        if e.end == SocketEnd::CleanClose {
            tries.clean_closes += 1;
        }
        open.close_reason = e.end.as_str();
        let label = open.label.clone();
        drop(open);
        match decision.next {
            SocketNext::Reopen => {
                self.count_replay(e.end.as_str());
                tries.last_error = Some(ApiError::upstream_unavailable(format!(
                    "the upstream WebSocket kept ending before any output ({})",
                    e.detail
                )));
                tries.prefer = Some(label);
                Step::Again
            }
            SocketNext::Stop(err) => {
                self.deliver(Delivery::Error(err)).await;
                Step::Done
            }
        }
    }
}

/// The full request as a socket frame: [`Turn::full`] with `type` and the client's
/// WebSocket-only fields (`generate`, `client_metadata`), never `previous_response_id`.
fn full_frame(turn: &Turn) -> Value {
    let mut full = turn.full.clone();
    if let Some(obj) = full.as_object_mut() {
        obj.remove("previous_response_id");
        obj.insert("type".into(), Value::from("response.create"));
        for field in ["generate", "client_metadata"] {
            if let Some(v) = turn.frame.get(field) {
                obj.insert(field.into(), v.clone());
            }
        }
    }
    full
}

/// A refused upgrade as the error frame the Codex CLI reads.
fn refusal_frame(status: http::StatusCode, body: &[u8]) -> String {
    let parsed: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let error = match parsed.get("error") {
        Some(e) => e.clone(),
        None => serde_json::json!({
            "type": "server_error",
            "message": String::from_utf8_lossy(&body[..body.len().min(1024)]),
        }),
    };
    serde_json::json!({"type": "error", "status": status.as_u16(), "error": error}).to_string()
}
