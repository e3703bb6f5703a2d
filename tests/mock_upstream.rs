//! The mock upstream over real HTTP on loopback, driven by hyper-util's pooling client.

use std::error::Error as StdError;
use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower_responses::testing::{Fault, MockUpstream, Reply, StaleMode, events};

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// Past the stale threshold used below.
const STALE_AFTER: Duration = Duration::from_millis(200);

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// Fails the test instead of hanging it when the mock misbehaves.
async fn within<F: Future>(fut: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .expect("timed out")
}

fn post(
    mock: &MockUpstream,
    path: &str,
    credential: Option<&str>,
    body: Value,
) -> Request<Full<Bytes>> {
    let mut req = Request::post(format!("http://{}{path}", mock.addr()))
        .header("content-type", "application/json");
    if let Some(c) = credential {
        req = req.header("authorization", format!("Bearer {c}"));
    }
    req.body(Full::from(body.to_string())).unwrap()
}

fn stream_body(input: &str) -> Value {
    json!({"model": "gpt-5", "stream": true, "input": [
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": input}]}
    ]})
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

async fn send(client: &HttpClient, req: Request<Full<Bytes>>) -> Answer {
    let res = within(client.request(req)).await.expect("request failed");
    let status = res.status();
    let headers = res.headers().clone();
    let body = within(res.into_body().collect())
        .await
        .expect("body failed")
        .to_bytes();
    Answer {
        status,
        headers,
        body: String::from_utf8(body.to_vec()).unwrap(),
    }
}

/// The `data:` JSON of every SSE event in `body`.
fn sse_data(body: &str) -> Vec<Value> {
    body.split("\n\n")
        .filter_map(|block| block.lines().find_map(|l| l.strip_prefix("data: ")))
        .map(|data| serde_json::from_str(data).unwrap())
        .collect()
}

fn types(evs: &[Value]) -> Vec<&str> {
    evs.iter().map(|e| e["type"].as_str().unwrap()).collect()
}

fn joined_deltas(evs: &[Value]) -> String {
    evs.iter()
        .filter(|e| e["type"] == "response.output_text.delta")
        .map(|e| e["delta"].as_str().unwrap())
        .collect()
}

fn sources<'a>(
    err: &'a (dyn StdError + 'static),
) -> impl Iterator<Item = &'a (dyn StdError + 'static)> {
    std::iter::successors(Some(err), |e| (*e).source())
}

fn is_incomplete_message(err: &(dyn StdError + 'static)) -> bool {
    sources(err).any(|e| {
        e.downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_incomplete_message)
    })
}

/// How hyper reports a chunked body whose connection closed before its last chunk.
fn is_truncated_body(err: &(dyn StdError + 'static)) -> bool {
    sources(err).any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::UnexpectedEof)
    })
}

fn is_connection_reset(err: &(dyn StdError + 'static)) -> bool {
    sources(err).any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionReset)
    })
}

/// Reads body frames until `stop` holds for what has arrived; `None` if the body ended first.
async fn read_until(
    body: &mut Incoming,
    got: &mut Vec<u8>,
    stop: impl Fn(&[u8]) -> bool,
) -> Option<()> {
    while !stop(got) {
        let frame = within(body.frame()).await?.ok()?;
        if let Ok(data) = frame.into_data() {
            got.extend_from_slice(&data);
        }
    }
    Some(())
}

const ANSWER_ORDER: [&str; 10] = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
    "response.output_text.delta",
    "response.output_text.delta",
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
    "response.completed",
];

#[tokio::test]
async fn auto_streams_a_realistic_answer_that_quotes_the_request() {
    let mock = MockUpstream::start().await.unwrap();
    let res = send(
        &client(),
        post(&mock, "/v1/responses", None, stream_body("What is 2+2?")),
    )
    .await;

    assert_eq!(res.status, 200);
    assert_eq!(res.headers["content-type"], "text/event-stream");
    assert!(res.headers.contains_key("x-request-id"));
    let evs = sse_data(&res.body);
    let kinds = types(&evs);
    assert_eq!(kinds.first(), Some(&"response.created"));
    assert_eq!(kinds.last(), Some(&"response.completed"));
    assert!(
        kinds
            .iter()
            .filter(|k| **k == "response.output_text.delta")
            .count()
            >= 2
    );
    // Every event line names its type, as the real API does.
    assert_eq!(res.body.matches("event: ").count(), evs.len());

    let text = joined_deltas(&evs);
    assert!(text.contains("What is 2+2?"), "{text}");
    let done = evs.last().unwrap();
    assert_eq!(done["response"]["id"], evs[0]["response"]["id"]);
    assert_eq!(done["response"]["model"], "gpt-5");
    assert_eq!(
        done["response"]["output"][0]["content"][0]["text"],
        text.as_str()
    );
    assert!(done["response"]["usage"]["total_tokens"].as_u64().unwrap() > 0);
}

