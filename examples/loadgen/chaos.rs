//! `loadgen chaos`: a soak of many simulated sessions through the full proxy (a child
//! process, three credentials) against the crate's mock upstream, with a fault drawn at random
//! for every request, and invariants checked on every answer and at the end.
//!
//! ```text
//! loadgen chaos [--sessions 200] [--minutes 10] [--quick] [--seed N]
//! ```
//!
//! `--quick` is two minutes. The faults: stale pooled connections (a reused connection reset
//! or closed as the request lands), FIN and RST mid-stream, a loss after the upstream worked
//! on the request, quota and rate-limit soft failures (in `200` streams and as `429`s), bursts
//! of 5xx, slow upstreams, refused remote compactions (the proxy summarizes locally), and
//! clients that go away before the head, after it, or mid-stream. The mock's script keys on
//! `x-chaos` / `x-chaos-id` headers the client sends, which the proxy forwards like any
//! other; a fault hits the first attempt of a request (a 5xx burst the first few), so the
//! proxy's retries meet a healthy upstream.
//!
//! Invariants, each a counted break that makes the run exit 1:
//! - never two `response.created` in one client stream;
//! - nothing after a failure event (`response.failed`, `error`) but another failure event;
//! - every stream ends: `response.completed`/`response.incomplete`, a failure event, or an
//!   HTTP error in the OpenAI envelope (a cut body or a stream that never ends is a break);
//! - never `previous_response_not_found`: the mock's store answers it when a response id is
//!   sent with a credential that does not own it, which is what a proxy that loses track of
//!   owners (or tells a client its anchor is gone after a transport loss) causes;
//! - no secret (any of the three upstream keys) in the proxy's logs, read line by line at
//!   debug level;
//! - a client that goes away has its upstream stream closed within one second, and no
//!   upstream stream is open at the end;
//! - the proxy's open file descriptors return to their count before the load, and its RSS to
//!   within 25% + 16 MiB of its level after the warm-up.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use tower_responses::sse::SseDecoder;
use tower_responses::testing::{
    Fault, MockUpstream, RecordedRequest, Reply, ResponseStore, events,
};

use crate::procfs;

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// The upstream keys, handed to the proxy through its environment (`env:NAME`), and searched
/// for in its logs.
const KEYS: [(&str, &str); 3] = [
    ("CHAOS_KEY_A", "sk-chaos-SECRET-a1f3e9"),
    ("CHAOS_KEY_B", "sk-chaos-SECRET-b27c40"),
    ("CHAOS_KEY_C", "sk-chaos-SECRET-c9d815"),
];

/// The longest any one answer may take before it counts as a stream that never ends.
const ANSWER_DEADLINE: Duration = Duration::from_secs(90);
/// How soon a disconnected client's upstream stream must be closed.
const CANCEL_WITHIN: Duration = Duration::from_secs(1);
/// The fault-laden load before the memory baseline is read.
const WARM_UP: Duration = Duration::from_secs(20);
/// One quota failure at most this often: each puts a credential out for a minute.
const QUOTA_EVERY: Duration = Duration::from_secs(40);

/// What the mock does to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Kind {
    None,
    Stale,
    FinMidStream,
    RstMidStream,
    Lost,
    Quota,
    RateLimit,
    Burst5xx,
    Slow,
    CompactRefused,
    Disconnect,
}

impl Kind {
    const ALL: [Kind; 11] = [
        Kind::None,
        Kind::Stale,
        Kind::FinMidStream,
        Kind::RstMidStream,
        Kind::Lost,
        Kind::Quota,
        Kind::RateLimit,
        Kind::Burst5xx,
        Kind::Slow,
        Kind::CompactRefused,
        Kind::Disconnect,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Kind::None => "none",
            Kind::Stale => "stale_connection",
            Kind::FinMidStream => "fin_mid_stream",
            Kind::RstMidStream => "rst_mid_stream",
            Kind::Lost => "lost_after_working",
            Kind::Quota => "quota",
            Kind::RateLimit => "rate_limit",
            Kind::Burst5xx => "burst_5xx",
            Kind::Slow => "slow_upstream",
            Kind::CompactRefused => "compaction_refused",
            Kind::Disconnect => "client_disconnect",
        }
    }

    fn parse(s: &str) -> Kind {
        Kind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .unwrap_or(Kind::None)
    }

    /// Draws a fault: about half the requests get one.
    fn draw(rng: &mut Rng, last_quota: &Mutex<Option<Instant>>) -> Kind {
        let kind = match rng.below(1000) {
            0..=499 => Kind::None,
            500..=569 => Kind::Stale,
            570..=619 => Kind::FinMidStream,
            620..=669 => Kind::RstMidStream,
            670..=719 => Kind::Lost,
            720..=729 => Kind::Quota,
            730..=769 => Kind::RateLimit,
            770..=829 => Kind::Burst5xx,
            830..=889 => Kind::Slow,
            890..=929 => Kind::CompactRefused,
            _ => Kind::Disconnect,
        };
        if kind == Kind::Quota {
            let mut last = last_quota.lock().unwrap_or_else(|e| e.into_inner());
            if last.is_some_and(|t| t.elapsed() < QUOTA_EVERY) {
                return Kind::None;
            }
            *last = Some(Instant::now());
        }
        kind
    }
}

