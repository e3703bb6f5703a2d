//! The hostile-request table: raw bytes over TCP to a keyless proxy (the default, and the one
//! a web page can reach), each with the outcome the edge must give. Behind every case the same
//! connection carries a valid, marked request; it must never reach the upstream. Nothing but
//! the one case RFC 9112 says to read as chunked may reach it, and a normal request on a new
//! connection still succeeds afterwards.

mod common;
#[path = "common/raw_http.rs"]
mod raw_http;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use raw_http::{Exchange, exchange};
use serde_json::json;
use tokio::task::JoinSet;
use tower_responses::testing::MockUpstream;

const BODY: &str = r#"{"model":"m","stream":true,"input":"hi"}"#;

/// A valid request that must never be read: it follows each hostile one on its connection.
fn smuggled() -> String {
    format!(
        "POST /v1/responses HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         X-Smuggled: 1\r\nContent-Length: {}\r\n\r\n{BODY}",
        BODY.len()
    )
}

/// `POST /v1/responses` with a JSON body and `extra` header lines (each ending in CRLF).
fn post(extra: &str) -> String {
    format!(
        "POST /v1/responses HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         {extra}Content-Length: {}\r\n\r\n{BODY}",
        BODY.len()
    )
}

/// A request head with `extra` header lines and no body.
fn get(target: &str, extra: &str) -> String {
    format!("GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}\r\n")
}

fn chunked(body: &str) -> String {
    format!("{:x}\r\n{body}\r\n0\r\n\r\n", body.len())
}

struct Case {
    name: &'static str,
    bytes: Vec<u8>,
    /// Space-separated: each response's status (`403`: our JSON envelope; `400!`: hyper's
    /// own body-less answer to a request it cannot parse; `200`: an answer), then `closed`.
    /// `+mock` marks the one case whose request (never the smuggled one) may go upstream.
    expect: &'static str,
}

fn case(name: &'static str, bytes: impl Into<Vec<u8>>, expect: &'static str) -> Case {
    Case {
        name,
        bytes: bytes.into(),
        expect,
    }
}

