//! A streamed answer folded into the one JSON response object a `stream:false` client expects.

use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::BodyExt;

use super::answer::answer;
use super::events::Fields;
use super::fold_reader::{EventReader, Seen};
use crate::body::{IdleTimeout, IdleTimeoutBody, ResponseBody, full_body};
use crate::classify::{Failure, FailureClass, Origin};
use crate::error::ApiError;
use crate::soft_failure::SoftFailure;
use crate::sse::{EventKind, event_kind};

enum Outcome {
    /// The answer's JSON bytes.
    Answer(Bytes),
    /// What the client gets, and the classified failure behind it (boxed: the answer
    /// variant is the common one).
    Error(Box<(ApiError, Failure)>),
}

fn failed(err: ApiError, failure: Failure) -> Outcome {
    Outcome::Error(Box::new((err, failure)))
}

/// What the fold has seen so far.
struct Folding {
    /// The data of each `response.output_item.done`, kept as it came (slices of the upstream's
    /// chunks, no copy): read only when the terminal event's `output` is empty, which the
    /// OpenAI platform's is not. Bounded with the stream, by the fold's byte limit.
    done_items: Vec<Bytes>,
    /// The fold's byte limit, which also bounds what the items' rebuilt output may hold.
    limit: usize,
    /// A content event went by: the upstream generated (and billed) output, so a failure
    /// from here on is after content and must not be retried.
    content: bool,
}

