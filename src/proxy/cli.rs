//! The `tower-responses` command line: `serve` (the default), `demo` and `status`.
//!
//! Every `serve` flag is also an environment variable (`--upstream` is `TR_UPSTREAM`, lists
//! are comma-separated) and a key of the TOML file given with `--config`. A value given as a
//! flag wins over the environment, which wins over the file, which wins over the defaults.
//!
//! The binary (`src/bin/tower-responses.rs`) and `examples/proxy` both call [`main`], so they
//! take the same arguments; the example's old `--demo` flag still runs the demo.

use std::ffi::OsString;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::parser::ValueSource;
use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand};

use super::config::{LogFormat, ProxyConfig, command_line_secret_warning};
use super::status;
use super::{Proxy, demo};
use crate::credentials::{CredentialSource, PoolMember, Secret, Strategy};
use crate::profile::Profile;

/// The whole command line.
#[derive(Debug, Parser)]
#[command(
    name = "tower-responses",
    version,
    about = "A proxy that keeps OpenAI Responses API traffic alive through long agent sessions.",
    long_about = "A proxy that keeps OpenAI Responses API traffic alive through long agent \
                  sessions.\n\nWithout a subcommand it serves: `tower-responses --upstream URL \
                  --credential env:OPENAI_API_KEY` is `tower-responses serve ...`. Every serve \
                  flag is also a TR_* environment variable and a key of the --config TOML file \
                  (flags > environment > file > defaults).",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
    /// Runs the demo (the old spelling of `tower-responses demo`).
    #[arg(long, hide = true)]
    demo: bool,
}

// Parsed once at start-up and matched once: the variants' sizes cost nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Command {
    /// Serves the proxy (the default when no subcommand is given).
    Serve(ServeArgs),
    /// Runs an embedded fault-injecting upstream and a scripted workload through the proxy,
    /// and prints what a client saw with and without it.
    Demo(DemoArgs),
    /// Asks a running proxy for its health and the state of each upstream credential.
    Status(StatusArgs),
    /// Signs a ChatGPT account in with the device-code flow (or takes over an `auth.json`
    /// with --import) as a login the proxy owns and refreshes: `--credential codex-oauth:NAME`.
    Login(crate::proxy::login::LoginArgs),
}

/// How logs are written; shared by every subcommand.
#[derive(Debug, Clone, Args)]
struct LogArgs {
    /// Log line format: text or json (one JSON object per line). RUST_LOG sets the filter.
    #[arg(long, env = "TR_LOG_FORMAT", value_name = "FORMAT", value_enum)]
    log_format: Option<LogFormat>,
}

