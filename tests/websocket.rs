//! The client-facing Responses WebSocket through a real proxy on 127.0.0.1: a
//! tokio-tungstenite client (the library the Codex CLI uses) against the proxy, the mock
//! upstream speaking HTTP/SSE behind it, so every turn goes through the `HttpCarrier`.

mod common;

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use futures_util::{SinkExt, StreamExt};
use http::StatusCode;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tower_responses::testing::{MockUpstream, Reply, events};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

const KEY_A: &str = "sk-ws-aaaaaaaaaaaaaaaaaaaaaaaa-AAAA";
const KEY_B: &str = "sk-ws-bbbbbbbbbbbbbbbbbbbbbbbb-BBBB";

async fn connect_with(
    proxy: &RunningProxy,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Ws, WsError> {
    let mut req = format!("ws://{}{}", proxy.addr, path)
        .into_client_request()
        .unwrap();
    for (k, v) in headers {
        req.headers_mut().insert(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    // Small buffers: the thousand-socket test holds its clients in this process too.
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    tokio_tungstenite::connect_async_with_config(req, Some(config), false)
        .await
        .map(|(ws, _)| ws)
}

async fn connect(proxy: &RunningProxy) -> Ws {
    connect_with(
        proxy,
        "/v1/responses",
        &[("openai-beta", "responses_websockets=2026-02-06")],
    )
    .await
    .expect("upgrade accepted")
}

/// The HTTP status an upgrade was refused with, and its body.
async fn refused(proxy: &RunningProxy, path: &str, headers: &[(&str, &str)]) -> (u16, Value) {
    match connect_with(proxy, path, headers).await {
        Err(WsError::Http(res)) => {
            let body = res.body().clone().unwrap_or_default();
            (res.status().as_u16(), assert_envelope(&body))
        }
        Ok(_) => panic!("upgrade on {path} was accepted"),
        Err(e) => panic!("unexpected error: {e}"),
    }
}

async fn send(ws: &mut Ws, frame: Value) {
    ws.send(Message::text(frame.to_string())).await.unwrap();
}

/// The next text frame as JSON (pings and pongs skipped), within 10 s.
async fn next_json(ws: &mut Ws) -> Value {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a frame within 10 s")
            .expect("socket open")
            .expect("frame readable");
        match msg {
            Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected frame {other:?}"),
        }
    }
}

/// Every frame up to and including the turn's terminal event or error frame.
async fn until_done(ws: &mut Ws) -> Vec<Value> {
    let mut out = Vec::new();
    loop {
        let v = next_json(ws).await;
        let t = v["type"].as_str().unwrap_or("").to_string();
        out.push(v);
        if matches!(
            t.as_str(),
            "response.completed" | "response.failed" | "response.incomplete" | "error"
        ) {
            return out;
        }
    }
}

fn create(input: Value) -> Value {
    json!({
        "type": "response.create",
        "model": "gpt-5.5",
        "instructions": "be brief",
        "input": input,
        "tools": [{"type": "function", "name": "exec_command", "parameters": {"type": "object", "properties": {"cmd": {"type": "string"}}}}],
        "tool_choice": "auto",
        "parallel_tool_calls": true,
        "store": false,
        "stream": true,
        "prompt_cache_key": "sess-ws-1",
        "client_metadata": {"x-codex-window-id": "sess-ws-1:0"},
    })
}

/// A streamed answer whose output is `items`, each as `output_item.added` + `.done`.
fn answer_with(id: &str, items: &[Value]) -> Vec<Value> {
    let mut evs = vec![events::created(id), events::in_progress(id)];
    for item in items {
        evs.push(events::output_item_added(item.clone()));
        evs.push(events::output_item_done(item.clone()));
    }
    evs.push(events::completed(id, items.to_vec(), events::usage(10, 5)));
    evs
}

fn message(role: &str, text: &str) -> Value {
    json!({"type": "message", "role": role, "content": [{"type": "input_text", "text": text}]})
}

fn output_items(frames: &[Value]) -> Vec<Value> {
    frames
        .iter()
        .filter(|f| f["type"] == "response.output_item.done")
        .map(|f| f["item"].clone())
        .collect()
}

async fn proxy_for(mock: &MockUpstream) -> RunningProxy {
    start_proxy(config_for(mock.base_url())).await
}

#[tokio::test]
async fn the_upgrade_passes_the_same_edge_as_http() {
    let mock = MockUpstream::start().await.unwrap();
    let proxy = proxy_for(&mock).await;
    // A web page's socket (browsers send Origin on every upgrade) is refused before any upgrade.
    let (status, v) = refused(
        &proxy,
        "/v1/responses",
        &[("origin", "https://evil.example")],
    )
    .await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (403, Some("origin_not_allowed"))
    );
    // DNS rebinding: a Host that is not loopback.
    let (status, _) = refused(&proxy, "/v1/responses", &[("host", "evil.example")]).await;
    assert_eq!(status, 403);
    // Only the Responses paths become sockets; elsewhere the client is told to use HTTP.
    let (status, v) = refused(&proxy, "/v1/models", &[]).await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (426, Some("websocket_not_supported"))
    );
    // The ChatGPT backend's own path is served too.
    let mut ws = connect_with(&proxy, "/backend-api/codex/responses", &[])
        .await
        .expect("codex path upgrade");
    mock.push(Reply::sse(answer_with(
        "resp_path",
        &[message("assistant", "hi")],
    )));
    send(&mut ws, create(json!([message("user", "hello")]))).await;
    let frames = until_done(&mut ws).await;
    assert_eq!(frames.last().unwrap()["type"], "response.completed");
    assert_eq!(mock.requests()[0].path, "/v1/responses");

    // With client keys: a missing or wrong key is a 401 before the upgrade, and the right
    // key never reaches the upstream (the pool's credential does).
    let mut cfg = config_for(mock.base_url());
    cfg.client_keys = vec![tower_responses::credentials::Secret::new(
        "client-secret-ws",
    )];
    cfg.credentials = vec![KEY_A.parse().unwrap()];
    let keyed = start_proxy(cfg).await;
    let (status, v) = refused(&keyed, "/v1/responses", &[]).await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (401, Some("invalid_api_key"))
    );
    let (status, _) = refused(
        &keyed,
        "/v1/responses",
        &[("authorization", "Bearer wrong")],
    )
    .await;
    assert_eq!(status, 401);
    let mut ws = connect_with(
        &keyed,
        "/v1/responses",
        &[("authorization", "Bearer client-secret-ws")],
    )
    .await
    .expect("keyed upgrade");
    send(&mut ws, create(json!([message("user", "hello")]))).await;
    let frames = until_done(&mut ws).await;
    assert_eq!(frames.last().unwrap()["type"], "response.completed");
    let last = mock.requests().pop().unwrap();
    assert_eq!(
        last.header("authorization"),
        Some(&*format!("Bearer {KEY_A}"))
    );
}

