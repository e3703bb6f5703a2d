//! `--demo`: the embedded mock upstream, the proxy in front of it, and a scripted workload.
//! Each row says what the client saw through the proxy and whether that is what the proxy
//! promises. It grows as layers land.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tower_responses::credentials::Secret;
use tower_responses::proxy::{Proxy, ProxyConfig};
use tower_responses::testing::{Fault, MockUpstream, Reply};

const CLIENT_KEY: &str = "demo-client-key";

struct Row {
    scenario: &'static str,
    saw: String,
    ok: bool,
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

async fn send(
    client: &HttpClient,
    url: &str,
    key: Option<&str>,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Result<(StatusCode, Bytes), String> {
    let mut req = Request::post(url).header("content-type", "application/json");
    if let Some(k) = key {
        req = req.header("authorization", format!("Bearer {k}"));
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(body)).map_err(|e| e.to_string())?;
    let res = client
        .request(req)
        .await
        .map_err(|e| format!("transport error: {e}"))?;
    let status = res.status();
    let body = res
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("body error: {e}"))?
        .to_bytes();
    Ok((status, body))
}

fn error_code(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"]["code"].as_str().map(str::to_string))
        .unwrap_or_else(|| "-".into())
}

pub async fn run() -> ExitCode {
    let started = Instant::now();
    eprintln!("starting the embedded mock upstream and the proxy ...");
    let mock = match MockUpstream::start().await {
        Ok(m) => m,
        Err(e) => {
            eprintln!("error: cannot start the mock upstream: {e}");
            return ExitCode::FAILURE;
        }
    };
    let config = ProxyConfig {
        listen: "127.0.0.1:0".parse().expect("literal address"),
        upstream: mock.base_url(),
        credentials: vec!["demo-upstream-key-1".parse().expect("literal key")],
        client_keys: vec![Secret::new(CLIENT_KEY)],
        body_limit: 64 * 1024,
        ..ProxyConfig::default()
    };
    let proxy = match Proxy::bind(config).await {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let url = format!("http://{}/v1/responses", proxy.local_addr());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(proxy.serve(async {
        let _ = stop_rx.await;
    }));
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let stream_body = Bytes::from_static(
        br#"{"model":"gpt-5.5","stream":true,"input":[{"role":"user","content":"hi"}]}"#,
    );
    let mut rows = Vec::new();

    eprintln!("[1/5] a streamed answer through the proxy");
    let r = send(&client, &url, Some(CLIENT_KEY), &[], stream_body.clone()).await;
    let upstream_saw_client_key = mock
        .requests()
        .iter()
        .any(|r| r.credential.as_deref() == Some(CLIENT_KEY));
    rows.push(match r {
        Ok((s, body)) => {
            let events = body.windows(6).filter(|w| w == b"data: ").count();
            let done = body.windows(18).any(|w| w == b"response.completed");
            Row {
                scenario: "streamed answer, credential swapped",
                saw: format!(
                    "{s}, {events} SSE events, client key upstream: {upstream_saw_client_key}"
                ),
                ok: s == StatusCode::OK && done && !upstream_saw_client_key,
            }
        }
        Err(e) => Row {
            scenario: "streamed answer, credential swapped",
            saw: e,
            ok: false,
        },
    });

    eprintln!("[2/5] a wrong client key");
    let r = send(&client, &url, Some("wrong"), &[], stream_body.clone()).await;
    rows.push(match r {
        Ok((s, body)) => Row {
            scenario: "wrong client key",
            saw: format!("{s} {}", error_code(&body)),
            ok: s == StatusCode::UNAUTHORIZED,
        },
        Err(e) => Row {
            scenario: "wrong client key",
            saw: e,
            ok: false,
        },
    });

    eprintln!("[3/5] a WebSocket upgrade (what the Codex CLI tries first)");
    let r = send(
        &client,
        &url,
        Some(CLIENT_KEY),
        &[("upgrade", "websocket"), ("connection", "upgrade")],
        Bytes::new(),
    )
    .await;
    rows.push(match r {
        Ok((s, body)) => Row {
            scenario: "websocket upgrade",
            saw: format!("{s} {}", error_code(&body)),
            ok: s == StatusCode::UPGRADE_REQUIRED,
        },
        Err(e) => Row {
            scenario: "websocket upgrade",
            saw: e,
            ok: false,
        },
    });

    eprintln!("[4/5] a body over the limit");
    let big = Bytes::from(vec![b' '; 100 * 1024]);
    let r = send(&client, &url, Some(CLIENT_KEY), &[], big).await;
    rows.push(match r {
        Ok((s, body)) => Row {
            scenario: "oversized body",
            saw: format!("{s} {}", error_code(&body)),
            ok: s == StatusCode::PAYLOAD_TOO_LARGE,
        },
        Err(e) => Row {
            scenario: "oversized body",
            saw: e,
            ok: false,
        },
    });

    eprintln!("[5/5] the upstream drops the connection");
    mock.push(Reply::fault(Fault::CloseAfterRead));
    let r = send(&client, &url, Some(CLIENT_KEY), &[], stream_body.clone()).await;
    rows.push(match r {
        Ok((s, body)) => Row {
            scenario: "upstream connection dropped",
            saw: format!("{s} {}", error_code(&body)),
            ok: s == StatusCode::BAD_GATEWAY,
        },
        Err(e) => Row {
            scenario: "upstream connection dropped",
            saw: e,
            ok: false,
        },
    });

    let _ = stop_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(5), server).await;

    println!();
    println!("{:<38} {:<6} what the client saw", "scenario", "ok");
    println!("{}", "-".repeat(96));
    for row in &rows {
        println!(
            "{:<38} {:<6} {}",
            row.scenario,
            if row.ok { "yes" } else { "NO" },
            row.saw
        );
    }
    let all_ok = rows.iter().all(|r| r.ok);
    println!();
    println!(
        "{} of {} scenarios handled in {:.1} s",
        rows.iter().filter(|r| r.ok).count(),
        rows.len(),
        started.elapsed().as_secs_f64()
    );
    if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
