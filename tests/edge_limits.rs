//! Slow and greedy clients: a header read timeout that cuts slowloris, an idle timeout for
//! keep-alive connections, header count limits, and a cap on concurrent client connections.

mod common;
#[path = "common/raw_http.rs"]
mod raw_http;

use std::time::Duration;

use common::*;
use raw_http::{exchange, parse_responses};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tower_responses::testing::MockUpstream;

/// Reads until the server closes the connection; `None` if it is still open after `wait`.
async fn read_to_close(stream: &mut TcpStream, wait: Duration) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(wait, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .ok()
    .map(|()| got)
}

#[tokio::test]
async fn a_client_that_trickles_its_headers_is_cut() {
    let mock = MockUpstream::start().await.unwrap();
    let mut cfg = config_for(mock.base_url());
    cfg.header_read_timeout_secs = 1;
    let proxy = start_proxy(cfg).await;
    let head = format!(
        "POST /v1/responses HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         X-Padding: {}\r\nContent-Length: 2\r\n\r\n{{}}",
        "p".repeat(100)
    );
    let (mut rd, mut wr) = TcpStream::connect(proxy.addr).await.unwrap().into_split();
    // One byte every 100 ms: the head would take 17 s; the server must give up long before.
    let trickle = async move {
        for byte in head.as_bytes() {
            if wr.write_all(&[*byte]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        std::future::pending::<()>().await
    };
    let closed = async move {
        let mut buf = [0u8; 1024];
        while let Ok(1..) = rd.read(&mut buf).await {}
    };
    tokio::time::timeout(Duration::from_secs(10), async {
        tokio::select! {
            _ = trickle => unreachable!("the trickle never ends by itself"),
            _ = closed => {}
        }
    })
    .await
    .expect("the server cut the connection within 10 s");
    assert_eq!(mock.request_count(), 0);
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed() {
    let mock = MockUpstream::start().await.unwrap();
    let mut cfg = config_for(mock.base_url());
    cfg.header_read_timeout_secs = 1;
    let proxy = start_proxy(cfg).await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    // The answer comes, the connection stays open for the next request, then idles out.
    let got = read_to_close(&mut stream, Duration::from_secs(10))
        .await
        .expect("closed within 10 s of going idle");
    let (responses, _) = parse_responses(&got);
    assert_eq!(responses.len(), 1);
    assert_eq!(responses[0].status, 200);
    assert!(
        responses[0].header("connection").is_none(),
        "kept alive at first"
    );
}

#[tokio::test]
async fn header_count_is_limited() {
    let mock = MockUpstream::start().await.unwrap();
    let mut cfg = config_for(mock.base_url());
    cfg.max_headers = 20;
    let proxy = start_proxy(cfg).await;
    let request = |n: usize| {
        format!(
            "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n{}\r\n",
            "X-N: 1\r\n".repeat(n)
        )
    };
    let ok = exchange(proxy.addr, request(10).as_bytes(), Duration::from_secs(10)).await;
    assert_eq!(ok.responses[0].status, 200);
    let refused = exchange(proxy.addr, request(30).as_bytes(), Duration::from_secs(10)).await;
    assert_eq!(refused.responses[0].status, 431);
    assert!(refused.closed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_client_connections_are_capped() {
    let mock = MockUpstream::start().await.unwrap();
    let mut cfg = config_for(mock.base_url());
    cfg.max_connections = 2;
    let proxy = start_proxy(cfg).await;
    const HEALTH: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";

    // Two clients hold keep-alive connections, each proven served.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(proxy.addr).await.unwrap();
        s.write_all(HEALTH).await.unwrap();
        let mut buf = [0u8; 1024];
        let n = s.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        held.push(s);
    }
    let hits = || {
        proxy
            .metrics
            .get("tr_client_connection_limit_hits_total", &[])
    };
    tokio::time::timeout(Duration::from_secs(10), async {
        while hits().is_none() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the limit is reported");
    assert_eq!(
        proxy.metrics.get("tr_client_connections_open", &[]),
        Some(2.0)
    );

    // A third client connects (the kernel's backlog) but is not served while both are held.
    let mut third = TcpStream::connect(proxy.addr).await.unwrap();
    third.write_all(HEALTH).await.unwrap();
    let mut buf = [0u8; 1024];
    assert!(
        tokio::time::timeout(Duration::from_millis(300), third.read(&mut buf))
            .await
            .is_err(),
        "served beyond the cap"
    );
    // One leaves; the third is served.
    drop(held.pop());
    let n = tokio::time::timeout(Duration::from_secs(10), third.read(&mut buf))
        .await
        .expect("served once a connection closed")
        .unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    assert_eq!(
        hits(),
        Some(1.0),
        "one log line per time the cap is reached"
    );
}

#[tokio::test]
async fn limits_that_would_panic_or_serve_nothing_are_refused_at_startup() {
    use tower_responses::proxy::{Proxy, ProxyConfig};
    let base = || config_for("http://127.0.0.1:9/v1".into());
    type Change = Box<dyn Fn(&mut ProxyConfig)>;
    let cases: Vec<(&str, Change)> = vec![
        (
            "header_read_timeout_secs",
            Box::new(|c| c.header_read_timeout_secs = 0),
        ),
        (
            "header_read_timeout_secs",
            Box::new(|c| c.header_read_timeout_secs = u64::MAX),
        ),
        (
            "body_read_timeout_secs",
            Box::new(|c| c.body_read_timeout_secs = u64::MAX),
        ),
        ("max_headers", Box::new(|c| c.max_headers = 0)),
        ("max_connections", Box::new(|c| c.max_connections = 0)),
        ("max_header_bytes", Box::new(|c| c.max_header_bytes = 100)),
        (
            "allowed_origins",
            Box::new(|c| c.allowed_origins = vec!["*".into()]),
        ),
        (
            "allowed_origins",
            Box::new(|c| c.allowed_origins = vec!["https://app.example/path".into()]),
        ),
    ];
    for (name, change) in cases {
        let mut cfg = base();
        change(&mut cfg);
        let err = Proxy::bind(cfg).await.unwrap_err().to_string();
        assert!(err.contains(name), "{name}: {err}");
    }
    // The defaults bind.
    assert!(Proxy::bind(base()).await.is_ok());
}
