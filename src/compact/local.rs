//! Local compaction: a summary asked of the upstream's normal `/responses` route, answered in
//! the shape the client asked for.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use serde::Deserialize;
use serde_json::{Value, json};
use tower::ServiceExt;
use tower_service::Service;

use super::CompactForm;
use super::marker::encode_summary;
use crate::body::{IdleTimeout, IdleTimeoutBody, ReplayBody, ResponseBody, full_body, read_prefix};
use crate::classify::Failure;
use crate::error::{ApiError, BoxError};
use crate::normalize::events::response_usage;
use crate::soft_failure::SoftFailure;
use crate::sse::{SseDecoder, is_event_stream};

/// Largest JSON answer read when the upstream answers the summary request without streaming.
const MAX_JSON_ANSWER: usize = 16 * 1024 * 1024;

/// The upstream's summary and what it cost.
#[derive(Debug, Default)]
pub(crate) struct Summary {
    pub(crate) text: String,
    pub(crate) usage: Option<Value>,
    /// Rate-limit and request-id headers of the upstream's answer, passed on to the client.
    pub(crate) headers: HeaderMap,
}

pub(crate) enum Summarised {
    Done(Summary),
    /// The summary request failed: the client sees this answer.
    Failed(Response<ResponseBody>),
}

#[derive(Deserialize, Default)]
struct EventData {
    #[serde(default)]
    delta: Option<String>,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    response: Option<ResponseObject>,
}

#[derive(Deserialize, Default)]
struct ResponseObject {
    #[serde(default)]
    usage: Option<Value>,
    #[serde(default)]
    output: Vec<Value>,
}

impl ResponseObject {
    fn output_text(&self) -> String {
        self.output
            .iter()
            .filter(|item| item["type"] == "message")
            .filter_map(|item| item["content"].as_array())
            .flatten()
            .filter_map(|part| part["text"].as_str())
            .collect()
    }
}

fn push_bounded(out: &mut String, piece: &str, max: usize) {
    let room = max.saturating_sub(out.len());
    if piece.len() <= room {
        out.push_str(piece);
    } else {
        let mut cut = room;
        while !piece.is_char_boundary(cut) {
            cut -= 1;
        }
        out.push_str(&piece[..cut]);
    }
}

fn passed_headers(from: &HeaderMap) -> HeaderMap {
    from.iter()
        .filter(|(name, _)| name.as_str().starts_with("x-"))
        .map(|(n, v)| (n.clone(), v.clone()))
        .collect()
}

fn failure_response(failure: &Failure) -> Response<ResponseBody> {
    let status = failure
        .status
        .filter(|s| s.is_client_error() || s.is_server_error())
        .unwrap_or(StatusCode::BAD_GATEWAY);
    let mut err = ApiError::new(
        status,
        failure
            .kind
            .clone()
            .unwrap_or_else(|| "server_error".into()),
        format!(
            "local compaction failed: {}",
            failure.message.as_deref().unwrap_or(failure.class.as_str())
        ),
    )
    .with_code(
        failure
            .code
            .clone()
            .unwrap_or_else(|| "compaction_failed".into()),
    );
    if let Some(after) = failure.retry.after {
        err = err.with_retry_after(after);
    }
    err.into_stack_response()
}

