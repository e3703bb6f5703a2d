//! The walking-skeleton proxy over real HTTP on loopback, against the mock upstream.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::json;
use tower_responses::credentials::Secret;
use tower_responses::testing::{Fault, MockUpstream, Reply, events};

fn stream_body() -> serde_json::Value {
    json!({"model": "gpt-5.5", "stream": true, "input": [{"role": "user", "content": "hi"}]})
}

#[tokio::test]
async fn streams_each_event_as_the_upstream_sends_it() {
    let mock = MockUpstream::start().await.unwrap();
    // The upstream sends its first content event, then holds everything else back for a
    // minute. (Lifecycle events alone may be held briefly by SoftFailureDetectLayer; content
    // is never held.)
    let answer: Vec<_> = events::text_answer("hello there")
        .into_iter()
        .skip(2)
        .collect();
    mock.push(Reply::sse(answer).first_event_then_wait(Duration::from_secs(60)));
    let proxy = start_proxy(config_for(mock.base_url())).await;
    let res = send(
        &client(),
        json_req(&proxy.url("/v1/responses"), None, stream_body()),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let mut body = res.into_body();
    let mut seen = Vec::new();
    // Bounded: if the proxy buffered, nothing would arrive for 60 s and this fails after 20.
    let first = tokio::time::timeout(Duration::from_secs(20), async {
        while !seen.windows(2).any(|w| w == b"\n\n") {
            let frame = body.frame().await.expect("stream open").expect("frame");
            if let Ok(data) = frame.into_data() {
                seen.extend_from_slice(&data);
            }
        }
        String::from_utf8_lossy(&seen).into_owned()
    })
    .await
    .expect("first event arrives while the upstream still holds the rest");
    assert!(first.contains("response.output_item.added"), "{first}");
    assert!(!first.contains("response.completed"));
}

#[tokio::test]
async fn credentials_replace_the_clients_authorization() {
    let mock = MockUpstream::start().await.unwrap();
    let dir = std::env::temp_dir().join(format!("tr-proxy-auth-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let auth = dir.join("auth.json");
    std::fs::write(
        &auth,
        r#"{"tokens":{"access_token":"oauth-token-xyz","account_id":"acct-42"}}"#,
    )
    .unwrap();
    let mut cfg = config_for(mock.base_url());
    cfg.credentials = vec![
        "upstream-key-one".parse().unwrap(),
        format!("codex-auth:{}", auth.display()).parse().unwrap(),
    ];
    let proxy = start_proxy(cfg).await;
    let c = client();
    for _ in 0..2 {
        let (s, _, body) = send_collect(
            &c,
            json_req(
                &proxy.url("/v1/responses"),
                Some("client-own-key"),
                stream_body(),
            ),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    }
    let reqs = mock.requests();
    assert_eq!(reqs.len(), 2);
    let creds: Vec<_> = reqs.iter().map(|r| r.credential.clone().unwrap()).collect();
    assert!(creds.contains(&"upstream-key-one".to_string()));
    assert!(creds.contains(&"oauth-token-xyz".to_string()));
    let oauth = reqs
        .iter()
        .find(|r| r.credential.as_deref() == Some("oauth-token-xyz"))
        .unwrap();
    assert_eq!(oauth.account_id.as_deref(), Some("acct-42"));
    for r in &reqs {
        assert!(!format!("{:?}", r.headers).contains("client-own-key"));
        assert_eq!(r.path, "/v1/responses");
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test]
async fn without_credentials_the_clients_key_passes_through() {
    let mock = MockUpstream::start().await.unwrap();
    let proxy = start_proxy(config_for(mock.base_url())).await;
    let (s, _, _) = send_collect(
        &client(),
        json_req(
            &proxy.url("/v1/responses?x=1"),
            Some("sk-client"),
            stream_body(),
        ),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let r = &mock.requests()[0];
    assert_eq!(r.credential.as_deref(), Some("sk-client"));
    assert_eq!(r.path, "/v1/responses?x=1");
}

#[tokio::test]
async fn bad_input_gets_the_openai_envelope_and_the_proxy_stays_up() {
    let mock = MockUpstream::start().await.unwrap();
    let mut cfg = config_for(mock.base_url());
    cfg.client_keys = vec![Secret::new("ck-good")];
    // Client keys need upstream credentials (the client key never goes upstream).
    cfg.credentials = vec!["sk-upstream".parse().unwrap()];
    cfg.body_limit = 16 * 1024;
    let proxy = start_proxy(cfg).await;
    let c = client();
    let url = proxy.url("/v1/responses");
    let raw = |key: Option<&str>, body: Vec<u8>| {
        let mut b = Request::post(&url).header("content-type", "application/json");
        if let Some(k) = key {
            b = b.header("authorization", format!("Bearer {k}"));
        }
        b.body(Full::new(Bytes::from(body))).unwrap()
    };
    let cases: Vec<(&str, Request<Full<Bytes>>, StatusCode, &str)> = vec![
        (
            "no key",
            raw(None, b"{}".to_vec()),
            StatusCode::UNAUTHORIZED,
            "invalid_api_key",
        ),
        (
            "wrong key",
            raw(Some("ck-bad"), b"{}".to_vec()),
            StatusCode::UNAUTHORIZED,
            "invalid_api_key",
        ),
        (
            "malformed JSON",
            raw(Some("ck-good"), b"{\"model\":".to_vec()),
            StatusCode::BAD_REQUEST,
            "invalid_json",
        ),
        (
            "invalid UTF-8",
            raw(Some("ck-good"), vec![b'{', 0xff, 0xfe, b'}']),
            StatusCode::BAD_REQUEST,
            "invalid_json",
        ),
        (
            "JSON array",
            raw(Some("ck-good"), b"[1,2]".to_vec()),
            StatusCode::BAD_REQUEST,
            "invalid_json",
        ),
        (
            "oversized",
            raw(Some("ck-good"), vec![b' '; 64 * 1024]),
            StatusCode::PAYLOAD_TOO_LARGE,
            "request_too_large",
        ),
        (
            "unknown path",
            Request::get(proxy.url("/admin"))
                .body(Full::new(Bytes::new()))
                .unwrap(),
            StatusCode::NOT_FOUND,
            "unknown_url",
        ),
        (
            "websocket",
            Request::get(&url)
                .header("authorization", "Bearer ck-good")
                .header("upgrade", "websocket")
                .header("connection", "upgrade")
                .body(Full::new(Bytes::new()))
                .unwrap(),
            StatusCode::UPGRADE_REQUIRED,
            "unsupported_websocket_version",
        ),
        (
            "unsupported encoding",
            Request::post(&url)
                .header("authorization", "Bearer ck-good")
                .header("content-type", "application/json")
                .header("content-encoding", "compress")
                .body(Full::new(Bytes::from_static(b"{}")))
                .unwrap(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_content_encoding",
        ),
    ];
    for (name, req, status, code) in cases {
        let (s, _, body) = send_collect(&c, req).await;
        assert_eq!(s, status, "{name}: {}", String::from_utf8_lossy(&body));
        assert_envelope(&body);
        assert_eq!(error_code(&body).as_deref(), Some(code), "{name}");
    }
    // An endless body is cut at the limit instead of being read forever.
    let raw_client: hyper_util::client::legacy::Client<_, Endless> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let res = raw_client
        .request(
            Request::post(&url)
                .header("authorization", "Bearer ck-good")
                .header("content-type", "application/json")
                .body(Endless)
                .unwrap(),
        )
        .await
        .expect("answered before the body ends");
    assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);

    let (s, _, body) = send_collect(
        &c,
        Request::get(proxy.url("/healthz"))
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!((s, &body[..]), (StatusCode::OK, &br#"{"status":"ok"}"#[..]));
    let (s, _, body) = send_collect(
        &c,
        Request::get(proxy.url("/metrics"))
            .header("authorization", "Bearer ck-good")
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let text = String::from_utf8(body.to_vec()).unwrap();
    assert!(
        text.contains(r#"tr_requests_total{route="responses",status="401"} 2"#),
        "{text}"
    );
    // Still up, still serving.
    let (s, _, _) = send_collect(&c, json_req(&url, Some("ck-good"), stream_body())).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        mock.request_count(),
        1,
        "only the valid request reached the upstream"
    );
}

/// A request body that never ends.
struct Endless;

impl http_body::Body for Endless {
    type Data = Bytes;
    type Error = std::convert::Infallible;
    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        std::task::Poll::Ready(Some(Ok(http_body::Frame::data(Bytes::from(vec![
            b' ';
            4096
        ])))))
    }
}

#[tokio::test]
async fn compressed_bodies_reach_the_upstream_decoded() {
    let mock = MockUpstream::start().await.unwrap();
    let proxy = start_proxy(config_for(mock.base_url())).await;
    let plain = serde_json::to_vec(&stream_body()).unwrap();
    let zst = zstd::encode_all(&plain[..], 3).unwrap();
    let req = Request::post(proxy.url("/v1/responses"))
        .header("content-type", "application/json")
        .header("content-encoding", "zstd")
        .body(Full::new(Bytes::from(zst)))
        .unwrap();
    let (s, _, _) = send_collect(&client(), req).await;
    assert_eq!(s, StatusCode::OK);
    let r = &mock.requests()[0];
    assert_eq!(&r.body[..], &plain[..]);
    assert!(r.headers.get("content-encoding").is_none());
    assert_eq!(
        r.headers["content-length"],
        plain.len().to_string().as_str()
    );
}

#[tokio::test]
async fn an_upstream_that_drops_the_connection_gets_a_retryable_502() {
    let mock = MockUpstream::start().await.unwrap();
    mock.push(Reply::fault(Fault::CloseAfterRead));
    let proxy = start_proxy(config_for(mock.base_url())).await;
    let (s, _, body) = send_collect(
        &client(),
        json_req(&proxy.url("/v1/responses"), None, stream_body()),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_GATEWAY);
    assert_envelope(&body);
    assert_eq!(error_code(&body).as_deref(), Some("upstream_unavailable"));
    assert_eq!(
        proxy
            .metrics
            .get("tr_upstream_errors_total", &[("kind", "transport")]),
        Some(1.0)
    );
}

#[tokio::test]
async fn garbage_and_endless_lines_from_the_upstream_do_not_hurt_the_proxy() {
    let mock = MockUpstream::start().await.unwrap();
    let garbage: Vec<u8> = (0..100_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    mock.push(Reply::raw(
        StatusCode::OK,
        "text/event-stream",
        garbage.clone(),
    ));
    mock.push(Reply::sse_raw(vec![Bytes::from(vec![
        b'x';
        3 * 1024 * 1024
    ])]));
    let proxy = start_proxy(config_for(mock.base_url())).await;
    let c = client();
    let (s, _, body) = send_collect(
        &c,
        json_req(&proxy.url("/v1/responses"), None, stream_body()),
    )
    .await;
    // A 200 event stream without one Responses event is not an answer: the client gets a
    // 502 in the envelope instead of bytes no SDK can parse (issue 14 item 10).
    assert_eq!(s, StatusCode::BAD_GATEWAY);
    assert_eq!(
        error_code(&body).as_deref(),
        Some("invalid_upstream_stream")
    );
    let (s, _, body) = send_collect(
        &c,
        json_req(&proxy.url("/v1/responses"), None, stream_body()),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_GATEWAY);
    assert_eq!(
        error_code(&body).as_deref(),
        Some("invalid_upstream_stream")
    );
    let (s, _, body) = send_collect(
        &c,
        json_req(&proxy.url("/v1/responses"), None, stream_body()),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert!(String::from_utf8_lossy(&body).contains("response.completed"));
}

#[tokio::test]
async fn refuses_a_public_listen_address_without_client_keys() {
    let mut cfg = config_for("http://127.0.0.1:9/v1".into());
    cfg.listen = "0.0.0.0:0".parse().unwrap();
    let err = tower_responses::proxy::Proxy::bind(cfg).await.unwrap_err();
    assert!(err.to_string().contains("client key"), "{err}");
}

#[tokio::test]
async fn graceful_shutdown_lets_an_open_stream_finish() {
    let mock = MockUpstream::start().await.unwrap();
    mock.push(Reply::text("one two three four five six").paced(Duration::from_millis(30)));
    let mut proxy = start_proxy(config_for(mock.base_url())).await;
    let res = send(
        &client(),
        json_req(&proxy.url("/v1/responses"), None, stream_body()),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    let server = proxy.shutdown();
    let body = res
        .into_body()
        .collect()
        .await
        .expect("stream completes")
        .to_bytes();
    assert!(String::from_utf8_lossy(&body).contains("response.completed"));
    tokio::time::timeout(Duration::from_secs(15), server)
        .await
        .expect("server stops after in-flight work")
        .unwrap()
        .unwrap();
    assert!(
        tokio::net::TcpStream::connect(proxy.addr).await.is_err(),
        "no longer accepting"
    );
}
