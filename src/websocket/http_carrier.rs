//! [`HttpCarrier`]: each turn of a client socket becomes a full HTTP/SSE `POST` through the
//! proxy's stack, so rotation, soft-failure replay, continuity pins, compaction routing,
//! metrics and the failure policy apply to it exactly as to an HTTP client; the answer's
//! events become text frames.
//!
//! It is the carrier for upstreams without a WebSocket, and the fallback when an upstream
//! socket cannot be had. It sends [`Turn::full`](super::Turn::full) (the transcript-expanded
//! request, no `previous_response_id`, no WebSocket-only fields), never the client's frame.
//!
//! ```
//! use futures_util::StreamExt;
//! use tower::ServiceExt;
//! use tower_responses::connect::UpstreamClientBuilder;
//! use tower_responses::error::ApiError;
//! use tower_responses::stack::ResponsesStack;
//! use tower_responses::testing::MockUpstream;
//! use tower_responses::websocket::{Carrier, Delivery, Turn};
//! use tower_responses::websocket::http_carrier::{HttpCarrier, TurnService};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let upstream = MockUpstream::start().await.unwrap();
//! let base = upstream.base_url();
//! let stack = ResponsesStack::new().client(&UpstreamClientBuilder::new());
//! // The proxy maps `/v1/responses` to its upstream; here the stack is called directly.
//! let service = TurnService::new(
//!     tower::service_fn(move |mut req: http::Request<_>| {
//!         *req.uri_mut() = format!("{base}/responses").parse().unwrap();
//!         stack.clone().oneshot(req)
//!     })
//!     .map_err(|e| ApiError::upstream_unavailable(e.to_string())),
//! );
//! let mut carrier = HttpCarrier::new(service, "/v1/responses");
//! let turn = Turn {
//!     frame: serde_json::json!({"type": "response.create", "model": "m", "input": "hi"}),
//!     full: serde_json::json!({"model": "m", "input": "hi", "stream": true}),
//!     headers: http::HeaderMap::new(),
//! };
//! let events: Vec<Delivery> = carrier.send(turn).await.unwrap().collect().await;
//! let Some(Delivery::Event(last)) = events.last() else { panic!("{events:?}") };
//! assert!(last.contains("response.completed"));
//! // The upstream saw an ordinary streaming request.
//! assert_eq!(upstream.requests()[0].json().unwrap()["stream"], true);
//! # }
//! ```

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use tower::ServiceExt;
use tower::util::BoxCloneSyncService;

use super::carrier::{Carrier, Delivery, Events, Turn};
use crate::body::{ReplayBody, ResponseBody, collect_limited};
use crate::error::ApiError;
use crate::sse::SseDecoder;

/// What an [`HttpCarrier`] sends a turn's request through: the proxy's stack behind its
/// URI mapping (a request to the client-facing path, `/v1/responses`), answering in the
/// stack's body type; failures without an HTTP answer are already the client's error.
pub type TurnService = BoxCloneSyncService<Request<ReplayBody>, Response<ResponseBody>, ApiError>;

/// The most of an error answer's body read to build its error frame.
const ERROR_BODY_LIMIT: usize = 256 * 1024;

/// Carries every turn as a full HTTP/SSE request; see the [module docs](self).
#[derive(Clone)]
pub struct HttpCarrier {
    service: TurnService,
    path: String,
}

impl std::fmt::Debug for HttpCarrier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpCarrier")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl HttpCarrier {
    /// A carrier posting each turn to `path` (the client-facing path the socket was opened
    /// on, e.g. `/v1/responses`) through `service`.
    pub fn new(service: TurnService, path: impl Into<String>) -> Self {
        HttpCarrier {
            service,
            path: path.into(),
        }
    }

    fn request(&self, turn: Turn) -> Result<Request<ReplayBody>, ApiError> {
        let body = serde_json::to_vec(&turn.full).map_err(|e| {
            ApiError::invalid_request(format!("the request cannot be encoded: {e}"))
        })?;
        let mut req = Request::post(self.path.as_str())
            .body(ReplayBody::new(body))
            .map_err(|e| ApiError::invalid_request(format!("bad request path: {e}")))?;
        let headers = req.headers_mut();
        *headers = http_headers(turn.headers);
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(
            header::ACCEPT,
            HeaderValue::from_static("text/event-stream"),
        );
        Ok(req)
    }
}

impl Carrier for HttpCarrier {
    fn send(&mut self, turn: Turn) -> BoxFuture<'_, Result<Events, ApiError>> {
        Box::pin(async move {
            let req = self.request(turn)?;
            let res = self.service.clone().oneshot(req).await?;
            if res.status() != StatusCode::OK {
                return Err(error_from_answer(res).await);
            }
            if !crate::sse::is_event_stream(res.headers()) {
                return Err(ApiError::upstream_unavailable(
                    "the upstream answered a streaming request without an event stream",
                ));
            }
            Ok(sse_events(res.into_body()))
        })
    }
}