/// Sends the summary request and reads the summary out of the answer; the upstream may take
/// as long as it keeps sending, but never stay silent longer than `idle`.
pub(crate) async fn summarise<S>(
    inner: S,
    req: Request<ReplayBody>,
    max_bytes: usize,
    idle: Duration,
) -> Result<Summarised, BoxError>
where
    S: Service<Request<ReplayBody>, Response = Response<ResponseBody>, Error = BoxError>,
{
    let res = inner.oneshot(req).await?;
    let marked = res
        .extensions()
        .get::<SoftFailure>()
        .is_some_and(|s| s.before_content);
    if marked || !res.status().is_success() {
        return Ok(Summarised::Failed(res));
    }
    let mut summary = Summary {
        headers: passed_headers(res.headers()),
        ..Summary::default()
    };
    let streamed = is_event_stream(res.headers());
    let mut body = IdleTimeoutBody::new(res.into_body(), idle).boxed_unsync();
    if !streamed {
        let (bytes, rest) = read_prefix(body, MAX_JSON_ANSWER).await;
        let object = match (rest, serde_json::from_slice::<ResponseObject>(&bytes)) {
            (None, Ok(object)) => object,
            (Some(Err(e)), _) if is_idle(&*e) => return Ok(Summarised::Failed(silent(idle))),
            _ => return Ok(Summarised::Failed(empty_summary())),
        };
        push_bounded(&mut summary.text, &object.output_text(), max_bytes);
        summary.usage = object.usage;
        return Ok(finish(summary));
    }
    let mut decoder = SseDecoder::new();
    let mut done_text: Option<String> = None;
    'read: while let Some(frame) = body.frame().await {
        let frame = match frame {
            Ok(frame) => frame,
            Err(e) if is_idle(&*e) => return Ok(Summarised::Failed(silent(idle))),
            Err(e) => return Err(e),
        };
        let Ok(chunk) = frame.into_data() else {
            continue;
        };
        decoder.push(chunk);
        loop {
            let event = match decoder.next_event() {
                Ok(Some(event)) => event,
                Ok(None) => break,
                Err(e) => return Err(e.into()),
            };
            if let Some(failure) = Failure::from_sse_data(&event.data) {
                return Ok(Summarised::Failed(failure_response(&failure)));
            }
            let ty = event.event_type().unwrap_or_default().to_owned();
            let data: EventData = match ty.as_str() {
                "response.output_text.delta"
                | "response.output_text.done"
                | "response.completed"
                | "response.incomplete" => serde_json::from_slice(&event.data).unwrap_or_default(),
                _ => continue,
            };
            match ty.as_str() {
                "response.output_text.delta" => push_bounded(
                    &mut summary.text,
                    data.delta.as_deref().unwrap_or(""),
                    max_bytes,
                ),
                "response.output_text.done" => {
                    let text = done_text.get_or_insert_with(String::new);
                    push_bounded(text, data.text.as_deref().unwrap_or(""), max_bytes);
                }
                _ => {
                    let object = data.response.unwrap_or_default();
                    if summary.text.is_empty() {
                        summary.text = done_text.take().unwrap_or_else(|| {
                            let mut s = String::new();
                            push_bounded(&mut s, &object.output_text(), max_bytes);
                            s
                        });
                    }
                    summary.usage = object.usage;
                    break 'read;
                }
            }
        }
    }
    if summary.text.is_empty() {
        summary.text = done_text.unwrap_or_default();
    }
    Ok(finish(summary))
}

