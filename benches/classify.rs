//! Failure classification (`tower_responses::classify`) on the inputs the layers see: HTTP
//! error answers (OpenAI envelope, Codex `detail`, an HTML gateway page) and stream events
//! (a failure, and the common case: an ordinary delta or the terminal `response.completed`
//! that must be recognised as *not* a failure cheaply).
// `criterion_group!` generates a public function without docs.
#![allow(missing_docs)]

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue, StatusCode};
use tower_responses::classify::{Failure, classify_error};

fn classify(c: &mut Criterion) {
    let mut group = c.benchmark_group("classify");

    let mut headers = HeaderMap::new();
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    headers.insert("retry-after", HeaderValue::from_static("20"));
    headers.insert(
        "x-codex-primary-used-percent",
        HeaderValue::from_static("100"),
    );
    let quota = br#"{"error":{"message":"You exceeded your current quota, please check your plan and billing details.","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}"#;
    group.bench_function("http_429_quota_envelope", |b| {
        b.iter(|| {
            Failure::from_http(
                StatusCode::TOO_MANY_REQUESTS,
                black_box(&headers),
                black_box(quota),
            )
        })
    });
    let usage = br#"{"error":{"type":"usage_limit_reached","message":"The usage limit has been reached","plan_type":"plus","resets_at":1755430098,"resets_in_seconds":3600}}"#;
    group.bench_function("http_429_codex_usage_limit", |b| {
        b.iter(|| {
            Failure::from_http(
                StatusCode::TOO_MANY_REQUESTS,
                black_box(&headers),
                black_box(usage),
            )
        })
    });
    let html = format!(
        "<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head><body>{}</body></html>",
        "<p>cloudflare</p>".repeat(200)
    );
    let plain = HeaderMap::new();
    group.bench_function("http_502_html_page", |b| {
        b.iter(|| {
            Failure::from_http(
                StatusCode::BAD_GATEWAY,
                black_box(&plain),
                black_box(html.as_bytes()),
            )
        })
    });

    let failed = br#"{"type":"response.failed","sequence_number":3,"response":{"id":"resp_1","object":"response","status":"failed","error":{"code":"insufficient_quota","message":"You exceeded your current quota."},"usage":null}}"#;
    group.bench_function("sse_response_failed", |b| {
        b.iter(|| Failure::from_sse_data(black_box(failed)))
    });
    let delta = br#"{"type":"response.output_text.delta","sequence_number":17,"item_id":"msg_68a1f0c5d2e08190b7c6a5b4c3d2e1f0","output_index":0,"content_index":0,"delta":" the","logprobs":[],"obfuscation":"aB3dE5gH"}"#;
    group.bench_function("sse_delta_not_a_failure", |b| {
        b.iter(|| Failure::from_sse_data(black_box(delta)))
    });
    let text = " The proxy keeps the stream moving, event by event.".repeat(80);
    let completed = format!(
        r#"{{"type":"response.completed","sequence_number":57,"response":{{"id":"resp_1","object":"response","status":"completed","output":[{{"id":"msg_1","type":"message","status":"completed","content":[{{"type":"output_text","annotations":[],"text":"{text}"}}],"role":"assistant"}}],"usage":{{"input_tokens":18234,"output_tokens":912,"total_tokens":19146}}}}}}"#
    );
    group.bench_function("sse_completed_4k_not_a_failure", |b| {
        b.iter(|| Failure::from_sse_data(black_box(completed.as_bytes())))
    });

    group.bench_function("rules_only", |b| {
        b.iter(|| {
            classify_error(
                black_box(Some(StatusCode::SERVICE_UNAVAILABLE)),
                black_box(None),
                black_box(Some("server_error")),
                black_box(Some("The server is overloaded. Please try again later.")),
            )
        })
    });
    group.finish();
}

criterion_group!(benches, classify);
criterion_main!(benches);