/// `tower-responses serve`.
#[derive(Debug, Clone, Args)]
struct ServeArgs {
    /// TOML file with the same settings (flags and TR_* variables win).
    #[arg(long, env = "TR_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8787].
    #[arg(long, env = "TR_LISTEN", value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Upstream base URL with its prefix [default: https://api.openai.com/v1].
    #[arg(long, env = "TR_UPSTREAM", value_name = "URL")]
    upstream: Option<String>,
    /// Upstream profile: openai, chatgpt-codex or generic [default: from the URL].
    #[arg(long, env = "TR_PROFILE", value_name = "NAME")]
    profile: Option<Profile>,
    /// Upstream credential: env:NAME, file:PATH, codex-auth:PATH or a key (a key on the
    /// command line is visible in `ps`). Repeatable; comma-separated in TR_CREDENTIAL.
    #[arg(long = "credential", env = "TR_CREDENTIAL", value_name = "VALUE", value_delimiter = ',', value_parser = parse_member)]
    credentials: Vec<PoolMember>,
    /// How a credential is chosen: round_robin, fill_first, least_used, random, weighted.
    #[arg(long, env = "TR_STRATEGY", value_name = "NAME", value_parser = parse_strategy)]
    strategy: Option<Strategy>,
    /// Inbound bearer key, or env:NAME / file:PATH; needs --credential. Repeatable. Without
    /// any, only loopback clients naming localhost are served.
    #[arg(long = "client-key", env = "TR_CLIENT_KEY", value_name = "KEY", value_delimiter = ',', value_parser = parse_source)]
    client_keys: Vec<CredentialSource>,
    /// A web origin whose pages may call the proxy (repeatable; default none).
    #[arg(
        long = "allowed-origin",
        env = "TR_ALLOWED_ORIGIN",
        value_name = "ORIGIN",
        value_delimiter = ','
    )]
    allowed_origins: Vec<String>,
    /// Largest request body accepted, after decoding, in bytes.
    #[arg(long, env = "TR_BODY_LIMIT", value_name = "BYTES")]
    body_limit: Option<usize>,
    /// How long each upstream attempt may wait for its response head [default: 600].
    #[arg(long, env = "TR_UPSTREAM_TIMEOUT_SECS", value_name = "SECS")]
    upstream_timeout_secs: Option<u64>,
    /// How long a response body may stay silent before it is cut [default: 300].
    #[arg(long, env = "TR_STREAM_IDLE_TIMEOUT_SECS", value_name = "SECS")]
    stream_idle_timeout_secs: Option<u64>,
    /// Upstream connection pool idle timeout [default: 20].
    #[arg(long, env = "TR_POOL_IDLE_TIMEOUT_SECS", value_name = "SECS")]
    pool_idle_timeout_secs: Option<u64>,
    /// How long a client has to send a request head; also the client idle timeout
    /// [default: 30].
    #[arg(long, env = "TR_HEADER_READ_TIMEOUT_SECS", value_name = "SECS")]
    header_read_timeout_secs: Option<u64>,
    /// How long a client has to send its request body [default: 120].
    #[arg(long, env = "TR_BODY_READ_TIMEOUT_SECS", value_name = "SECS")]
    body_read_timeout_secs: Option<u64>,
    /// Most header lines a request may have [default: 100].
    #[arg(long, env = "TR_MAX_HEADERS", value_name = "N")]
    max_headers: Option<usize>,
    /// Most bytes a request head may take, at least 8192 [default: 65536].
    #[arg(long, env = "TR_MAX_HEADER_BYTES", value_name = "BYTES")]
    max_header_bytes: Option<usize>,
    /// Most client connections served at once [default: 512].
    #[arg(long, env = "TR_MAX_CONNECTIONS", value_name = "N")]
    max_connections: Option<usize>,
    /// Where `codex-oauth:NAME` logins live [default: $XDG_DATA_HOME/tower-responses].
    #[arg(long, env = "TR_STATE_DIR", value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// The authority owned logins are refreshed at [default: https://auth.openai.com].
    #[arg(long, env = "TR_AUTH_BASE_URL", value_name = "URL")]
    auth_base_url: Option<String>,
    /// Shared state for several replicas: `redis://HOST:PORT/DB` (needs the `redis`
    /// feature), or `memory` [default: memory, this process only].
    #[arg(long, env = "TR_STATE", value_name = "URL")]
    state: Option<String>,
    /// Prefix of every key in the shared state [default: trs].
    #[arg(long, env = "TR_STATE_PREFIX", value_name = "PREFIX")]
    state_prefix: Option<String>,
    #[command(flatten)]
    log: LogArgs,
}

/// `tower-responses demo`.
#[derive(Debug, Clone, Args)]
struct DemoArgs {
    #[command(flatten)]
    log: LogArgs,
}

/// `tower-responses status`.
#[derive(Debug, Clone, Args)]
pub(super) struct StatusArgs {
    /// The proxy's TOML file: its `listen` address and first client key stand in for --url
    /// and --client-key.
    #[arg(long, env = "TR_CONFIG", value_name = "FILE")]
    pub(super) config: Option<PathBuf>,
    /// The running proxy's address [default: the --config file's listen, else
    /// http://127.0.0.1:8787].
    #[arg(long, env = "TR_STATUS_URL", value_name = "URL")]
    pub(super) url: Option<http::Uri>,
    /// The proxy's client key, if it has any: a key, env:NAME or file:PATH.
    #[arg(long, env = "TR_STATUS_CLIENT_KEY", value_name = "KEY", value_parser = parse_source)]
    pub(super) client_key: Option<CredentialSource>,
    /// How long to wait for the answer.
    #[arg(long, env = "TR_STATUS_TIMEOUT_SECS", value_name = "SECS", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub(super) timeout_secs: u64,
    /// Prints the proxy's JSON answer as it is.
    #[arg(long)]
    pub(super) json: bool,
    #[command(flatten)]
    log: LogArgs,
}

