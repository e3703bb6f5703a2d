//! `tower-responses demo` (and the example's old `--demo`): the embedded mock upstream with
//! the seed faults switched on, the proxy (the full stack) in front of it, and a scripted
//! workload. Every fault is sent twice: straight to the mock (what a client sees without the
//! stack) and through the proxy. The table says what the
//! client saw each way and which layer acted; the exit code is 0 only if every row is handled.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use crate::credentials::Secret;
use crate::profile::Profile;
use crate::proxy::{Proxy, ProxyConfig};
use crate::testing::{Fault, MockUpstream, Reply, ResponseStore, StaleMode, codex_strict, events};
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

const CLIENT_KEY: &str = "demo-client-key";
const KEY_A: &str = "sk-demo-aaaaaaaaaaaaaaaaaaaa-AAAA";
const KEY_B: &str = "sk-demo-bbbbbbbbbbbbbbbbbbbb-BBBB";

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// What a client saw, in a few words.
#[derive(Debug, Default)]
struct Seen {
    status: Option<StatusCode>,
    transport: Option<String>,
    created: usize,
    completed: bool,
    failed: Option<String>,
    error_code: Option<String>,
    still_open: bool,
    response_id: Option<String>,
    compaction_items: usize,
    detail: Option<String>,
}

impl Seen {
    fn clean(&self) -> bool {
        self.status == Some(StatusCode::OK)
            && self.created == 1
            && self.completed
            && self.failed.is_none()
            && !self.still_open
    }

    fn summary(&self) -> String {
        if let Some(t) = &self.transport {
            return format!("transport error ({t})");
        }
        let mut s = self.status.map_or("-".into(), |s| s.as_u16().to_string());
        if let Some(code) = &self.error_code {
            s.push_str(&format!(" {code}"));
        }
        if let Some(f) = &self.failed {
            s.push_str(&format!(", response.failed {f}"));
        } else if self.completed {
            s.push_str(", completed");
        }
        if self.still_open {
            s.push_str(", stream still open after 2 s");
        }
        s
    }
}

struct Row {
    fault: &'static str,
    without: String,
    with: String,
    layer: &'static str,
    ok: bool,
}

async fn send(
    client: &HttpClient,
    url: &str,
    key: &str,
    headers: &[(&str, &str)],
    body: &Value,
) -> Seen {
    let mut req = Request::post(url)
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {key}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let Ok(req) = req.body(Full::new(Bytes::from(body.to_string()))) else {
        return Seen::default();
    };
    let mut seen = Seen::default();
    let res = match tokio::time::timeout(Duration::from_secs(10), client.request(req)).await {
        Ok(Ok(res)) => res,
        Ok(Err(e)) => {
            seen.transport = Some(short_error(&e));
            return seen;
        }
        Err(_) => {
            seen.transport = Some("no answer in 10 s".into());
            return seen;
        }
    };
    seen.status = Some(res.status());
    let mut body = res.into_body();
    let mut buf = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(2), body.frame()).await {
            Err(_) => {
                seen.still_open = true;
                break;
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                seen.transport = Some(format!("body broke: {e}"));
                break;
            }
            Ok(Some(Ok(f))) => {
                if let Ok(d) = f.into_data() {
                    buf.extend_from_slice(&d);
                }
            }
        }
    }
    if let Ok(v) = serde_json::from_slice::<Value>(&buf) {
        seen.error_code = v["error"]["code"].as_str().map(str::to_string);
        seen.response_id = v["id"].as_str().map(str::to_string);
        seen.detail = v["detail"].as_str().map(|d| format!("{d:?}"));
        seen.compaction_items = v["output"].as_array().map_or(0, |o| {
            o.iter().filter(|i| i["type"] == "compaction").count()
        });
    }
    for line in String::from_utf8_lossy(&buf).lines() {
        let Some(data) = line.strip_prefix("data: ") else {
            continue;
        };
        let Ok(v) = serde_json::from_str::<Value>(data) else {
            continue;
        };
        match v["type"].as_str() {
            Some("response.created") => {
                seen.created += 1;
                seen.response_id = v["response"]["id"].as_str().map(str::to_string);
            }
            Some("response.completed") => seen.completed = true,
            Some("response.failed") => {
                seen.failed = v["response"]["error"]["code"].as_str().map(str::to_string);
            }
            _ => {}
        }
    }
    seen
}

