use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};

use super::service::{Ctx, failure_of};
use crate::body::ResponseBody;
use crate::error::BoxError;
use crate::sse::{EventKind, SseDecoder};

/// The body handed on after the hold-back: the held bytes first, then the rest of the
/// stream as it arrives, watched for failures and for the terminal event.
pub(super) struct WatchBody {
    prefix: Option<Bytes>,
    inner: Option<ResponseBody>,
    pending_err: Option<BoxError>,
    // `None`: pass bytes through without parsing (nothing to watch, or a line was too long).
    watch: Option<(SseDecoder, Ctx)>,
    terminal: bool,
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
            terminal: false,
        }
    }

    /// The held chunks, then `rest` unparsed.
    pub(super) fn unparsed(held: Vec<Bytes>, rest: Result<ResponseBody, BoxError>) -> Self {
        Self::new(concat(held), rest)
    }

    /// The held chunks, then `rest`, watched. Events already buffered in `decoder` (the rest of
    /// the chunk that held the first content event) are examined now.
    pub(super) fn after_hold(
        held: Vec<Bytes>,
        rest: Result<ResponseBody, BoxError>,
        decoder: SseDecoder,
        ctx: Ctx,
    ) -> Self {
        let mut body = Self::new(concat(held), rest);
        body.watch = Some((decoder, ctx));
        body.drain_events();
        body
    }

    fn drain_events(&mut self) {
        let Some((decoder, ctx)) = &mut self.watch else {
            return;
        };
        loop {
            match decoder.next_event() {
                Ok(Some(ev)) => {
                    let kind = ctx.observe(&ev);
                    if kind == EventKind::Content {
                        // Released by a bound before content: the first one comes here.
                        ctx.first_content();
                    }
                    if let Some(failure) = failure_of(kind, &ev) {
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
                        // Nothing after a terminal event matters; stop parsing.
                        self.watch = None;
                        return;
                    }
                }
                Ok(None) => return,
                Err(e) => {
                    tracing::debug!(error = %e, "SSE line too long; passing the rest through unparsed");
                    self.watch = None;
                    return;
                }
            }
        }
    }
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
        if this.terminal {
            // The answer is complete; do not wait for an upstream that keeps the connection open.
            this.inner = None;
            return Poll::Ready(None);
        }
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(inner).poll_frame(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                if let Some((_, ctx)) = &this.watch {
                    if let Some(m) = &ctx.metrics {
                        m.inc(
                            "tr_streams_unterminated_total",
                            "Streams that ended after content without a terminal event.",
                            &[],
                        );
                    }
                }
                this.inner = None;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                this.inner = None;
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(data), Some((decoder, _))) = (frame.data_ref(), this.watch.as_mut()) {
                    decoder.push(data.clone());
                    this.drain_events();
                }
                Poll::Ready(Some(Ok(frame)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_none()
            && self.pending_err.is_none()
            && (self.terminal || self.inner.as_ref().is_none_or(|b| b.is_end_stream()))
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}
