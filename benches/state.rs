//! The pool's state on the request path: recording a response id's owner and looking one up,
//! with the owner map empty, at 100,000 and at 1,000,000 recorded ids (issue 14, item 9: the
//! cost per request must stay flat as the map fills, and eviction must be O(1)).
// `criterion_group!` generates a public function without docs.
#![allow(missing_docs)]

use std::hint::black_box;
use std::time::{Duration, SystemTime};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use tower_responses::credentials::{MemoryState, PoolState};

fn owners(c: &mut Criterion) {
    let mut group = c.benchmark_group("owner_map");
    let expires = SystemTime::now() + Duration::from_secs(7 * 24 * 3600);
    for size in [0usize, 100_000, 1_000_000] {
        // Full at `size`: every insert below evicts the oldest entry (the steady state of a
        // long-running proxy), except for the empty map.
        let state = MemoryState::with_capacity(size.max(1));
        for i in 0..size {
            state.put_owner(&format!("resp_{i:024}"), "key-1", expires);
        }
        let mut n = size;
        group.bench_with_input(
            BenchmarkId::new("record_and_lookup", size),
            &size,
            |b, _| {
                b.iter(|| {
                    n += 1;
                    let id = format!("resp_{n:024}");
                    state.put_owner(black_box(&id), "key-2", expires);
                    black_box(state.owner(&id, SystemTime::now()))
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, owners);
criterion_main!(benches);