fn is_idle(e: &(dyn std::error::Error + 'static)) -> bool {
    e.downcast_ref::<IdleTimeout>().is_some()
}

/// The answer when the upstream went silent in the middle of the summary.
fn silent(idle: Duration) -> Response<ResponseBody> {
    ApiError::new(
        StatusCode::GATEWAY_TIMEOUT,
        "server_error",
        format!(
            "local compaction failed: the upstream sent nothing for {}s",
            idle.as_secs()
        ),
    )
    .with_code("upstream_timeout")
    .into_stack_response()
}

fn empty_summary() -> Response<ResponseBody> {
    ApiError::upstream_unavailable("local compaction failed: the upstream returned no summary")
        .with_code("compaction_failed")
        .into_stack_response()
}

fn finish(summary: Summary) -> Summarised {
    if summary.text.trim().is_empty() {
        Summarised::Failed(empty_summary())
    } else {
        Summarised::Done(summary)
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The client's answer: v1 JSON (kept user messages, then the compaction item) or a v2
/// stream with exactly one compaction item. What the proxy writes here is a whole Responses
/// object as the SDKs' types define it: items carry an `id`, response objects every field
/// a Response has, `usage` every count (zero where the upstream gave none).
pub(crate) fn answer(
    form: CompactForm,
    summary: Summary,
    kept_user_messages: &[String],
    model: &str,
) -> Response<ResponseBody> {
    let n = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let now = unix_now();
    let id = format!("resp_trsum_{now:x}_{n}");
    let item = json!({
        "id": format!("cmp_trsum_{now:x}_{n}"),
        "type": "compaction",
        "encrypted_content": encode_summary(&summary.text),
    });
    let usage = response_usage(summary.usage.as_ref(), 0, 0);
    let (content_type, body) = match form {
        CompactForm::V1 => {
            let mut output: Vec<&str> = kept_user_messages.iter().map(String::as_str).collect();
            let item = item.to_string();
            output.push(&item);
            let body = format!(
                r#"{{"id":{},"object":"response.compaction","created_at":{},"output":{},"usage":{}}}"#,
                Value::from(id),
                now,
                crate::json::join_array(output),
                usage
            );
            ("application/json", Bytes::from(body))
        }
        CompactForm::V2 => ("text/event-stream", v2_stream(&id, model, now, item, usage)),
    };
    let mut res = Response::new(full_body(body));
    *res.headers_mut() = summary.headers;
    res.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    res
}

/// A Response object with every field the API's own has; the request's sampling and tool
/// settings are not known here, so they take the API's defaults.
fn response_object(
    id: &str,
    model: &str,
    created_at: u64,
    status: &str,
    output: Vec<Value>,
    usage: Value,
) -> Value {
    let completed_at = (status == "completed").then(unix_now);
    json!({
        "id": id,
        "object": "response",
        "created_at": created_at,
        "status": status,
        "background": false,
        "completed_at": completed_at,
        "error": null,
        "incomplete_details": null,
        "instructions": null,
        "max_output_tokens": null,
        "max_tool_calls": null,
        "metadata": {},
        "model": model,
        "output": output,
        "parallel_tool_calls": true,
        "previous_response_id": null,
        "prompt_cache_key": null,
        "reasoning": {"effort": null, "summary": null},
        "safety_identifier": null,
        "service_tier": "default",
        "store": false,
        "temperature": 1.0,
        "text": {"format": {"type": "text"}, "verbosity": "medium"},
        "tool_choice": "auto",
        "tools": [],
        "top_logprobs": 0,
        "top_p": 1.0,
        "truncation": "disabled",
        "usage": usage,
        "user": null,
    })
}

fn v2_stream(id: &str, model: &str, created_at: u64, item: Value, usage: Value) -> Bytes {
    let open = |status| response_object(id, model, created_at, status, vec![], Value::Null);
    let events = [
        json!({"type": "response.created", "response": open("in_progress")}),
        json!({"type": "response.in_progress", "response": open("in_progress")}),
        json!({"type": "response.output_item.added", "output_index": 0, "item": item}),
        json!({"type": "response.output_item.done", "output_index": 0, "item": item}),
        json!({"type": "response.completed", "response": response_object(id, model, created_at, "completed", vec![item.clone()], usage)}),
    ];
    let mut out = BytesMut::new();
    for (n, mut event) in events.into_iter().enumerate() {
        event["sequence_number"] = json!(n);
        let ty = event["type"].as_str().unwrap_or_default().to_owned();
        out.extend_from_slice(format!("event: {ty}\ndata: {event}\n\n").as_bytes());
    }
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v2_stream_has_one_compaction_item_and_usage() {
        let res = answer(
            CompactForm::V2,
            Summary {
                text: "sum".into(),
                usage: Some(json!({"input_tokens": 5, "output_tokens": 1, "total_tokens": 6})),
                headers: HeaderMap::new(),
            },
            &[],
            "gpt-5.5",
        );
        assert_eq!(res.headers()[header::CONTENT_TYPE], "text/event-stream");
        let body = futures_lite_collect(res.into_body());
        let mut decoder = SseDecoder::new();
        decoder.push(body);
        let mut done = 0;
        let mut completed = None;
        while let Some(ev) = decoder.next_event().unwrap() {
            let v: Value = serde_json::from_slice(&ev.data).unwrap();
            if v["type"] == "response.output_item.done" {
                assert_eq!(v["item"]["type"], "compaction");
                done += 1;
            }
            if v["type"] == "response.completed" {
                completed = Some(v);
            }
        }
        assert_eq!(done, 1);
        assert_eq!(completed.unwrap()["response"]["usage"]["total_tokens"], 6);
    }

    fn futures_lite_collect(body: ResponseBody) -> Bytes {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(body.collect())
            .unwrap()
            .to_bytes()
    }

    #[test]
    fn cut_on_char_boundary() {
        let mut s = String::new();
        push_bounded(&mut s, "héllo", 2);
        assert_eq!(s, "h");
        push_bounded(&mut s, "x", 2);
        assert_eq!(s, "hx");
    }
}
