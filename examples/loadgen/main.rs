//! Load harness: the same Responses traffic straight to a mock upstream (the baseline) and
//! through each proxy under test, on loopback, in one run; prints markdown tables.
//!
//! ```text
//! loadgen run [--quick] [--out FILE] [--targets baseline,passthrough,tower-responses,nginx,litellm]
//!             [--nginx BIN] [--litellm BIN] [--litellm-workers N] [--streams N] [--rounds N]
//! loadgen serve-mock                        # the fast mock upstream (prints READY <addr>)
//! loadgen serve-static [--nginx BIN]       # nginx serving the 60-event answer in one write
//! loadgen serve-passthrough --upstream ADDR # bare hyper-util proxy
//! loadgen serve-proxy --upstream URL        # tower_responses::proxy::Proxy, full stack
//! loadgen drive --addr ADDR [--requests N] [--concurrency C] [--no-stream]
//!               [--max-output-tokens N] [--sessions N]  # load only, for profiling
//! loadgen serve-proxy --upstream URL --preload-ids N --preload-sessions N
//!                                           # the same, its state filled first
//! loadgen side [--quick] [--rounds N] [--secs S] [--nginx BIN] [--wrk BIN] [--out FILE]
//!                                           # against nginx, pinned, on two upstreams
//! loadgen wrk-script                        # the wrk script `side` loads targets with
//! ```
//!
//! Every target runs as a child process of the harness so its CPU time and memory can be
//! read from /proc apart from the load client's and the mock's. `scripts/bench.sh` installs
//! nginx and LiteLLM and runs the whole thing; BENCHMARKS.md explains the method.

mod chaos;
mod child;
mod client;
mod mock;
mod paired;
mod passthrough;
mod procfs;

// The allocator of the `tower-responses` binary, so `serve-proxy` measures what users run.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
mod side;
mod targets;

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use client::{Sample, Target};
use tokio::net::TcpListener;

const TARGETS: [&str; 6] = [
    "baseline",
    "passthrough",
    "tower-responses",
    "tower-responses-capped",
    "nginx",
    "litellm",
];

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // Every target is a child of this process and inherits the limit.
    if let Some(n) = procfs::raise_fd_limit().filter(|n| *n < procfs::WANTED_FDS) {
        eprintln!(
            "note: {n} descriptors per process (wanted {})",
            procfs::WANTED_FDS
        );
    }
    let code = match args.first().map(String::as_str) {
        Some("serve-mock") => serve(Serve::Mock, &args[1..]),
        Some("serve-passthrough") => serve(Serve::Passthrough, &args[1..]),
        Some("serve-proxy") => serve_proxy(&args[1..]),
        Some("serve-static") => side::serve_static(&args[1..]),
        Some("run") => run(&args[1..]),
        Some("side") => side::run(&args[1..]),
        Some("wrk-script") => side::print_wrk_script(),
        Some("drive") => drive(&args[1..]),
        Some("chaos") => chaos::main(&args[1..]),
        _ => {
            eprintln!(
                "usage: loadgen run [--quick] [--out FILE] [--targets LIST] [--nginx BIN] \
                 [--litellm BIN] [--litellm-workers N] [--streams N] [--rounds N]\n       \
                 loadgen side [--quick] [--rounds N] [--secs S] [--nginx BIN] [--wrk BIN]\n       \
                 loadgen serve-mock | serve-passthrough --upstream ADDR | serve-proxy --upstream URL"
            );
            2
        }
    };
    std::process::exit(code);
}

fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

enum Serve {
    Mock,
    Passthrough,
}

/// `serve-proxy`: the heaviest configuration, as a child of the harness.
fn serve_proxy(args: &[String]) -> i32 {
    use tower_responses::profile::Profile;
    use tower_responses::proxy::ProxyConfig;
    let credential = match "sk-bench-upstream".parse() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return 1;
        }
    };
    // The Codex backend's rules (JSON rewriting, max_output_tokens enforced on the stream),
    // one credential so rotation and continuity are on, soft-failure hold-back, compaction
    // routing.
    let config = ProxyConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        upstream: flag(args, "--upstream").unwrap_or_default().to_owned(),
        profile_override: Some(Profile::ChatgptCodex),
        credentials: vec![credential],
        // Above the default (512) so `--streams 10000` measures streams, not the
        // connection limit.
        max_connections: 20_000,
        ..ProxyConfig::default()
    };
    child::serve_child(config, child::Preload::from_args(args))
}