/// Reads the whole stream (at most `limit` bytes, silent at most `idle` at a time) and
/// answers as the platform would to a non-streaming request.
///
/// A failure becomes the HTTP error the platform would have sent, marked with a
/// [`SoftFailure`] that carries the real classified failure, so rotation decides from it
/// and not from a bare status: before content it may retry; after content
/// (`before_content: false`) it must not, the output was already generated. The fold's own
/// `response_too_large` is never retried.
pub(crate) async fn fold(
    res: Response<ResponseBody>,
    limit: usize,
    idle: Duration,
) -> Response<ResponseBody> {
    let (mut parts, body) = res.into_parts();
    // A long answer is fine as long as it keeps coming; an upstream that goes silent is not.
    let mut body = std::pin::pin!(IdleTimeoutBody::new(body, idle));
    let mut reader = EventReader::default();
    let mut folding = Folding {
        done_items: Vec::new(),
        limit,
        content: false,
    };
    let mut total = 0usize;
    let outcome = loop {
        let frame = match body.frame().await {
            None => break finish(&mut reader, &mut folding),
            Some(Err(e)) => {
                tracing::debug!(error = %e, "upstream stream broke while folding");
                break Some(broken(&*e));
            }
            Some(Ok(frame)) => frame,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        total = total.saturating_add(data.len());
        if total > limit {
            break Some(too_large(limit));
        }
        match reader.push(data, &mut |seen| on_event(&seen, &mut folding)) {
            Ok(None) => {}
            Ok(Some(outcome)) => break Some(outcome),
            Err(_) => break Some(unparseable()),
        }
    };
    let outcome = outcome.unwrap_or_else(|| {
        let message = "the upstream stream ended before the response completed";
        failed(
            ApiError::upstream_unavailable(message),
            Failure::transport(false, message),
        )
    });
    match outcome {
        Outcome::Answer(bytes) => {
            parts.status = StatusCode::OK;
            parts.headers.remove(header::TRANSFER_ENCODING);
            parts.headers.remove(header::CACHE_CONTROL);
            parts.headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            parts
                .headers
                .insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
            Response::from_parts(parts, full_body(bytes))
        }
        Outcome::Error(boxed) => {
            let (err, failure) = *boxed;
            let mut out = err.into_stack_response();
            // Keep what outer layers read from the upstream's answer (connection tags,
            // classified failures).
            *out.extensions_mut() = parts.extensions;
            let too_large = failure.code.as_deref() == Some(RESPONSE_TOO_LARGE);
            let before_content = !folding.content && !too_large;
            let inner_mark = out
                .extensions()
                .get::<SoftFailure>()
                .is_some_and(|s| s.before_content);
            // Before content an inner soft-failure layer may have classified the answer from
            // the upstream's own words already; that mark is the better one.
            if !(before_content && inner_mark) {
                out.extensions_mut().insert(SoftFailure {
                    failure,
                    before_content,
                });
            }
            out
        }
    }
}

/// The `error.code` of the fold's own answer to a stream past its byte bound.
const RESPONSE_TOO_LARGE: &str = "response_too_large";

fn too_large(limit: usize) -> Outcome {
    let message =
        format!("the upstream answer is larger than {limit} bytes; request it with stream:true");
    // Any credential would generate the same answer again: never worth a retry, and no
    // credential's fault.
    let mut failure = Failure::new(FailureClass::InvalidRequest);
    failure.status = Some(StatusCode::BAD_GATEWAY);
    failure.code = Some(RESPONSE_TOO_LARGE.into());
    failure.message = Some(message.clone());
    failed(
        ApiError::upstream_unavailable(message).with_code(RESPONSE_TOO_LARGE),
        failure,
    )
}

fn broken(e: &(dyn std::error::Error + 'static)) -> Outcome {
    if let Some(idle) = e.downcast_ref::<IdleTimeout>() {
        let message = format!(
            "the upstream sent nothing for {}s before the response completed",
            idle.0.as_secs()
        );
        return failed(
            ApiError::new(StatusCode::GATEWAY_TIMEOUT, "server_error", message.clone())
                .with_code("upstream_timeout"),
            Failure::transport(false, message),
        );
    }
    let message = "the upstream stream broke off before the response completed";
    failed(
        ApiError::upstream_unavailable(message),
        Failure::transport(false, format!("{message}: {e}")),
    )
}

fn unparseable() -> Outcome {
    let message = "the upstream sent an event stream that could not be parsed";
    let mut failure = Failure::new(FailureClass::Transient);
    failure.status = Some(StatusCode::BAD_GATEWAY);
    failure.message = Some(message.into());
    failure.origin = Origin::Stream;
    failed(ApiError::upstream_unavailable(message), failure)
}

fn finish(reader: &mut EventReader, folding: &mut Folding) -> Option<Outcome> {
    reader
        .finish(&mut |seen| on_event(&seen, folding))
        .unwrap_or_else(|_| Some(unparseable()))
}

fn on_event(event: &Seen<'_>, folding: &mut Folding) -> Option<Outcome> {
    let kind = event.kind?;
    if !folding.content && event_kind(kind) == EventKind::Content {
        folding.content = true;
    }
    match kind {
        "response.output_item.done" => {
            folding.done_items.push(event.data());
            None
        }
        "response.completed" | "response.incomplete" => {
            let data = event.data();
            let f = Fields::parse(&data)?;
            let raw = f.response?;
            answer(&data, raw.get(), &folding.done_items, folding.limit).map(Outcome::Answer)
        }
        "response.failed" | "error" => Some(match Failure::from_sse_data(event.bytes()) {
            Some(failure) => failed(failure_error(&failure), failure),
            None => {
                let message = "the upstream response failed";
                let mut failure = Failure::new(FailureClass::Transient);
                failure.status = Some(StatusCode::BAD_GATEWAY);
                failure.message = Some(message.into());
                failure.origin = Origin::Stream;
                failed(
                    ApiError::new(StatusCode::BAD_GATEWAY, "server_error", message),
                    failure,
                )
            }
        }),
        _ => None,
    }
}

/// The HTTP error the platform would have answered for a failure.
pub(crate) fn failure_error(f: &Failure) -> ApiError {
    let (status, kind) = match f.class {
        FailureClass::QuotaExhausted => (StatusCode::TOO_MANY_REQUESTS, "insufficient_quota"),
        FailureClass::RateLimited => (StatusCode::TOO_MANY_REQUESTS, "rate_limit_error"),
        FailureClass::Overloaded => (StatusCode::SERVICE_UNAVAILABLE, "server_error"),
        FailureClass::Transient => (
            f.status
                .filter(|s| s.is_server_error())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            "server_error",
        ),
        FailureClass::Auth => (StatusCode::UNAUTHORIZED, "authentication_error"),
        FailureClass::RouteNotFound => (StatusCode::NOT_FOUND, "invalid_request_error"),
        FailureClass::InvalidRequest
        | FailureClass::ContextLength
        | FailureClass::ContentPolicy
        | FailureClass::ModelUnsupported
        | FailureClass::PreviousResponseNotFound
        | FailureClass::Cancelled => (StatusCode::BAD_REQUEST, "invalid_request_error"),
        _ => (StatusCode::BAD_GATEWAY, "server_error"),
    };
    let message = f
        .message
        .clone()
        .unwrap_or_else(|| "the upstream response failed".to_string());
    let mut err = ApiError::new(
        status,
        f.kind.clone().unwrap_or_else(|| kind.into()),
        message,
    );
    err.code = f.code.clone();
    if let Some(after) = f.retry.after {
        err = err.with_retry_after(after);
    }
    err.resets_at = f
        .retry
        .reset_at
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_secs());
    err
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    const IDLE: Duration = Duration::from_secs(300);

    fn sse(events: &[Value]) -> Response<ResponseBody> {
        let mut s = String::new();
        for e in events {
            s.push_str(&format!(
                "event: {}\ndata: {e}\n\n",
                e["type"].as_str().unwrap()
            ));
        }
        Response::builder()
            .header("content-type", "text/event-stream")
            .body(full_body(s))
            .unwrap()
    }

    async fn json_of(res: Response<ResponseBody>) -> (StatusCode, Value) {
        let status = res.status();
        let b = res.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&b).unwrap())
    }

    #[tokio::test]
    async fn rebuilds_output_from_done_items() {
        let item = json!({"id":"m1","type":"message","role":"assistant","content":[{"type":"output_text","text":"hi"}]});
        let res = sse(&[
            json!({"type":"response.created","response":{"id":"r1","status":"in_progress"}}),
            json!({"type":"response.output_item.done","output_index":0,"item":item}),
            json!({"type":"response.completed","response":{"id":"r1","status":"completed","output":[],"usage":{"output_tokens":1}}}),
        ]);
        let res = fold(res, 1 << 20, IDLE).await;
        assert_eq!(res.headers()["content-type"], "application/json");
        let (status, v) = json_of(res).await;
        assert_eq!(status, 200);
        assert_eq!(v["output"][0], item);
        assert_eq!(v["usage"]["output_tokens"], 1);
    }

    #[tokio::test]
    async fn failures_become_http_errors() {
        for (code, status) in [
            ("insufficient_quota", 429),
            ("rate_limit_exceeded", 429),
            ("server_is_overloaded", 503),
            ("server_error", 500),
            ("invalid_prompt", 400),
        ] {
            let res = sse(&[
                json!({"type":"response.failed","response":{"id":"r","status":"failed","error":{"code":code,"message":"m"}}}),
            ]);
            let (s, v) = json_of(fold(res, 1 << 20, IDLE).await).await;
            assert_eq!(s.as_u16(), status, "{code}");
            assert_eq!(v["error"]["code"], code);
            assert_eq!(v["error"]["message"], "m");
        }
    }

    #[tokio::test]
    async fn truncated_or_oversized_streams_are_502() {
        let res = sse(&[json!({"type":"response.created","response":{"id":"r"}})]);
        assert_eq!(fold(res, 1 << 20, IDLE).await.status(), 502);
        let res = sse(&[json!({"type":"response.created","response":{"id":"r"}})]);
        let (s, v) = json_of(fold(res, 10, IDLE).await).await;
        assert_eq!(s, 502);
        assert_eq!(v["error"]["code"], "response_too_large");
    }
}
