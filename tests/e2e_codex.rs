//! The real Codex CLI (npm `@openai/codex` 0.169.0, offline) through the proxy, against the
//! mock upstream: a turn that runs a tool, compacts mid-turn and answers.
//!
//! # What Codex 0.169 sends (recorded against a bare `MockUpstream`)
//!
//! Run as `codex exec` with a custom provider
//! (`model_providers.NAME = { name, base_url, env_key, wire_api = "responses" }`):
//!
//! - **Transport**: plain HTTP/1.1 `POST {base_url}/responses`, `Authorization: Bearer
//!   <$env_key>`, `Accept: text/event-stream`, uncompressed JSON (zstd only with a ChatGPT
//!   login). No WebSocket upgrade is tried on a custom provider, whatever its display name
//!   (the proxy would answer one with 426).
//! - **Headers**: `session-id`, `thread-id`, `x-client-request-id` (all the session id),
//!   `x-codex-window-id` (`<session>:0`), `x-codex-beta-features: remote_compaction_v2`,
//!   `originator: codex_exec`, `user-agent: codex_exec/0.169.0 (...)`, and
//!   `x-codex-turn-metadata`, JSON whose `request_kind` is `turn` or `compaction`.
//! - **Body**: `model, input, tools, tool_choice:"auto", parallel_tool_calls:true,
//!   reasoning:{effort}, store:false, stream:true, include:["reasoning.encrypted_content"],
//!   prompt_cache_key:<session id>, text:{verbosity}, client_metadata`. No `instructions`: the
//!   21.7k-character base prompt is the first `developer` message of `input`, a second
//!   `developer` message lists skills, then a `user` `<environment_context>` message, then
//!   the prompt. Ten tools: `exec_command`, `write_stdin`, `request_user_input`,
//!   `apply_patch` (freeform), `view_image`, `get_goal`, `create_goal`, `update_goal`,
//!   `tool_search`, `web_search`.
//! - **Shell tool**: `{"type":"function","name":"exec_command","parameters":{"properties":
//!   {"cmd":{"type":"string"}, ...}}}`. The model's call is the output item
//!   `{"type":"function_call","call_id","name":"exec_command","arguments":"{\"cmd\":\"...\"}"}`;
//!   Codex runs `bash -lc <cmd>` and sends back `{"type":"function_call_output","call_id",
//!   "output":"Chunk ID: ...\nWall time: ...\nProcess exited with code 0\n...Output:\n<stdout>"}`.
//! - **Auto-compaction** (`model_auto_compact_token_limit`): when a response reports
//!   `usage.total_tokens` over the limit and the turn must go on (a tool ran), Codex compacts
//!   before the next request. With a provider whose display name is `OpenAI` it compacts
//!   **remotely (v2)**: the same request as a turn (same tools and fields), `request_kind:
//!   compaction`, `input` = the history (function call and output included) plus a last item
//!   `{"type":"compaction_trigger"}`. The answer must hold exactly one
//!   `{"type":"compaction","encrypted_content"}` output item; the next turn's `input` is the
//!   developer and user messages plus that item (with an `id: "cmp_..."`), the tool call and
//!   output are gone. An answer without one fails the run (exit 1): `Error running remote
//!   compact task: Fatal error: remote compaction v2 expected exactly one compaction output
//!   item, got 0 from 1 output items`.
//! - With any other display name it compacts **locally**: `request_kind: compaction`, no
//!   tools, the history plus a last `user` message `You are performing a CONTEXT CHECKPOINT
//!   COMPACTION. ...`; the next turn carries a `user` message `Another language model started
//!   to solve this problem ...` followed by the summary.
//!
//! # The runs
//!
//! The mock (`Script`) answers the first turn with an `exec_command` call reporting 50 000
//! input tokens (over the 1 000 limit), answers any compaction trigger with plain text (it
//! cannot compact this model, like a third-party upstream), any request without tools (a
//! summarisation request) with a fixed summary, and the turn after that with
//! `FINAL summary_seen=<whether the summary is in the input>`. The proxy has two
//! credentials. With the `OpenAI` provider the stack's CompactRouteLayer must turn the
//! failed v2 compaction into its own local summary item, expanded before the next turn goes
//! upstream; straight against the mock the same run fails. With another provider name
//! Codex's own local compaction passes through.
//!
//! Needs the CLI from `.ci/install-clients`; every run is killed after 120 s. The sandbox is
//! off (`-s danger-full-access`): containers often lack the user namespaces bubblewrap needs,
//! and the one command run is a fixed `echo` in a temporary directory.

