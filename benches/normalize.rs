//! Per-request cost of BodyNormalizeLayer on a 40 KB Codex-sized body.
//!
//! The body is what a Codex CLI turn looks like mid-session: a long developer message (the
//! ~21k-character base prompt), a history of user/assistant messages, function calls and
//! outputs, encrypted reasoning items, and a dozen tools with JSON schemas. The inner service
//! answers at once, so the numbers are the layer's own work: top-level parse, rules, re-join.
// `criterion_group!` generates a public function without docs.
#![allow(missing_docs)]

use std::hint::black_box;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use serde_json::{Value, json};
use tower::{ServiceExt, service_fn};
use tower_layer::Layer;
use tower_responses::body::{ReplayBody, full_body};
use tower_responses::error::BoxError;
use tower_responses::normalize::BodyNormalizeLayer;
use tower_responses::profile::Profile;

fn instructions() -> String {
    let para = "You are Codex, a coding agent. Follow the repository's conventions, keep changes \
                minimal, run the tests, and explain what you changed and why. Never invent \
                file contents; read them first. Prefer small, reviewable diffs. ";
    para.repeat(21_000 / para.len() + 1)
}

fn history(system_role: &str) -> Vec<Value> {
    let mut items = vec![json!({
        "type": "message",
        "role": system_role,
        "content": [{"type": "input_text", "text": instructions()}]
    })];
    for i in 0..12 {
        items.push(json!({"type": "message", "role": "user", "content": [{"type": "input_text", "text": format!("Step {i}: please look at src/module_{i}.rs and fix the failing test, then run cargo test.")}]}));
        items.push(json!({"type": "reasoning", "summary": [], "encrypted_content": "gAAAAB".to_string() + &"x9Yz".repeat(120)}));
        items.push(json!({"type": "function_call", "name": "shell", "call_id": format!("call_{i}"), "arguments": format!("{{\"command\":[\"bash\",\"-lc\",\"sed -n 1,80p src/module_{i}.rs\"]}}")}));
        items.push(json!({"type": "function_call_output", "call_id": format!("call_{i}"), "output": "fn main() {\n    println!(\"hello\");\n}\n".repeat(8)}));
        items.push(json!({"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": format!("I fixed module {i}: the test expected an error for empty input; the function now returns it.")}]}));
    }
    items
}

fn tools() -> Vec<Value> {
    (0..12)
        .map(|i| json!({
            "type": "function",
            "name": format!("tool_{i}"),
            "description": "Runs a command in the sandbox and returns its output, exit code and duration.",
            "strict": false,
            "parameters": {"type": "object", "properties": {
                "command": {"type": "array", "items": {"type": "string"}, "description": "The command and its arguments."},
                "workdir": {"type": "string", "description": "Working directory."},
                "timeout_ms": {"type": "number", "description": "Timeout in milliseconds."}
            }, "required": ["command"], "additionalProperties": false}
        }))
        .collect()
}

/// What the Codex CLI sends: already acceptable except for the missing `instructions`.
fn codex_cli_body() -> Bytes {
    Bytes::from(
        json!({
            "model": "gpt-5.5",
            "input": history("developer"),
            "tools": tools(),
            "tool_choice": "auto",
            "parallel_tool_calls": false,
            "reasoning": {"effort": "medium", "summary": "auto"},
            "store": false,
            "stream": true,
            "include": ["reasoning.encrypted_content"],
            "prompt_cache_key": "019a0000-0000-7000-8000-000000000000"
        })
        .to_string(),
    )
}

/// What an SDK sends: a system message, sampling parameters, a cap, no stream.
fn sdk_body() -> Bytes {
    Bytes::from(
        json!({
            "model": "gpt-5.5",
            "input": history("system"),
            "tools": tools(),
            "temperature": 0.2,
            "top_p": 1,
            "max_output_tokens": 4096,
            "metadata": {"app": "bench"},
            "store": true,
            "stream": true
        })
        .to_string(),
    )
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let upstream = service_fn(|_req: http::Request<ReplayBody>| async {
        Ok::<_, BoxError>(http::Response::new(full_body(Bytes::new())))
    });
    let mut group = c.benchmark_group("normalize");
    for (name, profile, body) in [
        ("codex_cli_body", Profile::ChatgptCodex, codex_cli_body()),
        ("sdk_body_to_codex", Profile::ChatgptCodex, sdk_body()),
        ("openai_passthrough", Profile::Openai, codex_cli_body()),
    ] {
        group.throughput(Throughput::Bytes(body.len() as u64));
        let svc = BodyNormalizeLayer::for_profile(profile).layer(upstream);
        group.bench_function(format!("{name}_{}kB", body.len() / 1000), |b| {
            b.iter(|| {
                let req = http::Request::post("https://chatgpt.com/backend-api/codex/responses")
                    .body(ReplayBody::new(body.clone()))
                    .unwrap();
                let res = rt.block_on(svc.clone().oneshot(req)).unwrap();
                black_box(res);
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