#[tokio::test]
async fn auto_answers_json_compact_models_and_404() {
    let mock = MockUpstream::start().await.unwrap();
    let client = client();

    // Without the /v1 prefix, and stream:false: one JSON response object.
    let res = send(
        &client,
        post(
            &mock,
            "/responses",
            None,
            json!({"model": "m", "input": "Say hi"}),
        ),
    )
    .await;
    assert_eq!(res.status, 200);
    assert_eq!(res.headers["content-type"], "application/json");
    let obj: Value = serde_json::from_str(&res.body).unwrap();
    assert_eq!(obj["object"], "response");
    assert_eq!(obj["status"], "completed");
    assert!(obj["id"].as_str().unwrap().starts_with("resp_mock_"));
    assert!(
        obj["output"][0]["content"][0]["text"]
            .as_str()
            .unwrap()
            .contains("Say hi")
    );
    assert!(obj["usage"]["input_tokens"].as_u64().unwrap() > 0);

    let input = json!([
        {"type": "message", "role": "developer", "content": "rules"},
        {"type": "message", "role": "user", "content": "keep me"},
        {"type": "message", "role": "assistant", "content": "reply"},
    ]);
    let res = send(
        &client,
        post(
            &mock,
            "/v1/responses/compact",
            None,
            json!({"model": "m", "input": input}),
        ),
    )
    .await;
    assert_eq!(res.status, 200);
    let out: Value = serde_json::from_str(&res.body).unwrap();
    let items = out["output"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert_eq!(items[0]["content"], "keep me");
    assert_eq!(items[1]["type"], "compaction");
    assert!(
        items[1]["encrypted_content"]
            .as_str()
            .unwrap()
            .starts_with("mock-")
    );

    let req = Request::get(format!("{}/models", mock.base_url()))
        .body(Full::default())
        .unwrap();
    let res = send(&client, req).await;
    let models: Value = serde_json::from_str(&res.body).unwrap();
    assert_eq!(res.status, 200);
    assert_eq!(models["object"], "list");
    assert!(!models["data"].as_array().unwrap().is_empty());

    let res = send(&client, post(&mock, "/v1/nope", None, json!({}))).await;
    assert_eq!(res.status, 404);
    let err: Value = serde_json::from_str(&res.body).unwrap();
    assert_eq!(err["error"]["type"], "invalid_request_error");

    // A body that is not JSON is recorded as is and answered with the API's 400.
    let req = Request::post(format!("{}/responses", mock.base_url()))
        .body(Full::from("{not json"))
        .unwrap();
    let res = send(&client, req).await;
    assert_eq!(res.status, 400);
    let last = mock.requests().pop().unwrap();
    assert_eq!(&last.body[..], b"{not json");
    assert!(last.json().is_none());
    assert_eq!(mock.request_count(), 5);
}

#[tokio::test]
async fn scripts_route_by_credential_then_fifo_then_default() {
    let mock = MockUpstream::start().await.unwrap();
    let client = client();
    mock.push(Reply::text("shared one"));
    mock.push(Reply::text("shared two"));
    mock.push_for("key-a", Reply::text("for a"));
    mock.set_default(Reply::json(
        StatusCode::SERVICE_UNAVAILABLE,
        json!({"error": {"message": "down"}}),
    ));

    let mut texts = Vec::new();
    for cred in ["key-b", "key-a", "key-a"] {
        let res = send(
            &client,
            post(&mock, "/v1/responses", Some(cred), stream_body("x")),
        )
        .await;
        assert_eq!(res.status, 200);
        texts.push(joined_deltas(&sse_data(&res.body)));
    }
    assert_eq!(texts, ["shared one", "for a", "shared two"]);

    // Scripts used up: the default answers, whatever the credential.
    for cred in ["key-a", "key-c"] {
        let res = send(
            &client,
            post(&mock, "/v1/responses", Some(cred), stream_body("x")),
        )
        .await;
        assert_eq!(res.status, 503);
    }

    // The handler goes first; `None` falls through to the script.
    mock.push(Reply::text("queued"));
    mock.set_handler(|req| {
        req.path
            .contains("special")
            .then(|| Reply::raw(StatusCode::IM_A_TEAPOT, "text/plain", "short and stout"))
    });
    let res = send(
        &client,
        post(&mock, "/v1/responses?special=1", None, stream_body("x")),
    )
    .await;
    assert_eq!(
        (res.status, res.body.as_str()),
        (StatusCode::IM_A_TEAPOT, "short and stout")
    );
    let res = send(
        &client,
        post(&mock, "/v1/responses", None, stream_body("x")),
    )
    .await;
    assert_eq!(joined_deltas(&sse_data(&res.body)), "queued");

    let creds: Vec<_> = mock.requests().into_iter().map(|r| r.credential).collect();
    assert_eq!(creds[0].as_deref(), Some("key-b"));
    assert_eq!(creds[6], None);
}

#[tokio::test]
async fn keep_alive_requests_share_a_connection_and_are_recorded() {
    let mock = MockUpstream::start().await.unwrap();
    let client = client();
    for i in 0..3 {
        let req = Request::post(format!("{}/responses?turn={i}", mock.base_url()))
            .header("authorization", "Bearer tok-1")
            .header("chatgpt-account-id", "acct-9")
            .header("session-id", "s-1")
            .body(Full::from(stream_body(&format!("turn {i}")).to_string()))
            .unwrap();
        let res = send(&client, req).await;
        assert!(joined_deltas(&sse_data(&res.body)).contains(&format!("turn {i}")));
    }

    let reqs = mock.requests();
    assert_eq!(reqs.len(), 3);
    assert_eq!(mock.connections_accepted(), 1);
    for (i, r) in reqs.iter().enumerate() {
        assert_eq!(r.conn_id, reqs[0].conn_id);
        assert_eq!(r.conn_request_index, i as u64);
        assert_eq!(r.idle_before.is_some(), i > 0);
        assert_eq!(r.method, Method::POST);
        assert_eq!(r.path, format!("/v1/responses?turn={i}"));
        assert_eq!(r.credential.as_deref(), Some("tok-1"));
        assert_eq!(r.account_id.as_deref(), Some("acct-9"));
        assert_eq!(r.header("session-id"), Some("s-1"));
        assert_eq!(r.json().unwrap()["stream"], true);
    }
}

/// One request to pool a connection, idleness past the stale threshold, then a second request
/// on the pooled connection. Returns the second request's outcome.
async fn reuse_stale_connection(
    mock: &MockUpstream,
    client: &HttpClient,
    mode: StaleMode,
) -> Result<hyper::Response<Incoming>, hyper_util::client::legacy::Error> {
    mock.set_stale(STALE_AFTER, mode);
    let first = send(
        client,
        post(mock, "/v1/responses", None, stream_body("first")),
    )
    .await;
    assert_eq!(first.status, 200);
    // Sleeping only creates the idleness; nothing below depends on how long it took.
    tokio::time::sleep(STALE_AFTER + Duration::from_millis(50)).await;
    mock.push(Reply::text("kept for the retry"));
    within(client.request(post(mock, "/v1/responses", None, stream_body("second")))).await
}

/// The stale request was read and recorded on the reused connection, and its script is still
/// there for a retry, which a fresh connection serves.
async fn assert_stale_then_retry(mock: &MockUpstream, client: &HttpClient) {
    let reqs = mock.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[1].conn_id, reqs[0].conn_id);
    assert_eq!(reqs[1].conn_request_index, 1);
    assert!(reqs[1].idle_before.unwrap() >= STALE_AFTER);
    assert_eq!(
        reqs[1].json().unwrap()["input"][0]["content"][0]["text"],
        "second"
    );

    let retry = send(
        client,
        post(mock, "/v1/responses", None, stream_body("retry")),
    )
    .await;
    assert_eq!(joined_deltas(&sse_data(&retry.body)), "kept for the retry");
    let last = mock.requests().pop().unwrap();
    assert_ne!(last.conn_id, reqs[0].conn_id);
    assert_eq!(last.conn_request_index, 0);
    assert_eq!(mock.connections_accepted(), 2);
}