fn serve(what: Serve, args: &[String]) -> i32 {
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("runtime: {e}");
            return 1;
        }
    };
    let upstream = flag(args, "--upstream").unwrap_or_default().to_owned();
    let result: Result<(), String> = rt.block_on(async move {
        match what {
            Serve::Mock | Serve::Passthrough => {
                let listener = TcpListener::bind("127.0.0.1:0")
                    .await
                    .map_err(|e| e.to_string())?;
                println!(
                    "READY {}",
                    listener.local_addr().map_err(|e| e.to_string())?
                );
                if let Serve::Mock = what {
                    mock::serve(listener).await;
                } else {
                    passthrough::serve(listener, upstream).await;
                }
                Ok(())
            }
        }
    });
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("{e}");
            1
        }
    }
}

/// Durations and sizes of the phases.
struct Plan {
    c1_warmup: usize,
    c1: Duration,
    c64: Duration,
    open_rate: f64,
    open: Duration,
    drain: Duration,
    paced: Duration,
    streams: usize,
    stream_pacing_ms: u64,
    stream_deltas: usize,
}

impl Plan {
    fn new(quick: bool, streams: Option<usize>) -> Plan {
        let s = |full: u64, q: u64| Duration::from_millis(if quick { q } else { full });
        Plan {
            c1_warmup: if quick { 30 } else { 200 },
            c1: s(3000, 800),
            c64: s(4000, 1200),
            open_rate: if quick { 200.0 } else { 500.0 },
            open: s(3000, 1000),
            drain: s(5000, 3000),
            paced: s(2000, 800),
            streams: streams.unwrap_or(if quick { 200 } else { 1000 }),
            stream_pacing_ms: 250,
            stream_deltas: 20,
        }
    }

    fn models(&self) -> Vec<String> {
        vec![
            mock::model_name(0, 50),
            mock::model_name(5, 50),
            mock::model_name(self.stream_pacing_ms, self.stream_deltas),
        ]
    }
}

#[derive(Default)]
struct Streams {
    n: usize,
    opened_at_probe: usize,
    ok: usize,
    stalled: usize,
    failed: usize,
    unfinished: usize,
    max_gap_p99: Duration,
    max_gap: Duration,
    rss_before: u64,
    rss_open: u64,
}

#[derive(Default)]
struct Outcome {
    name: String,
    error: Option<String>,
    c1: Vec<Sample>,
    c64: Vec<Sample>,
    c64_wall: Duration,
    c64_cpu: f64,
    peak_rss: u64,
    open: Vec<Sample>,
    open_unfinished: usize,
    paced: Vec<Sample>,
    streams: Streams,
}

