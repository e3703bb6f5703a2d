use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};

use super::gate::Gating;
use super::service::{Ctx, failure_of};
use crate::body::ResponseBody;
use crate::error::BoxError;
use crate::sse::{EventKind, SseDecoder, TEXT_DELTA_HEADS};

/// The body handed on after the hold-back: the held bytes first, then the rest of the
/// stream as it arrives, watched for failures and for the terminal event.
pub(super) struct WatchBody {
    prefix: Option<Bytes>,
    inner: Option<ResponseBody>,
    pending_err: Option<BoxError>,
    // `None`: pass bytes through without parsing (nothing to watch, or a line was too long).
    watch: Option<(SseDecoder, Ctx)>,
    /// The request's gate, when it has one: only the whole events it admitted go out, so
    /// the stream can still end before any of them.
    gating: Option<Gating>,
    terminal: bool,
    /// The held bytes again (a cheap clone), read only if the stream is cut: they hold
    /// `response.created`, whose id the closing `response.failed` names.
    held: Option<Bytes>,
}

fn concat(chunks: Vec<Bytes>) -> Option<Bytes> {
    match chunks.len() {
        0 => None,
        1 => chunks.into_iter().next(),
        _ => {
            let mut b = BytesMut::with_capacity(chunks.iter().map(Bytes::len).sum());
            for c in chunks {
                b.extend_from_slice(&c);
            }
            Some(b.freeze())
        }
    }
}

impl WatchBody {
    fn new(prefix: Option<Bytes>, rest: Result<ResponseBody, BoxError>) -> Self {
        let (inner, pending_err) = match rest {
            Ok(b) => (Some(b), None),
            Err(e) => (None, Some(e)),
        };
        WatchBody {
            prefix: prefix.filter(|p| !p.is_empty()),
            inner,
            pending_err,
            watch: None,
            gating: None,
            terminal: false,
            held: None,
        }
    }

    /// The held chunks, then `rest` unparsed.
    pub(super) fn unparsed(held: Vec<Bytes>, rest: Result<ResponseBody, BoxError>) -> Self {
        Self::new(concat(held), rest)
    }

    /// The held chunks, then `rest`, watched. Events already buffered in `decoder` (the rest of
    /// the chunk that held the first content event) are examined now. With `gating` (which
    /// has seen the held chunks and events), the held bytes go out as it releases them.
    pub(super) fn after_hold(
        held: Vec<Bytes>,
        rest: Result<ResponseBody, BoxError>,
        decoder: SseDecoder,
        ctx: Ctx,
        gating: Option<Gating>,
    ) -> Self {
        let mut body = Self::new(concat(held), rest);
        body.held = body.prefix.clone();
        body.watch = Some((decoder, ctx));
        body.gating = gating;
        body.drain_events();
        if let Some(gating) = &mut body.gating {
            body.prefix = Some(gating.release()).filter(|p| !p.is_empty());
        }
        body
    }