#[tokio::test]
async fn stale_fin_reads_the_request_then_closes() {
    let mock = MockUpstream::start().await.unwrap();
    let client = client();
    let err = reuse_stale_connection(&mock, &client, StaleMode::Fin)
        .await
        .unwrap_err();
    assert!(!err.is_connect());
    assert!(is_incomplete_message(&err), "{err:?}");
    assert_stale_then_retry(&mock, &client).await;
}

#[tokio::test]
async fn stale_reset_reads_the_request_then_resets() {
    let mock = MockUpstream::start().await.unwrap();
    let client = client();
    let err = reuse_stale_connection(&mock, &client, StaleMode::Reset)
        .await
        .unwrap_err();
    assert!(!err.is_connect());
    assert!(is_connection_reset(&err), "{err:?}");
    assert_stale_then_retry(&mock, &client).await;
}

#[tokio::test]
async fn stale_html400_answers_like_a_load_balancer() {
    let mock = MockUpstream::start().await.unwrap();
    let client = client();
    let res = reuse_stale_connection(&mock, &client, StaleMode::Html400)
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    assert_eq!(res.headers()["content-type"], "text/html");
    assert_eq!(res.headers()["connection"], "close");
    let body = within(res.into_body().collect()).await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&body).contains("<html>"));
    assert_stale_then_retry(&mock, &client).await;
}