/// A Codex-like session over the socket: a prewarm, a turn chained on it that calls a tool, a
/// turn chained on that with the tool's output. The HTTP-only upstream receives, each turn,
/// exactly the body the same client would have POSTed over HTTP (checked by POSTing it).
#[tokio::test]
async fn chained_frames_reach_an_http_upstream_as_the_full_requests_http_would_send() {
    let mock = MockUpstream::start().await.unwrap();
    let proxy = proxy_for(&mock).await;
    let mut ws = connect(&proxy).await;

    // Prewarm: answered by the proxy, nothing goes upstream.
    let developer = message("developer", "You are a coding agent.");
    let mut prewarm = create(json!([developer.clone()]));
    prewarm["generate"] = json!(false);
    send(&mut ws, prewarm).await;
    let warm = until_done(&mut ws).await;
    assert_eq!(warm.len(), 2, "created + completed: {warm:?}");
    assert_eq!(warm[0]["type"], "response.created");
    let warm_id = warm[1]["response"]["id"].as_str().unwrap().to_string();
    assert!(warm_id.starts_with("resp_prewarm_"));
    assert_eq!(warm[1]["response"]["output"], json!([]));
    assert_eq!(
        mock.request_count(),
        0,
        "a prewarm costs no upstream request"
    );

    // The history as the client keeps it (what an HTTP client resends every turn).
    let mut history = vec![developer];
    let call = json!({"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "exec_command", "arguments": "{\"cmd\":\"ls\"}", "status": "completed"});
    mock.push(Reply::sse(answer_with(
        "resp_1",
        std::slice::from_ref(&call),
    )));
    let user = message("user", "list the files");
    history.push(user.clone());
    let mut turn1 = create(json!([user]));
    turn1["previous_response_id"] = json!(warm_id);
    send(&mut ws, turn1).await;
    let frames = until_done(&mut ws).await;
    assert_eq!(frames.last().unwrap()["type"], "response.completed");
    history.extend(output_items(&frames));

    let done = message("assistant", "two files");
    mock.push(Reply::sse(answer_with(
        "resp_2",
        std::slice::from_ref(&done),
    )));
    let tool_output =
        json!({"type": "function_call_output", "call_id": "call_1", "output": "a.rs\nb.rs"});
    history.push(tool_output.clone());
    let mut turn2 = create(json!([tool_output]));
    turn2["previous_response_id"] = json!("resp_1");
    send(&mut ws, turn2).await;
    let frames = until_done(&mut ws).await;
    assert_eq!(frames.last().unwrap()["response"]["id"], "resp_2");

    let over_ws: Vec<Value> = mock.requests().iter().map(|r| r.json().unwrap()).collect();
    assert_eq!(over_ws.len(), 2);
    for body in &over_ws {
        for field in ["type", "generate", "previous_response_id"] {
            assert!(
                body.get(field).is_none(),
                "{field} reached the upstream: {body}"
            );
        }
    }
    assert_eq!(
        over_ws[1]["input"],
        json!(history),
        "the full input of turn 2"
    );

    // The same two turns as an HTTP client sends them: full history, no anchor.
    let http = client();
    let turn_http = |input: &[Value]| {
        let mut body = create(json!(input));
        body.as_object_mut().unwrap().remove("type");
        json_req(&proxy.url("/v1/responses"), None, body)
    };
    mock.push(Reply::sse(answer_with(
        "resp_1",
        std::slice::from_ref(&call),
    )));
    let (status, _, _) = send_collect(&http, turn_http(&history[..2])).await;
    assert_eq!(status, StatusCode::OK);
    mock.push(Reply::sse(answer_with("resp_2", &[done])));
    let (status, _, _) = send_collect(&http, turn_http(&history)).await;
    assert_eq!(status, StatusCode::OK);
    let over_http: Vec<Value> = mock.requests()[2..]
        .iter()
        .map(|r| r.json().unwrap())
        .collect();
    assert_eq!(
        over_ws, over_http,
        "the upstream cannot tell the socket from HTTP"
    );
    assert_eq!(proxy.metrics.total("tr_ws_expanded_total"), 2.0);

    // A chain this socket does not know: the canonical error, on which Codex resends in full.
    let mut stale = create(json!([message("user", "again")]));
    stale["previous_response_id"] = json!("resp_unknown");
    send(&mut ws, stale).await;
    let err = next_json(&mut ws).await;
    assert_eq!(err["type"], "error");
    assert_eq!(err["status"], 400);
    assert_eq!(err["error"]["code"], "previous_response_not_found");
    assert_eq!(mock.request_count(), 4, "nothing went upstream for it");
}

#[tokio::test]
async fn bad_frames_get_error_frames_and_the_socket_goes_on() {
    let mock = MockUpstream::start().await.unwrap();
    let mut cfg = config_for(mock.base_url());
    cfg.websocket.max_message_bytes = 64 * 1024;
    let proxy = start_proxy(cfg).await;
    let mut ws = connect(&proxy).await;

    // Over the budget: a 400 the client does not retry, never a 1009 close or a 413.
    let big = create(json!([message("user", &"x".repeat(100 * 1024))]));
    send(&mut ws, big).await;
    let err = next_json(&mut ws).await;
    assert_eq!(
        (err["type"].as_str(), err["status"].as_u64()),
        (Some("error"), Some(400))
    );
    assert_eq!(err["error"]["code"], "payload_too_large");

    // Binary frames are not the protocol.
    ws.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    let err = next_json(&mut ws).await;
    assert_eq!(err["error"]["code"], "unsupported_frame");

    // Not JSON, and an unknown type.
    ws.send(Message::text("{not json")).await.unwrap();
    assert_eq!(next_json(&mut ws).await["error"]["code"], "invalid_json");
    send(&mut ws, json!({"type": "session.update"})).await;
    assert_eq!(
        next_json(&mut ws).await["error"]["code"],
        "unknown_frame_type"
    );

    // response.processed is accepted and answered with nothing; a ping gets its pong.
    send(
        &mut ws,
        json!({"type": "response.processed", "response_id": "resp_x"}),
    )
    .await;
    ws.send(Message::Ping(Bytes::from_static(b"alive")))
        .await
        .unwrap();
    let pong = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        pong,
        Message::Pong(Bytes::from_static(b"alive")),
        "no frame for response.processed"
    );

    // A second response.create while one streams: refused, and the first finishes intact.
    mock.push(Reply::sse(events::text_answer("slow answer")).paced(Duration::from_millis(40)));
    send(&mut ws, create(json!([message("user", "one")]))).await;
    let first = next_json(&mut ws).await;
    assert_eq!(first["type"], "response.created");
    send(&mut ws, create(json!([message("user", "two")]))).await;
    let mut frames = vec![first];
    frames.extend(until_done(&mut ws).await);
    let errors: Vec<&Value> = frames.iter().filter(|f| f["type"] == "error").collect();
    assert_eq!(errors.len(), 1, "{frames:?}");
    assert_eq!(errors[0]["error"]["code"], "response_already_in_flight");
    // The error frame came mid-stream; the first response still completes.
    let rest = if frames.last().unwrap()["type"] == "error" {
        until_done(&mut ws).await
    } else {
        frames.clone()
    };
    assert_eq!(rest.last().unwrap()["type"], "response.completed");
    assert_eq!(
        mock.request_count(),
        1,
        "the second create never went upstream"
    );

    // After all that, the socket still serves.
    send(&mut ws, create(json!([message("user", "three")]))).await;
    assert_eq!(
        until_done(&mut ws).await.last().unwrap()["type"],
        "response.completed"
    );
    let frames_in = proxy.metrics.get(
        "tr_ws_frames_total",
        &[("direction", "in"), ("kind", "binary")],
    );
    assert_eq!(frames_in, Some(1.0));
}

