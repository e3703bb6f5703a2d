//! Side by side against nginx: every proxy on one core, on two upstreams, in one run.
//!
//! ```text
//! loadgen side [--quick] [--rounds N] [--secs S] [--nginx BIN] [--wrk BIN] [--out FILE]
//! ```
//!
//! Two upstreams answer the same 60-event, ~16 KB Responses stream: the load mock (`mock`,
//! each event its own HTTP chunk) and nginx serving the whole answer from memory (`static`,
//! one write). In front of each: nothing (`none`), an nginx hop, the bare hyper passthrough
//! and the full stack (`tower-responses`, as `serve-proxy` runs it). The upstream and `wrk`
//! share CPU 0; the proxy under test has CPU 1 to itself (nginx with one worker, tokio with
//! one worker thread, since `taskset` limits what `available_parallelism` reports). Each
//! round measures every pair at 1, 32 and 64 connections; rounds interleave the targets (the
//! order rotates) so the drift of a shared machine falls on all of them; tables show the
//! median round. CPU is the target's process tree (utime + stime from /proc) over the 32-
//! and 64-connection phases, per 1,000 answers; for `none` it is the upstream's own.
//! `wrk` does not read the events, so every pair is first checked with the harness's own
//! client: a 200 that reaches `response.completed`.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;

use crate::client::{self, Target};
use crate::paired::median;
use crate::targets::{self, Running};
use crate::{mock, procfs};

/// Where the upstream and the load generator run.
const LOAD_CPU: &str = "0";
/// Where the proxy under test runs.
const PROXY_CPU: &str = "1";
/// 52 deltas: a 60-event stream.
const DELTAS: usize = 52;
const TARGETS: [&str; 4] = ["none", "nginx", "passthrough", "tower-responses"];
const UPSTREAMS: [&str; 2] = ["mock", "static"];
const CONNECTIONS: [usize; 3] = [1, 32, 64];

/// One wrk run.
#[derive(Debug, Clone, Copy, Default)]
struct Wrk {
    requests: f64,
    rps: f64,
    p50_us: f64,
    p99_us: f64,
    /// Non-2xx answers plus socket errors.
    errors: f64,
}

/// One pair (upstream, target) in one round.
#[derive(Debug, Clone, Copy, Default)]
struct Measured {
    runs: [Wrk; 3],
    /// CPU ms of the measured process tree per 1,000 answers, at 32 and 64 connections.
    cpu_ms_per_1000: f64,
}

struct Pair {
    upstream: &'static str,
    target: &'static str,
    addr: SocketAddr,
    /// Whose CPU is measured.
    pid: u32,
    error: Option<String>,
    rounds: Vec<Measured>,
}

/// Runs the comparison; returns the process exit code.
pub fn run(args: &[String]) -> i32 {
    let flag = |name| crate::flag(args, name);
    let quick = args.iter().any(|a| a == "--quick");
    let rounds: usize = flag("--rounds").and_then(|v| v.parse().ok()).unwrap_or(3);
    // wrk takes whole seconds.
    let secs: u64 = flag("--secs")
        .and_then(|v| v.parse().ok())
        .unwrap_or(if quick { 1 } else { 3 });
    let nginx = flag("--nginx").unwrap_or("nginx").to_owned();
    let wrk = flag("--wrk").unwrap_or("wrk").to_owned();
    match side(&nginx, &wrk, rounds, secs) {
        Ok(report) => {
            println!("{report}");
            if let Some(path) = flag("--out") {
                if let Err(e) = std::fs::write(path, &report) {
                    eprintln!("cannot write {path}: {e}");
                    return 1;
                }
            }
            0
        }
        Err(e) => {
            eprintln!("{e}");
            1
        }
    }
}

/// `loadgen serve-static`: the `static` upstream on its own (nginx serving the 60-event
/// answer from memory in one write) for profiling a target against it; prints
/// `READY <addr>` and keeps nginx up until SIGINT or SIGTERM.
pub fn serve_static(args: &[String]) -> i32 {
    let nginx = crate::flag(args, "--nginx").unwrap_or("/usr/sbin/nginx");
    let stream = mock::Script::new(DELTAS).stream_text();
    let running = match targets::temp_dir("static")
        .and_then(|d| targets::nginx_static(nginx, &stream, &d, "0"))
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{e}");
            return 1;
        }
    };
    println!("READY {}", running.addr);
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return 1;
    };
    rt.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            return;
        };
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
    });
    // SIGQUIT lets nginx's master stop its worker; dropping `running` alone would kill the
    // master and leave the worker behind.
    let _ = std::process::Command::new("kill")
        .args(["-QUIT", &running.pid.to_string()])
        .status();
    std::thread::sleep(std::time::Duration::from_millis(300));
    drop(running);
    0
}