#[tokio::test]
async fn faults_after_read_record_the_whole_body_first() {
    let mock = MockUpstream::start().await.unwrap();
    let client = client();
    let big = "x".repeat(200_000);

    mock.push(Reply::fault(Fault::CloseAfterRead));
    let err = within(client.request(post(&mock, "/v1/responses", None, stream_body(&big))))
        .await
        .unwrap_err();
    assert!(is_incomplete_message(&err), "{err:?}");

    mock.push(Reply::fault(Fault::ResetAfterRead));
    let err = within(client.request(post(&mock, "/v1/responses", None, stream_body(&big))))
        .await
        .unwrap_err();
    assert!(is_connection_reset(&err), "{err:?}");

    for r in mock.requests() {
        assert_eq!(
            r.json().unwrap()["input"][0]["content"][0]["text"],
            big.as_str()
        );
    }
    assert_eq!(mock.connections_accepted(), 2);
}

#[tokio::test]
async fn close_mid_stream_sends_the_first_events_then_drops() {
    let mock = MockUpstream::start().await.unwrap();
    let client = client();
    mock.push(Reply::fault(Fault::CloseMidStream { after_events: 3 }));
    mock.push(Reply::sse(events::text_answer("never finished")).close_mid_stream(0));

    let res = within(client.request(post(&mock, "/v1/responses", None, stream_body("x"))))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let mut body = res.into_body();
    let mut got = Vec::new();
    let err = loop {
        match within(body.frame()).await {
            Some(Ok(frame)) => got.extend_from_slice(&frame.into_data().unwrap_or_default()),
            Some(Err(err)) => break err,
            None => panic!("the body ended cleanly"),
        }
    };
    assert!(is_truncated_body(&err), "{err:?}");
    let got = String::from_utf8(got).unwrap();
    assert_eq!(types(&sse_data(&got)), ANSWER_ORDER[..3]);

    // Zero events: the status and headers arrive, then the body breaks.
    let res = within(client.request(post(&mock, "/v1/responses", None, stream_body("x"))))
        .await
        .unwrap();
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    assert!(within(res.into_body().collect()).await.is_err());
}

