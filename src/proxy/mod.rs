//! The proxy server behind `examples/proxy.rs` (feature `proxy`).
//!
//! It accepts Responses API clients (the Codex CLI, the SDKs), checks who they are, reads
//! their bodies with a limit, and forwards `/v1/*` to the upstream through the layer stack,
//! streaming answers back event by event. It also answers `GET /healthz`, `GET /metrics`
//! (Prometheus text), and `426` to a WebSocket upgrade so the Codex CLI falls back to HTTP.
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