/// splitmix64: reproducible from `--seed`, no dependency.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

struct Opts {
    sessions: usize,
    duration: Duration,
    seed: u64,
}

fn parse(args: &[String]) -> Result<Opts, String> {
    let get = |name: &str| crate::flag(args, name);
    let quick = args.iter().any(|a| a == "--quick");
    let sessions = match get("--sessions") {
        Some(s) => s.parse().map_err(|_| format!("--sessions {s}"))?,
        None => 200,
    };
    let minutes: f64 = match get("--minutes") {
        Some(m) => m.parse().map_err(|_| format!("--minutes {m}"))?,
        None if quick => 2.0,
        None => 10.0,
    };
    let seed = match get("--seed") {
        Some(s) => s.parse().map_err(|_| format!("--seed {s}"))?,
        None => 21,
    };
    Ok(Opts {
        sessions,
        duration: Duration::from_secs_f64(minutes * 60.0),
        seed,
    })
}

/// `loadgen chaos ...`, and `loadgen chaos serve-proxy --upstream URL` (the child).
pub fn main(args: &[String]) -> i32 {
    if args.first().map(String::as_str) == Some("serve-proxy") {
        return serve_proxy(&args[1..]);
    }
    let opts = match parse(args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("chaos: bad flag {e}");
            return 2;
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("runtime: {e}");
            return 1;
        }
    };
    match rt.block_on(run(opts)) {
        Ok(true) => 0,
        Ok(false) => 1,
        Err(e) => {
            eprintln!("chaos: {e}");
            1
        }
    }
}

/// The proxy under test: the library's `Proxy`, three credentials, compaction on `auto` (a
/// refusal falls back to the local summary), logs at debug on stderr.
fn serve_proxy(args: &[String]) -> i32 {
    use tower_responses::compact::{CompactConfig, RemotePolicy};
    use tower_responses::proxy::ProxyConfig;
    let filter =
        std::env::var("TR_CHAOS_LOG").unwrap_or_else(|_| "info,tower_responses=debug".into());
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let mut credentials = Vec::new();
    for (var, _) in KEYS {
        match format!("env:{var}").parse() {
            Ok(c) => credentials.push(c),
            Err(e) => {
                eprintln!("{e}");
                return 1;
            }
        }
    }
    let config = ProxyConfig {
        listen: ([127, 0, 0, 1], 0).into(),
        upstream: crate::flag(args, "--upstream")
            .unwrap_or_default()
            .to_owned(),
        credentials,
        max_connections: 2048,
        upstream_timeout_secs: 30,
        stream_idle_timeout_secs: 30,
        // Short, so the end of the run sees the upstream pool drain.
        pool_idle_timeout_secs: 5,
        // Every compaction asks the upstream first (a refusal is not remembered), so
        // refusals keep coming.
        compact: CompactConfig {
            remote: RemotePolicy::Always,
            ..CompactConfig::default()
        },
        ..ProxyConfig::default()
    };
    crate::child::serve_child(config, crate::child::Preload::default())
}

/// The mock's side: the store answers, the `x-chaos` header picks the fault.
struct Script {
    store: ResponseStore,
    attempts: Mutex<HashMap<String, u32>>,
    injected: Mutex<HashMap<&'static str, u64>>,
    /// Upstream requests (the mock's own record is cleared as the run goes).
    seen: AtomicU64,
}

impl Script {
    fn count(&self, what: &'static str) {
        *lock(&self.injected).entry(what).or_default() += 1;
    }

