//! The official OpenAI SDKs (Python `openai`, Node `openai`) through the proxy, against the
//! mock upstream, in the two upstream profiles.
//!
//! Each client (tests/e2e/sdk_client.py, tests/e2e/sdk_client.cjs) makes a streaming
//! `responses.create`, a non-streaming one, then a follow-up anchored on the non-streaming
//! answer with `previous_response_id`, and prints what it got. The mock answers
//! `echo: <last user text> [prev=<previous_response_id or none>]`, so the printed text shows
//! both which request was answered and whether the anchor reached the upstream.
//!
//! - **Platform** (`profile = openai`, two credentials, response ids owned by the credential
//!   that created them, as on api.openai.com with `store:true`): bodies pass untouched; the
//!   follow-up must reach the upstream on the credential that owns the anchor, although
//!   round robin would pick the other one (ContinuityLayer), and the anchor arrives intact.
//! - **Codex-strict** (`profile = chatgpt-codex`, the mock refusing what the ChatGPT Codex
//!   backend refuses, `testing::codex_strict`): the SDKs' bodies (string `input`, no
//!   `instructions`, `store:true`, `stream:false`) are reshaped (BodyNormalizeLayer), the
//!   non-streaming answer is folded back from the forced stream. That backend accepts
//!   `previous_response_id` only over its WebSocket and keeps no HTTP response store
//!   (`store:false` is forced), so an anchor could never resolve there: the layer answers the
//!   follow-up itself with `400 previous_response_not_found` (the signal for a client to send
//!   its history), rather than answering without the conversation. The same client straight
//!   against the strict mock gets 400s for its ordinary requests too.
//!
//! Needs the clients from `.ci/install-clients`; each client run is killed after 120 s.

mod common;
mod e2e;

use common::*;
use http::StatusCode;
use serde_json::{Value, json};
use tower_responses::profile::Profile;
use tower_responses::testing::{
    MockUpstream, RecordedRequest, Reply, ResponseStore, codex_strict, events,
};

const KEY_A: &str = "sk-e2e-sdk-aaaaaaaaaaaaaaaaaaaa-AAAA";
const KEY_B: &str = "sk-e2e-sdk-bbbbbbbbbbbbbbbbbbbb-BBBB";
const MODEL: &str = "gpt-5.5";

#[derive(Clone, Copy, Debug)]
enum Sdk {
    Python,
    Node,
}

impl Sdk {
    fn name(self) -> &'static str {
        match self {
            Sdk::Python => "python",
            Sdk::Node => "node",
        }
    }

    /// Runs the client against `base_url` and returns its steps by name.
    async fn run(self, base_url: &str) -> Steps {
        self.run_script("sdk_client", base_url).await
    }

    /// Runs `tests/e2e/<script>.py` or `.cjs` against `base_url`.
    async fn run_script(self, script: &str, base_url: &str) -> Steps {
        let mut cmd = match self {
            Sdk::Python => {
                let mut c = e2e::command(e2e::python());
                c.arg(e2e::script(&format!("{script}.py")));
                c
            }
            Sdk::Node => {
                let mut c = e2e::command("node");
                c.arg(e2e::script(&format!("{script}.cjs")))
                    .env("NODE_PATH", e2e::node_modules());
                c
            }
        };
        cmd.args([base_url, MODEL]);
        let ran = e2e::run(cmd).await;
        assert!(
            ran.status.success(),
            "{} client failed\n{}",
            self.name(),
            ran.transcript()
        );
        let steps = ran
            .stdout
            .lines()
            .map(|l| {
                serde_json::from_str::<Value>(l).unwrap_or_else(|e| {
                    panic!("{} printed a non-JSON line ({e}): {l}", self.name())
                })
            })
            .collect();
        Steps {
            sdk: self,
            steps,
            transcript: ran.transcript(),
        }
    }
}

struct Steps {
    sdk: Sdk,
    steps: Vec<Value>,
    transcript: String,
}

impl Steps {
    fn get(&self, step: &str) -> &Value {
        self.steps
            .iter()
            .find(|s| s["step"] == step)
            .unwrap_or_else(|| panic!("no {step} step\n{}", self.transcript))
    }

    /// The text the client printed for `step`; fails the test when the step errored.
    fn text(&self, step: &str) -> &str {
        let s = self.get(step);
        assert!(
            s.get("error").is_none(),
            "{} {step} failed: {s}",
            self.sdk.name()
        );
        s["text"].as_str().unwrap_or_default()
    }

