use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::{Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use tokio::time::Instant;
use tower_layer::Layer;
use tower_service::Service;

use super::gate::{Gating, StreamGate, StreamGated};
use super::watch::WatchBody;
use super::{EventsObserved, SoftFailure, SoftFailureConfig, StreamObservers};
use crate::body::{ReplayBody, ResponseBody, full_body as full, prefixed, read_prefix_within};
use crate::classify::{Failure, FailureClass, Origin};
use crate::credentials::CredentialLease;
use crate::error::ApiError;
use crate::error::BoxError;
use crate::metrics::{Metrics, RequestStarted};
use crate::sse::{EventKind, EventRef, SseDecoder, event_kind, is_event_stream};

/// Applies [`SoftFailureDetect`] to a service. See the [module docs](super).
#[derive(Debug, Clone, Default)]
pub struct SoftFailureDetectLayer {
    config: SoftFailureConfig,
    metrics: Option<Metrics>,
}

impl SoftFailureDetectLayer {
    /// The layer with default bounds.
    pub fn new() -> Self {
        Self::default()
    }

    /// The layer with these bounds.
    pub fn with_config(config: SoftFailureConfig) -> Self {
        SoftFailureDetectLayer {
            config,
            metrics: None,
        }
    }

    /// Reports findings into `metrics` (`tr_soft_failures_total`, `tr_streams_unterminated_total`) and times the first content event (`tr_first_content_seconds`).
    pub fn metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }
}

impl<S> Layer<S> for SoftFailureDetectLayer {
    type Service = SoftFailureDetect<S>;

    fn layer(&self, inner: S) -> Self::Service {
        SoftFailureDetect {
            inner,
            config: self.config.clone(),
            metrics: self.metrics.clone(),
        }
    }
}

/// Finds failures in answers, holding back stream lifecycle events. See the [module docs](super).
#[derive(Debug, Clone)]
pub struct SoftFailureDetect<S> {
    inner: S,
    config: SoftFailureConfig,
    metrics: Option<Metrics>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S> Service<Request<ReplayBody>> for SoftFailureDetect<S>
where
    S: Service<Request<ReplayBody>, Response = Response<ResponseBody>, Error = BoxError>,
    S::Future: Send + 'static,
{
    type Response = Response<ResponseBody>;
    type Error = BoxError;
    type Future = BoxFuture<Result<Response<ResponseBody>, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReplayBody>) -> Self::Future {
        let lease = req.extensions().get::<CredentialLease>().cloned();
        let observers = req.extensions().get::<StreamObservers>().cloned();
        let gate = req.extensions().get::<StreamGate>().cloned();
        let started = req
            .extensions()
            .get::<RequestStarted>()
            .map_or_else(std::time::Instant::now, |s| s.0);
        let fut = self.inner.call(req);
        let config = self.config.clone();
        let metrics = self.metrics.clone();
        Box::pin(async move {
            let res = fut.await?;
            let ctx = Ctx {
                config,
                metrics,
                lease,
                observers_read_content: observers
                    .as_ref()
                    .is_some_and(StreamObservers::read_content),
                observers,
                gate,
                started: Some(started),
            };
            Ok(inspect(res, ctx).await)
        })
    }
}

pub(super) struct Ctx {
    pub(super) config: SoftFailureConfig,
    pub(super) metrics: Option<Metrics>,
    pub(super) lease: Option<CredentialLease>,
    pub(super) observers: Option<StreamObservers>,
    /// The request's gate, started afresh for this attempt's stream.
    pub(super) gate: Option<StreamGate>,
    /// When the request arrived, until its first content event is timed.
    pub(super) started: Option<std::time::Instant>,
    /// Whether any observer reads content events (asked once per stream).
    pub(super) observers_read_content: bool,
}