#[tokio::test]
async fn a_quota_failure_on_the_first_credential_is_invisible_on_the_socket() {
    let mock = MockUpstream::start().await.unwrap();
    mock.push_for(
        KEY_A,
        Reply::sse(vec![
            events::created("resp_quota"),
            events::failed(
                "resp_quota",
                "usage_limit_reached",
                "The usage limit has been reached",
            ),
        ]),
    );
    let mut cfg = config_for(mock.base_url());
    cfg.credentials = vec![KEY_A.parse().unwrap(), KEY_B.parse().unwrap()];
    cfg.strategy = tower_responses::credentials::Strategy::FillFirst;
    let proxy = start_proxy(cfg).await;
    let mut ws = connect(&proxy).await;
    send(&mut ws, create(json!([message("user", "hello")]))).await;
    let frames = until_done(&mut ws).await;
    assert!(
        frames
            .iter()
            .all(|f| f["type"] != "response.failed" && f["type"] != "error"),
        "the client saw the failure: {frames:?}"
    );
    assert_eq!(frames.last().unwrap()["type"], "response.completed");
    let keys: Vec<String> = mock
        .requests()
        .iter()
        .map(|r| r.header("authorization").unwrap_or("").to_string())
        .collect();
    assert_eq!(keys, [format!("Bearer {KEY_A}"), format!("Bearer {KEY_B}")]);
    // The second attempt carried the same full request.
    let bodies: Vec<Value> = mock.requests().iter().map(|r| r.json().unwrap()).collect();
    assert_eq!(bodies[0]["input"], bodies[1]["input"]);
}