    fn answer(&self, r: &RecordedRequest) -> Option<Reply> {
        self.seen.fetch_add(1, Ordering::Relaxed);
        let header = |n: &str| r.headers.get(n).and_then(|v| v.to_str().ok());
        let kind = Kind::parse(header("x-chaos").unwrap_or(""));
        let id = header("x-chaos-id").unwrap_or("").to_owned();
        let attempt = {
            let mut a = lock(&self.attempts);
            // Bounded: old requests' counts are not needed once they are long done.
            if a.len() > 100_000 {
                a.clear();
            }
            let n = a.entry(id).or_default();
            *n += 1;
            *n
        };
        let compact = r.path.ends_with("/responses/compact");
        let summary = String::from_utf8_lossy(&r.body).contains("context checkpoint");
        if compact {
            if kind == Kind::CompactRefused {
                self.count("compaction_refused");
                return Some(Reply::json(
                    StatusCode::BAD_REQUEST,
                    json!({"error": {"message": "The model gpt-chaos is not supported for compaction",
                        "type": "invalid_request_error", "param": "model", "code": "unsupported_model"}}),
                ));
            }
            return None; // the mock's own compaction answer
        }
        let normal = || self.store.answer(r);
        // The local summary of a refused compaction and retries meet a healthy upstream.
        if summary || kind == Kind::CompactRefused {
            return normal();
        }
        let first = attempt == 1;
        let reply = match kind {
            Kind::Stale if first && r.conn_request_index > 0 => {
                // A provider that forgot a pooled connection: reset or closed as it lands.
                if r.conn_id % 2 == 0 {
                    self.count("stale_connection_reset");
                    Reply::fault(Fault::ResetAfterRead)
                } else {
                    self.count("stale_connection_fin");
                    Reply::fault(Fault::CloseAfterRead)
                }
            }
            Kind::FinMidStream if first => {
                self.count("fin_mid_stream");
                normal()?.close_mid_stream(1 + (attempt as usize + r.conn_id as usize) % 5)
            }
            Kind::RstMidStream if first => {
                self.count("rst_mid_stream");
                normal()?.reset_mid_stream(1 + (r.conn_id as usize) % 5)
            }
            Kind::Lost if first => {
                self.count("lost_after_working");
                Reply::fault(Fault::CloseAfterWorking(Duration::from_millis(30)))
            }
            Kind::Quota if first => {
                if r.conn_id % 2 == 0 {
                    self.count("quota_http_429");
                    Reply::json(
                        StatusCode::TOO_MANY_REQUESTS,
                        json!({"error": {"type": "usage_limit_reached",
                            "message": "The usage limit has been reached", "resets_in_seconds": 60}}),
                    )
                } else {
                    self.count("quota_in_stream");
                    let id = format!("resp_quota_{}", r.conn_id);
                    Reply::sse(vec![
                        events::created(&id),
                        events::failed(
                            &id,
                            "usage_limit_reached",
                            "The usage limit has been reached. Try again in 60s.",
                        ),
                    ])
                }
            }
            Kind::RateLimit if first => {
                if r.conn_id % 2 == 0 {
                    self.count("rate_limit_http_429");
                    Reply::json(
                        StatusCode::TOO_MANY_REQUESTS,
                        json!({"error": {"type": "requests", "code": "rate_limit_exceeded",
                            "message": "Rate limit reached for gpt-chaos. Please try again in 1s."}}),
                    )
                } else {
                    self.count("rate_limit_in_stream");
                    let id = format!("resp_rl_{}", r.conn_id);
                    Reply::sse(vec![
                        events::created(&id),
                        events::in_progress(&id),
                        events::failed(
                            &id,
                            "rate_limit_exceeded",
                            "Rate limit reached for gpt-chaos. Please try again in 1s.",
                        ),
                    ])
                }
            }
            // A burst: the first one to three attempts of this request.
            Kind::Burst5xx if attempt <= 1 + (r.conn_id as u32 % 3) => {
                self.count("server_error_5xx");
                let status = [
                    StatusCode::INTERNAL_SERVER_ERROR,
                    StatusCode::BAD_GATEWAY,
                    StatusCode::SERVICE_UNAVAILABLE,
                ][r.conn_id as usize % 3];
                Reply::json(
                    status,
                    json!({"error": {"type": "server_error", "code": "server_error",
                        "message": "The server had an error while processing your request."}}),
                )
            }
            Kind::Slow => {
                self.count("slow_upstream");
                if r.conn_id % 2 == 0 {
                    normal()?.paced(Duration::from_millis(40 + r.conn_id % 120))
                } else {
                    normal()?.first_event_then_wait(Duration::from_millis(500 + r.conn_id % 2000))
                }
            }
            // Slow enough that the client can leave at any point of it.
            Kind::Disconnect => normal()?.paced(Duration::from_millis(150)),
            _ => normal()?,
        };
        Some(reply)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What the client side saw.
#[derive(Default)]
struct Tally {
    requests: AtomicU64,
    drawn: Mutex<HashMap<&'static str, u64>>,
    outcomes: Mutex<HashMap<String, u64>>,
    breaks: Mutex<HashMap<String, u64>>,
    break_samples: Mutex<Vec<String>>,
    cancel_worst: Mutex<Duration>,
    cancel_checked: AtomicU64,
}

impl Tally {
    fn outcome(&self, what: impl Into<String>) {
        *lock(&self.outcomes).entry(what.into()).or_default() += 1;
    }

    fn broke(&self, what: &str, detail: String) {
        *lock(&self.breaks).entry(what.to_owned()).or_default() += 1;
        let mut samples = lock(&self.break_samples);
        let same = samples.iter().filter(|s| s.starts_with(what)).count();
        if samples.len() < 30 && same < 3 {
            samples.push(format!("{what}: {detail}"));
        }
    }

    fn breaks(&self) -> u64 {
        lock(&self.breaks).values().sum()
    }
}

struct Ctx {
    client: HttpClient,
    proxy: String,
    mock: MockUpstream,
    tally: Tally,
    last_quota: Mutex<Option<Instant>>,
}

/// How one answer ended, as far as the session cares.
enum Ended {
    /// `response.completed` with this id.
    Completed(String),
    /// An HTTP error with a `Retry-After`: a client waits that long (capped) before its next
    /// request, as the Codex CLI and the SDKs do.
    RetryAfter(Duration),
    /// Anything else (a failure event, an HTTP error, a disconnect of ours).
    Other,
}

async fn run(opts: Opts) -> Result<bool, String> {
    let mock = MockUpstream::start().await.map_err(|e| e.to_string())?;
    let script = Arc::new(Script {
        store: ResponseStore::new(100),
        attempts: Mutex::default(),
        injected: Mutex::default(),
        seen: AtomicU64::new(0),
    });
    let s = script.clone();
    mock.set_handler(move |r| s.answer(r));

    let mut child = spawn_proxy(&mock.base_url())?;
    let pid = child.id();
    let logs = watch_logs(&mut child);
    let addr = read_ready(&mut child)?;
    let ticks = procfs::clock_ticks();
    println!(
        "chaos: proxy pid {pid} on {addr}, {} sessions for {:.1} min, seed {}",
        opts.sessions,
        opts.duration.as_secs_f64() / 60.0,
        opts.seed
    );

    let client: HttpClient = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(opts.sessions * 2)
        .pool_idle_timeout(Duration::from_secs(30))
        .build_http();
    let ctx = Arc::new(Ctx {
        client,
        proxy: format!("http://{addr}"),
        mock: mock.clone(),
        tally: Tally::default(),
        last_quota: Mutex::new(None),
    });

    // Baselines: descriptors before any load; memory after a fault-free warm-up.
    let fds_start = fd_count(pid);
    let rss_start = procfs::usage(pid, ticks).rss;
    // The warm-up is the same traffic, faults included (and counted in the summary): what
    // is left above its level after the soak grew with the traffic.
    let warm = run_sessions(&ctx, opts.sessions, WARM_UP, opts.seed ^ 0x5eed, true).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_warm = procfs::usage(pid, ticks).rss;
    println!(
        "chaos: warm-up {warm} requests; proxy RSS {} MiB -> {} MiB, {fds_start} fds",
        rss_start >> 20,
        rss_warm >> 20
    );

    let started = Instant::now();
    let began = started.checked_sub(WARM_UP).unwrap_or(started);
    let peak_rss = Arc::new(AtomicU64::new(rss_warm));
    let sampler = {
        let ctx = ctx.clone();
        let peak_rss = peak_rss.clone();
        tokio::spawn(async move {
            let mut tick = 0u64;
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                tick += 1;
                // The mock records every request: forget them, or this process grows.
                ctx.mock.clear_requests();
                let rss = procfs::usage(pid, ticks).rss;
                peak_rss.fetch_max(rss, Ordering::Relaxed);
                if tick % 30 == 0 {
                    println!(
                        "chaos: {tick:>4}s {} requests, {} breaks, proxy RSS {} MiB, {} fds, {} upstream streams open",
                        ctx.tally.requests.load(Ordering::Relaxed),
                        ctx.tally.breaks(),
                        rss >> 20,
                        fd_count(pid),
                        ctx.mock.stream_stats().open,
                    );
                }
            }
        })
    };
    run_sessions(&ctx, opts.sessions, opts.duration, opts.seed, true).await;
    sampler.abort();
    let _ = sampler.await;
    let soak = started.elapsed();
    let total = began.elapsed();

    // End state: no upstream stream open, descriptors and memory back.
    let open_at_end = wait_for(Duration::from_secs(2), || mock.stream_stats().open == 0).await;
    let stats = mock.stream_stats();
    if !open_at_end {
        for s in mock.open_streams().iter().take(5) {
            ctx.tally.broke(
                "upstream stream open at the end",
                format!("{} {} bytes", s.request.path, s.bytes_sent),
            );
        }
        ctx.tally.broke(
            "upstream streams open at the end",
            format!("{}", stats.open),
        );
    }
    let ctx = match Arc::try_unwrap(ctx) {
        Ok(c) => c,
        Err(_) => return Err("sessions still hold the client".into()),
    };
    let Ctx { client, tally, .. } = ctx;
    drop(client); // closes the client's keep-alive connections
    let fds_back = wait_for(Duration::from_secs(30), || fd_count(pid) <= fds_start + 4).await;
    let fds_end = fd_count(pid);
    if !fds_back {
        tally.broke(
            "open fds did not return to baseline",
            format!("{fds_start} before, {fds_end} after"),
        );
    }
    let rss_end = procfs::usage(pid, ticks).rss;
    let rss_limit = rss_warm + rss_warm / 4 + (16 << 20);
    if rss_end > rss_limit {
        tally.broke(
            "RSS did not return to baseline",
            format!("{} MiB warm, {} MiB after", rss_warm >> 20, rss_end >> 20),
        );
    }
    let _ = child.kill();
    let _ = child.wait();
    // The log reader ends with the child's stderr.
    let logs = logs.join().unwrap_or_default();
    if logs.secret_lines > 0 {
        tally.broke(
            "secret in the proxy's logs",
            format!("{} lines, first: {}", logs.secret_lines, logs.first_secret),
        );
    }
    if logs.panics > 0 {
        tally.broke("the proxy panicked", format!("{} times", logs.panics));
    }
    if logs.lines == 0 {
        tally.broke("no proxy logs captured", String::new());
    }

    // Summary.
    let requests = tally.requests.load(Ordering::Relaxed);
    println!(
        "\n## chaos soak: {} sessions, {:.1} min (after a {} s warm-up with the same faults), seed {}",
        opts.sessions,
        soak.as_secs_f64() / 60.0,
        WARM_UP.as_secs(),
        opts.seed
    );
    println!(
        "\nclient requests: {requests} ({:.0}/s), upstream requests: {}, upstream streams: {} ({} cancelled by the proxy)",
        requests as f64 / total.as_secs_f64(),
        script.seen.load(Ordering::Relaxed),
        stats.total,
        stats.cancelled
    );
    println!("\n| drawn for the client's request | count |\n|---|---|");
    print_sorted(
        &lock(&tally.drawn)
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect(),
    );
    println!("\n| injected by the mock | count |\n|---|---|");
    print_sorted(
        &lock(&script.injected)
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect(),
    );
    println!("\n| client saw | count |\n|---|---|");
    print_sorted(&lock(&tally.outcomes).clone());
    println!("\n| check | result |\n|---|---|");
    let worst = *lock(&tally.cancel_worst);
    println!(
        "| disconnects checked for upstream cancel | {} (slowest {} ms) |",
        tally.cancel_checked.load(Ordering::Relaxed),
        worst.as_millis()
    );
    println!("| upstream streams open at the end | {} |", stats.open);
    println!("| proxy fds | {fds_start} before, {fds_end} after |");
    println!(
        "| proxy RSS | {} MiB start, {} MiB warm, {} MiB peak, {} MiB after |",
        rss_start >> 20,
        rss_warm >> 20,
        peak_rss.load(Ordering::Relaxed) >> 20,
        rss_end >> 20
    );
    println!(
        "| proxy log lines scanned | {} ({} with a secret) |",
        logs.lines, logs.secret_lines
    );
    if !logs.conn_errors.is_empty() {
        println!("\n| proxy log: client connections ended by | count |\n|---|---|");
        print_sorted(&logs.conn_errors);
    }
    for w in &logs.warnings {
        println!("  proxy error: {w}");
    }
    let breaks = lock(&tally.breaks).clone();
    if breaks.is_empty() {
        println!("\nchaos: every invariant held");
        Ok(true)
    } else {
        println!("\n| invariant broken | count |\n|---|---|");
        print_sorted(&breaks);
        for s in lock(&tally.break_samples).iter() {
            println!("  {s}");
        }
        Ok(false)
    }
}

fn print_sorted(m: &HashMap<String, u64>) {
    let mut v: Vec<_> = m.iter().collect();
    v.sort();
    for (k, n) in v {
        println!("| {k} | {n} |");
    }
}

async fn wait_for(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

fn spawn_proxy(upstream: &str) -> Result<Child, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut cmd = Command::new(exe);
    cmd.args(["chaos", "serve-proxy", "--upstream", upstream])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (var, key) in KEYS {
        cmd.env(var, key);
    }
    cmd.spawn().map_err(|e| format!("spawn proxy: {e}"))
}

fn read_ready(child: &mut Child) -> Result<String, String> {
    let out = child.stdout.take().ok_or("no stdout")?;
    let mut line = String::new();
    BufReader::new(out)
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    line.strip_prefix("READY ")
        .map(|a| a.trim().to_owned())
        .ok_or_else(|| format!("proxy did not start: {line:?}"))
}

#[derive(Default)]
struct LogScan {
    lines: u64,
    secret_lines: u64,
    first_secret: String,
    /// Counts of what ended client connections with an error (the proxy logs it at debug).
    conn_errors: HashMap<String, u64>,
    warnings: Vec<String>,
    panics: u64,
}

/// Reads the proxy's stderr line by line (nothing kept but counts and a few samples), looking
/// for any key or its distinctive part.
fn watch_logs(child: &mut Child) -> std::thread::JoinHandle<LogScan> {
    let err = child.stderr.take();
    std::thread::spawn(move || {
        let mut scan = LogScan::default();
        let Some(err) = err else { return scan };
        // Each key, and its distinctive tail (`SECRET-a1f3e9`): long enough that a request
        // id's hex never matches by chance (a six-character tail did, in a UUID).
        let needles: Vec<&str> = KEYS
            .iter()
            .flat_map(|(_, k)| [*k, &k[k.len() - 13..]])
            .collect();
        for line in BufReader::new(err).lines() {
            let Ok(line) = line else { break };
            scan.lines += 1;
            if let Some(at) = line.find("client connection ended with an error") {
                let what = line[at..].chars().take(160).collect::<String>();
                *scan.conn_errors.entry(what).or_default() += 1;
            }
            if line.contains("panicked at") {
                scan.panics += 1;
            }
            if (line.contains(" ERROR ") || line.contains("panicked at"))
                && scan.warnings.len() < 10
            {
                scan.warnings.push(line.chars().take(300).collect());
            }
            if needles.iter().any(|n| line.contains(n)) {
                scan.secret_lines += 1;
                if scan.first_secret.is_empty() {
                    scan.first_secret = line.chars().take(300).collect();
                }
            }
        }
        scan
    })
}

/// Runs `n` sessions until `duration` has passed; returns the requests they made.
async fn run_sessions(
    ctx: &Arc<Ctx>,
    n: usize,
    duration: Duration,
    seed: u64,
    faults: bool,
) -> u64 {
    let before = ctx.tally.requests.load(Ordering::Relaxed);
    let deadline = Instant::now() + duration;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let ctx = ctx.clone();
        let seed = seed.wrapping_mul(1_000_003).wrapping_add(i as u64) ^ (faults as u64) << 63;
        tasks.spawn(session(ctx, i, seed, deadline, faults));
    }
    while let Some(r) = tasks.join_next().await {
        if let Err(e) = r {
            ctx.tally.broke("session task panicked", e.to_string());
        }
    }
    ctx.tally.requests.load(Ordering::Relaxed) - before
}

