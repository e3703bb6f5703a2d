//! Paired rounds: the bare passthrough and the full stack measured alternately, several
//! times over, so that the slow drift of a shared machine (another build starting, a noisy
//! neighbour) falls on both alike. The stack's own cost is then judged from the median of the
//! per-round comparisons instead of from one pass over each target minutes apart.

use std::time::Duration;

use bytes::Bytes;

use crate::client::{self, Sample, Target};
use crate::procfs;

/// One side of a pair: where to send load and whose CPU to read.
pub struct Side<'a> {
    pub target: &'a Target,
    pub pid: u32,
}

/// What one target did in one round.
#[derive(Clone, Copy, Default)]
pub struct Measured {
    /// Concurrency 1: time to first byte and to last byte, p50 and p99, in µs.
    pub ttfb: (f64, f64),
    pub ttlb: (f64, f64),
    /// Concurrency 64: CPU seconds of the target's process tree per 1,000 answers.
    pub cpu_per_1000: f64,
}

/// One round: the passthrough and the stack, one after the other.
pub struct Round {
    pub pass: Measured,
    pub stack: Measured,
}

impl Round {
    pub fn cpu_ratio(&self) -> f64 {
        self.stack.cpu_per_1000 / self.pass.cpu_per_1000
    }
    pub fn added_ttfb_p99(&self) -> f64 {
        self.stack.ttfb.1 - self.pass.ttfb.1
    }
    pub fn added_ttlb_p99(&self) -> f64 {
        self.stack.ttlb.1 - self.pass.ttlb.1
    }
}

/// How long each phase of a round lasts.
pub struct Phases {
    pub c1: Duration,
    pub c64: Duration,
}

/// Runs `n` rounds, alternating which side goes first.
pub async fn rounds(
    pass: Side<'_>,
    stack: Side<'_>,
    body: &Bytes,
    n: usize,
    phases: &Phases,
    ticks: f64,
) -> Vec<Round> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        eprintln!("   paired round {} of {n}", i + 1);
        let round = if i % 2 == 0 {
            let p = measure(&pass, body, phases, ticks).await;
            let s = measure(&stack, body, phases, ticks).await;
            Round { pass: p, stack: s }
        } else {
            let s = measure(&stack, body, phases, ticks).await;
            let p = measure(&pass, body, phases, ticks).await;
            Round { pass: p, stack: s }
        };
        out.push(round);
    }
    out
}

async fn measure(side: &Side<'_>, body: &Bytes, phases: &Phases, ticks: f64) -> Measured {
    let c1 = client::serial(side.target, body, 50, phases.c1, 20_000).await;
    client::closed_loop(side.target, body, 64, Duration::from_millis(300), false).await;
    let before = procfs::usage(side.pid, ticks);
    let (c64, _) = client::closed_loop(side.target, body, 64, phases.c64, false).await;
    let after = procfs::usage(side.pid, ticks);
    let ok = c64.iter().filter(|s| s.ok).count().max(1);
    Measured {
        ttfb: p50_p99(&c1, |s| s.head),
        ttlb: p50_p99(&c1, |s| s.last),
        cpu_per_1000: (after.cpu_secs - before.cpu_secs) / ok as f64 * 1000.0,
    }
}

/// p50 and p99 in µs, by the percentile the rest of the report uses.
fn p50_p99(samples: &[Sample], f: impl Fn(&Sample) -> Duration) -> (f64, f64) {
    let v = crate::sorted(samples, |s| Some(f(s)));
    let us = |p| crate::pct(&v, p).as_secs_f64() * 1e6;
    (us(0.5), us(0.99))
}

/// The median of `values`: the middle one, or the mean of the middle two (NaN when empty).
pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}
