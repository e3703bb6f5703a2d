//! The socket carrier against the mock upstream's WebSocket on 127.0.0.1: incremental
//! frames while the socket lives, rotation and full replays after a failure before output,
//! the 60-minute close, lost sockets, and what it never replays.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Value, json};
use tower_responses::classify::FailureClass;
use tower_responses::connect::UpstreamClientBuilder;
use tower_responses::credentials::{Pool, PoolMember};
use tower_responses::metrics::Metrics;
use tower_responses::testing::{MockUpstream, WsReply};
use tower_responses::websocket::upstream::SocketConfig;
use tower_responses::websocket::{Carrier, Delivery, SocketCarrier, Turn};

const KEY_A: &str = "sk-aaaaaaaaaaaaaaaaaaaaaaaa";
const KEY_B: &str = "sk-bbbbbbbbbbbbbbbbbbbbbbbb";
/// The pool's labels for them (kind and position): logs and metrics never show a key.
const LABEL_A: &str = "key-1";
const LABEL_B: &str = "key-2";

fn label_of(key: &str) -> &'static str {
    if key == KEY_A { LABEL_A } else { LABEL_B }
}

fn pool(keys: &[&str]) -> Arc<Pool> {
    Arc::new(
        Pool::new(
            keys.iter()
                .map(|k| PoolMember::new(k.parse().unwrap()))
                .collect(),
        )
        .unwrap(),
    )
}

fn carrier(mock: &MockUpstream, pool: &Arc<Pool>) -> SocketCarrier {
    SocketCarrier::new(
        pool.clone(),
        UpstreamClientBuilder::new().connector(),
        &mock.base_url(),
    )
    .unwrap()
}

fn user(text: &str) -> Value {
    json!({"role": "user", "content": [{"type": "input_text", "text": text}]})
}

/// A client session's view: the history it has sent and seen, so each turn is both the
/// incremental frame Codex sends and the full request the transcript expands it to.
#[derive(Default)]
struct Session {
    history: Vec<Value>,
    last: Option<String>,
}

impl Session {
    fn turn(&mut self, text: &str) -> Turn {
        let item = user(text);
        self.history.push(item.clone());
        let mut frame = json!({"type": "response.create", "model": "gpt-5", "input": [item]});
        if let Some(prev) = &self.last {
            frame["previous_response_id"] = json!(prev);
        } else {
            frame["input"] = json!(self.history);
        }
        let full = json!({"model": "gpt-5", "input": self.history, "stream": true});
        let mut headers = http::HeaderMap::new();
        headers.insert("session_id", "sess-1".parse().unwrap());
        Turn {
            frame,
            full,
            headers,
        }
    }

    /// Learns the answer's id and output, as the client does from `response.completed`.
    fn saw(&mut self, events: &[Delivery]) {
        let done = completed(events);
        self.last = done["response"]["id"].as_str().map(str::to_owned);
        if let Some(out) = done["response"]["output"].as_array() {
            self.history.extend(out.iter().cloned());
        }
    }
}

async fn run(carrier: &mut SocketCarrier, turn: Turn) -> Vec<Delivery> {
    let events = carrier.send(turn).await.unwrap();
    tokio::time::timeout(Duration::from_secs(20), events.collect::<Vec<_>>())
        .await
        .expect("the turn ended within 20 s")
}

fn parsed(events: &[Delivery]) -> Vec<Value> {
    events
        .iter()
        .filter_map(|d| match d {
            Delivery::Event(t) => Some(serde_json::from_str(t).unwrap()),
            Delivery::Error(_) => None,
        })
        .collect()
}

fn completed(events: &[Delivery]) -> Value {
    let evs = parsed(events);
    let last = evs.last().cloned().unwrap_or(Value::Null);
    assert_eq!(last["type"], "response.completed", "{events:?}");
    last
}

fn error_of(events: &[Delivery]) -> (u16, String) {
    match events.last() {
        Some(Delivery::Error(e)) => (e.status.as_u16(), e.code.clone().unwrap_or_default()),
        other => panic!("expected an error delivery, got {other:?}"),
    }
}