async fn session(ctx: Arc<Ctx>, index: usize, seed: u64, deadline: Instant, faults: bool) {
    let mut rng = Rng::new(seed);
    let session_id = format!("chaos-{seed:016x}-{index}");
    let mut prev: Option<String> = None;
    // An injected loss since this session's last completed turn.
    let mut lost = false;
    let mut turn = 0u64;
    let mut last_kind = Kind::None;
    while Instant::now() < deadline {
        turn += 1;
        let kind = if faults {
            Kind::draw(&mut rng, &ctx.last_quota)
        } else {
            Kind::None
        };
        *lock(&ctx.tally.drawn).entry(kind.as_str()).or_default() += 1;
        ctx.tally.requests.fetch_add(1, Ordering::Relaxed);
        let id = format!("{session_id}-{turn}");
        let before = Before {
            prev: prev.as_deref(),
            lost,
            kind: last_kind.as_str(),
        };
        let ended = turn_once(&ctx, &mut rng, kind, &id, &session_id, &before).await;
        last_kind = kind;
        match ended {
            Ended::Completed(resp) if kind != Kind::CompactRefused => {
                prev = Some(resp);
                lost = false;
            }
            Ended::RetryAfter(wait) => tokio::time::sleep(wait.min(Duration::from_secs(2))).await,
            _ => {}
        }
        if matches!(kind, Kind::Lost | Kind::FinMidStream | Kind::RstMidStream) {
            lost = true;
        }
        tokio::time::sleep(Duration::from_millis(rng.below(30))).await;
    }
}

