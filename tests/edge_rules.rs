//! The edge rules through real HTTP against the mock upstream: who may call a local proxy
//! (Host, Origin, media type), which paths may be mapped, where the client key goes (nowhere),
//! what the logs and metrics call a credential, and that other routes pass untouched.

mod common;
#[path = "common/raw_http.rs"]
mod raw_http;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body_util::Full;
use raw_http::exchange;
use serde_json::json;
use tower_responses::credentials::Secret;
use tower_responses::proxy::{Proxy, ProxyConfig};
use tower_responses::testing::{MockUpstream, Reply};

const BODY: &str = r#"{"model":"m","stream":true,"input":"hi"}"#;
const WAIT: Duration = Duration::from_secs(20);

/// `POST /v1/responses` with the given head lines, `Connection: close` so the exchange ends.
fn post_with(head: &str) -> Vec<u8> {
    format!(
        "POST /v1/responses HTTP/1.1\r\n{head}Connection: close\r\nContent-Length: {}\r\n\r\n{BODY}",
        BODY.len()
    )
    .into_bytes()
}

async fn status_of(proxy: &RunningProxy, bytes: &[u8]) -> (u16, Option<String>) {
    let got = exchange(proxy.addr, bytes, WAIT).await;
    let r = got.responses.first().expect("an answer");
    (r.status, error_code(&r.body))
}

#[tokio::test]
async fn a_web_page_cannot_use_a_keyless_proxy() {
    let mock = MockUpstream::start().await.unwrap();
    let proxy = start_proxy(config_for(mock.base_url())).await;
    let port = proxy.addr.port();
    // The repro from the review: a CORS "simple request" from a rebinding page.
    let csrf = post_with(&format!(
        "Host: evil.example:{port}\r\nOrigin: http://evil.example\r\n\
         Content-Type: text/plain;charset=UTF-8\r\n"
    ));
    let refusals: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        ("csrf", csrf, 403, "host_not_allowed"),
        (
            "rebinding, same request as a local client would send",
            post_with(&format!(
                "Host: evil.example:{port}\r\nContent-Type: application/json\r\n"
            )),
            403,
            "host_not_allowed",
        ),
        (
            "a loopback Host but a page's Origin",
            post_with(&format!(
                "Host: 127.0.0.1:{port}\r\nOrigin: https://evil.example\r\nContent-Type: application/json\r\n"
            )),
            403,
            "origin_not_allowed",
        ),
        (
            "text/plain from a non-browser",
            post_with(&format!(
                "Host: localhost:{port}\r\nContent-Type: text/plain\r\n"
            )),
            415,
            "unsupported_media_type",
        ),
        (
            "no Content-Type with a body",
            post_with(&format!("Host: localhost:{port}\r\n")),
            415,
            "unsupported_media_type",
        ),
    ];
    for (name, bytes, status, code) in refusals {
        let (s, c) = status_of(&proxy, &bytes).await;
        assert_eq!((s, c.as_deref()), (status, Some(code)), "{name}");
    }
    assert_eq!(mock.request_count(), 0, "nothing reached the upstream");

    // Every loopback spelling is served, with and without the port; charset is fine.
    for host in [
        format!("localhost:{port}"),
        "localhost".to_string(),
        format!("127.0.0.1:{port}"),
        format!("[::1]:{port}"),
        "[::1]".to_string(),
    ] {
        let bytes = post_with(&format!(
            "Host: {host}\r\nContent-Type: application/json; charset=utf-8\r\n"
        ));
        let (s, _) = status_of(&proxy, &bytes).await;
        assert_eq!(s, 200, "Host: {host}");
    }
    assert_eq!(mock.request_count(), 5);
    // A GET without a body needs no Content-Type.
    mock.push(Reply::json(StatusCode::OK, json!({"id": "resp_1"})));
    let got = exchange(
        proxy.addr,
        format!("GET /v1/responses/resp_1 HTTP/1.1\r\nHost: localhost:{port}\r\nConnection: close\r\n\r\n").as_bytes(),
        WAIT,
    )
    .await;
    assert_eq!(got.responses[0].status, 200);
    assert_eq!(mock.requests()[5].path, "/v1/responses/resp_1");
}