/// The client saw exactly one response, from `response.created` to its end.
fn one_clean_response(events: &[Delivery]) {
    let evs = parsed(events);
    let created = evs
        .iter()
        .filter(|e| e["type"] == "response.created")
        .count();
    assert_eq!(created, 1, "{evs:?}");
    assert!(evs.iter().all(|e| e["type"] != "error"), "{evs:?}");
}

#[tokio::test]
async fn incremental_frames_while_the_socket_lives() {
    let mock = MockUpstream::start().await.unwrap();
    let pool = pool(&[KEY_A]);
    let mut c = carrier(&mock, &pool);
    let mut s = Session::default();
    for text in ["one", "two", "three"] {
        let events = run(&mut c, s.turn(text)).await;
        one_clean_response(&events);
        s.saw(&events);
    }
    let sockets = mock.ws_sockets();
    assert_eq!(
        sockets.len(),
        1,
        "one upstream socket for the client socket"
    );
    let creates = sockets[0].creates();
    assert_eq!(creates.len(), 3);
    assert!(creates[0].get("previous_response_id").is_none());
    for later in &creates[1..] {
        // Only the new item, chained on the socket's last response.
        assert!(later["previous_response_id"].is_string(), "{later}");
        assert_eq!(later["input"].as_array().unwrap().len(), 1);
    }
    assert_eq!(creates[2]["input"][0], user("three"));
    assert_eq!(sockets[0].credential.as_deref(), Some(KEY_A));
    // The Codex CLI's beta header goes up when the client sent none.
    assert_eq!(
        sockets[0].headers["openai-beta"],
        "responses_websockets=2026-02-06"
    );
    assert_eq!(sockets[0].headers["session_id"], "sess-1");
    assert_eq!(c.credential().as_deref(), Some(LABEL_A));
}

