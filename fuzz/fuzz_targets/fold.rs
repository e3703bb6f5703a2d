//! The `stream:false` fold: SSE bytes in, one JSON object or a clean error out, never a panic.
//!
//! Input: a byte for the byte limit, a byte for how the body ends (cleanly or broken off), a
//! byte of chunk-size count and the sizes, then the stream. Checked: the answer is either a
//! 200 JSON object, given only when the stream held a `response.completed` or
//! `response.incomplete`, or an HTTP error in the OpenAI envelope.
#![no_main]

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::BodyExt;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use tower_responses::__fuzz::fold;
use tower_responses::sse::sniff_type;
use tower_responses_fuzz::{Cursor, chunks, reference_decode};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The upstream's body: the chunks, then a clean end or a broken connection.
struct Chunks {
    chunks: VecDeque<Bytes>,
    broken: bool,
}

impl http_body::Body for Chunks {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        Poll::Ready(match self.chunks.pop_front() {
            Some(c) => Some(Ok(http_body::Frame::data(c))),
            None if self.broken => {
                self.broken = false;
                Some(Err("connection reset".into()))
            }
            None => None,
        })
    }
}

thread_local! {
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a runtime");
}

fuzz_target!(|data: &[u8]| {
    let mut input = Cursor::new(data);
    let limit = match input.byte() {
        0 => usize::MAX,
        n => usize::from(n) * 64,
    };
    let broken = input.byte() & 1 == 1;
    let n = usize::from(input.byte() % 16);
    let sizes = input.take(n).to_vec();
    let stream = input.rest();

    let body = Chunks {
        chunks: chunks(stream, &sizes)
            .into_iter()
            .map(Bytes::copy_from_slice)
            .collect(),
        broken,
    };
    let res = Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "text/event-stream")
        .body(body.boxed_unsync())
        .expect("a response");
    let (status, content_type, bytes) = RUNTIME.with(|rt| {
        rt.block_on(async {
            let out = fold(res, limit, Duration::from_secs(60)).await;
            let status = out.status();
            let ct = out.headers().get("content-type").cloned();
            let bytes = out
                .into_body()
                .collect()
                .await
                .expect("a full body")
                .to_bytes();
            (status, ct, bytes)
        })
    });
    assert_eq!(
        content_type.as_ref().map(|v| v.as_bytes()),
        Some(&b"application/json"[..])
    );
    let v: Value = serde_json::from_slice(&bytes).expect("the fold's answer is not JSON");
    if status == StatusCode::OK {
        assert!(v.is_object(), "a 200 answer that is not an object");
        // An event's type is its data's `"type"`, else its `event:` line (`Event::event_type`).
        let terminal = reference_decode(stream).events.iter().any(|e| {
            let named = e.event.as_deref().filter(|n| !n.is_empty());
            let ty = sniff_type(&e.data).map(str::as_bytes).or(named);
            matches!(ty, Some(b"response.completed" | b"response.incomplete"))
        });
        assert!(
            terminal,
            "a 200 answer from a stream without a terminal event"
        );
    } else {
        assert!(status.as_u16() >= 400, "status {status}");
        let error = v
            .get("error")
            .expect("an error without the OpenAI envelope");
        assert!(
            error.get("message").is_some_and(Value::is_string),
            "no error.message"
        );
        assert!(
            error.get("type").is_some_and(Value::is_string),
            "no error.type"
        );
    }
});