/// An upstream that streams deltas until its client goes away, and says when that was.
async fn endless_upstream() -> (String, Arc<Mutex<Option<Instant>>>) {
    use http_body_util::StreamBody;
    use hyper::body::Frame;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let gone = Arc::new(Mutex::new(None));
    let gone2 = gone.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let gone = gone2.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req| {
                    let gone = gone.clone();
                    async move {
                        let (tx, rx) =
                            tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(1);
                        tokio::spawn(async move {
                            let mut n = 0u64;
                            loop {
                                let ev = if n == 0 {
                                    events::created("resp_endless")
                                } else {
                                    events::output_text_delta("msg_endless", "more ")
                                };
                                if tx.send(Ok(Frame::data(events::encode(&ev)))).await.is_err() {
                                    *gone.lock().unwrap() = Some(Instant::now());
                                    return;
                                }
                                n += 1;
                                tokio::time::sleep(Duration::from_millis(20)).await;
                            }
                        });
                        let body = StreamBody::new(futures_util::stream::unfold(
                            rx,
                            |mut rx| async move { rx.recv().await.map(|f| (f, rx)) },
                        ));
                        Ok::<_, Infallible>(
                            http::Response::builder()
                                .header("content-type", "text/event-stream")
                                .body(body)
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (format!("http://{addr}/v1"), gone)
}

#[tokio::test]
async fn a_client_that_vanishes_mid_response_cancels_the_upstream_within_a_second() {
    let (upstream, gone) = endless_upstream().await;
    let proxy = start_proxy(config_for(upstream)).await;
    let mut ws = connect(&proxy).await;
    send(&mut ws, create(json!([message("user", "go on forever")]))).await;
    // Content is flowing to the client.
    let mut deltas = 0;
    while deltas < 3 {
        if next_json(&mut ws).await["type"] == "response.output_text.delta" {
            deltas += 1;
        }
    }
    // The client vanishes: no close frame, the TCP connection just goes.
    drop(ws);
    let left = Instant::now();
    let deadline = left + Duration::from_secs(5);
    let ended = loop {
        if let Some(at) = *gone.lock().unwrap() {
            break at;
        }
        assert!(
            Instant::now() < deadline,
            "the upstream stream was never cancelled"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let took = ended.saturating_duration_since(left);
    assert!(
        took < Duration::from_secs(1),
        "upstream cancelled after {took:?}"
    );
    wait_for(|| {
        proxy
            .metrics
            .get("tr_ws_turns_total", &[("outcome", "cancelled")])
            == Some(1.0)
    })
    .await;
}

async fn wait_for(mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "condition not met in 20 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_idle_sockets_cost_little_and_close_on_the_idle_timeout() {
    const SOCKETS: usize = 1000;
    let mock = MockUpstream::start().await.unwrap();
    let mut cfg = config_for(mock.base_url());
    cfg.websocket.idle_timeout_secs = 3;
    cfg.websocket.max_sockets = SOCKETS;
    let proxy = start_proxy(cfg).await;
    let before = rss_kib();
    let mut sockets = Vec::with_capacity(SOCKETS);
    for _ in 0..SOCKETS {
        sockets.push(connect(&proxy).await);
    }
    let open = || {
        proxy
            .metrics
            .get("tr_ws_client_sockets_open", &[])
            .unwrap_or(0.0)
    };
    wait_for(|| open() == SOCKETS as f64).await;
    let grown_kib = rss_kib().saturating_sub(before);
    eprintln!("{SOCKETS} idle sockets (both ends in this process): +{grown_kib} KiB RSS");
    assert!(
        grown_kib < 96 * 1024,
        "{SOCKETS} idle sockets took {grown_kib} KiB"
    );
    // One more is over the limit: sent to HTTP with a 426, not left hanging.
    let (status, v) = refused(&proxy, "/v1/responses", &[]).await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (426, Some("websocket_limit_reached"))
    );
    // Nobody speaks: the proxy closes every one (a normal close, not an error).
    wait_for(|| open() == 0.0).await;
    let mut closes = 0;
    for ws in sockets.iter_mut().take(10) {
        let msg = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .unwrap();
        if let Some(Ok(Message::Close(Some(frame)))) = msg {
            assert_eq!(u16::from(frame.code), 1000);
            closes += 1;
        }
    }
    assert_eq!(closes, 10);
    assert_eq!(mock.request_count(), 0);
}

#[tokio::test]
async fn the_idle_timeout_does_not_run_while_a_response_streams() {
    let mock = MockUpstream::start().await.unwrap();
    let mut cfg = config_for(mock.base_url());
    cfg.websocket.idle_timeout_secs = 1;
    let proxy = start_proxy(cfg).await;
    let mut ws = connect(&proxy).await;
    // The answer takes about 2 s, twice the idle timeout, with the client silent.
    mock.push(Reply::sse(events::text_answer("slow but steady")).paced(Duration::from_millis(250)));
    send(&mut ws, create(json!([message("user", "take your time")]))).await;
    let frames = until_done(&mut ws).await;
    assert_eq!(frames.last().unwrap()["type"], "response.completed");
    // And once it is done, the socket is closed after the timeout.
    let msg = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .unwrap();
    assert!(matches!(msg, Some(Ok(Message::Close(_)))), "{msg:?}");
}

// ---- An upstream that speaks WebSocket: one upstream socket per client socket. ----

/// A proxy whose upstream takes sockets (the `openai` profile, credentials A then B).
async fn socket_proxy(mock: &MockUpstream) -> RunningProxy {
    let mut cfg = config_for(mock.base_url());
    cfg.profile_override = Some(tower_responses::profile::Profile::Openai);
    cfg.credentials = vec![KEY_A.parse().unwrap(), KEY_B.parse().unwrap()];
    cfg.strategy = tower_responses::credentials::Strategy::FillFirst;
    start_proxy(cfg).await
}

fn no_errors(frames: &[Value]) {
    assert!(
        frames
            .iter()
            .all(|f| f["type"] != "error" && f["type"] != "response.failed"),
        "the client saw a failure: {frames:?}"
    );
}

#[tokio::test]
async fn over_an_upstream_socket_turns_stay_incremental_and_a_quota_failure_rotates_unseen() {
    let mock = MockUpstream::start().await.unwrap();
    mock.push_ws_for(
        KEY_A,
        tower_responses::testing::WsReply::usage_limit_reached(3600),
    );
    let proxy = socket_proxy(&mock).await;
    let mut ws = connect(&proxy).await;

    let developer = message("developer", "You are a coding agent.");
    let mut prewarm = create(json!([developer.clone()]));
    prewarm["generate"] = json!(false);
    send(&mut ws, prewarm).await;
    let warm = until_done(&mut ws).await;
    no_errors(&warm);
    let warm_id = warm.last().unwrap()["response"]["id"]
        .as_str()
        .unwrap()
        .to_string();

    let user = message("user", "hello");
    let mut turn1 = create(json!([user.clone()]));
    turn1["previous_response_id"] = json!(warm_id);
    send(&mut ws, turn1).await;
    let frames = until_done(&mut ws).await;
    no_errors(&frames);
    let id1 = frames.last().unwrap()["response"]["id"]
        .as_str()
        .unwrap()
        .to_string();

    let again = message("user", "and again");
    let mut turn2 = create(json!([again.clone()]));
    turn2["previous_response_id"] = json!(id1);
    send(&mut ws, turn2).await;
    no_errors(&until_done(&mut ws).await);

    let sockets = mock.ws_sockets();
    assert_eq!(sockets.len(), 2, "A's socket, then B's: {sockets:?}");
    assert_eq!(sockets[0].credential.as_deref(), Some(KEY_A));
    assert_eq!(sockets[1].credential.as_deref(), Some(KEY_B));
    let creates = sockets[1].creates();
    assert_eq!(creates.len(), 3, "{creates:#?}");
    // The prewarm was replayed in full on B; the turns went as the client sent them.
    assert_eq!(creates[0]["input"], json!([developer]));
    assert_eq!(creates[1]["previous_response_id"], json!(warm_id));
    assert_eq!(
        creates[1]["input"],
        json!([user]),
        "only the new item went up"
    );
    assert_eq!(creates[2]["previous_response_id"], json!(id1));
    assert_eq!(creates[2]["input"], json!([again]));
    assert_eq!(mock.request_count(), 0, "nothing went over HTTP");
}

#[tokio::test]
async fn a_lost_upstream_socket_is_replaced_without_the_client_resending_its_history() {
    let mock = MockUpstream::start().await.unwrap();
    let proxy = socket_proxy(&mock).await;
    let mut ws = connect(&proxy).await;
    let first = message("user", "first");
    send(&mut ws, create(json!([first.clone()]))).await;
    let frames = until_done(&mut ws).await;
    no_errors(&frames);
    let id1 = frames.last().unwrap()["response"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let answer = output_items(&frames);

    // The next create finds the upstream socket gone before any event.
    mock.push_ws(tower_responses::testing::WsReply::cut_before_output());
    let second = message("user", "second");
    let mut turn2 = create(json!([second.clone()]));
    turn2["previous_response_id"] = json!(id1);
    send(&mut ws, turn2).await;
    let frames = until_done(&mut ws).await;
    no_errors(&frames);
    assert_eq!(frames.last().unwrap()["type"], "response.completed");

    let sockets = mock.ws_sockets();
    assert_eq!(sockets.len(), 2, "a fresh upstream socket: {sockets:?}");
    let replay = sockets[1].creates();
    assert_eq!(replay.len(), 1);
    // A new socket knows no response id: the proxy sent the full request from its transcript.
    assert!(
        replay[0].get("previous_response_id").is_none(),
        "{}",
        replay[0]
    );
    let mut full = vec![first];
    full.extend(answer);
    full.push(second);
    assert_eq!(replay[0]["input"], json!(full));
}

#[tokio::test]
async fn a_client_that_vanishes_closes_its_upstream_socket_within_a_second() {
    let mock = MockUpstream::start().await.unwrap();
    mock.push_ws(
        tower_responses::testing::WsReply::text(&"word ".repeat(400))
            .paced(Duration::from_millis(20)),
    );
    let proxy = socket_proxy(&mock).await;
    let mut ws = connect(&proxy).await;
    send(&mut ws, create(json!([message("user", "talk a lot")]))).await;
    while next_json(&mut ws).await["type"] != "response.output_text.delta" {}
    assert_eq!(mock.ws_open(), 1);
    drop(ws);
    let left = Instant::now();
    wait_for(|| mock.ws_open() == 0).await;
    let took = left.elapsed();
    assert!(
        took < Duration::from_secs(1),
        "upstream socket closed after {took:?}"
    );
}

#[tokio::test]
async fn a_compaction_over_the_socket_goes_through_the_compaction_route() {
    let mock = MockUpstream::start().await.unwrap();
    let proxy = socket_proxy(&mock).await;
    let mut ws = connect(&proxy).await;
    let frame = create(json!([message("user", "a long history"), {"type": "compaction_trigger"}]));
    send(&mut ws, frame).await;
    let frames = until_done(&mut ws).await;
    assert_eq!(
        frames.last().unwrap()["type"],
        "response.completed",
        "{frames:?}"
    );
    assert!(
        mock.ws_sockets().iter().all(|s| s.creates().is_empty()),
        "the compaction went up the socket"
    );
    // It went over HTTP, where CompactRouteLayer decides (the mock cannot compact: the layer
    // answered with its own summary, one compaction item).
    assert!(mock.request_count() >= 1);
    let compactions: usize = output_items(&frames)
        .iter()
        .filter(|i| i["type"] == "compaction")
        .count();
    assert_eq!(compactions, 1, "{frames:?}");
    assert_eq!(
        proxy.metrics.total("tr_compactions_total"),
        1.0,
        "{}",
        proxy.metrics.render()
    );
}

#[tokio::test]
async fn an_upstream_that_refuses_sockets_gets_every_turn_over_http() {
    let mock = MockUpstream::start().await.unwrap();
    mock.set_ws_enabled(false);
    let proxy = socket_proxy(&mock).await;
    let mut ws = connect(&proxy).await;
    let developer = message("developer", "You are a coding agent.");
    let mut prewarm = create(json!([developer.clone()]));
    prewarm["generate"] = json!(false);
    send(&mut ws, prewarm).await;
    let warm = until_done(&mut ws).await;
    let warm_id = warm.last().unwrap()["response"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        warm_id.starts_with("resp_prewarm_"),
        "answered here: {warm:?}"
    );
    assert_eq!(
        mock.request_count(),
        0,
        "the prewarm never becomes a generating request"
    );

    let user = message("user", "hello");
    let mut turn = create(json!([user.clone()]));
    turn["previous_response_id"] = json!(warm_id);
    send(&mut ws, turn).await;
    no_errors(&until_done(&mut ws).await);
    // One refused upgrade for the client socket; then HTTP, with the expanded input.
    assert_eq!(mock.ws_sockets().len(), 1);
    assert!(!mock.ws_sockets()[0].accepted);
    let bodies: Vec<Value> = mock.requests().iter().map(|r| r.json().unwrap()).collect();
    assert_eq!(bodies.len(), 1);
    assert_eq!(bodies[0]["input"], json!([developer, user]));
}

#[tokio::test]
async fn shutdown_lets_the_response_in_flight_finish_then_closes_the_sockets() {
    let mock = MockUpstream::start().await.unwrap();
    let mut proxy = proxy_for(&mock).await;
    let mut idle_ws = connect(&proxy).await;
    let mut ws = connect(&proxy).await;
    mock.push(Reply::sse(events::text_answer("a steady answer")).paced(Duration::from_millis(100)));
    send(&mut ws, create(json!([message("user", "go")]))).await;
    assert_eq!(next_json(&mut ws).await["type"], "response.created");
    let server = proxy.shutdown();
    // The idle socket goes at once, with 1001 (going away): Codex reconnects for its next turn.
    let msg = tokio::time::timeout(Duration::from_secs(5), idle_ws.next())
        .await
        .unwrap();
    let Some(Ok(Message::Close(Some(frame)))) = msg else {
        panic!("{msg:?}")
    };
    assert_eq!(u16::from(frame.code), 1001);
    // The busy one finishes its response first.
    let frames = until_done(&mut ws).await;
    assert_eq!(frames.last().unwrap()["type"], "response.completed");
    let msg = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .unwrap();
    assert!(matches!(msg, Some(Ok(Message::Close(_)))), "{msg:?}");
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("the server stops once its sockets are closed")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn the_websocket_settings_come_from_toml_and_bad_ones_stop_the_proxy() {
    use tower_responses::proxy::{Proxy, ProxyConfig};
    use tower_responses::websocket::choose::UpstreamTransport;
    let cfg = ProxyConfig::from_toml_str(
        "listen = \"127.0.0.1:0\"\n[websocket]\nupstream = \"socket\"\nidle_timeout_secs = 60\nmax_sockets = 8\n",
    )
    .unwrap();
    assert_eq!(cfg.websocket.upstream, UpstreamTransport::Socket);
    assert_eq!(
        (cfg.websocket.idle_timeout_secs, cfg.websocket.max_sockets),
        (60, 8)
    );
    assert!(
        ProxyConfig::from_toml_str("[websocket]\nmax_socket = 8\n").is_err(),
        "typos are refused"
    );
    let mut bad = cfg.clone();
    bad.websocket.max_sockets = 0;
    let err = Proxy::bind(bad).await.unwrap_err();
    assert!(err.to_string().contains("websocket.max_sockets"), "{err}");
    // Switched off: an upgrade gets 426, on which Codex uses HTTP for the session.
    let mock = MockUpstream::start().await.unwrap();
    let mut off = config_for(mock.base_url());
    off.websocket.enabled = false;
    let proxy = start_proxy(off).await;
    let (status, v) = refused(&proxy, "/v1/responses", &[]).await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (426, Some("websocket_not_supported"))
    );
}

#[tokio::test]
async fn a_message_over_the_hard_limit_is_answered_then_closed_normally_never_1009() {
    let mock = MockUpstream::start().await.unwrap();
    let mut cfg = config_for(mock.base_url());
    cfg.websocket.max_message_bytes = 64 * 1024;
    let proxy = start_proxy(cfg).await;
    let mut ws = connect(&proxy).await;
    // Over twice the budget: more than the socket reads at all.
    send(
        &mut ws,
        create(json!([message("user", &"y".repeat(200 * 1024))])),
    )
    .await;
    let err = next_json(&mut ws).await;
    assert_eq!(
        (err["status"].as_u64(), err["error"]["code"].as_str()),
        (Some(400), Some("payload_too_large"))
    );
    let msg = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .unwrap();
    let Some(Ok(Message::Close(Some(frame)))) = msg else {
        panic!("{msg:?}")
    };
    assert_eq!(
        u16::from(frame.code),
        1000,
        "a 1009 would make Codex resend five times, then drop to HTTP"
    );
    assert_eq!(mock.request_count(), 0);
}

#[tokio::test]
async fn past_the_shared_transcript_budget_a_chained_frame_asks_for_the_full_request() {
    let mock = MockUpstream::start().await.unwrap();
    let mut cfg = config_for(mock.base_url());
    cfg.websocket.max_transcripts_total_bytes = 300;
    let proxy = start_proxy(cfg).await;
    let (mut a, mut b) = (connect(&proxy).await, connect(&proxy).await);
    // A's context fits the budget; B's does not fit beside it.
    send(&mut a, create(json!([message("user", "short")]))).await;
    let id_a = until_done(&mut a).await.last().unwrap()["response"]["id"].clone();
    send(&mut b, create(json!([message("user", "short too")]))).await;
    let id_b = until_done(&mut b).await.last().unwrap()["response"]["id"].clone();
    let mut chained_b = create(json!([message("user", "more")]));
    chained_b["previous_response_id"] = id_b;
    send(&mut b, chained_b).await;
    let err = next_json(&mut b).await;
    assert_eq!(err["error"]["code"], "previous_response_not_found", "{err}");
    let mut chained_a = create(json!([message("user", "more")]));
    chained_a["previous_response_id"] = id_a;
    send(&mut a, chained_a).await;
    assert_eq!(
        until_done(&mut a).await.last().unwrap()["type"],
        "response.completed"
    );
    // B's full resend (what Codex does on that error) is served.
    send(
        &mut b,
        create(json!([
            message("user", "short too"),
            message("user", "more")
        ])),
    )
    .await;
    assert_eq!(
        until_done(&mut b).await.last().unwrap()["type"],
        "response.completed"
    );
}
