//! Slow and idle clients cost bounded memory.
//!
//! - A client that reads one byte per second: the proxy stops reading the upstream once the
//!   buffers between them are full (the mock sees hyper stop taking its body), so what the
//!   proxy holds is bounded by those buffers, not by the answer's size.
//! - Thousands of idle keep-alive connections cost a bounded amount each and the idle timeout
//!   (the header read timeout, which also runs between requests) closes every one.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tower_responses::testing::{MockUpstream, Reply, events};

/// The soft limit on open files, from /proc (no unsafe `getrlimit`).
fn fd_limit() -> usize {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(1024)
}

/// One `response.output_text.delta` event of `n` bytes of text.
fn delta_event(n: usize) -> Bytes {
    let ev = events::output_text_delta("msg_big", &"x".repeat(n));
    events::encode(&ev)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_byte_per_second_reader_stalls_the_upstream_and_holds_bounded_memory() {
    const EVENT: usize = 16 * 1024;
    const EVENTS: usize = 6 * 1024; // about 96 MiB of answer
    let mock = MockUpstream::start().await.unwrap();
    let mut chunks = vec![events::encode(&events::created("resp_big"))];
    let delta = delta_event(EVENT);
    chunks.extend(std::iter::repeat_n(delta, EVENTS));
    let total: u64 = chunks.iter().map(|c| c.len() as u64).sum();
    mock.set_default(Reply::sse_raw(chunks));
    let mut cfg = config_for(mock.base_url());
    cfg.credentials = vec!["sk-a".parse().unwrap()];
    let proxy = start_proxy(cfg).await;

    // A client with a small receive window, as a slow phone on a bad link would have.
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(16 * 1024).unwrap();
    let mut tcp = socket.connect(proxy.addr).await.unwrap();
    let body = json!({"model": "gpt-5", "stream": true, "input": "hi"}).to_string();
    let head = format!(
        "POST /v1/responses HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n",
        body.len()
    );
    let rss_before = rss();
    tcp.write_all(head.as_bytes()).await.unwrap();
    tcp.write_all(body.as_bytes()).await.unwrap();

    // One byte per second until the upstream's progress stops for two readings in a row.
    let mut readings = Vec::new();
    let started = Instant::now();
    let mut byte = [0u8; 1];
    let stalled_at = loop {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the upstream never stalled: {readings:?} of {total} bytes"
        );
        let n = tcp.read(&mut byte).await.unwrap();
        assert_eq!(n, 1, "the proxy closed on a slow reader");
        tokio::time::sleep(Duration::from_secs(1)).await;
        readings.push(mock.stream_stats().bytes_sent);
        if let [.., a, b, c] = readings[..] {
            if a == b && b == c && c > 0 {
                break c;
            }
        }
    };
    let rss_held = rss().saturating_sub(rss_before);
    eprintln!(
        "slow reader: upstream stalled after {stalled_at} of {total} bytes ({} s); memory +{} MiB",
        readings.len(),
        rss_held >> 20
    );
    // What can sit between the mock and this client: two loopback sockets' buffers (a few
    // MiB each at most, autotuned), hyper's and the proxy's buffers. Far below the answer.
    assert!(
        stalled_at < 24 << 20,
        "the proxy read {stalled_at} of {total} bytes ahead of a client that read {} bytes",
        readings.len()
    );
    assert!(stalled_at < total / 4);
    assert!(
        rss_held < 32 << 20,
        "memory grew by {} MiB while the client read a byte a second",
        rss_held >> 20
    );
    assert_eq!(
        mock.stream_stats().open,
        1,
        "the stream waits, it is not dropped"
    );

    // The client goes away: the upstream stream goes too.
    drop(tcp);
    let until = Instant::now() + Duration::from_secs(5);
    while mock.stream_stats().open > 0 {
        assert!(Instant::now() < until, "{:?}", mock.stream_stats());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(mock.stream_stats().cancelled, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_idle_keep_alive_connections_cost_bounded_memory_and_time_out() {
    // Two descriptors per connection live in this process (client and proxy side): below
    // the soft limit with room for the rest. At the usual 20,000 that is 9,000, not 10,000.
    let n = 10_000.min(fd_limit().saturating_sub(2_000) / 2);
    assert!(
        n >= 1_000,
        "fd limit {} is too low for this test",
        fd_limit()
    );
    let mock = MockUpstream::start().await.unwrap();
    let mut cfg = config_for(mock.base_url());
    // Long enough that every connection is still open when the memory is read.
    cfg.header_read_timeout_secs = 45;
    cfg.max_connections = n + 100;
    let proxy = start_proxy(cfg).await;
    let addr = proxy.addr;

    // Warm the proxy's allocations with a few connections first.
    for _ in 0..50 {
        drop(open_idle(addr).await);
    }
    let rss_before = rss();
    let opened_at = Instant::now();
    let mut conns = Vec::with_capacity(n);
    let mut batch = tokio::task::JoinSet::new();
    for i in 0..n {
        batch.spawn(open_idle(addr));
        if batch.len() == 500 || i == n - 1 {
            while let Some(c) = batch.join_next().await {
                conns.push(c.unwrap());
            }
        }
    }
    let open_took = opened_at.elapsed();
    assert_eq!(conns.len(), n);
    assert!(
        open_took < Duration::from_secs(40),
        "opening took {open_took:?}: the first ones may have timed out before the reading"
    );
    let per_conn = rss().saturating_sub(rss_before) / n as u64;
    // hyper's per-connection buffers and a task: tens of KiB at most, not a thread or MiBs.
    assert!(
        per_conn < 48 * 1024,
        "{per_conn} bytes of memory per idle connection"
    );
    // Each is still open and answering before the timeout? Every one idles since its answer.
    let closed = Arc::new(AtomicUsize::new(0));
    let mut waits = tokio::task::JoinSet::new();
    for mut c in conns {
        let closed = closed.clone();
        waits.spawn(async move {
            let mut buf = [0u8; 64];
            // The server's close: end of file (or a reset, also a close).
            if matches!(c.read(&mut buf).await, Ok(0) | Err(_)) {
                closed.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    let limit = Duration::from_secs(60);
    let all = tokio::time::timeout(limit, async { while waits.join_next().await.is_some() {} })
        .await
        .is_ok();
    assert!(
        all,
        "{} of {n} idle connections closed within {limit:?}",
        closed.load(Ordering::Relaxed)
    );
    assert_eq!(closed.load(Ordering::Relaxed), n);
    eprintln!(
        "{n} idle connections: {per_conn} bytes each, opened in {open_took:?}, all closed by the \
         idle timeout"
    );
}

/// A connection that made one request (`/healthz`), read its answer and now idles.
async fn open_idle(addr: std::net::SocketAddr) -> TcpStream {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    // The whole answer: a head and a small sized body.
    loop {
        let n = tcp.read(&mut buf).await.unwrap();
        assert!(
            n > 0,
            "closed before answering: {}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
            assert!(head.starts_with("http/1.1 200"), "{head}");
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if got.len() >= end + 4 + len {
                break;
            }
        }
    }
    tcp
}