/// The handshake's headers as an HTTP request's: the socket's own (`Sec-WebSocket-*`,
/// `Upgrade`, the beta that asks for the WebSocket protocol) and the body's are dropped.
fn http_headers(mut headers: HeaderMap) -> HeaderMap {
    crate::upstream::strip_hop_by_hop(&mut headers);
    for name in [
        header::HOST,
        header::CONTENT_LENGTH,
        header::CONTENT_TYPE,
        header::CONTENT_ENCODING,
        header::ACCEPT,
        header::ACCEPT_ENCODING,
        header::ORIGIN,
        header::SEC_WEBSOCKET_KEY,
        header::SEC_WEBSOCKET_VERSION,
        header::SEC_WEBSOCKET_EXTENSIONS,
        header::SEC_WEBSOCKET_PROTOCOL,
    ] {
        headers.remove(name);
    }
    let betas: Vec<HeaderValue> = headers
        .get_all("openai-beta")
        .iter()
        .filter(|v| !v.as_bytes().starts_with(b"responses_websockets"))
        .cloned()
        .collect();
    headers.remove("openai-beta");
    for beta in betas {
        headers.append("openai-beta", beta);
    }
    headers
}

/// An HTTP error answer as the error frame's error, keeping what the client acts on (status,
/// type, code, `resets_at`, `Retry-After`).
async fn error_from_answer(res: Response<ResponseBody>) -> ApiError {
    let (parts, body) = res.into_parts();
    let body = collect_limited(body, ERROR_BODY_LIMIT)
        .await
        .unwrap_or_default();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let e = &v["error"];
    let message = e["message"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| {
            format!(
                "the upstream answered {} without an error message",
                parts.status
            )
        });
    let mut err = ApiError::new(
        parts.status,
        e["type"].as_str().unwrap_or("server_error"),
        message,
    );
    err.code = e["code"].as_str().map(str::to_string);
    err.param = e["param"].as_str().map(str::to_string);
    err.resets_at = e["resets_at"].as_u64();
    err.retry_after = parts
        .headers
        .get(header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(std::time::Duration::from_secs);
    err
}

/// The events of an SSE body, one [`Delivery::Event`] per `data:`; a body that breaks off
/// ends with an error frame (the stack's idle timeout, a lost upstream), retryable for the
/// client. Dropping the stream drops the body, which ends the upstream request.
fn sse_events(body: ResponseBody) -> Events {
    struct State {
        body: ResponseBody,
        decoder: SseDecoder,
        done: bool,
    }
    let state = State {
        body,
        decoder: SseDecoder::new(),
        done: false,
    };
    Box::pin(stream::unfold(state, |mut s| async move {
        loop {
            if s.done {
                return None;
            }
            match s.decoder.next_event() {
                Ok(Some(event)) => {
                    if let Some(d) = delivery(event.data) {
                        return Some((d, s));
                    }
                    continue;
                }
                Ok(None) => {}
                Err(e) => {
                    s.done = true;
                    let err = ApiError::upstream_unavailable(format!(
                        "the upstream's event stream is malformed: {e}"
                    ));
                    return Some((Delivery::Error(err), s));
                }
            }
            match s.body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        s.decoder.push(data);
                    }
                }
                Some(Err(e)) => {
                    s.done = true;
                    let err = ApiError::upstream_unavailable(format!(
                        "the upstream's stream broke off: {e}; retry the request"
                    ));
                    return Some((Delivery::Error(err), s));
                }
                None => {
                    s.done = true;
                    let last = s.decoder.finish().ok().flatten();
                    return last.and_then(|e| delivery(e.data)).map(|d| (d, s));
                }
            }
        }
    }))
}

fn delivery(data: Bytes) -> Option<Delivery> {
    if data.is_empty() || &data[..] == b"[DONE]" {
        return None;
    }
    Some(Delivery::Event(String::from_utf8_lossy(&data).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_headers_do_not_reach_http() {
        let mut h = HeaderMap::new();
        h.insert("sec-websocket-key", HeaderValue::from_static("k"));
        h.insert("upgrade", HeaderValue::from_static("websocket"));
        h.insert("connection", HeaderValue::from_static("Upgrade"));
        h.append(
            "openai-beta",
            HeaderValue::from_static("responses_websockets=2026-02-06"),
        );
        h.append("openai-beta", HeaderValue::from_static("other=1"));
        h.insert("session_id", HeaderValue::from_static("s1"));
        let h = http_headers(h);
        assert!(h.get("sec-websocket-key").is_none() && h.get("upgrade").is_none());
        assert_eq!(h.get_all("openai-beta").iter().count(), 1);
        assert_eq!(h["openai-beta"], "other=1");
        assert_eq!(h["session_id"], "s1");
    }
}
