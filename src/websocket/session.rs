//! One client socket: frames in, one turn in flight, the upstream's events out.
//!
//! The session reads the client's frames and its current turn's events at once, so a
//! client that goes away mid-response is noticed at once and its turn dropped (which ends
//! the upstream request), and a second `response.create` while one streams gets an error
//! frame instead of interleaved events. Between turns an idle timeout closes the socket; it
//! only runs while no turn is in flight, and any frame (a ping included) restarts it.
//!
//! Every failure the client can act on is an error frame in the wrapped shape the Codex CLI
//! reads ([`frames::error_frame`]); the socket is closed only when the client closes it,
//! goes away, stays idle, or sends what cannot be read at all.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use futures_util::future::BoxFuture;
use futures_util::{SinkExt, StreamExt};
use http::HeaderMap;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use super::WebSocketLimits;
use super::carrier::{Carrier, Delivery, Events, Turn};
use super::frames::{self, ClientFrame};
use super::transcript::{Transcript, TranscriptBudget};
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::sse::{EventKind, event_kind, sniff_type};

/// A client socket being served; [`run`](Self::run) drives it to its end.
pub struct Session<C> {
    carrier: Option<C>,
    headers: HeaderMap,
    limits: WebSocketLimits,
    metrics: Metrics,
    transcript: Transcript,
    turns: u64,
    stop: Option<watch::Receiver<bool>>,
}

/// The turn in flight, if any.
enum InFlight<C> {
    Idle,
    /// Waiting for the carrier to start it (the upstream's answer head, rotation included);
    /// the future owns the carrier and hands it back.
    Starting(BoxFuture<'static, (C, Result<Events, ApiError>)>),
    Streaming(Events),
}

/// What the turn in flight produced.
enum Step<C> {
    Started(C, Result<Events, ApiError>),
    Delivered(Option<Delivery>),
}

/// Why a session ended, for its log line.
#[derive(Debug, Clone, Copy)]
enum End {
    ClientClosed,
    ClientGone,
    Idle,
    TooLarge,
    Shutdown,
}

impl End {
    fn as_str(self) -> &'static str {
        match self {
            End::ClientClosed => "client_closed",
            End::ClientGone => "client_gone",
            End::Idle => "idle_timeout",
            End::TooLarge => "message_too_large",
            End::Shutdown => "shutdown",
        }
    }
}