impl Ctx {
    /// Shows one event to the stream's gate, if any, and to the request's observers.
    ///
    /// Returns the event's kind: its type is sniffed once here for every use.
    pub(super) fn observe(&self, ev: EventRef<'_>, gating: Option<&mut Gating>) -> EventKind {
        let ty = ev.event_type();
        let kind = ty.map_or(EventKind::Other, event_kind);
        if let Some(gating) = gating {
            gating.sniffed_event(ty, kind, ev);
        }
        let Some(ty) = ty else {
            return EventKind::Other;
        };
        if let Some(obs) = &self.observers {
            let credential = self.lease.as_ref().map(CredentialLease::credential);
            match kind {
                EventKind::Terminal => obs.notify_terminal(credential, ty, ev.data),
                EventKind::Content if !self.observers_read_content => {}
                _ => obs.notify(credential, ty, ev.data),
            }
        }
        kind
    }

    /// Times the stream's first content event (once per attempt; only one attempt of a
    /// request reaches the client with content).
    pub(super) fn first_content(&mut self) {
        if let (Some(started), Some(m)) = (self.started.take(), &self.metrics) {
            m.observe(
                "tr_first_content_seconds",
                "Time from a request's arrival to the first content event of its stream.",
                &[],
                started.elapsed().as_secs_f64(),
            );
        }
    }

    pub(super) fn count(&self, failure: &Failure, phase: &'static str) {
        if let Some(m) = &self.metrics {
            m.inc(
                "tr_soft_failures_total",
                "Failures found in upstream answers, by class and whether the client had seen content.",
                &[("class", failure.class.as_str()), ("phase", phase)],
            );
        }
    }
}

#[allow(
    clippy::manual_async_fn,
    reason = "an `async fn` stores its arguments twice in its future, which every request allocates"
)]
fn inspect(res: Response<ResponseBody>, ctx: Ctx) -> impl Future<Output = Response<ResponseBody>> {
    async move {
        let status = res.status();
        if status.is_success() && is_event_stream(res.headers()) {
            return hold_back(res, ctx).await;
        }
        let is_json = res
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.to_ascii_lowercase().contains("json"));
        if status.is_success() && !is_json {
            return res;
        }
        // An HTTP error, or a JSON answer: read a bounded prefix to classify it, bounded in time
        // too: an error body that stalls must not hold the client.
        let (mut parts, body) = res.into_parts();
        let peek =
            read_prefix_within(body, ctx.config.max_json_peek, ctx.config.peek_timeout).await;
        let complete = peek.rest.is_none();
        let failure = if status.is_success() && !complete {
            None // too big (or too slow) to be an error object; leave it alone
        } else {
            Failure::from_http(status, &parts.headers, &peek.prefix)
        };
        if peek.stalled {
            tracing::debug!(
                status = status.as_u16(),
                read = peek.prefix.len(),
                "upstream answer body stalled while peeking"
            );
        }
        if let Some(failure) = failure {
            ctx.count(&failure, "before_content");
            tracing::debug!(
                class = failure.class.as_str(),
                status = status.as_u16(),
                "upstream answer classified as a failure"
            );
            parts.extensions.insert(SoftFailure {
                failure,
                before_content: true,
            });
        }
        if status.is_success() {
            if let Some(Err(e)) = &peek.rest {
                // The answer broke off while it was read (the client has nothing yet): a loss,
                // like a stream that breaks while held.
                let failure = Failure::transport(
                    false,
                    format!("the upstream answer broke off before its end: {e}"),
                );
                return broke_before_content(parts, &ctx, failure);
            }
            // A slow success body is still the answer: hand all of it on.
            Response::from_parts(parts, prefixed(peek.prefix, peek.rest))
        } else {
            peek.into_error_response(parts)
        }
    }
}

