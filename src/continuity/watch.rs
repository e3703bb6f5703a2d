use std::borrow::Cow;
use std::pin::Pin;

use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use serde::Deserialize;

use crate::body::ResponseBody;
use crate::error::BoxError;
use crate::sse::SseDecoder;

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    response: Option<Resp<'a>>,
}

/// The fields continuity reads from a response object.
#[derive(Deserialize)]
pub(super) struct Resp<'a> {
    #[serde(borrow)]
    pub(super) id: Option<Cow<'a, str>>,
    pub(super) usage: Option<Usage>,
}

#[derive(Deserialize)]
pub(super) struct Usage {
    pub(super) input_tokens: Option<u64>,
}

/// What the watcher found, reported as it is found.
pub(super) trait Learn: Send + 'static {
    fn response_id(&mut self, id: &str);
    fn usage(&mut self, input_tokens: u64);
}

/// Passes a stream through unchanged, reading response ids and usage from its events.
pub(super) struct OwnerWatch<L> {
    inner: ResponseBody,
    decoder: Option<SseDecoder>,
    learn: L,
    id_seen: bool,
}

impl<L: Learn> OwnerWatch<L> {
    pub(super) fn new(inner: ResponseBody, learn: L) -> Self {
        OwnerWatch {
            inner,
            decoder: Some(SseDecoder::new()),
            learn,
            id_seen: false,
        }
    }

    /// Whether an event of this type carries what continuity learns.
    pub(super) fn wanted(event_type: &str) -> bool {
        matches!(
            event_type,
            "response.created" | "response.completed" | "response.incomplete" | "response.failed"
        )
    }

    fn scan(&mut self, data: &Bytes) {
        let Some(decoder) = &mut self.decoder else {
            return;
        };
        decoder.push(data.clone());
        loop {
            match decoder.next_event() {
                Ok(Some(ev)) => {
                    let Some(ty) = ev.event_type().filter(|t| Self::wanted(t)) else {
                        continue;
                    };
                    if self.id_seen && ty == "response.created" {
                        continue;
                    }
                    self.id_seen |= learn_from_event(&ev.data, !self.id_seen, &mut self.learn);
                }
                Ok(None) => return,
                Err(_) => {
                    // A line beyond the bound: stop learning, keep forwarding.
                    self.decoder = None;
                    return;
                }
            }
        }
    }
}

impl<L: Learn + Unpin> Body for OwnerWatch<L> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let res = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &res {
            if let Some(data) = frame.data_ref() {
                let data = data.clone();
                this.scan(&data);
            }
        }
        res
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Reads id and usage from a complete JSON response object.
pub(super) fn learn_from_json(bytes: &[u8], learn: &mut impl Learn) {
    if let Ok(resp) = serde_json::from_slice::<Resp<'_>>(bytes) {
        if let Some(id) = resp.id.as_deref() {
            learn.response_id(id);
        }
        if let Some(n) = resp.usage.and_then(|u| u.input_tokens) {
            learn.usage(n);
        }
    }
}

/// Learns from one event's data: the response id (when `take_id`) and usage. Returns whether
/// an id was found.
pub(super) fn learn_from_event(data: &[u8], take_id: bool, learn: &mut impl Learn) -> bool {
    let Ok(Envelope {
        response: Some(resp),
    }) = serde_json::from_slice::<Envelope<'_>>(data)
    else {
        return false;
    };
    let mut found = false;
    if let (true, Some(id)) = (take_id, resp.id.as_deref()) {
        learn.response_id(id);
        found = true;
    }
    if let Some(n) = resp.usage.and_then(|u| u.input_tokens) {
        learn.usage(n);
    }
    found
}
