//! The tower-responses proxy: put it between a Responses client (the Codex CLI, the OpenAI
//! SDKs) and the upstream.
//!
//! ```text
//! proxy [--config FILE] [--listen ADDR] [--upstream URL] [--profile openai|chatgpt-codex|generic]
//!       [--credential VALUE]... [--client-key KEY]... [--demo]
//! ```
//! `--credential` takes `env:NAME`, `file:PATH`, `codex-auth:PATH` or a literal key (which
//! other users can read in the process list: a warning says so); `--client-key` takes the same
//! forms. Every flag can be set in the TOML file too; flags win. `--demo` runs an embedded fault-injecting upstream and a
//! scripted workload through the proxy and prints what happened.

mod demo;

use std::path::PathBuf;
use std::process::ExitCode;

use tower_responses::credentials::{CredentialSource, PoolMember, Secret};
use tower_responses::proxy::{Proxy, ProxyConfig, command_line_secret_warning};

const USAGE: &str = "usage: proxy [--config FILE] [--listen ADDR] [--upstream URL] \
[--profile openai|chatgpt-codex|generic] [--credential VALUE]... [--client-key KEY]... \
[--allowed-origin ORIGIN]... [--demo]

  --config FILE           TOML file with the same settings (flags win)
  --listen ADDR           address to listen on (default 127.0.0.1:8787)
  --upstream URL          upstream base URL with its prefix (default https://api.openai.com/v1)
  --profile NAME          upstream profile (default: from the URL)
  --credential VALUE      upstream credential: env:NAME, file:PATH, codex-auth:PATH, or a key
                          (a key on the command line is visible in `ps`; repeatable)
  --client-key KEY        inbound bearer key, or env:NAME / file:PATH (repeatable); needs
                          --credential; without any, only loopback clients naming localhost
  --allowed-origin ORIGIN a web origin whose pages may call the proxy (repeatable; default none)
  --demo                  run the embedded mock upstream and a scripted workload, print the result";

#[derive(Default)]
struct Flags {
    config: Option<PathBuf>,
    listen: Option<String>,
    upstream: Option<String>,
    profile: Option<String>,
    credentials: Vec<String>,
    client_keys: Vec<String>,
    allowed_origins: Vec<String>,
    demo: bool,
}

fn parse_flags(args: impl Iterator<Item = String>) -> Result<Flags, String> {
    let mut flags = Flags::default();
    let mut args = args.peekable();
    while let Some(arg) = args.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let mut value = |name: &str| {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match name.as_str() {
            "--config" => flags.config = Some(PathBuf::from(value("--config")?)),
            "--listen" => flags.listen = Some(value("--listen")?),
            "--upstream" => flags.upstream = Some(value("--upstream")?),
            "--profile" => flags.profile = Some(value("--profile")?),
            "--credential" => flags.credentials.push(value("--credential")?),
            "--client-key" => flags.client_keys.push(value("--client-key")?),
            "--allowed-origin" => flags.allowed_origins.push(value("--allowed-origin")?),
            "--demo" => flags.demo = true,
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    Ok(flags)
}

fn build_config(flags: &Flags) -> Result<ProxyConfig, String> {
    let mut cfg = match &flags.config {
        Some(path) => ProxyConfig::from_file(path).map_err(|e| e.to_string())?,
        None => ProxyConfig::default(),
    };
    if let Some(listen) = &flags.listen {
        cfg.listen = listen
            .parse()
            .map_err(|e| format!("--listen `{listen}`: {e}"))?;
    }
    if let Some(upstream) = &flags.upstream {
        cfg.upstream = upstream.clone();
    }
    if let Some(profile) = &flags.profile {
        cfg.profile_override = Some(profile.parse().map_err(|e| format!("--profile: {e}"))?);
    }
    if !flags.credentials.is_empty() {
        cfg.credentials = flags
            .credentials
            .iter()
            .map(|c| {
                c.parse::<PoolMember>()
                    .map_err(|e| format!("--credential: {e}"))
            })
            .collect::<Result<_, _>>()?;
    }
    if !flags.client_keys.is_empty() {
        cfg.client_keys = flags
            .client_keys
            .iter()
            .map(|k| {
                let source: CredentialSource =
                    k.parse().map_err(|e| format!("--client-key: {e}"))?;
                let key = source.load().map_err(|e| format!("--client-key: {e}"))?;
                Ok(Secret::new(key.token.expose()))
            })
            .collect::<Result<_, String>>()?;
    }
    if !flags.allowed_origins.is_empty() {
        cfg.allowed_origins = flags.allowed_origins.clone();
    }
    Ok(cfg)
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}

#[tokio::main]
async fn main() -> ExitCode {
    let flags = match parse_flags(std::env::args().skip(1)) {
        Ok(f) => f,
        Err(msg) => {
            if !msg.is_empty() {
                eprintln!("error: {msg}\n");
            }
            eprintln!("{USAGE}");
            return if msg.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            };
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(if flags.demo { "warn" } else { "info" })
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();

    if flags.demo {
        return demo::run().await;
    }
    let secrets = flags
        .credentials
        .iter()
        .map(|v| ("--credential", v))
        .chain(flags.client_keys.iter().map(|v| ("--client-key", v)));
    for (flag, value) in secrets {
        if let Some(warning) = command_line_secret_warning(flag, value) {
            eprintln!("{warning}");
        }
    }
    let config = match build_config(&flags) {
        Ok(c) => c,
        Err(msg) => {
            eprintln!("error: {msg}");
            return ExitCode::from(2);
        }
    };
    let profile = config.profile();
    let upstream = config.upstream.clone();
    let proxy = match Proxy::bind(config).await {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    tracing::info!(listen = %proxy.local_addr(), %upstream, %profile, "proxy ready");
    match proxy.serve(shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