fn run(args: &[String]) -> i32 {
    let quick = args.iter().any(|a| a == "--quick");
    let plan = Plan::new(quick, flag(args, "--streams").and_then(|v| v.parse().ok()));
    let wanted: Vec<String> = flag(args, "--targets")
        .map(|t| t.split(',').map(str::to_owned).collect())
        .unwrap_or_else(|| TARGETS.iter().map(|s| s.to_string()).collect());
    let nginx_bin = flag(args, "--nginx").unwrap_or("nginx").to_owned();
    let litellm_bin = flag(args, "--litellm").map(str::to_owned);
    let litellm_workers: usize = flag(args, "--litellm-workers")
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let ticks = procfs::clock_ticks();
    // A proxy holds two descriptors per stream (client and upstream connection); past the
    // limit it cannot accept or connect, and streams fail or wait for reasons of the machine.
    if let Some(fds) = procfs::raise_fd_limit() {
        let needed = plan.streams as u64 * 2 + 64;
        if fds < needed {
            eprintln!(
                "warning: {} streams need about {needed} descriptors in a proxy; this machine \
                 allows {fds} per process (hard limit, not raisable without CAP_SYS_RESOURCE)",
                plan.streams
            );
        }
    }

    let mock = match targets::spawn_self(&["serve-mock"]) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("{e}");
            return 1;
        }
    };
    eprintln!("mock upstream on {} (pid {})", mock.addr, mock.pid);
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("runtime: {e}");
            return 1;
        }
    };

    let mut outcomes = Vec::new();
    for name in &wanted {
        eprintln!("== {name}");
        let mut out = Outcome {
            name: name.clone(),
            ..Outcome::default()
        };
        let started: Result<(Option<targets::Running>, Target), String> = match name.as_str() {
            "baseline" => Ok((None, target(mock.addr, None))),
            "passthrough" => {
                targets::spawn_self(&["serve-passthrough", "--upstream", &mock.addr.to_string()])
                    .map(|r| {
                        let t = target(r.addr, None);
                        (Some(r), t)
                    })
            }
            "tower-responses" | "tower-responses-capped" => {
                let up = format!("http://{}/v1", mock.addr);
                targets::spawn_self(&["serve-proxy", "--upstream", &up]).map(|r| {
                    let mut t = target(r.addr, None);
                    if name.ends_with("capped") {
                        t.max_output_tokens = Some(8192);
                    }
                    (Some(r), t)
                })
            }
            "nginx" => targets::temp_dir("nginx")
                .and_then(|d| targets::nginx(&nginx_bin, mock.addr, &d))
                .map(|r| {
                    let t = target(r.addr, None);
                    (Some(r), t)
                }),
            "litellm" => match &litellm_bin {
                None => Err("not run: no --litellm BIN given".to_owned()),
                Some(bin) => targets::temp_dir("litellm")
                    .and_then(|d| {
                        targets::litellm(bin, mock.addr, &plan.models(), litellm_workers, &d)
                    })
                    .map(|(r, key)| {
                        let t = target(r.addr, Some(key));
                        (Some(r), t)
                    }),
            },
            other => Err(format!("unknown target {other}")),
        };
        let (running, tgt) = match started {
            Ok(s) => s,
            Err(e) => {
                eprintln!("   {e}");
                out.error = Some(e);
                outcomes.push(out);
                continue;
            }
        };
        let pid = running.as_ref().map_or(mock.pid, |r| r.pid);
        if let Err(e) = rt.block_on(measure(&plan, &tgt, pid, ticks, &mut out)) {
            let tail = running.as_ref().map(|r| r.log_tail()).unwrap_or_default();
            eprintln!("   {e}\n{tail}");
            out.error = Some(e);
        }
        drop(running);
        outcomes.push(out);
    }
    let rounds: usize = flag(args, "--rounds")
        .and_then(|v| v.parse().ok())
        .unwrap_or(if quick { 3 } else { 9 });
    let wants = |t: &str| wanted.iter().any(|w| w == t);
    let paired = if rounds > 0 && wants("passthrough") && wants("tower-responses") {
        eprintln!("== paired rounds: passthrough and tower-responses, alternately");
        match paired_rounds(&rt, &plan, mock.addr, rounds, ticks) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("   {e}");
                Vec::new()
            }
        }
    } else {
        Vec::new()
    };
    drop(mock);

    let report = report(&plan, &outcomes, &paired, quick);
    println!("{report}");
    if let Some(path) = flag(args, "--out") {
        if let Err(e) = std::fs::write(path, &report) {
            eprintln!("cannot write {path}: {e}");
            return 1;
        }
    }
    0
}

/// Starts a fresh passthrough and a fresh proxy side by side and measures them alternately.
fn paired_rounds(
    rt: &tokio::runtime::Runtime,
    plan: &Plan,
    mock: SocketAddr,
    rounds: usize,
    ticks: f64,
) -> Result<Vec<paired::Round>, String> {
    let pass = targets::spawn_self(&["serve-passthrough", "--upstream", &mock.to_string()])?;
    let up = format!("http://{mock}/v1");
    let stack = targets::spawn_self(&["serve-proxy", "--upstream", &up])?;
    let (pt, st) = (target(pass.addr, None), target(stack.addr, None));
    let body = client::request_body(&mock::model_name(0, 50), true, None);
    let phases = paired::Phases {
        c1: plan.c1 / 2,
        c64: plan.c64 / 2,
    };
    Ok(rt.block_on(paired::rounds(
        paired::Side {
            target: &pt,
            pid: pass.pid,
        },
        paired::Side {
            target: &st,
            pid: stack.pid,
        },
        &body,
        rounds,
        &phases,
        ticks,
    )))
}