#[rustfmt::skip]
fn table() -> Vec<Case> {
    let len = BODY.len();
    vec![
        // Framing (RFC 9112 section 6): what a smuggler plays with.
        case("cl_and_chunked", format!("POST /v1/responses HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nX-Case: cl_and_chunked\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n{}", chunked(BODY)), "200 closed +mock"),
        case("chunked_then_cl", format!("POST /v1/responses HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\nContent-Length: {len}\r\n\r\n{}", chunked(BODY)), "415 closed"),
        case("two_content_lengths", format!("POST /v1/responses HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {len}\r\nContent-Length: 5\r\n\r\n{BODY}"), "400! closed"),
        case("content_length_list", format!("POST /v1/responses HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {len}, 5\r\n\r\n{BODY}"), "400! closed"),
        case("content_length_negative", post("").replace(&format!("Content-Length: {len}"), "Content-Length: -1"), "400! closed"),
        case("content_length_plus", post("").replace(&format!("Content-Length: {len}"), &format!("Content-Length: +{len}")), "400! closed"),
        case("te_not_chunked", format!("POST /v1/responses HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nTransfer-Encoding: gzip\r\n\r\n{BODY}"), "400! closed"),
        case("te_chunked_not_last", format!("POST /v1/responses HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked, identity\r\n\r\n{}", chunked(BODY)), "400! closed"),
        case("te_on_http_1_0", format!("POST /v1/responses HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n{}", chunked(BODY)), "400! closed"),
        case("bad_chunk_size", "POST /v1/responses HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n", "400 closed"),
        case("huge_chunk_size", "POST /v1/responses HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\n{}\r\n0\r\n\r\n", "400 closed"),
        case("declared_too_large", post("").replace(&format!("Content-Length: {len}"), "Content-Length: 999999999999"), "413 closed"),
        case("body_never_ends", "POST /v1/responses HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{\"model\":", "408 closed"),
        case("chunked_never_ends", "POST /v1/responses HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\nffff\r\n{\"model\":", "408 closed"),
        // Header syntax and size.
        case("obs_fold", get("/healthz", "X-Folded: one\r\n  two\r\n"), "400! closed"),
        case("space_before_colon", get("/healthz", "X-Bad : 1\r\n"), "400! closed"),
        case("control_char_in_value", get("/healthz", "X-Bad: a\x01b\r\n"), "400! closed"),
        case("header_100_kb", get("/healthz", &format!("X-Big: {}\r\n", "a".repeat(100_000))), "431! closed"),
        case("headers_10000", get("/healthz", &"X-N: 1\r\n".repeat(10_000)), "431! closed"),
        case("uri_70_kb", format!("GET /v1/{} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", "a".repeat(70_000)), "431! closed"),
        // Request line.
        case("bare_lf_lines", "GET /healthz HTTP/1.1\nHost: 127.0.0.1\nConnection: close\n\n", "200 closed"),
        case("invalid_method", "G<T /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", "400! closed"),
        case("unknown_method", post("").replacen("POST", "BREW", 1), "405 closed"),
        case("trace_method", get("/v1/models", "").replacen("GET", "TRACE", 1), "405 closed"),
        case("connect", "CONNECT api.openai.com:443 HTTP/1.1\r\nHost: api.openai.com:443\r\n\r\n", "405 closed"),
        case("nul_in_path", "GET /v1/mod\0els HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", "400! closed"),
        case("lowercase_version", "GET /healthz http/1.1\r\nHost: 127.0.0.1\r\n\r\n", "400! closed"),
        case("http_2_request_line", "GET /healthz HTTP/2.0\r\nHost: 127.0.0.1\r\n\r\n", "400! closed"),
        case("h2_preface", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "closed"),
        // Request targets: this is not a forward proxy.
        case("absolute_form_other_host", post("").replacen("/v1/responses", "http://other.example/v1/responses", 1), "400 closed"),
        case("absolute_form_own_host", get("http://127.0.0.1/v1/models", ""), "400 closed"),
        case("authority_form", get("127.0.0.1:443", ""), "400 closed"),
        case("asterisk_form", "OPTIONS * HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", "405 closed"),
        // Host: DNS rebinding.
        case("http_1_0_without_host", "GET /v1/models HTTP/1.0\r\n\r\n", "403 closed"),
        case("http_1_1_without_host", "GET /v1/models HTTP/1.1\r\n\r\n", "400 closed"),
        case("two_hosts", get("/v1/models", "Host: 127.0.0.1\r\n"), "400 closed"),
        case("rebound_host", post("").replacen("Host: 127.0.0.1", "Host: evil.example:8787", 1), "403 closed"),
        case("loopback_lookalike_host", post("").replacen("Host: 127.0.0.1", "Host: 127.0.0.1.nip.io", 1), "403 closed"),
        // Origin: cross-site requests from web pages (CSRF).
        case("csrf_simple_request", post("Origin: http://evil.example\r\n").replacen("Host: 127.0.0.1", "Host: evil.example:8787", 1).replacen("application/json", "text/plain;charset=UTF-8", 1), "403 closed"),
        case("foreign_origin", post("Origin: https://evil.example\r\n"), "403 closed"),
        case("null_origin", post("Origin: null\r\n"), "403 closed"),
        case("cross_site_fetch", get("/v1/models", "Sec-Fetch-Site: cross-site\r\n"), "403 closed"),
        case("text_plain_body", post("").replacen("application/json", "text/plain", 1), "415 closed"),
        case("form_body", post("").replacen("application/json", "application/x-www-form-urlencoded", 1), "415 closed"),
        case("body_without_content_type", format!("POST /v1/responses HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len}\r\n\r\n{BODY}"), "415 closed"),
        // Paths that would leave the upstream's prefix.
        case("dot_dot", get("/v1/../../probe", ""), "400 closed"),
        case("encoded_dot_dot", get("/v1/%2E%2e/probe", ""), "400 closed"),
        case("encoded_slash", get("/v1/models%2F..%2Fprobe", ""), "400 closed"),
        case("double_encoded_dot", get("/v1/%252e%252e/probe", ""), "400 closed"),
        case("backslash", get("/v1/models\\..\\probe", ""), "400 closed"),
        case("empty_segment", get("/v1//models", ""), "400 closed"),
        // Other.
        case("websocket_upgrade", get("/v1/responses", "Upgrade: websocket\r\nConnection: Upgrade\r\n"), "426 closed"),
        case("garbage_after_request", format!("{}\x16\x03\x01\x02\x00garbage\r\n\r\n", get("/healthz", "")), "200 400! closed"),
    ]
}

