//! The pool's state on the request path.
//!
//! - `owner_map`: recording a response id's owner and looking one up, with the owner map
//!   empty, at 100,000 and at 1,000,000 recorded ids (issue 14, item 9: the cost per request
//!   must stay flat as the map fills, and eviction must be O(1)).
//! - `request_state/{memory,redis}` (feature `redis`, with `redis-server` installed): what
//!   one request does to the pool's state (a pick with a session, a use, the session's
//!   binding, a success, the answer's owner), on the in-memory store and on `RedisState`
//!   over a real `redis-server` on loopback. The difference is the hot-path cost of sharing.
//!   Afterwards one line reports the CPU per request of the whole process (the writer and
//!   reader tasks included) and of `redis-server`, for both stores.
//! - `proxy_request/{memory,redis}`: one streamed request through a whole proxy in front of
//!   the mock upstream, with either store: the added latency per request.
// `criterion_group!` generates a public function without docs.
#![allow(missing_docs)]

#[cfg(feature = "redis")]
#[path = "../tests/common/redis_server.rs"]
mod redis_server;

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

#[cfg(feature = "redis")]
mod shared {
    use super::*;
    use std::sync::Arc;
    use std::time::Instant;

    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    use tower_responses::credentials::{Pool, PoolMember, RedisState, RedisStateConfig};
    use tower_responses::proxy::{Proxy, ProxyConfig};
    use tower_responses::testing::MockUpstream;

    const KEYS: [&str; 4] = [
        "sk-bench-aaaaaaaaaaaaaaaaaaaa",
        "sk-bench-bbbbbbbbbbbbbbbbbbbb",
        "sk-bench-cccccccccccccccccccc",
        "sk-bench-dddddddddddddddddddd",
    ];

    fn pool(state: Arc<dyn PoolState>) -> Pool {
        Pool::new(
            KEYS.iter()
                .map(|k| PoolMember::new(k.parse().unwrap()))
                .collect(),
        )
        .unwrap()
        .with_state(state)
    }

    /// What one request does to the state; `n` makes its session and response id.
    fn one_request(pool: &Pool, n: u64, expires: SystemTime) {
        let session = format!("session-{}", n % 64);
        let label = pool.pick(&[], None, Some(&session)).expect("a credential");
        pool.record_use(&label);
        pool.record_served(&session, &label);
        pool.record_success(&label, &http::HeaderMap::new());
        let id = format!("resp_{n:024}");
        pool.state().put_owner(&id, &label, expires);
        black_box(pool.state().owner(&id, SystemTime::now()));
    }