#[tokio::test]
async fn quota_on_the_first_account_rotates_and_replays_the_full_request() {
    let mock = MockUpstream::start().await.unwrap();
    let pool = pool(&[KEY_A, KEY_B]);
    let metrics = Metrics::new();
    let mut c = carrier(&mock, &pool).metrics(metrics.clone());
    let mut s = Session::default();
    let first = run(&mut c, s.turn("one")).await;
    s.saw(&first);
    let served_first = mock.ws_sockets()[0].credential.clone().unwrap();
    let other = if served_first == KEY_A { KEY_B } else { KEY_A };

    // The next turn gets the quota frame on the first account.
    mock.push_ws_for(&served_first, WsReply::usage_limit_reached(3600));
    let turn = s.turn("two");
    let full_input = turn.full["input"].clone();
    let events = run(&mut c, turn).await;
    one_clean_response(&events);
    assert!(
        parsed(&events)
            .iter()
            .all(|e| !e.to_string().contains("usage_limit_reached")),
        "the client never sees the quota frame"
    );
    s.saw(&events);

    let sockets = mock.ws_sockets();
    assert_eq!(sockets.len(), 2);
    assert_eq!(
        sockets[0].creates().len(),
        2,
        "turn one, then the refused turn two"
    );
    assert_eq!(sockets[1].credential.as_deref(), Some(other));
    let replay = &sockets[1].creates()[0];
    assert!(replay.get("previous_response_id").is_none(), "{replay}");
    assert_eq!(
        replay["input"], full_input,
        "the full history, from the transcript"
    );
    assert_eq!(replay["type"], "response.create");
    assert!(replay.get("stream").is_some());
    // The first account cools for quota with the upstream's reset.
    let cooling = pool.cooldown_of(label_of(&served_first)).expect("cooled");
    assert_eq!(cooling.class, FailureClass::QuotaExhausted);

    // The next turn stays incremental on the new socket.
    let events = run(&mut c, s.turn("three")).await;
    one_clean_response(&events);
    let sockets = mock.ws_sockets();
    assert_eq!(sockets.len(), 2);
    let third = &sockets[1].creates()[1];
    assert!(third["previous_response_id"].is_string());
    assert_eq!(third["input"].as_array().unwrap().len(), 1);

    assert_eq!(
        metrics.get(
            "tr_ws_upstream_replays_total",
            &[("reason", "quota_exhausted")]
        ),
        Some(1.0)
    );
    assert_eq!(metrics.total("tr_ws_upstream_sockets_opened_total"), 2.0);
    assert_eq!(
        metrics.get(
            "tr_ws_upstream_sockets_closed_total",
            &[("reason", "credential_failed")]
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn a_socket_cut_between_turns_is_replaced_without_the_client_resending() {
    let mock = MockUpstream::start().await.unwrap();
    let pool = pool(&[KEY_A]);
    let mut c = carrier(&mock, &pool);
    let mut s = Session::default();
    let events = run(&mut c, s.turn("one")).await;
    s.saw(&events);

    mock.push_ws(WsReply::cut_before_output());
    let turn = s.turn("two");
    let full_input = turn.full["input"].clone();
    let events = run(&mut c, turn).await;
    one_clean_response(&events);
    s.saw(&events);

    let sockets = mock.ws_sockets();
    assert_eq!(sockets.len(), 2);
    // The incremental frame went to the old socket, which was cut; the new one got it all.
    assert!(sockets[0].creates()[1]["previous_response_id"].is_string());
    let replay = &sockets[1].creates()[0];
    assert!(replay.get("previous_response_id").is_none());
    assert_eq!(replay["input"], full_input);
    // A lost socket is account-neutral: nothing cools, the same account serves.
    assert_eq!(sockets[1].credential.as_deref(), Some(KEY_A));
    assert!(pool.cooldown_of(LABEL_A).is_none());

    // And chaining resumes on the new socket.
    run(&mut c, s.turn("three")).await;
    let third = &mock.ws_sockets()[1].creates()[1];
    assert!(third["previous_response_id"].is_string());
}

#[tokio::test]
async fn the_sixty_minute_close_opens_a_new_socket_transparently() {
    let mock = MockUpstream::start().await.unwrap();
    let pool = pool(&[KEY_A]);
    let metrics = Metrics::new();
    let mut c = carrier(&mock, &pool).metrics(metrics.clone());
    let mut s = Session::default();
    let events = run(&mut c, s.turn("one")).await;
    s.saw(&events);

    // The upstream's 60-minute cap arrives on the next turn.
    mock.push_ws(WsReply::connection_limit());
    let turn = s.turn("two");
    let full_input = turn.full["input"].clone();
    let events = run(&mut c, turn).await;
    one_clean_response(&events);
    let sockets = mock.ws_sockets();
    assert_eq!(sockets.len(), 2);
    assert_eq!(sockets[1].creates()[0]["input"], full_input);
    assert!(pool.cooldown_of(LABEL_A).is_none());
    assert_eq!(
        metrics.get(
            "tr_ws_upstream_replays_total",
            &[("reason", "connection_limit")]
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn a_clean_close_is_retried_once_then_reported() {
    let mock = MockUpstream::start().await.unwrap();
    let pool = pool(&[KEY_A]);
    let mut c = carrier(&mock, &pool);
    let mut s = Session::default();

    mock.push_ws(WsReply::clean_close());
    let events = run(&mut c, s.turn("once")).await;
    one_clean_response(&events);
    assert_eq!(mock.ws_sockets().len(), 2);

    mock.push_ws(WsReply::clean_close());
    mock.push_ws(WsReply::clean_close());
    let mut fresh = Session::default();
    let events = run(&mut c, fresh.turn("twice")).await;
    assert_eq!(error_of(&events), (502, "upstream_rejected_input".into()));
    // One try on the kept socket, one more on a fresh one: no third.
    let sockets = mock.ws_sockets();
    assert_eq!(sockets.len(), 3);
    let twice: usize = sockets
        .iter()
        .flat_map(|s| s.creates())
        .filter(|c| c["input"][0] == user("twice"))
        .count();
    assert_eq!(twice, 2);
}

#[tokio::test]
async fn nothing_is_replayed_after_visible_output() {
    let mock = MockUpstream::start().await.unwrap();
    let pool = pool(&[KEY_A, KEY_B]);
    let mut c = carrier(&mock, &pool);
    // created, in_progress, output_item.added (content), then the cut.
    mock.push_ws(WsReply::cut_after(4));
    let events = run(&mut c, Session::default().turn("hi")).await;
    assert_eq!(error_of(&events), (502, "upstream_unavailable".into()));
    let evs = parsed(&events);
    assert_eq!(
        evs.len(),
        4,
        "the content that came, then the error: {evs:?}"
    );
    let creates: usize = mock.ws_sockets().iter().map(|s| s.creates().len()).sum();
    assert_eq!(creates, 1, "never sent twice");
}

#[tokio::test]
async fn a_silent_upstream_after_the_send_is_never_replayed() {
    let mock = MockUpstream::start().await.unwrap();
    let pool = pool(&[KEY_A, KEY_B]);
    let config = SocketConfig {
        ping_interval: Duration::from_millis(50),
        pong_timeout: Duration::from_millis(100),
        ..SocketConfig::default()
    };
    let mut c = carrier(&mock, &pool).socket_config(config);
    mock.push_ws(WsReply::unresponsive());
    let events = run(&mut c, Session::default().turn("hi")).await;
    assert_eq!(error_of(&events), (504, "upstream_timeout".into()));
    let creates: usize = mock.ws_sockets().iter().map(|s| s.creates().len()).sum();
    assert_eq!(creates, 1, "delivery ambiguous: not sent again");
    assert!(pool.cooldown_of(LABEL_A).is_none() && pool.cooldown_of(LABEL_B).is_none());
}

#[tokio::test]
async fn every_account_out_gives_the_upstreams_answer() {
    let mock = MockUpstream::start().await.unwrap();
    let pool = pool(&[KEY_A, KEY_B]);
    let mut c = carrier(&mock, &pool);
    mock.push_ws_for(KEY_A, WsReply::usage_limit_reached(3600));
    mock.push_ws_for(KEY_B, WsReply::usage_limit_reached(3600));
    let events = run(&mut c, Session::default().turn("hi")).await;
    let evs = parsed(&events);
    assert_eq!(evs.len(), 1, "{evs:?}");
    assert_eq!(evs[0]["type"], "error");
    assert_eq!(evs[0]["status"], 429);
    assert_eq!(evs[0]["error"]["code"], "usage_limit_reached");
    assert_eq!(mock.ws_sockets().len(), 2);

    // The next turn finds both out: the pool's own answer, with the reset.
    let events = run(&mut c, Session::default().turn("again")).await;
    assert_eq!(error_of(&events), (429, "usage_limit_reached".into()));
    assert_eq!(
        mock.ws_sockets().len(),
        2,
        "no socket opened for cooled accounts"
    );
}

#[tokio::test]
async fn a_refused_upgrade_rotates_like_an_http_answer() {
    let mock = MockUpstream::start().await.unwrap();
    let pool = pool(&[KEY_A, KEY_B]);
    let mut c = carrier(&mock, &pool);
    mock.refuse_next_ws(
        http::StatusCode::TOO_MANY_REQUESTS,
        json!({"error": {"type": "usage_limit_reached", "message": "The usage limit has been reached", "resets_in_seconds": 600}}),
    );
    let events = run(&mut c, Session::default().turn("hi")).await;
    one_clean_response(&events);
    let sockets = mock.ws_sockets();
    assert_eq!(sockets.len(), 2);
    assert!(!sockets[0].accepted && sockets[1].accepted);
    let refused = sockets[0].credential.clone().unwrap();
    assert_eq!(
        pool.cooldown_of(label_of(&refused)).map(|c| c.class),
        Some(FailureClass::QuotaExhausted)
    );

    // An upstream that speaks only HTTP says so at once.
    mock.set_ws_enabled(false);
    let mut c = carrier(&mock, &pool);
    let events = run(&mut c, Session::default().turn("hi")).await;
    assert_eq!(
        error_of(&events),
        (502, "upstream_websocket_unsupported".into())
    );
}

#[tokio::test]
async fn prewarm_goes_up_and_turns_chain_on_it() {
    let mock = MockUpstream::start().await.unwrap();
    let pool = pool(&[KEY_A]);
    let mut c = carrier(&mock, &pool);
    assert!(c.takes_prewarm());
    let frame = json!({"type": "response.create", "model": "gpt-5", "input": [user("sys")], "generate": false});
    let warm = Turn {
        frame,
        full: json!({"model": "gpt-5", "input": [user("sys")], "stream": true}),
        headers: http::HeaderMap::new(),
    };
    let events = run(&mut c, warm).await;
    let warm_id = completed(&events)["response"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let turn = Turn {
        frame: json!({"type": "response.create", "model": "gpt-5", "previous_response_id": warm_id, "input": [user("go")]}),
        full: json!({"model": "gpt-5", "input": [user("sys"), user("go")], "stream": true}),
        headers: http::HeaderMap::new(),
    };
    one_clean_response(&run(&mut c, turn).await);
    let creates = mock.ws_sockets()[0].creates();
    assert_eq!(creates[0]["generate"], false);
    assert_eq!(creates[1]["previous_response_id"], json!(warm_id));
}

#[tokio::test]
async fn a_prewarm_replayed_elsewhere_keeps_generate_false() {
    let mock = MockUpstream::start().await.unwrap();
    let pool = pool(&[KEY_A]);
    let mut c = carrier(&mock, &pool);
    mock.push_ws(WsReply::cut_before_output());
    let warm = Turn {
        frame: json!({"type": "response.create", "model": "gpt-5", "input": [], "generate": false, "client_metadata": {"x-codex-window-id": "t:0"}}),
        full: json!({"model": "gpt-5", "input": [], "stream": true}),
        headers: http::HeaderMap::new(),
    };
    let events = run(&mut c, warm).await;
    assert_eq!(completed(&events)["response"]["output"], json!([]));
    let replay = &mock.ws_sockets()[1].creates()[0];
    assert_eq!(replay["generate"], false);
    assert_eq!(replay["client_metadata"]["x-codex-window-id"], "t:0");
}

#[tokio::test]
async fn rate_limit_headers_and_events_feed_the_pool() {
    let mock = MockUpstream::start().await.unwrap();
    mock.set_ws_handshake_header("x-codex-primary-used-percent", "37");
    mock.set_ws_handshake_header("x-codex-primary-window-minutes", "300");
    let pool = pool(&[KEY_A]);
    let mut c = carrier(&mock, &pool);
    run(&mut c, Session::default().turn("hi")).await;
    let usage = pool.usage_of(LABEL_A).expect("usage from the handshake");
    assert_eq!(usage.windows[0].used_percent, 37.0);

    let id = "resp_rl";
    mock.push_ws(WsReply::events(vec![
        json!({"type": "codex.rate_limits", "plan_type": "pro", "rate_limits": {"primary": {"used_percent": 81.0, "window_minutes": 300, "reset_after_seconds": 600}}}),
        tower_responses::testing::events::created(id),
        tower_responses::testing::events::completed(
            id,
            vec![],
            tower_responses::testing::events::usage(1, 1),
        ),
    ]));
    let events = run(&mut c, Session::default().turn("again")).await;
    // The client sees the event too (Codex shows it), held back until the turn was settled.
    assert_eq!(parsed(&events)[0]["type"], "codex.rate_limits");
    let usage = pool.usage_of(LABEL_A).unwrap();
    assert_eq!(usage.windows[0].used_percent, 81.0);
}

#[tokio::test]
async fn dropping_the_events_closes_the_upstream_socket() {
    let mock = MockUpstream::start().await.unwrap();
    let pool = pool(&[KEY_A]);
    let metrics = Metrics::new();
    let mut c = carrier(&mock, &pool).metrics(metrics.clone());
    mock.push_ws(
        WsReply::text("a long answer that takes a while").paced(Duration::from_millis(200)),
    );
    let mut events = c.send(Session::default().turn("hi")).await.unwrap();
    // The first content arrives, then the client goes away.
    let first = events.next().await;
    assert!(first.is_some());
    assert_eq!(mock.ws_open(), 1);
    drop(events);
    let closed = async {
        while mock.ws_open() > 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(1), closed)
        .await
        .expect("the upstream socket closed within a second");
    assert_eq!(c.credential(), None, "no socket kept for the next turn");
    assert_eq!(metrics.get("tr_ws_upstream_sockets_open", &[]), Some(0.0));
}

/// Waits (bounded) until the mock has no socket open.
async fn all_closed(mock: &MockUpstream) {
    let closed = async {
        while mock.ws_open() > 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), closed)
        .await
        .expect("the mock's sockets closed");
}

#[tokio::test]
async fn a_socket_the_upstream_closed_while_idle_is_replaced_before_the_send() {
    let mock = MockUpstream::start().await.unwrap();
    let pool = pool(&[KEY_A]);
    let metrics = Metrics::new();
    let mut c = carrier(&mock, &pool).metrics(metrics.clone());
    let mut s = Session::default();
    let events = run(&mut c, s.turn("one")).await;
    s.saw(&events);

    // The upstream closes the socket between turns (1000), as it does with idle ones.
    mock.close_ws_sockets();
    all_closed(&mock).await;
    let turn = s.turn("two");
    let full_input = turn.full["input"].clone();
    let events = run(&mut c, turn).await;
    one_clean_response(&events);
    let sockets = mock.ws_sockets();
    assert_eq!(sockets.len(), 2);
    // Nothing was written to the closed socket: the close was seen before the send.
    assert_eq!(sockets[0].creates().len(), 1);
    assert_eq!(sockets[1].creates()[0]["input"], full_input);
    assert_eq!(
        metrics.get("tr_ws_upstream_replays_total", &[("reason", "send_unsent")]),
        Some(1.0)
    );

    // The same after a cut without a close frame.
    s.saw(&events);
    mock.cut_ws_sockets();
    all_closed(&mock).await;
    one_clean_response(&run(&mut c, s.turn("three")).await);
    let sockets = mock.ws_sockets();
    assert_eq!(sockets.len(), 3);
    assert_eq!(sockets[1].creates().len(), 1);
    assert!(
        sockets[2].creates()[0]
            .get("previous_response_id")
            .is_none()
    );
}

#[tokio::test]
async fn previous_response_not_found_on_a_chained_frame_sends_the_full_request() {
    let mock = MockUpstream::start().await.unwrap();
    let pool = pool(&[KEY_A]);
    let mut c = carrier(&mock, &pool);
    let mut s = Session::default();
    let events = run(&mut c, s.turn("one")).await;
    s.saw(&events);

    // The upstream forgot the response the incremental frame chains on.
    mock.push_ws(WsReply::error_frame(
        http::StatusCode::BAD_REQUEST,
        json!({"type": "invalid_request_error", "code": "previous_response_not_found",
               "message": "Previous response with id 'x' not found.", "param": "previous_response_id"}),
    ));
    let turn = s.turn("two");
    let full_input = turn.full["input"].clone();
    let events = run(&mut c, turn).await;
    one_clean_response(&events);
    let sockets = mock.ws_sockets();
    assert_eq!(
        sockets.len(),
        1,
        "the socket is fine: the same one takes the full request"
    );
    let creates = sockets[0].creates();
    assert_eq!(creates.len(), 3);
    assert!(creates[1]["previous_response_id"].is_string());
    assert!(creates[2].get("previous_response_id").is_none());
    assert_eq!(creates[2]["input"], full_input);
    assert!(pool.cooldown_of(LABEL_A).is_none());
}

#[tokio::test]
async fn an_upstream_message_over_the_budget_ends_the_turn_without_a_replay() {
    let mock = MockUpstream::start().await.unwrap();
    let pool = pool(&[KEY_A]);
    let config = SocketConfig {
        max_message: 4096,
        ..SocketConfig::default()
    };
    let mut c = carrier(&mock, &pool).socket_config(config);
    let id = "resp_big";
    mock.push_ws(WsReply::events(vec![
        tower_responses::testing::events::created(id),
        json!({"type": "response.output_item.added", "output_index": 0,
               "item": {"type": "message", "content": [{"type": "output_text", "text": "x".repeat(8192)}]}}),
    ]));
    let events = run(&mut c, Session::default().turn("hi")).await;
    assert_eq!(
        error_of(&events),
        (502, "upstream_message_too_large".into())
    );
    assert_eq!(
        parsed(&events),
        Vec::<Value>::new(),
        "nothing of it reached the client"
    );
    let creates: usize = mock.ws_sockets().iter().map(|s| s.creates().len()).sum();
    assert_eq!(creates, 1);
}

#[tokio::test]
async fn encrypted_reasoning_is_stripped_when_the_account_changes() {
    let mock = MockUpstream::start().await.unwrap();
    let pool = pool(&[KEY_A, KEY_B]);
    let mut c = carrier(&mock, &pool);
    let mut s = Session::default();
    let events = run(&mut c, s.turn("one")).await;
    s.saw(&events);
    let first = mock.ws_sockets()[0].credential.clone().unwrap();
    s.history.push(json!({"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "gAAAA-only-the-first-account"}));

    // The turn's own socket keeps the account: encrypted items go up untouched.
    let mut turn = s.turn("two");
    turn.frame["input"] = json!([
        s.history[s.history.len() - 2],
        s.history[s.history.len() - 1]
    ]);
    let events = run(&mut c, turn).await;
    s.saw(&events);
    let same = &mock.ws_sockets()[0].creates()[1];
    assert!(same.to_string().contains("encrypted_content"));

    // Quota on that account: the full request goes to the other, without what it cannot read.
    mock.push_ws_for(&first, WsReply::usage_limit_reached(3600));
    let turn = s.turn("three");
    assert!(turn.full.to_string().contains("encrypted_content"));
    one_clean_response(&run(&mut c, turn).await);
    let moved = &mock.ws_sockets()[1].creates()[0];
    assert_ne!(
        mock.ws_sockets()[1].credential.as_deref(),
        Some(first.as_str())
    );
    assert!(!moved.to_string().contains("encrypted_content"), "{moved}");
    assert_eq!(
        moved["input"].as_array().unwrap().last().unwrap(),
        &user("three")
    );
}

#[tokio::test]
async fn client_sockets_of_one_session_keep_its_account() {
    let mock = MockUpstream::start().await.unwrap();
    let pool = pool(&[KEY_A, KEY_B]);
    let mut served = Vec::new();
    for _ in 0..4 {
        // A new client socket each time (Codex reconnects), same session.
        let mut c = carrier(&mock, &pool);
        one_clean_response(&run(&mut c, Session::default().turn("hi")).await);
        served.push(c.credential().unwrap());
    }
    assert!(served.iter().all(|l| *l == served[0]), "{served:?}");
    let sockets = mock.ws_sockets();
    assert_eq!(sockets.len(), 4);
    assert!(
        sockets
            .iter()
            .all(|s| s.credential == sockets[0].credential)
    );
}

#[tokio::test]
async fn a_long_session_sends_only_new_items_upstream() {
    let mock = MockUpstream::start().await.unwrap();
    let pool = pool(&[KEY_A]);
    let mut c = carrier(&mock, &pool);
    let mut s = Session::default();
    let mut full_bytes = 0;
    for i in 0..30 {
        // Tool-output-sized items, as an agent loop produces.
        let turn = s.turn(&format!("step {i}: {}", "output line\n".repeat(40)));
        full_bytes += turn.full.to_string().len();
        let events = run(&mut c, turn).await;
        s.saw(&events);
    }
    let sockets = mock.ws_sockets();
    assert_eq!(sockets.len(), 1);
    let sent: usize = sockets[0].frames.iter().map(String::len).sum();
    eprintln!("30 turns: {sent} bytes sent upstream incrementally, {full_bytes} as full requests");
    // Each turn carries one new item instead of the whole history.
    assert!(sent * 5 < full_bytes, "{sent} vs {full_bytes}");
}