fn side(nginx: &str, wrk: &str, rounds: usize, secs: u64) -> Result<String, String> {
    let ticks = procfs::clock_ticks();
    let script = mock::Script::new(DELTAS);
    let stream = script.stream_text();
    let body = client::request_body(&mock::model_name(0, DELTAS), true, None);
    let dir = targets::temp_dir("side")?;
    let lua = dir.join("request.lua");
    std::fs::write(&lua, wrk_script(&body)?).map_err(|e| e.to_string())?;

    // Everything stays up for the whole run; idle targets cost nothing.
    let mut keep: Vec<Running> = Vec::new();
    let mut pairs: Vec<Pair> = Vec::new();
    for upstream in UPSTREAMS {
        let up = match upstream {
            "mock" => targets::spawn_self_on(Some(LOAD_CPU), &["serve-mock"])?,
            _ => targets::nginx_static(nginx, &stream, &targets::temp_dir("static")?, LOAD_CPU)?,
        };
        let (up_addr, up_pid) = (up.addr, up.pid);
        keep.push(up);
        for target in TARGETS {
            let started = match target {
                "none" => Ok(None),
                "nginx" => targets::temp_dir("hop")
                    .and_then(|d| targets::nginx_hop(nginx, up_addr, &d, PROXY_CPU))
                    .map(Some),
                "passthrough" => targets::spawn_self_on(
                    Some(PROXY_CPU),
                    &["serve-passthrough", "--upstream", &up_addr.to_string()],
                )
                .map(Some),
                _ => targets::spawn_self_on(
                    Some(PROXY_CPU),
                    &["serve-proxy", "--upstream", &format!("http://{up_addr}/v1")],
                )
                .map(Some),
            };
            let (addr, pid, error) = match started {
                Ok(None) => (up_addr, up_pid, None),
                Ok(Some(r)) => {
                    let out = (r.addr, r.pid, None);
                    keep.push(r);
                    out
                }
                Err(e) => (up_addr, 0, Some(e)),
            };
            pairs.push(Pair {
                upstream,
                target,
                addr,
                pid,
                error,
                rounds: Vec::new(),
            });
        }
    }

    let rt = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    for p in pairs.iter_mut().filter(|p| p.error.is_none()) {
        let tgt = Target {
            addr: p.addr,
            path: "/v1/responses".to_owned(),
            auth: None,
            max_output_tokens: None,
        };
        let s = rt.block_on(async { client::Conn::new(tgt).once(&body, false, None).await });
        if !s.ok || s.events != script.len() {
            p.error = Some(format!(
                "check failed: status {}, {} of {} events, {:?}",
                s.status,
                s.events,
                script.len(),
                s.error_body
            ));
        } else if let Err(e) = wrk_run(wrk, &lua, p.addr, 32, 1) {
            p.error = Some(e);
        }
        if let Some(e) = &p.error {
            eprintln!("   {} via {}: {e}", p.upstream, p.target);
        }
    }

    for round in 0..rounds {
        eprintln!("== side-by-side round {} of {rounds}", round + 1);
        let n = pairs.len();
        for i in 0..n {
            // Rotate the order each round so no target always runs first or last.
            let p = &mut pairs[(i + round * 3) % n];
            if p.error.is_some() {
                continue;
            }
            match measure(wrk, &lua, p.addr, p.pid, secs, ticks) {
                Ok(m) => p.rounds.push(m),
                Err(e) => p.error = Some(e),
            }
        }
    }
    drop(keep);
    Ok(report(&pairs, rounds, secs, &stream))
}

fn measure(
    wrk: &str,
    lua: &Path,
    addr: SocketAddr,
    pid: u32,
    secs: u64,
    ticks: f64,
) -> Result<Measured, String> {
    let mut m = Measured::default();
    let mut cpu = 0.0;
    let mut answers = 0.0;
    for (i, c) in CONNECTIONS.into_iter().enumerate() {
        let before = procfs::usage(pid, ticks).cpu_secs;
        m.runs[i] = wrk_run(wrk, lua, addr, c, secs)?;
        if c > 1 {
            cpu += procfs::usage(pid, ticks).cpu_secs - before;
            answers += m.runs[i].requests;
        }
    }
    m.cpu_ms_per_1000 = cpu * 1e6 / answers.max(1.0);
    Ok(m)
}

/// A wrk script that POSTs `body` as the Codex CLI would (a Lua long string holds it as is).
/// `loadgen wrk-script`: prints the `wrk` script `side` loads every target with (the
/// Codex-shaped streaming request), for measurements outside `side` (`scripts/ab.sh`).
pub fn print_wrk_script() -> i32 {
    let body = client::request_body(&mock::model_name(0, DELTAS), true, None);
    match wrk_script(&body) {
        Ok(script) => {
            print!("{script}");
            0
        }
        Err(e) => {
            eprintln!("{e}");
            1
        }
    }
}