#[tokio::test]
async fn first_event_arrives_while_the_rest_waits() {
    let mock = MockUpstream::start().await.unwrap();
    let client = client();
    // The rest would come after an hour: the test passes only if the first event is flushed
    // on its own.
    mock.push(Reply::text("slow answer").first_event_then_wait(Duration::from_secs(3600)));

    let res = within(client.request(post(&mock, "/v1/responses", None, stream_body("x"))))
        .await
        .unwrap();
    let mut body = res.into_body();
    let mut got = Vec::new();
    read_until(&mut body, &mut got, |b| b.ends_with(b"\n\n"))
        .await
        .expect("body ended");
    let got = String::from_utf8(got).unwrap();
    assert_eq!(types(&sse_data(&got)), ["response.created"]);
    drop(body);
    within(mock.shutdown()).await;
}

#[tokio::test]
async fn paced_and_adjusted_replies_keep_their_content() {
    let mock = MockUpstream::start().await.unwrap();
    let client = client();
    mock.push(
        Reply::text("one two three")
            .paced(Duration::from_millis(1))
            .with_status(StatusCode::INTERNAL_SERVER_ERROR)
            .with_header("x-codex-primary-used-percent", "100"),
    );
    let res = send(
        &client,
        post(&mock, "/v1/responses", None, stream_body("x")),
    )
    .await;
    assert_eq!(res.status, 500);
    assert_eq!(res.headers["x-codex-primary-used-percent"], "100");
    let evs = sse_data(&res.body);
    assert_eq!(joined_deltas(&evs), "one two three");
    assert_eq!(types(&evs).len(), ANSWER_ORDER.len() + 1);

    // `auto()` keeps its adjustments too.
    mock.push(Reply::auto().with_header("retry-after", "7"));
    let res = send(
        &client,
        post(&mock, "/v1/responses", None, json!({"input": "hi"})),
    )
    .await;
    assert_eq!(res.headers["retry-after"], "7");
    assert_eq!(res.headers["content-type"], "application/json");
}

#[tokio::test]
async fn hold_open_keeps_the_body_open_after_the_last_event() {
    let mock = MockUpstream::start().await.unwrap();
    let client = client();
    mock.push(
        Reply::sse(vec![
            events::created("r1"),
            events::failed("r1", "server_error", "boom"),
        ])
        .hold_open(),
    );

    let res = within(client.request(post(&mock, "/v1/responses", None, stream_body("x"))))
        .await
        .unwrap();
    let mut body = res.into_body();
    let mut got = Vec::new();
    let has_failed =
        |b: &[u8]| String::from_utf8_lossy(b).contains("response.failed") && b.ends_with(b"\n\n");
    read_until(&mut body, &mut got, has_failed)
        .await
        .expect("body ended early");

    // Nothing more comes, not even the end of the body...
    let next = tokio::time::timeout(Duration::from_millis(300), body.frame()).await;
    assert!(next.is_err(), "the body went on: {next:?}");
    // ...until the server stops, which breaks it rather than ending it.
    within(mock.shutdown()).await;
    match within(body.frame()).await {
        Some(Err(err)) => assert!(is_truncated_body(&err), "{err:?}"),
        other => panic!("expected a broken body, got {other:?}"),
    }
}

#[tokio::test]
async fn garbage_bytes_do_not_break_the_server() {
    let mock = MockUpstream::start().await.unwrap();
    let mut raw = tokio::net::TcpStream::connect(mock.addr()).await.unwrap();
    raw.write_all(b"\x00\x01\xffGARBAGE / NOT-HTTP\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = within(raw.read_to_end(&mut answer)).await;
    assert!(answer.is_empty() || answer.starts_with(b"HTTP/1.1 400"));

    let res = send(
        &client(),
        post(&mock, "/v1/responses", None, stream_body("still alive")),
    )
    .await;
    assert!(joined_deltas(&sse_data(&res.body)).contains("still alive"));
    assert_eq!(mock.request_count(), 1);
}

#[tokio::test]
async fn shutdown_and_last_drop_stop_the_server() {
    let mock = MockUpstream::start().await.unwrap();
    let addr = mock.addr();
    mock.shutdown().await;
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());

    let mock = MockUpstream::start().await.unwrap();
    let addr = mock.addr();
    let other = mock.clone();
    drop(mock);
    let res = send(
        &client(),
        post(&other, "/v1/responses", None, stream_body("x")),
    )
    .await;
    assert_eq!(res.status, 200);
    drop(other);
    // The accept task notices the drop asynchronously.
    within(async {
        while tokio::net::TcpStream::connect(addr).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}
