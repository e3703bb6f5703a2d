//! The proxy server behind the `tower-responses` binary and `examples/proxy` (feature
//! `proxy`); [`cli`] is their command line.
//!
//! It accepts Responses API clients (the Codex CLI, the SDKs), checks who they are, reads
//! their bodies with a limit, and forwards `/v1/*` to the upstream through the layer stack,
//! streaming answers back event by event. It also answers `GET /healthz`, `GET /metrics`
//! (Prometheus text), `GET /status` (JSON: each credential ready or cooling), and the Codex
//! CLI's Responses WebSocket on `/v1/responses` ([`crate::websocket`]: each turn through the
//! same stack, or an upstream socket; `426` where no socket is served, so the client uses
//! HTTP). Every answer carries an
//! `x-request-id` (the client's, when sane, else a UUID v7), which is also in every log line
//! of the request (its `request` span).
//!
//! Before anything about a request is trusted, its head passes the edge: origin-form targets
//! only (this is not a forward proxy), `GET`/`POST`/`DELETE`, a loopback `Host` when no client
//! keys are configured (DNS rebinding), no `Origin` outside `allowed_origins` (web pages),
//! paths that cannot leave the upstream's prefix, and JSON for `/v1/responses*`. hyper bounds
//! the head (count, size, read time) and the server caps concurrent connections. A refused
//! request gets the OpenAI error envelope and ends its connection. The README's "Security"
//! section says what is accepted and why.
//!
//! ```no_run
//! use tower_responses::proxy::{Proxy, ProxyConfig};
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let config = ProxyConfig { upstream: "https://api.openai.com/v1".into(), ..Default::default() };
//! let proxy = Proxy::bind(config).await?;
//! println!("listening on {}", proxy.local_addr());
//! proxy.serve(async { let _ = tokio::signal::ctrl_c().await; }).await?;
//! # Ok(()) }
//! ```

pub mod cli;
mod config;
mod demo;
mod edge;
pub mod login;
mod request_id;
mod server;
mod status;

pub use config::{ConfigError, LogFormat, ProxyConfig, UsageHeaders, command_line_secret_warning};
pub use server::{Proxy, ProxyBody};