/// The hold-back phase: read events until the first content event, a failure, a terminal
/// event, the end, or a bound.
#[allow(
    clippy::manual_async_fn,
    reason = "an `async fn` stores its arguments twice in its future, which every request allocates"
)]
fn hold_back(
    res: Response<ResponseBody>,
    mut ctx: Ctx,
) -> impl Future<Output = Response<ResponseBody>> {
    async move {
        let (mut parts, mut body) = res.into_parts();
        if ctx.observers.is_some() {
            parts.extensions.insert(EventsObserved);
        }
        // Whatever becomes of the stream, the gate decides its end: the layer that put it in
        // must not apply it again.
        let mut gating = ctx.gate.as_ref().map(|gate| Gating::new(gate.start()));
        if let Some(gating) = &gating {
            parts.extensions.insert(StreamGated);
            gating.mark(&mut parts.extensions);
        }
        let mut decoder = SseDecoder::new().with_max_line(ctx.config.max_line);
        let mut held: Vec<Bytes> = Vec::new();
        let mut held_bytes = 0usize;
        let mut events = 0usize;
        // Events that carry a Responses type: with none, the bytes are not a Responses stream.
        let mut typed = 0usize;
        // One timer for the whole hold: a timeout per frame would register and cancel a timer
        // for every held frame.
        let deadline = tokio::time::sleep_until(Instant::now() + ctx.config.max_hold);
        tokio::pin!(deadline);
        loop {
            let next = tokio::select! {
                biased;
                frame = body.frame() => Ok(frame),
                () = &mut deadline => Err(()),
            };
            let frame = match next {
                Err(()) => {
                    // Slow to start is not a failure: release what we hold and watch the rest.
                    return Response::from_parts(
                        parts,
                        WatchBody::after_hold(held, Ok(body), decoder, ctx, gating).boxed_unsync(),
                    );
                }
                Ok(frame) => frame,
            };
            let chunk = match frame {
                None => {
                    // Ended before content. A terminal event would have returned already.
                    let tail = decoder.finish();
                    if let Ok(Some(ev)) = tail {
                        typed += usize::from(ev.event_type().is_some());
                        let kind = ctx.observe(ev.borrowed(), gating.as_mut());
                        if let Some(f) = failure_of(kind, &ev.data) {
                            return mark(parts, held, f, ctx);
                        }
                    }
                    if typed == 0 {
                        return not_a_stream(parts, &ctx, "ended");
                    }
                    let failure = Failure::transport(
                        false,
                        "the upstream stream ended before any content or terminal event",
                    );
                    return broke_before_content(parts, &ctx, failure);
                }
                Some(Err(e)) => {
                    // A transport error while held: nothing reached the client, so it is a
                    // failure before content.
                    let failure = Failure::transport(
                        false,
                        format!("the upstream stream broke before content: {e}"),
                    );
                    return broke_before_content(parts, &ctx, failure);
                }
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(d) => d,
                    Err(_) => continue,
                },
            };
            held_bytes += chunk.len();
            if let Some(gating) = &mut gating {
                gating.push(&chunk);
            }
            held.push(chunk.clone());
            decoder.push(chunk);
            loop {
                let ev = match decoder.next_event() {
                    Ok(Some(ev)) => ev,
                    Ok(None) => break,
                    Err(_) if typed == 0 => return not_a_stream(parts, &ctx, "line_too_long"),
                    Err(e) => {
                        // A line past the bound: stop parsing, let the bytes flow as they are.
                        tracing::debug!(error = %e, "SSE line too long; passing the stream through unparsed");
                        return Response::from_parts(
                            parts,
                            WatchBody::unparsed(held, Ok(body)).boxed_unsync(),
                        );
                    }
                };
                events += 1;
                typed += usize::from(ev.event_type().is_some());
                let kind = ctx.observe(ev.borrowed(), gating.as_mut());
                match kind {
                    EventKind::Content => {
                        ctx.first_content();
                        return Response::from_parts(
                            parts,
                            WatchBody::after_hold(held, Ok(body), decoder, ctx, gating)
                                .boxed_unsync(),
                        );
                    }
                    // A gate that ends the stream before content: the watch sends what it
                    // admitted and the closing bytes.
                    _ if gating.as_ref().is_some_and(Gating::is_cut) => {
                        return Response::from_parts(
                            parts,
                            WatchBody::after_hold(held, Ok(body), decoder, ctx, gating)
                                .boxed_unsync(),
                        );
                    }
                    EventKind::Terminal | EventKind::Error => {
                        if let Some(f) = failure_of(kind, &ev.data) {
                            return mark(parts, held, f, ctx);
                        }
                        if kind == EventKind::Terminal {
                            // Completed (or benignly incomplete) without content: the answer is whole.
                            return Response::from_parts(parts, full(concat(&held)));
                        }
                    }
                    EventKind::Lifecycle | EventKind::Other => {}
                }
            }
            if events >= ctx.config.max_held_events || held_bytes >= ctx.config.max_held_bytes {
                if typed == 0 {
                    return not_a_stream(parts, &ctx, "bound");
                }
                return Response::from_parts(
                    parts,
                    WatchBody::after_hold(held, Ok(body), decoder, ctx, gating).boxed_unsync(),
                );
            }
        }
    }
}