#[tokio::test]
async fn origins_are_refused_unless_allowed_in_keyed_mode_too() {
    let mock = MockUpstream::start().await.unwrap();
    let mut cfg = config_for(mock.base_url());
    cfg.client_keys = vec![Secret::new("ck-edge")];
    cfg.credentials = vec!["sk-upstream-edge".parse().unwrap()];
    cfg.allowed_origins = vec!["https://app.example/".into()];
    let proxy = start_proxy(cfg).await;
    let head = |extra: &str| {
        post_with(&format!(
            "Host: proxy.internal\r\nAuthorization: Bearer ck-edge\r\nContent-Type: application/json\r\n{extra}"
        ))
    };
    // With client keys any Host is served: the key is the gate.
    assert_eq!(status_of(&proxy, &head("")).await.0, 200);
    let (s, code) = status_of(&proxy, &head("Origin: https://evil.example\r\n")).await;
    assert_eq!((s, code.as_deref()), (403, Some("origin_not_allowed")));
    let allowed = exchange(proxy.addr, &head("Origin: https://APP.example\r\n"), WAIT).await;
    assert_eq!(allowed.responses[0].status, 200);
    // The allowed page may read the answer.
    assert_eq!(
        allowed.responses[0].header("access-control-allow-origin"),
        Some("https://APP.example")
    );
    assert_eq!(mock.request_count(), 2);

    // Its browser's preflight is answered; another origin's is refused.
    let preflight = |origin: &str| {
        format!(
            "OPTIONS /v1/responses HTTP/1.1\r\nHost: proxy.internal\r\nOrigin: {origin}\r\n\
             Access-Control-Request-Method: POST\r\n\
             Access-Control-Request-Headers: authorization, content-type\r\nConnection: close\r\n\r\n"
        )
    };
    let ok = exchange(
        proxy.addr,
        preflight("https://app.example").as_bytes(),
        WAIT,
    )
    .await;
    let r = &ok.responses[0];
    assert_eq!(r.status, 204);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example")
    );
    assert!(
        r.header("access-control-allow-methods")
            .unwrap()
            .contains("POST")
    );
    assert_eq!(
        r.header("access-control-allow-headers"),
        Some("authorization, content-type")
    );
    let (s, code) = status_of(&proxy, preflight("https://evil.example").as_bytes()).await;
    assert_eq!((s, code.as_deref()), (403, Some("origin_not_allowed")));
    assert_eq!(mock.request_count(), 2, "preflights never go upstream");
}