impl<C: Carrier + 'static> Session<C> {
    /// A session carrying turns with `carrier`; `headers` are the handshake's, already
    /// cleared of the client's key by the edge.
    pub fn new(carrier: C, headers: HeaderMap, limits: WebSocketLimits, metrics: Metrics) -> Self {
        Session {
            carrier: Some(carrier),
            headers,
            transcript: Transcript::new(limits.max_transcript_bytes),
            limits,
            metrics,
            turns: 0,
            stop: None,
        }
    }

    /// Closes the socket (`1001 going away`) once `stop` turns `true`: at once between turns,
    /// after the turn in flight otherwise, so a shutdown never cuts a response.
    pub fn stop_on(mut self, stop: watch::Receiver<bool>) -> Self {
        self.stop = Some(stop);
        self
    }

    /// Counts this socket's transcript against a budget shared with the other sockets.
    pub fn transcript_budget(mut self, budget: TranscriptBudget) -> Self {
        self.transcript = Transcript::new(self.limits.max_transcript_bytes).with_budget(budget);
        self
    }

    /// Serves the socket until the client closes it, goes away or stays idle.
    pub async fn run<S>(mut self, mut ws: WebSocketStream<S>)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let mut inflight: InFlight<C> = InFlight::Idle;
        let idle = tokio::time::sleep(self.limits.idle_timeout());
        tokio::pin!(idle);
        let mut stop = self.stop.take();
        let end = loop {
            let waiting = matches!(inflight, InFlight::Idle);
            if waiting && stop.as_ref().is_some_and(|s| *s.borrow()) {
                break End::Shutdown;
            }
            let out: Vec<String> = tokio::select! {
                msg = ws.next() => {
                    idle.as_mut().reset(tokio::time::Instant::now() + self.limits.idle_timeout());
                    match msg {
                        None => break End::ClientGone,
                        Some(Ok(Message::Text(text))) => {
                            self.count_in("text");
                            self.metrics.add(
                                "tr_ws_client_bytes_total",
                                "Bytes of text frames from WebSocket clients: what they send instead of whole HTTP requests.",
                                &[],
                                text.len() as f64,
                            );
                            self.on_text(text.as_str(), &mut inflight)
                        }
                        Some(Ok(Message::Binary(_))) => {
                            self.count_in("binary");
                            vec![frames::error_frame(&frames::binary_not_supported())]
                        }
                        // tungstenite answers pings itself (on the next read or write).
                        Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {
                            Vec::new()
                        }
                        Some(Ok(Message::Close(_))) => break End::ClientClosed,
                        Some(Err(WsError::Capacity(e))) => {
                            self.count_in("too_large");
                            tracing::info!(error = %e, "websocket message over the hard limit");
                            let err = frames::payload_too_large(
                                self.limits.hard_message_bytes(),
                                self.limits.max_message_bytes,
                            );
                            let _ = self.send(&mut ws, frames::error_frame(&err)).await;
                            break End::TooLarge;
                        }
                        Some(Err(e)) => {
                            tracing::debug!(error = %e, "websocket read failed");
                            break End::ClientGone;
                        }
                    }
                }
                step = step(&mut inflight) => self.on_step(step, &mut inflight),
                _ = &mut idle, if waiting => break End::Idle,
                _ = stopped(&mut stop), if waiting => break End::Shutdown,
            };
            let mut gone = false;
            for text in out {
                if self.send(&mut ws, text).await.is_err() {
                    gone = true;
                    break;
                }
            }
            if gone {
                break End::ClientGone;
            }
            if matches!(inflight, InFlight::Idle) && !waiting {
                idle.as_mut()
                    .reset(tokio::time::Instant::now() + self.limits.idle_timeout());
            }
        };
        let cancelled = !matches!(inflight, InFlight::Idle);
        // Dropping the turn drops its upstream body: the upstream request ends now.
        drop(inflight);
        if cancelled {
            self.count_turn("cancelled");
            tracing::info!(
                reason = end.as_str(),
                "websocket client left mid-response; upstream request cancelled"
            );
        }
        let close = match end {
            // A normal close, never 1009: the client reconnects and stays on the WebSocket.
            End::Idle => Some((CloseCode::Normal, "idle timeout")),
            End::TooLarge => Some((CloseCode::Normal, "message too large")),
            End::Shutdown => Some((CloseCode::Away, "the proxy is shutting down")),
            End::ClientClosed | End::ClientGone => None,
        };
        if let Some((code, reason)) = close {
            let _ = ws
                .close(Some(CloseFrame {
                    code,
                    reason: reason.into(),
                }))
                .await;
        }
        tracing::info!(
            reason = end.as_str(),
            turns = self.turns,
            "websocket closed"
        );
    }

    /// A text frame from the client: what to send back now (error frames, a local prewarm).
    fn on_text(&mut self, text: &str, inflight: &mut InFlight<C>) -> Vec<String> {
        if text.len() > self.limits.max_message_bytes {
            let err = frames::payload_too_large(text.len(), self.limits.max_message_bytes);
            return vec![frames::error_frame(&err)];
        }
        let frame = match ClientFrame::parse(text.as_bytes()) {
            Ok(ClientFrame::Create(frame)) => frame,
            Ok(ClientFrame::Processed) => return Vec::new(),
            Err(err) => return vec![frames::error_frame(&err)],
        };
        if !matches!(inflight, InFlight::Idle) {
            return vec![frames::error_frame(&frames::already_in_flight())];
        }
        let chained = frame
            .get("previous_response_id")
            .is_some_and(|v| !v.is_null());
        let full = match self.transcript.expand(&frame) {
            Ok(full) => full,
            Err(err) => {
                self.count_turn("refused");
                tracing::info!(code = err.code.as_deref().unwrap_or(""), message = %err.message, "websocket frame refused");
                return vec![frames::error_frame(&err)];
            }
        };
        let Some(mut carrier) = self.carrier.take() else {
            return vec![frames::error_frame(&frames::already_in_flight())];
        };
        self.turns += 1;
        if frames::is_prewarm(&frame) && !carrier.takes_prewarm() {
            self.carrier = Some(carrier);
            let id = prewarm_id();
            self.transcript.prewarmed(&id, &full);
            self.count_turn("prewarm_local");
            let model = frame.get("model").and_then(Value::as_str);
            return frames::prewarm_events(&id, model).into();
        }
        if chained {
            self.metrics.inc(
                "tr_ws_expanded_total",
                "Chained WebSocket frames (previous_response_id plus new items) expanded from the socket's transcript into full requests.",
                &[],
            );
        }
        self.transcript.begin(&full);
        let turn = Turn {
            frame: Value::Object(frame),
            full,
            headers: self.headers.clone(),
        };
        *inflight = InFlight::Starting(Box::pin(async move {
            let started = carrier.send(turn).await;
            (carrier, started)
        }));
        Vec::new()
    }

    /// What the turn in flight produced: the frames to send.
    fn on_step(&mut self, step: Step<C>, inflight: &mut InFlight<C>) -> Vec<String> {
        match step {
            Step::Started(carrier, started) => {
                self.carrier = Some(carrier);
                match started {
                    Ok(events) => {
                        *inflight = InFlight::Streaming(events);
                        Vec::new()
                    }
                    Err(err) => {
                        *inflight = InFlight::Idle;
                        self.transcript.abandon();
                        self.count_turn("error");
                        vec![frames::error_frame(&err)]
                    }
                }
            }
            Step::Delivered(Some(Delivery::Event(text))) => {
                self.transcript.observe(&text);
                match sniff_type(text.as_bytes()).map(event_kind) {
                    Some(EventKind::Terminal) => {
                        *inflight = InFlight::Idle;
                        let outcome = match sniff_type(text.as_bytes()) {
                            Some("response.completed") => "completed",
                            _ => "failed",
                        };
                        self.count_turn(outcome);
                    }
                    Some(EventKind::Error) => {
                        *inflight = InFlight::Idle;
                        self.count_turn("error");
                    }
                    _ => {}
                }
                vec![text]
            }
            Step::Delivered(Some(Delivery::Error(err))) => {
                *inflight = InFlight::Idle;
                self.transcript.abandon();
                self.count_turn("error");
                vec![frames::error_frame(&err)]
            }
            Step::Delivered(None) => {
                *inflight = InFlight::Idle;
                self.transcript.abandon();
                self.count_turn("cut");
                let err = ApiError::upstream_unavailable(
                    "the upstream's stream ended before response.completed; retry the request",
                );
                vec![frames::error_frame(&err)]
            }
        }
    }

    async fn send<S>(&self, ws: &mut WebSocketStream<S>, text: String) -> Result<(), WsError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        self.metrics.inc(
            "tr_ws_frames_total",
            "WebSocket frames, by direction (in from clients, out to them) and kind.",
            &[("direction", "out"), ("kind", "text")],
        );
        ws.send(Message::text(text)).await
    }

    fn count_in(&self, kind: &str) {
        self.metrics.inc(
            "tr_ws_frames_total",
            "WebSocket frames, by direction (in from clients, out to them) and kind.",
            &[("direction", "in"), ("kind", kind)],
        );
    }

    fn count_turn(&self, outcome: &str) {
        self.metrics.inc(
            "tr_ws_turns_total",
            "WebSocket response.create frames, by outcome (completed, failed, error, cut, cancelled, refused, prewarm_local).",
            &[("outcome", outcome)],
        );
    }
}

/// Resolves when shutdown begins (or whoever could signal it is gone); never without `stop`.
async fn stopped(stop: &mut Option<watch::Receiver<bool>>) {
    match stop {
        Some(rx) => {
            let _ = rx.wait_for(|s| *s).await;
        }
        None => std::future::pending().await,
    }
}

/// Waits for the turn in flight to produce something; never resolves when there is none.
async fn step<C>(inflight: &mut InFlight<C>) -> Step<C> {
    match inflight {
        InFlight::Idle => std::future::pending().await,
        InFlight::Starting(start) => {
            let (carrier, started) = start.as_mut().await;
            Step::Started(carrier, started)
        }
        InFlight::Streaming(events) => Step::Delivered(events.next().await),
    }
}

/// A response id for a locally answered prewarm: unique in this process and across restarts.
pub(crate) fn prewarm_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_nanos() as u64;
    format!(
        "resp_prewarm_{nanos:016x}{:08x}",
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}