    fn id(&self, step: &str) -> String {
        self.text(step);
        self.get(step)["id"]
            .as_str()
            .unwrap_or_else(|| panic!("{} {step}: no id", self.sdk.name()))
            .to_string()
    }

    /// The HTTP status of a failed step.
    fn error_status(&self, step: &str) -> Option<u64> {
        let s = self.get(step);
        s.get("error")?;
        s["status"].as_u64()
    }

    fn expect(&self, step: &str, input: &str, prev: Option<&str>) {
        let want = format!(
            "echo: e2e {input} {} [prev={}]",
            self.sdk.name(),
            prev.unwrap_or("none")
        );
        assert_eq!(self.text(step), want, "{} {step}", self.sdk.name());
    }
}

fn last_user_text(body: &Value) -> String {
    match &body["input"] {
        Value::String(s) => s.clone(),
        Value::Array(items) => items
            .iter()
            .rev()
            .find(|i| i["role"] == "user")
            .map(|i| match &i["content"] {
                Value::String(s) => s.clone(),
                Value::Array(parts) => parts
                    .iter()
                    .filter_map(|p| p["text"].as_str())
                    .collect::<Vec<_>>()
                    .join(" "),
                _ => String::new(),
            })
            .unwrap_or_default(),
        _ => String::new(),
    }
}

/// The mock's answer: streamed or one JSON object, as the request asked, with the id `id`.
fn answer(r: &RecordedRequest, body: &Value, id: &str) -> Reply {
    let prev = body["previous_response_id"].as_str().unwrap_or("none");
    let text = format!("echo: {} [prev={prev}]", last_user_text(body));
    let msg = format!("msg_{id}");
    let usage = events::usage(10, 5);
    if r.wants_stream() {
        Reply::sse(events::answer(id, &msg, &text, usage))
    } else {
        let mut resp = events::response(
            id,
            "completed",
            vec![events::message_item(&msg, &text)],
            Some(usage),
        );
        resp["model"] = json!(MODEL);
        Reply::json(StatusCode::OK, resp)
    }
}

fn is_responses(r: &RecordedRequest) -> bool {
    r.method == http::Method::POST && r.path.trim_end_matches('/').ends_with("/responses")
}

