//! One attempt at the upstream's own compaction, and what its answer means.

use bytes::BytesMut;
use http::{Request, Response};
use http_body_util::BodyExt;
use serde::Deserialize;
use tower::ServiceExt;
use tower_service::Service;

use super::CompactForm;
use crate::body::{DEFAULT_PEEK_TIMEOUT, IdleTimeoutBody, Rest, prefixed, read_prefix_within};
use crate::body::{ReplayBody, ResponseBody};
use crate::classify::{Failure, FailureClass};
use crate::error::BoxError;
use crate::soft_failure::SoftFailure;
use crate::sse::{EventKind, SseDecoder, is_event_stream};

/// Bytes of an error body read to classify it.
const ERROR_PEEK: usize = 64 * 1024;

/// Most bytes of a v2 stream held while waiting for its compaction item. A compaction
/// answer is a handful of events; an answer this long without one is not compacting.
const MAX_V2_HOLD: usize = 8 * 1024 * 1024;

/// Longest silence of a v2 answer held while waiting for its compaction item (what Codex
/// itself waits on a silent stream).
const V2_IDLE: std::time::Duration = std::time::Duration::from_secs(300);

/// What a remote attempt came to.
pub(crate) enum Outcome {
    /// The upstream compacted: forward this.
    Compacted(Response<ResponseBody>),
    /// The upstream cannot compact this model (or on this route); the answer was consumed.
    Refused(String),
    /// Another failure (quota, rate limit, a bad request): the client sees it as it came.
    Failed(Response<ResponseBody>),
}

/// Whether a failure says "this model (or route) does not compact", rather than something
/// about the credential or the request.
pub(crate) fn refuses_compaction(failure: &Failure, form: CompactForm) -> bool {
    let mentions_compaction = || {
        [&failure.message, &failure.code]
            .into_iter()
            .flatten()
            .any(|s| s.to_ascii_lowercase().contains("compact"))
    };
    match failure.class {
        FailureClass::ModelUnsupported | FailureClass::RouteNotFound => true,
        FailureClass::InvalidRequest => mentions_compaction(),
        _ => {
            let status = failure.status.map(|s| s.as_u16());
            // The compact route answers a bare `error code: 502` (or a 404) for models it
            // does not serve; our own `upstream_unavailable` is a transport loss instead.
            form == CompactForm::V1
                && matches!(status, Some(404 | 405 | 502))
                && failure.code.as_deref() != Some("upstream_unavailable")
        }
    }
}

pub(crate) async fn attempt<S>(
    inner: S,
    req: Request<ReplayBody>,
    form: CompactForm,
) -> Result<Outcome, BoxError>
where
    S: Service<Request<ReplayBody>, Response = Response<ResponseBody>, Error = BoxError>,
{
    let res = inner.oneshot(req).await?;
    let marked = res
        .extensions()
        .get::<SoftFailure>()
        .filter(|s| s.before_content)
        .map(|s| s.failure.clone());
    let status = res.status();
    if marked.is_none() && status.is_success() {
        return Ok(match form {
            CompactForm::V2 if is_event_stream(res.headers()) => inspect_v2(res).await?,
            _ => Outcome::Compacted(res),
        });
    }
    let (parts, body) = res.into_parts();
    // Bounded in time too: an error body that stalls is answered with what came.
    let peek = read_prefix_within(body, ERROR_PEEK, DEFAULT_PEEK_TIMEOUT).await;
    let failure = marked.or_else(|| Failure::from_http(status, &parts.headers, &peek.prefix));
    match failure {
        Some(f) if refuses_compaction(&f, form) => Ok(Outcome::Refused(f.to_string())),
        _ => Ok(Outcome::Failed(peek.into_error_response(parts))),
    }
}

#[derive(Deserialize)]
struct ItemEvent<'a> {
    #[serde(borrow)]
    item: Option<ItemType<'a>>,
}

#[derive(Deserialize)]
struct ItemType<'a> {
    #[serde(rename = "type")]
    kind: Option<&'a str>,
}