/// A `200 text/event-stream` with no Responses event in it (an HTML page, a proxy's banner,
/// bytes from a broken middlebox): the client gets a 502 in the API's envelope instead of
/// garbage it cannot parse, and rotation may try elsewhere (the client has seen nothing).
fn not_a_stream(
    parts: http::response::Parts,
    ctx: &Ctx,
    why: &'static str,
) -> Response<ResponseBody> {
    let message = "the upstream answered 200 text/event-stream without a parseable Responses event";
    let mut failure = Failure::new(FailureClass::Transient);
    failure.status = Some(StatusCode::BAD_GATEWAY);
    failure.code = Some(INVALID_UPSTREAM_STREAM.into());
    failure.message = Some(message.into());
    failure.origin = Origin::Stream;
    tracing::info!(
        why,
        "upstream event stream holds no Responses event; answered 502"
    );
    ctx.count(&failure, "before_content");
    let mut res = ApiError::upstream_unavailable(message)
        .with_code(INVALID_UPSTREAM_STREAM)
        .into_stack_response();
    // Outer layers still read what the attempt carried (connection tags).
    *res.extensions_mut() = parts.extensions;
    res.extensions_mut().insert(SoftFailure {
        failure,
        before_content: true,
    });
    res
}

/// A stream that broke off (or just ended) while held, before content: the upstream had
/// started on the request, so it is a loss, answered as one (`502 upstream_unavailable`, the
/// policy's answer for a request that may have run), not the held lifecycle events of a
/// stream that never ends. The client, having seen nothing, retries it as it is
/// (`previous_response_id` intact).
fn broke_before_content(
    parts: http::response::Parts,
    ctx: &Ctx,
    failure: Failure,
) -> Response<ResponseBody> {
    let message = failure
        .message
        .clone()
        .unwrap_or_else(|| "the upstream stream broke before content".into());
    tracing::info!(error = %message, "upstream stream broke off before content; answered 502");
    ctx.count(&failure, "before_content");
    let mut res = ApiError::upstream_unavailable(message).into_stack_response();
    *res.extensions_mut() = parts.extensions;
    res.extensions_mut().insert(SoftFailure {
        failure,
        before_content: true,
    });
    res
}

/// The `error.code` of [`not_a_stream`]'s answer.
const INVALID_UPSTREAM_STREAM: &str = "invalid_upstream_stream";

fn mark(
    mut parts: http::response::Parts,
    held: Vec<Bytes>,
    failure: Failure,
    ctx: Ctx,
) -> Response<ResponseBody> {
    tracing::debug!(
        class = failure.class.as_str(),
        code = failure.code.as_deref().unwrap_or(""),
        "failure inside a 200 stream, before content"
    );
    ctx.count(&failure, "before_content");
    parts.extensions.insert(SoftFailure {
        failure,
        before_content: true,
    });
    // The stream ends at its terminal event: the client (if it gets this) sees it end at once.
    Response::from_parts(parts, full(concat(&held)))
}

/// The failure an event of this kind reports, if any.
pub(super) fn failure_of(kind: EventKind, data: &[u8]) -> Option<Failure> {
    match kind {
        EventKind::Terminal | EventKind::Error => Failure::from_sse_data(data),
        _ => None,
    }
}

fn concat(chunks: &[Bytes]) -> Bytes {
    match chunks {
        [] => Bytes::new(),
        [one] => one.clone(),
        many => {
            let mut b = BytesMut::with_capacity(many.iter().map(Bytes::len).sum());
            for c in many {
                b.extend_from_slice(c);
            }
            b.freeze()
        }
    }
}
