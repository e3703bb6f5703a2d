//! The cost of one metrics update on the request path (issue 16, item 2: no global lock per
//! update): a labelled counter increment from one thread, and from two threads at once (the
//! machine's cores), and a histogram sample, on series that already exist, as in steady
//! state.
// `criterion_group!` generates a public function without docs.
#![allow(missing_docs)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use tower_responses::metrics::Metrics;

const HELP: &str = "Upstream attempts, by credential and outcome.";

fn bump(m: &Metrics, credential: &str) {
    m.inc(
        "tr_credential_attempts_total",
        HELP,
        &[("credential", black_box(credential)), ("outcome", "ok")],
    );
}

fn updates(c: &mut Criterion) {
    let mut group = c.benchmark_group("metrics");
    let m = Metrics::new();
    bump(&m, "key-1");
    bump(&m, "key-2");
    group.bench_function("inc_labelled", |b| b.iter(|| bump(&m, "key-1")));
    group.bench_function("observe_labelled", |b| {
        b.iter(|| {
            m.observe(
                "tr_upstream_attempt_seconds",
                HELP,
                &[("credential", black_box("key-1")), ("outcome", "ok")],
                black_box(0.042),
            )
        })
    });
    // Two threads updating the same registry (other series): what a global lock costs shows
    // here as contention.
    group.bench_function("inc_labelled_2_threads", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            std::thread::scope(|s| {
                for cred in ["key-1", "key-2"] {
                    let m = &m;
                    s.spawn(move || {
                        for _ in 0..iters {
                            bump(m, cred);
                        }
                    });
                }
            });
            start.elapsed()
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = updates
}
criterion_main!(benches);