/// What a session's earlier turns left for this one.
struct Before<'a> {
    /// The last completed response: this turn's `previous_response_id`.
    prev: Option<&'a str>,
    /// An injected loss since then.
    lost: bool,
    /// The previous request's fault, named in break reports.
    kind: &'a str,
}

async fn turn_once(
    ctx: &Ctx,
    rng: &mut Rng,
    kind: Kind,
    id: &str,
    session: &str,
    before: &Before<'_>,
) -> Ended {
    let Before {
        prev,
        lost,
        kind: after,
    } = *before;
    let compact = kind == Kind::CompactRefused;
    let stream = compact || rng.below(10) != 0;
    let text = format!("turn {id}: fix the failing test and run cargo test");
    let mut body = json!({
        "model": "gpt-chaos",
        "input": [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}],
        "stream": stream,
        "store": true,
        "prompt_cache_key": session,
    });
    if let Some(p) = prev {
        body["previous_response_id"] = json!(p);
    }
    let path = if compact {
        // A v1 (JSON) compaction of a short history; refused, it is summarized locally.
        body = json!({"model": "gpt-chaos", "input": body["input"].clone(), "instructions": "compact"});
        "/v1/responses/compact"
    } else {
        "/v1/responses"
    };
    let req = Request::post(format!("{}{path}", ctx.proxy))
        .header("content-type", "application/json")
        .header("session_id", session)
        .header("x-chaos", kind.as_str())
        .header("x-chaos-id", id)
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("a valid request");

    if kind == Kind::Disconnect {
        disconnect(ctx, rng, req, id).await;
        ctx.tally.outcome("disconnected (by the client)");
        return Ended::Other;
    }
    match tokio::time::timeout(ANSWER_DEADLINE, answer(ctx, req, stream, lost, after)).await {
        Ok(ended) => ended,
        Err(_) => {
            ctx.tally
                .broke("answer never ended", format!("{id} ({})", kind.as_str()));
            Ended::Other
        }
    }
}

