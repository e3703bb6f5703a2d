//! The mock upstream's Responses WebSocket, driven by a plain tokio-tungstenite client over
//! 127.0.0.1: its scripting, its faults and its connection-local response store.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http::StatusCode;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tower_responses::testing::{CONNECTION_LIMIT_MESSAGE, MockUpstream, WsReply, events};

type Ws = WebSocketStream<TcpStream>;

async fn connect_at(mock: &MockUpstream, path: &str, key: Option<&str>) -> Result<Ws, WsError> {
    let tcp = TcpStream::connect(mock.addr()).await.unwrap();
    let mut req = format!("ws://{}{path}", mock.addr())
        .into_client_request()
        .unwrap();
    if let Some(key) = key {
        req.headers_mut()
            .insert("authorization", format!("Bearer {key}").parse().unwrap());
    }
    tokio_tungstenite::client_async(req, tcp)
        .await
        .map(|(ws, _)| ws)
}

async fn connect(mock: &MockUpstream) -> Ws {
    connect_at(mock, "/v1/responses", Some("sk-a"))
        .await
        .unwrap()
}

async fn create(ws: &mut Ws, body: Value) {
    let mut frame = body;
    frame["type"] = json!("response.create");
    ws.send(Message::text(frame.to_string())).await.unwrap();
}

/// How a read of the socket ended.
#[derive(Debug, PartialEq)]
enum End {
    /// A terminal event (`response.completed`, `.failed`, `error`).
    Terminal,
    /// A close frame with this code.
    Closed(u16),
    /// The connection ended without a close frame.
    Cut,
}