    /// User plus system CPU of a process so far (Linux `/proc`), in seconds.
    fn cpu_secs(pid: &str) -> Option<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let ticks: f64 =
            fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
        Some(ticks / 100.0)
    }

    fn redis_pid(port: u16) -> Option<String> {
        let out = std::process::Command::new("pgrep")
            .args(["-f", &format!("redis-server 127.0.0.1:{port}")])
            .output()
            .ok()?;
        String::from_utf8(out.stdout)
            .ok()?
            .lines()
            .next()
            .map(str::to_string)
    }

    pub fn available() -> bool {
        std::process::Command::new("redis-server")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    }

    pub fn request_state(c: &mut Criterion) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let redis = redis_server::RedisServer::start();
        let expires = SystemTime::now() + Duration::from_secs(3600);
        let memory = pool(Arc::new(MemoryState::default()));
        let store = rt.block_on(async {
            let s = RedisState::start(RedisStateConfig::new(redis.url()).prefix("bench"), None)
                .unwrap();
            assert!(
                s.wait_for_read(Duration::from_secs(5)).await,
                "redis never answered"
            );
            Arc::new(s)
        });
        let shared = {
            let _guard = rt.enter();
            pool(store.clone())
        };
        let mut group = c.benchmark_group("request_state");
        let mut n = 0u64;
        group.bench_function("memory", |b| {
            b.iter(|| {
                n += 1;
                one_request(&memory, n, expires)
            })
        });
        group.bench_function("redis", |b| {
            b.iter(|| {
                n += 1;
                one_request(&shared, n, expires)
            })
        });
        group.finish();

        // CPU per request, background work included: N requests, then until every write
        // is acknowledged.
        let me = std::process::id().to_string();
        let server = redis_pid(redis.port);
        const N: u64 = 20_000;
        let mut report = Vec::new();
        for (name, p) in [("memory", &memory), ("redis", &shared)] {
            let (cpu0, srv0) = (cpu_secs(&me), server.as_deref().and_then(cpu_secs));
            let t0 = Instant::now();
            for i in 0..N {
                one_request(p, n + i, expires);
            }
            n += N;
            rt.block_on(p.state().owners_settled(p.state().owner_mark()));
            let wall = t0.elapsed();
            let cpu = cpu_secs(&me)
                .zip(cpu0)
                .map(|(a, b)| (a - b) * 1e6 / N as f64);
            let srv = server
                .as_deref()
                .and_then(cpu_secs)
                .zip(srv0)
                .map(|(a, b)| (a - b) * 1e6 / N as f64);
            report.push(format!(
                "{name}: {:.2} µs wall, {} µs CPU in the proxy process, {} µs in redis-server per request",
                wall.as_secs_f64() * 1e6 / N as f64,
                cpu.map_or("?".into(), |c| format!("{c:.2}")),
                srv.map_or("-".into(), |c| format!("{c:.2}")),
            ));
        }
        println!(
            "request_state CPU ({N} requests each): {}",
            report.join("; ")
        );
        drop(shared);
        drop(store);
    }

    pub fn proxy_request(c: &mut Criterion) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let redis = redis_server::RedisServer::start();
        let (upstream, memory, shared) = rt.block_on(async {
            let upstream = MockUpstream::start().await.unwrap();
            let start = |state: Option<String>| {
                let config = ProxyConfig {
                    listen: "127.0.0.1:0".parse().unwrap(),
                    upstream: upstream.base_url(),
                    credentials: KEYS.iter().map(|k| k.parse().unwrap()).collect(),
                    state,
                    state_prefix: Some("bench-proxy".into()),
                    ..ProxyConfig::default()
                };
                async move {
                    let proxy = Proxy::bind(config).await.unwrap();
                    let addr = proxy.local_addr();
                    tokio::spawn(proxy.serve(std::future::pending()));
                    addr
                }
            };
            let memory = start(None).await;
            let shared = start(Some(redis.url())).await;
            (upstream, memory, shared)
        });
        let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        let body = r#"{"model":"gpt-5","input":"hi","stream":true,"store":true}"#;
        let send = |addr: std::net::SocketAddr| {
            let req = http::Request::post(format!("http://{addr}/v1/responses"))
                .header("content-type", "application/json")
                .body(Full::from(body))
                .unwrap();
            let client = client.clone();
            async move {
                let res = client.request(req).await.unwrap();
                assert_eq!(res.status(), 200);
                black_box(res.into_body().collect().await.unwrap().to_bytes().len())
            }
        };
        // Warm both (connections, the shared store's first read).
        rt.block_on(async {
            for _ in 0..50 {
                send(memory).await;
                send(shared).await;
            }
        });
        let mut group = c.benchmark_group("proxy_request");
        group.bench_function("memory", |b| b.iter(|| rt.block_on(send(memory))));
        group.bench_function("redis", |b| b.iter(|| rt.block_on(send(shared))));
        group.finish();
        drop(upstream);
    }
}

#[cfg(feature = "redis")]
fn shared_state(c: &mut Criterion) {
    if !shared::available() {
        eprintln!(
            "request_state, proxy_request: skipped (no redis-server; apt-get install redis-server)"
        );
        return;
    }
    shared::request_state(c);
    shared::proxy_request(c);
}

#[cfg(not(feature = "redis"))]
fn shared_state(_: &mut Criterion) {
    eprintln!("request_state, proxy_request: skipped (build with --features redis)");
}

criterion_group!(benches, owners, shared_state);
criterion_main!(benches);