/// Leaves before the head, after it, or after a few body frames, then checks that the
/// upstream stream of this request closes within a second.
async fn disconnect(ctx: &Ctx, rng: &mut Rng, req: Request<Full<Bytes>>, id: &str) {
    let point = rng.below(3);
    let fut = ctx.client.request(req);
    match point {
        0 => {
            let wait = Duration::from_millis(50 + rng.below(400));
            let _ = tokio::time::timeout(wait, fut).await;
        }
        _ => {
            if let Ok(Ok(res)) = tokio::time::timeout(ANSWER_DEADLINE, fut).await {
                let mut body = res.into_body();
                for _ in 0..(point - 1) * (1 + rng.below(4)) {
                    match tokio::time::timeout(ANSWER_DEADLINE, body.frame()).await {
                        Ok(Some(Ok(_))) => {}
                        _ => break,
                    }
                }
            }
        }
    }
    // Dropped: the client's connection is gone. Its upstream stream must follow.
    let left = Instant::now();
    let mine = |s: &tower_responses::testing::OpenStream| {
        s.request
            .headers
            .get("x-chaos-id")
            .is_some_and(|v| v.as_bytes() == id.as_bytes())
    };
    let closed = wait_for(CANCEL_WITHIN, || !ctx.mock.open_streams().iter().any(mine)).await;
    let took = left.elapsed();
    ctx.tally.cancel_checked.fetch_add(1, Ordering::Relaxed);
    {
        let mut worst = lock(&ctx.tally.cancel_worst);
        *worst = (*worst).max(took);
    }
    if !closed {
        ctx.tally.broke(
            "upstream not cancelled within 1 s of a disconnect",
            format!("{id} (left at point {point})"),
        );
    }
}