    fn drain_events(&mut self) {
        let Some((decoder, ctx)) = &mut self.watch else {
            return;
        };
        let gating = &mut self.gating;
        loop {
            if !ctx.observers_read_content
                && ctx.started.is_none()
                && gating.as_ref().is_none_or(|g| g.steps_over_text_deltas())
            {
                // Nothing looks at a text delta then (no gate that reads them, no observer of
                // content, the first content timed): most of a stream is stepped over, not
                // decoded.
                let before = decoder.buffered();
                for head in TEXT_DELTA_HEADS {
                    decoder.skip_events_starting_with(head);
                }
                if let Some(gating) = gating.as_mut() {
                    gating.stepped_over(before - decoder.buffered());
                }
            }
            // Borrowed: most events are deltas, of which only the type is read.
            let seen = decoder.next_event_with(|ev| {
                let kind = ctx.observe(ev, gating.as_mut());
                (kind, failure_of(kind, ev.data))
            });
            match seen {
                Ok(Some((kind, failure))) => {
                    if kind == EventKind::Content {
                        // Released by a bound before content: the first one comes here.
                        ctx.first_content();
                    }
                    if let Some(failure) = failure {
                        tracing::info!(
                            class = failure.class.as_str(),
                            code = failure.code.as_deref().unwrap_or(""),
                            credential = ctx.lease.as_ref().map(|l| l.credential()).unwrap_or(""),
                            "failure inside a stream after content; passed through and reported"
                        );
                        ctx.count(&failure, "after_content");
                        if let Some(lease) = &ctx.lease {
                            lease.report(&failure);
                        }
                    }
                    // A top-level `error` event ends the answer as `response.failed` does
                    // (PROTOCOL §3): an upstream that keeps the connection open after it
                    // must not hold the client until its idle timeout.
                    if matches!(kind, EventKind::Terminal | EventKind::Error) {
                        self.terminal = true;
                        if let Some(gating) = gating {
                            // The client's stream ends here: the gate sees it end.
                            gating.end(decoder);
                        }
                        // Nothing after a terminal event matters; stop parsing.
                        self.watch = None;
                        return;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(error = %e, "SSE line too long; passing the rest through unparsed");
                    if let Some(gating) = gating {
                        // Not decoded, not gated: the bytes flow as they are.
                        gating.open();
                    }
                    self.watch = None;
                    return;
                }
            }
        }
        if gating.as_ref().is_some_and(Gating::is_cut) {
            // The gate ended the stream: the rest of the upstream's answer is not read (the
            // events already here were still shown to the observers, as before a gate).
            self.terminal = true;
            self.watch = None;
        }
    }
}

impl WatchBody {
    /// The upstream body ended (or broke, `err`) before a terminal event, while this stream
    /// was watched: the client has seen part of an answer and must still see it end, as a
    /// `response.failed`, not as a cut connection or a stream that just stops (the invariant
    /// every client relies on: a stream ends with a terminal event or an HTTP error).
    fn cut_off(&mut self, err: Option<&BoxError>) -> Option<Bytes> {
        let (mut decoder, ctx) = self.watch.take()?;
        self.terminal = true;
        if let Some(m) = &ctx.metrics {
            m.inc(
                "tr_streams_unterminated_total",
                "Streams that ended after content without a terminal event.",
                &[],
            );
        }
        let why = err.map_or_else(
            || "it ended without a terminal event".to_owned(),
            |e| e.to_string(),
        );
        tracing::info!(
            error = %why,
            credential = ctx.lease.as_ref().map(|l| l.credential()).unwrap_or(""),
            "upstream stream broke off after content; ended for the client with response.failed"
        );
        let id = self.held.as_ref().and_then(created_id);
        let partial = decoder.buffered() > 0;
        let Some(gating) = &mut self.gating else {
            return Some(cut_event(id.as_deref(), &why, partial));
        };
        // The client has none of a partial event (the gate lets whole events out): the blank
        // line that closes it goes through the gate like any input, so the gate sees that
        // event as one, and may still cut it.
        if partial {
            let lead = Bytes::from_static(b"\n\n");
            gating.push(&lead);
            decoder.push(lead);
            gating.drain(&mut decoder, false);
        }
        gating.open();
        let sent = gating.release();
        if gating.is_cut() {
            return Some(sent);
        }
        let end = cut_event(id.as_deref(), &why, false);
        let mut out = BytesMut::with_capacity(sent.len() + end.len());
        out.extend_from_slice(&sent);
        out.extend_from_slice(&end);
        Some(out.freeze())
    }
}

/// The id in the `response.created` among `held`, if any.
fn created_id(held: &Bytes) -> Option<String> {
    let mut d = SseDecoder::new();
    d.push(held.clone());
    while let Ok(Some(ev)) = d.next_event() {
        if ev.event_type() == Some("response.created") {
            let v: serde_json::Value = serde_json::from_slice(&ev.data).ok()?;
            return v["response"]["id"].as_str().map(str::to_owned);
        }
    }
    None
}

/// The `response.failed` (code `upstream_unavailable`) closing a stream the upstream broke
/// off. `partial`: the client holds part of an event; a blank line ends it first so the
/// closing event is read on its own.
fn cut_event(id: Option<&str>, why: &str, partial: bool) -> Bytes {
    let message = format!(
        "The upstream broke off the answer after it had started ({why}); the answer is \
         incomplete. Send the request again."
    );
    let ev = serde_json::json!({
        "type": "response.failed",
        "response": {
            "id": id,
            "object": "response",
            "status": "failed",
            "output": [],
            "error": {"code": "upstream_unavailable", "message": message},
        },
    });
    let lead = if partial { "\n\n" } else { "" };
    Bytes::from(format!("{lead}event: response.failed\ndata: {ev}\n\n"))
}

impl Body for WatchBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let Some(prefix) = this.prefix.take() {
            return Poll::Ready(Some(Ok(Frame::data(prefix))));
        }
        if let Some(e) = this.pending_err.take() {
            return Poll::Ready(Some(Err(e)));
        }
        loop {
            if this.terminal {
                // The answer is complete; do not wait for an upstream that keeps the
                // connection open.
                this.inner = None;
                return Poll::Ready(None);
            }
            let Some(inner) = this.inner.as_mut() else {
                return Poll::Ready(None);
            };
            let frame = match ready!(Pin::new(inner).poll_frame(cx)) {
                None => {
                    this.inner = None;
                    return Poll::Ready(this.cut_off(None).map(|end| Ok(Frame::data(end))));
                }
                Some(Err(e)) => {
                    this.inner = None;
                    return Poll::Ready(Some(match this.cut_off(Some(&e)) {
                        Some(end) => Ok(Frame::data(end)),
                        None => Err(e),
                    }));
                }
                Some(Ok(frame)) => frame,
            };
            let Some(gating) = &mut this.gating else {
                if let (Some(data), Some((decoder, _))) = (frame.data_ref(), this.watch.as_mut()) {
                    decoder.push(data.clone());
                    this.drain_events();
                }
                return Poll::Ready(Some(Ok(frame)));
            };
            let data = match frame.into_data() {
                Ok(data) => data,
                Err(trailers) => return Poll::Ready(Some(Ok(trailers))),
            };
            gating.push(&data);
            if let Some((decoder, _)) = this.watch.as_mut() {
                decoder.push(data);
                this.drain_events();
            }
            let out = this
                .gating
                .as_mut()
                .map(Gating::release)
                .unwrap_or_default();
            if !out.is_empty() {
                return Poll::Ready(Some(Ok(Frame::data(out))));
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        // While the stream is watched and no terminal event came, an inner body at its end
        // still owes the client the closing `response.failed` (`cut_off`): not the end yet.
        // (A body that reports its end with its last data frame, as `body::Coalesce` does,
        // would otherwise let hyper stop before asking for it.)
        self.prefix.is_none()
            && self.pending_err.is_none()
            && (self.terminal
                || (self.watch.is_none() && self.inner.as_ref().is_none_or(|b| b.is_end_stream())))
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}
