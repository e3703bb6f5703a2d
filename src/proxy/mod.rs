//! The proxy server behind `examples/proxy.rs` (feature `proxy`).
//!
//! It accepts Responses API clients (the Codex CLI, the SDKs), checks who they are, reads
//! their bodies with a limit, and forwards `/v1/*` to the upstream through the layer stack,
//! streaming answers back event by event. It also answers `GET /healthz`, `GET /metrics`
//! (Prometheus text), and `426` to a WebSocket upgrade so the Codex CLI falls back to HTTP.
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

mod config;
mod edge;
mod server;

pub use config::{ConfigError, ProxyConfig, command_line_secret_warning};
pub use server::{Proxy, ProxyBody};