async fn answer(
    ctx: &Ctx,
    req: Request<Full<Bytes>>,
    stream: bool,
    lost: bool,
    after: &str,
) -> Ended {
    let header = |n: &str| {
        req.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    // The request's id and its fault, as every break names them.
    let id = format!("{} ({})", header("x-chaos-id"), header("x-chaos"));
    let res = match ctx.client.request(req).await {
        Ok(res) => res,
        Err(e) => {
            let source = std::error::Error::source(&e)
                .map(|s| format!(": {s}"))
                .unwrap_or_default();
            ctx.tally.broke(
                "no answer from the proxy",
                format!("{id}: {e}{source} (the previous request: {after})"),
            );
            return Ended::Other;
        }
    };
    let status = res.status();
    let is_sse = tower_responses::sse::is_event_stream(res.headers());
    let retry_after = res
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if status != StatusCode::OK || !is_sse {
        let body = match res.into_body().collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => {
                ctx.tally
                    .broke("answer body cut", format!("{id} {status}: {e}"));
                return Ended::Other;
            }
        };
        let ended = json_answer(ctx, &id, status, &body, stream, lost);
        return match (ended, retry_after) {
            (Ended::Other, Some(secs)) => Ended::RetryAfter(Duration::from_secs(secs)),
            (ended, _) => ended,
        };
    }
    let mut decoder = SseDecoder::new();
    let mut body = res.into_body();
    let mut check = StreamCheck::default();
    loop {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    decoder.push(data);
                }
            }
            Some(Err(e)) => {
                ctx.tally.broke(
                    "stream cut without an end event",
                    format!("{id} after {} events: {e}", check.events),
                );
                return Ended::Other;
            }
            None => break,
        }
        loop {
            match decoder.next_event() {
                Ok(Some(ev)) => {
                    check.event(ctx, &id, ev.event_type().unwrap_or(""), &ev.data, lost)
                }
                Ok(None) => break,
                Err(e) => {
                    ctx.tally
                        .broke("invalid SSE from the proxy", format!("{id}: {e}"));
                    return Ended::Other;
                }
            }
        }
    }
    if let Ok(Some(ev)) = decoder.finish() {
        check.event(ctx, &id, ev.event_type().unwrap_or(""), &ev.data, lost);
    }
    match check.end {
        Some(End::Completed(resp)) => {
            ctx.tally.outcome("stream: response.completed");
            Ended::Completed(resp)
        }
        Some(End::Incomplete) => {
            ctx.tally.outcome("stream: response.incomplete");
            Ended::Other
        }
        Some(End::Failed(code)) => {
            ctx.tally.outcome(format!("stream: failure event ({code})"));
            Ended::Other
        }
        None => {
            ctx.tally.broke(
                "stream ended without an end event",
                format!("{id} after {} events", check.events),
            );
            Ended::Other
        }
    }
}

