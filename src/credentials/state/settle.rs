//! Holds a response's frames until the owner of the id it carries is in the shared store.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use super::{PoolState, StateFuture};

pin_project! {
    /// A streamed answer whose frames wait, after an owner was recorded for it, until the
    /// store has that owner (one round trip, bounded by the store's timeout). The id becomes
    /// usable when the client reads `response.completed`; by then every replica can find its
    /// owner. Frames pass untouched while nothing is pending.
    pub(crate) struct SettleOwners<B> {
        #[pin]
        inner: B,
        state: Arc<dyn PoolState>,
        // Set by the request's observer to the store's mark after it recorded an owner.
        mark: Arc<AtomicU64>,
        held: Option<Frame<Bytes>>,
        wait: Option<StateFuture<'static, ()>>,
    }
}

impl<B> SettleOwners<B> {
    pub(crate) fn new(inner: B, state: Arc<dyn PoolState>, mark: Arc<AtomicU64>) -> Self {
        SettleOwners {
            inner,
            state,
            mark,
            held: None,
            wait: None,
        }
    }
}

impl<B: Body<Data = Bytes>> Body for SettleOwners<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        if let Some(wait) = this.wait.as_mut() {
            ready!(wait.as_mut().poll(cx));
            *this.wait = None;
            if let Some(frame) = this.held.take() {
                return Poll::Ready(Some(Ok(frame)));
            }
        }
        match ready!(this.inner.poll_frame(cx)) {
            Some(Ok(frame)) => {
                let mark = this.mark.swap(0, Ordering::AcqRel);
                if mark == 0 {
                    return Poll::Ready(Some(Ok(frame)));
                }
                let mut wait = this.state.owners_settled(mark);
                if wait.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Some(Ok(frame)));
                }
                *this.held = Some(frame);
                *this.wait = Some(wait);
                Poll::Pending
            }
            other => Poll::Ready(other),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.held.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let mut hint = self.inner.size_hint();
        if let Some(n) = self
            .held
            .as_ref()
            .and_then(|f| f.data_ref())
            .map(|d| d.len() as u64)
        {
            hint.set_lower(hint.lower() + n);
            if let Some(upper) = hint.upper() {
                hint.set_upper(upper + n);
            }
        }
        hint
    }
}