/// Sends a fixed number of requests and prints a summary: the load for a profiler run
/// (`valgrind --tool=callgrind loadgen serve-proxy ...` in another shell).
fn drive(args: &[String]) -> i32 {
    let Some(addr) = flag(args, "--addr").and_then(|a| a.parse().ok()) else {
        eprintln!("drive needs --addr HOST:PORT");
        return 2;
    };
    let n: usize = flag(args, "--requests")
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let c: usize = flag(args, "--concurrency")
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let Ok(rt) = tokio::runtime::Runtime::new() else {
        return 1;
    };
    let tgt = target(addr, flag(args, "--auth").map(str::to_owned));
    // `--no-stream` asks for `stream: false` (the stack folds the upstream's stream into
    // one JSON answer), for measuring the fold against the plain stream.
    let body = client::request_body(
        &mock::model_name(0, 50),
        !args.iter().any(|a| a == "--no-stream"),
        flag(args, "--max-output-tokens").and_then(|v| v.parse().ok()),
    );
    // `--sessions N`: each request names one of N sessions (`session_id`), in turn, so the
    // stack records per-session stats and bindings; more sessions than the tables hold makes
    // every request a new session that evicts an old one.
    let sessions: usize = flag(args, "--sessions")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let ok = rt.block_on(async move {
        let per = n.div_ceil(c);
        let tasks: Vec<_> = (0..c)
            .map(|t| {
                let (tgt, body) = (tgt.clone(), body.clone());
                tokio::spawn(async move {
                    let mut conn = client::Conn::new(tgt);
                    let mut samples = Vec::with_capacity(per);
                    for i in 0..per {
                        if sessions > 0 {
                            conn.session = Some(format!("drive-{}", (t * per + i) % sessions));
                        }
                        samples.push(conn.once(&body, false, None).await);
                    }
                    samples
                })
            })
            .collect();
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap_or_default());
        }
        all
    });
    let done: Vec<Sample> = ok.into_iter().filter(|s| s.ok).collect();
    let (h, l) = (
        sorted(&done, |s| Some(s.head)),
        sorted(&done, |s| Some(s.last)),
    );
    println!(
        "{} of {} requests completed; TTFB p50 {} p99 {}; TTLB p50 {} p99 {}",
        done.len(),
        n.div_ceil(c) * c,
        us(pct(&h, 0.5)),
        us(pct(&h, 0.99)),
        us(pct(&l, 0.5)),
        us(pct(&l, 0.99)),
    );
    0
}

fn target(addr: SocketAddr, auth: Option<String>) -> Target {
    Target {
        addr,
        path: "/v1/responses".to_owned(),
        auth,
        max_output_tokens: None,
    }
}

async fn measure(
    plan: &Plan,
    tgt: &Target,
    pid: u32,
    ticks: f64,
    out: &mut Outcome,
) -> Result<(), String> {
    let fast = client::request_body(&mock::model_name(0, 50), true, tgt.max_output_tokens);
    // A first request that must succeed: a target that cannot answer is an error, not a row
    // of zeros. Slow starters (LiteLLM loads lazily) get a few tries.
    let mut conn = client::Conn::new(tgt.clone());
    let mut first = Sample::default();
    for _ in 0..20 {
        first = conn.once(&fast, false, None).await;
        if first.ok {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    if !first.ok {
        return Err(format!(
            "the target never answered a streaming request completely (last: HTTP {}, {} events in {:?}{})",
            first.status,
            first.events,
            first.last,
            first
                .error_body
                .map(|b| format!(": {b}"))
                .unwrap_or_default()
        ));
    }
    drop(conn);

    eprintln!("   concurrency 1");
    out.c1 = client::serial(tgt, &fast, plan.c1_warmup, plan.c1, 20_000).await;

    eprintln!("   concurrency 64");
    client::closed_loop(tgt, &fast, 64, Duration::from_millis(500), false).await;
    let before = procfs::usage(pid, ticks);
    let (c64, wall) = client::closed_loop(tgt, &fast, 64, plan.c64, false).await;
    let after = procfs::usage(pid, ticks);
    out.c64 = c64;
    out.c64_wall = wall;
    out.c64_cpu = after.cpu_secs - before.cpu_secs;

    eprintln!("   open loop {} req/s", plan.open_rate);
    let (open, unfinished) =
        client::open_loop(tgt, &fast, plan.open_rate, plan.open, plan.drain).await;
    out.open = open;
    out.open_unfinished = unfinished;

    eprintln!("   paced 5 ms, 8 streams");
    let paced = client::request_body(&mock::model_name(5, 50), true, tgt.max_output_tokens);
    out.paced = client::closed_loop(tgt, &paced, 8, plan.paced, true)
        .await
        .0;
    out.peak_rss = procfs::usage(pid, ticks).peak_rss;

    eprintln!("   {} concurrent streams", plan.streams);
    // Let connections from earlier phases close so the baseline memory is idle memory.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let slow = client::request_body(
        &mock::model_name(plan.stream_pacing_ms, plan.stream_deltas),
        true,
        tgt.max_output_tokens,
    );
    let mut s = Streams {
        n: plan.streams,
        rss_before: procfs::usage(pid, ticks).rss,
        ..Streams::default()
    };
    let mut probe = (0, 0);
    let pacing = Duration::from_millis(plan.stream_pacing_ms);
    let expected = pacing * (plan.stream_deltas as u32 + 7);
    let (samples, unfinished) = client::many_streams(
        tgt,
        &slow,
        plan.streams,
        Duration::from_secs(1),
        // At the latest halfway through a stream, before the first ones end.
        Duration::from_secs(1) + expected / 2,
        Duration::from_secs(1) + expected * 2 + Duration::from_secs(2),
        |opened| probe = (opened, procfs::usage(pid, ticks).rss),
    )
    .await;
    (s.opened_at_probe, s.rss_open) = probe;
    s.unfinished = unfinished;
    let stall = pacing * 4;
    let mut max_gaps: Vec<u64> = Vec::new();
    for smp in &samples {
        let max_gap = smp.gaps.iter().max().copied().unwrap_or_default();
        max_gaps.push(max_gap.as_nanos() as u64);
        if !smp.ok {
            s.failed += 1;
        } else if max_gap > stall {
            s.stalled += 1;
        } else {
            s.ok += 1;
        }
    }
    max_gaps.sort_unstable();
    s.max_gap_p99 = pct(&max_gaps, 0.99);
    s.max_gap = max_gaps
        .last()
        .map(|n| Duration::from_nanos(*n))
        .unwrap_or_default();
    out.streams = s;
    Ok(())
}

fn pct(sorted: &[u64], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    Duration::from_nanos(sorted[i])
}

fn sorted(samples: &[Sample], f: impl Fn(&Sample) -> Option<Duration>) -> Vec<u64> {
    let mut v: Vec<u64> = samples
        .iter()
        .filter(|s| s.ok)
        .filter_map(|s| f(s).map(|d| d.as_nanos() as u64))
        .collect();
    v.sort_unstable();
    v
}

fn us(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us < 10_000.0 {
        format!("{us:.0} µs")
    } else {
        format!("{:.1} ms", us / 1000.0)
    }
}

fn added(d: Duration, base: Duration) -> String {
    let diff = d.as_secs_f64() * 1e6 - base.as_secs_f64() * 1e6;
    if diff.abs() < 10_000.0 {
        format!("{diff:+.0} µs")
    } else {
        format!("{:+.1} ms", diff / 1000.0)
    }
}

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 && a.is_finite() {
        format!("{:.2}x", a / b)
    } else {
        "–".to_owned()
    }
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0))
}