fn describe(x: &Exchange) -> String {
    let mut parts: Vec<String> = x
        .responses
        .iter()
        .map(|r| {
            let bare = r.body.is_empty() && r.status >= 400;
            format!("{}{}", r.status, if bare { "!" } else { "" })
        })
        .collect();
    parts.push(if x.closed { "closed" } else { "open" }.to_string());
    parts.join(" ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_get_a_clean_refusal_and_nothing_is_smuggled() {
    let mock = MockUpstream::start().await.unwrap();
    let mut cfg = config_for(mock.base_url());
    cfg.body_read_timeout_secs = 1;
    cfg.header_read_timeout_secs = 5;
    cfg.body_limit = 1024 * 1024;
    let proxy = start_proxy(cfg).await;
    let cases = table();
    assert!(cases.len() >= 30, "{} cases", cases.len());

    let mut runs = JoinSet::new();
    for case in cases {
        let addr = proxy.addr;
        runs.spawn(async move {
            let mut bytes = case.bytes.clone();
            bytes.extend_from_slice(smuggled().as_bytes());
            let got = exchange(addr, &bytes, Duration::from_secs(20)).await;
            (case, got)
        });
    }
    let mut failures = Vec::new();
    let mut may_reach = BTreeSet::new();
    while let Some(done) = runs.join_next().await {
        let (case, got) = done.expect("case task");
        let want = case.expect.replace(" +mock", "");
        if case.expect.ends_with("+mock") {
            may_reach.insert(case.name);
        }
        let seen = describe(&got);
        if seen != want {
            failures.push(format!("{}: expected `{want}`, got `{seen}`", case.name));
            continue;
        }
        // Our own refusals use the envelope; hyper's are body-less; 200s are real answers.
        for r in &got.responses {
            if r.status >= 400 && !r.body.is_empty() && !r.is_envelope() {
                failures.push(format!("{}: {} without the envelope", case.name, r.status));
            }
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));

    let records = mock.requests();
    assert!(
        records.iter().all(|r| r.header("x-smuggled").is_none()),
        "a pipelined request reached the upstream"
    );
    let reached: BTreeSet<&str> = records
        .iter()
        .map(|r| r.header("x-case").unwrap_or("(unmarked)"))
        .collect();
    assert_eq!(reached, may_reach.iter().map(|s| &**s).collect());
    // Content-Length with chunked was read as chunked (RFC 9112 section 6.3), and what went
    // upstream is framed once, by length.
    let r = &records[0];
    assert_eq!(&r.body[..], BODY.as_bytes());
    assert_eq!(r.header("content-length"), Some(&*BODY.len().to_string()));
    assert!(r.header("transfer-encoding").is_none());

    // Still serving: a normal request on a new connection.
    let (status, _, _) = send_collect(
        &client(),
        json_req(
            &proxy.url("/v1/responses"),
            None,
            json!({"model": "m", "stream": true, "input": "hi"}),
        ),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(mock.request_count(), records.len() + 1);
}
