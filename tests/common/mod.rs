//! Helpers shared by the integration tests: a proxy on loopback and a plain HTTP client.
#![allow(dead_code)]

use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tower_responses::connect::UpstreamClientBuilder;
use tower_responses::metrics::Metrics;
use tower_responses::proxy::{Proxy, ProxyConfig};

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// A running proxy; dropping it stops the server.
pub struct RunningProxy {
    pub addr: SocketAddr,
    pub metrics: Metrics,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    pub task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl RunningProxy {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Begins graceful shutdown and returns the server task.
    pub fn shutdown(&mut self) -> tokio::task::JoinHandle<std::io::Result<()>> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        self.task.take().expect("not yet shut down")
    }
}

impl Drop for RunningProxy {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

pub fn config_for(upstream: String) -> ProxyConfig {
    ProxyConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        upstream,
        ..ProxyConfig::default()
    }
}

pub async fn start_proxy(config: ProxyConfig) -> RunningProxy {
    start_proxy_with(config, UpstreamClientBuilder::new()).await
}

pub async fn start_proxy_with(config: ProxyConfig, client: UpstreamClientBuilder) -> RunningProxy {
    let proxy = Proxy::bind_with(config, client).await.expect("proxy binds");
    let addr = proxy.local_addr();
    let metrics = proxy.metrics();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(proxy.serve(async {
        let _ = rx.await;
    }));
    RunningProxy {
        addr,
        metrics,
        stop: Some(tx),
        task: Some(task),
    }
}

pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

pub async fn send(client: &HttpClient, req: Request<Full<Bytes>>) -> Response<Incoming> {
    client.request(req).await.expect("proxy answers")
}

pub async fn send_collect(
    client: &HttpClient,
    req: Request<Full<Bytes>>,
) -> (StatusCode, http::HeaderMap, Bytes) {
    let res = send(client, req).await;
    let status = res.status();
    let headers = res.headers().clone();
    let body = res.into_body().collect().await.expect("body").to_bytes();
    (status, headers, body)
}

pub fn json_req(url: &str, key: Option<&str>, body: serde_json::Value) -> Request<Full<Bytes>> {
    let mut b = Request::post(url).header("content-type", "application/json");
    if let Some(k) = key {
        b = b.header("authorization", format!("Bearer {k}"));
    }
    b.body(Full::new(Bytes::from(serde_json::to_vec(&body).unwrap())))
        .unwrap()
}

pub fn error_code(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    v["error"]["code"].as_str().map(str::to_string)
}

pub fn assert_envelope(body: &[u8]) -> serde_json::Value {
    let v: serde_json::Value = serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(body)));
    assert!(v["error"]["message"].is_string(), "no error.message in {v}");
    assert!(v["error"]["type"].is_string(), "no error.type in {v}");
    v
}

/// Resident memory of this test process, in bytes (from /proc; 0 where there is none). The
/// proxy, the mock and the clients of a test all live in it.
pub fn rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .unwrap_or(0)
        * 1024
}
