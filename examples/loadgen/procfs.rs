//! CPU time and memory of a process and its descendants, from /proc (Linux only).
//!
//! nginx and LiteLLM may fork workers, so every figure is summed over the process tree.

use std::collections::HashMap;
use std::fs;

/// One reading of a process tree.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    /// utime + stime of every live process in the tree, in seconds.
    pub cpu_secs: f64,
    /// Sum of VmRSS, bytes.
    pub rss: u64,
    /// Sum of VmHWM (each process's peak RSS), bytes.
    pub peak_rss: u64,
    /// Processes in the tree.
    pub processes: usize,
}

/// Clock ticks per second for /proc/<pid>/stat times.
pub fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// `(ppid, utime + stime in ticks)` from /proc/<pid>/stat.
fn stat(pid: u32) -> Option<(u32, u64)> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: fields start after the last ')'.
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state): ppid is field 4, utime 14, stime 15.
    let ppid = fields.get(1)?.parse().ok()?;
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((ppid, utime + stime))
}

fn status_kb(pid: u32, key: &str) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// `root` and all its descendants alive now.
pub fn tree(root: u32) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    if let Ok(dir) = fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            if let Some((ppid, _)) = stat(pid) {
                children.entry(ppid).or_default().push(pid);
            }
        }
    }
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        if let Some(kids) = children.get(&out[i]) {
            out.extend(kids);
        }
        i += 1;
    }
    out
}

/// Reads the tree under `root`.
pub fn usage(root: u32, ticks: f64) -> Usage {
    let mut u = Usage::default();
    for pid in tree(root) {
        let Some((_, t)) = stat(pid) else { continue };
        u.cpu_secs += t as f64 / ticks;
        u.rss += status_kb(pid, "VmRSS:") * 1024;
        u.peak_rss += status_kb(pid, "VmHWM:") * 1024;
        u.processes += 1;
    }
    u
}

/// Descriptors each harness process asks for: 10,000 streams cost the proxy two each, nginx
/// two each, the mock and the load client one each, with room for the listen backlog.
pub const WANTED_FDS: u64 = 200_000;

/// Raises this process's descriptor limit (inherited by every target it starts) to
/// [`WANTED_FDS`], or as far as the hard limit allows when that cannot be raised (not root);
/// returns the soft limit now in force. Done with `prlimit(1)` on our own pid, so the harness
/// needs no unsafe code; a 20,000 default soft or hard limit is what stalled 9,000 streams.
pub fn raise_fd_limit() -> Option<u64> {
    let limits = || -> Option<(u64, u64)> {
        let text = fs::read_to_string("/proc/self/limits").ok()?;
        let line = text.lines().find(|l| l.starts_with("Max open files"))?;
        let mut nums = line.split_whitespace().filter_map(|w| {
            w.parse::<u64>()
                .ok()
                .or((w == "unlimited").then_some(u64::MAX))
        });
        Some((nums.next()?, nums.next()?))
    };
    let (soft, hard) = limits()?;
    if soft >= WANTED_FDS {
        return Some(soft);
    }
    // The kernel's ceiling for any process (fs.nr_open), which even root cannot pass.
    let ceiling = fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(WANTED_FDS);
    let pid = std::process::id().to_string();
    let set = |n: u64| {
        std::process::Command::new("prlimit")
            .args(["--pid", &pid, &format!("--nofile={n}:{n}")])
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let want = WANTED_FDS.min(ceiling);
    if !set(want) && hard > soft {
        set(hard);
    }
    limits().map(|(soft, _)| soft)
}
