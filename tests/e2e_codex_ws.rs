//! The real Codex CLI (npm `@openai/codex` 0.169.0, offline) over the Responses WebSocket
//! through the proxy, the mock upstream speaking HTTP/SSE only behind it: every turn Codex
//! sends over the socket (a prewarm, then frames chained on `previous_response_id` with only
//! the new items) reaches the upstream as the full request an HTTP client would send, and a
//! quota failure on the first account is replayed on the second without Codex noticing.
//!
//! The provider is a custom one with `supports_websockets = true` (the `ModelProviderInfo` key
//! of this Codex version): Codex opens `ws://.../v1/responses` with
//! `OpenAI-Beta: responses_websockets=2026-02-06` before its first turn.
//!
//! Needs the CLI from `.ci/install-clients`; every run is killed after 120 s. The sandbox is
//! off (`-s danger-full-access`), as in `tests/e2e_codex.rs`.

mod common;
mod e2e;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use common::*;
use serde_json::{Value, json};
use tower_responses::testing::{MockUpstream, RecordedRequest, Reply, events};

const KEY_A: &str = "sk-e2e-ws-aaaaaaaaaaaaaaaaaaaaaaa-AAAA";
const KEY_B: &str = "sk-e2e-ws-bbbbbbbbbbbbbbbbbbbbbbb-BBBB";
const CLIENT_KEY: &str = "sk-e2e-ws-client-key";
const MODEL: &str = "gpt-5.5";
const PROMPT: &str = "Run the e2e tool, then report.";
const TOOL_CMD: &str = "echo e2e-ws-tool-ran-$((6*7))";
const TOOL_OUTPUT: &str = "e2e-ws-tool-ran-42";

fn input(body: &Value) -> &[Value] {
    body["input"].as_array().map_or(&[], Vec::as_slice)
}

/// The scripted model: every request on an exhausted account (the first pool key, and the
/// client's own key when Codex talks to the mock directly) fails with a quota failure inside
/// the stream (an HTTP 200, as the Codex backend sends it); otherwise a turn asks for the
/// shell tool, and the turn that carries the tool's output gets the final answer.
fn script(mock: &MockUpstream) -> Arc<AtomicUsize> {
    let called = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicUsize::new(0));
    let count = served.clone();
    mock.set_handler(move |r: &RecordedRequest| {
        let body = r.json()?;
        if !body.is_object() {
            return None;
        }
        if matches!(r.credential.as_deref(), Some(KEY_A | CLIENT_KEY)) {
            return Some(Reply::sse(vec![
                events::created("resp_ws_quota"),
                events::failed(
                    "resp_ws_quota",
                    "usage_limit_reached",
                    "The usage limit has been reached",
                ),
            ]));
        }
        count.fetch_add(1, Ordering::SeqCst);
        let small = events::usage(100, 10);
        let has_output = input(&body)
            .iter()
            .any(|i| i["type"] == "function_call_output");
        if !has_output && !called.swap(true, Ordering::SeqCst) {
            let call = json!({
                "type": "function_call",
                "id": "fc_ws_1",
                "call_id": "call_ws_1",
                "name": "exec_command",
                "arguments": json!({"cmd": TOOL_CMD}).to_string(),
                "status": "completed",
            });
            let mut added = call.clone();
            added["status"] = json!("in_progress");
            return Some(Reply::sse(vec![
                events::created("resp_ws_call"),
                events::in_progress("resp_ws_call"),
                events::output_item_added(added),
                events::output_item_done(call.clone()),
                events::completed("resp_ws_call", vec![call], small),
            ]));
        }
        let ran = body["input"].to_string().contains(TOOL_OUTPUT);
        Some(Reply::sse(events::answer(
            "resp_ws_final",
            "msg_ws_final",
            &format!("FINAL tool_output_seen={ran}"),
            small,
        )))
    });
    served
}

async fn codex(base_url: &str) -> e2e::Ran {
    let home = e2e::TempDir::new("codex-ws-home");
    let work = e2e::TempDir::new("codex-ws-work");
    codex_in(base_url, true, home.path(), work.path()).await
}

/// One `codex exec` with `home` as `CODEX_HOME`, in `work`, over the WebSocket when
/// `websockets`, else over HTTP.
async fn codex_in(
    base_url: &str,
    websockets: bool,
    home: &std::path::Path,
    work: &std::path::Path,
) -> e2e::Ran {
    exec("E2E WS", base_url, websockets, None)
        .run_in(home, work)
        .await
}