enum End {
    Completed(String),
    Incomplete,
    Failed(String),
}

#[derive(Default)]
struct StreamCheck {
    events: usize,
    created: usize,
    end: Option<End>,
}

impl StreamCheck {
    fn event(&mut self, ctx: &Ctx, id: &str, ty: &str, data: &Bytes, lost: bool) {
        self.events += 1;
        let failure = matches!(ty, "response.failed" | "error");
        if matches!(self.end, Some(End::Failed(_))) && !failure {
            ctx.tally
                .broke("content after a failure event", format!("{id}: {ty}"));
        } else if matches!(self.end, Some(End::Completed(_) | End::Incomplete)) {
            ctx.tally
                .broke("events after the terminal event", format!("{id}: {ty}"));
        }
        let v: Value = serde_json::from_slice(data).unwrap_or(Value::Null);
        match ty {
            "response.created" => {
                self.created += 1;
                if self.created == 2 {
                    ctx.tally
                        .broke("two response.created in one stream", id.to_owned());
                }
            }
            "response.completed" => {
                let resp = v["response"]["id"].as_str().unwrap_or("").to_owned();
                self.end.get_or_insert(End::Completed(resp));
            }
            "response.incomplete" => {
                self.end.get_or_insert(End::Incomplete);
            }
            "response.failed" | "error" => {
                let code = v["response"]["error"]["code"]
                    .as_str()
                    .or(v["code"].as_str())
                    .or(v["error"]["code"].as_str())
                    .unwrap_or("none")
                    .to_owned();
                if code == "previous_response_not_found" {
                    not_found(ctx, id, lost);
                }
                if !matches!(self.end, Some(End::Failed(_))) {
                    self.end = Some(End::Failed(code));
                }
            }
            _ => {}
        }
    }
}

fn not_found(ctx: &Ctx, id: &str, lost: bool) {
    let what = if lost {
        "previous_response_not_found after an injected loss"
    } else {
        "previous_response_not_found"
    };
    ctx.tally.broke(what, id.to_owned());
}

fn json_answer(
    ctx: &Ctx,
    id: &str,
    status: StatusCode,
    body: &[u8],
    stream: bool,
    lost: bool,
) -> Ended {
    let v: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(_) => {
            ctx.tally.broke(
                "answer is neither SSE nor JSON",
                format!(
                    "{id} {status}: {}",
                    String::from_utf8_lossy(&body[..body.len().min(200)])
                ),
            );
            return Ended::Other;
        }
    };
    if status == StatusCode::OK {
        // A v1 compaction answers `{"output": [..., {"type": "compaction"}]}`.
        let compaction = v["object"] == "response.compaction"
            || v.get("object").is_none()
                && v["output"]
                    .as_array()
                    .is_some_and(|o| o.iter().any(|i| i["type"] == "compaction"));
        if stream && !compaction {
            ctx.tally
                .broke("a stream answered with JSON", format!("{id}: {v}"));
        }
        let done = v["object"] == "response" && v["status"] == "completed";
        ctx.tally.outcome(if compaction {
            "json: compaction"
        } else if done {
            "json: completed response"
        } else {
            "json: other"
        });
        return match v["id"].as_str() {
            Some(resp) if done => Ended::Completed(resp.to_owned()),
            _ => Ended::Other,
        };
    }
    let code = v["error"]["code"].as_str().unwrap_or("none");
    if !v["error"]["message"].is_string() || !v["error"]["type"].is_string() {
        ctx.tally.broke(
            "HTTP error outside the OpenAI envelope",
            format!("{id} {status}: {v}"),
        );
    }
    if code == "previous_response_not_found" {
        not_found(ctx, id, lost);
    }
    ctx.tally
        .outcome(format!("http {}: {code}", status.as_u16()));
    Ended::Other
}