fn parse_member(s: &str) -> Result<PoolMember, String> {
    s.parse::<PoolMember>().map_err(|e| e.to_string())
}

fn parse_source(s: &str) -> Result<CredentialSource, String> {
    s.parse::<CredentialSource>().map_err(|e| e.to_string())
}

fn parse_strategy(s: &str) -> Result<Strategy, String> {
    Ok(
        match s.trim().to_ascii_lowercase().replace('-', "_").as_str() {
            "round_robin" => Strategy::RoundRobin,
            "fill_first" => Strategy::FillFirst,
            "least_used" => Strategy::LeastUsed,
            "random" => Strategy::Random,
            "weighted" => Strategy::Weighted,
            "headroom" => Strategy::Headroom,
            _ => {
                return Err(
                    "expected round_robin, fill_first, least_used, random, weighted or headroom"
                        .to_string(),
                );
            }
        },
    )
}

impl ServeArgs {
    /// The configuration: the TOML file (or the defaults) with every given flag on top.
    fn config(&self) -> Result<ProxyConfig, String> {
        let mut cfg = match &self.config {
            Some(path) => ProxyConfig::from_file(path).map_err(|e| e.to_string())?,
            None => ProxyConfig::default(),
        };
        let set = |field: &mut _, value: &Option<_>| {
            if let Some(v) = value {
                *field = *v;
            }
        };
        if let Some(listen) = self.listen {
            cfg.listen = listen;
        }
        if let Some(upstream) = &self.upstream {
            cfg.upstream = upstream.clone();
        }
        if self.profile.is_some() {
            cfg.profile_override = self.profile;
        }
        if !self.credentials.is_empty() {
            cfg.credentials = self.credentials.clone();
        }
        if let Some(strategy) = self.strategy {
            cfg.strategy = strategy;
        }
        if !self.client_keys.is_empty() {
            cfg.client_keys = self
                .client_keys
                .iter()
                .map(|source| {
                    let key = source.load().map_err(|e| format!("--client-key: {e}"))?;
                    Ok(Secret::new(key.token.expose()))
                })
                .collect::<Result<_, String>>()?;
        }
        if !self.allowed_origins.is_empty() {
            cfg.allowed_origins = self.allowed_origins.clone();
        }
        set(&mut cfg.body_limit, &self.body_limit);
        set(&mut cfg.max_headers, &self.max_headers);
        set(&mut cfg.max_header_bytes, &self.max_header_bytes);
        set(&mut cfg.max_connections, &self.max_connections);
        if self.state_dir.is_some() {
            cfg.state_dir = self.state_dir.clone();
        }
        if self.auth_base_url.is_some() {
            cfg.auth_base_url = self.auth_base_url.clone();
        }
        if self.state.is_some() {
            cfg.state = self.state.clone();
        }
        if self.state_prefix.is_some() {
            cfg.state_prefix = self.state_prefix.clone();
        }
        let set_secs = |field: &mut u64, value: Option<u64>| {
            if let Some(v) = value {
                *field = v;
            }
        };
        set_secs(&mut cfg.upstream_timeout_secs, self.upstream_timeout_secs);
        set_secs(
            &mut cfg.stream_idle_timeout_secs,
            self.stream_idle_timeout_secs,
        );
        set_secs(&mut cfg.pool_idle_timeout_secs, self.pool_idle_timeout_secs);
        set_secs(
            &mut cfg.header_read_timeout_secs,
            self.header_read_timeout_secs,
        );
        set_secs(&mut cfg.body_read_timeout_secs, self.body_read_timeout_secs);
        if let Some(format) = self.log.log_format {
            cfg.log_format = format;
        }
        Ok(cfg)
    }
}