fn is_compaction_done(data: &[u8]) -> bool {
    serde_json::from_slice::<ItemEvent<'_>>(data)
        .ok()
        .and_then(|e| e.item)
        .and_then(|i| i.kind)
        == Some("compaction")
}

/// Holds a v2 answer back until its compaction item is done: then it goes out as it came.
/// An answer that completes without one is a refusal.
async fn inspect_v2(res: Response<ResponseBody>) -> Result<Outcome, BoxError> {
    let (parts, body) = res.into_parts();
    // The hold ends at the compaction item, however long the upstream takes to write it, but
    // not on an upstream that goes silent.
    let mut body = IdleTimeoutBody::new(body, V2_IDLE).boxed_unsync();
    let mut decoder = SseDecoder::new();
    let mut held = BytesMut::new();
    let pass = |held: BytesMut, rest: Rest, parts| {
        Outcome::Failed(Response::from_parts(parts, prefixed(held.freeze(), rest)))
    };
    loop {
        let Some(frame) = body.frame().await else {
            // Cut before the end: a transport loss, not the model's answer.
            return Ok(pass(held, None, parts));
        };
        let Ok(chunk) = frame?.into_data() else {
            continue;
        };
        held.extend_from_slice(&chunk);
        decoder.push(chunk);
        loop {
            let event = match decoder.next_event() {
                Ok(Some(event)) => event,
                Ok(None) => break,
                Err(_) => return Ok(pass(held, Some(Ok(body)), parts)),
            };
            match event.event_type() {
                Some("response.output_item.done") if is_compaction_done(&event.data) => {
                    return Ok(Outcome::Compacted(Response::from_parts(
                        parts,
                        prefixed(held.freeze(), Some(Ok(body))),
                    )));
                }
                _ => {}
            }
            if let Some(f) = Failure::from_sse_data(&event.data) {
                if refuses_compaction(&f, CompactForm::V2) {
                    return Ok(Outcome::Refused(f.to_string()));
                }
                return Ok(pass(held, Some(Ok(body)), parts));
            }
            if event.kind() == EventKind::Terminal {
                return Ok(Outcome::Refused(
                    "the answer completed without a compaction output item".into(),
                ));
            }
        }
        if held.len() > MAX_V2_HOLD {
            return Ok(Outcome::Refused(format!(
                "more than {MAX_V2_HOLD} bytes of answer without a compaction output item"
            )));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderMap, StatusCode};

    #[test]
    fn which_failures_are_refusals() {
        let http = |status: u16, body: &[u8]| {
            Failure::from_http(
                StatusCode::from_u16(status).unwrap(),
                &HeaderMap::new(),
                body,
            )
            .unwrap()
        };
        let v1_502 = http(502, b"error code: 502");
        assert!(refuses_compaction(&v1_502, CompactForm::V1));
        assert!(!refuses_compaction(&v1_502, CompactForm::V2));
        let unsupported = http(
            400,
            br#"{"error":{"message":"The model gpt-5.5 is not supported for compaction","type":"invalid_request_error","code":"unsupported_model"}}"#,
        );
        assert!(refuses_compaction(&unsupported, CompactForm::V2));
        assert!(refuses_compaction(
            &http(404, br#"{"detail":"Not Found"}"#),
            CompactForm::V1
        ));
        let quota = http(429, br#"{"error":{"type":"usage_limit_reached","message":"The usage limit has been reached"}}"#);
        assert!(!refuses_compaction(&quota, CompactForm::V1));
        let ours = http(
            502,
            br#"{"error":{"message":"gone","type":"server_error","code":"upstream_unavailable"}}"#,
        );
        assert!(!refuses_compaction(&ours, CompactForm::V1));
        let bad_item = http(400, br#"{"error":{"message":"Invalid value: 'compaction_trigger'.","type":"invalid_request_error","code":"invalid_value"}}"#);
        assert!(refuses_compaction(&bad_item, CompactForm::V2));
        let bad = http(
            400,
            br#"{"error":{"message":"Missing input.","type":"invalid_request_error"}}"#,
        );
        assert!(!refuses_compaction(&bad, CompactForm::V2));
    }
}