fn wrk_script(body: &[u8]) -> Result<String, String> {
    let body = std::str::from_utf8(body).map_err(|e| e.to_string())?;
    if body.contains("]==]") {
        return Err("request body cannot be quoted for wrk".into());
    }
    Ok(format!(
        "wrk.method = \"POST\"\nwrk.headers[\"Content-Type\"] = \"application/json\"\n\
         wrk.headers[\"Accept\"] = \"text/event-stream\"\nwrk.body = [==[{body}]==]\n"
    ))
}

fn wrk_run(wrk: &str, lua: &Path, addr: SocketAddr, c: usize, secs: u64) -> Result<Wrk, String> {
    let out = targets::pinned(Some(LOAD_CPU), wrk)
        .args(["-t1", &format!("-c{c}"), &format!("-d{secs}s"), "--latency"])
        .arg("-s")
        .arg(lua)
        .arg(format!("http://{addr}/v1/responses"))
        .output()
        .map_err(|e| format!("cannot run {wrk}: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "wrk failed: {}{}",
            text,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    parse_wrk(&text).ok_or_else(|| format!("cannot read wrk's output:\n{text}"))
}

/// Reads the figures from wrk's `--latency` output.
fn parse_wrk(text: &str) -> Option<Wrk> {
    let mut w = Wrk::default();
    let mut in_dist = false;
    for line in text.lines() {
        let t = line.trim();
        if let Some(v) = t.strip_prefix("Requests/sec:") {
            w.rps = v.trim().parse().ok()?;
        } else if t.starts_with("Latency Distribution") {
            in_dist = true;
        } else if in_dist && t.starts_with("50%") {
            w.p50_us = duration_us(t.trim_start_matches("50%").trim())?;
        } else if in_dist && t.starts_with("99%") {
            w.p99_us = duration_us(t.trim_start_matches("99%").trim())?;
            in_dist = false;
        } else if let Some(v) = t.strip_prefix("Non-2xx or 3xx responses:") {
            w.errors += v.trim().parse::<f64>().ok()?;
        } else if let Some(v) = t.strip_prefix("Socket errors:") {
            // "connect 0, read 0, write 0, timeout 0"
            for part in v.split(',') {
                if let Some(n) = part.split_whitespace().nth(1) {
                    w.errors += n.parse::<f64>().unwrap_or(0.0);
                }
            }
        } else if t.contains(" requests in ") {
            w.requests = t.split_whitespace().next()?.parse().ok()?;
        }
    }
    (w.rps > 0.0).then_some(w)
}

/// `215.00us`, `1.23ms`, `2.00s` as µs.
fn duration_us(s: &str) -> Option<f64> {
    let (num, scale) = if let Some(v) = s.strip_suffix("us") {
        (v, 1.0)
    } else if let Some(v) = s.strip_suffix("ms") {
        (v, 1e3)
    } else if let Some(v) = s.strip_suffix("m") {
        (v, 60e6)
    } else {
        (s.strip_suffix('s')?, 1e6)
    };
    Some(num.trim().parse::<f64>().ok()? * scale)
}

fn med(p: &Pair, f: impl Fn(&Measured) -> f64) -> f64 {
    median(p.rounds.iter().map(f).collect())
}

fn report(pairs: &[Pair], rounds: usize, secs: u64, stream: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "### Side by side against nginx ({rounds} interleaved rounds, {secs} s per phase)\n\n\
         Stream: {} events, {} bytes. Upstream and `wrk -t1` on CPU {LOAD_CPU}, the proxy on \
         CPU {PROXY_CPU} (nginx: one worker; the Rust targets: one tokio worker). Median \
         round. CPU = the target's process tree (for `none`: the upstream's) over the 32- and \
         64-connection phases. Latency = `wrk` at one connection (the whole answer); \
         \"added\" = minus `none` on the same upstream. Ratios are against the nginx hop.\n",
        stream.matches("\n\n").count(),
        stream.len()
    );
    let mut verdicts = Vec::new();
    for upstream in UPSTREAMS {
        let _ = writeln!(
            s,
            "#### Upstream `{upstream}` ({})\n",
            if upstream == "mock" {
                "hyper, each event its own chunk"
            } else {
                "nginx, the whole answer from memory at once"
            }
        );
        let _ = writeln!(
            s,
            "| target | CPU ms / 1000 req | vs nginx | req/s at 1 | req/s at 32 | vs nginx | \
             req/s at 64 | vs nginx | p50 / p99 at 1 | added p50 / p99 | errors |"
        );
        let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        let of = |t: &str| {
            pairs
                .iter()
                .find(|p| p.upstream == upstream && p.target == t)
        };
        let none = of("none").filter(|p| !p.rounds.is_empty());
        let hop = of("nginx").filter(|p| !p.rounds.is_empty());
        let base = |f: &dyn Fn(&Measured) -> f64| none.map_or(f64::NAN, |p| med(p, f));
        let ng = |f: &dyn Fn(&Measured) -> f64| hop.map_or(f64::NAN, |p| med(p, f));
        for p in pairs.iter().filter(|p| p.upstream == upstream) {
            if p.rounds.is_empty() {
                let why = p.error.as_deref().unwrap_or("not measured");
                let why: String = why.split_whitespace().collect::<Vec<_>>().join(" ");
                let why: String = why.chars().take(200).collect();
                let _ = writeln!(
                    s,
                    "| {} | not measured: {why} | | | | | | | | | |",
                    p.target
                );
                continue;
            }
            let cpu = med(p, |m| m.cpu_ms_per_1000);
            let rps = |i: usize| med(p, |m| m.runs[i].rps);
            let p50 = med(p, |m| m.runs[0].p50_us);
            let p99 = med(p, |m| m.runs[0].p99_us);
            let (b50, b99) = (base(&|m| m.runs[0].p50_us), base(&|m| m.runs[0].p99_us));
            let errors: f64 = p
                .rounds
                .iter()
                .map(|m| m.runs.iter().map(|w| w.errors).sum::<f64>())
                .sum();
            let _ = writeln!(
                s,
                "| {} | {cpu:.1} | {} | {:.0} | {:.0} | {} | {:.0} | {} | {p50:.0} µs / {p99:.0} µs | \
                 {:+.0} µs / {:+.0} µs | {errors:.0} |",
                p.target,
                ratio(cpu, ng(&|m| m.cpu_ms_per_1000)),
                rps(0),
                rps(1),
                ratio(rps(1), ng(&|m| m.runs[1].rps)),
                rps(2),
                ratio(rps(2), ng(&|m| m.runs[2].rps)),
                p50 - b50,
                p99 - b99,
            );
            if p.target == "tower-responses" && hop.is_some() {
                let cpu_x = cpu / ng(&|m| m.cpu_ms_per_1000);
                let t32 = rps(1) / ng(&|m| m.runs[1].rps);
                let t64 = rps(2) / ng(&|m| m.runs[2].rps);
                let added = p99 - b99;
                let nginx_added = ng(&|m| m.runs[0].p99_us) - b99;
                verdicts.push(format!(
                    "- `{upstream}`: CPU per request {cpu_x:.2}x nginx (target <= 1.2x): {}; \
                     throughput {t32:.2}x / {t64:.2}x nginx at 32 / 64 (target >= 0.9x): {}; \
                     added p99 at one connection {added:+.0} µs vs nginx's {nginx_added:+.0} µs: {}",
                    crate::verdict(cpu_x <= 1.2),
                    crate::verdict(t32 >= 0.9 && t64 >= 0.9),
                    crate::verdict(added <= nginx_added),
                ));
            }
        }
        s.push('\n');
    }
    let _ = writeln!(s, "#### Targets (full stack against the nginx hop)\n");
    for v in verdicts {
        let _ = writeln!(s, "{v}");
    }
    let _ = writeln!(s, "\n#### Every round\n");
    let _ = writeln!(
        s,
        "| upstream | target | CPU ms / 1000 req per round | req/s at 32 per round | p99 at 1 per round |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|");
    for p in pairs.iter().filter(|p| !p.rounds.is_empty()) {
        let list =
            |f: &dyn Fn(&Measured) -> String| p.rounds.iter().map(f).collect::<Vec<_>>().join(", ");
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} |",
            p.upstream,
            p.target,
            list(&|m| format!("{:.1}", m.cpu_ms_per_1000)),
            list(&|m| format!("{:.0}", m.runs[1].rps)),
            list(&|m| format!("{:.0} µs", m.runs[0].p99_us)),
        );
    }
    s
}

fn ratio(a: f64, b: f64) -> String {
    if a.is_finite() && b.is_finite() && b > 0.0 {
        format!("{:.2}x", a / b)
    } else {
        "n/a".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_wrk_output() {
        let text = "Running 1s test @ http://127.0.0.1:1/v1/responses\n  1 threads and 32 connections\n\
            \x20 Latency Distribution\n     50%  215.00us\n     75%  300.00us\n     90%  1.00ms\n     99%    1.23ms\n\
            \x20 12345 requests in 1.00s, 200.00MB read\n  Non-2xx or 3xx responses: 3\n\
            Requests/sec:  12345.67\nTransfer/sec:    200.00MB\n";
        let w = parse_wrk(text).unwrap();
        assert_eq!(w.requests, 12345.0);
        assert!((w.rps - 12345.67).abs() < 1e-6);
        assert_eq!(w.p50_us, 215.0);
        assert!((w.p99_us - 1230.0).abs() < 1e-6);
        assert_eq!(w.errors, 3.0);
    }
}