#[tokio::test]
async fn paths_that_climb_out_of_the_prefix_are_refused_before_mapping() {
    let mock = MockUpstream::start().await.unwrap();
    let proxy = start_proxy(config_for(mock.base_url())).await;
    let c = client();
    for path in [
        "/v1/../../probe",
        "/v1/%2e%2E/%2E%2e/probe",
        "/v1/models/.%2E/.%2e/probe",
        "/v1/models%2f..%2f..%2fprobe",
        "/v1/models%5C..%5Cprobe",
        "/v1//models",
        "/v1/./models",
    ] {
        let req = Request::get(proxy.url(path))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let (s, _, body) = send_collect(&c, req).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{path}");
        assert_envelope(&body);
        assert_eq!(error_code(&body).as_deref(), Some("invalid_path"), "{path}");
    }
    assert_eq!(mock.request_count(), 0);
    // A plain path still maps.
    let req = Request::get(proxy.url("/v1/models"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(send_collect(&c, req).await.0, StatusCode::OK);
    assert_eq!(mock.requests()[0].path, "/v1/models");
}

#[tokio::test]
async fn the_client_key_never_goes_upstream() {
    const CLIENT_KEY: &str = "ck-stays-here-4821";
    let mock = MockUpstream::start().await.unwrap();

    // Client keys without credentials: refused at startup, with the reason.
    let mut cfg = config_for(mock.base_url());
    cfg.client_keys = vec![Secret::new(CLIENT_KEY)];
    let err = Proxy::bind(cfg.clone()).await.unwrap_err().to_string();
    assert!(
        err.contains("client keys need upstream credentials"),
        "{err}"
    );

    cfg.credentials = vec!["sk-upstream-77".parse().unwrap()];
    let proxy = start_proxy(cfg).await;
    let c = client();
    for path in ["/v1/responses", "/v1/responses/compact"] {
        let (s, _, _) = send_collect(
            &c,
            json_req(
                &proxy.url(path),
                Some(CLIENT_KEY),
                json!({"model": "m", "stream": true, "input": "hi"}),
            ),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{path}");
    }
    let get = Request::get(proxy.url("/v1/models"))
        .header("authorization", format!("Bearer {CLIENT_KEY}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(send_collect(&c, get).await.0, StatusCode::OK);
    let records = mock.requests();
    assert_eq!(records.len(), 3);
    for r in &records {
        assert_eq!(
            r.credential.as_deref(),
            Some("sk-upstream-77"),
            "{}",
            r.path
        );
        for (name, value) in &r.headers {
            assert!(
                !String::from_utf8_lossy(value.as_bytes()).contains(CLIENT_KEY),
                "the client key went upstream in {name}"
            );
        }
        assert!(!String::from_utf8_lossy(&r.body).contains(CLIENT_KEY));
    }
}

#[tokio::test]
async fn labels_come_from_names_or_positions_never_from_secrets() {
    let mock = MockUpstream::start().await.unwrap();
    let dir = std::env::temp_dir().join(format!("tr-edge-labels-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key_file = dir.join("openai-key");
    std::fs::write(&key_file, "sk-from-the-secret-file-QRST\n").unwrap();
    let cfg = ProxyConfig::from_toml_str(&format!(
        r#"
        listen = "127.0.0.1:0"
        upstream = "{}"
        strategy = "fill_first"
        credentials = [
            {{ source = "file:{}", name = "platform" }},
            "sk-literal-key-number-two-WXYZ",
        ]
        "#,
        mock.base_url(),
        key_file.display()
    ))
    .unwrap();
    let proxy = start_proxy(cfg).await;
    let c = client();
    let (s, _, _) = send_collect(
        &c,
        json_req(
            &proxy.url("/v1/responses"),
            None,
            json!({"model": "m", "stream": true, "input": "hi"}),
        ),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    // The file's key went upstream, trimmed.
    assert_eq!(
        mock.requests()[0].credential.as_deref(),
        Some("sk-from-the-secret-file-QRST")
    );
    let req = Request::get(proxy.url("/metrics"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (_, _, body) = send_collect(&c, req).await;
    let metrics = String::from_utf8_lossy(&body);
    assert!(metrics.contains(r#"credential="platform""#), "{metrics}");
    assert!(metrics.contains(r#"credential="key-2""#), "{metrics}");
    for fragment in ["QRST", "WXYZ", "sk-"] {
        assert!(!metrics.contains(fragment), "{fragment} in the metrics");
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test]
async fn other_routes_pass_multipart_and_binary_bodies_under_the_limit() {
    let mock = MockUpstream::start().await.unwrap();
    let mut cfg = config_for(mock.base_url());
    cfg.body_limit = 64 * 1024;
    let proxy = start_proxy(cfg).await;
    let c = client();
    let boundary = "----tr-edge-boundary";
    let mut multipart = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nassistants\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"notes.bin\"\r\n\
         Content-Type: application/octet-stream\r\n\r\n"
    )
    .into_bytes();
    multipart.extend((0..=255u8).cycle().take(20_000));
    multipart.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let content_type = format!("multipart/form-data; boundary={boundary}");
    let upload = Request::post(proxy.url("/v1/files"))
        .header("content-type", &content_type)
        .body(Full::new(Bytes::from(multipart.clone())))
        .unwrap();
    mock.push(Reply::json(StatusCode::OK, json!({"id": "file-1"})));
    mock.push(Reply::json(StatusCode::OK, json!({"text": "hello"})));
    let (s, _, _) = send_collect(&c, upload).await;
    assert_eq!(s, StatusCode::OK);
    let audio: Vec<u8> = (0..30_000u32).map(|i| (i * 7) as u8).collect();
    let binary = Request::post(proxy.url("/v1/audio/transcriptions"))
        .header("content-type", "audio/wav")
        .body(Full::new(Bytes::from(audio.clone())))
        .unwrap();
    assert_eq!(send_collect(&c, binary).await.0, StatusCode::OK);
    let records = mock.requests();
    assert_eq!(records[0].path, "/v1/files");
    assert_eq!(records[0].header("content-type"), Some(&*content_type));
    assert_eq!(&records[0].body[..], &multipart[..], "byte for byte");
    assert_eq!(&records[1].body[..], &audio[..]);

    // The body limit still holds off the JSON routes.
    let big = Request::post(proxy.url("/v1/files"))
        .header("content-type", &content_type)
        .body(Full::new(Bytes::from(vec![0u8; 65 * 1024])))
        .unwrap();
    let (s, _, body) = send_collect(&c, big).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
    assert_envelope(&body);
    assert_eq!(mock.request_count(), 2);
}

#[tokio::test]
async fn large_compressed_bodies_are_decoded_and_forwarded() {
    let mock = MockUpstream::start().await.unwrap();
    let proxy = start_proxy(config_for(mock.base_url())).await;
    // Well above the 1 MiB that is decoded on the async worker.
    let text = "x".repeat(3 * 1024 * 1024);
    let plain = serde_json::to_vec(&json!({"model": "m", "stream": true, "input": text})).unwrap();
    let zst = zstd::encode_all(&plain[..], 3).unwrap();
    let req = Request::post(proxy.url("/v1/responses"))
        .header("content-type", "application/json")
        .header("content-encoding", "zstd")
        .body(Full::new(Bytes::from(zst)))
        .unwrap();
    let (s, _, _) = send_collect(&client(), req).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(&mock.requests()[0].body[..], &plain[..]);
}

#[tokio::test]
async fn a_shortened_stream_does_not_keep_the_upstreams_content_length() {
    use http_body_util::BodyExt;
    let mock = MockUpstream::start().await.unwrap();
    // The upstream frames its SSE by length and sends a comment after the terminal event;
    // the stream ends for the client at the terminal event, so the length no longer holds.
    let mut chunks: Vec<Bytes> = tower_responses::testing::events::text_answer("hello")
        .iter()
        .map(tower_responses::testing::events::encode)
        .collect();
    chunks.push(Bytes::from_static(b": trailing comment after the end\n\n"));
    let total: usize = chunks.iter().map(Bytes::len).sum();
    // Paced, so the comment arrives on its own, after the proxy has ended the stream.
    mock.push(
        Reply::sse_raw(chunks)
            .with_header("content-length", &total.to_string())
            .paced(Duration::from_millis(20)),
    );
    let proxy = start_proxy(config_for(mock.base_url())).await;
    let res = send(
        &client(),
        json_req(
            &proxy.url("/v1/responses"),
            None,
            json!({"model": "m", "stream": true, "input": "hi"}),
        ),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.headers().get("content-length").is_none());
    let body = res
        .into_body()
        .collect()
        .await
        .expect("the body ends cleanly")
        .to_bytes();
    assert!(String::from_utf8_lossy(&body).contains("response.completed"));
}