struct C1 {
    head: (Duration, Duration),
    content: (Duration, Duration),
    last: (Duration, Duration),
}

fn c1(o: &Outcome) -> C1 {
    let h = sorted(&o.c1, |s| Some(s.head));
    let c = sorted(&o.c1, |s| s.first_content);
    let l = sorted(&o.c1, |s| Some(s.last));
    C1 {
        head: (pct(&h, 0.5), pct(&h, 0.99)),
        content: (pct(&c, 0.5), pct(&c, 0.99)),
        last: (pct(&l, 0.5), pct(&l, 0.99)),
    }
}

fn rps(o: &Outcome) -> f64 {
    let ok = o.c64.iter().filter(|s| s.ok).count();
    ok as f64 / o.c64_wall.as_secs_f64().max(1e-9)
}

fn cpu_per_1000(o: &Outcome) -> f64 {
    let ok = o.c64.iter().filter(|s| s.ok).count();
    if ok == 0 {
        return f64::NAN;
    }
    o.c64_cpu / ok as f64 * 1000.0
}

fn report(plan: &Plan, outcomes: &[Outcome], paired: &[paired::Round], quick: bool) -> String {
    let mut r = String::new();
    let ran: Vec<&Outcome> = outcomes.iter().filter(|o| o.error.is_none()).collect();
    let base = ran.iter().find(|o| o.name == "baseline");
    let pass = ran.iter().find(|o| o.name == "passthrough");
    let _ = writeln!(
        r,
        "Mode: {}. Stream: {} events (50 `output_text.delta`), Codex-CLI-shaped request body of {} bytes. `tower-responses`: the proxy with the `chatgpt-codex` profile, one credential (rotation and continuity on), soft-failure hold-back, compaction routing, no log subscriber. `tower-responses-capped`: the same proxy; the body also carries `max_output_tokens` (as an SDK client sends), so the proxy removes it upstream and enforces it on the stream, parsing every delta.\n",
        if quick {
            "quick (development; short phases)"
        } else {
            "full"
        },
        mock::Script::new(50).len(),
        client::request_body(&mock::model_name(0, 50), true, None).len()
    );
    for o in outcomes {
        if let Some(e) = &o.error {
            let _ = writeln!(
                r,
                "**{}: not measured.** {}\n",
                o.name,
                e.replace('\n', " ")
            );
        }
    }

    let _ = writeln!(
        r,
        "### Concurrency 1 (one keep-alive connection, requests back to back, no pacing)\n"
    );
    let _ = writeln!(
        r,
        "\"Added\" is the target's percentile minus the baseline's (client straight to the mock). TTFB = response head; first content = first chunk holding `output_item.added`; TTLB = last byte.\n"
    );
    let _ = writeln!(
        r,
        "| target | requests | TTFB p50 / p99 | first content p50 / p99 | TTLB p50 / p99 | added TTFB p50 / p99 | added first content p50 / p99 | added TTLB p50 / p99 | TTLB p50 vs baseline |"
    );
    let _ = writeln!(r, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let b1 = base.map(|b| c1(b));
    for o in &ran {
        let x = c1(o);
        let ok = o.c1.iter().filter(|s| s.ok).count();
        let (ah, ac, al, rr) = match &b1 {
            Some(b) => (
                format!(
                    "{} / {}",
                    added(x.head.0, b.head.0),
                    added(x.head.1, b.head.1)
                ),
                format!(
                    "{} / {}",
                    added(x.content.0, b.content.0),
                    added(x.content.1, b.content.1)
                ),
                format!(
                    "{} / {}",
                    added(x.last.0, b.last.0),
                    added(x.last.1, b.last.1)
                ),
                ratio(x.last.0.as_secs_f64(), b.last.0.as_secs_f64()),
            ),
            None => Default::default(),
        };
        let _ = writeln!(
            r,
            "| {} | {}{} | {} / {} | {} / {} | {} / {} | {ah} | {ac} | {al} | {rr} |",
            o.name,
            ok,
            if ok < o.c1.len() {
                format!(" ({} failed)", o.c1.len() - ok)
            } else {
                String::new()
            },
            us(x.head.0),
            us(x.head.1),
            us(x.content.0),
            us(x.content.1),
            us(x.last.0),
            us(x.last.1),
        );
    }

    let _ = writeln!(
        r,
        "\n### Concurrency 64 (closed loop, {:.1} s), CPU and memory of the target process tree\n",
        plan.c64.as_secs_f64()
    );
    let _ = writeln!(
        r,
        "CPU and RSS for `baseline` are the mock upstream's own (it has no proxy).\n"
    );
    let _ = writeln!(
        r,
        "| target | req/s | vs baseline | TTLB p50 / p99 | failed | CPU s / 1000 req | CPU vs passthrough | peak RSS |"
    );
    let _ = writeln!(r, "|---|---:|---:|---:|---:|---:|---:|---:|");
    for o in &ran {
        let l = sorted(&o.c64, |s| Some(s.last));
        let failed = o.c64.iter().filter(|s| !s.ok).count();
        let _ = writeln!(
            r,
            "| {} | {:.0} | {} | {} / {} | {} | {:.3} | {} | {} |",
            o.name,
            rps(o),
            base.map(|b| ratio(rps(o), rps(b))).unwrap_or_default(),
            us(pct(&l, 0.5)),
            us(pct(&l, 0.99)),
            failed,
            cpu_per_1000(o),
            pass.map(|p| ratio(cpu_per_1000(o), cpu_per_1000(p)))
                .unwrap_or_default(),
            mib(o.peak_rss),
        );
    }

    let _ = writeln!(
        r,
        "\n### Open loop ({:.0} req/s for {:.1} s; latency from the scheduled start, so queueing counts)\n",
        plan.open_rate,
        plan.open.as_secs_f64()
    );
    let _ = writeln!(
        r,
        "| target | completed | failed or unfinished | TTLB p50 / p99 | added TTLB p99 |"
    );
    let _ = writeln!(r, "|---|---:|---:|---:|---:|");
    let bo = base.map(|b| sorted(&b.open, |s| Some(s.last)));
    for o in &ran {
        let l = sorted(&o.open, |s| Some(s.last));
        let failed = o.open.iter().filter(|s| !s.ok).count() + o.open_unfinished;
        let _ = writeln!(
            r,
            "| {} | {} | {} | {} / {} | {} |",
            o.name,
            l.len(),
            failed,
            us(pct(&l, 0.5)),
            us(pct(&l, 0.99)),
            bo.as_ref()
                .map(|b| added(pct(&l, 0.99), pct(b, 0.99)))
                .unwrap_or_default(),
        );
    }

    let _ = writeln!(
        r,
        "\n### Gap between events (upstream paces 5 ms per event; 8 concurrent streams, {:.1} s)\n",
        plan.paced.as_secs_f64()
    );
    let _ = writeln!(
        r,
        "Gaps are measured at the client between event ends; events that arrive in one chunk count as 0 apart.\n"
    );
    let _ = writeln!(
        r,
        "| target | streams | gaps | gap p50 / p99 / max | added gap p99 | first content p50 / p99 |"
    );
    let _ = writeln!(r, "|---|---:|---:|---:|---:|---:|");
    let gap_p99 = |o: &Outcome| {
        let mut g: Vec<u64> = o
            .paced
            .iter()
            .filter(|s| s.ok)
            .flat_map(|s| s.gaps.iter().map(|d| d.as_nanos() as u64))
            .collect();
        g.sort_unstable();
        g
    };
    let bg = base.map(|b| gap_p99(b));
    for o in &ran {
        let g = gap_p99(o);
        let c = sorted(&o.paced, |s| s.first_content);
        let _ = writeln!(
            r,
            "| {} | {} | {} | {} / {} / {} | {} | {} / {} |",
            o.name,
            o.paced.iter().filter(|s| s.ok).count(),
            g.len(),
            us(pct(&g, 0.5)),
            us(pct(&g, 0.99)),
            us(g.last()
                .map(|n| Duration::from_nanos(*n))
                .unwrap_or_default()),
            bg.as_ref()
                .map(|b| added(pct(&g, 0.99), pct(b, 0.99)))
                .unwrap_or_default(),
            us(pct(&c, 0.5)),
            us(pct(&c, 0.99)),
        );
    }

    let _ = writeln!(
        r,
        "\n### {} concurrent SSE streams (one connection each, opened over 1 s, an event every {} ms, {} events each)\n",
        plan.streams,
        plan.stream_pacing_ms,
        plan.stream_deltas + 8
    );
    let _ = writeln!(
        r,
        "A stream stalls when two events arrive more than {} ms apart; it fails when it breaks or does not complete. Memory per stream = (RSS with the streams open − RSS before) / streams open, read once every stream has started its content (at the latest 1 s + half a stream's length after the first was opened).\n",
        plan.stream_pacing_ms * 4
    );
    let _ = writeln!(
        r,
        "| target | completed | stalled | failed or unfinished | open at probe | worst gap p99 / max | RSS before | RSS with streams open | memory per stream |"
    );
    let _ = writeln!(r, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for o in &ran {
        let s = &o.streams;
        let per = if s.opened_at_probe > 0 {
            format!(
                "{:.1} KiB",
                (s.rss_open as f64 - s.rss_before as f64) / 1024.0 / s.opened_at_probe as f64
            )
        } else {
            "–".to_owned()
        };
        let _ = writeln!(
            r,
            "| {} | {} / {} | {} | {} | {} | {} / {} | {} | {} | {per} |",
            o.name,
            s.ok,
            s.n,
            s.stalled,
            s.failed + s.unfinished,
            s.opened_at_probe,
            us(s.max_gap_p99),
            us(s.max_gap),
            mib(s.rss_before),
            mib(s.rss_open),
        );
    }

    if !paired.is_empty() {
        let _ = writeln!(
            r,
            "\n### Paired rounds: the stack's own cost, passthrough and stack measured alternately\n"
        );
        let _ = writeln!(
            r,
            "Both run side by side (fresh processes); each round measures one, then the other (the order alternates): concurrency 1 for {:.1} s, then 64 clients for {:.1} s with CPU read from /proc. The verdicts below use the median round, so slow drift of the shared machine falls on both alike.\n",
            plan.c1.as_secs_f64() / 2.0,
            plan.c64.as_secs_f64() / 2.0
        );
        let _ = writeln!(
            r,
            "| round | passthrough CPU s / 1000 req | stack CPU s / 1000 req | CPU ratio | passthrough TTFB p50 / p99 | stack TTFB p50 / p99 | added TTFB p99 | added TTLB p99 |"
        );
        let _ = writeln!(r, "|---:|---:|---:|---:|---:|---:|---:|---:|");
        for (i, x) in paired.iter().enumerate() {
            let _ = writeln!(
                r,
                "| {} | {:.3} | {:.3} | {:.2}x | {:.0} µs / {:.0} µs | {:.0} µs / {:.0} µs | {:+.0} µs | {:+.0} µs |",
                i + 1,
                x.pass.cpu_per_1000,
                x.stack.cpu_per_1000,
                x.cpu_ratio(),
                x.pass.ttfb.0,
                x.pass.ttfb.1,
                x.stack.ttfb.0,
                x.stack.ttfb.1,
                x.added_ttfb_p99(),
                x.added_ttlb_p99(),
            );
        }
        let med = |f: fn(&paired::Round) -> f64| paired::median(paired.iter().map(f).collect());
        let _ = writeln!(
            r,
            "| **median** | | | **{:.2}x** | | | **{:+.0} µs** | **{:+.0} µs** |",
            med(paired::Round::cpu_ratio),
            med(paired::Round::added_ttfb_p99),
            med(paired::Round::added_ttlb_p99),
        );
    }

    // The targets of issue 10, checked on this run.
    let full = ran.iter().find(|o| o.name == "tower-responses");
    let lite = ran.iter().find(|o| o.name == "litellm");
    if let Some(f) = full {
        let _ = writeln!(r, "\n### Targets for the full stack (this run)\n");
        let med = |f: fn(&paired::Round) -> f64| paired::median(paired.iter().map(f).collect());
        if !paired.is_empty() {
            let q = med(paired::Round::cpu_ratio);
            let _ = writeln!(
                r,
                "- CPU per request vs bare passthrough, median of {} paired rounds: {q:.2}x (target ≤ 1.2x): {}",
                paired.len(),
                verdict(q <= 1.2)
            );
            let (h, a) = (
                med(paired::Round::added_ttfb_p99),
                med(paired::Round::added_ttlb_p99),
            );
            let _ = writeln!(
                r,
                "- added p99 at concurrency 1 vs the bare passthrough, median of the paired rounds: TTFB {h:+.0} µs, TTLB {a:+.0} µs (target < 100 µs): {}",
                verdict(a < 100.0 && h < 100.0)
            );
        }
        if let Some(p) = pass {
            let q = cpu_per_1000(f) / cpu_per_1000(p);
            let _ = writeln!(
                r,
                "- CPU per request vs bare passthrough, single pass above: {q:.2}x{}",
                if paired.is_empty() {
                    format!(" (target ≤ 1.2x): {}", verdict(q <= 1.2))
                } else {
                    String::new()
                }
            );
        }
        if let Some(b) = &b1 {
            let x = c1(f);
            let a = x.last.1.as_secs_f64() * 1e6 - b.last.1.as_secs_f64() * 1e6;
            let h = x.head.1.as_secs_f64() * 1e6 - b.head.1.as_secs_f64() * 1e6;
            let _ = writeln!(
                r,
                "- added p99 at concurrency 1 vs the baseline (includes the extra hop): TTFB {h:+.0} µs, TTLB {a:+.0} µs"
            );
        }
        if let Some(p) = pass {
            let (x, y) = (c1(f), c1(p));
            let a = x.last.1.as_secs_f64() * 1e6 - y.last.1.as_secs_f64() * 1e6;
            let h = x.head.1.as_secs_f64() * 1e6 - y.head.1.as_secs_f64() * 1e6;
            let _ = writeln!(
                r,
                "- added p99 at concurrency 1 vs the bare passthrough, single pass above: TTFB {h:+.0} µs, TTLB {a:+.0} µs{}",
                if paired.is_empty() {
                    format!(" (target < 100 µs): {}", verdict(a < 100.0 && h < 100.0))
                } else {
                    String::new()
                }
            );
        }
        let s = &f.streams;
        let _ = writeln!(
            r,
            "- {} concurrent streams: {} completed, {} stalled, {} failed (target: none stalled, ≥ 1000): {}",
            s.n,
            s.ok,
            s.stalled,
            s.failed + s.unfinished,
            verdict(s.n >= 1000 && s.ok == s.n)
        );
        if s.opened_at_probe > 0 {
            let per = (s.rss_open as f64 - s.rss_before as f64) / 1024.0 / s.opened_at_probe as f64;
            let _ = writeln!(
                r,
                "- memory per open stream: {per:.1} KiB (target < 64 KiB): {}",
                verdict(per < 64.0)
            );
        }
        if let Some(l) = lite {
            let q = rps(f) / rps(l);
            let _ = writeln!(
                r,
                "- throughput at concurrency 64 vs LiteLLM: {q:.1}x (target ≥ 20x): {}",
                verdict(q >= 20.0)
            );
        }
    }
    r
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "**missed**" }
}
