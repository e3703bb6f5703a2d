//! The WebSocket handshake on the server side (RFC 6455 section 4.2): checks the upgrade
//! request, answers `101 Switching Protocols`, and once hyper hands over the connection runs
//! a [`Session`] on it.
//!
//! The proxy calls these after its edge (target, `Host`, `Origin`, path, client key) has
//! passed the request, so a refused upgrade is an ordinary HTTP error before any socket
//! exists. Compression (`permessage-deflate`) is declined: it is optional in the handshake,
//! and the client then sends plain frames.
//!
//! ```
//! use tower_responses::websocket::accept::{handshake, is_upgrade};
//!
//! let req = http::Request::get("/v1/responses")
//!     .header("connection", "Upgrade")
//!     .header("upgrade", "websocket")
//!     .header("sec-websocket-version", "13")
//!     .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
//!     .body(())
//!     .unwrap();
//! assert!(is_upgrade(req.headers()));
//! let res = handshake(&req).unwrap();
//! assert_eq!(res.status(), 101);
//! // RFC 6455's own example.
//! assert_eq!(res.headers()["sec-websocket-accept"], "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
//! ```

use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

use super::WebSocketLimits;
use super::carrier::Carrier;
use super::session::Session;
use crate::body::{ResponseBody, full_body};
use crate::error::ApiError;
use crate::metrics::Metrics;

/// Whether a request asks to become a WebSocket (`Upgrade: websocket`).
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::UPGRADE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim().eq_ignore_ascii_case("websocket"))
}

/// Checks an upgrade request and builds its `101` answer; `Err` is the HTTP error to answer
/// instead (`400` for a malformed handshake, `426` for a version other than 13).
pub fn handshake<B>(req: &Request<B>) -> Result<Response<ResponseBody>, ApiError> {
    let bad = |why: &str| {
        ApiError::invalid_request(format!("not a valid WebSocket handshake: {why}"))
            .with_code("invalid_websocket_handshake")
    };
    if req.method() != Method::GET {
        return Err(bad("the upgrade must be a GET"));
    }
    if req.version() != http::Version::HTTP_11 {
        return Err(bad("the upgrade needs HTTP/1.1"));
    }
    let connection_upgrade = req
        .headers()
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    if !connection_upgrade {
        return Err(bad("`Connection: Upgrade` is missing"));
    }
    let version = req.headers().get(header::SEC_WEBSOCKET_VERSION);
    if version.map(HeaderValue::as_bytes) != Some(b"13") {
        let mut err = ApiError::new(
            StatusCode::UPGRADE_REQUIRED,
            "invalid_request_error",
            "only WebSocket version 13 is supported",
        )
        .with_code("unsupported_websocket_version");
        err.param = Some("sec-websocket-version".into());
        return Err(err);
    }
    let key = req
        .headers()
        .get(header::SEC_WEBSOCKET_KEY)
        .ok_or_else(|| bad("`Sec-WebSocket-Key` is missing"))?;
    if !valid_key(key.as_bytes()) {
        return Err(bad("`Sec-WebSocket-Key` is not 16 bytes of base64"));
    }
    let accept = HeaderValue::from_str(&derive_accept_key(key.as_bytes()))
        .map_err(|_| bad("the key cannot be answered"))?;
    let mut res = Response::new(full_body(""));
    *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = res.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    Ok(res)
}

fn valid_key(key: &[u8]) -> bool {
    use base64::Engine as _;
    key.len() == 24
        && base64::engine::general_purpose::STANDARD
            .decode(key)
            .is_ok_and(|k| k.len() == 16)
}

/// The socket settings for client sockets: frames up to the hard limit are read (so an
/// oversize message is answered, not cut off), and small buffers, since most sockets sit
/// idle between turns.
pub fn socket_config(limits: &WebSocketLimits) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(8 * 1024)
        .write_buffer_size(0)
        .max_message_size(Some(limits.hard_message_bytes()))
        .max_frame_size(Some(limits.hard_message_bytes()))
}

/// A served client socket: counts itself in `tr_ws_client_sockets_open` while it lives.
struct OpenSocket(Metrics);

impl OpenSocket {
    const GAUGE: &'static str = "tr_ws_client_sockets_open";
    const HELP: &'static str = "Client WebSocket connections being served.";

    fn new(metrics: Metrics) -> Self {
        metrics.inc(
            "tr_ws_client_sockets_total",
            "Client WebSocket connections accepted.",
            &[],
        );
        metrics.gauge_add(Self::GAUGE, Self::HELP, &[], 1.0);
        OpenSocket(metrics)
    }
}

impl Drop for OpenSocket {
    fn drop(&mut self) {
        self.0.gauge_add(Self::GAUGE, Self::HELP, &[], -1.0);
    }
}

/// After the `101` went out: waits for hyper to hand over the connection and serves the
/// session on it. `permit` is held for the socket's life (the socket limit).
pub async fn serve<C, P>(
    upgrade: OnUpgrade,
    session: Session<C>,
    limits: WebSocketLimits,
    metrics: Metrics,
    permit: P,
) where
    C: Carrier + 'static,
    P: Send + 'static,
{
    let upgraded = match upgrade.await {
        Ok(u) => u,
        Err(e) => {
            tracing::debug!(error = %e, "websocket upgrade did not complete");
            return;
        }
    };
    let _open = OpenSocket::new(metrics);
    let _permit = permit;
    let ws = WebSocketStream::from_raw_socket(
        TokioIo::new(upgraded),
        Role::Server,
        Some(socket_config(&limits)),
    )
    .await;
    session.run(ws).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upgrade_req() -> http::request::Builder {
        Request::get("/v1/responses")
            .header("connection", "keep-alive, Upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
    }

    #[test]
    fn malformed_handshakes_are_http_errors() {
        let no_key = Request::get("/v1/responses")
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-version", "13")
            .body(())
            .unwrap();
        assert_eq!(handshake(&no_key).unwrap_err().status, 400);
        let short_key = upgrade_req()
            .header("sec-websocket-key", "c2hvcnQ=")
            .body(())
            .unwrap();
        // The second key header makes `get` return the first; replace it instead.
        let mut short = short_key;
        short
            .headers_mut()
            .insert("sec-websocket-key", HeaderValue::from_static("c2hvcnQ="));
        assert_eq!(handshake(&short).unwrap_err().status, 400);
        let mut v8 = upgrade_req().body(()).unwrap();
        v8.headers_mut()
            .insert("sec-websocket-version", HeaderValue::from_static("8"));
        assert_eq!(handshake(&v8).unwrap_err().status, 426);
        let mut post = upgrade_req().body(()).unwrap();
        *post.method_mut() = Method::POST;
        assert_eq!(handshake(&post).unwrap_err().status, 400);
        assert!(handshake(&upgrade_req().body(()).unwrap()).is_ok());
    }
}