/// Runs the command line with the process's arguments; what the binary and the example call.
pub fn main() -> ExitCode {
    run_from(std::env::args_os())
}

/// Runs the command line with these arguments (the first is the program name).
pub fn run_from<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let matches = match Cli::command().try_get_matches_from(args) {
        Ok(m) => m,
        // --help and --version land here too, with exit code 0; bad values with 2.
        Err(e) => e.exit(),
    };
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        match cli.command {
            Some(Command::Demo(args)) => run_demo(args.log.log_format).await,
            None if cli.demo => run_demo(cli.serve.log.log_format).await,
            Some(Command::Status(args)) => {
                init_logs(args.log.log_format.unwrap_or_default(), "warn");
                status::run(args).await
            }
            Some(Command::Login(args)) => {
                init_logs(LogFormat::Text, "warn");
                crate::proxy::login::run(args).await
            }
            Some(Command::Serve(args)) => {
                let matches = matches.subcommand_matches("serve").unwrap_or(&matches);
                serve(args, matches).await
            }
            None => serve(cli.serve, &matches).await,
        }
    })
}

async fn run_demo(format: Option<LogFormat>) -> ExitCode {
    init_logs(format.unwrap_or_default(), "warn");
    demo::run().await
}

async fn serve(args: ServeArgs, matches: &ArgMatches) -> ExitCode {
    // Only a flag puts a secret in the process list; the environment is the owner's alone.
    let secrets = [
        ("credentials", "--credential"),
        ("client_keys", "--client-key"),
    ];
    for (id, flag) in secrets {
        if matches.value_source(id) != Some(ValueSource::CommandLine) {
            continue;
        }
        for value in matches.get_raw(id).into_iter().flatten() {
            if let Some(warning) = command_line_secret_warning(flag, &value.to_string_lossy()) {
                eprintln!("{warning}");
            }
        }
    }
    let config = match args.config() {
        Ok(c) => c,
        Err(msg) => {
            eprintln!("error: {msg}");
            return ExitCode::from(2);
        }
    };
    init_logs(config.log_format, "info");
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

/// Logs go to stderr, filtered by `RUST_LOG` (else `default_level`).
fn init_logs(format: LogFormat, default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, never into a file or a log shipper.
        .with_ansi(std::io::stderr().is_terminal());
    // `try_init`: a second call (tests running `run_from` twice) keeps the first subscriber.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
    };
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn no_subcommand_is_serve() {
        let cli = Cli::try_parse_from(["tr", "--listen", "127.0.0.1:9", "--upstream", "http://u"])
            .unwrap();
        assert!(cli.command.is_none());
        let cfg = cli.serve.config().unwrap();
        assert_eq!(cfg.listen.port(), 9);
        assert_eq!(cfg.upstream, "http://u");
    }

    #[test]
    fn flags_win_over_the_file() {
        let dir = std::env::temp_dir().join(format!("tr-cli-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("proxy.toml");
        std::fs::write(
            &file,
            "listen = \"127.0.0.1:7000\"\nmax_connections = 3\nlog_format = \"json\"\n",
        )
        .unwrap();
        let path = file.to_str().unwrap();
        let cli = Cli::try_parse_from([
            "tr",
            "serve",
            "--config",
            path,
            "--listen",
            "127.0.0.1:7001",
        ])
        .unwrap();
        let Some(Command::Serve(args)) = cli.command else {
            panic!("serve")
        };
        let cfg = args.config().unwrap();
        assert_eq!(cfg.listen.port(), 7001, "the flag wins");
        assert_eq!(cfg.max_connections, 3, "the file fills what no flag says");
        assert_eq!(cfg.log_format, LogFormat::Json);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_bad_strategy_names_the_choices() {
        let err = Cli::try_parse_from(["tr", "--strategy", "fastest"]).unwrap_err();
        assert!(err.to_string().contains("round_robin"), "{err}");
    }
}