mod common;
mod e2e;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use common::*;
use serde_json::{Value, json};
use tower_responses::compact::MARKER_PREFIX;
use tower_responses::profile::Profile;
use tower_responses::testing::{MockUpstream, RecordedRequest, Reply, events};

const KEY_A: &str = "sk-e2e-codex-aaaaaaaaaaaaaaaaaaaa-AAAA";
const KEY_B: &str = "sk-e2e-codex-bbbbbbbbbbbbbbbbbbbb-BBBB";
/// What Codex sends as its own key (`env_key`); the proxy must replace it.
const CLIENT_KEY: &str = "sk-e2e-codex-client-key";
const MODEL: &str = "gpt-5.5";
const PROMPT: &str = "Run the e2e tool, then report.";
/// The command the mock asks Codex to run, and what it prints: the arithmetic proves a shell
/// ran it rather than the text being echoed back.
const TOOL_CMD: &str = "echo e2e-tool-ran-$((6*7))";
const TOOL_OUTPUT: &str = "e2e-tool-ran-42";
const SUMMARY: &str = "SUMMARY-E2E: the tool ran and printed its marker.";
const V2_FAILURE: &str = "expected exactly one compaction output item";

fn input(body: &Value) -> &[Value] {
    body["input"].as_array().map_or(&[], Vec::as_slice)
}

fn is_v2_compaction(body: &Value) -> bool {
    input(body)
        .last()
        .is_some_and(|i| i["type"] == "compaction_trigger")
}

fn has_tools(body: &Value) -> bool {
    body["tools"].as_array().is_some_and(|t| !t.is_empty())
}

fn last_user_text(body: &Value) -> String {
    input(body)
        .iter()
        .rev()
        .find(|i| i["role"] == "user")
        .map(|i| i["content"].to_string())
        .unwrap_or_default()
}

/// The scripted model; see the module docs.
fn script(mock: &MockUpstream) {
    let called = Arc::new(AtomicBool::new(false));
    mock.set_handler(move |r: &RecordedRequest| {
        let body = r.json()?;
        if !body.is_object() {
            return None;
        }
        let small = events::usage(100, 10);
        if is_v2_compaction(&body) {
            return Some(Reply::sse(events::answer(
                "resp_e2e_nocompact",
                "msg_e2e_nocompact",
                "I cannot compact with this model.",
                small,
            )));
        }
        if !has_tools(&body) {
            return Some(Reply::sse(events::answer(
                "resp_e2e_summary",
                "msg_e2e_summary",
                SUMMARY,
                small,
            )));
        }
        if !called.swap(true, Ordering::SeqCst) {
            let call = json!({
                "type": "function_call",
                "id": "fc_e2e_1",
                "call_id": "call_e2e_1",
                "name": "exec_command",
                "arguments": json!({"cmd": TOOL_CMD}).to_string(),
                "status": "completed",
            });
            let mut added = call.clone();
            added["status"] = json!("in_progress");
            // Far over model_auto_compact_token_limit: Codex compacts before going on.
            let big = events::usage(50_000, 20);
            return Some(Reply::sse(vec![
                events::created("resp_e2e_call"),
                events::in_progress("resp_e2e_call"),
                events::output_item_added(added),
                events::output_item_done(call.clone()),
                events::completed("resp_e2e_call", vec![call], big),
            ]));
        }
        let seen = body["input"].to_string().contains(SUMMARY);
        Some(Reply::sse(events::answer(
            "resp_e2e_final",
            "msg_e2e_final",
            &format!("FINAL summary_seen={seen}"),
            small,
        )))
    });
}

/// One `codex exec` with a provider displayed as `provider_name`, talking to `base_url`.
async fn codex(provider_name: &str, base_url: &str) -> e2e::Ran {
    e2e::CodexExec {
        provider: provider_name,
        base_url,
        websockets: false,
        compact_limit: Some(1000),
        client_key: CLIENT_KEY,
        model: MODEL,
        prompt: PROMPT,
    }
    .run()
    .await
}

async fn proxy(mock: &MockUpstream) -> RunningProxy {
    let mut cfg = config_for(mock.base_url());
    // Platform-like: the compaction layer may try the upstream's own compaction first.
    cfg.profile_override = Some(Profile::Openai);
    cfg.credentials = vec![KEY_A.parse().unwrap(), KEY_B.parse().unwrap()];
    start_proxy(cfg).await
}

fn bodies(mock: &MockUpstream) -> Vec<Value> {
    mock.requests().iter().filter_map(|r| r.json()).collect()
}