fn short_error(e: &hyper_util::client::legacy::Error) -> String {
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        msg = s.to_string();
        src = s.source();
    }
    msg.chars().take(60).collect()
}

fn turn(prev: Option<&str>, text: &str) -> Value {
    let mut b = json!({"model": "gpt-5.5", "stream": true, "store": true, "input": [{"role": "user", "content": text}]});
    if let Some(p) = prev {
        b["previous_response_id"] = json!(p);
    }
    b
}

fn failed_stream(code: &str, message: &str) -> Reply {
    Reply::sse(vec![
        events::created("resp_demo_fail"),
        events::in_progress("resp_demo_fail"),
        events::failed("resp_demo_fail", code, message),
    ])
}

/// Runs the demo; 0 only if every row was handled.
pub(crate) async fn run() -> ExitCode {
    let started = Instant::now();
    eprintln!("starting the embedded mock upstream and the proxy (credentials A and B) ...");
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
        credentials: vec![
            KEY_A.parse().expect("literal key"),
            KEY_B.parse().expect("literal key"),
        ],
        client_keys: vec![Secret::new(CLIENT_KEY)],
        body_limit: 64 * 1024,
        // The mock stands for the OpenAI platform, so remote compaction is tried first.
        profile_override: Some(Profile::Openai),
        ..ProxyConfig::default()
    };
    let proxy = match Proxy::bind(config).await {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let proxy_addr = proxy.local_addr();
    let via = format!("http://{proxy_addr}/v1/responses");
    let direct = format!("{}/responses", mock.base_url());
    let metrics = proxy.metrics();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(proxy.serve(async {
        let _ = stop_rx.await;
    }));
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let mut rows = Vec::new();
    let plain = turn(None, "hello");

    eprintln!("[1/11] quota exhausted inside a 200 stream (seed 004)");
    mock.push_for(
        KEY_A,
        failed_stream("insufficient_quota", "You exceeded your current quota"),
    );
    let without = send(&client, &direct, KEY_A, &[], &plain).await;
    mock.push_for(
        KEY_A,
        failed_stream("insufficient_quota", "You exceeded your current quota"),
    );
    let with = send(&client, &via, CLIENT_KEY, &[], &plain).await;
    let a_tried = metrics.get(
        "tr_credential_attempts_total",
        &[("credential", "key-1"), ("outcome", "quota_exhausted")],
    ) == Some(1.0);
    rows.push(Row {
        fault: "quota exhausted in a 200 stream",
        without: without.summary(),
        with: format!(
            "{}{}",
            with.summary(),
            if a_tried {
                "; A cooled, B answered"
            } else {
                ""
            }
        ),
        layer: "SoftFailureDetect + CredentialRotate",
        ok: with.clean() && a_tried,
    });

    eprintln!("[2/11] a follow-up with previous_response_id, two accounts (seed 003)");
    let store = ResponseStore::new(2300);
    store.install(&mock);
    let first = send(&client, &via, CLIENT_KEY, &[], &turn(None, "first")).await;
    let prev = first.response_id.clone().unwrap_or_default();
    let owner = store.owner(&prev).unwrap_or_default();
    let other = if owner == KEY_A { KEY_B } else { KEY_A };
    let without = send(&client, &direct, other, &[], &turn(Some(&prev), "second")).await;
    let with = send(&client, &via, CLIENT_KEY, &[], &turn(Some(&prev), "second")).await;
    rows.push(Row {
        fault: "anchored follow-up, 2 accounts",
        without: format!("{} (sent with the other key)", without.summary()),
        with: with.summary(),
        layer: "Continuity (pins the owner)",
        ok: with.clean(),
    });

    eprintln!("[3/11] the upstream drops the connection under previous_response_id (seed 003)");
    let prev = with.response_id.clone().unwrap_or_default();
    mock.set_handler(|_| None);
    mock.push(Reply::fault(Fault::CloseAfterRead));
    let without = send(&client, &direct, &owner, &[], &turn(Some(&prev), "third")).await;
    // Twice: the stale-connection retry on a fresh connection is lost too.
    mock.push(Reply::fault(Fault::CloseAfterRead));
    mock.push(Reply::fault(Fault::CloseAfterRead));
    let lost = send(&client, &via, CLIENT_KEY, &[], &turn(Some(&prev), "third")).await;
    store.install(&mock);
    let retried = send(&client, &via, CLIENT_KEY, &[], &turn(Some(&prev), "third")).await;
    rows.push(Row {
        fault: "upstream lost under an anchor",
        without: without.summary(),
        with: format!("{}; the retry: {}", lost.summary(), retried.summary()),
        layer: "Continuity (502, never 400)",
        ok: lost.status == Some(StatusCode::BAD_GATEWAY)
            && lost.error_code.as_deref() == Some("upstream_unavailable")
            && retried.clean(),
    });
    mock.set_handler(|_| None);

    eprintln!("[4/11] the upstream keeps the stream open after response.completed");
    mock.push(Reply::text("done, but the connection stays open").hold_open());
    let without = send(&client, &direct, KEY_A, &[], &plain).await;
    mock.push(Reply::text("done, but the connection stays open").hold_open());
    let with = send(&client, &via, CLIENT_KEY, &[], &plain).await;
    rows.push(Row {
        fault: "stream left open after terminal",
        without: without.summary(),
        with: with.summary(),
        layer: "SoftFailureDetect (ends the body)",
        ok: with.clean(),
    });

    eprintln!("[5/11] providers drop idle keep-alive connections (seed 001)");
    mock.set_stale(Duration::from_millis(200), StaleMode::Html400);
    let pooled: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let mut without = Vec::new();
    let mut with = Vec::new();
    for _ in 0..2 {
        without.push(send(&pooled, &direct, KEY_B, &[], &plain).await);
        with.push(send(&client, &via, CLIENT_KEY, &[], &plain).await);
        // Longer than the provider's idle limit, so the next request meets a stale connection.
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    without.push(send(&pooled, &direct, KEY_B, &[], &plain).await);
    with.push(send(&client, &via, CLIENT_KEY, &[], &plain).await);
    mock.clear_stale();
    let retries = metrics.total("tr_fresh_retries_total");
    rows.push(Row {
        fault: "stale pooled connections",
        without: without
            .iter()
            .map(Seen::summary)
            .collect::<Vec<_>>()
            .join(" / "),
        with: format!(
            "{} ({retries} silent retries on fresh connections)",
            with.iter()
                .map(Seen::summary)
                .collect::<Vec<_>>()
                .join(" / ")
        ),
        layer: "FreshConnection",
        ok: with.iter().all(Seen::clean) && retries >= 1.0,
    });

    eprintln!("[6/11] remote compaction for a model the compact route refuses (seed 000)");
    mock.set_handler(|r| {
        let refused = r.path.ends_with("/responses/compact")
            && r.json().is_some_and(|b| b["model"] == "gpt-5.5");
        refused.then(|| Reply::raw(StatusCode::BAD_GATEWAY, "text/plain", "error code: 502"))
    });
    let compact = json!({"model": "gpt-5.5", "input": [
        {"role": "user", "content": "refactor the parser"},
        {"role": "assistant", "content": "done: parser split in three modules"}
    ], "instructions": "", "tools": [], "parallel_tool_calls": false});
    let direct_compact = format!("{}/responses/compact", mock.base_url());
    let via_compact = format!("http://{}/v1/responses/compact", proxy_addr);
    let without = send(&client, &direct_compact, KEY_B, &[], &compact).await;
    let mut with = send(&client, &via_compact, CLIENT_KEY, &[], &compact).await;
    let again = send(&client, &via_compact, CLIENT_KEY, &[], &compact).await;
    let remote_calls = mock
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("/responses/compact"))
        .count();
    mock.set_handler(|_| None);
    with.completed = with.compaction_items == 1;
    rows.push(Row {
        fault: "compact route refuses the model",
        without: without.summary(),
        with: format!(
            "{} compaction item; again: {} (remote calls in all: {remote_calls})",
            with.compaction_items,
            again.status.map_or(0, |s| s.as_u16())
        ),
        layer: "CompactRoute (local summary)",
        ok: with.status == Some(StatusCode::OK)
            && with.compaction_items == 1
            && again.compaction_items == 1
            && remote_calls == 2,
    });

    eprintln!("[7/11] the ChatGPT Codex backend rejects ordinary bodies (seed 002)");
    let strict = match codex_strict_proxy().await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let seed_body = json!({
        "model": "gpt-5.5",
        "input": [{"role": "user", "content": [{"type": "input_text", "text": "hi"}]}],
        "stream": true, "store": false, "max_output_tokens": 8192, "reasoning": {"effort": "none"}
    });
    let without = send(
        &client,
        &format!("{}/responses", strict.mock.base_url()),
        KEY_A,
        &[],
        &seed_body,
    )
    .await;
    let with = send(&client, &strict.url, "unused", &[], &seed_body).await;
    let mut sdk_body = seed_body.clone();
    sdk_body["stream"] = json!(false);
    sdk_body["temperature"] = json!(0.2);
    let folded = send(&client, &strict.url, "unused", &[], &sdk_body).await;
    rows.push(Row {
        fault: "Codex backend rejects the body",
        without: format!(
            "{} {}",
            without.summary(),
            without.detail.clone().unwrap_or_default()
        ),
        with: format!(
            "{}; stream:false: {} JSON object",
            with.summary(),
            folded.status.map_or(0, |s| s.as_u16())
        ),
        layer: "BodyNormalize (chatgpt-codex profile)",
        ok: with.clean() && folded.status == Some(StatusCode::OK) && folded.response_id.is_some(),
    });
    let _ = strict.stop.send(());

    eprintln!(
        "[8/11] the Codex CLI's WebSocket: prewarm, then turns chained on previous_response_id"
    );
    // An upstream that speaks only HTTP: Codex alone gets no socket there.
    mock.set_ws_enabled(false);
    let http_before = mock.request_count();
    let without = ws_session(&mock.addr().to_string(), "/v1/responses", Some(KEY_A)).await;
    let with = ws_session(&proxy_addr.to_string(), "/v1/responses", Some(CLIENT_KEY)).await;
    mock.set_ws_enabled(true);
    let http_turns = mock.request_count() - http_before;
    let upstream_full = mock
        .requests()
        .last()
        .and_then(|r| r.json())
        .and_then(|b| b["input"].as_array().map(Vec::len));
    rows.push(Row {
        fault: "Codex WebSocket to an HTTP-only upstream",
        without: without.summary(),
        with: match upstream_full {
            Some(n) if with.ok() => format!(
                "{}; the socket refused upstream, {http_turns} turns went as full HTTP requests \
                 ({n} input items on the last)",
                with.summary()
            ),
            _ => with.summary(),
        },
        layer: "websocket::Session + HttpCarrier (the whole stack per turn)",
        // developer + user + the first answer + user: the last turn expanded in full.
        ok: with.ok() && upstream_full == Some(4) && http_turns == 2,
    });

    eprintln!("[9/11] every account exhausted");
    let resets_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        + 900;
    let quota = json!({"error": {"type": "usage_limit_reached", "message": "The usage limit has been reached", "resets_at": resets_at}});
    for key in [KEY_A, KEY_B] {
        mock.push_for(
            key,
            Reply::json(StatusCode::TOO_MANY_REQUESTS, quota.clone()),
        );
    }
    let _ = send(&client, &via, CLIENT_KEY, &[], &plain).await;
    let before = mock.request_count();
    let with = send(&client, &via, CLIENT_KEY, &[], &plain).await;
    rows.push(Row {
        fault: "every account exhausted",
        without: "-".into(),
        with: format!(
            "{}, no upstream call: {}",
            with.summary(),
            mock.request_count() == before
        ),
        layer: "CredentialRotate (429 + Retry-After)",
        ok: with.status == Some(StatusCode::TOO_MANY_REQUESTS) && mock.request_count() == before,
    });

    eprintln!("[10/11] one upstream 500 with one credential, and the client's retry");
    match single_key_proxy().await {
        Ok(single) => {
            let boom = || {
                Reply::json(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    json!({"error": {"type": "server_error", "message": "The server had an error"}}),
                )
            };
            single.mock.push(boom());
            let direct = format!("{}/responses", single.mock.base_url());
            let first = send(&client, &direct, KEY_A, &[], &plain).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
            let again = send(&client, &direct, KEY_A, &[], &plain).await;
            single.mock.push(boom());
            let via_first = send(&client, &single.url, "unused", &[], &plain).await;
            // The Codex CLI retries a 5xx after 200 ms and gives up on any 429.
            tokio::time::sleep(Duration::from_millis(200)).await;
            let via_again = send(&client, &single.url, "unused", &[], &plain).await;
            rows.push(Row {
                fault: "one 500, one credential",
                without: format!("{}; the retry: {}", first.summary(), again.summary()),
                with: format!(
                    "{}; the retry: {}",
                    via_first.summary(),
                    via_again.summary()
                ),
                layer: "credentials::policy (5xx cools softly, no 429)",
                ok: via_first.status == Some(StatusCode::INTERNAL_SERVER_ERROR)
                    && via_again.clean(),
            });
            let _ = single.stop.send(());
        }
        Err(e) => {
            eprintln!("error: cannot start the one-credential proxy: {e}");
            return ExitCode::FAILURE;
        }
    }

    eprintln!("[11/11] proxy edges: wrong client key, oversized body");
    let bad_key = send(&client, &via, "wrong", &[], &plain).await;
    let big = json!({"model": "m", "input": "x".repeat(100 * 1024)});
    let too_big = send(&client, &via, CLIENT_KEY, &[], &big).await;
    rows.push(Row {
        fault: "bad key / oversized",
        without: "-".into(),
        with: format!("{} / {}", bad_key.summary(), too_big.summary()),
        layer: "proxy edge",
        ok: bad_key.status == Some(StatusCode::UNAUTHORIZED)
            && too_big.status == Some(StatusCode::PAYLOAD_TOO_LARGE),
    });

    let _ = stop_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
    print_table(&rows);
    let handled = rows.iter().filter(|r| r.ok).count();
    println!(
        "\n{handled} of {} faults handled in {:.1} s",
        rows.len(),
        started.elapsed().as_secs_f64()
    );
    if handled == rows.len() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// A second proxy in front of its own mock (the Codex-strict backend, one key).
struct SideProxy {
    mock: MockUpstream,
    url: String,
    stop: tokio::sync::oneshot::Sender<()>,
}

async fn codex_strict_proxy() -> Result<SideProxy, String> {
    let mock = MockUpstream::start().await.map_err(|e| e.to_string())?;
    mock.set_handler(codex_strict());
    let config = ProxyConfig {
        listen: "127.0.0.1:0".parse().expect("literal address"),
        upstream: mock.base_url(),
        profile_override: Some(Profile::ChatgptCodex),
        credentials: vec![
            "demo-chatgpt-access-token-xxxxxxxx"
                .parse()
                .expect("literal key"),
        ],
        ..ProxyConfig::default()
    };
    side_proxy(mock, config).await
}

/// Binds and serves a side proxy in front of its own mock.
async fn side_proxy(mock: MockUpstream, config: ProxyConfig) -> Result<SideProxy, String> {
    let proxy = Proxy::bind(config).await.map_err(|e| e.to_string())?;
    let url = format!("http://{}/v1/responses", proxy.local_addr());
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(proxy.serve(async {
        let _ = rx.await;
    }));
    Ok(SideProxy { mock, url, stop })
}

/// A proxy with one API key in front of its own mock (the README's main setup).
async fn single_key_proxy() -> Result<SideProxy, String> {
    let mock = MockUpstream::start().await.map_err(|e| e.to_string())?;
    let config = ProxyConfig {
        listen: "127.0.0.1:0".parse().expect("literal address"),
        upstream: mock.base_url(),
        credentials: vec![KEY_A.parse().expect("literal key")],
        ..ProxyConfig::default()
    };
    side_proxy(mock, config).await
}

/// What a WebSocket client saw in [`ws_session`].
#[derive(Debug, Default)]
struct WsSeen {
    refused: Option<String>,
    prewarm_local: bool,
    completed: usize,
    errors: Vec<String>,
    sent_bytes: usize,
}

impl WsSeen {
    fn ok(&self) -> bool {
        self.refused.is_none()
            && self.prewarm_local
            && self.completed == 3
            && self.errors.is_empty()
    }

    fn summary(&self) -> String {
        if let Some(r) = &self.refused {
            return format!(
                "no socket ({r}): Codex falls back to HTTP and resends its history every turn"
            );
        }
        let mut s = format!(
            "{} of 3 completed{}, client sent {} B in all",
            self.completed,
            if self.prewarm_local {
                " (prewarm answered locally)"
            } else {
                ""
            },
            self.sent_bytes
        );
        if !self.errors.is_empty() {
            s.push_str(&format!(", errors: {}", self.errors.join(", ")));
        }
        s
    }
}

/// A Codex-like socket session: a `generate:false` prewarm, then two turns each chained on
/// the previous response with only its new item, as the Codex CLI sends them.
async fn ws_session(addr: &str, path: &str, key: Option<&str>) -> WsSeen {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;

    let mut seen = WsSeen::default();
    let Ok(mut req) = format!("ws://{addr}{path}").into_client_request() else {
        seen.refused = Some("bad address".into());
        return seen;
    };
    if let Some(key) = key {
        if let Ok(v) = format!("Bearer {key}").parse() {
            req.headers_mut().insert(http::header::AUTHORIZATION, v);
        }
    }
    let connected = async {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        tokio_tungstenite::client_async(req, tcp)
            .await
            .map_err(|e| match e {
                tokio_tungstenite::tungstenite::Error::Http(res) => {
                    format!("HTTP {}", res.status().as_u16())
                }
                e => e.to_string(),
            })
    };
    let mut ws = match tokio::time::timeout(Duration::from_secs(10), connected).await {
        Ok(Ok((ws, _))) => ws,
        Ok(Err(e)) => {
            seen.refused = Some(e);
            return seen;
        }
        Err(_) => {
            seen.refused = Some("no answer in 10 s".into());
            return seen;
        }
    };
    let mut previous: Option<String> = None;
    let frames = [
        json!({"type": "response.create", "model": "gpt-5.5", "generate": false,
               "input": [{"type": "message", "role": "developer", "content": "You are a demo agent."}]}),
        json!({"type": "response.create", "model": "gpt-5.5",
               "input": [{"type": "message", "role": "user", "content": "hello"}]}),
        json!({"type": "response.create", "model": "gpt-5.5",
               "input": [{"type": "message", "role": "user", "content": "and again"}]}),
    ];
    for (i, mut frame) in frames.into_iter().enumerate() {
        if let Some(p) = &previous {
            frame["previous_response_id"] = json!(p);
        }
        let text = frame.to_string();
        seen.sent_bytes += text.len();
        if ws.send(Message::text(text)).await.is_err() {
            seen.errors.push("socket closed".into());
            return seen;
        }
        loop {
            let msg = match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
                Ok(Some(Ok(Message::Text(t)))) => t,
                Ok(Some(Ok(_))) => continue,
                _ => {
                    seen.errors.push("socket ended".into());
                    return seen;
                }
            };
            let Ok(v) = serde_json::from_str::<Value>(msg.as_str()) else {
                continue;
            };
            match v["type"].as_str() {
                Some("response.completed") => {
                    let id = v["response"]["id"].as_str().unwrap_or("").to_string();
                    if i == 0 {
                        seen.prewarm_local = id.starts_with("resp_prewarm_");
                    }
                    previous = Some(id);
                    seen.completed += 1;
                    break;
                }
                Some("error" | "response.failed") => {
                    let code = v["error"]["code"].as_str().unwrap_or("error").to_string();
                    seen.errors.push(code);
                    break;
                }
                _ => {}
            }
        }
    }
    let _ = ws.close(None).await;
    seen
}

fn print_table(rows: &[Row]) {
    println!();
    for row in rows {
        println!("{} {}", if row.ok { "[ok]  " } else { "[FAIL]" }, row.fault);
        println!("         without the stack: {}", row.without);
        println!("         through the stack: {}", row.with);
        println!("         acted:             {}", row.layer);
    }
}
