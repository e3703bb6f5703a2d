//! A scriptable, fault-injecting mock OpenAI Responses upstream, for tests.
//!
//! Enabled by the `test-util` feature. [`MockUpstream::start`] serves HTTP/1.1 with
//! keep-alive on `127.0.0.1`; point a client (or the layer under test) at
//! [`MockUpstream::base_url`]. Without a script it answers like the real API
//! ([`Reply::auto`]); push [`Reply`]s to script answers, failures inside a `200` stream
//! (built with [`events`]), or transport faults ([`Fault`], [`StaleMode`]). Every request is
//! recorded with its connection, credential, body and idle time ([`RecordedRequest`]).
//!
//! With the `websocket` feature the same port answers the Responses WebSocket on
//! `/responses` and `/v1/responses`: scripted turns ([`WsReply`], [`MockUpstream::push_ws`]),
//! error frames, cut sockets, the 60-minute close and a connection-local
//! `previous_response_id` store, every frame recorded ([`RecordedSocket`]).
//!
//! ```
//! use bytes::Bytes;
//! use http_body_util::{BodyExt, Full};
//! use hyper_util::client::legacy::Client;
//! use hyper_util::rt::TokioExecutor;
//! use tower_responses::testing::{MockUpstream, Reply};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let mock = MockUpstream::start().await.unwrap();
//! mock.push(Reply::text("Hello from the mock"));
//!
//! let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
//! let req = http::Request::post(format!("{}/responses", mock.base_url()))
//!     .header("authorization", "Bearer sk-test")
//!     .header("content-type", "application/json")
//!     .body(Full::from(r#"{"model":"gpt-5","input":"hi","stream":true}"#))
//!     .unwrap();
//! let res = client.request(req).await.unwrap();
//! assert_eq!(res.headers()["content-type"], "text/event-stream");
//! let body = res.into_body().collect().await.unwrap().to_bytes();
//! let body = String::from_utf8(body.to_vec()).unwrap();
//! assert!(body.contains("event: response.completed"));
//! assert!(body.contains("Hello from the mock"));
//!
//! let seen = mock.requests();
//! assert_eq!(seen.len(), 1);
//! assert_eq!(seen[0].credential.as_deref(), Some("sk-test"));
//! assert_eq!(seen[0].json().unwrap()["model"], "gpt-5");
//! mock.shutdown().await;
//! # }
//! ```

mod authority;
mod auto;
mod codex_strict;
pub mod events;
mod io;
mod record;
mod script;
mod server;
mod store;
mod stream;
mod streams;
#[cfg(feature = "websocket")]
mod ws;

pub use authority::{AuthorityCall, IssuedLogin, MockAuthority, TokenFault};
pub use codex_strict::{CODEX_UNSUPPORTED, codex_strict};
pub use record::RecordedRequest;
pub use script::{Fault, Reply, StaleMode};
pub use server::MockUpstream;
pub use store::ResponseStore;
pub use streams::{OpenStream, StreamStats};
#[cfg(feature = "websocket")]
pub use ws::{CONNECTION_LIMIT_MESSAGE, RecordedSocket, WS_MAX_MESSAGE, WsReply};