/// The tool ran: Codex sent its output back to the model.
fn assert_tool_ran(mock: &MockUpstream) {
    let ran = bodies(mock).iter().any(|b| {
        input(b)
            .iter()
            .any(|i| i["type"] == "function_call_output" && i.to_string().contains(TOOL_OUTPUT))
    });
    assert!(ran, "no request carried the exec_command output");
}

/// Every request went out on one pool credential (the session stays on its key), never
/// with the client's own.
fn assert_one_pool_credential(mock: &MockUpstream) {
    let creds: Vec<_> = mock.requests().into_iter().map(|r| r.credential).collect();
    let first = creds[0].as_deref();
    assert!(
        first == Some(KEY_A) || first == Some(KEY_B),
        "upstream saw {first:?}"
    );
    assert!(
        creds.iter().all(|c| c.as_deref() == first),
        "one session, one credential: {creds:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codex_remote_compaction_mid_turn_works_through_the_stack_and_not_without_it() {
    // Straight against an upstream that cannot compact: the turn dies.
    let bare = MockUpstream::start().await.unwrap();
    script(&bare);
    let direct = codex("OpenAI", &bare.base_url()).await;
    assert!(
        !direct.status.success(),
        "Codex succeeded without the stack\n{}",
        direct.transcript()
    );
    assert!(
        direct.stderr.contains(V2_FAILURE),
        "expected the v2 compaction failure\n{}",
        direct.transcript()
    );
    assert!(bodies(&bare).iter().any(is_v2_compaction));

    // Through the stack: the same run answers.
    let mock = MockUpstream::start().await.unwrap();
    script(&mock);
    let proxy = proxy(&mock).await;
    let run = codex("OpenAI", &proxy.url("/v1")).await;
    assert!(run.status.success(), "{}", run.transcript());
    assert_eq!(
        run.stdout.trim(),
        "FINAL summary_seen=true",
        "{}",
        run.transcript()
    );
    assert!(!run.stderr.contains(V2_FAILURE), "{}", run.transcript());
    assert_tool_ran(&mock);

    let sent = bodies(&mock);
    // Upstream saw: the turn (answered with the tool call), the v2 compaction (refused: no
    // compaction item), the layer's own summarisation request (no tools), the next turn.
    assert_eq!(sent.len(), 4, "{sent:#?}");
    assert!(has_tools(&sent[0]) && !is_v2_compaction(&sent[0]));
    assert!(is_v2_compaction(&sent[1]));
    assert!(!has_tools(&sent[2]), "no local summary was asked for");
    // ...and its marked item went back to Codex and came back, but never upstream.
    for b in &sent {
        assert!(
            !b.to_string().contains(MARKER_PREFIX),
            "a marked compaction item reached the upstream"
        );
    }
    let last = &sent[3];
    assert!(has_tools(last) && !is_v2_compaction(last));
    assert!(last["input"].to_string().contains(SUMMARY));
    assert!(!input(last).iter().any(|i| i["type"] == "compaction"));
    assert_one_pool_credential(&mock);
    // Which path the layer took: the probe was refused, the summary was made here.
    let m = &proxy.metrics;
    assert_eq!(
        m.get("tr_compactions_total", &[("mode", "local"), ("form", "v2")]),
        Some(1.0),
        "{}",
        m.render()
    );
    assert_eq!(
        m.get("tr_compact_refusals_total", &[("form", "v2")]),
        Some(1.0)
    );
    assert_eq!(m.total("tr_compact_summaries_expanded_total"), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codex_local_compaction_mid_turn_passes_through_the_stack() {
    let mock = MockUpstream::start().await.unwrap();
    script(&mock);
    let proxy = proxy(&mock).await;
    let run = codex("E2E Mock", &proxy.url("/v1")).await;
    assert!(run.status.success(), "{}", run.transcript());
    assert_eq!(
        run.stdout.trim(),
        "FINAL summary_seen=true",
        "{}",
        run.transcript()
    );
    assert_tool_ran(&mock);

    let sent = bodies(&mock);
    // The turn, Codex's summarisation request, the next turn.
    assert_eq!(sent.len(), 3, "{sent:#?}");
    assert!(
        !sent.iter().any(is_v2_compaction),
        "no remote compaction for this provider"
    );
    let summarise = sent
        .iter()
        .find(|b| !has_tools(b))
        .expect("Codex's own summarisation request");
    assert!(
        last_user_text(summarise).contains("CONTEXT CHECKPOINT COMPACTION"),
        "{}",
        last_user_text(summarise)
    );
    assert_one_pool_credential(&mock);
    assert_eq!(proxy.metrics.total("tr_compactions_total"), 0.0);
}