/// The OpenAI platform with `store:true`: an id belongs to the credential that created it,
/// and another credential gets `400 previous_response_not_found` for it. (`ResponseStore`
/// keeps the owners; its own installed handler only streams, which a `stream:false` SDK
/// call cannot read, so this handler answers both ways.)
fn platform(mock: &MockUpstream) -> ResponseStore {
    let store = ResponseStore::new(1);
    let owners = store.clone();
    let next = std::sync::atomic::AtomicU64::new(1);
    mock.set_handler(move |r| {
        if !is_responses(r) {
            return None;
        }
        let body = r.json()?;
        let cred = r.credential.clone()?;
        if let Some(prev) = body["previous_response_id"].as_str() {
            if owners.owner(prev).as_deref() != Some(cred.as_str()) {
                return Some(Reply::json(
                    StatusCode::BAD_REQUEST,
                    json!({"error": {
                        "message": format!("Previous response with id '{prev}' not found."),
                        "type": "invalid_request_error",
                        "param": "previous_response_id",
                        "code": "previous_response_not_found"
                    }}),
                ));
            }
        }
        let id = format!(
            "resp_e2e_{}",
            next.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        owners.insert(&id, &cred);
        Some(answer(r, &body, &id))
    });
    store
}

/// The ChatGPT Codex backend: refuses what it refuses, answers the rest.
fn codex_backend(mock: &MockUpstream) {
    let strict = codex_strict();
    let next = std::sync::atomic::AtomicU64::new(1);
    mock.set_handler(move |r| {
        if let Some(refusal) = strict(r) {
            return Some(refusal);
        }
        if !is_responses(r) {
            return None;
        }
        let body = r.json()?;
        let id = format!(
            "resp_codex_{}",
            next.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        Some(answer(r, &body, &id))
    });
}

async fn proxy(mock: &MockUpstream, profile: Profile) -> RunningProxy {
    let mut cfg = config_for(mock.base_url());
    cfg.profile_override = Some(profile);
    cfg.credentials = vec![KEY_A.parse().unwrap(), KEY_B.parse().unwrap()];
    start_proxy(cfg).await
}

fn assert_only_pool_credentials(mock: &MockUpstream) {
    for r in mock.requests() {
        let cred = r.credential.as_deref();
        assert!(
            cred == Some(KEY_A) || cred == Some(KEY_B),
            "{} reached the upstream with {cred:?}, not a pool credential",
            r.path
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdks_on_the_platform_profile_keep_their_anchor_on_its_owner() {
    let mock = MockUpstream::start().await.unwrap();
    let store = platform(&mock);
    let proxy = proxy(&mock, Profile::Openai).await;
    let base = proxy.url("/v1");

    for sdk in [Sdk::Python, Sdk::Node] {
        let before = mock.request_count();
        let out = sdk.run(&base).await;
        out.expect("stream", "stream", None);
        out.expect("nonstream", "nonstream", None);
        let anchor = out.id("nonstream");
        out.expect("followup", "follow-up", Some(&anchor));

        let seen = &mock.requests()[before..];
        assert_eq!(seen.len(), 3, "one upstream request per call: {seen:#?}");
        // Round robin over two keys alternates, so the follow-up (third call) would land on
        // the first call's key; the anchor belongs to the second call's key.
        let owner = store.owner(&anchor).expect("anchor recorded");
        assert_eq!(seen[1].credential.as_deref(), Some(owner.as_str()));
        assert_ne!(seen[0].credential, seen[1].credential, "round robin");
        assert_eq!(
            seen[2].credential.as_deref(),
            Some(owner.as_str()),
            "{} follow-up went to the anchor's owner",
            sdk.name()
        );
        // The platform profile forwards the SDK's body as sent.
        let follow = seen[2].json().unwrap();
        assert_eq!(follow["previous_response_id"], anchor.as_str());
        assert_eq!(follow["store"], true);
        assert_eq!(follow["input"], format!("e2e follow-up {}", sdk.name()));
    }
    assert_only_pool_credentials(&mock);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdks_on_the_codex_profile_get_answers_from_a_strict_backend() {
    let mock = MockUpstream::start().await.unwrap();
    codex_backend(&mock);
    let proxy = proxy(&mock, Profile::ChatgptCodex).await;

    for sdk in [Sdk::Python, Sdk::Node] {
        let out = sdk.run(&proxy.url("/v1")).await;
        out.expect("stream", "stream", None);
        out.expect("nonstream", "nonstream", None);
        assert!(out.id("nonstream").starts_with("resp_codex_"));
        // No HTTP response store on that backend: the anchor cannot resolve, and the client
        // is told so instead of getting an answer without its conversation.
        assert_eq!(out.error_status("followup"), Some(400));
    }

    let seen = mock.requests();
    assert_eq!(
        seen.len(),
        4,
        "one upstream request per answered call; the follow-ups stay local"
    );
    for r in &seen {
        let body = r.json().unwrap();
        assert_eq!(body["stream"], true, "stream forced");
        assert_eq!(body["store"], false, "store forced off");
        assert!(body["instructions"].is_string(), "instructions defaulted");
        assert!(body["input"].is_array(), "string input made a list");
        assert!(
            body.get("previous_response_id").is_none(),
            "no anchor upstream"
        );
    }
    assert_only_pool_credentials(&mock);

    // Straight to the same backend, the SDK's ordinary requests are refused.
    let before = mock.request_count();
    let direct = Sdk::Python.run(&mock.base_url()).await;
    assert_eq!(direct.error_status("stream"), Some(400));
    assert_eq!(direct.error_status("nonstream"), Some(400));
    assert_eq!(mock.request_count() - before, 2);
}

/// A Response object as the platform writes it: every field the SDKs' `Response` declares.
fn platform_response(id: &str, status: &str, usage: Option<Value>) -> Value {
    let mut r = events::response(id, status, vec![], usage);
    for (k, v) in [
        ("model", json!(MODEL)),
        ("tools", json!([])),
        ("tool_choice", json!("auto")),
        ("parallel_tool_calls", json!(true)),
        ("instructions", Value::Null),
        ("metadata", json!({})),
        ("temperature", json!(1.0)),
        ("top_p", json!(1.0)),
    ] {
        r[k] = v;
    }
    r
}

/// A long streamed answer as the platform streams it (whole response objects, `logprobs` on
/// every delta), so whatever fails validation downstream is what the proxy wrote.
fn long_answer(id: &str) -> Reply {
    let text = "one two three four five six seven eight nine ten eleven twelve thirteen";
    let usage = events::usage(10, 14);
    let mut evs = events::answer(id, &format!("msg_{id}"), text, usage.clone());
    for ev in &mut evs {
        if let Some(status) = ev["response"]["status"].as_str().map(str::to_owned) {
            let u = (status == "completed").then(|| usage.clone());
            let mut full = platform_response(id, &status, u);
            full["output"] = ev["response"]["output"].clone();
            ev["response"] = full;
        }
        if ev["type"] == "response.output_text.delta" {
            ev["logprobs"] = json!([]);
        }
        if ev["type"] == "response.output_text.done" {
            ev["logprobs"] = json!([]);
        }
    }
    Reply::sse(evs)
}

/// What the proxy writes itself, read with the SDKs' own types: a stream it cut at
/// `max_output_tokens` (Python: every event a `ResponseStreamEvent`, the final object a
/// `Response`; Node: the SDK's `ResponseStream` and `finalResponse()`), a local v2
/// compaction stream, and a local v1 compaction answer (`CompactedResponse`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_types_accept_the_answers_the_proxy_writes_itself() {
    let mock = MockUpstream::start().await.unwrap();
    let next = std::sync::atomic::AtomicU64::new(1);
    mock.set_handler(move |r| {
        let body = r.json()?;
        if !is_responses(r) || !last_user_text(&body).contains("capped") {
            return None; // the local summary requests get the mock's own answer
        }
        let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Some(long_answer(&format!("resp_cap_{n}")))
    });
    let mut cfg = config_for(mock.base_url());
    // The Codex profile enforces max_output_tokens locally; compaction is always local.
    cfg.profile_override = Some(Profile::ChatgptCodex);
    cfg.compact.remote = tower_responses::compact::RemotePolicy::Never;
    cfg.credentials = vec![KEY_A.parse().unwrap()];
    let proxy = start_proxy(cfg).await;

    for sdk in [Sdk::Python, Sdk::Node] {
        let out = sdk.run_script("sdk_validate", &proxy.url("/v1")).await;
        let capped = out.text("capped");
        assert!(
            capped.starts_with("incomplete max_output_tokens output_tokens="),
            "{} capped: {capped}",
            sdk.name()
        );
        assert!(out.id("capped").starts_with("resp_cap_"));
        assert_eq!(
            out.text("compact_v2"),
            "completed compaction id=true",
            "{}",
            sdk.name()
        );
        assert_eq!(
            out.text("compact_v1"),
            "compaction id=true",
            "{}",
            sdk.name()
        );
    }
    // Nothing local reached the upstream as a compaction: only summaries and the capped calls.
    assert!(
        mock.requests()
            .iter()
            .all(|r| !r.path.ends_with("/responses/compact")),
        "local compaction never calls the compact route"
    );
}

/// The harness itself: a client that hangs (here a shell whose child outlives it) is killed
/// with everything it started, and the test fails saying so instead of hanging.
#[tokio::test]
async fn a_hung_client_is_killed_with_its_children() {
    let dir = e2e::TempDir::new("hang");
    let pid_file = dir.path().join("pid");
    let mut cmd = e2e::command_for("bash", std::time::Duration::from_millis(500));
    cmd.arg("-c").arg(format!(
        "sleep 300 & echo $! > '{}'; wait",
        pid_file.display()
    ));
    let hung = tokio::spawn(e2e::run(cmd));
    let err = hung.await.expect_err("the run must fail");
    let msg = err
        .into_panic()
        .downcast::<String>()
        .map(|s| *s)
        .unwrap_or_default();
    assert!(
        msg.contains("did not finish within its time limit"),
        "{msg}"
    );

    let pid = std::fs::read_to_string(&pid_file).expect("the shell started its child");
    let stat = format!("/proc/{}/stat", pid.trim());
    // Death after SIGKILL is asynchronous: poll, bounded. A zombie (state Z) is dead too.
    let gone = || {
        std::fs::read_to_string(&stat).map_or(true, |s| {
            s.rsplit(')')
                .next()
                .is_some_and(|r| r.trim_start().starts_with('Z'))
        })
    };
    for _ in 0..250 {
        if gone() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(gone(), "the client's child survived the kill");
}
