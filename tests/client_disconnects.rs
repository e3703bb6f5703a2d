//! A client that goes away leaves nothing running upstream: while the proxy holds back
//! lifecycle events (the client has no head yet), while it folds a stream for a
//! `stream:false` client, and while it writes a local compaction summary. Each test drops a
//! raw TCP client at that point and waits (bounded) for the mock's streamed answer to be
//! abandoned: its open-stream count back to zero and its cancelled count up by one.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tower_responses::compact::{CompactConfig, RemotePolicy};
use tower_responses::profile::Profile;
use tower_responses::testing::{MockUpstream, Reply, events};

/// How long the upstream stream may outlive its client.
const CANCEL_WITHIN: Duration = Duration::from_secs(1);

async fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + limit;
    while !cond() {
        if Instant::now() >= until {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    true
}

/// Sends `body` to `path` on a raw connection and returns it, open, unread.
async fn raw_post(proxy: &RunningProxy, path: &str, body: &Value) -> TcpStream {
    let body = body.to_string();
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n",
        body.len()
    );
    let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
    tcp.write_all(head.as_bytes()).await.unwrap();
    tcp.write_all(body.as_bytes()).await.unwrap();
    tcp
}

/// Waits until the mock streams its answer (and hyper took `min_bytes` of it), drops the
/// client, and checks the upstream stream is gone within [`CANCEL_WITHIN`].
async fn leave_and_check(mock: &MockUpstream, client: TcpStream, min_bytes: u64) {
    let streaming = wait_until(Duration::from_secs(10), || {
        mock.open_streams()
            .iter()
            .any(|s| s.bytes_sent >= min_bytes)
    })
    .await;
    assert!(
        streaming,
        "the upstream never streamed: {:?}",
        mock.stream_stats()
    );
    let before = mock.stream_stats();
    assert_eq!(before.open, 1, "{before:?}");
    drop(client);
    let left = Instant::now();
    let gone = wait_until(CANCEL_WITHIN, || mock.stream_stats().open == 0).await;
    let after = mock.stream_stats();
    assert!(
        gone,
        "the upstream stream was still open {:?} after the client left: {after:?}",
        left.elapsed()
    );
    assert_eq!(after.cancelled, before.cancelled + 1, "{after:?}");
}

/// A stream whose lifecycle events come at once and whose content comes much later: the
/// proxy holds the events back, so the client has nothing, not even a head.
fn lifecycle_then_silence() -> Reply {
    let (resp, msg) = events::next_ids();
    Reply::sse(events::answer(&resp, &msg, "late", events::usage(5, 1)))
        .first_event_then_wait(Duration::from_secs(60))
}

#[tokio::test]
async fn a_client_leaving_during_the_hold_back_cancels_the_upstream() {
    let mock = MockUpstream::start().await.unwrap();
    mock.set_default(lifecycle_then_silence());
    let mut cfg = config_for(mock.base_url());
    cfg.credentials = vec!["sk-a".parse().unwrap()];
    let proxy = start_proxy(cfg).await;

    let mut client = raw_post(
        &proxy,
        "/v1/responses",
        &json!({"model": "gpt-5", "stream": true, "input": "hi"}),
    )
    .await;
    // The first event (response.created) left the mock; the client has nothing yet.
    leave_and_check_after_nothing(&mock, &mut client).await;
    leave_and_check(&mock, client, 1).await;
    assert_eq!(
        mock.request_count(),
        1,
        "nothing was retried for a gone client"
    );
}

/// Asserts the client has received no byte (the hold-back holds even the head).
async fn leave_and_check_after_nothing(mock: &MockUpstream, client: &mut TcpStream) {
    assert!(
        wait_until(Duration::from_secs(10), || mock
            .open_streams()
            .iter()
            .any(|s| s.bytes_sent > 0))
        .await
    );
    let mut buf = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_millis(200), client.read(&mut buf)).await;
    assert!(
        read.is_err(),
        "the client got bytes during the hold-back: {read:?}"
    );
}

#[tokio::test]
async fn a_client_leaving_during_a_stream_false_fold_cancels_the_upstream() {
    let mock = MockUpstream::start().await.unwrap();
    // A slow stream: the fold has part of it when the client goes.
    mock.set_default(
        Reply::text("one two three four five six seven eight").paced(Duration::from_millis(300)),
    );
    let mut cfg = config_for(mock.base_url());
    cfg.profile_override = Some(Profile::ChatgptCodex);
    cfg.credentials = vec!["sk-a".parse().unwrap()];
    let proxy = start_proxy(cfg).await;

    let client = raw_post(
        &proxy,
        "/v1/responses",
        &json!({"model": "gpt-5", "stream": false, "input": "hi"}),
    )
    .await;
    // Content has reached the fold (more than the lifecycle events).
    leave_and_check(&mock, client, 600).await;
    let sent = mock.requests();
    assert_eq!(sent.len(), 1);
    assert_eq!(
        sent[0].json().unwrap()["stream"],
        true,
        "the upstream was asked to stream"
    );
}

#[tokio::test]
async fn a_client_leaving_during_a_local_compaction_cancels_the_summary() {
    let mock = MockUpstream::start().await.unwrap();
    mock.set_default(
        Reply::text("summary of the work so far, in many words").paced(Duration::from_millis(300)),
    );
    let mut cfg = config_for(mock.base_url());
    cfg.credentials = vec!["sk-a".parse().unwrap()];
    cfg.compact = CompactConfig {
        remote: RemotePolicy::Never,
        ..CompactConfig::default()
    };
    let proxy = start_proxy(cfg).await;

    let client = raw_post(
        &proxy,
        "/v1/responses/compact",
        &json!({"model": "gpt-5", "input": [
            {"type": "message", "role": "user", "content": "fix the test"},
            {"type": "message", "role": "assistant", "content": "done"},
        ]}),
    )
    .await;
    leave_and_check(&mock, client, 600).await;
    let sent = mock.requests();
    assert_eq!(sent.len(), 1, "one summary request, no remote compaction");
    assert!(sent[0].path.ends_with("/responses"), "{}", sent[0].path);
}