/// This file's `codex exec`: its key, model and prompt.
fn exec<'a>(
    provider: &'a str,
    base_url: &'a str,
    websockets: bool,
    compact_limit: Option<u64>,
) -> e2e::CodexExec<'a> {
    e2e::CodexExec {
        provider,
        base_url,
        websockets,
        compact_limit,
        client_key: CLIENT_KEY,
        model: MODEL,
        prompt: PROMPT,
    }
}

fn bodies(mock: &MockUpstream) -> Vec<Value> {
    mock.requests().iter().filter_map(|r| r.json()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codex_over_the_websocket_runs_a_tool_chains_turns_and_never_sees_the_quota_failure() {
    // Straight against the mock: the quota failure reaches Codex and the run fails.
    // The mock speaks HTTP only here (its WebSocket answers 426).
    let bare = MockUpstream::start().await.unwrap();
    bare.set_ws_enabled(false);
    script(&bare);
    let direct = codex(&bare.base_url()).await;
    assert!(
        !direct.status.success(),
        "Codex succeeded without the proxy\n{}",
        direct.transcript()
    );

    let mock = MockUpstream::start().await.unwrap();
    mock.set_ws_enabled(false);
    script(&mock);
    let mut cfg = config_for(mock.base_url());
    cfg.credentials = vec![KEY_A.parse().unwrap(), KEY_B.parse().unwrap()];
    cfg.strategy = tower_responses::credentials::Strategy::FillFirst;
    let proxy = start_proxy(cfg).await;
    let run = codex(&proxy.url("/v1")).await;
    let m = &proxy.metrics;
    let why = || format!("{}\n--- metrics ---\n{}", run.transcript(), m.render());
    assert!(run.status.success(), "{}", why());
    assert_eq!(
        run.stdout.trim(),
        "FINAL tool_output_seen=true",
        "{}",
        why()
    );

    for line in m.render().lines().filter(|l| l.starts_with("tr_ws_")) {
        eprintln!("{line}");
    }
    // Codex talked to the proxy over the socket, chaining turns on previous_response_id.
    assert!(m.total("tr_ws_client_sockets_total") >= 1.0, "{}", why());
    assert!(
        m.total("tr_ws_expanded_total") >= 1.0,
        "no chained frame was expanded\n{}",
        why()
    );
    assert_eq!(
        m.get(
            "tr_requests_total",
            &[("route", "responses"), ("status", "200")]
        ),
        None,
        "a turn went over HTTP\n{}",
        why()
    );

    // The upstream saw full requests only: no anchor, no WebSocket-only field, and the
    // tool's turn carried the whole history (the prompt, the call, its output).
    let sent = bodies(&mock);
    for b in &sent {
        for field in ["previous_response_id", "generate", "type"] {
            assert!(b.get(field).is_none(), "{field} reached the upstream: {b}");
        }
    }
    let last = sent.last().unwrap();
    let items = input(last);
    assert!(
        items
            .iter()
            .any(|i| i["type"] == "function_call" && i["call_id"] == "call_ws_1")
    );
    assert!(items.iter().any(|i| i["type"] == "function_call_output"));
    assert!(
        last["input"].to_string().contains(PROMPT),
        "the prompt is in the full input"
    );

    // The quota failure went to the first account, the replay to the second; the session
    // stayed there.
    let creds: Vec<Option<String>> = mock.requests().into_iter().map(|r| r.credential).collect();
    assert_eq!(creds[0].as_deref(), Some(KEY_A), "{creds:?}");
    assert!(
        creds[1..].iter().all(|c| c.as_deref() == Some(KEY_B)),
        "{creds:?}"
    );
    assert_eq!(
        sent[0]["input"], sent[1]["input"],
        "the replay is the same full request"
    );
}

/// A request body with what differs between two runs of the same session taken out: the
/// session id (a fresh UUID per run), `client_metadata` (installation and window ids), the
/// ids Codex gives its own items (fresh UUIDs per run), and the tool output's timing lines.
fn comparable(body: &Value) -> Value {
    let session = body["prompt_cache_key"].as_str().unwrap_or("").to_string();
    let mut b = body.clone();
    let obj = b.as_object_mut().unwrap();
    obj.remove("client_metadata");
    obj.remove("prompt_cache_key");
    if let Some(items) = obj.get_mut("input").and_then(Value::as_array_mut) {
        for item in items {
            if item["type"] == "function_call_output" && item.to_string().contains(TOOL_OUTPUT) {
                item["output"] = json!(TOOL_OUTPUT);
            }
            // Codex's own ids are UUIDs; the scripted model's (`fc_ws_1`) have no dashes.
            if item["id"].as_str().is_some_and(|id| id.contains('-')) {
                if let Some(o) = item.as_object_mut() {
                    o.remove("id");
                }
            }
        }
    }
    let text = b.to_string();
    let text = if session.is_empty() {
        text
    } else {
        text.replace(&session, "SESSION")
    };
    serde_json::from_str(&text).unwrap()
}

/// The same Codex session (same prompt, same working directory, the same scripted model),
/// once over HTTP and once over the WebSocket, both through the proxy to an HTTP upstream:
/// the upstream receives the same requests, although over the socket Codex sent only the new
/// items of each turn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstream_gets_the_same_requests_from_codex_over_the_websocket_as_over_http() {
    // One home and one working directory: the prompt Codex builds names both.
    let home = e2e::TempDir::new("codex-ws-same-home");
    let work = e2e::TempDir::new("codex-ws-same");
    let mut runs = Vec::new();
    for websockets in [false, true] {
        let mock = MockUpstream::start().await.unwrap();
        mock.set_ws_enabled(false);
        script(&mock);
        let mut cfg = config_for(mock.base_url());
        cfg.credentials = vec![KEY_A.parse().unwrap(), KEY_B.parse().unwrap()];
        cfg.strategy = tower_responses::credentials::Strategy::FillFirst;
        let proxy = start_proxy(cfg).await;
        let run = codex_in(&proxy.url("/v1"), websockets, home.path(), work.path()).await;
        assert!(run.status.success(), "{}", run.transcript());
        assert_eq!(run.stdout.trim(), "FINAL tool_output_seen=true");
        let sockets = proxy.metrics.total("tr_ws_client_sockets_total");
        assert_eq!(sockets >= 1.0, websockets, "websockets={websockets}");
        let upstream_bytes: usize = mock.requests().iter().map(|r| r.body.len()).sum();
        let client_bytes = if websockets {
            proxy.metrics.total("tr_ws_client_bytes_total") as usize
        } else {
            upstream_bytes
        };
        eprintln!(
            "websockets={websockets}: Codex sent the proxy {client_bytes} B, the upstream got {upstream_bytes} B"
        );
        if websockets {
            // Every frame repeats the tools and settings; the input is what shrinks (a prewarm
            // in full, then only new items), and more with every turn of a longer session.
            assert!(
                client_bytes < upstream_bytes,
                "the socket carried only new items"
            );
        }
        runs.push(bodies(&mock).iter().map(comparable).collect::<Vec<_>>());
    }
    let (http, ws) = (&runs[0], &runs[1]);
    assert_eq!(http.len(), ws.len(), "{http:#?}\n{ws:#?}");
    for (i, (h, w)) in http.iter().zip(ws).enumerate() {
        let (hi, wi) = (input(h), input(w));
        for (j, (a, b)) in hi.iter().zip(wi).enumerate() {
            assert_eq!(a, b, "request {i}, input item {j} differs");
        }
        assert_eq!(hi.len(), wi.len(), "request {i}: input lengths differ");
        assert_eq!(h, w, "request {i} differs");
    }
}

// ---- Through the proxy to an upstream that speaks WebSocket (the mock's socket). ----

const SUMMARY: &str = "SUMMARY-E2E-WS: the tool ran and printed its marker.";

/// The HTTP side of the mock, for what the proxy sends over HTTP from a socket: the remote
/// compaction (refused: this model cannot compact), the compaction layer's own summary
/// request (no tools), and the turns after the local summary.
fn http_script(mock: &MockUpstream) {
    mock.set_handler(move |r: &RecordedRequest| {
        let body = r.json()?;
        let small = events::usage(100, 10);
        let items = input(&body);
        if items
            .last()
            .is_some_and(|i| i["type"] == "compaction_trigger")
        {
            return Some(Reply::sse(events::answer(
                "resp_ws_nocompact",
                "msg_ws_nocompact",
                "I cannot compact with this model.",
                small,
            )));
        }
        if body["tools"].as_array().is_none_or(|t| t.is_empty()) {
            return Some(Reply::sse(events::answer(
                "resp_ws_summary",
                "msg_ws_summary",
                SUMMARY,
                small,
            )));
        }
        let seen = body["input"].to_string().contains(SUMMARY);
        Some(Reply::sse(events::answer(
            "resp_ws_final",
            "msg_ws_final",
            &format!("FINAL summary_seen={seen}"),
            small,
        )))
    });
}

/// The socket side: the prewarm, a lost socket on the first real turn, then the tool call
/// (reporting far more tokens than the compaction limit, so Codex compacts mid-turn).
fn socket_script(mock: &MockUpstream) {
    use tower_responses::testing::WsReply;
    let call = json!({
        "type": "function_call",
        "id": "fc_ws_2",
        "call_id": "call_ws_2",
        "name": "exec_command",
        "arguments": json!({"cmd": TOOL_CMD}).to_string(),
        "status": "completed",
    });
    let mut added = call.clone();
    added["status"] = json!("in_progress");
    mock.push_ws(WsReply::auto());
    mock.push_ws(WsReply::cut_before_output());
    mock.push_ws(WsReply::events(vec![
        events::created("resp_ws_call2"),
        events::in_progress("resp_ws_call2"),
        events::output_item_added(added),
        events::output_item_done(call.clone()),
        events::completed("resp_ws_call2", vec![call], events::usage(50_000, 20)),
    ]));
}

async fn codex_openai(base_url: &str) -> e2e::Ran {
    // Named OpenAI: Codex compacts remotely (v2) only for providers of that name.
    exec("OpenAI", base_url, true, Some(1000)).run().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codex_over_an_upstream_socket_survives_quota_a_lost_socket_and_a_refused_compaction() {
    use tower_responses::testing::WsReply;
    // Straight to the mock's socket with an exhausted account: Codex fails.
    let bare = MockUpstream::start().await.unwrap();
    for _ in 0..12 {
        bare.push_ws_for(CLIENT_KEY, WsReply::usage_limit_reached(3600));
    }
    http_script(&bare);
    let direct = codex_openai(&bare.base_url()).await;
    assert!(
        !direct.status.success(),
        "Codex succeeded without the proxy\n{}",
        direct.transcript()
    );

    let mock = MockUpstream::start().await.unwrap();
    mock.push_ws_for(KEY_A, WsReply::usage_limit_reached(3600));
    socket_script(&mock);
    http_script(&mock);
    let mut cfg = config_for(mock.base_url());
    // Platform-like: WebSocket mode upstream, compaction tried remotely first.
    cfg.profile_override = Some(tower_responses::profile::Profile::Openai);
    cfg.credentials = vec![KEY_A.parse().unwrap(), KEY_B.parse().unwrap()];
    cfg.strategy = tower_responses::credentials::Strategy::FillFirst;
    let proxy = start_proxy(cfg).await;
    let run = codex_openai(&proxy.url("/v1")).await;
    let m = &proxy.metrics;
    let sockets = mock.ws_sockets();
    let why = || {
        let frames: Vec<Vec<Value>> = sockets.iter().map(|s| s.creates()).collect();
        format!(
            "{}\n--- metrics ---\n{}\n--- upstream socket creates ---\n{frames:#?}",
            run.transcript(),
            m.render()
        )
    };
    assert!(run.status.success(), "{}", why());
    assert_eq!(run.stdout.trim(), "FINAL summary_seen=true", "{}", why());

    // A's socket got the quota frame; B's the prewarm replayed, then the turn chained on it
    // (only new items) that found the socket lost; a fresh socket got that turn in full.
    let accepted: Vec<_> = sockets.iter().filter(|s| s.accepted).collect();
    assert!(accepted.len() >= 3, "{}", why());
    assert_eq!(accepted[0].credential.as_deref(), Some(KEY_A), "{}", why());
    let on_b = accepted[1].creates();
    assert_eq!(on_b[0]["generate"], json!(false), "{}", why());
    let chained = &on_b[1];
    assert!(chained["previous_response_id"].is_string(), "{}", why());
    assert!(
        !chained["input"].to_string().contains("You are"),
        "the chained turn carried only new items\n{}",
        why()
    );
    let replay = &accepted[2].creates()[0];
    assert!(replay.get("previous_response_id").is_none(), "{}", why());
    assert!(replay["input"].to_string().contains(PROMPT), "{}", why());
    assert!(
        input(replay).len() > input(chained).len(),
        "the replay is the full request\n{}",
        why()
    );
    // The tool ran, the compaction was refused and answered locally over HTTP.
    assert_eq!(
        m.get("tr_compactions_total", &[("mode", "local"), ("form", "v2")]),
        Some(1.0),
        "{}",
        why()
    );
    let http_bodies = bodies(&mock);
    assert!(
        http_bodies.iter().any(|b| input(b)
            .iter()
            .any(|i| i["type"] == "function_call_output" && i.to_string().contains(TOOL_OUTPUT))),
        "{}",
        why()
    );
    // The proxy's local summary item never reached the upstream, on either transport.
    let marker = tower_responses::compact::MARKER_PREFIX;
    for s in &sockets {
        assert!(s.frames.iter().all(|f| !f.contains(marker)), "{}", why());
    }
    assert!(http_bodies.iter().all(|b| !b.to_string().contains(marker)));
}