/// Reads events until a terminal one, a close or a cut (bounded: 10 s).
async fn read_turn(ws: &mut Ws) -> (Vec<Value>, End) {
    let read = async {
        let mut evs = Vec::new();
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => {
                    let ev: Value = serde_json::from_str(t.as_str()).unwrap();
                    let kind = ev["type"].as_str().unwrap_or_default().to_owned();
                    evs.push(ev);
                    if matches!(
                        kind.as_str(),
                        "response.completed" | "response.failed" | "error"
                    ) {
                        return (evs, End::Terminal);
                    }
                }
                Some(Ok(Message::Close(f))) => {
                    return (evs, End::Closed(f.map_or(1005, |f| u16::from(f.code))));
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return (evs, End::Cut),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("the mock answered within 10 s")
}

fn kinds(evs: &[Value]) -> Vec<&str> {
    evs.iter().map(|e| e["type"].as_str().unwrap()).collect()
}

fn user(text: &str) -> Value {
    json!({"role": "user", "content": [{"type": "input_text", "text": text}]})
}

#[tokio::test]
async fn answers_on_both_paths_and_records_every_frame() {
    let mock = MockUpstream::start().await.unwrap();
    for path in ["/v1/responses", "/responses"] {
        let mut ws = connect_at(&mock, path, Some("sk-a")).await.unwrap();
        create(
            &mut ws,
            json!({"model": "gpt-5", "input": [user("ping over ws")]}),
        )
        .await;
        let (evs, end) = read_turn(&mut ws).await;
        assert_eq!(end, End::Terminal);
        assert_eq!(kinds(&evs)[0], "response.created");
        let done = evs.last().unwrap();
        assert_eq!(done["type"], "response.completed");
        assert_eq!(done["response"]["model"], "gpt-5");
        assert!(done.to_string().contains("ping over ws"), "{done}");
        ws.send(Message::text(
            json!({"type": "response.processed", "response_id": done["response"]["id"]})
                .to_string(),
        ))
        .await
        .unwrap();
        ws.close(None).await.unwrap();
    }
    let sockets = mock.ws_sockets();
    assert_eq!(sockets.len(), 2);
    assert_eq!(sockets[0].path, "/v1/responses");
    assert_eq!(sockets[1].path, "/responses");
    assert_eq!(sockets[0].credential.as_deref(), Some("sk-a"));
    assert!(sockets[0].accepted);
    // The acknowledgement is recorded too, after the create.
    let frames = sockets[0].json_frames();
    assert_eq!(kinds(&frames), ["response.create", "response.processed"]);
    assert_eq!(sockets[0].creates()[0]["input"][0], user("ping over ws"));
    // HTTP requests are not WebSocket records, and the upgrade is not an HTTP record.
    assert_eq!(mock.request_count(), 0);
}

#[tokio::test]
async fn an_upgrade_without_a_credential_is_refused() {
    let mock = MockUpstream::start().await.unwrap();
    match connect_at(&mock, "/v1/responses", None).await {
        Err(WsError::Http(res)) => assert_eq!(res.status(), StatusCode::UNAUTHORIZED),
        other => panic!("expected a 401, got {other:?}"),
    }
    mock.refuse_next_ws(
        StatusCode::TOO_MANY_REQUESTS,
        json!({"error": {"type": "usage_limit_reached", "message": "The usage limit has been reached"}}),
    );
    match connect_at(&mock, "/v1/responses", Some("sk-a")).await {
        Err(WsError::Http(res)) => assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS),
        other => panic!("expected a 429, got {other:?}"),
    }
    mock.set_ws_enabled(false);
    match connect_at(&mock, "/v1/responses", Some("sk-a")).await {
        Err(WsError::Http(res)) => assert_eq!(res.status(), StatusCode::UPGRADE_REQUIRED),
        other => panic!("expected a 426, got {other:?}"),
    }
    let sockets = mock.ws_sockets();
    assert_eq!(sockets.len(), 3);
    assert!(sockets.iter().all(|s| !s.accepted && !s.open));
    // Accepted again once enabled.
    mock.set_ws_enabled(true);
    let mut ws = connect(&mock).await;
    create(&mut ws, json!({"model": "m", "input": "hi"})).await;
    assert_eq!(read_turn(&mut ws).await.1, End::Terminal);
}

#[tokio::test]
async fn prewarm_then_chained_turns_and_a_socket_local_store() {
    let mock = MockUpstream::start().await.unwrap();
    let mut ws = connect(&mock).await;
    create(
        &mut ws,
        json!({"model": "m", "input": [user("warm")], "generate": false}),
    )
    .await;
    let (evs, _) = read_turn(&mut ws).await;
    assert_eq!(kinds(&evs), ["response.created", "response.completed"]);
    let warm = evs[1]["response"]["id"].as_str().unwrap().to_owned();
    assert_eq!(evs[1]["response"]["output"], json!([]));

    // Chained on the prewarm: answered.
    create(
        &mut ws,
        json!({"model": "m", "previous_response_id": warm, "input": [user("turn one")]}),
    )
    .await;
    let (evs, _) = read_turn(&mut ws).await;
    let done = evs.last().unwrap();
    assert_eq!(done["type"], "response.completed");
    let first = done["response"]["id"].as_str().unwrap().to_owned();

    // The store keeps only the socket's latest response.
    create(
        &mut ws,
        json!({"model": "m", "previous_response_id": warm, "input": [user("stale")]}),
    )
    .await;
    let (evs, _) = read_turn(&mut ws).await;
    assert_eq!(evs[0]["type"], "error");
    assert_eq!(evs[0]["error"]["code"], "previous_response_not_found");

    // A new socket knows no id from another.
    let mut other = connect(&mock).await;
    create(
        &mut other,
        json!({"model": "m", "previous_response_id": first, "input": [user("elsewhere")]}),
    )
    .await;
    let (evs, end) = read_turn(&mut other).await;
    assert_eq!(end, End::Terminal);
    assert_eq!(evs[0]["status"], 400);
    assert_eq!(evs[0]["error"]["code"], "previous_response_not_found");
    assert!(
        evs[0]["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&first)
    );
}

#[tokio::test]
async fn soft_failures_are_error_frames_before_any_output() {
    let mock = MockUpstream::start().await.unwrap();
    mock.push_ws_for("sk-a", WsReply::usage_limit_reached(120));
    mock.push_ws_for("sk-a", WsReply::quota());
    mock.push_ws_for("sk-a", WsReply::rate_limited(7));
    let mut ws = connect(&mock).await;
    let mut codes = Vec::new();
    for _ in 0..3 {
        create(&mut ws, json!({"model": "m", "input": "hi"})).await;
        let (evs, end) = read_turn(&mut ws).await;
        assert_eq!(end, End::Terminal);
        assert_eq!(evs.len(), 1, "nothing before the error: {evs:?}");
        assert_eq!(evs[0]["type"], "error");
        assert_eq!(evs[0]["status"], 429);
        codes.push(evs[0]["error"]["code"].as_str().unwrap().to_owned());
        if codes.len() == 1 {
            assert_eq!(evs[0]["error"]["resets_in_seconds"], 120);
        }
    }
    assert_eq!(
        codes,
        [
            "usage_limit_reached",
            "insufficient_quota",
            "rate_limit_exceeded"
        ]
    );
    // The socket survives error frames: the next turn is answered.
    create(&mut ws, json!({"model": "m", "input": "after"})).await;
    let (evs, _) = read_turn(&mut ws).await;
    assert_eq!(evs.last().unwrap()["type"], "response.completed");
    // Another credential's socket never saw those scripts.
    assert_eq!(mock.ws_sockets()[0].creates().len(), 4);
}

#[tokio::test]
async fn cuts_and_closes() {
    let mock = MockUpstream::start().await.unwrap();
    let full = {
        let mut ws = connect(&mock).await;
        create(&mut ws, json!({"model": "m", "input": "count"})).await;
        read_turn(&mut ws).await.0.len()
    };
    assert!(full > 4);

    mock.push_ws(WsReply::cut_before_output());
    let mut ws = connect(&mock).await;
    create(&mut ws, json!({"model": "m", "input": "hi"})).await;
    assert_eq!(read_turn(&mut ws).await, (vec![], End::Cut));

    mock.push_ws(WsReply::cut_after(3));
    let mut ws = connect(&mock).await;
    create(&mut ws, json!({"model": "m", "input": "hi"})).await;
    let (evs, end) = read_turn(&mut ws).await;
    assert_eq!(end, End::Cut);
    assert_eq!(evs.len(), 3);

    mock.push_ws(WsReply::clean_close());
    let mut ws = connect(&mock).await;
    create(&mut ws, json!({"model": "m", "input": "hi"})).await;
    assert_eq!(read_turn(&mut ws).await, (vec![], End::Closed(1000)));

    mock.push_ws(WsReply::connection_limit());
    let mut ws = connect(&mock).await;
    create(&mut ws, json!({"model": "m", "input": "hi"})).await;
    let (evs, end) = read_turn(&mut ws).await;
    assert_eq!(end, End::Terminal);
    assert_eq!(
        evs[0]["error"]["code"],
        "websocket_connection_limit_reached"
    );
    assert_eq!(evs[0]["error"]["message"], CONNECTION_LIMIT_MESSAGE);
    assert_eq!(read_turn(&mut ws).await, (vec![], End::Closed(1000)));
}

#[tokio::test]
async fn sockets_past_their_age_get_the_sixty_minute_close() {
    let mock = MockUpstream::start().await.unwrap();
    let mut ws = connect(&mock).await;
    mock.set_ws_max_age(Duration::ZERO);
    create(&mut ws, json!({"model": "m", "input": "hi"})).await;
    let (evs, _) = read_turn(&mut ws).await;
    assert_eq!(
        evs[0]["error"]["code"],
        "websocket_connection_limit_reached"
    );
    assert_eq!(read_turn(&mut ws).await.1, End::Closed(1000));
}

#[tokio::test]
async fn scripted_events_binary_frames_and_open_sockets() {
    let mock = MockUpstream::start().await.unwrap();
    mock.set_ws_handshake_header("x-codex-primary-used-percent", "42");
    let id = "resp_scripted";
    mock.push_ws(WsReply::events(vec![
        events::created(id),
        events::completed(id, vec![], events::usage(1, 1)),
    ]));
    let tcp = TcpStream::connect(mock.addr()).await.unwrap();
    let mut req = format!("ws://{}/v1/responses", mock.addr())
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("authorization", "Bearer sk-a".parse().unwrap());
    let (mut ws, res) = tokio_tungstenite::client_async(req, tcp).await.unwrap();
    assert_eq!(res.headers()["x-codex-primary-used-percent"], "42");
    ws.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    let (evs, _) = read_turn(&mut ws).await;
    assert_eq!(evs[0]["error"]["code"], "unsupported_frame");
    create(&mut ws, json!({"model": "m", "input": "hi"})).await;
    let (evs, _) = read_turn(&mut ws).await;
    assert_eq!(evs.last().unwrap()["response"]["id"], id);
    // Chaining on a scripted response works: its id is in the socket's store.
    create(
        &mut ws,
        json!({"model": "m", "previous_response_id": id, "input": "more"}),
    )
    .await;
    assert_eq!(
        read_turn(&mut ws).await.0.last().unwrap()["type"],
        "response.completed"
    );
    assert_eq!(mock.ws_open(), 1);
    assert_eq!(mock.ws_sockets()[0].binary_frames, 1);
    ws.close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
        code: CloseCode::Normal,
        reason: "bye".into(),
    }))
    .await
    .unwrap();
    drop(ws);
    let closed = async {
        while mock.ws_open() > 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), closed)
        .await
        .expect("the mock saw the socket close");
}

#[tokio::test]
async fn sockets_idle_between_turns_can_be_closed_or_cut() {
    let mock = MockUpstream::start().await.unwrap();
    let mut a = connect(&mock).await;
    let mut b = connect(&mock).await;
    create(&mut a, json!({"model": "m", "input": "hi"})).await;
    assert_eq!(read_turn(&mut a).await.1, End::Terminal);
    mock.close_ws_sockets();
    assert_eq!(read_turn(&mut a).await, (vec![], End::Closed(1000)));
    assert_eq!(read_turn(&mut b).await, (vec![], End::Closed(1000)));

    // A socket opened after the close is untouched by it, and a cut drops it without a frame.
    let mut c = connect(&mock).await;
    create(&mut c, json!({"model": "m", "input": "hi"})).await;
    assert_eq!(read_turn(&mut c).await.1, End::Terminal);
    mock.cut_ws_sockets();
    assert_eq!(read_turn(&mut c).await, (vec![], End::Cut));
}
